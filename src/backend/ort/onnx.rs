//! The few ONNX protobuf messages exitbench writes, declared by hand with onnx.proto's field
//! numbers (no protoc, no Python), and a small graph builder that names every value it adds.
//! Models are opset 21, IR version 10.

use prost::Message;

/// IR version written.
pub const IR_VERSION: i64 = 10;
/// Default-domain opset written.
pub const OPSET: i64 = 21;

/// `onnx.TensorProto.DataType` values used here.
pub mod dt {
    /// float32.
    pub const FLOAT: i32 = 1;
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

/// Builds one graph: values are named by the builder (`prefix` + a counter) unless named by the
/// caller, so subgraphs can be emitted into one graph side by side.
#[derive(Default)]
pub struct Graph {
    g: GraphProto,
    next: usize,
    /// Prepended to generated names.
    pub prefix: String,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: &str) -> Self {
        Graph { g: GraphProto { name: name.into(), ..Default::default() }, next: 0, prefix: String::new() }
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

    /// Total bytes of the initializers.
    pub fn initializer_bytes(&self) -> usize {
        self.g.initializer.iter().map(|t| t.raw_data.len()).sum()
    }

    /// The model protobuf. Initializers larger than `external_above` bytes go to `data_file`
    /// (written through `data`, offsets relative to its start) when given, for models whose
    /// protobuf would pass the 2 GiB limit.
    pub fn finish(mut self, external: Option<(&str, &mut Vec<u8>)>) -> Vec<u8> {
        if let Some((file, data)) = external {
            for t in &mut self.g.initializer {
                if t.raw_data.len() < 1024 {
                    continue;
                }
                // ORT wants external data aligned for memory mapping.
                while data.len() % 4096 != 0 {
                    data.push(0);
                }
                let offset = data.len();
                data.extend_from_slice(&t.raw_data);
                t.external_data = vec![
                    StringStringEntryProto { key: "location".into(), value: file.into() },
                    StringStringEntryProto { key: "offset".into(), value: offset.to_string() },
                    StringStringEntryProto { key: "length".into(), value: t.raw_data.len().to_string() },
                ];
                t.data_location = 1;
                t.raw_data = Vec::new();
            }
        }
        let m = ModelProto {
            ir_version: IR_VERSION,
            producer_name: "exitbench".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.g),
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        };
        m.encode_to_vec()
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
