//! Threshold calibration as the embedded model's bar defines it: sweep every measure's
//! thresholds on the validation split, pick per measure the cheapest setting (fewest average
//! layers; ties: lower ms/token) whose D(Y_early, Y_full) ≤ `max_d`, then report those settings on
//! the test split next to full depth, the oracle and the lead baseline (the report's first
//! sentence as the summary).
//!
//! With `--risk`, thresholds come with CALM's guarantee instead (Learn-then-Test, [`ltt`]): per
//! measure, the lowest threshold whose risk (textual: D(Y_early, Y_full) per sample; reference:
//! max(0, R_full − R_early) per sample) is at most δ with probability ≥ 1 − ε over the validation
//! samples, by Hoeffding–Bentkus p-values and fixed-sequence testing from the highest threshold.

pub mod ltt;

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

crate::named_enum! {
    /// The per-sample risk Learn-then-Test bounds.
    pub enum Risk: "risk", "--risk" {
        /// D(Y_early, Y_full) = 1 − ROUGE-L F of the early output against full depth's (no references).
        Textual = "textual",
        /// max(0, R_full − R_early): the ROUGE-L F against the reference that early exit loses,
        /// clipped at 0 so the risk stays in [0, 1] (a gain counts as no loss, as in CALM).
        Reference = "reference",
    }
}

impl Risk {
    /// Per-sample risks in [0, 1] of `cell` against full depth, in `full`'s sample order (samples
    /// the cell lacks are left out).
    pub fn per_sample(self, rouge: &Rouge, full: &CellRecord, cell: &CellRecord) -> Vec<(String, f64)> {
        let by_id: std::collections::HashMap<&str, &crate::results::SampleOutput> = cell.outputs.iter().map(|o| (o.id.as_str(), o)).collect();
        full.outputs
            .iter()
            .filter_map(|f| {
                let o = by_id.get(f.id.as_str())?;
                let r = match self {
                    Risk::Textual if o.text == f.text => 0.0,
                    Risk::Textual => 1.0 - rouge.score(&o.text, &f.text).rougeL.fmeasure,
                    Risk::Reference => (f.rouge_l - o.rouge_l).max(0.0),
                };
                Some((f.id.clone(), r.clamp(0.0, 1.0)))
            })
            .collect()
    }
}

/// Learn-then-Test settings.
#[derive(Debug, Clone, Copy)]
pub struct LttOptions {
    /// The risk bounded.
    pub risk: Risk,
    /// Risk level δ.
    pub delta: f64,
    /// Error level ε: the guarantee holds with probability ≥ 1 − ε.
    pub epsilon: f64,
    /// Also run every threshold on test and check the guarantee over random splits.
    pub check_validity: bool,
    /// Random splits of the validity check.
    pub splits: usize,
}

/// What Learn-then-Test was asked for, as recorded in the calibration and the model card.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LttSummary {
    /// The risk bounded (`textual` or `reference`).
    pub risk: Risk,
    /// Risk level δ.
    pub delta: f64,
    /// Error level ε.
    pub epsilon: f64,
    /// Validation samples the p-values come from.
    pub n: usize,
}

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
    /// Learn-then-Test instead of the point-estimate rule (mean D ≤ `max_d`).
    pub ltt: Option<LttOptions>,
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
    /// Learn-then-Test: the thresholds tested on validation, highest first, each with its
    /// empirical risk, n and Hoeffding–Bentkus p-value (empty without `--risk`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ltt_steps: Vec<ltt::LttStep>,
    /// The guarantee checked over random calibration/test splits of validation + test samples
    /// (`--check-validity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity: Option<ltt::Validity>,
    /// The risk at the chosen threshold on test (Learn-then-Test only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_risk: Option<f64>,
}

/// The self-speculative setting calibration chose: the fastest on validation (lossless, so no
/// D bar), and its figures on test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChosenSpeculation {
    /// The setting (draft layer E, most drafted tokens k, cache mode, draft stop).
    pub setting: crate::decode::speculative::Speculation,
    /// Settings tried on validation.
    pub tried: usize,
    /// Its measured speedup over full depth on validation (paired by round).
    pub validation_speedup: f64,
    /// Its measured speedup over full depth on test.
    pub test_speedup: Option<f64>,
    /// The interval of the test speedup (bootstrap over rounds, within the run).
    pub test_speedup_interval: Option<[f64; 2]>,
    /// Accepted ÷ drafted tokens on test.
    pub test_acceptance_rate: Option<f64>,
    /// Tokens emitted per verification pass on test.
    pub test_tokens_per_verify: Option<f64>,
    /// D(Y_spec, Y_full) on test: 0 when greedy speculation is lossless, as it must be.
    pub test_d: Option<f64>,
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
    /// Learn-then-Test's settings (None: thresholds chosen by mean D ≤ `max_d`, no guarantee).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ltt: Option<LttSummary>,
    /// Rows decoded together in every cell (1 in calibrations older than the field).
    #[serde(default = "one")]
    pub batch_size: usize,
    /// The batch policy at batch sizes above 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_policy: Option<crate::decode::batch::BatchPolicy>,
    /// The fastest self-speculative setting (only when `--draft-layer` was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation: Option<ChosenSpeculation>,
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
    let rouge = Rouge::new(false);

    let fastest = fastest_speculation(&val_rows, &val_records);
    let tried = val_records.iter().filter(|r| r.key.baseline == Baseline::Speculative).count();
    let test_dir = o.out.join("test");
    let mut chosen: Vec<(String, Option<(f64, f64)>)> = Vec::new();
    let mut steps: Vec<Vec<ltt::LttStep>> = Vec::new();
    for m in &measures {
        match o.ltt {
            None => chosen.push((m.name().to_string(), pick(&val_rows, &val_records, m.name(), o.max_d))),
            Some(l) => {
                let candidates = aligned(&risk_table(&val_records, m.name(), l.risk, &rouge)?);
                let (tested, t) = ltt::fixed_sequence(&candidates, l.delta, l.epsilon);
                let d = |t: f64| val_rows.iter().find(|r| val_records[r.record].key.measure == Some(*m) && val_records[r.record].key.threshold == Some(t)).and_then(|r| r.d_full).map(|i| i.mean);
                chosen.push((m.name().to_string(), t.map(|t| (t, d(t).unwrap_or(f64::NAN)))));
                steps.push(tested);
            }
        }
    }
    // Full depth and the oracle, then each measure at its chosen threshold (every threshold when
    // the guarantee is checked on test samples too), into one directory.
    let mut base = o.base.clone();
    base.dataset = Some(o.test.clone());
    base.out = Some(test_dir.display().to_string());
    base.static_exit = Some(vec![]);
    // Only the chosen speculative setting runs on test, after full depth.
    (base.draft_layer, base.draft_tokens, base.draft_cache, base.draft_stop) = (None, None, None, None);
    let mut first = base.clone();
    first.measure = Some(vec![]);
    first.oracle = Some(true);
    let test_plan = Plan::from_settings(first)?;
    sweep(&test_plan, progress)?;
    let all_thresholds = o.ltt.is_some_and(|l| l.check_validity);
    for (m, pick) in &chosen {
        let thresholds = match pick {
            _ if all_thresholds => o.base.thresholds.clone(),
            Some((t, _)) => Some(vec![format!("{t}")]),
            None => None,
        };
        if let Some(thresholds) = thresholds {
            let mut s = base.clone();
            s.measure = Some(vec![crate::exit::Measure::parse(m)?]);
            s.thresholds = Some(thresholds);
            s.oracle = Some(false);
            runner::run(&Plan::from_settings(s)?, RunOptions { shard: None, resume: true, extend: true }, progress)?;
        }
    }
    if let Some((spec, _)) = fastest {
        let mut s = base.clone();
        s.measure = Some(vec![]);
        s.oracle = Some(false);
        s.draft_layer = Some(vec![spec.draft_layer]);
        s.draft_tokens = Some(vec![spec.draft_tokens]);
        s.draft_cache = Some(vec![spec.cache]);
        s.draft_stop = Some(vec![spec.stop.map(|x| x.to_string()).unwrap_or_else(|| "none".into())]);
        runner::run(&Plan::from_settings(s)?, RunOptions { shard: None, resume: true, extend: true }, progress)?;
    }
    let records = current(&test_plan, store::read(&test_dir)?)?;
    crate::report::write_all(&records, &test_dir)?;
    let rows = derive(&records);
    let mut cal = summarize(&test_plan, &records, &rows, &chosen, o.max_d)?;
    cal.speculation = fastest.map(|(setting, validation_speedup)| {
        let row = rows.iter().find(|r| {
            let k = &records[r.record].key;
            k.baseline == Baseline::Speculative && k.draft_layer == Some(setting.draft_layer) && k.draft_tokens == Some(setting.draft_tokens) && k.draft_cache == Some(setting.cache) && k.draft_stop == setting.stop
        });
        let sp = row.and_then(|r| records[r.record].speculation.as_ref());
        ChosenSpeculation {
            setting,
            tried,
            validation_speedup,
            test_speedup: row.and_then(|r| r.speedup_measured),
            test_speedup_interval: row.and_then(|r| Some([r.speedup_measured_lo?, r.speedup_measured_hi?])),
            test_acceptance_rate: sp.and_then(|x| x.acceptance_rate),
            test_tokens_per_verify: sp.and_then(|x| x.tokens_per_verify),
            test_d: row.and_then(|r| r.d_full).map(|d| d.mean),
        }
    });
    if let Some(l) = o.ltt {
        cal.ltt = Some(LttSummary { risk: l.risk, delta: l.delta, epsilon: l.epsilon, n: val_plan.examples.len() });
        for (c, tested) in cal.measures.iter_mut().zip(steps) {
            c.ltt_steps = tested;
            let test_table = risk_table(&records, &c.measure, l.risk, &rouge)?;
            c.test_risk = c.threshold.and_then(|t| test_table.iter().find(|(x, _)| *x == t)).map(|(_, r)| r.iter().map(|x| x.1).sum::<f64>() / r.len().max(1) as f64);
            if l.check_validity {
                // Validation and test samples pooled (ids kept apart by their split).
                let tag = |table: Vec<(f64, Vec<(String, f64)>)>, split: &str| -> Vec<(f64, Vec<(String, f64)>)> {
                    table.into_iter().map(|(t, r)| (t, r.into_iter().map(|(id, x)| (format!("{split}:{id}"), x)).collect())).collect()
                };
                let mut pooled = tag(risk_table(&val_records, &c.measure, l.risk, &rouge)?, "validation");
                let test_tagged = tag(test_table, "test");
                pooled.retain(|(t, _)| test_tagged.iter().any(|(x, _)| x == t));
                for (t, r) in pooled.iter_mut() {
                    r.extend(test_tagged.iter().find(|(x, _)| x == t).map(|(_, v)| v.clone()).unwrap_or_default());
                }
                let pooled = aligned(&pooled);
                if !pooled.is_empty() {
                    c.validity = Some(ltt::validity_check(&pooled, l.delta, l.epsilon, l.splits, 0x1a77));
                }
            }
        }
    }
    Ok(cal)
}

/// Per threshold of `measure` (early-exit cells with status ok), the per-sample risks against the
/// same records' full-depth cell, by sample id.
#[allow(clippy::type_complexity)]
fn risk_table(records: &[CellRecord], measure: &str, risk: Risk, rouge: &Rouge) -> Result<Vec<(f64, Vec<(String, f64)>)>> {
    let full = records
        .iter()
        .find(|r| r.key.baseline == Baseline::Full && r.status == CellStatus::Ok)
        .ok_or_else(|| Error::Internal("no finished full-depth cell to measure the risk against".into()))?;
    Ok(records
        .iter()
        .filter(|r| r.key.measure_name() == measure && r.key.baseline == Baseline::None && r.status == CellStatus::Ok)
        .filter_map(|r| Some((r.key.threshold?, risk.per_sample(rouge, full, r))))
        .collect())
}

/// The candidates restricted to the samples every one of them has, in one order (so each risk
/// vector covers the same samples).
fn aligned(table: &[(f64, Vec<(String, f64)>)]) -> Vec<(f64, Vec<f64>)> {
    let Some((_, first)) = table.first() else { return vec![] };
    let common: Vec<&String> = first.iter().map(|(id, _)| id).filter(|id| table.iter().all(|(_, r)| r.iter().any(|(x, _)| x == *id))).collect();
    table
        .iter()
        .map(|(t, r)| {
            let by_id: std::collections::HashMap<&String, f64> = r.iter().map(|(id, x)| (id, *x)).collect();
            (*t, common.iter().map(|id| by_id[id]).collect())
        })
        .collect()
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
/// calibration of other weights or at another batch size or policy.
fn current(plan: &Plan, records: Vec<CellRecord>) -> Result<Vec<CellRecord>> {
    let wh = crate::model::weights_hash(&plan.models[0].dir, plan.random_weights)?;
    let policy_fits = |r: &CellRecord| r.key.batch_policy.is_none_or(|p| plan.batch_policies.contains(&p));
    Ok(records.into_iter().filter(|r| r.key.weights_hash == wh && r.key.max_new_tokens == plan.max_new_tokens && plan.batch_sizes.contains(&r.key.batch()) && policy_fits(r)).collect())
}

/// The self-speculative cell with the highest measured speedup on validation (ties: lower
/// ms/token), with that speedup; None without speculative cells. Speculation is lossless, so
/// there is no D bar; a cell whose output differs from full depth's (a defect) is never chosen.
fn fastest_speculation(rows: &[ReportRow], records: &[CellRecord]) -> Option<(crate::decode::speculative::Speculation, f64)> {
    let mut best: Option<(f64, f64, crate::decode::speculative::Speculation)> = None;
    for r in rows {
        let rec = &records[r.record];
        let k = &rec.key;
        if k.baseline != Baseline::Speculative || rec.status != CellStatus::Ok || r.d_full.is_none_or(|d| d.mean != 0.0) {
            continue;
        }
        let (Some(speedup), Some(draft_layer), Some(draft_tokens), Some(cache)) = (r.speedup_measured, k.draft_layer, k.draft_tokens, k.draft_cache) else { continue };
        let spec = crate::decode::speculative::Speculation { draft_layer, draft_tokens, cache, stop: k.draft_stop };
        if best.is_none_or(|b| (speedup, -rec.ms_per_token.median) > (b.0, -b.1)) {
            best = Some((speedup, rec.ms_per_token.median, spec));
        }
    }
    best.map(|b| (b.2, b.0))
}

/// The cheapest threshold of `measure` with D ≤ max_d: (threshold, D).
fn pick(rows: &[ReportRow], records: &[CellRecord], measure: &str, max_d: f64) -> Option<(f64, f64)> {
    let mut best: Option<(f64, f64, f64, f64)> = None; // (avg layers, ms/token, threshold, D)
    for r in rows {
        let rec = &records[r.record];
        if rec.key.measure_name() != measure || rec.key.baseline != Baseline::None || rec.status != CellStatus::Ok {
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
            let row = pick.and_then(|(t, _)| rows.iter().find(|r| records[r.record].key.measure_name() == *m && records[r.record].key.threshold == Some(t)));
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
                ltt_steps: vec![],
                validity: None,
                test_risk: None,
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
        runtime: format!("{} {} {}", full.key.backend, full.key.device.name(), full.key.dtype),
        machine: full.hardware.summary(),
        ltt: None,
        batch_size: full.key.batch(),
        batch_policy: records.iter().find_map(|r| r.key.batch_policy),
        speculation: None,
    })
}

fn one() -> usize {
    1
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
        "Test split, {} samples, greedy, {}, {} thread(s){}. Full depth: ROUGE-L {:.3}, key facts exact {}{}, {:.3} ms/token. \
         Lead baseline ROUGE-L {}. Oracle average layers {}.\n\n",
        c.samples, if c.runtime.is_empty() { "candle cpu f32" } else { c.runtime.as_str() }, c.threads,
        if c.batch_size > 1 { format!(", batch size {}{}", c.batch_size, c.batch_policy.map(|p| format!(" ({p})")).unwrap_or_default()) } else { String::new() },
        c.full_rouge_l, c.key_facts_exact.map(|x| format!("{:.1}%", x * 100.0)).unwrap_or_else(|| "n/a".into()),
        c.key_facts_each.map(|e| format!(" (winner {:.1}%, score {:.1}%, top performer {:.1}%)", e[0] * 100.0, e[1] * 100.0, e[2] * 100.0)).unwrap_or_default(),
        c.full_ms_per_token, f(c.lead_rouge_l, 3), f(c.oracle_avg_layers, 2)
    );
    let rule = match &c.ltt {
        None => format!("validation D ≤ {}", c.max_d),
        Some(l) => format!("Learn-then-Test, {} risk ≤ {} w.p. ≥ {}", l.risk.name(), l.delta, 1.0 - l.epsilon),
    };
    if let Some(l) = &c.ltt {
        s.push_str(&format!(
            "Thresholds with a guarantee (CALM's Learn-then-Test): for each measure, the lowest threshold λ such that, with probability at least \
             1 − ε = {} over the n = {} validation samples, the {} risk at λ is at most δ = {} ({}). Hoeffding–Bentkus p-values, fixed-sequence \
             testing from the highest threshold down, stopping at the first p > ε; none certified means full depth.\n\n",
            1.0 - l.epsilon, l.n, l.risk.name(), l.delta,
            match l.risk { Risk::Textual => "per sample D(Y_early, Y_full) = 1 − ROUGE-L F against full depth's output", Risk::Reference => "per sample max(0, R_full − R_early), ROUGE-L F against the reference" }
        ));
    }
    s.push_str(&format!("| measure | threshold ({rule}) | validation D | test D [95% CI] | R_early − R_full | avg layers | theoretical speedup | measured speedup | measured ÷ theoretical |\n|---|---|---|---|---|---|---|---|---|\n"));
    for m in &c.measures {
        let d = m.test_d.map(|d| format!("{:.3} [{:.3}, {:.3}]", d[0], d[1], d[2])).unwrap_or_else(|| "n/a".into());
        let x = |v: Option<f64>| v.map(|v| format!("{v:.2}×")).unwrap_or_else(|| "n/a".into());
        s.push_str(&format!("| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", m.measure, f(m.threshold, 2), f(m.validation_d, 3), d,
            m.rouge_delta.map(|x| format!("{x:+.3}")).unwrap_or_else(|| "n/a".into()), f(m.avg_layers, 2), x(m.speedup_theoretical),
            x(m.speedup_measured), f(m.measured_over_theoretical, 2)));
    }
    if let Some(sp) = &c.speculation {
        let x = sp.setting;
        let iv = sp.test_speedup_interval.map(|i| format!(" [{:.2}, {:.2}]", i[0], i[1])).unwrap_or_default();
        s.push_str(&format!(
            "\nSelf-speculative decoding: the fastest of {} settings on validation is draft layer E = {}, k = {} drafted tokens, {} cache{} ({:.2}× on validation). \
             On test: {}{iv} over full depth, acceptance rate {}, {} tokens per verification pass, D(Y_spec, Y_full) = {} (lossless).\n",
            sp.tried, x.draft_layer, x.draft_tokens, x.cache, x.stop.map(|st| format!(", drafting stopped below {st}")).unwrap_or_default(), sp.validation_speedup,
            sp.test_speedup.map(|v| format!("{v:.2}×")).unwrap_or_else(|| "n/a".into()),
            sp.test_acceptance_rate.map(|a| format!("{:.0}%", a * 100.0)).unwrap_or_else(|| "n/a".into()),
            f(sp.test_tokens_per_verify, 2), f(sp.test_d, 3)
        ));
    }
    if let Some(l) = &c.ltt {
        s.push_str("\n| measure | thresholds tested on validation: λ (R̂, p) | chosen | test risk | validity over random splits |\n|---|---|---|---|---|\n");
        for m in &c.measures {
            let tested = m.ltt_steps.iter().map(|t| format!("{} ({:.3}, {:.2e}){}", t.threshold, t.risk, t.p_value, if t.rejected { "" } else { " ✗" })).collect::<Vec<_>>().join("; ");
            let validity = m
                .validity
                .as_ref()
                .map(|v| format!("{} of {} splits above δ ({:.1}%; ε = {}, allowance {:.1}%)", v.violations, v.splits, 100.0 * v.violation_rate, l.epsilon, 100.0 * ltt::violation_allowance(l.epsilon, v.splits)))
                .unwrap_or_else(|| "not checked (--check-validity)".into());
            s.push_str(&format!("| {} | {tested} | {} | {} | {validity} |\n", m.measure, m.threshold.map(|t| t.to_string()).unwrap_or_else(|| "full depth".into()), f(m.test_risk, 3)));
        }
        s.push_str("\nA split's calibration half is half of the validation and test samples pooled, its test half the rest; a violation is a chosen threshold whose test-half risk exceeds δ (the finite test half adds its own noise).\n");
    }
    s
}

/// The embedded model's bar, one line per condition with `met` / `NOT met`: full-depth
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
            _ if c.ltt.is_some() => format!("{}: no threshold certified by Learn-then-Test (full depth)", m.measure),
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
            ltt_steps: vec![],
            validity: None,
            test_risk: None,
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
            ltt: None,
            batch_size: 1,
            batch_policy: None,
            speculation: None,
        };
        let verdicts: Vec<bool> = bar(&c).iter().map(|b| b.1).collect();
        // ROUGE-L ≥ 0.75 yes; 0.80 < 0.60 + 0.25 no; facts yes; diff yes; saturation D no; classifier none; max too slow.
        assert_eq!(verdicts, vec![true, false, true, true, false, false, false]);
        assert!(bar(&c)[5].0.contains("no threshold kept"));
    }
}
