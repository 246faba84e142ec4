//! The hardware/software fingerprint recorded with every result (CPU, memory, OS, versions), and
//! a short stable machine id derived from the parts that identify the machine. (The energy issue
//! extends it with GPUs through NVML.)

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
}

/// Version of candle this build links (kept in sync with Cargo.toml's exact pin).
pub const CANDLE_VERSION: &str = "0.11.1";

impl Hardware {
    /// Probes this machine.
    pub fn probe() -> Hardware {
        let mut sys = sysinfo::System::new();
        sys.refresh_cpu_all();
        sys.refresh_memory();
        let cpu_model = sys.cpus().first().map(|c| c.brand().trim().to_string()).unwrap_or_default();
        let cpu_mhz = sys.cpus().first().map(|c| c.frequency()).filter(|&f| f > 0);
        let logical_cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let memory_mib = sys.total_memory() / (1024 * 1024);
        let os = sysinfo::System::long_os_version().unwrap_or_default();
        let kernel = sysinfo::System::kernel_version().unwrap_or_default();
        let id_src = format!("{cpu_model}|{logical_cpus}|{memory_mib}|{os}|{kernel}");
        let machine_id = hex::encode(&Sha256::digest(id_src.as_bytes())[..6]);
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
        }
    }
}

/// Lowercase hex encoding.
pub mod hex {
    /// Encodes bytes as lowercase hex.
    pub fn encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
