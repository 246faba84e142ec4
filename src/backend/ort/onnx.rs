//! The few ONNX protobuf messages exitbench writes, declared by hand with onnx.proto's field
//! numbers (no protoc, no Python), and a small graph builder that names every value it adds.
//! Models are opset 21, IR version 10.
//!
//! Initializers may hold their bytes, or a [`Payload`] that produces them only when the graph is
//! written: [`Graph::externalize`] streams the large ones into a `.data` file and
//! [`Graph::write_model`] streams the protobuf, so an export never holds a graph's weights twice
//! (the files are byte for byte what prost's `encode_to_vec` of the whole model gives).

use prost::Message;
use std::io::{self, Write};

/// IR version written.
pub const IR_VERSION: i64 = 10;
/// Default-domain opset written.
pub const OPSET: i64 = 21;
/// ONNX Runtime's contrib-op domain (`GroupQueryAttention`), imported (version 1) only by a
/// graph that uses one of its ops.
pub const MS_DOMAIN: &str = "com.microsoft";

/// `onnx.TensorProto.DataType` values used here.
pub mod dt {
    /// float32.
    pub const FLOAT: i32 = 1;
    /// int32.
    pub const INT32: i32 = 6;
    /// int64.
    pub const INT64: i32 = 7;
    /// bool.
    pub const BOOL: i32 = 9;
    /// float16.
    pub const FLOAT16: i32 = 10;
    /// bfloat16.
    pub const BFLOAT16: i32 = 16;
}

/// `onnx.ModelProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// IR version.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Producer.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Producer version.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// The graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Opsets.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
}

/// `onnx.OperatorSetIdProto`.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// Domain ("" = ai.onnx).
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Version.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `onnx.GraphProto`.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// Nodes in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Graph inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Graph outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    /// Types of intermediate values (ORT writes these into optimized models).
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// Inputs.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Outputs.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Operator.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Domain.
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// `onnx.AttributeProto` (the kinds used here).
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Float value.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// Int value.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// Tensor value.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// Ints value.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// AttributeType: FLOAT 1, INT 2, TENSOR 4, INTS 7.
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

/// `onnx.StringStringEntryProto` (external-data keys).
#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `onnx.TensorProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// Dimensions.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// Element type ([`dt`]).
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Name.
    #[prost(string, tag = "8")]
    pub name: String,
    /// Little-endian element bytes.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// Where the bytes are when stored outside the protobuf.
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// 0 DEFAULT, 1 EXTERNAL.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// `onnx.ValueInfoProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `onnx.TypeProto` (tensors only).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// Tensor type.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TypeTensor>,
}

/// `onnx.TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TypeTensor {
    /// Element type.
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// Shape.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `onnx.TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    /// Dimensions.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `onnx.TensorShapeProto.Dimension`.
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    /// A fixed size (0 = unset).
    #[prost(int64, tag = "1")]
    pub dim_value: i64,
    /// A symbolic size.
    #[prost(string, tag = "2")]
    pub dim_param: String,
}

/// A dimension of a graph input or output: fixed, or named (dynamic).
#[derive(Debug, Clone)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A dynamic size with a name.
    Named(&'static str),
}

/// An attribute value.
#[derive(Debug, Clone)]
pub enum Attr {
    /// An integer.
    Int(i64),
    /// Integers.
    Ints(Vec<i64>),
    /// A float.
    Float(f32),
    /// A tensor.
    Tensor(TensorProto),
}

/// Bytes of an initializer produced when the graph is written (a model tensor, converted then),
/// so a graph under construction holds no copy of the weights.
pub trait Payload {
    /// Number of bytes [`Payload::write_to`] writes.
    fn byte_len(&self) -> usize;
    /// Writes exactly [`Payload::byte_len`] little-endian bytes.
    fn write_to(&self, w: &mut dyn Write) -> io::Result<()>;
}

/// Initializers of at least this many bytes go to the external data file.
const EXTERNAL_MIN: usize = 1024;
/// Alignment of external data (ONNX Runtime memory-maps it).
const EXTERNAL_ALIGN: u64 = 4096;

/// Builds one graph: values are named by the builder (`prefix` + a counter) unless named by the
/// caller, so subgraphs can be emitted into one graph side by side.
#[derive(Default)]
pub struct Graph {
    g: GraphProto,
    /// Beside `g.initializer`, one per initializer: the bytes still to produce (the proto's
    /// `raw_data` is empty then).
    payloads: Vec<Option<Box<dyn Payload>>>,
    next: usize,
    /// Prepended to generated names.
    pub prefix: String,
    /// True once a node of [`MS_DOMAIN`] is added (the model then imports that domain too).
    uses_ms_domain: bool,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: &str) -> Self {
        Graph { g: GraphProto { name: name.into(), ..Default::default() }, ..Default::default() }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{}{hint}_{}", self.prefix, self.next)
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: i32, dims: &[Dim]) -> String {
        self.g.input.push(value_info(name, elem, dims));
        name.to_string()
    }

    /// Declares `value` a graph output named `name` (an Identity renames it when needed).
    pub fn output(&mut self, value: &str, name: &str, elem: i32, dims: &[Dim]) {
        if value != name {
            self.node_named("Identity", &[value], name, &[]);
        }
        self.g.output.push(value_info(name, elem, dims));
    }

    /// Adds a constant tensor; returns its name.
    pub fn init(&mut self, hint: &str, elem: i32, dims: &[i64], raw: Vec<u8>) -> String {
        let name = self.fresh(hint);
        self.g.initializer.push(TensorProto { dims: dims.to_vec(), data_type: elem, name: name.clone(), raw_data: raw, ..Default::default() });
        self.payloads.push(None);
        name
    }

    /// Adds a constant tensor whose bytes `payload` produces when the graph is written; returns
    /// its name.
    pub fn init_lazy(&mut self, hint: &str, elem: i32, dims: &[i64], payload: Box<dyn Payload>) -> String {
        let name = self.init(hint, elem, dims, Vec::new());
        *self.payloads.last_mut().expect("init pushed one") = Some(payload);
        name
    }

    /// An int64 constant vector.
    pub fn ints(&mut self, v: &[i64]) -> String {
        self.init("c", dt::INT64, &[v.len() as i64], v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// An f32 constant of shape `[]` or `[n]`.
    pub fn float_const(&mut self, v: &[f32], scalar: bool) -> String {
        let dims: Vec<i64> = if scalar { vec![] } else { vec![v.len() as i64] };
        self.init("f", dt::FLOAT, &dims, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// Adds a node with one output; returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.node_named(op, inputs, &out, attrs);
        out
    }

    /// Adds a node with several outputs; returns their names.
    pub fn node_n(&mut self, op: &str, inputs: &[&str], outputs: usize, attrs: &[(&str, Attr)]) -> Vec<String> {
        let outs: Vec<String> = (0..outputs).map(|_| self.fresh(&op.to_ascii_lowercase())).collect();
        self.push(op, inputs, outs.clone(), attrs);
        outs
    }

    /// Adds a node whose single output has a given name.
    pub fn node_named(&mut self, op: &str, inputs: &[&str], out: &str, attrs: &[(&str, Attr)]) {
        self.push(op, inputs, vec![out.to_string()], attrs);
    }

    /// Adds a node of ONNX Runtime's [`MS_DOMAIN`] with several outputs; returns their names.
    pub fn ms_node_n(&mut self, op: &str, inputs: &[&str], outputs: usize, attrs: &[(&str, Attr)]) -> Vec<String> {
        let outs = self.node_n(op, inputs, outputs, attrs);
        self.g.node.last_mut().expect("node_n pushed one").domain = MS_DOMAIN.into();
        self.uses_ms_domain = true;
        outs
    }

    fn push(&mut self, op: &str, inputs: &[&str], outputs: Vec<String>, attrs: &[(&str, Attr)]) {
        let name = format!("{}n{}", self.prefix, self.g.node.len());
        let attribute = attrs.iter().map(|(n, a)| attribute(n, a.clone())).collect();
        self.g.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs,
            name,
            op_type: op.into(),
            attribute,
            domain: String::new(),
        });
    }

    /// Byte length of initializer `i`, produced or not.
    fn init_len(&self, i: usize) -> usize {
        self.payloads[i].as_ref().map_or(self.g.initializer[i].raw_data.len(), |p| p.byte_len())
    }

    /// Total bytes of the initializers (without producing them).
    pub fn initializer_bytes(&self) -> usize {
        (0..self.g.initializer.len()).map(|i| self.init_len(i)).sum()
    }

    /// Moves every initializer of at least 1 KiB into external data `file` (for models whose
    /// protobuf would pass the 2 GiB limit), written through `data` in initializer order, each
    /// aligned to 4 KiB (offsets from the file's start); smaller lazy ones are produced in place.
    /// Each tensor's bytes go straight to `data` and are dropped when written.
    pub fn externalize(&mut self, file: &str, data: &mut dyn Write) -> io::Result<()> {
        let mut at: u64 = 0;
        let zeros = [0u8; EXTERNAL_ALIGN as usize];
        for i in 0..self.g.initializer.len() {
            let len = self.init_len(i);
            if len < EXTERNAL_MIN {
                if let Some(p) = self.payloads[i].take() {
                    self.g.initializer[i].raw_data = produce(p.as_ref())?;
                }
                continue;
            }
            let pad = (EXTERNAL_ALIGN - at % EXTERNAL_ALIGN) % EXTERNAL_ALIGN;
            data.write_all(&zeros[..pad as usize])?;
            at += pad;
            let t = &mut self.g.initializer[i];
            match self.payloads[i].take() {
                Some(p) => write_exactly(p.as_ref(), data)?,
                None => data.write_all(&std::mem::take(&mut t.raw_data))?,
            }
            t.external_data = vec![
                StringStringEntryProto { key: "location".into(), value: file.into() },
                StringStringEntryProto { key: "offset".into(), value: at.to_string() },
                StringStringEntryProto { key: "length".into(), value: len.to_string() },
            ];
            t.data_location = 1;
            at += len as u64;
        }
        Ok(())
    }

    /// Streams the model protobuf to `w`, producing each lazy initializer's bytes as it is
    /// written (one tensor's bytes at a time). The bytes equal `self.into_model()?.encode_to_vec()`.
    pub fn write_model(self, w: &mut dyn Write) -> io::Result<()> {
        let Graph { g, payloads, uses_ms_domain, .. } = self;
        // prost writes fields in tag order, and a tensor's raw_data (9) is its last field when
        // its data is not external (13, 14): so a lazy tensor is its other fields, then field 9.
        let head = GraphProto { node: g.node, name: g.name, ..Default::default() };
        let tail = GraphProto { input: g.input, output: g.output, value_info: g.value_info, ..Default::default() };
        let raw_len = |p: &Option<Box<dyn Payload>>| p.as_ref().map_or(0, |p| p.byte_len());
        let field_len = |n: usize| if n == 0 { 0 } else { 1 + varint_len(n as u64) + n };
        let tensor_len = |t: &TensorProto, p: &Option<Box<dyn Payload>>| t.encoded_len() + field_len(raw_len(p));
        let graph_len = head.encoded_len()
            + g.initializer.iter().zip(&payloads).map(|(t, p)| 1 + varint_len(tensor_len(t, p) as u64) + tensor_len(t, p)).sum::<usize>()
            + tail.encoded_len();
        let front = ModelProto { ir_version: IR_VERSION, producer_name: "exitbench".into(), producer_version: env!("CARGO_PKG_VERSION").into(), graph: None, opset_import: vec![] };
        let back = ModelProto { opset_import: opset(uses_ms_domain), ..Default::default() };
        w.write_all(&front.encode_to_vec())?;
        write_key_len(w, 7, graph_len)?;
        w.write_all(&head.encode_to_vec())?;
        for (t, p) in g.initializer.iter().zip(&payloads) {
            write_key_len(w, 5, tensor_len(t, p))?;
            w.write_all(&t.encode_to_vec())?;
            if let Some(p) = p.as_ref().filter(|p| p.byte_len() > 0) {
                debug_assert!(t.raw_data.is_empty() && t.external_data.is_empty() && t.data_location == 0);
                write_key_len(w, 9, p.byte_len())?;
                write_exactly(p.as_ref(), w)?;
            }
        }
        w.write_all(&tail.encode_to_vec())?;
        w.write_all(&back.encode_to_vec())
    }

    /// The whole model protobuf in memory, every initializer produced.
    pub fn into_model(mut self) -> io::Result<ModelProto> {
        for (t, p) in self.g.initializer.iter_mut().zip(std::mem::take(&mut self.payloads)) {
            if let Some(p) = p {
                t.raw_data = produce(p.as_ref())?;
            }
        }
        Ok(ModelProto {
            ir_version: IR_VERSION,
            producer_name: "exitbench".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.g),
            opset_import: opset(self.uses_ms_domain),
        })
    }
}

fn opset(ms_domain: bool) -> Vec<OperatorSetIdProto> {
    let mut v = vec![OperatorSetIdProto { domain: String::new(), version: OPSET }];
    if ms_domain {
        v.push(OperatorSetIdProto { domain: MS_DOMAIN.into(), version: 1 });
    }
    v
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// A length-delimited field's key and length.
fn write_key_len(w: &mut dyn Write, field: u32, len: usize) -> io::Result<()> {
    let mut buf = Vec::with_capacity(11);
    let mut v = u64::from(field << 3 | 2);
    for _ in 0..2 {
        while v >= 0x80 {
            buf.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
        v = len as u64;
    }
    w.write_all(&buf)
}

/// Writes `p`, checking that it wrote the length it announced (the protobuf's lengths and the
/// external offsets depend on it).
fn write_exactly(p: &dyn Payload, w: &mut dyn Write) -> io::Result<()> {
    let mut c = Counting { inner: w, n: 0 };
    p.write_to(&mut c)?;
    if c.n != p.byte_len() as u64 {
        return Err(io::Error::other(format!("an initializer wrote {} bytes, not the {} it announced", c.n, p.byte_len())));
    }
    Ok(())
}

fn produce(p: &dyn Payload) -> io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(p.byte_len());
    write_exactly(p, &mut v)?;
    Ok(v)
}

struct Counting<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn value_info(name: &str, elem: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Dimension { dim_value: *n, dim_param: String::new() },
            Dim::Named(s) => Dimension { dim_value: 0, dim_param: s.to_string() },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto { tensor_type: Some(TypeTensor { elem_type: elem, shape: Some(TensorShapeProto { dim }) }) }),
    }
}

fn attribute(name: &str, a: Attr) -> AttributeProto {
    let mut p = AttributeProto { name: name.into(), ..Default::default() };
    match a {
        Attr::Float(f) => {
            p.f = f;
            p.r#type = 1;
        }
        Attr::Int(i) => {
            p.i = i;
            p.r#type = 2;
        }
        Attr::Tensor(t) => {
            p.t = Some(t);
            p.r#type = 4;
        }
        Attr::Ints(v) => {
            p.ints = v;
            p.r#type = 7;
        }
    }
    p
}

/// Element types of the value names in an (optimized) model: graph inputs, outputs, value_info
/// and initializers. Used to tell what precision ONNX Runtime really computes in.
pub fn value_types(model: &ModelProto) -> std::collections::HashMap<String, i32> {
    let mut m = std::collections::HashMap::new();
    if let Some(g) = &model.graph {
        for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
            if let Some(t) = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) {
                m.insert(v.name.clone(), t.elem_type);
            }
        }
        for t in &g.initializer {
            m.insert(t.name.clone(), t.data_type);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` bytes counting up from `seed`, produced on demand.
    struct Counter(usize, u8);

    impl Payload for Counter {
        fn byte_len(&self) -> usize {
            self.0
        }
        fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
            let v: Vec<u8> = (0..self.0).map(|i| (i as u8).wrapping_add(self.1)).collect();
            // In two pieces, as a chunked writer would.
            w.write_all(&v[..self.0 / 2])?;
            w.write_all(&v[self.0 / 2..])
        }
    }

    /// Small and large initializers, raw and lazy, in mixed order (sizes cross 1 KiB, 4 KiB
    /// alignment and the one- and two-byte varint lengths).
    fn graph() -> Graph {
        let mut g = Graph::new("t");
        let x = g.input("x", dt::FLOAT, &[Dim::Fixed(1), Dim::Named("t")]);
        let sizes = [(5, false), (300, true), (1024, true), (5000, false), (0, true), (70_000, true), (1023, true), (4096, false)];
        for (i, &(n, lazy)) in sizes.iter().enumerate() {
            let name = if lazy { g.init_lazy("w", dt::FLOAT, &[n as i64], Box::new(Counter(n, i as u8))) } else { g.init("r", dt::FLOAT, &[n as i64], Counter(n, i as u8).produce()) };
            let y = g.node("Add", &[&x, &name], &[("k", Attr::Int(i as i64))]);
            g.output(&y, &format!("y{i}"), dt::FLOAT, &[Dim::Fixed(1)]);
        }
        g
    }

    impl Counter {
        fn produce(&self) -> Vec<u8> {
            produce(self).unwrap()
        }
    }

    #[test]
    fn the_streamed_model_is_prosts_encoding() {
        let mut streamed = Vec::new();
        graph().write_model(&mut streamed).unwrap();
        assert_eq!(streamed, graph().into_model().unwrap().encode_to_vec());
        assert_eq!(graph().initializer_bytes(), 5 + 300 + 1024 + 5000 + 70_000 + 1023 + 4096);
    }

    #[test]
    fn streamed_external_data_matches_the_in_memory_layout() {
        // The layout exitbench wrote before streaming: every raw initializer of at least 1 KiB
        // appended to one buffer at the next 4 KiB boundary.
        let mut model = graph().into_model().unwrap();
        let mut want_data = Vec::new();
        for t in &mut model.graph.as_mut().unwrap().initializer {
            if t.raw_data.len() < 1024 {
                continue;
            }
            while want_data.len() % 4096 != 0 {
                want_data.push(0);
            }
            let offset = want_data.len();
            want_data.extend_from_slice(&t.raw_data);
            t.external_data = vec![
                StringStringEntryProto { key: "location".into(), value: "t.data".into() },
                StringStringEntryProto { key: "offset".into(), value: offset.to_string() },
                StringStringEntryProto { key: "length".into(), value: t.raw_data.len().to_string() },
            ];
            t.data_location = 1;
            t.raw_data = Vec::new();
        }
        let (mut g, mut data, mut proto) = (graph(), Vec::new(), Vec::new());
        g.externalize("t.data", &mut data).unwrap();
        g.write_model(&mut proto).unwrap();
        assert_eq!(data, want_data);
        assert_eq!(proto, model.encode_to_vec());
    }

    #[test]
    fn a_payload_of_the_wrong_length_is_an_error() {
        struct Liar;
        impl Payload for Liar {
            fn byte_len(&self) -> usize {
                8
            }
            fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
                w.write_all(&[1, 2, 3])
            }
        }
        let mut g = Graph::new("t");
        g.init_lazy("w", dt::FLOAT, &[2], Box::new(Liar));
        let err = g.write_model(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("wrote 3 bytes, not the 8"), "{err}");
    }
}
