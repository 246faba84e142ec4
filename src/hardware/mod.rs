//! The hardware/software fingerprint recorded with every result (CPU, memory, OS, versions, GPUs
//! through NVML), and a short stable machine id derived from the parts that identify the machine.
//! Without GPUs the id is computed exactly as before GPUs were added, so CPU-only machines keep
//! their ids.

pub mod bandwidth;
mod gpu;

pub use gpu::gpu_block;

use crate::hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What ran the benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hardware {
    /// Short stable id: hash of CPU model, logical cores, memory, OS and kernel.
    pub machine_id: String,
    /// Host name (informational; not part of the id).
    pub host: String,
    /// CPU model.
    pub cpu_model: String,
    /// Logical CPUs available to the process.
    pub logical_cpus: usize,
    /// Physical cores, when known.
    pub physical_cores: Option<usize>,
    /// Nominal CPU frequency in MHz, when known.
    pub cpu_mhz: Option<u64>,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// Operating system.
    pub os: String,
    /// Kernel version.
    pub kernel: String,
    /// exitbench version.
    pub exitbench_version: String,
    /// candle version.
    pub candle_version: String,
    /// Git commit of the exitbench build, when known.
    pub git_commit: Option<String>,
    /// NVIDIA GPUs (None without the driver or without GPUs).
    #[serde(default)]
    pub gpu: Option<GpuBlock>,
    /// ONNX Runtime version loaded, when a cell ran on it (not part of the machine id).
    #[serde(default)]
    pub onnxruntime_version: Option<String>,
    /// ONNX Runtime library file loaded, when a cell ran on it (not part of the machine id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnxruntime_library: Option<String>,
    /// Memory bandwidth on one thread, GB/s, measured once per run (STREAM-like triad; not part
    /// of the machine id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_bandwidth_gb_s: Option<f64>,
    /// Memory bandwidth on all threads, GB/s (as above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_bandwidth_all_gb_s: Option<f64>,
    /// Memory bandwidth at each CPU thread count the run's cells use, GB/s (as above): what a
    /// cell's `achieved_gb_s` is compared with.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub mem_bandwidth_by_threads: std::collections::BTreeMap<usize, f64>,
}

/// The GPUs NVML sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuBlock {
    /// Number of GPUs.
    pub count: usize,
    /// NVIDIA driver version.
    pub driver_version: String,
    /// Highest CUDA version the driver supports (`12.4`), when known.
    pub cuda_version: Option<String>,
    /// One entry per GPU.
    pub gpus: Vec<GpuInfo>,
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// NVML index.
    pub index: u32,
    /// Product name (`NVIDIA H200`).
    pub name: String,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// Power limit the driver enforces, watts.
    pub power_limit_w: Option<f64>,
    /// Current SM clock, MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Maximum SM clock, MHz.
    pub max_sm_clock_mhz: Option<u32>,
    /// Current memory clock, MHz.
    pub mem_clock_mhz: Option<u32>,
    /// Maximum memory clock, MHz.
    pub max_mem_clock_mhz: Option<u32>,
    /// Persistence mode (Linux).
    pub persistence_mode: Option<bool>,
}

/// Version of candle this build links (kept in sync with Cargo.toml's exact pin).
pub const CANDLE_VERSION: &str = "0.11.1";

impl Hardware {
    /// `CPU model (N logical CPUs, M MiB)`: how reports and the model card name the machine.
    pub fn summary(&self) -> String {
        format!("{} ({} logical CPUs, {} MiB)", self.cpu_model, self.logical_cpus, self.memory_mib)
    }

    /// This fingerprint with the memory bandwidth measured now (about `budget`).
    pub fn with_bandwidth(self, budget: std::time::Duration) -> Hardware {
        self.with_bandwidth_at(&[], budget)
    }

    /// This fingerprint with the memory bandwidth measured now on one thread, on all threads and
    /// at each of `threads` (about `budget` in total).
    pub fn with_bandwidth_at(mut self, threads: &[usize], budget: std::time::Duration) -> Hardware {
        let all = bandwidth::all_threads();
        let mut counts = vec![1, all];
        counts.extend(threads.iter().map(|&t| t.min(all)));
        let by = bandwidth::measure_threads(&counts, budget);
        let at = |n: usize| by.iter().find(|(t, _)| *t == n).map(|x| x.1);
        self.mem_bandwidth_gb_s = at(1);
        self.mem_bandwidth_all_gb_s = at(all);
        self.mem_bandwidth_by_threads = threads.iter().filter_map(|&t| Some((t, at(t.min(all))?))).collect();
        self
    }

    /// The bandwidth measured at `threads` CPU threads: that count's own measurement, else one
    /// thread's or all threads' when `threads` is 1 or at least the machine's CPUs.
    pub fn bandwidth_at(&self, threads: usize) -> Option<f64> {
        self.mem_bandwidth_by_threads.get(&threads).copied().or(match threads {
            1 => self.mem_bandwidth_gb_s,
            t if t >= self.logical_cpus => self.mem_bandwidth_all_gb_s,
            _ => None,
        })
    }

    /// Probes this machine, GPUs included when NVML loads.
    pub fn probe() -> Hardware {
        let gpu = crate::meter::nvml::load().ok().and_then(|n| gpu::gpu_block(&n));
        Hardware::probe_with_gpu(gpu)
    }

    /// Probes the CPU side of this machine and records `gpu` as its GPUs.
    pub fn probe_with_gpu(gpu: Option<GpuBlock>) -> Hardware {
        let mut sys = sysinfo::System::new();
        sys.refresh_cpu_all();
        sys.refresh_memory();
        let cpu_model = sys.cpus().first().map(|c| c.brand().trim().to_string()).unwrap_or_default();
        let cpu_mhz = sys.cpus().first().map(|c| c.frequency()).filter(|&f| f > 0);
        let logical_cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let memory_mib = sys.total_memory() / (1024 * 1024);
        let os = sysinfo::System::long_os_version().unwrap_or_default();
        let kernel = sysinfo::System::kernel_version().unwrap_or_default();
        let machine_id = machine_id(&cpu_model, logical_cpus, memory_mib, &os, &kernel, gpu.as_ref());
        Hardware {
            machine_id,
            host: sysinfo::System::host_name().unwrap_or_default(),
            cpu_model,
            logical_cpus,
            physical_cores: sysinfo::System::physical_core_count(),
            cpu_mhz,
            memory_mib,
            os,
            kernel,
            exitbench_version: env!("CARGO_PKG_VERSION").to_string(),
            candle_version: CANDLE_VERSION.to_string(),
            git_commit: option_env!("EXITBENCH_GIT_COMMIT").map(str::to_string),
            gpu,
            onnxruntime_version: None,
            onnxruntime_library: None,
            mem_bandwidth_gb_s: None,
            mem_bandwidth_all_gb_s: None,
            mem_bandwidth_by_threads: Default::default(),
        }
    }
}

/// Short stable id: hash of CPU model, logical cores, memory, OS and kernel, plus the GPU names
/// when there are GPUs (the CPU-only id is unchanged by the GPU extension).
pub fn machine_id(cpu_model: &str, logical_cpus: usize, memory_mib: u64, os: &str, kernel: &str, gpu: Option<&GpuBlock>) -> String {
    let mut id_src = format!("{cpu_model}|{logical_cpus}|{memory_mib}|{os}|{kernel}");
    if let Some(g) = gpu.filter(|g| !g.gpus.is_empty()) {
        let names: Vec<String> = g.gpus.iter().map(|d| format!("{}:{}", d.name, d.memory_mib)).collect();
        id_src.push_str(&format!("|gpus={}", names.join(",")));
    }
    hex::encode(&Sha256::digest(id_src.as_bytes())[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_count_has_its_own_bandwidth() {
        let mut h = Hardware::probe();
        (h.logical_cpus, h.mem_bandwidth_gb_s, h.mem_bandwidth_all_gb_s) = (4, Some(10.0), Some(30.0));
        assert_eq!((h.bandwidth_at(1), h.bandwidth_at(2), h.bandwidth_at(4), h.bandwidth_at(8)), (Some(10.0), None, Some(30.0), Some(30.0)));
        h.mem_bandwidth_by_threads.insert(2, 18.0);
        assert_eq!(h.bandwidth_at(2), Some(18.0));
        let back: Hardware = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back.bandwidth_at(2), Some(18.0));
    }

    #[test]
    fn cpu_only_machine_id_is_unchanged() {
        // The id as computed before GPUs were added to the fingerprint.
        let old = hex::encode(&Sha256::digest(b"AMD EPYC|2|7936|Linux 12|6.1")[..6]);
        assert_eq!(machine_id("AMD EPYC", 2, 7936, "Linux 12", "6.1", None), old);
        let g = GpuBlock { count: 0, driver_version: String::new(), cuda_version: None, gpus: vec![] };
        assert_eq!(machine_id("AMD EPYC", 2, 7936, "Linux 12", "6.1", Some(&g)), old);
    }
}
