//! The RAPL meter: one zone's counter read at both edges of a window, with a background thread
//! reading it in between so that at most one wraparound can pass between two reads.

use super::{poll_interval, read_energy_uj, wrap_time_s, Zone, UPDATE_PERIOD};
use crate::error::{Error, Result};
use crate::meter::integrate::{average, counter_delta, window_warnings};
use crate::meter::sampler::Sampler;
use crate::meter::{Meter, MeterReading, Scope, Source};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// State owned by the polling thread.
struct Poll {
    path: PathBuf,
    root: PathBuf,
    max_range_uj: u64,
    bound_w: f64,
    interval: Duration,
    last_uj: u64,
    last_t: Instant,
    total_uj: u128,
    wraps: u32,
    reads: usize,
    failures: usize,
    first_error: Option<String>,
    peak_w: Option<f64>,
    longest_gap: Duration,
    big_step: bool,
}

impl Poll {
    /// Reads the counter and folds it in; returns the next interval.
    fn read(&mut self) -> Duration {
        match read_energy_uj(&self.path, &self.root) {
            Ok(now) => self.fold(now, Instant::now()),
            Err(e) => {
                self.failures += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
        self.interval
    }

    fn fold(&mut self, now_uj: u64, t: Instant) {
        let (delta, wrapped) = counter_delta(self.last_uj, now_uj, self.max_range_uj);
        let gap = t.duration_since(self.last_t);
        self.total_uj += delta as u128;
        self.wraps += wrapped as u32;
        self.reads += 1;
        self.longest_gap = self.longest_gap.max(gap);
        if self.max_range_uj > 0 && delta > self.max_range_uj / 2 {
            self.big_step = true;
        }
        if gap.as_secs_f64() > 0.0 {
            let w = delta as f64 / 1e6 / gap.as_secs_f64();
            self.peak_w = Some(self.peak_w.map_or(w, |p| p.max(w)));
            // Poll faster if the observed power would fill a quarter of the range within one interval.
            if w > self.bound_w {
                self.bound_w = w;
                self.interval = self.interval.min(poll_interval(self.max_range_uj, w));
            }
        }
        self.last_uj = now_uj;
        self.last_t = t;
    }

    fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.failures > 0 {
            w.push(format!("{} background reads of {} failed (first: {})", self.failures, self.path.display(), self.first_error.as_deref().unwrap_or("?")));
        }
        let wrap_s = wrap_time_s(self.max_range_uj, self.bound_w);
        if self.longest_gap.as_secs_f64() >= wrap_s || self.big_step {
            w.push(format!(
                "reads of {} were up to {:.3} s apart while one wraparound takes {:.3} s at {:.0} W: a wraparound may have been missed",
                self.path.display(),
                self.longest_gap.as_secs_f64(),
                wrap_s,
                self.bound_w
            ));
        }
        w
    }
}

/// One RAPL zone as a meter.
pub struct RaplMeter {
    zone: Zone,
    scope: Scope,
    root: PathBuf,
    bound_w: f64,
    poll: Duration,
    running: Option<(Instant, Sampler<Poll>)>,
}

impl RaplMeter {
    /// A meter over `zone` (counted with `scope`), polling fast enough for `bound_w` watts.
    pub fn new(zone: Zone, scope: Scope, root: &Path, bound_w: f64) -> RaplMeter {
        let poll = poll_interval(zone.max_range_uj, bound_w);
        RaplMeter { zone, scope, root: root.to_path_buf(), bound_w, poll, running: None }
    }

    /// Overrides the background read interval (tests, benchmarks).
    pub fn with_poll_interval(mut self, poll: Duration) -> RaplMeter {
        self.poll = poll;
        self
    }

    /// The background read interval.
    pub fn poll_interval(&self) -> Duration {
        self.poll
    }

    /// The zone.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }
}

impl Meter for RaplMeter {
    fn name(&self) -> String {
        self.zone.meter_name()
    }
    fn scope(&self) -> Scope {
        self.scope
    }
    fn source(&self) -> Source {
        Source::Rapl
    }
    fn update_period(&self) -> Option<Duration> {
        Some(UPDATE_PERIOD)
    }

    fn begin(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Err(Error::Internal(format!("{}: begin() called twice", self.name())));
        }
        let path = self.zone.energy_path();
        let first = read_energy_uj(&path, &self.root)?;
        let t0 = Instant::now();
        let state = Poll {
            path,
            root: self.root.clone(),
            max_range_uj: self.zone.max_range_uj,
            bound_w: self.bound_w,
            interval: self.poll,
            last_uj: first,
            last_t: t0,
            total_uj: 0,
            wraps: 0,
            reads: 1,
            failures: 0,
            first_error: None,
            peak_w: None,
            longest_gap: Duration::ZERO,
            big_step: false,
        };
        let sampler = Sampler::start("exitbench-rapl", self.poll, state, Poll::read)?;
        self.running = Some((t0, sampler));
        Ok(())
    }

    fn end(&mut self) -> Result<MeterReading> {
        let (t0, sampler) = self.running.take().ok_or_else(|| Error::Internal(format!("{}: end() without begin()", self.name())))?;
        let mut st = sampler.stop()?;
        let now = read_energy_uj(&st.path, &self.root)?;
        let t1 = Instant::now();
        st.fold(now, t1);
        let duration_s = t1.duration_since(t0).as_secs_f64();
        let energy_j = st.total_uj as f64 / 1e6;
        let period = UPDATE_PERIOD.as_secs_f64();
        let mut warnings = window_warnings(energy_j, duration_s, Some(period));
        warnings.extend(st.warnings());
        Ok(MeterReading {
            meter: self.name(),
            scope: self.scope,
            source: Source::Rapl,
            energy_j,
            duration_s,
            avg_w: average(energy_j, duration_s),
            peak_w: st.peak_w,
            samples: st.reads,
            update_period_s: Some(period),
            warnings,
            in_total: true,
        })
    }
}
