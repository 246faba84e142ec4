//! The CI gate: compares a current sweep with a baseline.
//!
//! 1. Deterministic figures (tokens, token ids, exit histograms, average layers, ROUGE) must match
//!    exactly (or within `--tolerance`): any that differ fail the gate as `changed`.
//! 2. Paired speedups gate: the change of a cell's speedup (current ÷ baseline, with a 95%
//!    bootstrap interval from both sides' per-sample ratios) has `regressed` only when the whole
//!    interval lies below −noise threshold, `improved` when it lies above +threshold, else it is
//!    `within noise` (a change without an interval, e.g. one sample, is within noise).
//! 3. Absolute ms/token and J/token are information; with `--absolute` they gate too (criterion's
//!    rule: Welch's t-test on the repetitions and the noise threshold), and only between records
//!    of the same machine.
//!
//! Cells of the baseline missing from the current run fail the gate (`missing`); cells only in the
//! current run are listed (`new`); when the grids differ, the report says how.

use crate::metrics::stats::median;
use crate::results::{CellRecord, CellStatus, Stats};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};
use std::collections::{BTreeSet, HashMap};

/// Gate settings.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Allowed |Δ| of deterministic figures (0 = exact).
    pub tolerance: f64,
    /// Relative changes within ±this are "within noise".
    pub noise_threshold: f64,
    /// Significance level of the t-test (absolute figures).
    pub significance: f64,
    /// Gate on absolute ms/token and J/token too (same machine only).
    pub absolute: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { tolerance: 0.0, noise_threshold: 0.10, significance: 0.05, absolute: false }
    }
}

/// Verdict of one comparison, in the words the report uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Equal (deterministic), or a change within noise.
    WithinNoise,
    /// Better beyond the noise threshold.
    Improved,
    /// Worse beyond the noise threshold: fails the gate.
    Regressed,
    /// A deterministic figure differs: fails the gate.
    Changed,
    /// The cell is missing from the current results: fails the gate.
    Missing,
    /// The cell is only in the current results.
    New,
    /// Shown, not gated (absolute figures without `--absolute`, or from another machine).
    Info,
}

impl Verdict {
    /// The word the report prints.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::WithinNoise => "within noise",
            Verdict::Improved => "improved",
            Verdict::Regressed => "regressed",
            Verdict::Changed => "changed",
            Verdict::Missing => "missing",
            Verdict::New => "new",
            Verdict::Info => "info",
        }
    }
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
    /// 95% interval of the relative change (paired speedups with per-sample ratios on both sides).
    pub interval: Option<(f64, f64)>,
    /// Two-sided p-value of Welch's t-test (absolute figures with repetitions).
    pub p_value: Option<f64>,
    /// Verdict.
    pub verdict: Verdict,
    /// Why a figure is information only, or what else the reader should know.
    pub note: Option<String>,
}

/// Everything the gate found.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Cells compared (present and ok on both sides).
    pub compared: usize,
    /// Deterministic figures compared.
    pub deterministic: usize,
    /// The deterministic figures that differ.
    pub changed: Vec<Comparison>,
    /// Speedups and absolute figures.
    pub timings: Vec<Comparison>,
    /// Baseline cells not in the current run.
    pub missing: Vec<String>,
    /// Current cells not in the baseline.
    pub new: Vec<String>,
    /// How the two grids differ (when cells are missing or new).
    pub grid_differences: Vec<String>,
    /// Differences of the machines' state the speedups depend on (the measured memory bandwidth).
    pub conditions: Vec<String>,
}

impl Outcome {
    /// True when the gate fails: a deterministic figure changed, a speedup (or, with
    /// `--absolute`, an absolute figure) regressed, or a baseline cell is missing.
    pub fn failed(&self) -> bool {
        !self.changed.is_empty() || !self.missing.is_empty() || self.timings.iter().any(|c| c.verdict == Verdict::Regressed)
    }
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

fn label(r: &CellRecord) -> String {
    format!("{} [{} {} {} {}t]", r.key.label(), r.key.backend, r.key.dtype, r.key.device, r.key.threads)
}

/// Compares every cell of the baseline with the current run.
pub fn compare(baseline: &[CellRecord], current: &[CellRecord], o: CheckOptions) -> Outcome {
    let ok = |v: &[CellRecord]| -> Vec<CellRecord> { v.iter().filter(|r| r.status == CellStatus::Ok).cloned().collect() };
    let (baseline, current) = (ok(baseline), ok(current));
    let cur: HashMap<String, &CellRecord> = current.iter().map(|r| (match_key(r), r)).collect();
    let base_keys: BTreeSet<String> = baseline.iter().map(match_key).collect();
    let mut out = Outcome { compared: 0, deterministic: 0, changed: vec![], timings: vec![], missing: vec![], new: vec![], grid_differences: vec![], conditions: conditions(&baseline, &current) };
    for b in &baseline {
        let cell = label(b);
        let Some(c) = cur.get(&match_key(b)) else {
            out.missing.push(cell);
            continue;
        };
        out.compared += 1;
        let differing_outputs = b.outputs.iter().zip(&c.outputs).filter(|(x, y)| x.token_ids != y.token_ids || x.text != y.text).count() + b.outputs.len().abs_diff(c.outputs.len());
        let hist_diff = b.exit_histogram.iter().zip(&c.exit_histogram).map(|(x, y)| x.abs_diff(*y)).sum::<u64>() as f64;
        let exact = [
            ("tokens", b.tokens as f64, c.tokens as f64),
            ("samples with other tokens", 0.0, differing_outputs as f64),
            ("exit histogram (tokens moved)", 0.0, if b.exit_histogram.len() == c.exit_histogram.len() { hist_diff } else { f64::INFINITY }),
            ("avg_layers", b.avg_layers, c.avg_layers),
            ("rouge1", b.rouge.rouge1.mean, c.rouge.rouge1.mean),
            ("rouge2", b.rouge.rouge2.mean, c.rouge.rouge2.mean),
            ("rougeL", b.rouge.rougeL.mean, c.rouge.rougeL.mean),
            ("rougeLsum", b.rouge.rougeLsum.mean, c.rouge.rougeLsum.mean),
        ];
        for (metric, x, y) in exact {
            out.deterministic += 1;
            // Counts of differences are exact whatever the tolerance.
            let tol = if metric.contains(' ') { 0.0 } else { o.tolerance };
            if !((x - y).abs() <= tol) {
                out.changed.push(Comparison { cell: cell.clone(), metric: metric.into(), baseline: x, current: y, change: rel(x, y), interval: None, p_value: None, verdict: Verdict::Changed, note: None });
            }
        }
        if let (Some(x), Some(y)) = (&b.speedup, &c.speedup) {
            out.timings.push(speedup_change(&cell, x, y, o, b.seed));
        }
        let same_machine = b.key.machine == c.key.machine;
        let note = if !o.absolute {
            Some("information (gated only with --absolute)".to_string())
        } else if !same_machine {
            Some(format!("information: baseline machine {} ≠ current machine {}", b.key.machine, c.key.machine))
        } else {
            None
        };
        let gate = o.absolute && same_machine;
        out.timings.push(absolute(&cell, "decode ms/token", &b.ms_per_token, &c.ms_per_token, o, gate, note.clone()));
        if let (Some(x), Some(y)) = (b.energy.j_per_token, c.energy.j_per_token) {
            // Per-repetition statistics when recorded (t-test possible), else the one figure.
            let s = |v: f64| Stats { n: 1, mean: v, median: v, min: v, max: v, ci_lo: v, ci_hi: v, std: 0.0 };
            let (bs, cs) = (b.energy.j_per_token_stats.unwrap_or_else(|| s(x)), c.energy.j_per_token_stats.unwrap_or_else(|| s(y)));
            out.timings.push(absolute(&cell, &format!("J/token incl. prefill ({})", c.energy.source), &bs, &cs, o, gate, note));
        }
    }
    out.new = current.iter().filter(|r| !base_keys.contains(&match_key(r))).map(label).collect();
    if !out.missing.is_empty() || !out.new.is_empty() {
        out.grid_differences = grid_differences(&baseline, &current);
    }
    out
}

/// The change of a paired speedup with its 95% percentile-bootstrap interval of
/// median(current ratios) ÷ median(baseline ratios).
fn speedup_change(cell: &str, b: &crate::results::record::PairedSpeedup, c: &crate::results::record::PairedSpeedup, o: CheckOptions, seed: u64) -> Comparison {
    let change = rel(b.measured, c.measured);
    let interval = (b.ratios.len() >= 2 && c.ratios.len() >= 2).then(|| {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ 0x5eed);
        // Whole rounds are resampled (a machine state lasting a round moves its samples together);
        // the same grid on both sides has the same rounds, resampled jointly.
        let (bc, cc) = (crate::metrics::stats::clusters(&b.ratios, &b.rounds), crate::metrics::stats::clusters(&c.ratios, &c.rounds));
        let joint = bc.len() == cc.len();
        let mut changes: Vec<f64> = (0..2000)
            .map(|_| {
                let bi: Vec<usize> = (0..bc.len()).map(|_| rng.random_range(0..bc.len())).collect();
                let ci: Vec<usize> = if joint { bi.clone() } else { (0..cc.len()).map(|_| rng.random_range(0..cc.len())).collect() };
                let pick = |g: &[Vec<f64>], idx: &[usize]| median(&idx.iter().flat_map(|&i| g[i].iter().copied()).collect::<Vec<_>>());
                pick(&cc, &ci) / pick(&bc, &bi) - 1.0
            })
            .collect();
        changes.sort_by(|a, b| a.total_cmp(b));
        (crate::metrics::stats::quantile(&changes, 0.025), crate::metrics::stats::quantile(&changes, 0.975))
    });
    let verdict = match interval {
        Some((_, hi)) if hi < -o.noise_threshold => Verdict::Regressed,
        Some((lo, _)) if lo > o.noise_threshold => Verdict::Improved,
        _ => Verdict::WithinNoise,
    };
    let note = interval.is_none().then(|| "no interval (fewer than two samples on a side)".to_string());
    Comparison { cell: cell.into(), metric: "paired speedup".into(), baseline: b.measured, current: c.measured, change, interval, p_value: None, verdict, note }
}

/// The memory bandwidth each side measured at its start, when they differ by more than 10%:
/// batch-1 decoding is memory-bound, so a full-depth cell slows more than an early-exit cell
/// whose layers stay in the caches when another tenant loads the memory system.
fn conditions(baseline: &[CellRecord], current: &[CellRecord]) -> Vec<String> {
    let bw = |v: &[CellRecord]| -> Option<f64> {
        let xs: Vec<f64> = v.iter().filter_map(|r| r.hardware.mem_bandwidth_all_gb_s).collect();
        (!xs.is_empty()).then(|| median(&xs))
    };
    match (bw(baseline), bw(current)) {
        (Some(b), Some(c)) if (c / b - 1.0).abs() > 0.10 => vec![format!(
            "the machines' measured memory bandwidth (all threads) differs: {b:.1} GB/s in the baseline, {c:.1} GB/s now ({:+.0}%); speedups shift with the memory system's load",
            100.0 * (c / b - 1.0)
        )],
        _ => Vec::new(),
    }
}

/// How two grids differ: the values of each key field found on one side only.
fn grid_differences(baseline: &[CellRecord], current: &[CellRecord]) -> Vec<String> {
    type Field = (&'static str, fn(&CellRecord) -> String);
    let fields: [Field; 12] = [
        ("samples per cell", |r| r.samples.to_string()),
        ("dataset (hash)", |r| format!("{} ({})", last_component(&r.key.dataset), r.key.dataset_hash)),
        ("model (weights hash)", |r| format!("{} ({})", last_component(&r.key.model), r.key.weights_hash)),
        ("max new tokens", |r| r.key.max_new_tokens.to_string()),
        ("backend", |r| r.key.backend.clone()),
        ("device", |r| r.key.device.clone()),
        ("dtype", |r| r.key.dtype.clone()),
        ("threads", |r| r.key.threads.to_string()),
        ("measure", |r| r.key.measure.clone()),
        ("threshold", |r| r.key.threshold.map(|t| t.to_string()).unwrap_or_else(|| "-".into())),
        ("baseline kind", |r| r.key.baseline.name().to_string()),
        ("static layer", |r| r.key.static_layer.map(|t| t.to_string()).unwrap_or_else(|| "-".into())),
    ];
    let mut out = Vec::new();
    for (name, f) in fields {
        let (b, c): (BTreeSet<String>, BTreeSet<String>) = (baseline.iter().map(f).collect(), current.iter().map(f).collect());
        if b != c {
            let only = |x: &BTreeSet<String>, y: &BTreeSet<String>| x.difference(y).cloned().collect::<Vec<_>>().join(", ");
            let (ob, oc) = (only(&b, &c), only(&c, &b));
            let mut parts = Vec::new();
            if !ob.is_empty() {
                parts.push(format!("only the baseline has {ob}"));
            }
            if !oc.is_empty() {
                parts.push(format!("only the current run has {oc}"));
            }
            out.push(format!("{name}: {}", parts.join("; ")));
        }
    }
    if out.is_empty() {
        out.push("the key fields take the same values on both sides: some combinations were not run on one side (a shard, an interrupted sweep, or --extend)".into());
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

/// Smaller is better: criterion's rule, a significant change beyond the noise threshold; an
/// ungated figure is information.
fn absolute(cell: &str, metric: &str, b: &Stats, c: &Stats, o: CheckOptions, gate: bool, note: Option<String>) -> Comparison {
    let change = rel(b.median, c.median);
    let p = welch_p(b, c);
    let significant = p.map(|p| p < o.significance).unwrap_or(true);
    let verdict = if !gate {
        Verdict::Info
    } else if change.abs() <= o.noise_threshold || !significant {
        Verdict::WithinNoise
    } else if change > 0.0 {
        Verdict::Regressed
    } else {
        Verdict::Improved
    };
    Comparison { cell: cell.into(), metric: metric.into(), baseline: b.median, current: c.median, change, interval: None, p_value: p, verdict, note }
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

/// The report: deterministic figures first, then cells on one side only (and why the grids
/// differ), then the speedups and absolute figures.
pub fn markdown(o: &Outcome) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if o.changed.is_empty() {
        let _ = writeln!(s, "Deterministic figures: all {} matched ({} cells: tokens, token ids, exit histograms, average layers, ROUGE).\n", o.deterministic, o.compared);
    } else {
        let _ = writeln!(s, "Deterministic figures: {} of {} **changed**:\n\n| cell | figure | baseline | current |\n|---|---|---|---|", o.changed.len(), o.deterministic);
        for c in &o.changed {
            let _ = writeln!(s, "| {} | {} | {} | {} |", c.cell, c.metric, c.baseline, c.current);
        }
        let _ = writeln!(s);
    }
    if !o.missing.is_empty() {
        let _ = writeln!(s, "**Missing** from the current run ({} cells): {}\n", o.missing.len(), o.missing.join("; "));
    }
    if !o.new.is_empty() {
        let _ = writeln!(s, "New in the current run ({} cells, not compared): {}\n", o.new.len(), o.new.join("; "));
    }
    if !o.grid_differences.is_empty() {
        let _ = writeln!(s, "Why the grids differ:\n");
        for d in &o.grid_differences {
            let _ = writeln!(s, "- {d}");
        }
        let _ = writeln!(s);
    }
    for c in &o.conditions {
        let _ = writeln!(s, "Note: {c}.\n");
    }
    if !o.timings.is_empty() {
        let _ = writeln!(s, "| cell | figure | baseline | current | change [95% interval] | p | verdict |\n|---|---|---|---|---|---|---|");
        for x in &o.timings {
            let iv = x.interval.map(|(a, b)| format!(" [{:+.1}%, {:+.1}%]", a * 100.0, b * 100.0)).unwrap_or_default();
            let p = x.p_value.map(|p| format!("{p:.3}")).unwrap_or_else(|| "–".into());
            let note = x.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
            let _ = writeln!(s, "| {} | {} | {:.4} | {:.4} | {:+.2}%{iv} | {p} | {}{note} |", x.cell, x.metric, x.baseline, x.current, x.change * 100.0, x.verdict.word());
        }
    }
    s
}

/// github-action-benchmark's `customSmallerIsBetter` JSON of the current run.
pub fn github_benchmark(current: &[CellRecord]) -> serde_json::Value {
    let mut out = Vec::new();
    for r in current.iter().filter(|r| r.status == CellStatus::Ok) {
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
    for r in current.iter().filter(|r| r.status == CellStatus::Ok) {
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

    fn paired(ratios: &[f64]) -> crate::results::record::PairedSpeedup {
        let rounds = (0..ratios.len()).collect();
        crate::results::record::PairedSpeedup { measured: median(ratios), lo: 0.0, hi: 0.0, pairs: ratios.len(), excluded: 0, ratios: ratios.to_vec(), rounds }
    }

    #[test]
    fn a_speedup_regresses_only_when_its_whole_interval_is_beyond_the_threshold() {
        let o = CheckOptions::default();
        let base: Vec<f64> = (0..30).map(|i| 3.0 + 0.01 * (i % 7) as f64).collect();
        // Half the speedup: the interval of the change is near −50%.
        let slow: Vec<f64> = base.iter().map(|x| x / 2.0).collect();
        let c = speedup_change("c", &paired(&base), &paired(&slow), o, 0);
        assert_eq!(c.verdict, Verdict::Regressed, "{c:?}");
        assert!(c.interval.unwrap().1 < -0.4);
        assert_eq!(speedup_change("c", &paired(&slow), &paired(&base), o, 0).verdict, Verdict::Improved);
        // One sample twice as slow among 30: the median barely moves.
        let mut one = base.clone();
        one[3] /= 2.0;
        assert_eq!(speedup_change("c", &paired(&base), &paired(&one), o, 0).verdict, Verdict::WithinNoise);
        // No interval (one sample a side): within noise whatever the change, and said so.
        let c = speedup_change("c", &paired(&[3.0]), &paired(&[1.0]), o, 0);
        assert_eq!(c.verdict, Verdict::WithinNoise);
        assert!(c.note.unwrap().contains("no interval"));
    }
}
