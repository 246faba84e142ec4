//! `summary.md`: per configuration group, the headline table: D(Y_early, Y_full),
//! R_early − R_full, average layers, speedup (measured and theoretical) and J/token.

use crate::results::{Baseline, CellRecord, CellStatus};
use super::{Exporter, ReportRow};
use crate::error::Result;
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
        let _ = writeln!(s, "Batch size 1 unless a heading says otherwise (see *Batched decoding*). D(Y_early, Y_full) = 1 − ROUGE-L F of the setting's outputs against full depth's; \
            R_early − R_full = difference of ROUGE-L F against the references (rougeL F, no stemmer, corpus mean, 95% bootstrap \
            interval in brackets). Measured speedup = per sample, full depth's decode ms/token ÷ the setting's, both measured in the same round (cells interleaved in rounds), \
            the median over samples with its 95% bootstrap interval; theoretical = L ÷ average layers. Speedups are decode-only; J/token includes the prefill \
            (each sample's first token is the prefill's), decode J/token does not.\n");
        let _ = writeln!(s, "{}\n", super::INTERVALS_COVER);
        write_machines(&mut s, records);
        write_comparison(&mut s, records);
        let groups = super::group_order(rows);
        for g in groups {
            let members: Vec<&ReportRow> = rows.iter().filter(|r| r.group == g).collect();
            let first = &records[members[0].record];
            let k = &first.key;
            let batch = k.batch_size.map(|b| format!(" · batch {b}")).unwrap_or_default();
            let _ = writeln!(s, "## {} · {} · {} · {} · {} · {}{batch}\n", k.model, k.dataset, k.backend, k.device, super::plural(k.threads, "thread"), k.dtype);
            let h = &first.hardware;
            let _ = writeln!(s, "Machine `{}`: {}, {}. {} samples, energy source: {}.{}\n",
                k.machine, h.summary(), h.os, first.samples, first.energy.source,
                if first.random_weights { " **Random weights: quality figures are meaningless.**" } else { "" });
            if first.energy.estimate {
                let _ = writeln!(s, "**Energy is an estimate**: these joules are modelled from process CPU time × a per-core share of the CPU's TDP, not measured; they add nothing beyond the timings.\n");
            }
            let _ = writeln!(s, "| setting | D(Y_early, Y_full) | R_early − R_full | avg layers | speedup (measured, decode) | speedup (theoretical) | J/token (incl. prefill) | decode J/token | Wh / 1k queries | gCO2e / 1k queries | ROUGE-L vs refs |");
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
            for r in &members {
                let rec = &records[r.record];
                if rec.status != CellStatus::Ok {
                    let _ = writeln!(s, "| {} | {} | | | | | | | | | |", r.label, rec.status);
                    continue;
                }
                let d = r.d_full.map(|x| format!("{:.3} [{:.3}, {:.3}]", x.mean, x.lo, x.hi)).unwrap_or_else(|| "n/a".into());
                let delta = r.rouge_delta.map(|x| format!("{:+.3} [{:+.3}, {:+.3}]", x.mean, x.lo, x.hi)).unwrap_or_else(|| "n/a".into());
                let speed = match super::speedup_text(r) {
                    Some(t) => t,
                    None if rec.key.baseline == Baseline::Oracle => "n/a (analysis)".into(),
                    None => "n/a".into(),
                };
                let e = &rec.energy;
                let per_k = |g: Option<f64>| g.filter(|_| rec.samples > 0).map(|g| format!("{:.4}", g / rec.samples as f64 * 1000.0)).unwrap_or_else(|| "n/a".into());
                let _ = writeln!(s, "| {} | {} | {} | {:.2} / {} | {} | {}× | {} | {} | {} | {} | {:.3} |",
                    r.label, d, delta, r.avg_layers, r.num_layers, speed, opt(r.speedup_theoretical, 2),
                    r.j_per_token.map(|j| format!("{j:.4} ({})", e.source)).unwrap_or_else(|| format!("n/a ({})", e.source)),
                    opt(e.decode_j_per_token, 4), opt(e.wh_per_1k_queries, 4), per_k(e.gco2e), r.rouge_l_ref.mean);
            }
            let _ = writeln!(s);
            write_memory(&mut s, &members, records);
            write_speculative(&mut s, &members, records);
            for r in rows.iter().filter(|r| r.group == g) {
                let rec = &records[r.record];
                if rec.status != CellStatus::Ok {
                    let _ = writeln!(s, "- {}: {} ({})", r.label, rec.status, rec.reason.clone().unwrap_or_default());
                }
            }
        }
        super::batching::write_batching(&mut s, rows, records);
        Ok(s)
    }
}

/// The speculative cells of a group as a draft-layer × draft-tokens table per cache mode: the
/// measured speedup over full depth (paired by round) and the acceptance rate.
fn write_speculative(s: &mut String, members: &[&ReportRow], records: &[CellRecord]) {
    use crate::decode::speculative::DraftCache;
    let spec: Vec<(&ReportRow, &CellRecord)> = members.iter().map(|r| (*r, &records[r.record])).filter(|(_, c)| c.key.baseline == Baseline::Speculative && c.status == CellStatus::Ok).collect();
    // One table per cache mode and draft stop.
    let mut tables: Vec<(DraftCache, Option<crate::decode::speculative::DraftStop>)> = Vec::new();
    for cache in DraftCache::ALL {
        for (_, c) in spec.iter().filter(|(_, c)| c.key.draft_cache == Some(*cache)) {
            if !tables.contains(&(*cache, c.key.draft_stop)) {
                tables.push((*cache, c.key.draft_stop));
            }
        }
    }
    for (cache, stop) in tables {
        let cells: Vec<&(&ReportRow, &CellRecord)> = spec.iter().filter(|(_, c)| c.key.draft_cache == Some(cache) && c.key.draft_stop == stop).collect();
        let mut layers: Vec<usize> = cells.iter().filter_map(|(_, c)| c.key.draft_layer).collect();
        let mut tokens: Vec<usize> = cells.iter().filter_map(|(_, c)| c.key.draft_tokens).collect();
        layers.sort_unstable();
        layers.dedup();
        tokens.sort_unstable();
        tokens.dedup();
        let stop = stop.map(|x| format!(", drafting stops below {x}")).unwrap_or_default();
        let _ = writeln!(s, "**Self-speculative decoding ({cache} cache{stop})**: measured speedup over full depth (decode, paired by round) and acceptance rate (accepted ÷ drafted tokens), by draft layer E and most tokens drafted k; every cell emits full depth's tokens.\n");
        let _ = writeln!(s, "| E \\ k | {} |", tokens.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(tokens.len()));
        for e in &layers {
            let row: Vec<String> = tokens
                .iter()
                .map(|k| {
                    let Some((r, c)) = cells.iter().find(|(_, c)| c.key.draft_layer == Some(*e) && c.key.draft_tokens == Some(*k)) else { return "–".into() };
                    let rate = c.speculation.as_ref().and_then(|x| x.acceptance_rate).map(|a| format!("{:.0}%", a * 100.0)).unwrap_or_else(|| "n/a".into());
                    format!("{} ({rate})", super::speedup_text(r).unwrap_or_else(|| "n/a".into()))
                })
                .collect();
            let _ = writeln!(s, "| {e} | {} |", row.join(" | "));
        }
        let _ = writeln!(s);
    }
}

/// Why measured speedups differ from L ÷ avg layers: the memory system (bytes read per token
/// against the machine's measured bandwidth) and, per setting, the measured ÷ theoretical ratio
/// split into its parts: the cost of a layer against full depth's, and the shares of exit
/// checks and propagation in the setting's time.
fn write_memory(s: &mut String, members: &[&ReportRow], records: &[CellRecord]) {
    let first = &records[members[0].record];
    let Some(full) = members.iter().map(|r| &records[r.record]).find(|r| r.key.baseline == Baseline::Full && r.status == CellStatus::Ok) else { return };
    let bw = |x: Option<f64>| x.map(|v| format!("{v:.1} GB/s")).unwrap_or_else(|| "not measured".into());
    let _ = writeln!(s, "**Memory system.** Measured bandwidth (STREAM-like triad): {} on one thread, {} on all threads.{}",
        bw(first.hardware.mem_bandwidth_gb_s), bw(first.hardware.mem_bandwidth_all_gb_s),
        match (full.bytes_per_token, full.achieved_gb_s) {
            (Some(b), Some(a)) => format!(" Full depth reads {:.2} MB of weights and KV cache per decoded token (counted from the trace, not a hardware counter) and achieves {a:.1} GB/s{}.",
                b / 1e6, full.hardware.bandwidth_at(full.key.threads).map(|m| format!(", {:.0}% of the bandwidth measured at its {}{}", 100.0 * a / m, super::plural(full.key.threads, "thread"), if a > m { " (above the triad: a triad also moves the lines its stores allocate, beyond the 24 bytes an element STREAM counts, while a decode step only reads, and weights smaller than the last-level cache are read from it)" } else { "" })).unwrap_or_default()),
            _ => String::new(),
        } + &full.runtime.as_ref().and_then(|x| x.huge_pages).map(|h| format!(" Weights on 2 MiB pages: {:.0} of {:.0} MiB (transparent huge pages, as /proc/self/smaps counts them; the rest on 4 KiB pages, each a TLB miss when streamed).", h.backed_mib, h.weights_mib)).unwrap_or_default());
    let _ = writeln!(s);
    let lines: Vec<String> = members
        .iter()
        .filter(|r| {
            let rec = &records[r.record];
            rec.status == CellStatus::Ok && !matches!(rec.key.baseline, Baseline::Full | Baseline::Oracle)
        })
        .filter_map(|r| breakdown(r, &records[r.record], full))
        .collect();
    if !lines.is_empty() {
        let _ = writeln!(s, "Where the measured ÷ theoretical ratio comes from. The theoretical speedup assumes every layer costs what it costs at full depth and exit checks and \
            propagation cost nothing; per decoded token (first repetition's time split; per-layer times {}):\n", full.layer_us_source.as_deref().map(|x| format!("from the {x}")).unwrap_or_else(|| "not measured: full depth's mean layer".into()));
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s);
    }
}

/// One setting's measured ÷ theoretical ratio split into its parts, per decoded token: the
/// layers it ran at full depth's per-layer cost against what they took (the per-layer cost
/// change), its exit checks against full depth's one head, and propagation.
fn breakdown(r: &ReportRow, rec: &CellRecord, full: &CellRecord) -> Option<String> {
    let decoded = |x: &CellRecord| x.exit_histogram.iter().sum::<u64>() as f64;
    let (n, nf) = (decoded(rec), decoded(full));
    if n == 0.0 || nf == 0.0 {
        return None;
    }
    let bytes = rec.bytes_per_token.zip(rec.achieved_gb_s).map(|(b, a)| format!("; {:.2} MB read per token at {a:.1} GB/s", b / 1e6)).unwrap_or_default();
    if let Some(sp) = &rec.speculation {
        // The pass's parts per decoded token, against full depth's whole token.
        let t = &sp.totals;
        let ms = |x: f64| x * 1e3 / n;
        let full_total = (full.time_split.layers_s + full.time_split.exit_checks_s) * 1e3 / nf;
        // In a batch: how acceptance varies between rows, and what padding would have cost.
        let rows = if rec.key.batch() > 1 && !sp.sample_acceptance.is_empty() {
            let mut a = sp.sample_acceptance.clone();
            a.sort_by(f64::total_cmp);
            let pct = |x: f64| format!("{:.0}%", x * 100.0);
            // Reads against arithmetic: what the rows sharing each layer's weights saves, and
            // what the drafts and rejected positions add.
            let per = |x: &CellRecord| x.batch.as_ref().and_then(|b| b.layer_reads_per_token.zip(b.layer_positions_per_token));
            let work = match (per(rec), per(full)) {
                (Some((r, p)), Some((fr, fp))) => format!("; per decoded token it reads {r:.2} layers' weights (full depth {fr:.2}) and runs {p:.2} layer-positions of arithmetic (full depth {fp:.2})"),
                _ => String::new(),
            };
            format!("; acceptance per row {} (lowest), {} (median), {} (highest) over {} rows{}{work}", pct(a[0]), pct(crate::metrics::stats::median(&a)), pct(a[a.len() - 1]), a.len(),
                rec.batch.as_ref().and_then(|b| b.padding_waste).map(|w| format!("; a padded verification would run {:.0}% more positions than the rows' own segments", w * 100.0)).unwrap_or_default())
        } else {
            String::new()
        };
        return Some(format!(
            "- {}: measured ÷ theoretical (weight reads) {}. Per decoded token: draft {:.3} ms, verify {:.3} ms, rollback {:.4} ms against full depth's {full_total:.3} ms; \
             {:.2} tokens per verification pass, {} of drafts accepted{rows}{bytes}.",
            r.label,
            opt(r.measured_over_theoretical, 2),
            ms(t.draft_s),
            ms(t.verify_s),
            ms(t.rollback_s),
            sp.tokens_per_verify.unwrap_or(0.0),
            sp.acceptance_rate.map(|a| format!("{:.0}%", a * 100.0)).unwrap_or_else(|| "none".into()),
        ));
    }
    let l = rec.num_layers;
    // Share of decoded tokens that ran layer i: those exiting at i or later (static: all up to its layer).
    let ran = |i: usize| rec.exit_histogram[i..].iter().sum::<u64>() as f64 / n;
    let full_layer_ms = |i: usize| match full.layer_us.get(i) {
        Some(&us) if full.layer_us.len() == l => us / 1e3,
        _ => full.time_split.layers_s * 1e3 / nf / l as f64,
    };
    let at_full_cost: f64 = (0..l).map(|i| ran(i) * full_layer_ms(i)).sum();
    let ms = |x: f64, k: f64| x * 1e3 / k;
    let (layers, checks, prop) = (ms(rec.time_split.layers_s, n), ms(rec.time_split.exit_checks_s, n), ms(rec.time_split.propagation_s, n));
    let full_head = ms(full.time_split.exit_checks_s, nf);
    let total = layers + checks + prop;
    let full_total = ms(full.time_split.layers_s + full.time_split.exit_checks_s, nf);
    Some(format!(
        "- {}: measured ÷ theoretical {}. Its layers would take {at_full_cost:.3} ms at full depth's per-layer cost and took {layers:.3} ms (per-layer change {:+.3} ms); \
         exit checks {checks:.3} ms (full depth's head {full_head:.3} ms); propagation {prop:.3} ms; {total:.3} ms in all against full depth's {full_total:.3} ms{bytes}.",
        r.label,
        opt(r.measured_over_theoretical, 2),
        layers - at_full_cost,
    ))
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
