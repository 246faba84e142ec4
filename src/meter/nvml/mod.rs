//! NVIDIA GPUs through NVML (nvml-wrapper, which loads `libnvidia-ml` at run time: a machine
//! without the driver simply lacks these meters, with the loader's reason).
//!
//! Preferred: the total-energy counter (mJ since the driver loaded, Volta and newer) read at both
//! edges of the window. Otherwise instant power (`NVML_FI_DEV_POWER_INSTANT`, not the 1 s average
//! that `power_usage` returns on Ampere and newer) sampled on a background thread at half the
//! measured update period (at most 0.1 s apart) and integrated with the trapezoid rule; on drivers
//! without that field, `power_usage` with a warning. Both kinds can run side by side (for
//! `exitbench meter`'s comparison); a window counts the counter only.
//!
//! Scope: GPU board power (module power on GH200). The caller synchronizes the device at window
//! edges. A GPU shared with other processes gets a warning on every reading.

mod counter;
mod instant;
mod visible;

pub use counter::NvmlCounterMeter;
pub use instant::NvmlInstantMeter;
pub use visible::{index_of_cuda_ordinal, visible_device, VisibleDevice};

use super::{Meter, MeterOptions, MeterStatus};
use crate::error::Error;
use nvml_wrapper::enums::device::{SampleValue, UsedGpuMemory};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::NVML_FI_DEV_POWER_INSTANT;
use nvml_wrapper::{Device, Nvml};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Library names tried in order (`libnvidia-ml.so` is often only in the driver's dev package).
pub const LIBRARIES: [&str; 2] = ["libnvidia-ml.so", "libnvidia-ml.so.1"];
/// Longest interval between two instant-power samples.
pub const MAX_POLL: Duration = Duration::from_millis(100);
/// Shortest interval between two instant-power samples.
pub const MIN_POLL: Duration = Duration::from_millis(2);
/// Update period assumed when it cannot be measured (A100/H100 refresh about every 100 ms).
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(100);
/// Time spent measuring a GPU's update period at detection.
pub const PERIOD_PROBE: Duration = Duration::from_millis(600);

/// NVML loaded from [`LIBRARIES`] once per process and shared (meters, the fingerprint, memory
/// sampling); the error names every library tried and the loader's reason.
pub fn load() -> std::result::Result<Arc<Nvml>, String> {
    static SHARED: std::sync::OnceLock<std::result::Result<Arc<Nvml>, String>> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| load_from(&LIBRARIES)).clone()
}

/// Loads NVML from the first of `libs` that initializes.
pub fn load_from(libs: &[&str]) -> std::result::Result<Arc<Nvml>, String> {
    let mut reasons = Vec::new();
    for lib in libs {
        match Nvml::builder().lib_path(OsStr::new(lib)).init() {
            Ok(n) => return Ok(Arc::new(n)),
            // libloading's message already names the file.
            Err(NvmlError::LibloadingError(e)) => reasons.push(e.to_string()),
            Err(e) => reasons.push(format!("{lib}: {e}")),
        }
    }
    Err(format!("NVML not loaded ({}): no NVIDIA driver here, or its library is not on the loader path", reasons.join("; ")))
}

pub(crate) fn nvml_err(what: &str, e: NvmlError) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

/// How instant power is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstantKind {
    /// `NVML_FI_DEV_POWER_INSTANT` through field values.
    Field,
    /// `nvmlDeviceGetPowerUsage`: a 1 s average on Ampere and newer (except GA100).
    PowerUsage,
}

/// Reads instant power in watts.
pub fn read_power(device: &Device, kind: InstantKind) -> std::result::Result<f64, String> {
    match kind {
        InstantKind::PowerUsage => device.power_usage().map(|mw| mw as f64 / 1e3).map_err(|e| e.to_string()),
        InstantKind::Field => {
            let v = device.field_values_for(&[FieldId(NVML_FI_DEV_POWER_INSTANT)]).map_err(|e| e.to_string())?;
            let s = v.into_iter().next().ok_or("no field value returned")?.map_err(|e| e.to_string())?;
            let mw = match s.value.map_err(|e| e.to_string())? {
                SampleValue::F64(x) => x,
                SampleValue::U32(x) => x as f64,
                SampleValue::U64(x) => x as f64,
                SampleValue::I64(x) => x as f64,
            };
            Ok(mw / 1e3)
        }
    }
}

/// Measures how often `read` changes value: rapid reads (every ~0.5 ms) for at most `budget`,
/// the median gap between changes. None when fewer than two gaps were seen.
pub fn measure_update_period(mut read: impl FnMut() -> Option<f64>, budget: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut last = read();
    let mut changes: Vec<Instant> = Vec::new();
    while t0.elapsed() < budget && changes.len() < 5 {
        std::thread::sleep(Duration::from_micros(500));
        let v = read();
        if v.is_some() && v != last {
            changes.push(Instant::now());
            last = v;
        }
    }
    let mut gaps: Vec<Duration> = changes.windows(2).map(|w| w[1] - w[0]).collect();
    if gaps.len() < 2 {
        return None;
    }
    gaps.sort();
    Some(gaps[gaps.len() / 2])
}

/// Sampling interval: `1 / sample_hz` when given, else half the update period, within
/// [`MIN_POLL`, `MAX_POLL`].
pub fn instant_poll(period: Option<Duration>, sample_hz: Option<f64>) -> Duration {
    let d = match sample_hz {
        Some(hz) if hz > 0.0 => Duration::from_secs_f64(1.0 / hz),
        _ => period.unwrap_or(DEFAULT_PERIOD) / 2,
    };
    d.clamp(MIN_POLL, MAX_POLL)
}

/// Warnings for other processes on a GPU (in a container NVML reports host PIDs, so this
/// process itself may be listed).
pub fn other_processes(device: &Device, index: u32) -> Vec<String> {
    let me = std::process::id();
    let mut procs = device.running_compute_processes().unwrap_or_default();
    procs.extend(device.running_graphics_processes().unwrap_or_default());
    procs.sort_by_key(|p| p.pid);
    procs.dedup_by_key(|p| p.pid);
    procs
        .iter()
        .filter(|p| p.pid != me)
        .map(|p| {
            let mem = match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => format!("{} MiB", b / (1024 * 1024)),
                UsedGpuMemory::Unavailable => "memory unknown".into(),
            };
            format!("GPU {index} is also used by pid {} ({mem}): its draw is in this GPU's reading", p.pid)
        })
        .collect()
}

/// GPU memory in use, MiB, with its scope: `"process"` when NVML lists this process on the GPU,
/// else `"device"` (everything on the GPU: in a container NVML may report host PIDs, so this
/// process is not always found). `None` when NVML or the GPU cannot be read.
pub fn gpu_memory_mib(device: &Device) -> Option<(f64, &'static str)> {
    let me = std::process::id();
    let own = device.running_compute_processes().ok().and_then(|ps| {
        ps.into_iter().find(|p| p.pid == me).and_then(|p| match p.used_gpu_memory {
            UsedGpuMemory::Used(b) => Some(b as f64 / (1024.0 * 1024.0)),
            UsedGpuMemory::Unavailable => None,
        })
    });
    match own {
        Some(mib) => Some((mib, "process")),
        None => device.memory_info().ok().map(|m| (m.used as f64 / (1024.0 * 1024.0), "device")),
    }
}

/// Finds the NVML meters: per GPU the counter where supported (plus instant power when
/// `opts.nvml_both`), else instant power.
pub fn detect(opts: &MeterOptions) -> (Vec<Box<dyn Meter>>, Vec<MeterStatus>) {
    match load() {
        Ok(nvml) => detect_with(nvml, opts),
        Err(why) => (Vec::new(), vec![MeterStatus::new("nvml", false, false, why)]),
    }
}

/// [`detect`] with an already loaded NVML.
pub fn detect_with(nvml: Arc<Nvml>, opts: &MeterOptions) -> (Vec<Box<dyn Meter>>, Vec<MeterStatus>) {
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => return (Vec::new(), vec![MeterStatus::new("nvml", false, false, format!("NVML loaded but cannot count GPUs: {e}"))]),
    };
    let indices: Vec<u32> = opts.gpus.clone().unwrap_or_else(|| (0..count).collect());
    let mut meters: Vec<Box<dyn Meter>> = Vec::new();
    let mut status = Vec::new();
    for i in indices {
        let name = format!("nvml:{i}");
        let d = match nvml.device_by_index(i) {
            Ok(d) => d,
            Err(e) => {
                status.push(MeterStatus::new(name, false, false, format!("no GPU {i} ({count} found): {e}")));
                continue;
            }
        };
        let counter = d.total_energy_consumption();
        let kind = [InstantKind::Field, InstantKind::PowerUsage].into_iter().find(|k| read_power(&d, *k).is_ok());
        match (counter, kind) {
            (Ok(_), k) => {
                let period = measure_update_period(|| d.total_energy_consumption().ok().map(|v| v as f64), PERIOD_PROBE);
                status.push(MeterStatus::new(&name, true, true, format!("total-energy counter (update period {})", fmt_period(period))));
                meters.push(Box::new(NvmlCounterMeter::new(nvml.clone(), i, period)));
                if let (true, Some(k)) = (opts.nvml_both, k) {
                    meters.push(Box::new(instant_meter(&nvml, &d, i, k, opts)));
                    status.push(MeterStatus::new(format!("nvml-instant:{i}"), true, true, "instant power, for comparison (not in the total)"));
                }
            }
            (Err(e), Some(k)) => {
                let m = instant_meter(&nvml, &d, i, k, opts);
                let why = format!("no energy counter ({e}): {k:?} power sampled every {:.0} ms", m.poll_interval().as_secs_f64() * 1e3);
                status.push(MeterStatus::new(format!("nvml-instant:{i}"), true, true, why));
                meters.push(Box::new(m));
            }
            (Err(e), None) => status.push(MeterStatus::new(name, false, false, format!("neither an energy counter nor power readings: {e}"))),
        }
    }
    let summary = MeterStatus::new("nvml", count > 0, !meters.is_empty(), format!("{count} GPU(s), driver {}", nvml.sys_driver_version().unwrap_or_else(|e| e.to_string())));
    status.insert(0, summary);
    (meters, status)
}

fn instant_meter(nvml: &Arc<Nvml>, d: &Device, i: u32, k: InstantKind, opts: &MeterOptions) -> NvmlInstantMeter {
    let period = measure_update_period(|| read_power(d, k).ok(), PERIOD_PROBE);
    NvmlInstantMeter::new(nvml.clone(), i, k, period, instant_poll(period, opts.sample_hz))
}

fn fmt_period(p: Option<Duration>) -> String {
    p.map_or("not measured".into(), |p| format!("{:.0} ms", p.as_secs_f64() * 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_is_half_the_period_within_bounds() {
        assert_eq!(instant_poll(Some(Duration::from_millis(100)), None), Duration::from_millis(50));
        assert_eq!(instant_poll(Some(Duration::from_secs(1)), None), MAX_POLL);
        assert_eq!(instant_poll(None, Some(100.0)), Duration::from_millis(10));
        assert_eq!(instant_poll(None, None), Duration::from_millis(50));
    }

    #[test]
    fn update_period_of_a_scripted_counter() {
        let t0 = Instant::now();
        let p = measure_update_period(|| Some((t0.elapsed().as_millis() / 20) as f64), Duration::from_millis(400)).unwrap();
        assert!(p >= Duration::from_millis(15) && p <= Duration::from_millis(40), "{p:?}");
        assert_eq!(measure_update_period(|| Some(1.0), Duration::from_millis(20)), None);
    }
}
