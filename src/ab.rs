//! A/B in one job (`exitbench ab`): two sides, two exitbench binaries or two models, measured
//! alternately in the same job over N pairs of small sweeps, so the machine's state between runs
//! is shared by both sides and enters the interval of each change (asv continuous's approach).
//!
//! Per cell: the change of decode ms/token and of the paired speedup, each the geometric mean of
//! the N per-pair ratios B ÷ A with a (1 − α) t-interval over the pairs; the deterministic figures
//! of the two sides (tokens, exit layers, ROUGE...); and a verdict: `regressed` when an interval
//! lies wholly beyond the noise threshold on the worse side, `improved` on the better side, else
//! `within noise`; `changed` notes deterministic differences (expected for two models).

use crate::check::{self, Verdict};
use crate::results::{CellRecord, CellStatus};
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};
use std::collections::BTreeMap;

/// One pair's records: side A's run and side B's run.
#[derive(Debug, Clone)]
pub struct Pair {
    /// Side A's records.
    pub a: Vec<CellRecord>,
    /// Side B's records.
    pub b: Vec<CellRecord>,
}

/// The change of one figure over the pairs.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Median of side A's values over the pairs.
    pub a: f64,
    /// Median of side B's values over the pairs.
    pub b: f64,
    /// Geometric mean of the per-pair ratios B ÷ A, minus 1.
    pub change: f64,
    /// The (1 − α) t-interval of the change over the pairs (None with fewer than two pairs).
    pub interval: Option<(f64, f64)>,
    /// Pairs it comes from.
    pub pairs: usize,
    /// Verdict of this figure.
    pub verdict: Verdict,
}

/// One cell of the A/B comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CellAb {
    /// The cell's label.
    pub cell: String,
    /// Decode ms/token (smaller is better).
    pub ms_per_token: Option<Change>,
    /// Paired speedup against full depth (larger is better; early-exit cells only).
    pub speedup: Option<Change>,
    /// Deterministic figures that differ between the sides' first runs: (figure, A, B).
    pub differences: Vec<(String, f64, f64)>,
    /// The cell's verdict: the worst of its figures' (regressed > changed > improved > within noise).
    pub verdict: Verdict,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct AbOutcome {
    /// Pairs measured.
    pub pairs: usize,
    /// Per cell, in side A's order.
    pub cells: Vec<CellAb>,
    /// Cells only one side ran: (label, side).
    pub unmatched: Vec<(String, char)>,
}

impl AbOutcome {
    /// True when a cell regressed.
    pub fn regressed(&self) -> bool {
        self.cells.iter().any(|c| c.verdict == Verdict::Regressed)
    }
}

/// The key cells are matched on between the sides: the cell key without the machine, the model
/// and its weights hash (two models of one grid are the same cells).
fn side_key(r: &CellRecord) -> String {
    let mut r = r.clone();
    r.key.model = String::new();
    r.key.weights_hash = String::new();
    check::match_key(&r)
}

/// The fewest pairs that can give a verdict other than `within noise`.
pub const MIN_PAIRS: usize = 3;

/// Which way a figure is better.
#[derive(Debug, Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// The change of a figure from per-pair (A, B) values.
fn change(values: &[(f64, f64)], better: Better, threshold: f64, alpha: f64) -> Option<Change> {
    let logs: Vec<f64> = values.iter().filter(|(a, b)| *a > 0.0 && *b > 0.0).map(|(a, b)| (b / a).ln()).collect();
    if logs.is_empty() {
        return None;
    }
    let n = logs.len();
    let mean = logs.iter().sum::<f64>() / n as f64;
    let interval = (n >= 2).then(|| {
        let sd = (logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt();
        let t = StudentsT::new(0.0, 1.0, n as f64 - 1.0).map(|d| d.inverse_cdf(1.0 - alpha / 2.0)).unwrap_or(f64::INFINITY);
        let half = t * sd / (n as f64).sqrt();
        ((mean - half).exp() - 1.0, (mean + half).exp() - 1.0)
    });
    // With fewer than MIN_PAIRS pairs the spread between runs is not known well enough to call
    // a change (two identical binaries measured +17% [+11%, +23%] apart over two pairs here).
    let verdict = match (interval.filter(|_| n >= MIN_PAIRS), better) {
        (Some((lo, _)), Better::Lower) if lo > threshold => Verdict::Regressed,
        (Some((_, hi)), Better::Lower) if hi < -threshold => Verdict::Improved,
        (Some((_, hi)), Better::Higher) if hi < -threshold => Verdict::Regressed,
        (Some((lo, _)), Better::Higher) if lo > threshold => Verdict::Improved,
        _ => Verdict::WithinNoise,
    };
    let med = |f: fn(&(f64, f64)) -> f64| crate::metrics::stats::median(&values.iter().map(f).collect::<Vec<_>>());
    Some(Change { a: med(|p| p.0), b: med(|p| p.1), change: mean.exp() - 1.0, interval, pairs: n, verdict })
}

/// How bad a verdict is, for a cell's worst.
fn rank(v: Verdict) -> u8 {
    match v {
        Verdict::Regressed => 3,
        Verdict::Changed => 2,
        Verdict::Improved => 1,
        _ => 0,
    }
}

/// Compares the sides over the pairs; `threshold` is the noise threshold (0.10 = ±10%) and
/// `alpha` 1 − the intervals' coverage.
pub fn compare(pairs: &[Pair], threshold: f64, alpha: f64) -> AbOutcome {
    let ok = |v: &[CellRecord]| -> BTreeMap<String, CellRecord> { v.iter().filter(|r| r.status == CellStatus::Ok).map(|r| (side_key(r), r.clone())).collect() };
    let sides: Vec<(BTreeMap<String, CellRecord>, BTreeMap<String, CellRecord>)> = pairs.iter().map(|p| (ok(&p.a), ok(&p.b))).collect();
    let mut out = AbOutcome { pairs: pairs.len(), cells: vec![], unmatched: vec![] };
    let Some((first_a, first_b)) = sides.first() else { return out };
    let order: Vec<(&String, &CellRecord)> = pairs[0].a.iter().filter(|r| r.status == CellStatus::Ok).map(|r| (first_a.get_key_value(&side_key(r)).expect("own key").0, r)).collect();
    for (key, a0) in order {
        let Some(b0) = first_b.get(key) else {
            out.unmatched.push((check::label(a0), 'A'));
            continue;
        };
        let both = |f: &dyn Fn(&CellRecord) -> Option<f64>| -> Vec<(f64, f64)> {
            sides.iter().filter_map(|(a, b)| Some((f(a.get(key)?)?, f(b.get(key)?)?))).collect()
        };
        let ms_per_token = change(&both(&|r| Some(r.ms_per_token.median)), Better::Lower, threshold, alpha);
        let speedup = change(&both(&|r| r.speedup.as_ref().map(|s| s.measured)), Better::Higher, threshold, alpha);
        let differences: Vec<(String, f64, f64)> = check::deterministic_figures(a0, b0).into_iter().filter(|f| f.baseline != f.current).map(|f| (f.name.to_string(), f.baseline, f.current)).collect();
        let mut verdict = Verdict::WithinNoise;
        for v in [ms_per_token.as_ref().map(|c| c.verdict), speedup.as_ref().map(|c| c.verdict), (!differences.is_empty()).then_some(Verdict::Changed)].into_iter().flatten() {
            if rank(v) > rank(verdict) {
                verdict = v;
            }
        }
        out.cells.push(CellAb { cell: check::label(a0), ms_per_token, speedup, differences, verdict });
    }
    for (key, b0) in first_b {
        if !first_a.contains_key(key) {
            out.unmatched.push((check::label(b0), 'B'));
        }
    }
    out
}

/// The comparison as Markdown: one row per cell, then the deterministic differences.
pub fn markdown(o: &AbOutcome, a: &str, b: &str) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "A = {a}\nB = {b}\n{} pairs, measured alternately in this job (A B, then B A, ...); intervals are over the pairs, so they include the variation between runs; a verdict other than within noise needs at least {MIN_PAIRS} pairs.\n", o.pairs);
    let _ = writeln!(s, "| cell | ms/token A | ms/token B | change [interval] | speedup A | speedup B | change [interval] | verdict |\n|---|---|---|---|---|---|---|---|");
    let fmt = |c: &Option<Change>| -> (String, String, String) {
        match c {
            None => ("–".into(), "–".into(), "–".into()),
            Some(c) => {
                let iv = c.interval.map(|(lo, hi)| format!(" [{:+.1}%, {:+.1}%]", lo * 100.0, hi * 100.0)).unwrap_or_default();
                (format!("{:.4}", c.a), format!("{:.4}", c.b), format!("{:+.1}%{iv}", c.change * 100.0))
            }
        }
    };
    for c in &o.cells {
        let (ma, mb, mc) = fmt(&c.ms_per_token);
        let (sa, sb, sc) = fmt(&c.speedup);
        let _ = writeln!(s, "| {} | {ma} | {mb} | {mc} | {sa} | {sb} | {sc} | {} |", c.cell, c.verdict.word());
    }
    let diffs: Vec<&CellAb> = o.cells.iter().filter(|c| !c.differences.is_empty()).collect();
    if !diffs.is_empty() {
        let _ = writeln!(s, "\nDeterministic figures that differ between A and B:\n\n| cell | figure | A | B |\n|---|---|---|---|");
        for c in diffs {
            for (m, x, y) in &c.differences {
                let _ = writeln!(s, "| {} | {m} | {x} | {y} |", c.cell);
            }
        }
    }
    if !o.unmatched.is_empty() {
        let _ = writeln!(s, "\nCells only one side ran: {}", o.unmatched.iter().map(|(c, side)| format!("{c} ({side})")).collect::<Vec<_>>().join("; "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consistent_doubling_regresses_and_noise_does_not() {
        let twice: Vec<(f64, f64)> = [(1.0, 2.1), (1.1, 2.0), (0.9, 1.9)].to_vec();
        let c = change(&twice, Better::Lower, 0.10, 0.05).unwrap();
        assert_eq!(c.verdict, Verdict::Regressed, "{c:?}");
        assert!((c.change - 1.0).abs() < 0.15);
        // The same figures for a larger-is-better figure: improved.
        assert_eq!(change(&twice, Better::Higher, 0.10, 0.05).unwrap().verdict, Verdict::Improved);
        // Noise of ±15% around no change, in both directions: within noise.
        let noise: Vec<(f64, f64)> = [(1.0, 1.15), (1.0, 0.87), (1.0, 1.1), (1.0, 0.9)].to_vec();
        assert_eq!(change(&noise, Better::Lower, 0.10, 0.05).unwrap().verdict, Verdict::WithinNoise);
        // One pair: no interval, within noise whatever the change.
        let c = change(&[(1.0, 3.0)], Better::Lower, 0.10, 0.05).unwrap();
        assert_eq!((c.interval, c.verdict), (None, Verdict::WithinNoise));
        // Two pairs that happen to agree: an interval is shown, but too few pairs for a verdict.
        let c = change(&[(1.0, 1.17), (1.0, 1.18)], Better::Lower, 0.10, 0.05).unwrap();
        assert!(c.interval.unwrap().0 > 0.10, "{c:?}");
        assert_eq!(c.verdict, Verdict::WithinNoise);
        // By hand: ratios 2 and 2·e^0.2 → mean ln = ln 2 + 0.1, sd = 0.1414, t(1) = 12.706,
        // half = 12.706 · 0.1414 / √2 = 1.2706.
        let c = change(&[(1.0, 2.0), (1.0, 2.0 * 0.2f64.exp())], Better::Lower, 0.10, 0.05).unwrap();
        let (lo, hi) = c.interval.unwrap();
        assert!(((hi + 1.0).ln() - (2f64.ln() + 0.1 + 1.2706)).abs() < 1e-3, "{hi}");
        assert!(((lo + 1.0).ln() - (2f64.ln() + 0.1 - 1.2706)).abs() < 1e-3, "{lo}");
    }
}
