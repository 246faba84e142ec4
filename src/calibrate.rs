//! Threshold calibration as the embedded model's bar defines it: sweep every measure's
//! thresholds on the validation split, pick per measure the cheapest setting (fewest average
//! layers; ties: lower ms/token) whose D(Y_early, Y_full) ≤ `max_d`, then report those settings on
//! the test split next to full depth, the oracle and the lead baseline (the report's first
//! sentence as the summary).

use crate::results::{Baseline, CellRecord, CellStatus, store};
use crate::data::synth;
use crate::data::DatasetSpec;
use crate::error::{Error, Result};
use crate::metrics::rouge::Rouge;
use crate::metrics::stats::bootstrap_mean;
use crate::report::{derive, ReportRow};
use crate::sweep::runner::{self, Progress, RunOptions};
use crate::sweep::{Plan, RawSettings};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What to calibrate.
#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    /// Sweep settings shared by both splits (model, measures, thresholds, samples, threads...).
    pub base: RawSettings,
    /// Largest D(Y_early, Y_full) accepted on the validation split.
    pub max_d: f64,
    /// Validation dataset.
    pub validation: String,
    /// Test dataset.
    pub test: String,
    /// Output directory (validation/ and test/ results inside).
    pub out: PathBuf,
}

/// One measure's calibrated setting and its test figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chosen {
    /// Measure.
    pub measure: String,
    /// Chosen threshold (None when no threshold met the bar on validation).
    pub threshold: Option<f64>,
    /// D on validation.
    pub validation_d: Option<f64>,
    /// D on test, with its interval.
    pub test_d: Option<[f64; 3]>,
    /// Average layers on test.
    pub avg_layers: Option<f64>,
    /// Theoretical speedup on test.
    pub speedup_theoretical: Option<f64>,
    /// Measured speedup on test.
    pub speedup_measured: Option<f64>,
    /// Measured ÷ theoretical.
    pub measured_over_theoretical: Option<f64>,
    /// ROUGE-L F against references on test.
    pub rouge_l: Option<f64>,
    /// R_early − R_full on test.
    pub rouge_delta: Option<f64>,
}

/// The calibration's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    /// Samples per split.
    pub samples: usize,
    /// D bar used on validation.
    pub max_d: f64,
    /// Full-depth ROUGE-L F on test.
    pub full_rouge_l: f64,
    /// Full-depth decode ms/token on test.
    pub full_ms_per_token: f64,
    /// Lead baseline ROUGE-L F on test.
    pub lead_rouge_l: Option<f64>,
    /// Share of test outputs stating all key facts at full depth.
    pub key_facts_exact: Option<f64>,
    /// Share of test outputs stating each key fact at full depth: winner, score, top performer.
    #[serde(default)]
    pub key_facts_each: Option<[f64; 3]>,
    /// The command that produced these figures (set by the CLI).
    #[serde(default)]
    pub command: String,
    /// Oracle average layers on test.
    pub oracle_avg_layers: Option<f64>,
    /// Per measure.
    pub measures: Vec<Chosen>,
    /// Threads used.
    pub threads: usize,
    /// Backend, device and precision of the figures, e.g. `candle cpu f32`.
    #[serde(default)]
    pub runtime: String,
    /// The machine the figures were measured on (CPU model, logical CPUs, memory).
    #[serde(default)]
    pub machine: String,
}

/// Runs the calibration; results land in `out/validation` and `out/test`.
pub fn calibrate(o: &CalibrateOptions, progress: &mut dyn Progress) -> Result<Calibration> {
    let val_dir = o.out.join("validation");
    let mut val = o.base.clone();
    val.dataset = Some(o.validation.clone());
    val.out = Some(val_dir.display().to_string());
    val.oracle = Some(false);
    val.static_exit = Some(vec![]);
    let val_plan = Plan::from_settings(val)?;
    let val_records = sweep(&val_plan, progress)?;
    let val_rows = derive(&val_records);
    let measures = val_plan.measures.clone();

    let test_dir = o.out.join("test");
    let mut chosen: Vec<(String, Option<(f64, f64)>)> = Vec::new();
    for m in &measures {
        chosen.push((m.name().to_string(), pick(&val_rows, &val_records, m.name(), o.max_d)));
    }
    // Full depth and the oracle, then each measure at its chosen threshold, into one directory.
    let mut base = o.base.clone();
    base.dataset = Some(o.test.clone());
    base.out = Some(test_dir.display().to_string());
    base.static_exit = Some(vec![]);
    let mut first = base.clone();
    first.measure = Some(vec![]);
    first.oracle = Some(true);
    let test_plan = Plan::from_settings(first)?;
    sweep(&test_plan, progress)?;
    for (m, pick) in &chosen {
        if let Some((t, _)) = pick {
            let mut s = base.clone();
            s.measure = Some(vec![crate::exit::Measure::parse(m)?]);
            s.thresholds = Some(vec![format!("{t}")]);
            s.oracle = Some(false);
            runner::run(&Plan::from_settings(s)?, RunOptions { shard: None, resume: true, extend: true }, progress)?;
        }
    }
    let records = current(&test_plan, store::read(&test_dir)?)?;
    crate::report::write_all(&records, &test_dir)?;
    let rows = derive(&records);
    summarize(&test_plan, &records, &rows, &chosen, o.max_d)
}

fn sweep(plan: &Plan, progress: &mut dyn Progress) -> Result<Vec<CellRecord>> {
    let resume = plan.out.join(store::RESULTS_FILE).exists();
    // A reused calibration directory may hold cells of other settings: add to it.
    runner::run(plan, RunOptions { shard: None, resume, extend: resume }, progress)?;
    let records = current(plan, store::read(&plan.out)?)?;
    crate::report::write_all(&records, &plan.out)?;
    Ok(records)
}

/// Only the cells of this plan's model and settings: a reused directory may hold an earlier
/// calibration of other weights.
fn current(plan: &Plan, records: Vec<CellRecord>) -> Result<Vec<CellRecord>> {
    let wh = crate::model::weights_hash(&plan.models[0].dir, plan.random_weights)?;
    Ok(records.into_iter().filter(|r| r.key.weights_hash == wh && r.key.max_new_tokens == plan.max_new_tokens).collect())
}

/// The cheapest threshold of `measure` with D ≤ max_d: (threshold, D).
fn pick(rows: &[ReportRow], records: &[CellRecord], measure: &str, max_d: f64) -> Option<(f64, f64)> {
    let mut best: Option<(f64, f64, f64, f64)> = None; // (avg layers, ms/token, threshold, D)
    for r in rows {
        let rec = &records[r.record];
        if rec.key.measure != measure || rec.key.baseline != Baseline::None || rec.status != CellStatus::Ok {
            continue;
        }
        let Some(d) = r.d_full.map(|x| x.mean) else { continue };
        if d > max_d {
            continue;
        }
        let cand = (r.avg_layers, rec.ms_per_token.median, rec.key.threshold.unwrap_or(0.0), d);
        if best.is_none_or(|b| (cand.0, cand.1) < (b.0, b.1)) {
            best = Some(cand);
        }
    }
    best.map(|b| (b.2, b.3))
}

fn summarize(plan: &Plan, records: &[CellRecord], rows: &[ReportRow], chosen: &[(String, Option<(f64, f64)>)], max_d: f64) -> Result<Calibration> {
    let full = records.iter().find(|r| r.key.baseline == Baseline::Full && r.status == CellStatus::Ok).ok_or_else(|| Error::Internal("no full-depth cell on test".into()))?;
    let oracle = rows.iter().find(|r| records[r.record].key.baseline == Baseline::Oracle);
    let measures = chosen
        .iter()
        .map(|(m, pick)| {
            let row = pick.and_then(|(t, _)| rows.iter().find(|r| records[r.record].key.measure == *m && records[r.record].key.threshold == Some(t)));
            Chosen {
                measure: m.clone(),
                threshold: pick.map(|p| p.0),
                validation_d: pick.map(|p| p.1),
                test_d: row.and_then(|r| r.d_full).map(|i| [i.mean, i.lo, i.hi]),
                avg_layers: row.map(|r| r.avg_layers),
                speedup_theoretical: row.and_then(|r| r.speedup_theoretical),
                speedup_measured: row.and_then(|r| r.speedup_measured),
                measured_over_theoretical: row.and_then(|r| r.measured_over_theoretical),
                rouge_l: row.map(|r| r.rouge_l_ref.mean),
                rouge_delta: row.and_then(|r| r.rouge_delta).map(|i| i.mean),
            }
        })
        .collect();
    Ok(Calibration {
        samples: plan.examples.len(),
        max_d,
        full_rouge_l: full.rouge.rougeL.mean,
        full_ms_per_token: full.ms_per_token.median,
        lead_rouge_l: lead_baseline(&plan.dataset, plan.examples.len()),
        key_facts_exact: full.key_facts_exact,
        key_facts_each: facts_each(plan, full),
        command: String::new(),
        oracle_avg_layers: oracle.map(|r| r.avg_layers),
        measures,
        threads: full.key.threads,
        runtime: format!("{} {} {}", full.key.backend, full.key.device, full.key.dtype),
        machine: full.hardware.summary(),
    })
}

/// Share of full-depth outputs stating each key fact (winner, score, top performer).
fn facts_each(plan: &Plan, full: &CellRecord) -> Option<[f64; 3]> {
    let mut hits = [0usize; 3];
    let mut n = 0usize;
    for (out, ex) in full.outputs.iter().zip(&plan.examples) {
        let f = ex.facts.as_ref()?;
        let m = synth::facts_in(&out.text, f);
        for (h, ok) in hits.iter_mut().zip([m.winner, m.score, m.top_performer]) {
            *h += ok as usize;
        }
        n += 1;
    }
    (n > 0).then(|| hits.map(|h| h as f64 / n as f64))
}

/// ROUGE-L F of the lead baseline (the report's first sentence) on a synthetic split.
pub fn lead_baseline(ds: &DatasetSpec, n: usize) -> Option<f64> {
    let DatasetSpec::Synth { split, seed } = ds else { return None };
    let rouge = Rouge::new(false);
    let scores: Vec<f64> = synth::generate(*split, *seed, n)
        .iter()
        .map(|s| rouge.score(&synth::lead_sentence(&s.prompt), &s.reference).rougeL.fmeasure)
        .collect();
    Some(bootstrap_mean(&scores, 1000, 0).mean)
}

/// Markdown table of a calibration.
pub fn markdown(c: &Calibration) -> String {
    let f = |x: Option<f64>, d: usize| x.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "n/a".into());
    let mut s = format!(
        "Test split, {} samples, greedy, {}, {} thread(s). Full depth: ROUGE-L {:.3}, key facts exact {}{}, {:.3} ms/token. \
         Lead baseline ROUGE-L {}. Oracle average layers {}.\n\n",
        c.samples, if c.runtime.is_empty() { "candle cpu f32" } else { c.runtime.as_str() }, c.threads, c.full_rouge_l, c.key_facts_exact.map(|x| format!("{:.1}%", x * 100.0)).unwrap_or_else(|| "n/a".into()),
        c.key_facts_each.map(|e| format!(" (winner {:.1}%, score {:.1}%, top performer {:.1}%)", e[0] * 100.0, e[1] * 100.0, e[2] * 100.0)).unwrap_or_default(),
        c.full_ms_per_token, f(c.lead_rouge_l, 3), f(c.oracle_avg_layers, 2)
    );
    s.push_str(&format!("| measure | threshold (validation D ≤ {}) | validation D | test D [95% CI] | R_early − R_full | avg layers | theoretical speedup | measured speedup | measured ÷ theoretical |\n|---|---|---|---|---|---|---|---|---|\n", c.max_d));
    for m in &c.measures {
        let d = m.test_d.map(|d| format!("{:.3} [{:.3}, {:.3}]", d[0], d[1], d[2])).unwrap_or_else(|| "n/a".into());
        let x = |v: Option<f64>| v.map(|v| format!("{v:.2}×")).unwrap_or_else(|| "n/a".into());
        s.push_str(&format!("| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", m.measure, f(m.threshold, 2), f(m.validation_d, 3), d,
            m.rouge_delta.map(|x| format!("{x:+.3}")).unwrap_or_else(|| "n/a".into()), f(m.avg_layers, 2), x(m.speedup_theoretical),
            x(m.speedup_measured), f(m.measured_over_theoretical, 2)));
    }
    s
}

/// The embedded model's bar (issue 3), one line per condition with `met` / `NOT met`: full-depth
/// ROUGE-L ≥ 0.75 and ≥ lead + 0.25, key facts ≥ 90%, and per measure test D ≤ 0.06 with a
/// measured speedup ≥ 1.5×.
pub fn bar(c: &Calibration) -> Vec<(String, bool)> {
    let mut out = vec![(format!("full-depth ROUGE-L {:.3} ≥ 0.75", c.full_rouge_l), c.full_rouge_l >= 0.75)];
    if let Some(lead) = c.lead_rouge_l {
        out.push((format!("full-depth ROUGE-L {:.3} ≥ lead baseline {lead:.3} + 0.25", c.full_rouge_l), c.full_rouge_l >= lead + 0.25));
    }
    if let Some(k) = c.key_facts_exact {
        out.push((format!("key facts exact {:.1}% ≥ 90%", k * 100.0), k >= 0.9));
    }
    for m in &c.measures {
        let ok = matches!((m.test_d, m.speedup_measured), (Some(d), Some(s)) if d[0] <= 0.06 && s >= 1.5);
        let what = match (m.threshold, m.test_d, m.speedup_measured) {
            (Some(t), Some(d), Some(s)) => format!("{}@{t}: test D {:.3} ≤ 0.06 and measured speedup {s:.2}× ≥ 1.5×", m.measure, d[0]),
            _ => format!("{}: no threshold kept validation D ≤ {}", m.measure, c.max_d),
        };
        out.push((what, ok));
    }
    out
}

/// Writes `calibration.json` and `calibration.md` into `dir`.
pub fn write(c: &Calibration, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = serde_json::to_string_pretty(c).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(dir.join("calibration.json"), json + "\n").map_err(|e| Error::io(dir, e))?;
    std::fs::write(dir.join("calibration.md"), markdown(c)).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(measure: &str, d: Option<f64>, speedup: Option<f64>) -> Chosen {
        Chosen {
            measure: measure.into(),
            threshold: d.map(|_| 0.9),
            validation_d: d,
            test_d: d.map(|d| [d, d, d]),
            avg_layers: None,
            speedup_theoretical: None,
            speedup_measured: speedup,
            measured_over_theoretical: None,
            rouge_l: None,
            rouge_delta: None,
        }
    }

    #[test]
    fn bar_names_each_condition_and_its_verdict() {
        let c = Calibration {
            samples: 200,
            max_d: 0.05,
            full_rouge_l: 0.80,
            full_ms_per_token: 2.0,
            lead_rouge_l: Some(0.60),
            key_facts_exact: Some(0.91),
            key_facts_each: None,
            command: String::new(),
            oracle_avg_layers: None,
            measures: vec![chosen("softmax-diff", Some(0.04), Some(2.0)), chosen("saturation", Some(0.07), Some(2.0)), chosen("classifier", None, None), chosen("softmax-max", Some(0.01), Some(1.4))],
            threads: 1,
            runtime: "candle cpu f32".into(),
            machine: String::new(),
        };
        let verdicts: Vec<bool> = bar(&c).iter().map(|b| b.1).collect();
        // ROUGE-L ≥ 0.75 yes; 0.80 < 0.60 + 0.25 no; facts yes; diff yes; saturation D no; classifier none; max too slow.
        assert_eq!(verdicts, vec![true, false, true, true, false, false, false]);
        assert!(bar(&c)[5].0.contains("no threshold kept"));
    }
}
