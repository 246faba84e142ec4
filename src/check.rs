//! The CI gate: compares a current sweep with one or more baseline runs.
//!
//! 1. Deterministic figures (tokens, token ids, exit histograms, average layers, theoretical
//!    speedup, bytes per token, ROUGE) must match the newest baseline run exactly (or within
//!    `--tolerance`): any that differ fail the gate as `changed`. They do not depend on the
//!    machine, so they are gated between any two runs.
//! 2. Timings (paired speedups; with `--absolute` also decode ms/token and J/token) are gated only
//!    when the evidence covers the variation *between* runs: at least two baseline runs on the
//!    current run's machine (several `--baseline` paths, or a history directory that
//!    `check --record` appends to). The change then gets a prediction interval from those runs'
//!    spread (Bencher's approach: thresholds from the distribution of past runs), and regresses
//!    only when the whole interval lies beyond the noise threshold. A single run's intervals cover
//!    the noise within that run only, and machines differ in their hardware: with one baseline run,
//!    or runs from other machines only, timings are shown as information with the reason.
//!
//! Cells of the baseline missing from the current run fail the gate (`missing`); cells only in the
//! current run are listed (`new`); when the grids differ, the report says how.

use crate::metrics::stats::median;
use crate::results::{CellRecord, CellStatus};
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
    /// 1 − the coverage of the between-run prediction interval (0.05: 95%).
    pub significance: f64,
    /// Gate on absolute ms/token and J/token too (same machine, several baseline runs).
    pub absolute: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { tolerance: 0.0, noise_threshold: 0.10, significance: 0.05, absolute: false }
    }
}

/// One baseline run: its records and where they came from.
#[derive(Debug, Clone)]
pub struct BaselineRun {
    /// Where the run was read from (shown in the report).
    pub source: String,
    /// Its records.
    pub records: Vec<CellRecord>,
}

impl BaselineRun {
    /// The newest `finished_at` among its records (orders runs in time).
    fn finished_at(&self) -> u64 {
        self.records.iter().map(|r| r.finished_at).max().unwrap_or(0)
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
    /// Prediction interval of the relative change from the spread between baseline runs (only
    /// when timings are gated).
    pub interval: Option<(f64, f64)>,
    /// Baseline runs the interval comes from (0 for deterministic figures and information).
    pub runs: usize,
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
    /// One sentence: whether timings are gated, and why.
    pub timing_basis: String,
    /// The baseline runs read (source and machine ids), newest last.
    pub baseline_runs: Vec<String>,
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
pub fn match_key(r: &CellRecord) -> String {
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

/// A cell's label in the gate's tables.
pub fn label(r: &CellRecord) -> String {
    r.key.display_name()
}

/// The machine ids of a set of records, comma-separated.
fn machines(records: &[CellRecord]) -> String {
    records.iter().map(|r| r.key.machine.as_str()).collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(", ")
}

/// One deterministic figure of a cell on both sides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    /// What it is (`tokens`, `avg_layers`, `rougeL`...).
    pub name: &'static str,
    /// The baseline's value.
    pub baseline: f64,
    /// The current run's value.
    pub current: f64,
    /// A count of differences: compared exactly whatever `--tolerance` says.
    pub exact: bool,
}

/// The deterministic figures of one cell, named: equal on any machine for an unchanged checkout.
pub fn deterministic_figures(b: &CellRecord, c: &CellRecord) -> Vec<Figure> {
    let differing_outputs = b.outputs.iter().zip(&c.outputs).filter(|(x, y)| x.token_ids != y.token_ids || x.text != y.text).count() + b.outputs.len().abs_diff(c.outputs.len());
    let hist_diff = b.exit_histogram.iter().zip(&c.exit_histogram).map(|(x, y)| x.abs_diff(*y)).sum::<u64>() as f64;
    let theoretical = |r: &CellRecord| if r.avg_layers > 0.0 { r.num_layers as f64 / r.avg_layers } else { 0.0 };
    let value = |name, baseline, current| Figure { name, baseline, current, exact: false };
    let count = |name, current| Figure { name, baseline: 0.0, current, exact: true };
    let mut out = vec![
        value("tokens", b.tokens as f64, c.tokens as f64),
        count("samples with other tokens", differing_outputs as f64),
        count("exit histogram (tokens moved)", if b.exit_histogram.len() == c.exit_histogram.len() { hist_diff } else { f64::INFINITY }),
        value("avg_layers", b.avg_layers, c.avg_layers),
        value("theoretical speedup", theoretical(b), theoretical(c)),
        value("rouge1", b.rouge.rouge1.mean, c.rouge.rouge1.mean),
        value("rouge2", b.rouge.rouge2.mean, c.rouge.rouge2.mean),
        value("rougeL", b.rouge.rougeL.mean, c.rouge.rougeL.mean),
        value("rougeLsum", b.rouge.rougeLsum.mean, c.rouge.rougeLsum.mean),
    ];
    if let (Some(x), Some(y)) = (b.bytes_per_token, c.bytes_per_token) {
        out.push(value("bytes per token", x, y));
    }
    out
}

/// Which way a timing figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// Compares every cell of the newest baseline run with the current run; timings are gated with
/// the spread between the baseline runs on the current machine (see the module header).
pub fn compare(baseline: &[BaselineRun], current: &[CellRecord], o: CheckOptions) -> Outcome {
    let ok = |v: &[CellRecord]| -> Vec<CellRecord> { v.iter().filter(|r| r.status == CellStatus::Ok).cloned().collect() };
    let mut runs: Vec<BaselineRun> = baseline.iter().map(|r| BaselineRun { source: r.source.clone(), records: ok(&r.records) }).filter(|r| !r.records.is_empty()).collect();
    runs.sort_by_key(BaselineRun::finished_at);
    let current = ok(current);
    let newest: Vec<CellRecord> = runs.last().map(|r| r.records.clone()).unwrap_or_default();
    let cur: HashMap<String, &CellRecord> = current.iter().map(|r| (match_key(r), r)).collect();
    let base_keys: BTreeSet<String> = newest.iter().map(match_key).collect();
    // Per baseline run: its cells by key (the between-run evidence).
    let by_run: Vec<HashMap<String, &CellRecord>> = runs.iter().map(|r| r.records.iter().map(|x| (match_key(x), x)).collect()).collect();
    let current_machines = machines(&current);
    let same_machine_runs = runs.iter().filter(|r| machines(&r.records) == current_machines).count();
    let timing_basis = if runs.is_empty() {
        "No baseline run holds a finished cell: nothing to compare.".to_string()
    } else if same_machine_runs == 0 {
        format!(
            "Timings are shown, not gated: the baseline ran on machine {} and this run on machine {}; between machines timings compare hardware, which is what `exitbench report` is for.",
            machines(&newest),
            current_machines
        )
    } else if same_machine_runs == 1 {
        "Timings are shown, not gated: the baseline holds one run on this machine, and a run's intervals cover the noise within that run only, not the spread between runs; give several baseline runs (repeated --baseline, or a history directory that `check --record` appends to) to gate them.".to_string()
    } else {
        format!(
            "Paired speedups are gated{}: the baseline holds {same_machine_runs} runs on this machine, and each change's interval is a {:.0}% prediction interval from their spread between runs.",
            if o.absolute { ", and so are decode ms/token and J/token (--absolute)" } else { "" },
            100.0 * (1.0 - o.significance)
        )
    };
    let mut out = Outcome {
        compared: 0,
        deterministic: 0,
        changed: vec![],
        timings: vec![],
        missing: vec![],
        new: vec![],
        grid_differences: vec![],
        conditions: conditions(&newest, &current),
        timing_basis,
        baseline_runs: runs.iter().map(|r| format!("{} (machine {})", r.source, machines(&r.records))).collect(),
    };
    for b in &newest {
        let cell = label(b);
        let key = match_key(b);
        let Some(c) = cur.get(&key) else {
            out.missing.push(cell);
            continue;
        };
        out.compared += 1;
        for Figure { name: metric, baseline: x, current: y, exact } in deterministic_figures(b, c) {
            out.deterministic += 1;
            let tol = if exact { 0.0 } else { o.tolerance };
            // NaN on either side counts as a change.
            if (x - y).abs() > tol || (x - y).is_nan() {
                out.changed.push(Comparison { cell: cell.clone(), metric: metric.into(), baseline: x, current: y, change: rel(x, y), interval: None, runs: 0, verdict: Verdict::Changed, note: None });
            }
        }
        // The same cell in every baseline run on the current run's machine.
        let history: Vec<&CellRecord> = by_run.iter().filter_map(|m| m.get(&key).copied()).filter(|r| r.key.machine == c.key.machine).collect();
        if let Some(s) = &c.speedup {
            let xs: Vec<f64> = history.iter().filter_map(|r| r.speedup.as_ref().map(|p| p.measured)).collect();
            let newest = b.speedup.as_ref().map(|p| p.measured);
            if let Some(newest) = newest {
                out.timings.push(timing(&cell, "paired speedup", newest, &xs, s.measured, Better::Higher, true, o, b, c));
            }
        }
        let ms: Vec<f64> = history.iter().map(|r| r.ms_per_token.median).collect();
        out.timings.push(timing(&cell, "decode ms/token", b.ms_per_token.median, &ms, c.ms_per_token.median, Better::Lower, o.absolute, o, b, c));
        if let (Some(x), Some(y)) = (b.energy.j_per_token, c.energy.j_per_token) {
            let js: Vec<f64> = history.iter().filter_map(|r| r.energy.j_per_token).collect();
            out.timings.push(timing(&cell, &format!("J/token incl. prefill ({})", c.energy.source), x, &js, y, Better::Lower, o.absolute, o, b, c));
        }
    }
    out.new = current.iter().filter(|r| !base_keys.contains(&match_key(r))).map(label).collect();
    if !out.missing.is_empty() || !out.new.is_empty() {
        out.grid_differences = grid_differences(&newest, &current);
    }
    out
}

/// One timing figure: the change against the newest baseline run, gated when `gate` holds, the
/// two runs share a machine and at least two baseline runs on it give a between-run spread.
#[allow(clippy::too_many_arguments)]
fn timing(cell: &str, metric: &str, newest: f64, history: &[f64], current: f64, better: Better, gate: bool, o: CheckOptions, b: &CellRecord, c: &CellRecord) -> Comparison {
    let change = rel(newest, current);
    let info = |note: String| Comparison { cell: cell.into(), metric: metric.into(), baseline: newest, current, change, interval: None, runs: 0, verdict: Verdict::Info, note: Some(note) };
    if b.key.machine != c.key.machine && history.is_empty() {
        return info(format!("information: baseline machine {} ≠ current machine {}", b.key.machine, c.key.machine));
    }
    if history.len() < 2 {
        return info("information: one baseline run on this machine covers no between-run spread".into());
    }
    if !gate {
        return info("information (gated only with --absolute)".into());
    }
    let Some((lo, hi)) = prediction_interval(history, current, o.significance) else {
        return info(format!("information: the {} baseline runs do not vary (or a figure is not positive): no spread to gate with", history.len()));
    };
    let t = o.noise_threshold;
    let verdict = match better {
        Better::Higher if hi < -t => Verdict::Regressed,
        Better::Higher if lo > t => Verdict::Improved,
        Better::Lower if lo > t => Verdict::Regressed,
        Better::Lower if hi < -t => Verdict::Improved,
        _ => Verdict::WithinNoise,
    };
    let mean = history.iter().map(|x| x.ln()).sum::<f64>() / history.len() as f64;
    Comparison {
        cell: cell.into(),
        metric: metric.into(),
        baseline: newest,
        current,
        change,
        interval: Some((lo, hi)),
        runs: history.len(),
        verdict,
        note: Some(format!("against the geometric mean {:.4} of {} runs", mean.exp(), history.len())),
    }
}

/// The (1 − `alpha`) prediction interval of the relative change of `current` against the values
/// of several baseline runs, on a log scale: ln(current) − mean(ln x) ± t(n−1) · s · √(1 + 1/n),
/// where s is the standard deviation of ln x between the runs (a run's median already carries its
/// within-run noise, so s covers both). Returned as relative changes (e^d − 1). None with fewer
/// than two runs, a figure that is not positive, or runs that do not vary at all (the same run
/// recorded twice: no spread to gate with).
pub fn prediction_interval(history: &[f64], current: f64, alpha: f64) -> Option<(f64, f64)> {
    let n = history.len();
    if n < 2 || current <= 0.0 || history.iter().any(|x| x.is_nan() || *x <= 0.0) {
        return None;
    }
    let logs: Vec<f64> = history.iter().map(|x| x.ln()).collect();
    let mean = logs.iter().sum::<f64>() / n as f64;
    let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
    if var == 0.0 {
        return None;
    }
    let t = StudentsT::new(0.0, 1.0, n as f64 - 1.0).ok()?.inverse_cdf(1.0 - alpha / 2.0);
    let half = t * (var * (1.0 + 1.0 / n as f64)).sqrt();
    let d = current.ln() - mean;
    Some(((d - half).exp() - 1.0, (d + half).exp() - 1.0))
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
    // Every key field but the machine (timings are compared across machines on purpose), with
    // paths cut to their last component as `match_key` does; then the samples per cell.
    let values = |records: &[CellRecord], i: usize| -> BTreeSet<String> {
        records
            .iter()
            .map(|r| match r.key.fields().into_iter().nth(i) {
                Some(f) if f.name == "model" || f.name == "dataset" => last_component(&f.value),
                Some(f) => f.value,
                None => r.samples.to_string(),
            })
            .collect()
    };
    let mut names: Vec<(usize, &'static str)> = baseline.first().or(current.first()).map(|r| r.key.fields()).unwrap_or_default().iter().enumerate().filter(|(_, f)| f.name != "machine").map(|(i, f)| (i, f.name)).collect();
    names.push((usize::MAX, "samples per cell"));
    let mut out = Vec::new();
    for (i, name) in names {
        let (b, c) = (values(baseline, i), values(current, i));
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

/// The report: deterministic figures first, then cells on one side only (and why the grids
/// differ), then the speedups and absolute figures.
pub fn markdown(o: &Outcome) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if o.baseline_runs.len() > 1 {
        let _ = writeln!(s, "Baseline: {} runs ({}); deterministic figures against the newest.\n", o.baseline_runs.len(), o.baseline_runs.join("; "));
    }
    if o.changed.is_empty() {
        let _ = writeln!(s, "Deterministic figures: all {} matched ({} cells: tokens, token ids, exit histograms, average layers, theoretical speedup, bytes per token, ROUGE).\n", o.deterministic, o.compared);
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
    let _ = writeln!(s, "{}\n", o.timing_basis);
    if !o.timings.is_empty() {
        let _ = writeln!(s, "| cell | figure | baseline | current | change [prediction interval] | runs | verdict |\n|---|---|---|---|---|---|---|");
        for x in &o.timings {
            let iv = x.interval.map(|(a, b)| format!(" [{:+.1}%, {:+.1}%]", a * 100.0, b * 100.0)).unwrap_or_default();
            let runs = if x.runs > 0 { x.runs.to_string() } else { "–".into() };
            let note = x.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
            let _ = writeln!(s, "| {} | {} | {:.4} | {:.4} | {:+.2}%{iv} | {runs} | {}{note} |", x.cell, x.metric, x.baseline, x.current, x.change * 100.0, x.verdict.word());
        }
    }
    s
}

/// github-action-benchmark's `customSmallerIsBetter` JSON of the current run.
pub fn github_benchmark(current: &[CellRecord]) -> serde_json::Value {
    let mut out = Vec::new();
    for r in current.iter().filter(|r| r.status == CellStatus::Ok) {
        let name = r.key.display_name();
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
        let name = r.key.display_name();
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
    use crate::results::record::PairedSpeedup;
    use crate::results::Stats;

    /// A record of the committed CI baseline, by label.
    fn committed(label: &str) -> CellRecord {
        let text = include_str!("../tests/fixtures/ci-baseline/results.jsonl");
        let mut r: CellRecord = text.lines().map(|l| serde_json::from_str::<CellRecord>(l).unwrap()).find(|r| r.key.label() == label).unwrap();
        r.upgrade();
        r
    }

    /// A finished full-depth cell and a softmax-diff cell of one machine, with the given decode
    /// ms/token and paired speedup.
    fn run_of(machine: &str, ms: f64, speedup: f64, finished_at: u64) -> BaselineRun {
        let mut full = committed("full");
        full.key.machine = machine.into();
        full.ms_per_token = Stats { n: 20, mean: ms, median: ms, min: ms, max: ms, ci_lo: ms * 0.98, ci_hi: ms * 1.02, std: 0.0 };
        full.finished_at = finished_at;
        let mut early = committed("softmax-diff@0.9");
        early.key.machine = machine.into();
        let e = ms / speedup;
        early.ms_per_token = Stats { n: 20, mean: e, median: e, min: e, max: e, ci_lo: e * 0.98, ci_hi: e * 1.02, std: 0.0 };
        early.speedup = Some(PairedSpeedup { measured: speedup, lo: speedup * 0.97, hi: speedup * 1.03, pairs: 20, excluded: 0, ratios: vec![speedup; 20], rounds: (0..20).collect() });
        early.finished_at = finished_at;
        BaselineRun { source: format!("{machine}-{finished_at}"), records: vec![full, early] }
    }

    fn verdicts(o: &Outcome, metric: &str) -> Vec<Verdict> {
        o.timings.iter().filter(|c| c.metric == metric).map(|c| c.verdict).collect()
    }

    #[test]
    fn timings_are_never_gated_across_machines() {
        // Three baseline runs on machine A; the current run on machine B is 2x slower with half
        // the speedup: shown as information naming both machines, and the gate passes.
        let base: Vec<BaselineRun> = (0..3).map(|i| run_of("A", 3.0 + 0.05 * i as f64, 4.0 + 0.1 * i as f64, i)).collect();
        let cur = run_of("B", 6.0, 2.0, 10).records;
        for absolute in [false, true] {
            let o = compare(&base, &cur, CheckOptions { absolute, ..Default::default() });
            assert_eq!(verdicts(&o, "paired speedup"), vec![Verdict::Info]);
            assert!(verdicts(&o, "decode ms/token").iter().all(|v| *v == Verdict::Info));
            assert!(!o.failed(), "{}", markdown(&o));
            assert!(o.timing_basis.contains("machine A") && o.timing_basis.contains("machine B"), "{}", o.timing_basis);
        }
    }

    #[test]
    fn one_baseline_run_gates_deterministic_figures_only() {
        let base = vec![run_of("A", 3.0, 4.0, 0)];
        let o = compare(&base, &run_of("A", 6.0, 2.0, 1).records, CheckOptions { absolute: true, ..Default::default() });
        assert!(!o.failed(), "{}", markdown(&o));
        assert_eq!(verdicts(&o, "paired speedup"), vec![Verdict::Info]);
        assert!(o.timing_basis.contains("one run"), "{}", o.timing_basis);
        assert_eq!(o.deterministic, 2 * 10);
        // A deterministic change fails on any machine.
        let mut cur = run_of("B", 3.0, 4.0, 1).records;
        cur[1].avg_layers = 2.5;
        let o = compare(&base, &cur, CheckOptions::default());
        assert!(o.failed());
        let metrics: Vec<&str> = o.changed.iter().map(|c| c.metric.as_str()).collect();
        assert_eq!(metrics, vec!["avg_layers", "theoretical speedup"]);
    }

    #[test]
    fn several_runs_on_one_machine_gate_with_their_spread() {
        let base: Vec<BaselineRun> = [(3.0, 4.0), (3.3, 4.3), (2.9, 3.8), (3.1, 4.1)].iter().enumerate().map(|(i, (ms, s))| run_of("A", *ms, *s, i as u64)).collect();
        // Within the runs' spread: within noise.
        let o = compare(&base, &run_of("A", 3.2, 3.9, 9).records, CheckOptions { absolute: true, ..Default::default() });
        assert_eq!(verdicts(&o, "paired speedup"), vec![Verdict::WithinNoise], "{}", markdown(&o));
        assert!(!o.failed());
        assert!(o.timing_basis.contains("4 runs"));
        // Half the speedup: regressed; twice the ms/token: regressed with --absolute only.
        let slow = run_of("A", 6.2, 2.0, 9).records;
        let o = compare(&base, &slow, CheckOptions::default());
        assert_eq!(verdicts(&o, "paired speedup"), vec![Verdict::Regressed], "{}", markdown(&o));
        assert!(verdicts(&o, "decode ms/token").iter().all(|v| *v == Verdict::Info));
        assert!(o.failed());
        let o = compare(&base, &slow, CheckOptions { absolute: true, ..Default::default() });
        assert_eq!(verdicts(&o, "decode ms/token"), vec![Verdict::Regressed, Verdict::Regressed], "{}", markdown(&o));
        // Twice the speedup: improved, and the gate passes.
        let o = compare(&base, &run_of("A", 3.0, 8.0, 9).records, CheckOptions::default());
        assert_eq!(verdicts(&o, "paired speedup"), vec![Verdict::Improved]);
        assert!(!o.failed());
        // Runs that scatter widely widen the interval: the same halving is within noise.
        let wild: Vec<BaselineRun> = [(3.0, 2.0), (3.0, 8.0), (3.0, 3.0)].iter().enumerate().map(|(i, (ms, s))| run_of("A", *ms, *s, i as u64)).collect();
        let o = compare(&wild, &run_of("A", 3.0, 2.0, 9).records, CheckOptions::default());
        assert_eq!(verdicts(&o, "paired speedup"), vec![Verdict::WithinNoise], "{}", markdown(&o));
    }

    #[test]
    fn prediction_interval_by_hand() {
        // ln x = ln 2 ± 0.1 for two runs: mean ln 2, s² = 0.02, n = 2, t(1, 0.975) = 12.7062;
        // half = 12.7062 · √(0.02 · 1.5) = 2.2008; current 2 → d = 0.
        let (lo, hi) = prediction_interval(&[2.0 * 0.1f64.exp(), 2.0 * (-0.1f64).exp()], 2.0, 0.05).unwrap();
        assert!(((hi + 1.0).ln() - 2.2008).abs() < 1e-3, "{hi}");
        assert!(((lo + 1.0).ln() + 2.2008).abs() < 1e-3, "{lo}");
        assert_eq!(prediction_interval(&[2.0], 2.0, 0.05), None);
        assert_eq!(prediction_interval(&[2.0, 0.0], 2.0, 0.05), None);
        // The same run twice: no spread, no interval.
        assert_eq!(prediction_interval(&[2.0, 2.0], 1.0, 0.05), None);
    }
}
