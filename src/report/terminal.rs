//! The end-of-sweep terminal summary, hyperfine style:
//! "softmax-diff@0.8 ran 1.90 ± 0.10 × faster than full depth, D = 0.030".

use super::ReportRow;
use crate::results::CellRecord;

/// Summary lines for every early-exit or static cell that has a full-depth baseline.
pub fn summary_lines(rows: &[ReportRow], records: &[CellRecord]) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows {
        let rec = &records[r.record];
        if rec.status != "ok" || rec.key.baseline == "full" {
            continue;
        }
        let d = r.d_full.map(|x| format!("D = {:.3}", x.mean)).unwrap_or_else(|| "D = n/a".into());
        let pm = |e: Option<f64>| e.map(|e| format!(" ± {e:.2}")).unwrap_or_default();
        let line = match (r.speedup_measured, r.speedup_measured_err) {
            (Some(s), e) if s >= 1.0 => format!("{} ran {s:.2}{} × faster than full depth, {d}, avg layers {:.2}/{}", r.label, pm(e), r.avg_layers, r.num_layers),
            (Some(s), e) => format!("{} ran {:.2}{} × slower than full depth, {d}, avg layers {:.2}/{}", r.label, 1.0 / s, pm(e.map(|e| e / (s * s))), r.avg_layers, r.num_layers),
            _ => format!("{}: avg layers {:.2}/{} (theoretical {:.2}×), {d}", r.label, r.avg_layers, r.num_layers, r.speedup_theoretical.unwrap_or(0.0)),
        };
        out.push(line);
    }
    out
}
