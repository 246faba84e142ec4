//! What runtime ran a cell: written by the backends, kept in each result record (a leaf module so
//! that the record schema does not depend on the backends).

/// What a backend is and what building it cost, for the record (set-up times are never inside
/// ms/token).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeInfo {
    /// The runtime's version (candle's, or the ONNX Runtime library's).
    pub version: String,
    /// The precision matrix products run in: candle's weights dtype; for ONNX Runtime read from
    /// the optimized graph it wrote (e.g. `f32` for an f16 export on the CPU provider, which
    /// inserts casts). `dtype` in the key stays the requested precision.
    pub compute_dtype: String,
    /// CPU threads the runtime was given.
    pub threads: usize,
    /// ONNX Runtime: whether intra-op threads spin while waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spinning: Option<bool>,
    /// ONNX Runtime on CUDA: the graphs that could only be created with some nodes on the CPU
    /// provider (ONNX Runtime keeps shape computations there), with the runtime's message; None
    /// when every node runs on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_nodes: Option<String>,
    /// ONNX Runtime: the library file loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    /// ONNX Runtime: the export directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_dir: Option<String>,
    /// ONNX Runtime: the export's own hash (over its files; the weights hash stays the key's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_hash: Option<String>,
    /// ONNX Runtime: seconds spent exporting (0 when the cached export was reused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_s: Option<f64>,
    /// ONNX Runtime: seconds spent creating the sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_s: Option<f64>,
    /// candle on the CPU: the OS threads that ran the kernels, measured in the group's pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<ComputeThreads>,
    /// candle on the CPU: how much of the weights sits on 2 MiB pages (see
    /// `model::huge_pages`); absent in records from before it was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePageShare>,
}

/// How much of a model's weights sits on 2 MiB pages, as the kernel reports it (for the record).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HugePageShare {
    /// MiB of the weights on huge pages (`AnonHugePages` of their arenas in `/proc/self/smaps`).
    pub backed_mib: f64,
    /// MiB of the weights in all, whatever their dtype (only f32 weights are put on huge pages;
    /// a tied LM head counted once).
    pub weights_mib: f64,
}

/// The computing threads a group ran on, as measured inside its pool (for the record).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ComputeThreads {
    /// Distinct OS threads in the group's pool (the calling thread included).
    pub os_threads: usize,
    /// Whether the thread that runs the decode loop is one of them (kernels run inline at N = 1).
    pub caller_computes: bool,
    /// The CPUs each thread was pinned to (pool index order), when `--pin-cpus` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Vec<usize>>,
}
