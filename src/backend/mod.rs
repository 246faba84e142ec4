//! The backend seam: what a runtime must do for the decode loop (embed, run one layer, propagate
//! a state into a skipped layer, apply the exit head and reduce it on its device, compute the
//! cheap confidence measures). The decode loop, exit policies and timing are written once
//! against [`Backend`]; [`open`] builds a runtime from backend-neutral [`ModelFiles`], and the
//! caller dispatches once per configuration group (see [`with_backend!`]) into generic code, so
//! the per-token loop keeps static dispatch.

pub mod batch;
pub mod candle;
pub mod ort;
pub mod threads;

use crate::error::{Error, Result};
use crate::model::{ModelFiles, Precision};
pub use crate::head::{HeadPick, HeadSummary};
pub use batch::{Batch, SpeculateRows};
pub use crate::runtime_info::RuntimeInfo;

crate::named_enum! {
    /// Which runtime executes the layers.
    pub enum BackendKind: "backend", "--backend" {
        /// candle (CPU, or CUDA with the `cuda` feature).
        Candle = "candle",
        /// ONNX Runtime through `ort` (CPU provider, or CUDA when its provider is installed).
        Ort = "ort" | "onnxruntime",
    }
}

/// Where the computation runs (written and read as `cpu`, `cuda:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// The host CPU.
    Cpu,
    /// CUDA device with an ordinal.
    Cuda(usize),
}

impl DeviceKind {
    /// Parses `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" | "gpu" => Ok(DeviceKind::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceKind::Cuda(n)),
                _ => Err(Error::setting("--device", format!("unknown device `{s}` (expected cpu, cuda or cuda:N)"))),
            },
        }
    }

    /// Canonical name.
    pub fn name(self) -> String {
        match self {
            DeviceKind::Cpu => "cpu".into(),
            DeviceKind::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for DeviceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DeviceKind::parse(s.trim())
    }
}

impl serde::Serialize for DeviceKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> serde::Deserialize<'de> for DeviceKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DeviceKind::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The most CPU threads a run may ask for: far beyond any machine's cores, low enough that a
/// typo (`--threads 100000`) is an error rather than a hundred thousand OS threads.
pub const MAX_THREADS: usize = 1024;

/// Refuses a thread count of 0 or above [`MAX_THREADS`], naming `flag`.
pub fn check_threads(n: usize, flag: &str) -> Result<()> {
    if n == 0 {
        return Err(Error::setting(flag, "must be at least 1"));
    }
    if n > MAX_THREADS {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        return Err(Error::setting(flag, format!("{n} exceeds the limit of {MAX_THREADS} threads (this machine has {cores} cores)")));
    }
    Ok(())
}

/// Why `backend` on `device` cannot run in this process, when that is known without loading a
/// model (a CUDA device in a build without CUDA, an ONNX Runtime library that cannot be loaded);
/// `None` when it may run.
pub fn known_unsupported(backend: BackendKind, device: DeviceKind) -> Option<String> {
    let err = match (backend, device) {
        (BackendKind::Candle, DeviceKind::Cuda(_)) if !candle_core::utils::cuda_is_available() => candle::candle_device(device).err(),
        (BackendKind::Ort, _) => ort::runtime::runtime().err(),
        _ => None,
    };
    err.map(|e| e.to_string())
}

/// A sensible thread count for single-token decoding of a model of this width, the same rule for
/// every backend: small models are dominated by the thread pool's dispatch cost (~30 µs per op on
/// 2 cores), so they run on one.
pub fn default_threads(hidden_size: usize) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if hidden_size < 1024 {
        1
    } else {
        cores
    }
}

/// A layer's cached keys and values copied to the host, for conformance tests and analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct KvSnapshot {
    /// Keys, row-major `[kv_heads, len, head_dim]`, f32.
    pub k: Vec<f32>,
    /// Values, same layout.
    pub v: Vec<f32>,
    /// Cached positions.
    pub len: usize,
}

/// A runtime that runs one decoder layer at a time with per-layer KV caches.
///
/// Layers are numbered 1..=L. Every call that appends to a cache uses that layer's current
/// cache length as the position of the first new token. Hidden states stay on the backend's
/// device; exit checks return scalars ([`HeadSummary`], cosine, classifier probability) and full
/// logits cross to the host only through [`Backend::exit_logits`], which the decode loop calls
/// only when sampling needs them.
pub trait Backend {
    /// A hidden state `[1, t, d]` living on the backend's device.
    type Hidden: Clone;

    /// Number of layers L.
    fn num_layers(&self) -> usize;
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
    /// Longest sequence the model accepts.
    fn max_positions(&self) -> usize;
    /// True when the model has per-layer exit classifiers.
    fn has_classifier(&self) -> bool;
    /// Clears every layer's cache.
    fn reset(&mut self);
    /// Number of cached positions of `layer`.
    fn cache_len(&self, layer: usize) -> usize;
    /// Embeddings of `tokens`.
    fn embed(&mut self, tokens: &[u32]) -> Result<Self::Hidden>;
    /// Runs `layer` on `h`, appending its keys and values to the layer's cache.
    fn layer(&mut self, layer: usize, h: &Self::Hidden) -> Result<Self::Hidden>;
    /// State propagation: `layer`'s own norm + k/v projections of the exited state `h` (last
    /// position), appended to its cache.
    fn propagate(&mut self, layer: usize, h: &Self::Hidden) -> Result<()>;
    /// The exit head on the last position (final norm + LM head), reduced on the device.
    fn head(&mut self, h: &Self::Hidden) -> Result<HeadSummary>;
    /// The exit head on the last position reduced to what a greedy choice needs (argmax and
    /// top-2 gap, the same values as [`Backend::head`]'s); a backend may skip the normaliser.
    fn head_pick(&mut self, h: &Self::Hidden) -> Result<HeadPick> {
        Ok(self.head(h)?.into())
    }
    /// The exit head's f32 logits of the last position on the host (for sampling and tests).
    fn exit_logits(&mut self, h: &Self::Hidden) -> Result<Vec<f32>>;
    /// Cosine similarity of the last positions of two states, computed in f32 or better.
    fn cosine(&mut self, a: &Self::Hidden, b: &Self::Hidden) -> Result<f32>;
    /// Exit-classifier probability of `layer` for the last position of `h`.
    fn classifier(&mut self, layer: usize, h: &Self::Hidden) -> Result<f32>;
    /// Waits for queued device work (no-op on the CPU); called at timing edges.
    fn sync(&self) -> Result<()>;
    /// What this runtime is and what building it cost.
    fn runtime_info(&self) -> RuntimeInfo;
}

/// What self-speculative decoding needs beyond [`Backend`]: rolling a cache back, the exit head
/// at every position of a multi-token state, and a state assembled from saved per-position
/// states. A backend without it cannot run the `speculative` mode (an `unsupported` cell).
pub trait Speculate: Backend {
    /// Keeps the first `n` positions of `layer`'s cache (drops rejected drafts).
    fn truncate(&mut self, layer: usize, n: usize) -> Result<()>;
    /// The exit head at every position of `h` `[1, t, d]`, one summary per position, reduced on
    /// the device.
    fn heads(&mut self, h: &Self::Hidden) -> Result<Vec<HeadSummary>>;
    /// The exit head's full logits at every position of `h` `[1, t, d]`, on the host (what
    /// speculative sampling compares); one pass of the head over all positions where the
    /// backend can.
    fn position_logits(&mut self, h: &Self::Hidden) -> Result<Vec<Vec<f32>>>;
    /// The states `parts` (each `[1, t_i, d]`) joined along positions, in order.
    fn join(&mut self, parts: &[Self::Hidden]) -> Result<Self::Hidden>;
}

/// Host copies of a backend's state, for conformance tests and analysis (never timed, never
/// needed to decode): a new backend implements [`Backend`] to run, and this to be checked.
pub trait Inspect: Backend {
    /// A copy of `h` on the host, f32 row-major `[t, d]`.
    fn hidden_to_host(&self, h: &Self::Hidden) -> Result<Vec<f32>>;
    /// A copy of `layer`'s cache on the host (`None` while it is empty).
    fn cached_kv(&self, layer: usize) -> Result<Option<KvSnapshot>>;
}

/// A backend built by [`open`]: one variant per runtime. Match it once (e.g. with
/// [`with_backend!`]) and hand the inner backend to generic code.
#[allow(clippy::large_enum_variant)] // one per group, matched once: its size does not matter
pub enum OpenBackend {
    /// candle.
    Candle(candle::CandleBackend),
    /// ONNX Runtime.
    Ort(Box<ort::OrtBackend>),
}

impl OpenBackend {
    /// The runtime.
    pub fn kind(&self) -> BackendKind {
        match self {
            OpenBackend::Candle(_) => BackendKind::Candle,
            OpenBackend::Ort(_) => BackendKind::Ort,
        }
    }
}

/// Runs `$body` with `$b` bound to the concrete backend inside an [`OpenBackend`] (static
/// dispatch from there on).
#[macro_export]
macro_rules! with_backend {
    ($open:expr, $b:ident => $body:expr) => {
        match $open {
            $crate::backend::OpenBackend::Candle($b) => $body,
            $crate::backend::OpenBackend::Ort($b) => {
                let $b = &mut **$b;
                $body
            }
        }
    };
}

/// Builds `kind`'s runtime for `model` on `device` in `precision` with `threads` CPU threads.
/// A device or precision the runtime cannot serve is `Error::Unsupported` with its reason.
pub fn open(kind: BackendKind, model: &ModelFiles, device: DeviceKind, precision: Precision, threads: usize) -> Result<OpenBackend> {
    check_threads(threads, "--threads")?;
    match kind {
        BackendKind::Candle => Ok(OpenBackend::Candle(candle::CandleBackend::open(model, device, precision, threads)?)),
        BackendKind::Ort => Ok(OpenBackend::Ort(Box::new(ort::OrtBackend::open(model, device, precision, threads)?))),
    }
}
