//! A cell's record from its rounds: outputs and quality from the first repetition, decode
//! ms/token per repetition, the paired speedup against full depth's rounds, per-layer times,
//! bytes per token and energy.

use crate::results::record::{BatchSummary, SpeculationSummary};
use super::energy::{median_energy, repetition_energy};
use super::fingerprint::{CellMode, GroupCtx};
use crate::decode::speculative::SpeculationStats;
use super::rounds::{RoundRecord, SampleRun};
use crate::error::Result;
use crate::exit::ExitMode;
use crate::metrics::rouge::{corpus, Rouge};
use crate::metrics::stats::{cluster_bootstrap_median, median};
use crate::model::ModelFiles;
use crate::results::record::{CellKey, CellRecord, CellStatus, PairedSpeedup, SampleOutput, Stats, TimeSplit, TraceToken};
use std::collections::BTreeMap;

/// Resamples of the speedup's bootstrap interval.
const RESAMPLES: usize = 2000;

/// Everything a record is assembled from beyond the group's context.
pub struct CellRounds<'a> {
    /// The cell.
    pub cell: CellMode,
    /// Its key.
    pub key: CellKey,
    /// Its rounds in round order.
    pub rounds: Vec<&'a RoundRecord>,
    /// Full depth's rounds of the same group and run (None for full depth itself).
    pub full: Option<Vec<&'a RoundRecord>>,
    /// Joules per query of the prefill-only window at this cell's prefill depth, where measured.
    pub prefill_j_per_query: Option<f64>,
    /// Per-layer seconds and runs from a profiling pass (GPUs), when one ran.
    pub profile: Option<(Vec<f64>, Vec<u64>)>,
    /// Seconds of warm-up generation.
    pub warmup_s: f64,
    /// Samples per round.
    pub round_samples: usize,
}

/// Assembles the cell's record, with warnings for the user (a slow first repetition, outliers).
pub fn assemble(ctx: &GroupCtx, m: &ModelFiles, layers: usize, c: CellRounds) -> Result<(CellRecord, Vec<String>)> {
    let assembling = std::time::Instant::now();
    let plan = ctx.plan;
    let mut rec = ctx.base_record(c.key, layers, CellStatus::Ok, None);
    let mut reps: BTreeMap<usize, Vec<&RoundRecord>> = BTreeMap::new();
    for r in &c.rounds {
        reps.entry(r.repetition).or_default().push(r);
    }
    let mut first: Vec<&SampleRun> = reps.get(&0).map(|v| v.iter().flat_map(|r| r.samples.iter()).collect()).unwrap_or_default();
    first.sort_by_key(|s| s.sample);

    // Decode ms/token and tokens/s per repetition; seconds of one pass per repetition.
    let (mut ms_tok, mut tok_s, mut dur, mut energies) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rounds in reps.values() {
        let (mut decode_s, mut decoded) = (0.0, 0usize);
        for r in rounds {
            for s in &r.samples {
                decode_s += s.decode_s;
                decoded += s.decode_tokens * r.passes.max(1);
            }
        }
        if decoded > 0 && decode_s > 0.0 {
            ms_tok.push(decode_s * 1e3 / decoded as f64);
            tok_s.push(decoded as f64 / decode_s);
        }
        dur.push(rounds.iter().map(|r| r.energy.duration_s / r.passes.max(1) as f64).sum::<f64>());
        energies.push(repetition_energy(rounds, c.prefill_j_per_query, &plan.energy));
    }

    let warnings: Vec<String> = [slow_first_warning(&ms_tok), outlier_warning(&ms_tok)].into_iter().flatten().collect();
    let rouge = Rouge::new(false);
    let mut hist = vec![0u64; layers];
    let mut split = TimeSplit::default();
    let mut outputs = Vec::with_capacity(first.len());
    let mut scores = Vec::with_capacity(first.len());
    for s in &first {
        let ex = &plan.examples[s.sample];
        // The prefill's token had no exit decision; the histogram, like ms/token, counts decoded tokens.
        for &l in s.exits.iter().skip(1) {
            hist[l - 1] += 1;
        }
        split.layers_s += s.split[0];
        split.exit_checks_s += s.split[1];
        split.propagation_s += s.split[2];
        let text = m.tokenizer.decode(&s.ids)?.trim().to_string();
        let score = rouge.score(&text, &ex.reference);
        scores.push(score);
        let key_facts = ex.facts.as_ref().map(|f| crate::data::synth::facts_in(&text, f).all());
        let trace = if !s.confidences.is_empty() {
            let pieces = m.tokenizer.pieces(&s.ids)?;
            // Speculative cells: the prefill's token, then each pass's accepted drafts and own token.
            let drafted: Vec<Option<bool>> = match &s.speculation {
                Some(x) => std::iter::once(None).chain(crate::decode::speculative::Pass::accepted_flags(&x.passes).into_iter().map(Some)).collect(),
                None => vec![],
            };
            let flag = |i: usize| drafted.get(i).copied().flatten();
            Some(s.ids.iter().zip(&s.exits).zip(&s.confidences).zip(pieces).enumerate().map(|(i, (((&id, &exit_layer), &confidence), text))| TraceToken { id, text, exit_layer, confidence, accepted_draft: flag(i) }).collect())
        } else {
            None
        };
        let decoded = s.exits.len().saturating_sub(1);
        outputs.push(SampleOutput {
            id: ex.id.clone(),
            text,
            tokens: s.ids.len(),
            avg_layers: if decoded > 0 { s.exits.iter().skip(1).sum::<usize>() as f64 / decoded as f64 } else { 0.0 },
            rouge_l: score.rougeL.fmeasure,
            key_facts,
            prefill_s: s.prefill_s,
            decode_s: s.decode_s / c.rounds.iter().find(|r| r.repetition == 0 && r.samples.iter().any(|x| x.sample == s.sample)).map_or(1, |r| r.passes.max(1)) as f64,
            trace,
            token_ids: s.ids.clone(),
        });
    }
    rec.samples = first.len();
    rec.tokens = first.iter().map(|s| s.ids.len()).sum();
    rec.avg_layers = crate::results::record::mean_exit_layer(&hist);
    rec.exit_histogram = hist;
    rec.prefill_s = Stats::of(&first.iter().map(|s| s.prefill_s).collect::<Vec<_>>());
    rec.ms_per_token = Stats::of(&ms_tok);
    rec.tokens_per_s = Stats::of(&tok_s);
    rec.duration_s = Stats::of(&dur);
    rec.time_split = split;
    rec.energy = median_energy(energies);
    rec.peak_mem_mb = c.rounds.iter().map(|r| r.peak_mem_mb).fold(0.0, f64::max);
    let gpu = c.rounds.iter().filter_map(|r| r.peak_device_mem.clone()).max_by(|a, b| a.0.total_cmp(&b.0));
    (rec.peak_device_mem_mb, rec.device_mem_scope) = (gpu.as_ref().map(|g| g.0), gpu.map(|g| g.1));
    rec.rouge = corpus(&scores, plan.seed);
    let element = if rec.key.dtype == crate::model::Precision::F32 { 4.0 } else { 2.0 };
    // A speculative token's reads depend on its pass (drafts, verification), a batched one's on
    // which rows shared its step's weight reads.
    rec.bytes_per_token = match (&c.cell.speculation, &c.cell.batch) {
        (Some(spec), None) => crate::decode_bytes::speculative_bytes_per_token(spec, &m.config, element, first.iter().map(|s| (s.prompt_tokens, s.speculation.as_ref().map_or(&[][..], |x| x.passes.as_slice())))),
        (None, None) => crate::decode_bytes::bytes_per_token(&c.cell.mode, &m.config, element, first.iter().map(|s| (s.prompt_tokens, s.exits.as_slice()))),
        // A batched token's share of its steps' reads: each weight once per step where the
        // backend shares reads across rows, the rows' own caches, the embedded positions (a
        // speculative batch's step is a pass: its draft steps and its verification).
        (_, Some(_)) => batch_bytes_per_token(&c.rounds, &m.config, element),
    };
    rec.speculation = c.cell.speculation.map(|_| {
        let mut t = crate::decode::speculative::SpeculationStats::default();
        for s in first.iter().filter_map(|s| s.speculation.as_ref()) {
            (t.drafted, t.accepted, t.verifies) = (t.drafted + s.drafted, t.accepted + s.accepted, t.verifies + s.verifies);
            (t.draft_s, t.verify_s, t.rollback_s) = (t.draft_s + s.draft_s, t.verify_s + s.verify_s, t.rollback_s + s.rollback_s);
        }
        let decoded: usize = first.iter().map(|s| s.decode_tokens).sum();
        SpeculationSummary {
            acceptance_rate: t.acceptance_rate(),
            tokens_per_verify: (t.verifies > 0).then(|| decoded as f64 / t.verifies as f64),
            sample_acceptance: first.iter().filter_map(|s| s.speculation.as_ref().and_then(SpeculationStats::acceptance_rate)).collect(),
            totals: t,
        }
    });
    rec.batch = c.cell.batch.map(|_| batch_summary(&c.rounds, &first));
    rec.achieved_gb_s = rec.bytes_per_token.zip((rec.ms_per_token.n > 0).then_some(rec.ms_per_token.median)).filter(|(_, ms)| *ms > 0.0).map(|(b, ms)| b / (ms / 1e3) / 1e9);
    let facts: Vec<f64> = outputs.iter().filter_map(|o| o.key_facts).map(|b| if b { 1.0 } else { 0.0 }).collect();
    rec.key_facts_exact = (!facts.is_empty()).then(|| crate::metrics::stats::mean(&facts));
    rec.outputs = outputs;
    if !matches!(c.cell.mode, ExitMode::Oracle { .. }) {
        rec.speedup = c.full.as_ref().and_then(|full| paired_speedup(full, &c.rounds, plan.seed));
    }
    (rec.layer_us, rec.layer_us_source) = match &c.profile {
        Some((s, n)) => (layer_means(s, n), Some("profiling pass".into())),
        None => {
            let (mut s, mut n) = (vec![0.0; layers], vec![0u64; layers]);
            for r in c.rounds.iter().filter(|r| r.layer_s.len() == layers) {
                r.layer_s.iter().zip(&r.layer_runs).enumerate().for_each(|(i, (x, k))| {
                    s[i] += x;
                    n[i] += k;
                });
            }
            if n.iter().any(|&k| k > 0) { (layer_means(&s, &n), Some("timed rounds".into())) } else { (Vec::new(), None) }
        }
    };
    rec.rounds = c.rounds.len();
    rec.round_samples = c.round_samples;
    rec.generate_s = c.warmup_s + c.rounds.iter().map(|r| r.generate_s).sum::<f64>();
    rec.bookkeeping_s = c.rounds.iter().map(|r| (r.wall_s - r.generate_s).max(0.0)).sum::<f64>() + assembling.elapsed().as_secs_f64();
    Ok((rec, warnings))
}

/// A batched cell's figures from its first repetition's rounds.
/// Bytes per decoded token of a batched cell's first repetition: its steps' counted reads
/// (`BatchStep::reads`, `attended`) in bytes, over the tokens those steps decoded; None when
/// older records lack the counts.
fn batch_bytes_per_token(rounds: &[&RoundRecord], cfg: &crate::model::LlamaConfig, element: f64) -> Option<f64> {
    let b = crate::decode_bytes::ModelBytes::of(cfg, element);
    let (mut total, mut tokens) = (0.0, 0usize);
    for t in rounds.iter().filter(|r| r.repetition == 0).filter_map(|r| r.batch.as_ref()) {
        let w = t.reads;
        if w.layers == 0 {
            return None;
        }
        // Older records count neither tokens nor embedded positions: one of each per row step.
        let or_rows = |x: u64| if x > 0 { x as usize } else { t.row_steps };
        total += crate::decode_bytes::batch_step_bytes(&b, or_rows(t.embedded), &w, t.attended as usize);
        tokens += or_rows(t.tokens);
    }
    (tokens > 0).then(|| total / tokens as f64)
}

fn batch_summary(rounds: &[&RoundRecord], first: &[&SampleRun]) -> BatchSummary {
    let mut t = super::rounds::BatchTally::default();
    for b in rounds.iter().filter(|r| r.repetition == 0).filter_map(|r| r.batch.as_ref()) {
        t.merge(b);
    }
    // Older records count no tokens: one per row step.
    let tokens = if t.tokens > 0 { t.tokens } else { t.row_steps as u64 };
    let latency: Vec<f64> = first.iter().filter(|s| s.decode_tokens > 0).filter_map(|s| s.latency_s.map(|l| l * 1e3 / s.decode_tokens as f64)).collect();
    BatchSummary {
        shares_weight_reads: t.shares_weight_reads,
        steps: t.steps,
        mean_rows: if t.steps > 0 { t.row_steps as f64 / t.steps as f64 } else { 0.0 },
        row_layers: t.row_layers,
        wasted_row_layers: t.wasted_row_layers,
        held_row_tokens: t.held_row_tokens,
        gather_share: if t.decode_s > 0.0 { t.gather_s / t.decode_s } else { 0.0 },
        latency_ms_per_token: if latency.is_empty() { 0.0 } else { median(&latency) },
        latency_ms_per_token_p90: if latency.is_empty() { 0.0 } else { crate::metrics::stats::quantile(&latency, 0.9) },
        padding_waste: (t.verified_positions > 0).then(|| t.padded_positions as f64 / t.verified_positions as f64 - 1.0),
        layer_reads_per_token: (t.reads.layers > 0 && tokens > 0).then(|| t.reads.layers as f64 / tokens as f64),
        layer_positions_per_token: (t.layer_positions > 0 && tokens > 0).then(|| t.layer_positions as f64 / tokens as f64),
    }
}

/// A hyperfine-style warning when the first repetition is much slower than the rest.
fn slow_first_warning(ms_tok: &[f64]) -> Option<String> {
    if ms_tok.len() < 3 {
        return None;
    }
    let rest = crate::metrics::stats::median(&ms_tok[1..]);
    (ms_tok[0] > 1.5 * rest).then(|| {
        format!("the first repetition took {:.3} ms/token, {:.1}× the median of the others: caches were cold, consider --warmup", ms_tok[0], ms_tok[0] / rest)
    })
}

/// A warning when some repetitions fall outside Tukey's fences (1.5 IQR), as hyperfine warns of
/// statistical outliers (another process, a frequency change).
fn outlier_warning(ms_tok: &[f64]) -> Option<String> {
    if ms_tok.len() < 4 {
        return None;
    }
    let q1 = crate::metrics::stats::quantile(ms_tok, 0.25);
    let q3 = crate::metrics::stats::quantile(ms_tok, 0.75);
    let (lo, hi) = (q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1));
    let n = ms_tok.iter().filter(|&&x| x < lo || x > hi).count();
    (n > 0).then(|| format!("{n} of {} repetitions are statistical outliers (Tukey fences); other programs may have interfered", ms_tok.len()))
}



/// Mean µs per layer index (0 where a layer never ran).
fn layer_means(s: &[f64], n: &[u64]) -> Vec<f64> {
    s.iter().zip(n).map(|(x, &k)| if k > 0 { x * 1e6 / k as f64 } else { 0.0 }).collect()
}

/// Per sample and repetition, full depth's decode ms/token ÷ the cell's, both from the same
/// round; the median with a 95% bootstrap interval that resamples whole rounds. Pairs where
/// either side decoded no token are left out and counted. None without any pair.
pub fn paired_speedup(full: &[&RoundRecord], cell: &[&RoundRecord], seed: u64) -> Option<PairedSpeedup> {
    let (mut ratios, mut rounds) = (Vec::new(), Vec::new());
    let mut excluded = 0;
    for r in cell {
        let Some(f) = full.iter().find(|f| f.round == r.round) else {
            excluded += r.samples.len();
            continue;
        };
        for s in &r.samples {
            let base = f.samples.iter().find(|x| x.sample == s.sample).and_then(|x| x.ms_per_token(f.passes));
            match (base, s.ms_per_token(r.passes)) {
                (Some(b), Some(c)) => {
                    ratios.push(b / c);
                    rounds.push(r.round);
                }
                _ => excluded += 1,
            }
        }
    }
    if ratios.is_empty() {
        return None;
    }
    let i = cluster_bootstrap_median(&ratios, &rounds, RESAMPLES, seed);
    Some(PairedSpeedup { measured: median(&ratios), lo: i.lo, hi: i.hi, pairs: ratios.len(), excluded, ratios, rounds })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::StopReason;
    use crate::sweep::rounds::WindowJoules;

    fn round(index: usize, samples: &[(usize, usize, f64)]) -> RoundRecord {
        RoundRecord {
            cell_id: "c".into(),
            round: index,
            repetition: 0,
            samples: samples
                .iter()
                .map(|&(sample, decoded, decode_s)| SampleRun {
                    sample,
                    prompt_tokens: 3,
                    ids: vec![5; decoded + 1],
                    exits: vec![2; decoded + 1],
                    confidences: vec![],
                    stop: StopReason::MaxNewTokens,
                    prefill_s: 0.0,
                    decode_s,
                    decode_tokens: decoded,
                    split: [0.0; 3],
                    speculation: None,
                    gather_s: 0.0,
                    latency_s: None,
                })
                .collect(),
            passes: 1,
            generate_s: 0.0,
            wall_s: 0.0,
            energy: WindowJoules { source: crate::meter::Sources::none(), ..Default::default() },
            layer_s: vec![],
            layer_runs: vec![],
            peak_mem_mb: 0.0,
            peak_device_mem: None,
            batch: None,
        }
    }

    #[test]
    fn the_paired_speedup_is_the_median_of_same_round_ratios() {
        // Full depth: 10 tokens in 0.02 s (2 ms/token) for samples 0 and 1 in round 0, sample 2
        // at 4 ms/token in round 1 (the machine slowed down), sample 3 decodes nothing.
        let full = [round(0, &[(0, 10, 0.02), (1, 10, 0.02)]), round(1, &[(2, 10, 0.04), (3, 0, 0.0)])];
        // The cell: 1 ms/token, 0.5 ms/token in round 0; 2 ms/token in round 1 (slowed alike).
        let cell = [round(0, &[(0, 10, 0.01), (1, 10, 0.005)]), round(1, &[(2, 10, 0.02), (3, 5, 0.01)])];
        let s = paired_speedup(&full.iter().collect::<Vec<_>>(), &cell.iter().collect::<Vec<_>>(), 0).unwrap();
        // Ratios 2, 4, 2: median 2; sample 3 left out and counted.
        assert_eq!((s.ratios.clone(), s.rounds.clone()), (vec![2.0, 4.0, 2.0], vec![0, 0, 1]));
        assert_eq!((s.measured, s.pairs, s.excluded), (2.0, 3, 1));
        // Rounds resampled whole: {2, 4} twice (median 3), {2} twice (2), or both (2): [2, 3].
        assert_eq!((s.lo, s.hi), (2.0, 3.0), "{s:?}");
        assert!(paired_speedup(&[], &cell.iter().collect::<Vec<_>>(), 0).is_none());
    }
}
