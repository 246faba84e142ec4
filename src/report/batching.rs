//! The batch section of the reports: per runtime and exit setting, tokens/s, latency and J/token
//! against batch size for each policy beside full depth's own curve; batch-min's measured mean
//! exit layer beside its prediction from the batch-1 exit-layer distribution; and the green-AI
//! answer: does early exit at batch B beat full depth at B, and full depth at the batch size where
//! its J/token is lowest?

use crate::results::{Baseline, CellKey, CellRecord, CellStatus};
use super::ReportRow;
use std::fmt::Write;

/// The key with its batch fields cleared: the batch-1 cell of the same runtime and setting.
fn unbatched(k: &CellKey) -> CellKey {
    CellKey { batch_size: None, batch_policy: None, ..k.clone() }
}

/// Batch-min's expected exit layer at batch size `b` when rows are independent: with F the
/// batch-1 exit-layer CDF (from `hist`, decoded tokens per exit layer), the batch exits at or
/// below l with probability F(l)^b.
pub fn predicted_batch_min_layer(hist: &[u64], b: usize) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let (mut cum, mut prev, mut e) = (0u64, 0.0f64, 0.0f64);
    for (i, &n) in hist.iter().enumerate() {
        cum += n;
        let f = (cum as f64 / total as f64).powi(b as i32);
        e += (i + 1) as f64 * (f - prev);
        prev = f;
    }
    Some(e)
}

/// One batched (or batch-1) cell as the section shows it.
struct Point<'a> {
    rec: &'a CellRecord,
    row: &'a ReportRow,
}

impl Point<'_> {
    fn b(&self) -> usize {
        self.rec.key.batch()
    }
    fn j(&self) -> Option<f64> {
        self.row.j_per_token
    }
    fn tok_s(&self) -> f64 {
        self.rec.tokens_per_s.median
    }
}

/// The cells that ran, and their runtimes without the batch size (group ids in first-seen
/// order): each runtime's full-depth curve and settings across batch sizes.
fn points_by_runtime<'a>(rows: &'a [ReportRow], records: &'a [CellRecord]) -> (Vec<Point<'a>>, Vec<String>) {
    let points: Vec<Point> = rows.iter().map(|row| Point { rec: &records[row.record], row }).filter(|p| p.rec.status == CellStatus::Ok).collect();
    let mut runtimes: Vec<String> = Vec::new();
    for p in &points {
        let g = unbatched(&p.rec.key).group_id();
        if !runtimes.contains(&g) {
            runtimes.push(g);
        }
    }
    (points, runtimes)
}

/// Writes the batch section when any record is batched.
pub fn write_batching(s: &mut String, rows: &[ReportRow], records: &[CellRecord]) {
    if !records.iter().any(|r| r.key.batch_size.is_some()) {
        return;
    }
    let (points, runtimes) = points_by_runtime(rows, records);
    let _ = writeln!(s, "## Batched decoding\n");
    let _ = writeln!(s, "Rows of a batch are consecutive samples; a row that ends leaves the batch. tokens/s counts every row's decoded tokens over the batch's decode time; \
        ms/token is its inverse; row latency is each row's mean step time (a row waits for the whole step), median and p90 over rows. \
        Speedup vs full depth at B is paired by round as in the headline tables; vs full depth at B = 1 it is the ratio of the two cells' median tokens/s (not paired). \
        Batch-min's predicted mean exit layer assumes independent rows and a full batch: P(batch exit ≤ l) = F(l)^B with F the batch-1 exit-layer distribution of the same setting. \
        Wasted row layers are layers run for rows that had already exited (per-row's passengers); held tokens are tokens whose own measure cleared at an earlier exit point than the layer the batch took (batch-min). \
        A runtime that does not share weight reads across rows (ONNX Runtime's concatenating graphs, on CUDA and in bf16: rows run one by one) is marked *rows one by one*. \
        A self-speculative batch runs in passes: the rows still drafting share each draft step, every row's drafts are verified in one call per layer (each row its own segment, unpadded; ONNX Runtime's attention op needs one call per position of the longest segment), \
        and each row keeps its own accepted prefix; its row latency is per pass a row took part in.\n");
    for g in &runtimes {
        let mine: Vec<&Point> = points.iter().filter(|p| unbatched(&p.rec.key).group_id() == *g).collect();
        let full: Vec<&Point> = mine.iter().copied().filter(|p| p.rec.key.baseline == Baseline::Full).collect();
        if full.iter().all(|p| p.b() == 1) && mine.iter().all(|p| p.b() == 1) {
            continue;
        }
        let k = &mine[0].rec.key;
        let _ = writeln!(s, "### {} · {} · {} · {} · {}\n", k.model, k.backend, k.device, super::plural(k.threads, "thread"), k.dtype);
        let full_at = |b: usize| full.iter().find(|p| p.b() == b).copied();
        let full1 = full_at(1);
        let _ = writeln!(s, "| setting | B | tokens/s | ms/token | row latency ms/token (median, p90) | J/token | speedup vs full at B (paired) | vs full at B = 1 | avg layers | batch-min predicted avg layer | wasted row layers | held tokens | gather share | MB read per token (GB/s) |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        // Full depth, and every setting that also ran batched (its batch-1 cell beside).
        let batched_settings: Vec<String> = mine.iter().filter(|p| p.b() > 1).map(|p| unbatched(&p.rec.key).setting_id()).collect();
        let mut ordered: Vec<&Point> = mine.iter().copied().filter(|p| p.rec.key.baseline == Baseline::Full || (p.rec.key.baseline != Baseline::Oracle && batched_settings.contains(&unbatched(&p.rec.key).setting_id()))).collect();
        ordered.sort_by_key(|p| (p.rec.key.baseline != Baseline::Full, unbatched(&p.rec.key).setting_id(), p.rec.key.batch_policy, p.b()));
        for p in &ordered {
            let r = p.rec;
            let bs = r.batch.as_ref();
            let latency = bs.map(|b| format!("{:.3}, {:.3}", b.latency_ms_per_token, b.latency_ms_per_token_p90)).unwrap_or_else(|| format!("{:.3}", r.ms_per_token.median));
            let paired = super::speedup_text(p.row).unwrap_or_else(|| if r.key.baseline == Baseline::Full { "1 (itself)".into() } else { "n/a".into() });
            let vs1 = full1.filter(|f| f.tok_s() > 0.0).map(|f| format!("{:.2}×", p.tok_s() / f.tok_s())).unwrap_or_else(|| "n/a".into());
            let predicted = (r.key.batch_policy == Some(crate::decode::batch::BatchPolicy::BatchMin))
                .then(|| points.iter().find(|q| q.rec.key.id() == unbatched(&r.key).id()))
                .flatten()
                .and_then(|one| predicted_batch_min_layer(&one.rec.exit_histogram, p.b()))
                .map(|e| format!("{e:.2}"))
                .unwrap_or_default();
            let one_by_one = if bs.is_some_and(|b| !b.shares_weight_reads) { " *rows one by one*" } else { "" };
            let bytes = r.bytes_per_token.map(|b| format!("{:.2}{}", b / 1e6, r.achieved_gb_s.map(|g| format!(" ({g:.1})")).unwrap_or_default())).unwrap_or_else(|| "n/a".into());
            let _ = writeln!(s, "| {}{one_by_one} | {} | {:.0} | {:.3} | {latency} | {} | {paired} | {vs1} | {:.2} | {predicted} | {} | {} | {} | {bytes} |",
                p.row.label, p.b(), p.tok_s(), r.ms_per_token.median,
                p.j().map(|j| format!("{j:.4} ({})", r.energy.source)).unwrap_or_else(|| "n/a".into()),
                r.avg_layers,
                bs.map(|b| b.wasted_row_layers.to_string()).unwrap_or_default(),
                bs.map(|b| b.held_row_tokens.to_string()).unwrap_or_default(),
                bs.map(|b| format!("{:.1}%", b.gather_share * 100.0)).unwrap_or_default());
        }
        let _ = writeln!(s);
        // The green-AI question, per early-exit cell.
        let best_full = full.iter().filter(|p| p.j().is_some()).min_by(|a, b| a.j().unwrap_or(f64::MAX).total_cmp(&b.j().unwrap_or(f64::MAX)));
        if let Some(best) = best_full {
            let _ = writeln!(s, "Full depth's lowest J/token here is {:.4} at B = {} ({}). Does early exit beat it?\n", best.j().unwrap_or(0.0), best.b(), best.rec.energy.source);
            for p in ordered.iter().filter(|p| matches!(p.rec.key.baseline, Baseline::None | Baseline::Speculative)) {
                let (Some(j), Some(same)) = (p.j(), full_at(p.b()).and_then(|f| f.j())) else { continue };
                let best_j = best.j().unwrap_or(f64::MAX);
                let verdict = |x: f64| if j < x { "yes" } else { "no" };
                let _ = writeln!(s, "- {} at B = {}: {j:.4} J/token; beats full depth at B = {} ({same:.4}): **{}**; beats full depth at its best B = {} ({best_j:.4}): **{}**",
                    p.row.label, p.b(), p.b(), verdict(same), best.b(), verdict(best_j));
            }
            let _ = writeln!(s);
        }
    }
}

/// The batch section of report.html: per runtime, tokens/s and J/token against batch size, one
/// line per early-exit setting and policy beside full depth's own (black, dashed), each point's
/// tooltip naming the cell; then the same green-AI answers as summary.md.
pub fn html_section(rows: &[ReportRow], records: &[CellRecord]) -> String {
    use super::svg::{esc, Chart, Series, PALETTE};
    if !records.iter().any(|r| r.key.batch_size.is_some()) {
        return String::new();
    }
    let mut md = String::new();
    write_batching(&mut md, rows, records);
    let (points, runtimes) = points_by_runtime(rows, records);
    let mut s = String::from("<h2>Batched decoding</h2><p>tokens/s counts every row's decoded tokens over the batch's decode time; J/token as in the tables (its source in the tooltips). Full depth is the dashed black line. The table and the answers are in summary.md's Batched decoding section.</p>");
    for g in &runtimes {
        let mine: Vec<&Point> = points.iter().filter(|p| unbatched(&p.rec.key).group_id() == *g && matches!(p.rec.key.baseline, Baseline::Full | Baseline::None | Baseline::Speculative)).collect();
        if mine.iter().all(|p| p.b() == 1) {
            continue;
        }
        // One line per setting (and policy); batch-1 cells join every policy's line.
        let mut lines: Vec<(String, bool)> = Vec::new();
        for p in &mine {
            let full = p.rec.key.baseline == Baseline::Full;
            let name = if full { "full depth".to_string() } else { p.row.label.clone() };
            if p.b() > 1 && !lines.iter().any(|(n, _)| *n == name) {
                lines.push((name, full));
            }
        }
        let series = |y: &dyn Fn(&Point) -> Option<f64>| -> Vec<Series> {
            lines
                .iter()
                .enumerate()
                .map(|(i, (name, full))| {
                    let base = |p: &Point| unbatched(&p.rec.key).setting_id();
                    let on_line = |p: &&&Point| {
                        if *full {
                            p.rec.key.baseline == Baseline::Full
                        } else {
                            p.rec.key.baseline != Baseline::Full && (p.row.label == *name || (p.b() == 1 && mine.iter().any(|q| q.row.label == *name && base(q) == base(p))))
                        }
                    };
                    let mut pts: Vec<(f64, f64, String)> = mine.iter().filter(on_line).filter_map(|p| y(p).map(|v| (p.b() as f64, v, format!("{} at B = {}: {v:.4}", p.row.label, p.b())))).collect();
                    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series { label: name.clone(), points: pts, line: true, dashed: *full, hollow: false, color: if *full { "#000000".into() } else { PALETTE[i % 7].to_string() } }
                })
                .collect()
        };
        let k = &mine[0].rec.key;
        let _ = write!(s, "<h3>{} · {} · {} · {} · {}</h3>", esc(&k.model), k.backend, k.device, esc(&super::plural(k.threads, "thread")), k.dtype);
        s.push_str(&Chart { title: "Throughput against batch size".into(), x_label: "batch size B".into(), y_label: "tokens/s (all rows)".into(), series: series(&|p| Some(p.tok_s())) }.render());
        s.push_str(&Chart { title: "J/token against batch size".into(), x_label: "batch size B".into(), y_label: "joules per token".into(), series: series(&|p| p.j()) }.render());
    }
    // The answers, as list items (from the Markdown section).
    let answers: Vec<&str> = md.lines().filter(|l| l.starts_with("- ") || l.starts_with("Full depth's lowest")).collect();
    if !answers.is_empty() {
        s.push_str("<ul>");
        for a in answers {
            let _ = write!(s, "<li>{}</li>", esc(a.trim_start_matches("- ")).replace("**", ""));
        }
        s.push_str("</ul>");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_min_prediction_by_hand() {
        // Half the tokens exit at layer 1, half at layer 3 (of 3).
        let hist = [5, 0, 5];
        assert_eq!(predicted_batch_min_layer(&hist, 1), Some(2.0));
        // B = 2: the batch exits at 1 only when both rows do (1/4), else at 3.
        assert_eq!(predicted_batch_min_layer(&hist, 2), Some(0.25 * 1.0 + 0.75 * 3.0));
        assert_eq!(predicted_batch_min_layer(&[0, 0, 0], 4), None);
    }
}
