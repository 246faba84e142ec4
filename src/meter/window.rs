//! [`EnergyWindow`]: several meters over one window, reported separately and summed without
//! double counting; the idle baseline and idle-subtracted (net) energy.
//!
//! GPU work is asynchronous: synchronize the device right before `begin` and right before `end`
//! (or use [`EnergyWindow::measure`], which calls the given `sync` at both edges).

use super::{counted, Meter, MeterReading, Sources};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Every meter's figures over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowReading {
    /// Wall-clock length of the window, seconds (first `begin` to last `end`).
    pub duration_s: f64,
    /// One reading per meter; `in_total` says which ones the total counts.
    pub readings: Vec<MeterReading>,
    /// Joules summed over the counted readings.
    pub total_j: f64,
    /// Sources of the counted readings joined by `+` (`rapl`, `nvml+rapl`, `estimate`), or `none`.
    pub source_label: Sources,
}

impl WindowReading {
    /// Builds a window reading from meter readings, marking which ones the total counts.
    pub fn from_readings(duration_s: f64, mut readings: Vec<MeterReading>) -> WindowReading {
        let flags = counted(&readings);
        for (r, f) in readings.iter_mut().zip(flags) {
            r.in_total = f;
        }
        let total_j = readings.iter().filter(|r| r.in_total).map(|r| r.energy_j).sum();
        WindowReading { duration_s, source_label: source_label(&readings), total_j, readings }
    }

    /// Joules of the counted readings with this scope (e.g. all GPU boards), None if there is none.
    pub fn scope_j(&self, scope: super::Scope) -> Option<f64> {
        let xs: Vec<f64> = self.readings.iter().filter(|r| r.in_total && r.scope == scope).map(|r| r.energy_j).collect();
        (!xs.is_empty()).then(|| xs.iter().sum())
    }

    /// Whether the total is an estimate (modelled, not measured).
    pub fn is_estimate(&self) -> bool {
        self.source_label.is_estimate_only()
    }
}

/// `nvml+rapl`-style label of the counted readings' sources, or `none`.
pub fn source_label(readings: &[MeterReading]) -> Sources {
    Sources::of(readings.iter().filter(|r| r.in_total).map(|r| r.source))
}

/// A set of meters run over the same windows.
pub struct EnergyWindow {
    meters: Vec<Box<dyn Meter>>,
    started: Option<Instant>,
}

impl EnergyWindow {
    /// A window over `meters` (may be empty: its readings are then empty and labelled `none`).
    pub fn new(meters: Vec<Box<dyn Meter>>) -> EnergyWindow {
        EnergyWindow { meters, started: None }
    }

    /// The meters.
    pub fn meters(&self) -> &[Box<dyn Meter>] {
        &self.meters
    }

    /// True when a meter reads a coarse hardware counter that needs windows of a minimum length
    /// (NVML, RAPL); the estimate is derived from process CPU time and needs none.
    pub fn needs_min_window(&self) -> bool {
        self.meters.iter().any(|m| m.source() != super::Source::Estimate)
    }

    /// Opens a window on every meter. Synchronize GPU work before calling. If one meter fails,
    /// the ones already begun are closed again and its error is returned.
    pub fn begin(&mut self) -> Result<()> {
        if self.started.is_some() {
            return Err(Error::Internal("energy window: begin() called twice".into()));
        }
        let t0 = Instant::now();
        begin_all(&mut self.meters)?;
        self.started = Some(t0);
        Ok(())
    }

    /// Closes the window on every meter. Synchronize GPU work before calling. Every meter is
    /// closed even when one fails; the first error is returned.
    pub fn end(&mut self) -> Result<WindowReading> {
        let t0 = self.started.take().ok_or_else(|| Error::Internal("energy window: end() without begin()".into()))?;
        let readings = end_all(&mut self.meters)?;
        Ok(WindowReading::from_readings(t0.elapsed().as_secs_f64(), readings))
    }

    /// Runs `work` inside a window, calling `sync` (e.g. a CUDA device synchronize) right before
    /// `begin` and right before `end`.
    pub fn measure<T>(&mut self, sync: &dyn Fn(), work: impl FnOnce() -> T) -> Result<(T, WindowReading)> {
        sync();
        self.begin()?;
        let out = work();
        sync();
        let reading = self.end()?;
        Ok((out, reading))
    }

    /// Idle power per meter over `seconds` of doing nothing (see [`idle_power`]).
    pub fn idle_power(&mut self, seconds: f64) -> Result<Vec<(String, f64)>> {
        idle_power(&mut self.meters, seconds)
    }
}

/// Average power of each meter, `(meter name, watts)`, over `seconds` of sleeping (0 skips and
/// returns nothing). Run it before a sweep, with the device idle.
pub fn idle_power(meters: &mut [Box<dyn Meter>], seconds: f64) -> Result<Vec<(String, f64)>> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(Error::setting("--idle-seconds", format!("{seconds} is not a number of seconds ≥ 0")));
    }
    if seconds == 0.0 || meters.is_empty() {
        return Ok(Vec::new());
    }
    begin_all(meters)?;
    std::thread::sleep(Duration::from_secs_f64(seconds));
    Ok(end_all(meters)?.into_iter().map(|r| (r.meter, r.avg_w)).collect())
}

/// Begins every meter; if one fails, closes the ones already begun and returns its error.
fn begin_all(meters: &mut [Box<dyn Meter>]) -> Result<()> {
    for i in 0..meters.len() {
        if let Err(e) = meters[i].begin() {
            for m in &mut meters[..i] {
                let _ = m.end();
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Ends every meter (all of them, even after a failure); returns the first error.
fn end_all(meters: &mut [Box<dyn Meter>]) -> Result<Vec<MeterReading>> {
    let mut out = Vec::with_capacity(meters.len());
    let mut first_err = None;
    for m in meters.iter_mut() {
        match m.end() {
            Ok(r) => out.push(r),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Gross and idle-subtracted energy of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetEnergy {
    /// Per meter: `(name, gross J, net J)`, net = gross − idle W × the meter's window length
    /// (gross where no idle figure exists).
    pub per_meter: Vec<(String, f64, f64)>,
    /// Gross total (counted readings).
    pub gross_j: f64,
    /// Net total (counted readings). May be negative when the work drew less than idle.
    pub net_j: f64,
}

/// Subtracts the idle baseline from each reading and from the total.
pub fn net_energy(reading: &WindowReading, idle: &[(String, f64)]) -> NetEnergy {
    let mut per_meter = Vec::with_capacity(reading.readings.len());
    let (mut gross_j, mut net_j) = (0.0, 0.0);
    for r in &reading.readings {
        let idle_w = idle.iter().find(|(n, _)| *n == r.meter).map_or(0.0, |(_, w)| *w);
        let net = r.energy_j - idle_w * r.duration_s;
        if r.in_total {
            gross_j += r.energy_j;
            net_j += net;
        }
        per_meter.push((r.meter.clone(), r.energy_j, net));
    }
    NetEnergy { per_meter, gross_j, net_j }
}
