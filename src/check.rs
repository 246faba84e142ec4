//! The CI gate: compares a current sweep with a baseline. Deterministic figures (tokens, average
//! layers, ROUGE) must match exactly unless a tolerance is given; timings and energy get
//! criterion's verdict (improved / regressed / within noise) from Welch's t-test on the
//! repetitions and a noise threshold on the relative change.

use crate::results::{CellRecord, Stats};
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};
use std::collections::HashMap;

/// Gate settings.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Allowed |Δ| of deterministic figures (0 = exact).
    pub tolerance: f64,
    /// Relative changes within ±this are "within noise" whatever the test says.
    pub noise_threshold: f64,
    /// Significance level of the t-test.
    pub significance: f64,
}

/// Verdict of one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Equal (deterministic) or no significant change.
    WithinNoise,
    /// Better.
    Improved,
    /// Worse: fails the gate.
    Regressed,
    /// Deterministic figure differs: fails the gate.
    Changed,
    /// The cell is missing from the current results: fails the gate.
    Missing,
}

/// One compared figure.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Cell label.
    pub cell: String,
    /// Figure name.
    pub metric: String,
    /// Baseline value.
    pub baseline: f64,
    /// Current value.
    pub current: f64,
    /// Relative change (current ÷ baseline − 1).
    pub change: f64,
    /// Two-sided p-value of Welch's t-test (None without repetitions).
    pub p_value: Option<f64>,
    /// Verdict.
    pub verdict: Verdict,
}

/// Key a cell is matched on across runs: everything but the machine id, with the model and dataset
/// paths cut to their last component (their content hashes stay in the key), so a baseline made
/// with `models/cricket-6l` matches a run given `/home/me/exitbench/models/cricket-6l/`.
fn match_key(r: &CellRecord) -> String {
    let mut k = r.key.clone();
    k.machine = String::new();
    k.model = last_component(&k.model);
    k.dataset = last_component(&k.dataset);
    k.id()
}

/// The last component of a path as given (`synth:test` and other non-paths unchanged).
fn last_component(path: &str) -> String {
    std::path::Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.to_string())
}

/// Compares every cell of the baseline with the current run.
pub fn compare(baseline: &[CellRecord], current: &[CellRecord], o: CheckOptions) -> Vec<Comparison> {
    let cur: HashMap<String, &CellRecord> = current.iter().map(|r| (match_key(r), r)).collect();
    let mut out = Vec::new();
    for b in baseline.iter().filter(|r| r.status == "ok") {
        let label = format!("{} [{} {} {}t]", b.key.label(), b.key.dtype, b.key.device, b.key.threads);
        let Some(c) = cur.get(&match_key(b)).filter(|c| c.status == "ok") else {
            out.push(Comparison { cell: label, metric: "cell".into(), baseline: 1.0, current: 0.0, change: -1.0, p_value: None, verdict: Verdict::Missing });
            continue;
        };
        let exact = [
            ("tokens", b.tokens as f64, c.tokens as f64),
            ("avg_layers", b.avg_layers, c.avg_layers),
            ("rouge1", b.rouge.rouge1.mean, c.rouge.rouge1.mean),
            ("rouge2", b.rouge.rouge2.mean, c.rouge.rouge2.mean),
            ("rougeL", b.rouge.rougeL.mean, c.rouge.rougeL.mean),
            ("rougeLsum", b.rouge.rougeLsum.mean, c.rouge.rougeLsum.mean),
        ];
        for (metric, x, y) in exact {
            let verdict = if (x - y).abs() <= o.tolerance { Verdict::WithinNoise } else { Verdict::Changed };
            out.push(Comparison { cell: label.clone(), metric: metric.into(), baseline: x, current: y, change: rel(x, y), p_value: None, verdict });
        }
        out.push(timing(&label, "ms_per_token", &b.ms_per_token, &c.ms_per_token, o));
        if let (Some(x), Some(y)) = (b.energy.j_per_token, c.energy.j_per_token) {
            // Per-repetition statistics when recorded (t-test possible), else the one figure.
            let s = |v: f64| Stats { n: 1, mean: v, median: v, min: v, max: v, ci_lo: v, ci_hi: v, std: 0.0 };
            let (bs, cs) = (b.energy.j_per_token_stats.unwrap_or_else(|| s(x)), c.energy.j_per_token_stats.unwrap_or_else(|| s(y)));
            out.push(timing(&label, "j_per_token", &bs, &cs, o));
        }
    }
    out
}

fn rel(x: f64, y: f64) -> f64 {
    if x == 0.0 {
        if y == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        y / x - 1.0
    }
}

/// Smaller is better: criterion's rule, a significant change beyond the noise threshold.
fn timing(cell: &str, metric: &str, b: &Stats, c: &Stats, o: CheckOptions) -> Comparison {
    let change = rel(b.median, c.median);
    let p = welch_p(b, c);
    let significant = p.map(|p| p < o.significance).unwrap_or(true);
    let verdict = if change.abs() <= o.noise_threshold || !significant {
        Verdict::WithinNoise
    } else if change > 0.0 {
        Verdict::Regressed
    } else {
        Verdict::Improved
    };
    Comparison { cell: cell.into(), metric: metric.into(), baseline: b.median, current: c.median, change, p_value: p, verdict }
}

/// Two-sided p-value of Welch's t-test from summary statistics (None with fewer than two
/// repetitions on either side).
pub fn welch_p(a: &Stats, b: &Stats) -> Option<f64> {
    if a.n < 2 || b.n < 2 {
        return None;
    }
    let (va, vb) = (a.std.powi(2) / a.n as f64, b.std.powi(2) / b.n as f64);
    if va + vb == 0.0 {
        return Some(if a.mean == b.mean { 1.0 } else { 0.0 });
    }
    let t = (a.mean - b.mean) / (va + vb).sqrt();
    let df = (va + vb).powi(2) / (va.powi(2) / (a.n as f64 - 1.0) + vb.powi(2) / (b.n as f64 - 1.0));
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    Some(2.0 * (1.0 - dist.cdf(t.abs())))
}

/// True when any comparison fails the gate.
pub fn failed(c: &[Comparison]) -> bool {
    c.iter().any(|x| matches!(x.verdict, Verdict::Regressed | Verdict::Changed | Verdict::Missing))
}

/// A Markdown table of the comparisons (deterministic figures only where they changed).
pub fn markdown(c: &[Comparison]) -> String {
    let mut s = String::from("| cell | metric | baseline | current | change | p | verdict |\n|---|---|---|---|---|---|---|\n");
    for x in c {
        if x.verdict == Verdict::WithinNoise && !matches!(x.metric.as_str(), "ms_per_token" | "j_per_token") {
            continue;
        }
        let p = x.p_value.map(|p| format!("{p:.3}")).unwrap_or_else(|| "n/a".into());
        s.push_str(&format!("| {} | {} | {:.4} | {:.4} | {:+.2}% | {} | {:?} |\n", x.cell, x.metric, x.baseline, x.current, x.change * 100.0, p, x.verdict));
    }
    s
}

/// github-action-benchmark's `customSmallerIsBetter` JSON of the current run.
pub fn github_benchmark(current: &[CellRecord]) -> serde_json::Value {
    let mut out = Vec::new();
    for r in current.iter().filter(|r| r.status == "ok") {
        let name = format!("{} [{} {} {}t]", r.key.label(), r.key.dtype, r.key.device, r.key.threads);
        out.push(serde_json::json!({"name": format!("{name} ms/token"), "unit": "ms/token", "value": r.ms_per_token.median,
            "range": format!("± {:.4}", r.ms_per_token.std)}));
        if let Some(j) = r.energy.j_per_token {
            out.push(serde_json::json!({"name": format!("{name} J/token"), "unit": "J/token", "value": j}));
        }
    }
    serde_json::Value::Array(out)
}

/// Bencher metric format of the current run.
pub fn bencher(current: &[CellRecord]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for r in current.iter().filter(|r| r.status == "ok") {
        let name = format!("{} [{} {} {}t]", r.key.label(), r.key.dtype, r.key.device, r.key.threads);
        let mut m = serde_json::Map::new();
        m.insert("latency".into(), serde_json::json!({"value": r.ms_per_token.median, "lower_value": r.ms_per_token.min, "upper_value": r.ms_per_token.max}));
        m.insert("avg-layers".into(), serde_json::json!({"value": r.avg_layers}));
        m.insert("rouge-l".into(), serde_json::json!({"value": r.rouge.rougeL.mean, "lower_value": r.rouge.rougeL.lo, "upper_value": r.rouge.rougeL.hi}));
        if let Some(j) = r.energy.j_per_token {
            m.insert("j-per-token".into(), serde_json::json!({"value": j}));
        }
        out.insert(name, serde_json::Value::Object(m));
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welch_detects_a_clear_difference_and_not_noise() {
        let a = Stats { n: 10, mean: 1.0, std: 0.01, median: 1.0, ..Default::default() };
        let b = Stats { n: 10, mean: 1.2, std: 0.01, median: 1.2, ..Default::default() };
        assert!(welch_p(&a, &b).unwrap() < 1e-6);
        let c = Stats { n: 10, mean: 1.001, std: 0.05, median: 1.001, ..Default::default() };
        assert!(welch_p(&a, &c).unwrap() > 0.5);
        assert_eq!(welch_p(&Stats { n: 1, ..a }, &b), None);
    }
}
