//! `summary.md`: per configuration group, the headline table: D(Y_early, Y_full),
//! R_early − R_full, average layers, speedup (measured and theoretical) and J/token.

use super::{Exporter, ReportRow};
use crate::error::Result;
use crate::results::CellRecord;
use std::fmt::Write;

/// The Markdown export.
pub struct MarkdownExporter;

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "n/a".into())
}

impl Exporter for MarkdownExporter {
    fn file_name(&self) -> &'static str {
        "summary.md"
    }

    fn render(&self, rows: &[ReportRow], records: &[CellRecord]) -> Result<String> {
        let mut s = String::new();
        let _ = writeln!(s, "# exitbench summary\n");
        let _ = writeln!(s, "Batch size 1. D(Y_early, Y_full) = 1 − ROUGE-L F of the setting's outputs against full depth's; \
            R_early − R_full = difference of ROUGE-L F against the references (rougeL F, no stemmer, corpus mean, 95% bootstrap \
            interval in brackets). Measured speedup = full depth's decode ms/token ÷ the setting's (medians); theoretical = L ÷ average layers.\n");
        write_machines(&mut s, records);
        write_comparison(&mut s, records);
        let groups = super::group_order(rows);
        for g in groups {
            let members: Vec<&ReportRow> = rows.iter().filter(|r| r.group == g).collect();
            let first = &records[members[0].record];
            let k = &first.key;
            let _ = writeln!(s, "## {} · {} · {} · {} · {} · {}\n", k.model, k.dataset, k.backend, k.device, super::plural(k.threads, "thread"), k.dtype);
            let h = &first.hardware;
            let _ = writeln!(s, "Machine `{}`: {}, {}. {} samples, energy source: {}.{}\n",
                k.machine, h.summary(), h.os, first.samples, first.energy.source,
                if first.random_weights { " **Random weights: quality figures are meaningless.**" } else { "" });
            if first.energy.estimate {
                let _ = writeln!(s, "**Energy is an estimate**: these joules are modelled from process CPU time × a per-core share of the CPU's TDP, not measured; they add nothing beyond the timings.\n");
            }
            let _ = writeln!(s, "| setting | D(Y_early, Y_full) | R_early − R_full | avg layers | speedup (measured) | speedup (theoretical) | J/token | Wh / 1k queries | gCO2e / 1k queries | ROUGE-L vs refs |");
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
            for r in &members {
                let rec = &records[r.record];
                if rec.status != "ok" {
                    let _ = writeln!(s, "| {} | {} | | | | | | | | |", r.label, rec.status);
                    continue;
                }
                let d = r.d_full.map(|x| format!("{:.3} [{:.3}, {:.3}]", x.mean, x.lo, x.hi)).unwrap_or_else(|| "n/a".into());
                let delta = r.rouge_delta.map(|x| format!("{:+.3} [{:+.3}, {:+.3}]", x.mean, x.lo, x.hi)).unwrap_or_else(|| "n/a".into());
                let speed = match (r.speedup_measured, r.speedup_measured_err) {
                    (Some(m), Some(e)) => format!("{m:.2} ± {e:.2}×"),
                    (Some(m), None) => format!("{m:.2}×"),
                    _ if rec.key.baseline == "oracle" => "n/a (analysis)".into(),
                    _ => "n/a".into(),
                };
                let e = &rec.energy;
                let per_k = |g: Option<f64>| g.filter(|_| rec.samples > 0).map(|g| format!("{:.4}", g / rec.samples as f64 * 1000.0)).unwrap_or_else(|| "n/a".into());
                let _ = writeln!(s, "| {} | {} | {} | {:.2} / {} | {} | {}× | {} | {} | {} | {:.3} |",
                    r.label, d, delta, r.avg_layers, r.num_layers, speed, opt(r.speedup_theoretical, 2),
                    r.j_per_token.map(|j| format!("{j:.4} ({})", e.source)).unwrap_or_else(|| format!("n/a ({})", e.source)),
                    opt(e.wh_per_1k_queries, 4), per_k(e.gco2e), r.rouge_l_ref.mean);
            }
            let _ = writeln!(s);
            write_memory(&mut s, &members, records);
            for r in rows.iter().filter(|r| r.group == g) {
                let rec = &records[r.record];
                if rec.status != "ok" {
                    let _ = writeln!(s, "- {}: {} ({})", r.label, rec.status, rec.reason.clone().unwrap_or_default());
                }
            }
        }
        Ok(s)
    }
}

/// Why measured speedups differ from L ÷ avg layers: the memory system (bytes read per token
/// against the machine's measured bandwidth) and, per setting, the measured ÷ theoretical ratio
/// split into its parts: the cost of a layer against full depth's, and the shares of exit
/// checks and propagation in the setting's time.
fn write_memory(s: &mut String, members: &[&ReportRow], records: &[CellRecord]) {
    let first = &records[members[0].record];
    let Some(full) = members.iter().map(|r| &records[r.record]).find(|r| r.key.baseline == "full" && r.status == "ok") else { return };
    let per_token = |r: &CellRecord| (r.tokens.saturating_sub(r.samples)).max(1) as f64;
    let layer_cost = |r: &CellRecord| if r.avg_layers > 0.0 { r.time_split.layers_s / per_token(r) / r.avg_layers } else { f64::NAN };
    let bw = |x: Option<f64>| x.map(|v| format!("{v:.1} GB/s")).unwrap_or_else(|| "not measured".into());
    let _ = writeln!(s, "**Memory system.** Measured bandwidth (STREAM-like triad): {} on one thread, {} on all threads.{}",
        bw(first.hardware.mem_bandwidth_gb_s), bw(first.hardware.mem_bandwidth_all_gb_s),
        match (full.bytes_per_token, full.achieved_gb_s) {
            (Some(b), Some(a)) => format!(" Full depth reads {:.2} MB of weights and KV cache per decoded token (counted from the trace, not a hardware counter) and achieves {a:.1} GB/s{}.",
                b / 1e6, first.hardware.mem_bandwidth_gb_s.map(|m| format!(", {:.0}% of one thread's bandwidth", 100.0 * a / m)).unwrap_or_default()),
            _ => String::new(),
        });
    let _ = writeln!(s);
    let full_layer = layer_cost(full);
    let mut lines = Vec::new();
    for r in members {
        let rec = &records[r.record];
        if rec.status != "ok" || matches!(rec.key.baseline.as_str(), "full" | "oracle") {
            continue;
        }
        let total = rec.time_split.layers_s + rec.time_split.exit_checks_s + rec.time_split.propagation_s;
        if total <= 0.0 {
            continue;
        }
        let pct = |x: f64| 100.0 * x / total;
        lines.push(format!("- {}: measured ÷ theoretical {}; a layer costs {:.2}× full depth's per layer; exit checks {:.0}% and propagation {:.0}% of its time{}",
            r.label, opt(r.measured_over_theoretical, 2), layer_cost(rec) / full_layer, pct(rec.time_split.exit_checks_s), pct(rec.time_split.propagation_s),
            rec.bytes_per_token.zip(rec.achieved_gb_s).map(|(b, a)| format!("; {:.2} MB per token at {a:.1} GB/s", b / 1e6)).unwrap_or_default()));
    }
    if !lines.is_empty() {
        let _ = writeln!(s, "Where the measured ÷ theoretical ratio comes from (a layer that costs less than at full depth, e.g. because fewer weights compete for the caches, raises it; exit checks and propagation lower it):\n");
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s);
    }
}

/// With two or more configuration groups of one model, each against the reference group
/// ([`super::compare`]).
fn write_comparison(s: &mut String, records: &[CellRecord]) {
    let cmp = super::compare::compare(records);
    if cmp.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Across runtimes and precisions\n");
    let _ = writeln!(s, "Each group against the reference group, setting by setting. ms/token ratio: this group's decode ms/token ÷ the reference's, \
        per sample (paired), median with a 95% bootstrap interval; below 1 is faster. D(Y, Y_ref) = 1 − ROUGE-L F of this group's outputs against the reference's.\n");
    let mut scopes: Vec<&str> = Vec::new();
    for c in &cmp {
        if !scopes.contains(&c.scope.as_str()) {
            scopes.push(&c.scope);
        }
    }
    for scope in scopes {
        let members: Vec<_> = cmp.iter().filter(|c| c.scope == scope).cloned().collect();
        let (header, rows) = super::compare::table(&members);
        let _ = writeln!(s, "### {scope}\n");
        let _ = writeln!(s, "| {} |", header.join(" | "));
        let _ = writeln!(s, "|{}", "---|".repeat(header.len()));
        for r in rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        let _ = writeln!(s);
    }
}

/// With results from several machines, the hardware side by side ([`super::machines_table`]).
fn write_machines(s: &mut String, records: &[CellRecord]) {
    let Some((header, rows)) = super::machines_table(records) else { return };
    let _ = writeln!(s, "## Hardware\n");
    let _ = writeln!(s, "| {} |", header.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let cells: Vec<String> = r[1..].iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(s, "| `{}` | {} |", r[0], cells.join(" | "));
    }
    let _ = writeln!(s);
}
