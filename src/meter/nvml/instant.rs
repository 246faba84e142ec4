//! The NVML instant-power meter: power sampled on a background thread, deduplicated and
//! integrated with the trapezoid rule.

use super::{nvml_err, other_processes, read_power, InstantKind};
use crate::error::{Error, Result};
use crate::meter::integrate::{dedup, integrate_window, window_warnings};
use crate::meter::sampler::Sampler;
use crate::meter::{Meter, MeterReading, Scope, Source};
use nvml_wrapper::Nvml;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// State of the instant-power sampling thread.
struct Samples {
    nvml: Arc<Nvml>,
    index: u32,
    kind: InstantKind,
    poll: Duration,
    t0: Instant,
    points: Vec<(f64, f64)>,
    failures: usize,
    first_error: Option<String>,
}

impl Samples {
    fn sample(&mut self) -> Duration {
        let r = self.nvml.device_by_index(self.index).map_err(|e| e.to_string()).and_then(|d| read_power(&d, self.kind));
        match r {
            Ok(w) => self.points.push((self.t0.elapsed().as_secs_f64(), w)),
            Err(e) => {
                self.failures += 1;
                self.first_error.get_or_insert(e);
            }
        }
        self.poll
    }
}

/// A GPU metered by sampling instant power and integrating it.
pub struct NvmlInstantMeter {
    nvml: Arc<Nvml>,
    index: u32,
    kind: InstantKind,
    period: Option<Duration>,
    poll: Duration,
    running: Option<Sampler<Samples>>,
    shared: Vec<String>,
}

impl NvmlInstantMeter {
    /// A meter over GPU `index` reading power as `kind`, sampling every `poll`.
    pub fn new(nvml: Arc<Nvml>, index: u32, kind: InstantKind, period: Option<Duration>, poll: Duration) -> Self {
        NvmlInstantMeter { nvml, index, kind, period, poll, running: None, shared: Vec::new() }
    }

    /// The sampling interval.
    pub fn poll_interval(&self) -> Duration {
        self.poll
    }
}

impl Meter for NvmlInstantMeter {
    fn name(&self) -> String {
        format!("nvml-instant:{}", self.index)
    }
    fn scope(&self) -> Scope {
        Scope::GpuBoard
    }
    fn source(&self) -> Source {
        Source::NvmlInstant
    }
    fn update_period(&self) -> Option<Duration> {
        self.period
    }

    fn begin(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Err(Error::Internal(format!("{}: begin() called twice", self.name())));
        }
        let d = self.nvml.device_by_index(self.index).map_err(|e| nvml_err(&self.name(), e))?;
        self.shared = other_processes(&d, self.index);
        let mut s = Samples { nvml: self.nvml.clone(), index: self.index, kind: self.kind, poll: self.poll, t0: Instant::now(), points: Vec::new(), failures: 0, first_error: None };
        s.sample();
        self.running = Some(Sampler::start("exitbench-nvml", self.poll, s, Samples::sample)?);
        Ok(())
    }

    fn end(&mut self) -> Result<MeterReading> {
        let sampler = self.running.take().ok_or_else(|| Error::Internal(format!("{}: end() without begin()", self.name())))?;
        let mut s = sampler.stop()?;
        s.sample();
        let duration_s = s.t0.elapsed().as_secs_f64();
        let pts = dedup(&s.points);
        let i = integrate_window(&pts, 0.0, duration_s);
        let period_s = self.period.map(|p| p.as_secs_f64());
        let mut warnings = window_warnings(i.energy_j, duration_s, period_s);
        if s.points.is_empty() {
            warnings.push(format!("no power sample could be read: {}", s.first_error.as_deref().unwrap_or("?")));
        } else if s.failures > 0 {
            warnings.push(format!("{} power samples failed (first: {})", s.failures, s.first_error.as_deref().unwrap_or("?")));
        }
        if self.kind == InstantKind::PowerUsage {
            warnings.push("integrated nvmlDeviceGetPowerUsage (a 1 s average on Ampere and newer): short windows are smeared".into());
        }
        warnings.append(&mut self.shared);
        Ok(MeterReading {
            meter: self.name(),
            scope: Scope::GpuBoard,
            source: Source::NvmlInstant,
            energy_j: i.energy_j,
            duration_s,
            avg_w: i.avg_w,
            peak_w: i.peak_w,
            samples: s.points.len(),
            update_period_s: period_s,
            warnings,
            in_total: true,
        })
    }
}
