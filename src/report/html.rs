//! `report.html`: a self-contained page (inline CSS and SVG, no network) with the headline table
//! and, per configuration group, the cost-vs-quality plot with its Pareto frontier, measured and
//! theoretical speedup against threshold per measure, exit-layer histograms, the time split, and
//! sample outputs with every token coloured by its exit layer (CALM's figure). All model text is
//! HTML-escaped.

use crate::results::{Baseline, CellRecord, CellStatus};
use super::svg::{esc, histogram, stacked_bars, Chart, Series, PALETTE};
use super::{Exporter, ReportRow};
use crate::error::Result;
use std::fmt::Write;

/// The HTML export.
pub struct HtmlExporter;

const STYLE: &str = "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}\
td:first-child,th:first-child{text-align:left}.plots{display:flex;flex-wrap:wrap;gap:12px}.tok{padding:1px 0;border-radius:2px}.draft{text-decoration:underline 2px}\
.sample{font-family:monospace;font-size:13px;line-height:1.9;margin:.5em 0 1.2em}.warn{color:#a40}.legend span{padding:2px 6px;margin-right:2px}";

/// Colour of exit layer `l` of `n`: green (early) to red (late).
fn layer_color(l: usize, n: usize) -> String {
    let f = if n > 1 { (l - 1) as f64 / (n - 1) as f64 } else { 1.0 };
    format!("hsl({:.0},70%,78%)", 120.0 * (1.0 - f))
}

fn opt(x: Option<f64>, d: usize) -> String {
    x.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "n/a".into())
}

/// Points on the Pareto frontier of (cost ↓, quality ↑), in cost order.
pub fn pareto(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut p: Vec<(f64, f64)> = points.iter().copied().filter(|(c, q)| c.is_finite() && q.is_finite()).collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for pt in p {
        if out.last().is_none_or(|last| pt.1 > last.1) {
            out.push(pt);
        }
    }
    out
}

impl Exporter for HtmlExporter {
    fn file_name(&self) -> &'static str {
        "report.html"
    }

    fn render(&self, rows: &[ReportRow], records: &[CellRecord]) -> Result<String> {
        let mut s = String::new();
        let _ = write!(s, "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>exitbench report</title><style>{STYLE}</style></head><body>");
        let _ = write!(s, "<h1>exitbench report</h1><p>Batch size 1 unless a heading says otherwise (see Batched decoding). D(Y_early, Y_full) = 1 − ROUGE-L F against full depth's outputs; \
            R_early − R_full = difference in ROUGE-L F against the references (rougeL F, no stemmer, corpus mean; 95% bootstrap intervals). \
            Measured speedup = per sample, full depth's decode ms/token ÷ the setting's measured in the same round, the median with its 95% bootstrap interval (decode only); theoretical = L ÷ average layers. J/token includes the prefill.</p>");
        let _ = write!(s, "<p>{}</p>", super::svg::esc(super::INTERVALS_COVER));
        if let Some((header, machines)) = super::machines_table(records) {
            s.push_str("<h2>Hardware</h2><table><tr>");
            for h in header {
                let _ = write!(s, "<th>{}</th>", esc(h));
            }
            s.push_str("</tr>");
            for m in machines {
                s.push_str("<tr>");
                for (i, cell) in m.iter().enumerate() {
                    let _ = if i == 0 { write!(s, "<td><code>{}</code></td>", esc(cell)) } else { write!(s, "<td>{}</td>", esc(cell)) };
                }
                s.push_str("</tr>");
            }
            s.push_str("</table>");
        }
        let cmp = super::compare::compare(records);
        if !cmp.is_empty() {
            let scopes: Vec<&str> = cmp.iter().map(|c| c.scope.as_str()).fold(Vec::new(), |mut v, x| {
                if !v.contains(&x) {
                    v.push(x);
                }
                v
            });
            s.push_str("<h2>Across runtimes and precisions</h2><p>Each group against the reference group, setting by setting. ms/token ratio: this group's decode ms/token ÷ the reference's, per sample (paired), median with a 95% bootstrap interval; below 1 is faster. D(Y, Y_ref) = 1 − ROUGE-L F of this group's outputs against the reference's.</p>");
            for scope in scopes {
                let members: Vec<_> = cmp.iter().filter(|c| c.scope == scope).cloned().collect();
                let (header, table) = super::compare::table(&members);
                let _ = write!(s, "<h3>{}</h3><table><tr>", esc(scope));
                for h in header {
                    let _ = write!(s, "<th>{}</th>", esc(h));
                }
                s.push_str("</tr>");
                for r in table {
                    s.push_str("<tr>");
                    for c in r {
                        let _ = write!(s, "<td>{}</td>", esc(&c));
                    }
                    s.push_str("</tr>");
                }
                s.push_str("</table>");
                let one_group = members.iter().all(|c| c.group == members[0].group);
                let label = |c: &super::compare::Comparison| if one_group { c.setting.clone() } else { format!("{} · {}", c.group, c.setting) };
                let bars: Vec<(String, Vec<f64>)> = members.iter().filter_map(|c| Some((label(c), vec![c.ms_ratio?.mean]))).collect();
                let title = if one_group { format!("{} decode ms/token ÷ {}'s", members[0].group, members[0].reference) } else { format!("decode ms/token ÷ {}'s", members[0].reference) };
                if !bars.is_empty() {
                    s.push_str("<div class=\"plots\">");
                    s.push_str(&stacked_bars(&title, "×", &bars, &[("ms/token ratio (1 = as fast)", PALETTE[0])]));
                    s.push_str("</div>");
                }
            }
        }
        let groups = super::group_order(rows);
        for g in groups {
            let members: Vec<&ReportRow> = rows.iter().filter(|r| r.group == g).collect();
            group_section(&mut s, &members, records);
        }
        s.push_str(&super::batching::html_section(rows, records));
        s.push_str("</body></html>\n");
        Ok(s)
    }
}

fn group_section(s: &mut String, rows: &[&ReportRow], records: &[CellRecord]) {
    let first = &records[rows[0].record];
    let k = &first.key;
    let h = &first.hardware;
    let _ = write!(s, "<h2>{} · {} · {} · {} · {} · {}</h2>", esc(&k.model), esc(&k.dataset), esc(k.backend.name()), esc(&k.device.name()), esc(k.dtype.name()), super::plural(k.threads, "thread"));
    let _ = write!(s, "<p>Machine <code>{}</code>: {}, {}; {} samples; energy source: <b>{}</b>.</p>",
        esc(&k.machine), esc(&h.summary()), esc(&h.os), first.samples, esc(&first.energy.source.to_string()));
    if first.random_weights {
        s.push_str("<p class=\"warn\">Random weights: quality figures are meaningless.</p>");
    }
    if first.energy.source.is_estimate_only() {
        s.push_str("<p class=\"warn\">These joules are modelled from CPU time and a TDP figure, not measured: they add nothing beyond the timings.</p>");
    }
    s.push_str("<table><tr><th>setting</th><th>D(Y_early, Y_full)</th><th>R_early − R_full</th><th>avg layers</th><th>speedup (measured, decode)</th><th>speedup (theoretical)</th><th>measured ÷ theoretical</th><th>J/token (incl. prefill)</th><th>ms/token</th><th>ROUGE-L vs refs</th><th>status</th></tr>");
    for r in rows {
        let rec = &records[r.record];
        if rec.status != CellStatus::Ok {
            let reason = rec.reason.as_deref().map(|x| format!(": {}", esc(x))).unwrap_or_default();
            let _ = write!(s, "<tr><td>{}</td><td colspan=\"9\"></td><td>{}{reason}</td></tr>", esc(&r.label), esc(rec.status.name()));
            continue;
        }
        let iv = |x: Option<crate::metrics::stats::Interval>, sign: bool| {
            x.map(|i| if sign { format!("{:+.3} [{:+.3}, {:+.3}]", i.mean, i.lo, i.hi) } else { format!("{:.3} [{:.3}, {:.3}]", i.mean, i.lo, i.hi) })
                .unwrap_or_else(|| "n/a".into())
        };
        let speed = super::speedup_text(r).unwrap_or_else(|| "n/a".into());
        let _ = write!(s, "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2} / {}</td><td>{}</td><td>{}×</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
            esc(&r.label), iv(r.d_full, false), iv(r.rouge_delta, true), r.avg_layers, r.num_layers, speed, opt(r.speedup_theoretical, 2),
            opt(r.measured_over_theoretical, 2), r.j_per_token.map(|j| format!("{j:.4}")).unwrap_or_else(|| format!("n/a ({})", esc(&rec.energy.source.to_string()))),
            rec.ms_per_token.median, r.rouge_l_ref.mean, esc(rec.status.name()) + &rec.reason.as_deref().map(|x| format!(": {}", esc(x))).unwrap_or_default());
    }
    s.push_str("</table><div class=\"plots\">");
    let ok: Vec<&ReportRow> = rows.iter().copied().filter(|r| records[r.record].status == CellStatus::Ok).collect();
    s.push_str(&tradeoff_plot(&ok, records));
    s.push_str(&distance_plot(&ok, records));
    s.push_str(&speedup_plot(&ok, records));
    s.push_str(&time_split_plot(&ok, records));
    s.push_str(&bandwidth_plot(&ok, records));
    s.push_str(&layer_time_plot(&ok, records));
    s.push_str("</div><h3>Exit-layer histograms</h3><div class=\"plots\">");
    for r in &ok {
        let hist = &records[r.record].exit_histogram;
        let colors: Vec<String> = (1..=hist.len()).map(|l| layer_color(l, hist.len())).collect();
        s.push_str(&histogram(&r.label, hist, &colors));
    }
    s.push_str("</div>");
    samples_section(s, &ok, records);
}

fn series_key(rec: &CellRecord) -> String {
    if rec.key.baseline == Baseline::None { rec.key.measure_name().to_string() } else { rec.key.baseline.name().to_string() }
}

fn tradeoff_plot(rows: &[&ReportRow], records: &[CellRecord]) -> String {
    let energy = rows.iter().all(|r| r.j_per_token.is_some());
    let cost = |r: &ReportRow| if energy { r.j_per_token.unwrap_or(f64::NAN) } else { records[r.record].ms_per_token.median };
    let mut series: Vec<Series> = Vec::new();
    for r in rows.iter() {
        let oracle = records[r.record].key.baseline == Baseline::Oracle;
        let name = if oracle { "oracle (all layers run)".to_string() } else { series_key(&records[r.record]) };
        let idx = match series.iter().position(|s| s.label == name) {
            Some(i) => i,
            None => {
                series.push(Series { label: name.clone(), points: vec![], line: false, dashed: false, hollow: oracle, color: PALETTE[series.len() % PALETTE.len()].into() });
                series.len() - 1
            }
        };
        series[idx].points.push((cost(r), r.rouge_l_ref.mean, format!("{}: {:.4}, ROUGE-L {:.3}", r.label, cost(r), r.rouge_l_ref.mean)));
    }
    // The oracle is an analysis (its cost is full depth's): plotted, never on the frontier.
    let pts: Vec<(f64, f64)> = series.iter().filter(|s| !s.hollow).flat_map(|s| s.points.iter().map(|p| (p.0, p.1))).collect();
    let front = pareto(&pts);
    // Drawn first so that the settings' own markers stay visible on top of it.
    series.insert(0, Series { label: "Pareto frontier".into(), points: front.iter().map(|p| (p.0, p.1, "frontier".into())).collect(), line: true, dashed: true, hollow: true, color: "#555".into() });
    Chart {
        title: if energy { "J/token vs ROUGE-L".into() } else { "ms/token vs ROUGE-L (no energy meter)".into() },
        x_label: if energy { "joules per token".into() } else { "decode ms per token".into() },
        y_label: "ROUGE-L F vs references".into(),
        series,
    }
    .render()
}

/// Measured speedup against how much the text changed, D(Y_early, Y_full): CALM's settings
/// trade text for speed; self-speculative cells are lossless points on the D = 0 axis.
fn distance_plot(rows: &[&ReportRow], records: &[CellRecord]) -> String {
    let mut series: Vec<Series> = Vec::new();
    for r in rows {
        let rec = &records[r.record];
        let (Some(d), Some(x)) = (r.d_full, r.speedup_measured) else { continue };
        let name = match rec.key.baseline {
            Baseline::None => rec.key.measure_name().to_string(),
            Baseline::Speculative => "self-speculative (lossless)".into(),
            Baseline::Static => "static".into(),
            _ => continue,
        };
        let idx = series.iter().position(|s| s.label == name).unwrap_or_else(|| {
            series.push(Series { label: name.clone(), points: vec![], line: false, dashed: false, hollow: false, color: PALETTE[series.len() % PALETTE.len()].into() });
            series.len() - 1
        });
        series[idx].points.push((d.mean, x, format!("{}: D {:.3}, {x:.2}×", r.label, d.mean)));
    }
    if series.is_empty() {
        return String::new();
    }
    Chart { title: "Speedup vs change of the text".into(), x_label: "D(Y_early, Y_full)".into(), y_label: "measured speedup over full depth (×)".into(), series }.render()
}

fn speedup_plot(rows: &[&ReportRow], records: &[CellRecord]) -> String {
    // One line per measure and exit knobs (schedule, minimum exit layer, interval), so that
    // points of different knobs are never joined.
    let line_of = |rec: &CellRecord| format!("{}{}", rec.key.measure_name(), rec.key.knobs());
    let mut lines: Vec<String> = Vec::new();
    for r in rows {
        let rec = &records[r.record];
        if rec.key.baseline == Baseline::None && !lines.contains(&line_of(rec)) {
            lines.push(line_of(rec));
        }
    }
    let mut series = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()].to_string();
        let cells: Vec<&&ReportRow> = rows.iter().filter(|r| records[r.record].key.baseline == Baseline::None && line_of(&records[r.record]) == *line).collect();
        let pts = |f: &dyn Fn(&ReportRow) -> Option<f64>| -> Vec<(f64, f64, String)> {
            cells.iter().filter_map(|r| Some((records[r.record].key.threshold?, f(r)?, r.label.clone()))).collect()
        };
        series.push(Series { label: format!("{line} measured"), points: pts(&|r| r.speedup_measured), line: true, dashed: false, hollow: false, color: color.clone() });
        series.push(Series { label: format!("{line} theoretical"), points: pts(&|r| r.speedup_theoretical), line: true, dashed: true, hollow: true, color });
    }
    Chart { title: "Speedup vs threshold".into(), x_label: "threshold λ".into(), y_label: "speedup over full depth (×)".into(), series }.render()
}

/// Bars of the table's own decode ms/token (median), split in the shares the per-token traces
/// measured: the bar's length and the table always agree, also when --min-window repeats samples.
pub fn time_split_bars(rows: &[&ReportRow], records: &[CellRecord]) -> Vec<(String, Vec<f64>)> {
    rows.iter()
        .map(|r| {
            let rec = &records[r.record];
            let t = rec.time_split;
            let total = t.layers_s + t.exit_checks_s + t.propagation_s;
            let ms = rec.ms_per_token.median;
            let part = |x: f64| if total > 0.0 { ms * x / total } else { 0.0 };
            (r.label.clone(), vec![part(t.layers_s), part(t.exit_checks_s), part(t.propagation_s)])
        })
        .collect()
}

/// Roofline-style: each setting's achieved bandwidth (bytes counted from the trace ÷ decode time)
/// against the machine's measured one-thread and all-thread bandwidth.
fn bandwidth_plot(rows: &[&ReportRow], records: &[CellRecord]) -> String {
    let data: Vec<(String, Vec<f64>)> = rows.iter().filter_map(|r| Some((r.label.clone(), vec![records[r.record].achieved_gb_s?]))).collect();
    if data.is_empty() {
        return String::new();
    }
    let h = &records[rows[0].record].hardware;
    let limit = |x: Option<f64>| x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "n/a".into());
    let k = &records[rows[0].record].key;
    let title = format!("Achieved GB/s (measured limit at {}: {})", super::plural(k.threads, "thread"), limit(h.bandwidth_at(k.threads)));
    stacked_bars(&title, "GB/s", &data, &[("weights + KV read per token ÷ decode time", PALETTE[3])])
}

/// Mean µs of each layer index: full depth against every static cell and each measure's
/// fastest setting, showing whether a layer costs less when fewer layers run.
fn layer_time_plot(rows: &[&ReportRow], records: &[CellRecord]) -> String {
    let has = |r: &&&ReportRow| !records[r.record].layer_us.is_empty();
    let mut chosen: Vec<&ReportRow> = rows.iter().filter(has).filter(|r| matches!(records[r.record].key.baseline, Baseline::Full | Baseline::Static)).copied().collect();
    let mut measures: Vec<String> = rows.iter().filter(has).filter(|r| records[r.record].key.baseline == Baseline::None).map(|r| records[r.record].key.measure_name().to_string()).collect();
    measures.dedup();
    for m in measures {
        let best = rows.iter().filter(has).filter(|r| records[r.record].key.measure_name() == m).max_by(|a, b| a.speedup_measured.unwrap_or(0.0).total_cmp(&b.speedup_measured.unwrap_or(0.0)));
        chosen.extend(best.copied());
    }
    if chosen.is_empty() {
        return String::new();
    }
    let source = records[chosen[0].record].layer_us_source.clone().unwrap_or_default();
    let series = chosen
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let rec = &records[r.record];
            let points = rec.layer_us.iter().enumerate().filter(|(_, &us)| us > 0.0).map(|(l, &us)| ((l + 1) as f64, us, format!("{} layer {}: {us:.1} µs", r.label, l + 1))).collect();
            Series { label: r.label.clone(), points, line: true, dashed: rec.key.baseline == Baseline::Full, hollow: false, color: PALETTE[i % PALETTE.len()].to_string() }
        })
        .collect();
    Chart { title: format!("Time per layer index (mean over the decoded tokens that ran it; {source})"), x_label: "layer".into(), y_label: "µs".into(), series }.render()
}

fn time_split_plot(rows: &[&ReportRow], records: &[CellRecord]) -> String {
    let data = time_split_bars(rows, records);
    stacked_bars("Time split per decoded token (the table's ms/token, in the traced shares)", "ms", &data, &[("layers", PALETTE[0]), ("exit checks", PALETTE[1]), ("propagation", PALETTE[2])])
}

fn samples_section(s: &mut String, rows: &[&ReportRow], records: &[CellRecord]) {
    let Some(first) = rows.first() else { return };
    let l = records[first.record].num_layers;
    s.push_str("<h3>Sample outputs, each token coloured by its exit layer</h3><p class=\"legend\">");
    for layer in 1..=l {
        let _ = write!(s, "<span style=\"background:{}\">layer {layer}</span>", layer_color(layer, l));
    }
    if rows.iter().any(|r| records[r.record].key.baseline == Baseline::Speculative) {
        s.push_str("<span class=\"draft\">underlined: drafted by the early layers and accepted by the full model</span>");
    }
    s.push_str("</p>");
    for r in rows {
        let rec = &records[r.record];
        let Some(out) = rec.outputs.iter().find(|o| o.trace.is_some()) else { continue };
        let _ = write!(s, "<div><b>{}</b> — sample <code>{}</code>, avg layers {:.2}<div class=\"sample\">", esc(&r.label), esc(&out.id), out.avg_layers);
        for t in out.trace.iter().flatten() {
            let conf = t.confidence.map(|c| format!(", confidence {c:.3}")).unwrap_or_default();
            // Speculative cells: accepted drafts underlined (every token is the full model's).
            let (class, note) = match t.accepted_draft {
                Some(true) => ("tok draft", ", drafted and accepted"),
                Some(false) => ("tok", ", the full model's own token"),
                None => ("tok", ""),
            };
            let _ = write!(s, "<span class=\"{class}\" style=\"background:{}\" title=\"layer {}{}{note}\">{}</span>", layer_color(t.exit_layer, l), t.exit_layer, conf, esc(&t.text));
        }
        s.push_str("</div></div>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_keeps_only_undominated_points() {
        let f = pareto(&[(1.0, 0.5), (2.0, 0.4), (2.0, 0.7), (3.0, 0.9), (4.0, 0.8)]);
        assert_eq!(f, vec![(1.0, 0.5), (2.0, 0.7), (3.0, 0.9)]);
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<script>alert('x')</script> & \""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;");
    }
}
