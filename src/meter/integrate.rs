//! Window arithmetic as pure functions: integrating power samples (trapezoid rule), counters
//! with wraparound, averages that stay finite on zero-length windows, and the warnings a
//! window earns (too short for the meter's update period, 0 J).

/// Windows shorter than this many update periods get a warning.
pub const MIN_PERIODS: f64 = 10.0;

/// The result of integrating power over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Integrated {
    /// Joules.
    pub energy_j: f64,
    /// Window length, seconds.
    pub duration_s: f64,
    /// Average power, watts (0 for a zero-length window).
    pub avg_w: f64,
    /// Highest sampled power, watts (None without samples).
    pub peak_w: Option<f64>,
    /// Samples used.
    pub samples: usize,
}

/// Average power of `energy_j` over `duration_s`; 0 when the window has no length (never NaN).
pub fn average(energy_j: f64, duration_s: f64) -> f64 {
    if duration_s > 0.0 && energy_j.is_finite() {
        energy_j / duration_s
    } else {
        0.0
    }
}

/// Integrates power samples `(t_s, watts)` over the window `[start_s, end_s]` with the trapezoid
/// rule. Samples are sorted by time; the first sample's power is held back to `start_s` and the
/// last one's forward to `end_s`; samples outside the window are clipped (interpolated at the
/// edge). Non-finite samples are skipped. An empty window or no samples gives 0 J.
pub fn integrate_window(samples: &[(f64, f64)], start_s: f64, end_s: f64) -> Integrated {
    let duration_s = (end_s - start_s).max(0.0);
    let mut pts: Vec<(f64, f64)> = samples.iter().copied().filter(|(t, w)| t.is_finite() && w.is_finite()).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let inside: Vec<&(f64, f64)> = pts.iter().filter(|(t, _)| *t >= start_s && *t <= end_s).collect();
    let peak_w = inside.iter().map(|(_, w)| *w).reduce(f64::max);
    let samples_used = inside.len();
    if duration_s == 0.0 || pts.is_empty() {
        return Integrated { energy_j: 0.0, duration_s, avg_w: 0.0, peak_w, samples: samples_used };
    }
    let at = |t: f64| power_at(&pts, t);
    // Knots: the window edges plus every sample strictly inside.
    let mut knots = vec![(start_s, at(start_s))];
    knots.extend(pts.iter().copied().filter(|(t, _)| *t > start_s && *t < end_s));
    knots.push((end_s, at(end_s)));
    let energy_j = trapezoid(&knots);
    Integrated { energy_j, duration_s, avg_w: average(energy_j, duration_s), peak_w, samples: samples_used }
}

/// The trapezoid-rule integral of `(t, y)` points taken in order (0 for fewer than two).
pub fn trapezoid(points: &[(f64, f64)]) -> f64 {
    points.windows(2).map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0).sum()
}

/// Power at `t` from sorted samples: linear between samples, held flat before the first and after
/// the last.
fn power_at(pts: &[(f64, f64)], t: f64) -> f64 {
    let i = pts.partition_point(|(ti, _)| *ti < t);
    if i == 0 {
        return pts[0].1;
    }
    if i == pts.len() {
        return pts[i - 1].1;
    }
    let (t0, w0) = pts[i - 1];
    let (t1, w1) = pts[i];
    if t1 == t0 {
        return w1;
    }
    w0 + (w1 - w0) * (t - t0) / (t1 - t0)
}

/// Drops samples that repeat the previous sample's value (a counter read again before it
/// refreshed), keeping the first of each run and always the last sample (Zeus does the same).
pub fn dedup(samples: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let last = i + 1 == samples.len();
        if last || out.last().is_none_or(|p| p.1 != s.1) {
            out.push(*s);
        }
    }
    out
}

/// Difference of two reads of a counter that wraps to 0 after `max_range` (RAPL's
/// `max_energy_range_uj`): `now - last`, or `now + max_range - last` when it went down (one wrap).
/// With `max_range` 0 (unknown) a decrease counts as 0 and `wrapped` is still reported.
pub fn counter_delta(last: u64, now: u64, max_range: u64) -> (u64, bool) {
    if now >= last {
        (now - last, false)
    } else {
        (max_range.saturating_sub(last).saturating_add(now), true)
    }
}

/// Warnings a window earns: zero length, shorter than [`MIN_PERIODS`] update periods, 0 J.
pub fn window_warnings(energy_j: f64, duration_s: f64, update_period_s: Option<f64>) -> Vec<String> {
    let mut w = Vec::new();
    if duration_s <= 0.0 {
        w.push("zero-length window: 0 J by definition".to_string());
        return w;
    }
    if let Some(p) = update_period_s.filter(|p| *p > 0.0) {
        if duration_s < MIN_PERIODS * p {
            w.push(format!(
                "window of {duration_s:.3} s is shorter than {MIN_PERIODS} update periods ({p:.3} s each): lengthen it (e.g. --min-window) or repeat it"
            ));
        }
    }
    if energy_j == 0.0 {
        w.push(format!("read 0 J over {duration_s:.3} s: the counter did not refresh inside the window"));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_and_holds_edges() {
        let pts = [(1.0, 10.0), (2.0, 20.0)];
        assert_eq!(power_at(&pts, 0.0), 10.0);
        assert_eq!(power_at(&pts, 1.5), 15.0);
        assert_eq!(power_at(&pts, 3.0), 20.0);
        // Held before the first sample and after the last: 10 W for 1 s + ramp 15 J + 20 W for 1 s.
        assert_eq!(integrate_window(&pts, 0.0, 3.0).energy_j, 10.0 + 15.0 + 20.0);
    }

    #[test]
    fn counter_wraps_once() {
        assert_eq!(counter_delta(900, 100, 1000), (200, true));
        assert_eq!(counter_delta(100, 600, 1000), (500, false));
    }

    #[test]
    fn dedup_keeps_first_of_runs_and_the_last() {
        let s = [(0.0, 1.0), (0.1, 1.0), (0.2, 2.0), (0.3, 2.0)];
        assert_eq!(dedup(&s), vec![(0.0, 1.0), (0.2, 2.0), (0.3, 2.0)]);
    }
}
