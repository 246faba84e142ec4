//! Groups side by side: for one model, weights, dataset and machine, every configuration group
//! (backend × device × dtype × threads) against a reference group (candle on the CPU in f32 when
//! present), setting by setting: decode ms/token ratio (per-sample paired, median with a 95%
//! bootstrap interval), J/token ratio, token agreement, D(Y_group, Y_reference) and ROUGE-L against
//! the references. Serves the backend comparison (ORT vs candle) and the precision comparison.

use crate::results::{CellRecord, CellStatus, SampleOutput};
use crate::metrics::rouge::Rouge;
use crate::metrics::stats::{bootstrap_median, Interval};
use std::collections::HashMap;

/// One setting of one group against the same setting of the reference group.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Comparison {
    /// Model, dataset and machine the groups share.
    pub scope: String,
    /// The reference group, e.g. `candle cpu f32 1t`.
    pub reference: String,
    /// The compared group.
    pub group: String,
    /// The setting (`full`, `softmax-diff@0.9`, ...).
    pub setting: String,
    /// This group's decode ms/token ÷ the reference's, per sample (paired), median and interval.
    pub ms_ratio: Option<Interval>,
    /// This group's decode J/token ÷ the reference's (decode only, like the ms/token ratio;
    /// same energy source on both sides only).
    pub j_ratio: Option<f64>,
    /// The energy source of both sides (`estimate` joules are modelled, not measured).
    pub energy_source: crate::meter::Sources,
    /// Share of generated token positions where both emitted the same token (positions past the
    /// shorter output count as disagreements); None without token ids.
    pub token_agreement: Option<f64>,
    /// Share of samples whose outputs are token-for-token identical.
    pub identical_samples: Option<f64>,
    /// 1 − ROUGE-L F of this group's outputs against the reference's, mean over samples.
    pub d_reference: Option<f64>,
    /// ROUGE-L F against the references, this group and the reference group.
    pub rouge_l: (f64, f64),
}

fn group_name(r: &CellRecord) -> String {
    r.key.runtime_label()
}

/// What a setting is, whatever group runs it (oracles of other exit points stay apart).
fn setting_key(r: &CellRecord) -> String {
    r.key.setting_id()
}

fn scope_of(r: &CellRecord) -> String {
    let leaf = |p: &str| std::path::Path::new(p).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| p.to_string());
    format!("{} ({}) · {} · machine {} · {} new tokens", leaf(&r.key.model), r.key.weights_hash, leaf(&r.key.dataset), r.key.machine, r.key.max_new_tokens)
}

/// Every comparison of `records` (only scopes with two or more groups; `ok` cells only).
pub fn compare(records: &[CellRecord]) -> Vec<Comparison> {
    let ok: Vec<&CellRecord> = records.iter().filter(|r| r.status == CellStatus::Ok).collect();
    let mut scopes: Vec<String> = Vec::new();
    for r in &ok {
        let s = scope_of(r);
        if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    let rouge = Rouge::new(false);
    let mut out = Vec::new();
    for scope in scopes {
        let cells: Vec<&CellRecord> = ok.iter().copied().filter(|r| scope_of(r) == scope).collect();
        let mut groups: Vec<String> = Vec::new();
        for r in &cells {
            let g = group_name(r);
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        if groups.len() < 2 {
            continue;
        }
        let reference = cells.iter().find(|r| r.key.is_reference_runtime()).map(|r| group_name(r)).unwrap_or_else(|| groups[0].clone());
        let by_setting: HashMap<String, &CellRecord> = cells.iter().filter(|r| group_name(r) == reference).map(|r| (setting_key(r), *r)).collect();
        for g in groups.iter().filter(|g| **g != reference) {
            for r in cells.iter().filter(|r| group_name(r) == *g) {
                let Some(base) = by_setting.get(&setting_key(r)) else { continue };
                out.push(compare_cells(&rouge, &scope, &reference, g, base, r));
            }
        }
    }
    out
}

fn per_token_ms(o: &SampleOutput) -> Option<f64> {
    (o.tokens > 1 && o.decode_s > 0.0).then(|| o.decode_s * 1e3 / (o.tokens - 1) as f64)
}

fn compare_cells(rouge: &Rouge, scope: &str, reference: &str, group: &str, base: &CellRecord, r: &CellRecord) -> Comparison {
    let by_id: HashMap<&str, &SampleOutput> = base.outputs.iter().map(|o| (o.id.as_str(), o)).collect();
    let (mut ratios, mut d, mut same, mut agree, mut positions, mut with_ids) = (Vec::new(), Vec::new(), 0usize, 0usize, 0usize, 0usize);
    for o in &r.outputs {
        let Some(b) = by_id.get(o.id.as_str()) else { continue };
        if let (Some(x), Some(y)) = (per_token_ms(o), per_token_ms(b)) {
            ratios.push(x / y);
        }
        d.push(if o.text == b.text { 0.0 } else { 1.0 - rouge.score(&o.text, &b.text).rougeL.fmeasure });
        if !o.token_ids.is_empty() && !b.token_ids.is_empty() {
            with_ids += 1;
            agree += o.token_ids.iter().zip(&b.token_ids).filter(|(a, b)| a == b).count();
            positions += o.token_ids.len().max(b.token_ids.len());
            same += usize::from(o.token_ids == b.token_ids);
        }
    }
    let j_ratio = match (r.energy.decode_j_per_token, base.energy.decode_j_per_token) {
        (Some(a), Some(b)) if b > 0.0 && r.energy.source == base.energy.source => Some(a / b),
        _ => None,
    };
    Comparison {
        scope: scope.into(),
        reference: reference.into(),
        group: group.into(),
        setting: match (r.key.baseline.name(), r.key.min_exit_layer, r.key.exit_interval) {
            ("oracle", Some(m), Some(k)) if (m, k) != (1, 1) => format!("oracle [min {m} every {k}]"),
            _ => r.key.label(),
        },
        ms_ratio: (!ratios.is_empty()).then(|| bootstrap_median(&ratios, 1000, r.seed)),
        j_ratio,
        energy_source: r.energy.source.clone(),
        token_agreement: (positions > 0).then(|| agree as f64 / positions as f64),
        identical_samples: (with_ids > 0).then(|| same as f64 / with_ids as f64),
        d_reference: (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64),
        rouge_l: (r.rouge.rougeL.mean, base.rouge.rougeL.mean),
    }
}

/// The table's header and rows (shared by summary.md and report.html).
pub fn table(cs: &[Comparison]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec!["group vs reference", "setting", "ms/token ratio [95%]", "decode J/token ratio", "token agreement", "identical samples", "D(Y, Y_ref)", "ROUGE-L vs refs (group / ref)"];
    let pct = |x: Option<f64>| x.map(|v| format!("{:.1}%", v * 100.0)).unwrap_or_else(|| "n/a".into());
    let rows = cs
        .iter()
        .map(|c| {
            vec![
                format!("{} vs {}", c.group, c.reference),
                c.setting.clone(),
                c.ms_ratio.map(|i| format!("{:.2}× [{:.2}, {:.2}]", i.mean, i.lo, i.hi)).unwrap_or_else(|| "n/a".into()),
                c.j_ratio.map(|j| format!("{j:.2}× ({})", c.energy_source)).unwrap_or_else(|| "n/a".into()),
                pct(c.token_agreement),
                pct(c.identical_samples),
                c.d_reference.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into()),
                format!("{:.3} / {:.3}", c.rouge_l.0, c.rouge_l.1),
            ]
        })
        .collect();
    (header, rows)
}
