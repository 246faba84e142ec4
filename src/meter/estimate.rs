//! The estimate meter, used only when no energy counter exists: process CPU time (user + system,
//! this process and its reaped children, from `getrusage`) × per-core power, where per-core power
//! is the CPU's TDP divided by its physical cores (CodeCarbon's approach; its constant for
//! unknown CPUs is 85 W). The TDP comes from `--cpu-tdp-watts`, else a small table of common
//! CPUs, else that 85 W default. Every reading is labelled `estimate`: these joules are modelled
//! from CPU time, not measured, and add nothing beyond the timings.

use super::integrate::average;
use super::{Meter, MeterReading, Scope, Source};
use crate::error::{Error, Result};
use std::time::{Duration, Instant};

/// TDP assumed for a CPU missing from the table (CodeCarbon's `POWER_CONSTANT`, W).
pub const DEFAULT_TDP_W: f64 = 85.0;

/// Common CPUs: (model token, TDP W, physical cores). Figures from the vendors' product pages
/// (ark.intel.com, amd.com/en/products/processors). A token matches when the CPU brand contains
/// it followed by a non-alphanumeric character or the end (so `i9-13900K` does not match
/// `i9-13900KS`).
pub const TDP_TABLE: &[(&str, f64, usize)] = &[
    // AMD EPYC (amd.com product pages: default TDP, cores)
    ("EPYC 7742", 225.0, 64),
    ("EPYC 7763", 280.0, 64),
    ("EPYC 9654", 360.0, 96),
    ("EPYC 9754", 360.0, 128),
    // Intel Xeon Scalable (ark.intel.com: TDP, cores)
    ("Gold 6130", 125.0, 16),
    ("Gold 6248", 150.0, 20),
    ("Platinum 8380", 270.0, 40),
    ("Platinum 8480+", 350.0, 56),
    ("E5-2690 v4", 135.0, 14),
    // Desktop parts (processor base power / default TDP)
    ("i7-12700K", 125.0, 12),
    ("i9-13900K", 125.0, 24),
    ("Ryzen 7 5800X", 105.0, 8),
    ("Ryzen 9 5950X", 105.0, 16),
    ("Ryzen 9 7950X", 170.0, 16),
];

/// Looks a CPU brand string up in [`TDP_TABLE`]: `(token, TDP W, cores)`.
pub fn lookup(brand: &str) -> Option<(&'static str, f64, usize)> {
    TDP_TABLE.iter().copied().find(|(token, _, _)| {
        brand.match_indices(token).any(|(i, _)| brand[i + token.len()..].chars().next().is_none_or(|c| !c.is_alphanumeric()))
    })
}

/// Per-core power model of a CPU.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuPower {
    /// TDP, watts.
    pub tdp_w: f64,
    /// Cores the TDP is shared by.
    pub cores: usize,
    /// Where the TDP comes from, in words.
    pub origin: String,
}

impl CpuPower {
    /// Chooses the TDP: the override, else the table, else [`DEFAULT_TDP_W`]; cores from the table,
    /// else `physical_cores`, else 1.
    pub fn choose(brand: &str, physical_cores: Option<usize>, tdp_override: Option<f64>) -> CpuPower {
        let table = lookup(brand);
        let cores = table.map(|t| t.2).or(physical_cores).unwrap_or(1).max(1);
        match (tdp_override, table) {
            (Some(w), _) => CpuPower { tdp_w: w, cores, origin: "--cpu-tdp-watts".into() },
            (None, Some((token, w, _))) => CpuPower { tdp_w: w, cores, origin: format!("TDP table: {token}") },
            (None, None) => CpuPower {
                tdp_w: DEFAULT_TDP_W,
                cores,
                origin: format!("CPU `{brand}` not in the TDP table: default {DEFAULT_TDP_W} W, set --cpu-tdp-watts to override"),
            },
        }
    }

    /// Watts per fully busy core.
    pub fn per_core_w(&self) -> f64 {
        self.tdp_w / self.cores as f64
    }
}

/// CPU seconds (user + system) used by this process and its reaped children.
pub fn process_cpu_seconds() -> Result<f64> {
    let secs = |who| -> Result<f64> {
        // SAFETY: getrusage writes into the zeroed struct we own; no other memory is touched.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut ru) } != 0 {
            return Err(Error::Internal(format!("getrusage: {}", std::io::Error::last_os_error())));
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
    };
    Ok(secs(libc::RUSAGE_SELF)? + secs(libc::RUSAGE_CHILDREN)?)
}

/// The estimate meter.
pub struct EstimateMeter {
    power: CpuPower,
    begun: Option<(Instant, f64)>,
}

impl EstimateMeter {
    /// A meter with this power model.
    pub fn new(power: CpuPower) -> EstimateMeter {
        EstimateMeter { power, begun: None }
    }

    /// A meter for this machine's CPU (brand and physical cores from sysinfo).
    pub fn probe(tdp_override: Option<f64>) -> EstimateMeter {
        let mut sys = sysinfo::System::new();
        sys.refresh_cpu_all();
        let brand = sys.cpus().first().map(|c| c.brand().trim().to_string()).unwrap_or_default();
        EstimateMeter::new(CpuPower::choose(&brand, sysinfo::System::physical_core_count(), tdp_override))
    }

    /// The power model.
    pub fn power(&self) -> &CpuPower {
        &self.power
    }

    /// The model in words: `process CPU time × 85 W / 2 cores = 42.5 W per busy core; origin`.
    pub fn describe(&self) -> String {
        format!("process CPU time × {} W / {} cores = {:.1} W per busy core; {}", self.power.tdp_w, self.power.cores, self.power.per_core_w(), self.power.origin)
    }
}

impl Meter for EstimateMeter {
    fn name(&self) -> String {
        "estimate:cpu".into()
    }
    fn scope(&self) -> Scope {
        Scope::Estimate
    }
    fn source(&self) -> Source {
        Source::Estimate
    }
    fn update_period(&self) -> Option<Duration> {
        None
    }

    fn begin(&mut self) -> Result<()> {
        self.begun = Some((Instant::now(), process_cpu_seconds()?));
        Ok(())
    }

    fn end(&mut self) -> Result<MeterReading> {
        let (t0, cpu0) = self.begun.take().ok_or_else(|| Error::Internal("estimate:cpu: end() without begin()".into()))?;
        let cpu_s = (process_cpu_seconds()? - cpu0).max(0.0);
        let duration_s = t0.elapsed().as_secs_f64();
        let energy_j = cpu_s * self.power.per_core_w();
        Ok(MeterReading {
            meter: self.name(),
            scope: Scope::Estimate,
            source: Source::Estimate,
            energy_j,
            duration_s,
            avg_w: average(energy_j, duration_s),
            peak_w: None,
            samples: 2,
            update_period_s: None,
            warnings: vec![format!("estimate, not measured: {cpu_s:.3} CPU s × {:.2} W per core; {}", self.power.per_core_w(), self.power.origin)],
            in_total: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lookup_respects_token_ends() {
        assert_eq!(lookup("AMD EPYC 7763 64-Core Processor").map(|t| t.1), Some(280.0));
        assert_eq!(lookup("13th Gen Intel(R) Core(TM) i9-13900K").map(|t| t.1), Some(125.0));
        assert_eq!(lookup("13th Gen Intel(R) Core(TM) i9-13900KS"), None);
        assert_eq!(lookup("AMD EPYC"), None);
    }

    #[test]
    fn choose_prefers_override_then_table_then_default() {
        assert_eq!(CpuPower::choose("AMD EPYC 7763", Some(8), Some(100.0)).tdp_w, 100.0);
        assert_eq!(CpuPower::choose("AMD EPYC 7763", Some(8), None).cores, 64);
        let d = CpuPower::choose("Mystery CPU", Some(2), None);
        assert_eq!((d.tdp_w, d.cores), (DEFAULT_TDP_W, 2));
        assert_eq!(d.per_core_w(), 42.5);
    }
}
