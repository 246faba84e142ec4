//! The end-of-sweep terminal summary, hyperfine style:
//! "softmax-diff@0.8 ran 1.90 ± 0.10 × faster than full depth, D = 0.030".

use crate::results::{Baseline, CellRecord, CellStatus};
use super::ReportRow;

/// Summary lines for every early-exit or static cell that has a full-depth baseline, under a
/// heading line per configuration group (`candle · cpu · f32 · 1 thread · models/cricket-6l:`).
pub fn summary_lines(rows: &[ReportRow], records: &[CellRecord]) -> Vec<String> {
    let mut out = Vec::new();
    let mut group: Option<&str> = None;
    for r in rows {
        let rec = &records[r.record];
        if rec.status != CellStatus::Ok || rec.key.baseline == Baseline::Full {
            continue;
        }
        if group != Some(r.group.as_str()) {
            group = Some(&r.group);
            let k = &rec.key;
            let batch = k.batch_size.map(|b| format!(" · batch {b}")).unwrap_or_default();
            out.push(format!("{} · {} · {} · {}{batch} · {}:", k.backend, k.device, k.dtype, super::plural(k.threads, "thread"), k.model));
        }
        let d = r.d_full.map(|x| format!("D = {:.3}", x.mean)).unwrap_or_else(|| "D = n/a".into());
        let pm = |e: Option<f64>| e.map(|e| format!(" ± {e:.2}")).unwrap_or_default();
        let iv = |lo: Option<f64>, hi: Option<f64>, inv: bool| match (lo, hi) {
            (Some(a), Some(b)) if inv => format!(" [{:.2}, {:.2}]", 1.0 / b, 1.0 / a),
            (Some(a), Some(b)) => format!(" [{a:.2}, {b:.2}]"),
            _ => String::new(),
        };
        let (lo, hi) = (r.speedup_measured_lo, r.speedup_measured_hi);
        let err = if lo.is_some() { None } else { r.speedup_measured_err };
        let line = match r.speedup_measured {
            Some(s) if s >= 1.0 => format!("{} ran {s:.2}{}{} × faster than full depth, {d}, avg layers {:.2}/{}", r.label, pm(err), iv(lo, hi, false), r.avg_layers, r.num_layers),
            Some(s) => format!("{} ran {:.2}{}{} × slower than full depth, {d}, avg layers {:.2}/{}", r.label, 1.0 / s, pm(err.map(|e| e / (s * s))), iv(lo, hi, true), r.avg_layers, r.num_layers),
            _ => format!("{}: avg layers {:.2}/{} (theoretical {:.2}×), {d}", r.label, r.avg_layers, r.num_layers, r.speedup_theoretical.unwrap_or(0.0)),
        };
        out.push(format!("  {line}"));
    }
    out
}

/// One line on the harness's own cost in the cells just run: its time outside `generate` as a
/// share of the time inside it (median and worst cell); a warning above 1%, where bookkeeping
/// would start to perturb what is measured.
pub fn bookkeeping_line(records: &[CellRecord]) -> Option<String> {
    let shares: Vec<f64> = records.iter().filter(|r| r.status == CellStatus::Ok && r.generate_s > 0.0).map(|r| 100.0 * r.bookkeeping_s / r.generate_s).collect();
    if shares.is_empty() {
        return None;
    }
    let median = crate::metrics::stats::median(&shares);
    let max = shares.iter().copied().fold(f64::MIN, f64::max);
    let prefix = if max > 1.0 { "warning: " } else { "" };
    Some(format!("{prefix}harness bookkeeping: {median:.2}% of generate time (median over {} cells, worst {max:.2}%)", shares.len()))
}
