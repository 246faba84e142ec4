//! Figures derived at report time, each early-exit cell against the full-depth cell of the same
//! configuration group (model + weights, dataset, backend, device, dtype, threads, machine):
//! measured speedup, D(Y_early, Y_full) = 1 − ROUGE-L(early outputs, full outputs), and
//! R_early − R_full (ROUGE-L against references), with bootstrap intervals over samples.

use crate::results::{Baseline, CellRecord, CellStatus};
use crate::metrics::rouge::Rouge;
use crate::metrics::stats::{bootstrap_mean, Interval};
use std::collections::HashMap;

/// One row of a report: a cell's key figures plus the derived comparisons.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReportRow {
    /// Index of the record this row comes from.
    pub record: usize,
    /// Group id (rows of one group share a full-depth baseline).
    pub group: String,
    /// Human label of the setting.
    pub label: String,
    /// Layers L.
    pub num_layers: usize,
    /// Mean exit layer.
    pub avg_layers: f64,
    /// L ÷ avg_layers.
    pub speedup_theoretical: Option<f64>,
    /// The paired speedup: per sample, full depth's decode ms/token ÷ this cell's measured in the
    /// same round, the median of those ratios (records before rounds: the ratio of the medians);
    /// None for the oracle (an analysis whose timing is not meaningful) and where no full-depth
    /// cell exists.
    pub speedup_measured: Option<f64>,
    /// Lower end of the 95% bootstrap interval of the paired speedup.
    pub speedup_measured_lo: Option<f64>,
    /// Upper end of the interval.
    pub speedup_measured_hi: Option<f64>,
    /// Half the interval's width (records before rounds: propagated from the repetitions' σ).
    pub speedup_measured_err: Option<f64>,
    /// speedup_measured ÷ speedup_theoretical.
    pub measured_over_theoretical: Option<f64>,
    /// ROUGE-L F of this cell's outputs against the full-depth outputs.
    pub rouge_l_full: Option<Interval>,
    /// D(Y_early, Y_full) = 1 − rouge_l_full.
    pub d_full: Option<Interval>,
    /// ROUGE-L F against references (corpus mean).
    pub rouge_l_ref: Interval,
    /// R_early − R_full (paired over samples).
    pub rouge_delta: Option<Interval>,
    /// Joules per generated token (None without a meter).
    pub j_per_token: Option<f64>,
}

/// Derives report rows for every record (in record order).
pub fn derive(records: &[CellRecord]) -> Vec<ReportRow> {
    let mut full: HashMap<String, usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        if r.key.baseline == Baseline::Full && r.status == CellStatus::Ok {
            full.insert(r.key.group_id(), i);
        }
    }
    use rayon::prelude::*;
    records
        .par_iter()
        .enumerate()
        .map_init(|| Rouge::new(false), |rouge, (i, r)| {
            let base = full.get(&r.key.group_id()).map(|&j| &records[j]);
            let ok = r.status == CellStatus::Ok;
            let theo = if r.key.baseline == Baseline::Speculative { speculative_theoretical(r, base) } else { (ok && r.avg_layers > 0.0).then(|| r.num_layers as f64 / r.avg_layers) };
            let (speed, err, lo, hi) = match (&r.speedup, base) {
                _ if !ok || r.key.baseline == Baseline::Oracle => (None, None, None, None),
                (Some(p), _) => (Some(p.measured), Some((p.hi - p.lo) / 2.0), Some(p.lo), Some(p.hi)),
                (None, Some(b)) => {
                    let (s, e) = speedup(b, r);
                    (s, e, None, None)
                }
                (None, None) => (None, None, None, None),
            };
            let (rl_full, delta) = match base {
                Some(b) if ok => compare_outputs(rouge, b, r, r.seed),
                _ => (None, None),
            };
            ReportRow {
                record: i,
                group: r.key.group_id(),
                label: r.key.label(),
                num_layers: r.num_layers,
                avg_layers: r.avg_layers,
                speedup_theoretical: theo,
                speedup_measured: speed,
                speedup_measured_lo: lo,
                speedup_measured_hi: hi,
                speedup_measured_err: err,
                measured_over_theoretical: speed.zip(theo).map(|(m, t)| m / t),
                rouge_l_full: rl_full,
                d_full: rl_full.map(|x| Interval { mean: 1.0 - x.mean, lo: 1.0 - x.hi, hi: 1.0 - x.lo }),
                rouge_l_ref: r.rouge.rougeL,
                rouge_delta: delta,
                j_per_token: r.energy.j_per_token,
            }
        })
        .collect()
}

fn speedup(full: &CellRecord, cell: &CellRecord) -> (Option<f64>, Option<f64>) {
    let (a, b) = (full.ms_per_token, cell.ms_per_token);
    if a.n == 0 || b.n == 0 || b.median <= 0.0 {
        return (None, None);
    }
    let s = a.median / b.median;
    let rel = |x: &crate::results::Stats| if x.mean > 0.0 { x.std / x.mean } else { 0.0 };
    // With a single repetition there is no spread to propagate: report no ± rather than ± 0.
    let err = (a.n > 1 && b.n > 1).then(|| s * (rel(&a).powi(2) + rel(&b).powi(2)).sqrt());
    (Some(s), err)
}

/// ROUGE-L of the cell's outputs against full depth's, and the paired R difference.
fn compare_outputs(rouge: &Rouge, full: &CellRecord, cell: &CellRecord, seed: u64) -> (Option<Interval>, Option<Interval>) {
    let by_id: HashMap<&str, &crate::results::SampleOutput> = full.outputs.iter().map(|o| (o.id.as_str(), o)).collect();
    let mut agree = Vec::new();
    let mut delta = Vec::new();
    for o in &cell.outputs {
        if let Some(f) = by_id.get(o.id.as_str()) {
            agree.push(if o.text == f.text { 1.0 } else { rouge.score(&o.text, &f.text).rougeL.fmeasure });
            delta.push(o.rouge_l - f.rouge_l);
        }
    }
    if agree.is_empty() {
        return (None, None);
    }
    (Some(bootstrap_mean(&agree, 1000, seed)), Some(bootstrap_mean(&delta, 1000, seed)))
}

/// A self-speculative cell's theoretical speedup in weight reads: full depth reads L layers per
/// decoded token; a pass reads E layers per drafted token and L layers once for all positions
/// it verifies (its every token runs all L layers, so L ÷ avg layers says nothing). In a batch
/// the rows share reads, so it is full depth's layer reads per token at the same batch size
/// over the cell's, both counted from their steps.
fn speculative_theoretical(r: &CellRecord, full: Option<&CellRecord>) -> Option<f64> {
    if r.key.batch() > 1 {
        let reads = |x: &CellRecord| x.batch.as_ref().and_then(|b| b.layer_reads_per_token);
        return (r.status == CellStatus::Ok).then(|| Some(reads(full?)? / reads(r)?)).flatten();
    }
    let t = &r.speculation.as_ref()?.totals;
    let e = r.key.draft_layer? as f64;
    let l = r.num_layers as f64;
    let decoded = r.exit_histogram.iter().sum::<u64>() as f64;
    let reads = e * t.drafted as f64 + l * t.verifies as f64;
    (r.status == CellStatus::Ok && reads > 0.0).then(|| l * decoded / reads)
}
