//! The GPU block of the hardware fingerprint: names, memory, driver and CUDA versions, power
//! limit, clocks, persistence mode.

use super::{GpuBlock, GpuInfo};
use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::{Device, Nvml};

/// The GPU part of the fingerprint (None without GPUs).
pub fn gpu_block(nvml: &Nvml) -> Option<GpuBlock> {
    let count = nvml.device_count().ok().filter(|c| *c > 0)?;
    let cuda_version = nvml.sys_cuda_driver_version().ok().map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
    let gpus = (0..count).filter_map(|i| nvml.device_by_index(i).ok().map(|d| gpu_info(&d, i))).collect();
    Some(GpuBlock { count: count as usize, driver_version: nvml.sys_driver_version().unwrap_or_default(), cuda_version, gpus })
}

fn gpu_info(d: &Device, index: u32) -> GpuInfo {
    GpuInfo {
        index,
        name: d.name().unwrap_or_default(),
        memory_mib: d.memory_info().map(|m| m.total / (1024 * 1024)).unwrap_or(0),
        power_limit_w: d.enforced_power_limit().ok().map(|mw| mw as f64 / 1e3),
        sm_clock_mhz: d.clock_info(Clock::SM).ok(),
        max_sm_clock_mhz: d.max_clock_info(Clock::SM).ok(),
        mem_clock_mhz: d.clock_info(Clock::Memory).ok(),
        max_mem_clock_mhz: d.max_clock_info(Clock::Memory).ok(),
        persistence_mode: d.is_in_persistent_mode().ok(),
    }
}
