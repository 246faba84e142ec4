//! The ONNX Runtime backend (`ort`, loaded at run time): the graphs of `graphs.rs`, exported
//! from the same weights candle loads, one session per graph. Hidden states and KV caches stay
//! ORT values on the session's device (IO binding; outputs are bound to the device), exit checks
//! return scalars (the head graph reduces on the device), and full logits are fetched only when
//! sampling asks for them. On the CPU in f32 and f16 each layer's cache is one preallocated
//! buffer that the layer graph extends in place ([`CacheForm::InPlace`]); elsewhere the graphs
//! return the cache with the new positions concatenated ([`CacheForm::Concat`]).

pub mod export;
pub mod graphs;
pub mod onnx;
pub mod positions;
mod rows;
pub mod runtime;

use super::{Backend, DeviceKind, HeadSummary, KvSnapshot, RuntimeInfo, Speculate};
use graphs::CacheForm;
use crate::error::{Error, Result};
use crate::model::{ModelFiles, Precision};
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::value::{DynValue, Tensor};
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

/// Maps an `ort` error into the library's.
pub(crate) fn oe(e: impl Into<ort::Error>) -> Error {
    Error::backend("ort", "", e.into())
}

/// One session with its IO binding (inputs rebound per call, outputs bound to the device).
struct Graph {
    session: Session,
    binding: ort::session::IoBinding,
    outputs: Vec<String>,
    mem: MemoryInfo<'static>,
}

impl Graph {
    fn run(&mut self, inputs: &[(&str, &DynValue)]) -> Result<ort::session::SessionOutputs<'_>> {
        for (name, v) in inputs {
            self.binding.bind_input(*name, *v).map_err(oe)?;
        }
        // Fresh device outputs every call (a bound output would be reused with its old shape).
        for o in &self.outputs {
            self.binding.bind_output_to_device(o, &self.mem).map_err(oe)?;
        }
        self.session.run_binding(&self.binding).map_err(oe)
    }

    /// Runs an in-place graph: each buffer `(input, output, value)` is bound as both that input
    /// and that output (the graph writes the new positions into it); the other outputs are
    /// bound to the device.
    fn run_in_place(&mut self, inputs: &[(&str, &DynValue)], buffers: &mut [(&str, &str, &mut DynValue)]) -> Result<ort::session::SessionOutputs<'_>> {
        for (name, value) in inputs {
            self.binding.bind_input(*name, *value).map_err(oe)?;
        }
        for (input, output, value) in buffers.iter_mut() {
            self.binding.bind_input(*input, &**value).map_err(oe)?;
            self.binding.bind_output(*output, &mut **value).map_err(oe)?;
        }
        for o in self.outputs.iter().filter(|o| !buffers.iter().any(|b| b.1 == o.as_str())) {
            self.binding.bind_output_to_device(o, &self.mem).map_err(oe)?;
        }
        self.session.run_binding(&self.binding).map_err(oe)
    }
}

/// A layer's cache and its length. [`CacheForm::Concat`]: the present keys and values of the
/// last call, `len` positions each. [`CacheForm::InPlace`]: buffers `[1, kv, capacity, hd]` whose
/// first `len` positions are the cache.
struct Cache {
    k: DynValue,
    v: DynValue,
    len: usize,
}

/// ONNX Runtime over one export.
pub struct OrtBackend {
    cfg: crate::model::LlamaConfig,
    on_cpu: bool,
    embed: Graph,
    layers: Vec<Graph>,
    props: Vec<Graph>,
    head: Graph,
    classifier: Option<Graph>,
    cosine: Graph,
    caches: Vec<Option<Cache>>,
    /// Batched decoding's caches when concatenating, `[row][layer - 1]`, swapped into `caches`
    /// while a row runs.
    row_caches: Vec<Vec<Option<Cache>>>,
    /// Batched decoding's caches when in place: one buffer for all rows per layer.
    batch: rows::RowBuffers,
    /// Graph calls the last [`crate::backend::Batch::layer_rows`] made (each reads the layer's
    /// weights once).
    last_reads: usize,
    /// `[1, kv, 0, hd]` in the export dtype: the past of an empty cache.
    empty: DynValue,
    /// How the layer graphs hold the caches.
    form: CacheForm,
    /// The last positions input made: (first position, count, value).
    positions: Option<(usize, usize, Rc<DynValue>)>,
    /// Positions an in-place cache buffer first holds (it doubles when a sequence outgrows it).
    capacity: usize,
    /// Positions the batched rows' in-place buffers first hold (`rows.rs`).
    row_capacity: usize,
    precision: Precision,
    /// Set-up facts for the record.
    pub setup: RuntimeInfo,
}

/// Whether intra-op threads spin while waiting for work. With one thread (the default for
/// models narrower than 1024) there is no pool to spin; see the README's ORT figures for the
/// two-thread measurement behind this choice.
pub const DEFAULT_SPINNING: bool = false;

/// A hidden state: an ORT value on the session's device.
pub type Hidden = Rc<DynValue>;

/// A session builder for `device`. On CUDA the provider must load (`error_on_failure`) and, unless
/// `allow_cpu_nodes`, no node may fall back to the CPU provider.
fn session_builder(rt: &runtime::Runtime, device: DeviceKind, threads: usize, spinning: bool, allow_cpu_nodes: bool) -> Result<ort::session::builder::SessionBuilder> {
    let b = Session::builder(&rt.env).map_err(oe)?;
    let b = b.with_optimization_level(ort::session::builder::GraphOptimizationLevel::All).map_err(oe)?;
    let b = b.with_intra_threads(threads).map_err(oe)?;
    let b = b.with_inter_threads(1).map_err(oe)?;
    let b = b.with_intra_op_spinning(spinning).map_err(oe)?;
    match device {
        DeviceKind::Cpu => Ok(b),
        DeviceKind::Cuda(n) => {
            let ep = ort::ep::CUDA::default().with_device_id(n as i32).build().error_on_failure();
            let b = b.with_execution_providers([ep]).map_err(|e| Error::Unsupported(format!("ONNX Runtime's CUDA provider for cuda:{n}: {e}")))?;
            if allow_cpu_nodes {
                Ok(b)
            } else {
                b.with_disable_cpu_fallback().map_err(oe)
            }
        }
    }
}

fn mem_info(device: DeviceKind) -> Result<MemoryInfo<'static>> {
    match device {
        DeviceKind::Cpu => MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default).map_err(oe),
        DeviceKind::Cuda(n) => MemoryInfo::new(AllocationDevice::CUDA, n as i32, AllocatorType::Device, MemoryType::Default).map_err(oe),
    }
}

/// A session creation failure, classified by ONNX Runtime's error code: a precision or operator
/// the runtime has no kernel for (`NotImplemented`) is `Unsupported` with the runtime's own
/// message; anything else is a runtime failure (an `error` row), on a GPU too. (A missing CUDA
/// provider is refused earlier, when the session builder registers it.)
fn creation_error(file: &Path, p: Precision, device: DeviceKind, e: impl Into<ort::Error>) -> Error {
    let e: ort::Error = e.into();
    if e.code() == ort::error::ErrorCode::NotImplemented {
        Error::Unsupported(format!("ONNX Runtime cannot run {} in {} on {}: {e}", file.display(), p.name(), device.name()))
    } else {
        Error::backend("ort", file.display().to_string(), e)
    }
}

/// True for the failure ONNX Runtime reports when CPU fallback is disabled and a node (a small
/// shape computation it keeps on its CPU provider on purpose) would need it: a plain failure
/// (`ORT_FAIL`), not a missing kernel, file or provider.
fn may_be_cpu_fallback_refusal<R>(e: &ort::Error<R>) -> bool {
    e.code() == ort::error::ErrorCode::GenericFailure
}

impl OrtBackend {
    /// Exports (or reuses the cached export of) `files` in `precision` and creates the sessions
    /// on `device` with `threads` intra-op threads (spinning off: see [`DEFAULT_SPINNING`]).
    pub fn open(files: &ModelFiles, device: DeviceKind, precision: Precision, threads: usize) -> Result<Self> {
        Self::open_with(files, device, precision, threads, DEFAULT_SPINNING)
    }

    /// [`OrtBackend::open`] with the intra-op spinning policy chosen (benches compare both).
    pub fn open_with(files: &ModelFiles, device: DeviceKind, precision: Precision, threads: usize, spinning: bool) -> Result<Self> {
        Self::open_form(files, device, precision, threads, spinning, CacheForm::for_run(device == DeviceKind::Cpu, precision))
    }

    /// [`OrtBackend::open_with`] with the caches in `form` (tests and benches compare the two).
    pub fn open_form(files: &ModelFiles, device: DeviceKind, precision: Precision, threads: usize, spinning: bool, form: CacheForm) -> Result<Self> {
        if form == CacheForm::InPlace && form != CacheForm::for_run(device == DeviceKind::Cpu, precision) {
            return Err(Error::Unsupported(format!("ONNX Runtime's in-place KV caches run on the CPU in f32 and f16, not on {} in {}", device.name(), precision.name())));
        }
        let rt = runtime::runtime()?;
        let mut warn = |m: &str| eprintln!("warning: {m}");
        let ex = export::ensure(files, precision, form, &mut warn)?;
        let t = Instant::now();
        let cpu_nodes = std::cell::RefCell::new(Vec::<String>::new());
        let make = |name: &str, with_optimized: Option<&Path>| -> Result<Graph> {
            let path = ex.dir.join(name);
            let build = |allow: bool| -> Result<ort::session::builder::SessionBuilder> {
                let mut b = session_builder(rt, device, threads, spinning, allow)?;
                if let Some(o) = with_optimized {
                    b = b.with_optimized_model_path(o).map_err(oe)?;
                }
                Ok(b)
            };
            let session = match build(false)?.commit_from_file(&path) {
                Ok(s) => s,
                // ONNX Runtime keeps small shape computations (Shape, Range...) on its CPU provider
                // on purpose; with CPU fallback disabled it refuses such a graph. Then the graph
                // runs with those nodes on the CPU, and the record says so (never silently).
                // If the retry fails too, its own error is classified.
                Err(e) if device != DeviceKind::Cpu && may_be_cpu_fallback_refusal(&e) => {
                    cpu_nodes.borrow_mut().push(format!("{name}: {e}"));
                    build(true)?.commit_from_file(&path).map_err(|e| creation_error(&path, precision, device, e))?
                }
                Err(e) => return Err(creation_error(&path, precision, device, e)),
            };
            let binding = session.create_binding().map_err(oe)?;
            let outputs = session.outputs().iter().map(|o| o.name().to_string()).collect();
            Ok(Graph { session, binding, outputs, mem: mem_info(device)? })
        };
        static OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let optimized = std::env::temp_dir().join(format!("exitbench-opt-{}-{n}-{}.onnx", std::process::id(), precision.name()));
        let l = files.config.num_hidden_layers;
        let mut layers = Vec::with_capacity(l);
        for i in 1..=l {
            layers.push(make(&format!("layer_{i}.onnx"), (i == 1).then_some(optimized.as_path()))?);
        }
        let compute_dtype = compute_dtype_of(&optimized);
        let _ = std::fs::remove_file(&optimized);
        let props = (1..=l).map(|i| make(&format!("propagate_{i}.onnx"), None)).collect::<Result<Vec<_>>>()?;
        let embed = make("embed.onnx", None)?;
        let head = make("head.onnx", None)?;
        let cosine = make("cosine.onnx", None)?;
        let classifier = if ex.manifest.has_classifier { Some(make("classifier.onnx", None)?) } else { None };
        let (kvh, hd) = (files.config.kv_heads(), files.config.head_dim());
        let empty = empty_tensor(precision, [1, kvh, 0, hd])?;
        let setup = RuntimeInfo {
            version: rt.version.clone(),
            library: Some(rt.path.display().to_string()),
            export_dir: Some(ex.dir.display().to_string()),
            export_hash: Some(ex.manifest.export_hash.clone()),
            export_s: Some(ex.export_s),
            session_s: Some(t.elapsed().as_secs_f64()),
            compute_dtype,
            threads,
            spinning: Some(spinning),
            cpu_nodes: { let c = cpu_nodes.borrow(); (!c.is_empty()).then(|| c.join("; ")) },
            compute: None,
            huge_pages: None,
        };
        Ok(Self {
            cfg: files.config.clone(),
            on_cpu: device == DeviceKind::Cpu,
            embed,
            layers,
            props,
            head,
            classifier,
            cosine,
            caches: (0..l).map(|_| None).collect(),
            row_caches: Vec::new(),
            batch: rows::RowBuffers::default(),
            last_reads: 0,
            empty,
            form,
            positions: None,
            // As candle's caches: the model's context up to 4,096 positions, doubling beyond.
            capacity: files.config.max_position_embeddings.clamp(1, 4096),
            row_capacity: 1,
            precision,
            setup,
        })
    }

    /// How the layer graphs hold the caches.
    pub fn cache_form(&self) -> CacheForm {
        self.form
    }

    /// Sets how many positions an in-place cache buffer holds when it is first allocated (it
    /// doubles beyond); buffers already allocated keep theirs. Tests use it to make buffers grow.
    pub fn set_cache_capacity(&mut self, positions: usize) {
        self.capacity = positions.max(1);
    }

    fn positions(start: usize, n: usize) -> Result<DynValue> {
        let v: Vec<i64> = (start..start + n).map(|p| p as i64).collect();
        Ok(Tensor::from_array(([n], v)).map_err(oe)?.into_dyn())
    }

    /// Positions `starts[b]..starts[b] + n` of every row b: `[B, n]`, what the in-place graphs
    /// (which have a batch axis) take.
    fn row_positions(starts: &[usize], n: usize) -> Result<DynValue> {
        let v: Vec<i64> = starts.iter().flat_map(|&s| (s..s + n).map(|p| p as i64)).collect();
        Ok(Tensor::from_array(([starts.len(), n], v)).map_err(oe)?.into_dyn())
    }

    /// The positions `start..start + n` as an input value (one row's, `[1, n]`, in place), made
    /// once for all the layers (and propagation steps) of a token rather than per call.
    fn positions_of(&mut self, start: usize, n: usize) -> Result<Rc<DynValue>> {
        match &self.positions {
            Some((s, k, v)) if (*s, *k) == (start, n) => Ok(v.clone()),
            _ => {
                let v = if self.form == CacheForm::InPlace { Self::row_positions(&[start], n)? } else { Self::positions(start, n)? };
                let v = Rc::new(v);
                self.positions = Some((start, n, v.clone()));
                Ok(v)
            }
        }
    }

    fn t_of(h: &DynValue) -> Result<usize> {
        let shape = h.shape();
        shape.get(1).map(|&t| t as usize).ok_or_else(|| Error::Internal("ort: hidden state without a time axis".into()))
    }

    fn take(out: &mut ort::session::SessionOutputs<'_>, name: &str) -> Result<DynValue> {
        out.remove(name).ok_or_else(|| Error::Internal(format!("ort: output `{name}` missing")))
    }

    /// Runs `layer`'s layer graph (or its propagation graph) on `t` new positions against its
    /// cache, which the graph's present keys/values replace (or extend in place); returns
    /// `hidden_out` of a layer.
    fn run_cached(&mut self, layer: usize, h: &DynValue, t: usize, propagate: bool) -> Result<Option<DynValue>> {
        if self.form == CacheForm::InPlace {
            return self.run_in_place(layer, h, t, propagate);
        }
        let pos = self.cache_len(layer);
        let positions = self.positions_of(pos, t)?;
        let (pk, pv) = match &self.caches[layer - 1] {
            Some(c) => (&c.k, &c.v),
            None => (&self.empty, &self.empty),
        };
        let graph = if propagate { &mut self.props[layer - 1] } else { &mut self.layers[layer - 1] };
        let mut out = graph.run(&[("hidden", h), ("past_k", pk), ("past_v", pv), ("positions", &*positions)])?;
        let hidden = if propagate { None } else { Some(Self::take(&mut out, "hidden_out")?) };
        let k = Self::take(&mut out, "present_k")?;
        let v = Self::take(&mut out, "present_v")?;
        drop(out);
        self.caches[layer - 1] = Some(Cache { k, v, len: pos + t });
        Ok(hidden)
    }

    /// [`OrtBackend::run_cached`] for in-place caches: the layer graph writes the new positions
    /// into the buffers bound as both its past and present; a propagation graph returns them and
    /// they are written here.
    fn run_in_place(&mut self, layer: usize, h: &DynValue, t: usize, propagate: bool) -> Result<Option<DynValue>> {
        let pos = self.cache_len(layer);
        let positions = self.positions_of(pos, t)?;
        self.make_room(layer, pos + t)?;
        let c = self.caches[layer - 1].as_mut().expect("made room above");
        let hidden = if propagate {
            let mut out = self.props[layer - 1].run(&[("hidden", h), ("positions", &*positions)])?;
            let (k, v) = (Self::take(&mut out, "new_k")?, Self::take(&mut out, "new_v")?);
            drop(out);
            positions::write_at(&mut c.k, 0, pos, &k, 0)?;
            positions::write_at(&mut c.v, 0, pos, &v, 0)?;
            None
        } else {
            let mut out = self.layers[layer - 1].run_in_place(&[("hidden", h), ("positions", &*positions)], &mut [("past_k", "present_k", &mut c.k), ("past_v", "present_v", &mut c.v)])?;
            Some(Self::take(&mut out, "hidden_out")?)
        };
        c.len = pos + t;
        Ok(hidden)
    }

    /// Makes `layer`'s in-place buffers hold at least `need` positions: allocated at the first
    /// use ([`OrtBackend::capacity`] positions, or `need`), doubled (cached positions copied)
    /// when outgrown.
    fn make_room(&mut self, layer: usize, need: usize) -> Result<()> {
        let shape = [1, self.cfg.kv_heads(), self.capacity, self.cfg.head_dim()];
        let len = self.cache_len(layer);
        let old = self.caches[layer - 1].as_ref();
        let k = positions::grown(self.precision, old.map(|c| &c.k), len, need, shape)?;
        let v = positions::grown(self.precision, old.map(|c| &c.v), len, need, shape)?;
        if let (Some(k), Some(v)) = (k, v) {
            self.caches[layer - 1] = Some(Cache { k, v, len });
        }
        Ok(())
    }

    /// A host copy of a cache's keys and values, its `len` positions each (in place, the
    /// buffers hold more).
    fn snapshot(c: &Cache) -> Result<KvSnapshot> {
        let (k, v) = (positions::gather(&[(&c.k, 0, c.len)], 2)?, positions::gather(&[(&c.v, 0, c.len)], 2)?);
        Ok(KvSnapshot { k: to_host_f32(&k)?, v: to_host_f32(&v)?, len: c.len })
    }

    fn summary(&mut self, h: &DynValue) -> Result<HeadSummary> {
        let mut out = self.head.run(&[("hidden", h)])?;
        let s = Self::take(&mut out, "summary")?;
        let s = to_host_f32(&s)?;
        Ok(HeadSummary::from_reduced(s[0] as u32, s[1], s[2], s[3]))
    }
}

/// The export's full-depth graph (embedding, every layer, head) as one session with its own KV
/// caches: what layer-by-layer dispatch is compared against (benches).
pub struct FullDepth {
    graph: Graph,
    caches: Vec<(DynValue, DynValue)>,
    len: usize,
    layers: usize,
    empty: DynValue,
    form: CacheForm,
    precision: Precision,
    /// `[1, kv, capacity, hd]` of a new in-place buffer.
    buffer_shape: [usize; 4],
}

impl FullDepth {
    /// Opens `full.onnx` of the export of `files` in `precision`.
    pub fn open(files: &ModelFiles, device: DeviceKind, precision: Precision, threads: usize, spinning: bool) -> Result<Self> {
        // The export the layer-by-layer backend on this device opens: its caches in the same form.
        let form = CacheForm::for_run(device == DeviceKind::Cpu, precision);
        let ex = export::ensure(files, precision, form, &mut |m: &str| eprintln!("warning: {m}"))?;
        Self::open_file(&ex.dir.join("full.onnx"), files, device, precision, threads, spinning, ex.manifest.cache_form)
    }

    /// Opens a full-depth graph file of `files` whose caches are in `form` (e.g. one written
    /// with external data).
    pub fn open_file(path: &Path, files: &ModelFiles, device: DeviceKind, precision: Precision, threads: usize, spinning: bool, form: CacheForm) -> Result<Self> {
        let rt = runtime::runtime()?;
        let path = path.to_path_buf();
        let session = session_builder(rt, device, threads, spinning, true)?.commit_from_file(&path).map_err(|e| creation_error(&path, precision, device, e))?;
        let binding = session.create_binding().map_err(oe)?;
        let outputs = session.outputs().iter().map(|o| o.name().to_string()).collect();
        let empty = empty_tensor(precision, [1, files.config.kv_heads(), 0, files.config.head_dim()])?;
        let cfg = &files.config;
        let buffer_shape = [1, cfg.kv_heads(), cfg.max_position_embeddings.clamp(1, 4096), cfg.head_dim()];
        Ok(FullDepth { graph: Graph { session, binding, outputs, mem: mem_info(device)? }, caches: Vec::new(), len: 0, layers: cfg.num_hidden_layers, empty, form, precision, buffer_shape })
    }

    /// Clears the caches (in-place buffers are kept).
    pub fn reset(&mut self) {
        if self.form == CacheForm::Concat {
            self.caches.clear();
        }
        self.len = 0;
    }

    /// Runs `tokens` through every layer and the head, appending to the caches.
    pub fn step(&mut self, tokens: &[u32]) -> Result<HeadSummary> {
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let ids = Tensor::from_array(([ids.len()], ids)).map_err(oe)?.into_dyn();
        let positions = OrtBackend::positions(self.len, tokens.len())?;
        if self.form == CacheForm::InPlace {
            return self.step_in_place(&ids, &positions, tokens.len());
        }
        let names: Vec<(String, String)> = (1..=self.layers).map(|i| (format!("past_k_{i}"), format!("past_v_{i}"))).collect();
        let mut inputs: Vec<(&str, &DynValue)> = vec![("ids", &ids), ("positions", &positions)];
        for (i, (k, v)) in names.iter().enumerate() {
            let (pk, pv) = self.caches.get(i).map(|(a, b)| (a, b)).unwrap_or((&self.empty, &self.empty));
            inputs.push((k.as_str(), pk));
            inputs.push((v.as_str(), pv));
        }
        let mut out = self.graph.run(&inputs)?;
        let s = to_host_f32(&OrtBackend::take(&mut out, "summary")?)?;
        let mut caches = Vec::with_capacity(self.layers);
        for i in 1..=self.layers {
            caches.push((OrtBackend::take(&mut out, &format!("present_k_{i}"))?, OrtBackend::take(&mut out, &format!("present_v_{i}"))?));
        }
        drop(out);
        self.caches = caches;
        self.len += tokens.len();
        Ok(HeadSummary::from_reduced(s[0] as u32, s[1], s[2], s[3]))
    }

    /// [`FullDepth::step`] with every layer's buffers bound as its past and present.
    fn step_in_place(&mut self, ids: &DynValue, positions: &DynValue, t: usize) -> Result<HeadSummary> {
        let need = self.len + t;
        if self.caches.is_empty() || positions::capacity(&self.caches[0].0) < need {
            let old = std::mem::take(&mut self.caches);
            for i in 0..self.layers {
                let o = old.get(i);
                let k = positions::grown(self.precision, o.map(|c| &c.0), self.len, need, self.buffer_shape)?.expect("grown when short");
                let v = positions::grown(self.precision, o.map(|c| &c.1), self.len, need, self.buffer_shape)?.expect("grown when short");
                self.caches.push((k, v));
            }
        }
        let names: Vec<[String; 4]> = (1..=self.layers).map(|i| [format!("past_k_{i}"), format!("present_k_{i}"), format!("past_v_{i}"), format!("present_v_{i}")]).collect();
        let mut buffers: Vec<(&str, &str, &mut DynValue)> = Vec::with_capacity(2 * self.layers);
        for (n, (k, v)) in names.iter().zip(self.caches.iter_mut()) {
            buffers.push((&n[0], &n[1], k));
            buffers.push((&n[2], &n[3], v));
        }
        let mut out = self.graph.run_in_place(&[("ids", ids), ("positions", positions)], &mut buffers)?;
        let s = to_host_f32(&OrtBackend::take(&mut out, "summary")?)?;
        drop(out);
        self.len = need;
        Ok(HeadSummary::from_reduced(s[0] as u32, s[1], s[2], s[3]))
    }
}

/// `[shape]` with no elements, in `p`.
fn empty_tensor(p: Precision, shape: [usize; 4]) -> Result<DynValue> {
    Ok(match p {
        Precision::F32 => Tensor::<f32>::from_array((shape, Vec::<f32>::new())).map_err(oe)?.into_dyn(),
        Precision::F16 => Tensor::<half::f16>::from_array((shape, Vec::<half::f16>::new())).map_err(oe)?.into_dyn(),
        Precision::Bf16 => Tensor::<half::bf16>::from_array((shape, Vec::<half::bf16>::new())).map_err(oe)?.into_dyn(),
    })
}

/// A value's elements as host f32 (copied to the CPU first when it lives elsewhere).
fn to_host_f32(v: &DynValue) -> Result<Vec<f32>> {
    let t = v.view().downcast::<ort::value::DynTensorValueType>().map_err(oe)?;
    if t.memory_info().is_cpu_accessible() {
        return host_f32(&t);
    }
    host_f32(&t.to(AllocationDevice::CPU, 0).map_err(oe)?)
}

fn host_f32(t: &ort::value::DynTensor) -> Result<Vec<f32>> {
    use ort::value::TensorElementType as E;
    Ok(match t.data_type() {
        E::Float32 => t.try_extract_tensor::<f32>().map_err(oe)?.1.to_vec(),
        E::Float16 => t.try_extract_tensor::<half::f16>().map_err(oe)?.1.iter().map(|x| x.to_f32()).collect(),
        E::Bfloat16 => t.try_extract_tensor::<half::bf16>().map_err(oe)?.1.iter().map(|x| x.to_f32()).collect(),
        other => return Err(Error::Internal(format!("ort: unexpected element type {other:?}"))),
    })
}

/// The element type ONNX Runtime's optimized layer graph multiplies matrices in (`f32`, `f16`,
/// `bf16`), or `unknown` when the optimized model could not be read.
pub fn compute_dtype_of(optimized: &Path) -> String {
    use prost::Message;
    let Ok(bytes) = std::fs::read(optimized) else { return "unknown".into() };
    let Ok(m) = onnx::ModelProto::decode(bytes.as_slice()) else { return "unknown".into() };
    let types = onnx::value_types(&m);
    let mut seen: Vec<i32> = Vec::new();
    for n in m.graph.iter().flat_map(|g| &g.node) {
        if n.op_type.contains("MatMul") || n.op_type == "Gemm" {
            if let Some(t) = n.input.iter().filter_map(|i| types.get(i)).next() {
                seen.push(*t);
            }
        }
    }
    seen.sort();
    seen.dedup();
    let name = |t: i32| match t {
        onnx::dt::FLOAT => "f32",
        onnx::dt::FLOAT16 => "f16",
        onnx::dt::BFLOAT16 => "bf16",
        _ => "other",
    };
    match seen.as_slice() {
        [] => "unknown".into(),
        v => v.iter().map(|&t| name(t)).collect::<Vec<_>>().join("+"),
    }
}

impl Backend for OrtBackend {
    type Hidden = Hidden;

    fn num_layers(&self) -> usize {
        self.cfg.num_hidden_layers
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    fn has_classifier(&self) -> bool {
        self.classifier.is_some()
    }

    fn reset(&mut self) {
        match self.form {
            CacheForm::Concat => self.caches.iter_mut().for_each(|c| *c = None),
            // Keep the buffers (a new prompt does not reallocate them inside its timed prefill).
            CacheForm::InPlace => self.caches.iter_mut().flatten().for_each(|c| c.len = 0),
        }
    }

    fn cache_len(&self, layer: usize) -> usize {
        self.caches[layer - 1].as_ref().map_or(0, |c| c.len)
    }

    fn embed(&mut self, tokens: &[u32]) -> Result<Hidden> {
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let ids = Tensor::from_array(([ids.len()], ids)).map_err(oe)?.into_dyn();
        let mut out = self.embed.run(&[("ids", &ids)])?;
        Ok(Rc::new(Self::take(&mut out, "hidden")?))
    }

    fn layer(&mut self, layer: usize, h: &Hidden) -> Result<Hidden> {
        let t = Self::t_of(h)?;
        let hidden = self.run_cached(layer, h, t, false)?;
        Ok(Rc::new(hidden.ok_or_else(|| Error::Internal("ort: layer graph without hidden_out".into()))?))
    }

    fn propagate(&mut self, layer: usize, h: &Hidden) -> Result<()> {
        self.run_cached(layer, h, 1, true).map(|_| ())
    }

    fn head(&mut self, h: &Hidden) -> Result<HeadSummary> {
        self.summary(h)
    }

    fn exit_logits(&mut self, h: &Hidden) -> Result<Vec<f32>> {
        let mut out = self.head.run(&[("hidden", h)])?;
        let l = Self::take(&mut out, "logits")?;
        to_host_f32(&l)
    }

    fn cosine(&mut self, a: &Hidden, b: &Hidden) -> Result<f32> {
        if self.on_cpu {
            // The CPU provider's values are host memory: the same f64 computation as candle's.
            let d = self.cfg.hidden_size;
            let (a, b) = (to_host_f32(a)?, to_host_f32(b)?);
            return Ok(crate::head::cosine(&a[a.len() - d..], &b[b.len() - d..]));
        }
        let mut out = self.cosine.run(&[("a", a), ("b", b)])?;
        Ok(to_host_f32(&Self::take(&mut out, "cosine")?)?[0])
    }

    fn classifier(&mut self, layer: usize, h: &Hidden) -> Result<f32> {
        let Some(c) = self.classifier.as_mut() else {
            return Err(Error::no_classifiers());
        };
        let l = Tensor::from_array(([1usize], vec![(layer - 1) as i64])).map_err(oe)?.into_dyn();
        let mut out = c.run(&[("hidden", h), ("layer", &l)])?;
        Ok(to_host_f32(&Self::take(&mut out, "prob")?)?[0])
    }

    fn sync(&self) -> Result<()> {
        // run_binding returns when the outputs are ready (ORT synchronizes bound outputs).
        Ok(())
    }

    fn runtime_info(&self) -> RuntimeInfo {
        self.setup.clone()
    }

}

impl crate::backend::Inspect for OrtBackend {
    fn hidden_to_host(&self, h: &Hidden) -> Result<Vec<f32>> {
        to_host_f32(h)
    }
    fn cached_kv(&self, layer: usize) -> Result<Option<KvSnapshot>> {
        self.caches[layer - 1].as_ref().filter(|c| c.len > 0).map(Self::snapshot).transpose()
    }
}


impl Speculate for OrtBackend {
    fn truncate(&mut self, layer: usize, n: usize) -> Result<()> {
        let form = self.form;
        let Some(c) = self.caches[layer - 1].as_mut() else { return Ok(()) };
        if n >= c.len {
            return Ok(());
        }
        if form == CacheForm::InPlace {
            // The positions past `n` are overwritten by the next ones written.
            c.len = n;
            return Ok(());
        }
        if n == 0 {
            self.caches[layer - 1] = None;
            return Ok(());
        }
        let (k, v) = (positions::gather(&[(&c.k, 0, n)], 2)?, positions::gather(&[(&c.v, 0, n)], 2)?);
        self.caches[layer - 1] = Some(Cache { k, v, len: n });
        Ok(())
    }

    fn heads(&mut self, h: &Hidden) -> Result<Vec<HeadSummary>> {
        let t = Self::t_of(h)?;
        (0..t).map(|i| {
            let row = positions::gather(&[(h.as_ref(), i, i + 1)], 1)?;
            self.summary(&row)
        }).collect()
    }

    fn position_logits(&mut self, h: &Hidden) -> Result<Vec<Vec<f32>>> {
        let t = Self::t_of(h)?;
        (0..t).map(|i| {
            let row: Hidden = Rc::new(positions::gather(&[(h.as_ref(), i, i + 1)], 1)?);
            self.exit_logits(&row)
        }).collect()
    }

    fn join(&mut self, parts: &[Hidden]) -> Result<Hidden> {
        let spans: Vec<(&DynValue, usize, usize)> = parts.iter().map(|p| Ok((p.as_ref(), 0, Self::t_of(p)?))).collect::<Result<_>>()?;
        Ok(Rc::new(positions::gather(&spans, 1)?))
    }
}

impl OrtBackend {
    /// Runs `f` with `row`'s caches in place of the single-row caches (concatenating form only:
    /// in place, rows share buffers, `rows.rs`).
    fn with_row<T>(&mut self, row: usize, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let mut caches = std::mem::take(&mut self.row_caches[row]);
        std::mem::swap(&mut self.caches, &mut caches);
        let out = f(self);
        std::mem::swap(&mut self.caches, &mut caches);
        self.row_caches[row] = caches;
        out
    }

    /// The last position of `h` `[1, t, d]`.
    fn last_of(h: &Hidden) -> Result<Hidden> {
        let t = Self::t_of(h)?;
        Ok(if t == 1 { h.clone() } else { Rc::new(positions::gather(&[(h.as_ref(), t - 1, t)], 1)?) })
    }
}

/// Batched speculation on ONNX Runtime: states joined and exit heads at every position row by
/// row; the verification passes themselves are [`crate::backend::Batch::layer_rows`] calls.
impl crate::backend::SpeculateRows for OrtBackend {
    fn join_rows(&mut self, parts: &[&Vec<Hidden>], picks: &[Vec<(usize, usize)>]) -> Result<Vec<Hidden>> {
        picks.iter().map(|seg| {
            let lasts: Vec<Hidden> = seg.iter().map(|&(p, i)| Self::last_of(&parts[p][i])).collect::<Result<_>>()?;
            self.join(&lasts)
        }).collect()
    }

    fn heads_rows(&mut self, h: &Vec<Hidden>) -> Result<Vec<Vec<HeadSummary>>> {
        if self.rows_in_place() {
            return self.per_position(h, Self::head_of_rows);
        }
        h.iter().map(|x| self.heads(x)).collect()
    }

    fn position_logits_rows(&mut self, h: &Vec<Hidden>) -> Result<Vec<Vec<Vec<f32>>>> {
        if self.rows_in_place() {
            return self.per_position(h, Self::logits_of_rows);
        }
        h.iter().map(|x| self.position_logits(x)).collect()
    }
}

/// Batched decoding on ONNX Runtime. In place (the CPU in f32 and f16), all rows share one
/// buffer per layer and each layer, propagation and head call runs every row at once, reading
/// each weight once (`rows.rs`). Concatenating (CUDA, bf16), every call runs row by row through
/// the single-row calls, each row with its own caches, so each weight is read once per row
/// (`shares_weight_reads` is false, and records say so).
impl crate::backend::Batch for OrtBackend {
    type Rows = Vec<Hidden>;

    fn shares_weight_reads(&self) -> bool {
        self.rows_in_place()
    }

    fn start_rows(&mut self, n: usize, capacity: usize) -> Result<()> {
        let l = self.cfg.num_hidden_layers;
        if !self.rows_in_place() {
            self.row_caches = (0..n).map(|_| (0..l).map(|_| None).collect()).collect();
        } else if self.batch.rows() == n {
            // Keep the buffers, as a single row's are kept between prompts.
            self.batch.clear();
        } else {
            self.batch = rows::RowBuffers::new(n, l);
        }
        // Row buffers are allocated at a layer's first call with this many positions.
        self.row_capacity = capacity.max(1);
        Ok(())
    }

    fn row_cache_len(&self, row: usize, layer: usize) -> usize {
        if self.rows_in_place() {
            return self.batch.len(row, layer);
        }
        self.row_caches[row][layer - 1].as_ref().map_or(0, |c| c.len)
    }

    fn embed_rows(&mut self, tokens: &[&[u32]]) -> Result<Vec<Hidden>> {
        tokens.iter().map(|t| self.embed(t)).collect()
    }

    fn layer_rows(&mut self, layer: usize, rows: &[usize], h: &Vec<Hidden>) -> Result<Vec<Hidden>> {
        if self.rows_in_place() {
            return self.layer_in_place_rows(layer, rows, h);
        }
        self.last_reads = rows.len();
        rows.iter().zip(h).map(|(&r, x)| self.with_row(r, |b| b.layer(layer, x))).collect()
    }

    fn last_layer_reads(&self, _rows: usize) -> usize {
        self.last_reads
    }

    fn propagate_rows(&mut self, layer: usize, rows: &[usize], h: &Vec<Hidden>) -> Result<()> {
        if self.rows_in_place() {
            return self.propagate_in_place_rows(layer, rows, h);
        }
        for (&r, x) in rows.iter().zip(h) {
            let x = Self::last_of(x)?;
            self.with_row(r, |b| b.propagate(layer, &x))?;
        }
        Ok(())
    }

    fn head_rows(&mut self, h: &Vec<Hidden>) -> Result<Vec<HeadSummary>> {
        if self.rows_in_place() {
            return self.head_of_rows(h);
        }
        h.iter().map(|x| self.head(x)).collect()
    }

    fn exit_logits_rows(&mut self, h: &Vec<Hidden>) -> Result<Vec<Vec<f32>>> {
        if self.rows_in_place() {
            return self.logits_of_rows(h);
        }
        h.iter().map(|x| self.exit_logits(x)).collect()
    }

    fn cosine_rows(&mut self, a: &Vec<Hidden>, b: &Vec<Hidden>) -> Result<Vec<f32>> {
        a.iter().zip(b).map(|(x, y)| self.cosine(x, y)).collect()
    }

    fn classifier_rows(&mut self, layer: usize, h: &Vec<Hidden>) -> Result<Vec<f32>> {
        h.iter().map(|x| self.classifier(layer, x)).collect()
    }

    fn pick_rows(&mut self, parts: &[&Vec<Hidden>], picks: &[(usize, usize)]) -> Result<Vec<Hidden>> {
        picks.iter().map(|&(p, i)| Self::last_of(&parts[p][i])).collect()
    }

    fn truncate_row(&mut self, row: usize, n: usize) -> Result<()> {
        if self.rows_in_place() {
            // The positions past `n` are overwritten by the next ones written.
            self.batch.truncate(row, n);
            return Ok(());
        }
        let layers = self.cfg.num_hidden_layers;
        self.with_row(row, |b| (1..=layers).try_for_each(|l| b.truncate(l, n)))
    }

    fn row_cached_kv(&self, row: usize, layer: usize) -> Result<Option<KvSnapshot>> {
        if self.rows_in_place() {
            return self.row_snapshot(row, layer);
        }
        self.row_caches[row][layer - 1].as_ref().filter(|c| c.len > 0).map(Self::snapshot).transpose()
    }
}
