//! `exitbench info [--json]`: every meter, available or not and why, and the hardware fingerprint
//! with the memory bandwidth measured now (about 1 s), and the ONNX export cache's directory and
//! size; `--clear-onnx-cache` empties that cache instead.

#![warn(missing_docs)]

use super::meter::MeterFlags;
use crate::error::{Error, Result};
use crate::hardware::Hardware;
use crate::backend::ort::export::{self, CacheUsage};
use crate::meter::{self, MeterStatus};
use serde::Serialize;

/// Flags of `exitbench info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Meter selection.
    #[command(flatten)]
    pub meters: MeterFlags,
    /// Remove every ONNX export from the export cache (and nothing else there), then exit.
    #[arg(long)]
    pub clear_onnx_cache: bool,
}

/// What `info` prints.
#[derive(Debug, Serialize)]
pub struct Info {
    /// Every backend and meter considered.
    pub meters: Vec<MeterStatus>,
    /// Sources a window would report (`rapl`, `nvml+rapl`, `estimate`).
    pub source_label: crate::meter::Sources,
    /// The fingerprint recorded with results.
    pub hardware: Hardware,
    /// The ONNX export cache: directory, number of exports, bytes.
    pub onnx_cache: CacheUsage,
}

/// Detects meters and probes the machine, then prints.
pub fn run(a: InfoArgs) -> Result<()> {
    if a.clear_onnx_cache {
        let was = export::clear_cache()?;
        println!("removed {} ONNX export(s), {}, from {}", was.exports, gb(was.bytes), was.dir.display());
        return Ok(());
    }
    let mut opts = a.meters.options()?;
    opts.nvml_both = true;
    let detected = meter::detect(&opts);
    let source_label = detected.source_label();
    let info = Info { meters: detected.status, source_label, hardware: Hardware::probe().with_bandwidth(std::time::Duration::from_secs(1)), onnx_cache: export::cache_usage() };
    if a.json {
        let s = serde_json::to_string_pretty(&info).map_err(|e| Error::Internal(e.to_string()))?;
        println!("{s}");
        return Ok(());
    }
    println!("Meters (energy source: {}):", info.source_label);
    for m in &info.meters {
        let state = match (m.available, m.used) {
            (_, true) => "used",
            (true, false) => "available",
            (false, false) => "unavailable",
        };
        println!("  {:<24} {:<12} {}", m.name, state, m.why);
    }
    let h = &info.hardware;
    println!("\nHardware (machine id {}):", h.machine_id);
    println!("  CPU        {} ({} logical, {} physical cores{})", h.cpu_model, h.logical_cpus, h.physical_cores.map_or("?".into(), |c| c.to_string()), h.cpu_mhz.map_or(String::new(), |m| format!(", {m} MHz")));
    println!("  memory     {} MiB", h.memory_mib);
    println!("  OS         {} (kernel {})", h.os, h.kernel);
    match &h.gpu {
        None => println!("  GPUs       none (NVML not loaded or no GPU)"),
        Some(g) => {
            println!("  GPUs       {} (driver {}, CUDA {})", g.count, g.driver_version, g.cuda_version.as_deref().unwrap_or("?"));
            for d in &g.gpus {
                let opt = |x: Option<u32>| x.map_or("?".into(), |v| v.to_string());
                println!(
                    "    {}: {} {} MiB, power limit {}, SM {}/{} MHz, memory {}/{} MHz, persistence {}",
                    d.index,
                    d.name,
                    d.memory_mib,
                    d.power_limit_w.map_or("?".into(), |w| format!("{w:.0} W")),
                    opt(d.sm_clock_mhz),
                    opt(d.max_sm_clock_mhz),
                    opt(d.mem_clock_mhz),
                    opt(d.max_mem_clock_mhz),
                    d.persistence_mode.map_or("?", |p| if p { "on" } else { "off" })
                );
            }
        }
    }
    if let (Some(one), Some(all)) = (h.mem_bandwidth_gb_s, h.mem_bandwidth_all_gb_s) {
        println!("  memory bw  {one:.1} GB/s on one thread, {all:.1} GB/s on all threads (STREAM-like triad, measured now)");
    }
    println!("  versions   exitbench {}, candle {}{}", h.exitbench_version, h.candle_version, h.git_commit.as_deref().map(|c| format!(", commit {c}")).unwrap_or_default());
    let c = &info.onnx_cache;
    println!("\nONNX export cache: {} ({} export(s), {}; clear with `exitbench info --clear-onnx-cache`)", c.dir.display(), c.exports, gb(c.bytes));
    Ok(())
}

fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}
