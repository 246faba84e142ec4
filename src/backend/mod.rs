//! The backend trait: what a runtime must do for the decode loop (embed, run one layer, propagate
//! a state into a skipped layer, apply the exit head, compute the cheap confidence measures). The
//! decode loop, exit policies and timing are written once against this trait.

pub mod candle;

use crate::error::{Error, Result};

/// Which runtime executes the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// candle (CPU, or CUDA with the `cuda` feature).
    Candle,
}

impl BackendKind {
    /// Parses a backend name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "candle" => Ok(BackendKind::Candle),
            "ort" | "onnxruntime" => Err(Error::setting("--backend", "the ONNX Runtime backend (`ort`) is not built yet")),
            other => Err(Error::setting("--backend", format!("unknown backend `{other}` (expected candle)"))),
        }
    }

    /// Canonical name.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Candle => "candle",
        }
    }
}

/// Where the computation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

    /// The candle device (an error when CUDA is not compiled in or not present).
    pub fn candle_device(self) -> Result<candle_core::Device> {
        match self {
            DeviceKind::Cpu => Ok(candle_core::Device::Cpu),
            DeviceKind::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Unsupported(
                        "CUDA is not available: this exitbench was built without the `cuda` feature".into(),
                    ));
                }
                candle_core::Device::new_cuda(n).map_err(|e| Error::Unsupported(format!("CUDA device {n}: {e}")))
            }
        }
    }
}

/// Sets the number of CPU threads candle's kernels use. Must run before the first tensor op of the
/// process for the thread pool to take it; later calls still change the matmul parallelism.
pub fn set_cpu_threads(n: usize) {
    let n = n.max(1).to_string();
    // Both variables are read by candle (RAYON_NUM_THREADS per matmul, CANDLE_NUM_THREADS for its pool).
    std::env::set_var("RAYON_NUM_THREADS", &n);
    std::env::set_var("CANDLE_NUM_THREADS", &n);
}

/// A sensible thread count for single-token decoding of a model of this width: small models are
/// dominated by the thread pool's dispatch cost (~30 µs per op on 2 cores), so they run on one.
pub fn default_threads(hidden_size: usize) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if hidden_size < 1024 {
        1
    } else {
        cores
    }
}

/// A runtime that runs one decoder layer at a time with per-layer KV caches.
///
/// Layers are numbered 1..=L. Every call that appends to a cache uses that layer's current
/// cache length as the position of the first new token.
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
    /// The exit head on the last position: final norm + LM head, f32 logits on the host.
    fn exit_logits(&mut self, h: &Self::Hidden) -> Result<Vec<f32>>;
    /// Cosine similarity of the last positions of two states, computed in f32.
    fn cosine(&mut self, a: &Self::Hidden, b: &Self::Hidden) -> Result<f32>;
    /// Exit-classifier probability of `layer` for the last position of `h`.
    fn classifier(&mut self, layer: usize, h: &Self::Hidden) -> Result<f32>;
    /// Waits for queued device work (no-op on the CPU); called at timing edges.
    fn sync(&self) -> Result<()>;
}
