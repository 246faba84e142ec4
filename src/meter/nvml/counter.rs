//! The NVML total-energy counter meter: millijoules since the driver loaded, read at both edges.

use super::{nvml_err, other_processes};
use crate::error::{Error, Result};
use crate::meter::integrate::{average, window_warnings};
use crate::meter::{Meter, MeterReading, Scope, Source};
use nvml_wrapper::{Device, Nvml};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A GPU metered by its total-energy counter.
pub struct NvmlCounterMeter {
    nvml: Arc<Nvml>,
    index: u32,
    period: Option<Duration>,
    begun: Option<(Instant, u64, Vec<String>)>,
}

impl NvmlCounterMeter {
    /// A meter over GPU `index` (its counter must be supported); `period` as measured.
    pub fn new(nvml: Arc<Nvml>, index: u32, period: Option<Duration>) -> Self {
        NvmlCounterMeter { nvml, index, period, begun: None }
    }

    fn read_mj(&self) -> Result<(u64, Device<'_>)> {
        let what = format!("nvml:{}", self.index);
        let d = self.nvml.device_by_index(self.index).map_err(|e| nvml_err(&what, e))?;
        let mj = d.total_energy_consumption().map_err(|e| nvml_err(&what, e))?;
        Ok((mj, d))
    }
}

impl Meter for NvmlCounterMeter {
    fn name(&self) -> String {
        format!("nvml:{}", self.index)
    }
    fn scope(&self) -> Scope {
        Scope::GpuBoard
    }
    fn source(&self) -> Source {
        Source::Nvml
    }
    fn update_period(&self) -> Option<Duration> {
        self.period
    }

    fn begin(&mut self) -> Result<()> {
        let (mj, d) = self.read_mj()?;
        let warnings = other_processes(&d, self.index);
        self.begun = Some((Instant::now(), mj, warnings));
        Ok(())
    }

    fn end(&mut self) -> Result<MeterReading> {
        let (t0, mj0, mut warnings) = self.begun.take().ok_or_else(|| Error::Internal(format!("{}: end() without begin()", self.name())))?;
        let (mj1, _) = self.read_mj()?;
        let duration_s = t0.elapsed().as_secs_f64();
        if mj1 < mj0 {
            warnings.push(format!("energy counter went backwards ({mj0} → {mj1} mJ; driver reloaded?): reading set to 0 J"));
        }
        let energy_j = mj1.saturating_sub(mj0) as f64 / 1e3;
        let period_s = self.period.map(|p| p.as_secs_f64());
        let mut w = window_warnings(energy_j, duration_s, period_s);
        w.append(&mut warnings);
        Ok(MeterReading {
            meter: self.name(),
            scope: Scope::GpuBoard,
            source: Source::Nvml,
            energy_j,
            duration_s,
            avg_w: average(energy_j, duration_s),
            peak_w: None,
            samples: 2,
            update_period_s: period_s,
            warnings: w,
            in_total: true,
        })
    }
}
