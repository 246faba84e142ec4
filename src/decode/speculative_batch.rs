//! Self-speculative decoding of several rows at once, on the batched seam (no anchor drafts for
//! a batch: LayerSkip and transformers both refuse batch size > 1). Every pass, each row still
//! going drafts up to k tokens with layers 1..E (the rows that are still drafting share each
//! draft step's calls), then one verification call per layer runs every row's segment of
//! positions, each of its own length: per-row offsets, no padding. Each row accepts its own
//! prefix, takes the full model's next token and rolls its own caches back to its accepted
//! length. Each row's prefill runs alone and every later position's products run as the row
//! alone runs them (candle: the few-row kernel in blocks, however many rows), so a row's logits,
//! tokens and draws (its own generator) are its batch-1 ones, bit for bit, while every segment
//! has at most 16 positions (k ≤ 15); ONNX Runtime runs rows one by one.
//!
//! What batching costs here is recorded per pass ([`BatchPass`]): rows that stop drafting early
//! wait for the longest drafter, and a padded implementation would run every segment at the
//! longest segment's length (`padded_positions`), which this one does not.

use super::batch::{apply_head_rows, confidence_rows, rows_going, run_layers, BatchStep};
use super::speculative::{verdict, AcceptanceRule, Dist, DraftCache, FullOut, Pass, Speculation, SpeculationStats, SpeculativeGeneration};
use super::{check_prompt, select, GenerateOptions, Generation, StopReason, StepWork, TokenTrace};
use crate::backend::SpeculateRows;
use crate::error::{Error, Result};
use crate::exit::ExitMode;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Instant;

/// One verification pass of a batch and the draft steps before it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchPass {
    /// Rows in the pass.
    pub rows: usize,
    /// Draft steps (each runs layers 1..E for the rows still drafting).
    pub draft_steps: usize,
    /// Tokens drafted, summed over rows.
    pub drafted: usize,
    /// Drafts accepted, summed over rows.
    pub accepted: usize,
    /// Tokens emitted, summed over rows.
    pub emitted: usize,
    /// Positions the verification ran, summed over rows (each row's drafts and its last token).
    pub verified_positions: usize,
    /// Positions a padded verification would run: rows × the longest segment.
    pub padded_positions: usize,
    /// Row draft steps: the draft steps each row took part in, summed over rows.
    pub row_draft_steps: usize,
    /// Positions embedded: one per row draft step, and the verification's (each row's last
    /// token when the cache is shared, its whole segment when separate).
    pub embedded: usize,
    /// Positions run through decoder layers, summed over layers: E per row draft step, then
    /// the verification's (shared: each row's last token through layers 1..E and its segment
    /// through E+1..L; separate: every segment through all L).
    pub layer_positions: usize,
    /// Seconds drafting.
    pub draft_s: f64,
    /// Seconds verifying (the layers and the heads over every position).
    pub verify_s: f64,
    /// Seconds rolling caches back.
    pub rollback_s: f64,
    /// Weight reads of the pass's calls (as `BatchStep::reads`).
    pub reads: StepWork,
    /// Cached positions attended (as `BatchStep::attended`).
    pub attended: usize,
}

impl BatchPass {
    /// The pass's seconds.
    pub fn total_s(&self) -> f64 {
        self.draft_s + self.verify_s + self.rollback_s
    }

    /// Padded positions a padded verification would waste: padded ÷ verified − 1.
    pub fn padding_waste(&self) -> f64 {
        if self.verified_positions == 0 { 0.0 } else { self.padded_positions as f64 / self.verified_positions as f64 - 1.0 }
    }

    /// The pass as one step of a batch (what sweeps tally for every batched cell): its seconds
    /// as layer time (the speculative split is in each row's [`SpeculationStats`]), its tokens,
    /// reads and positions; `layers` L, draft layer `e`.
    pub fn as_step(&self, layers: usize, e: usize) -> BatchStep {
        BatchStep {
            rows: self.rows,
            layers_s: self.total_s(),
            row_layers: self.row_draft_steps * e + self.rows * layers,
            reads: self.reads,
            attended: self.attended,
            tokens: self.emitted,
            embedded: self.embedded,
            verified_positions: self.verified_positions,
            padded_positions: self.padded_positions,
            layer_positions: self.layer_positions,
            ..Default::default()
        }
    }
}

/// A batch decoded speculatively.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeculativeBatch {
    /// Each row's generation in prompt order: its tokens, accepted drafts and statistics (its
    /// passes; its seconds are its share of each pass it took part in, the pass's seconds
    /// divided among its rows), and each token's `layers_s` the row's latency per token.
    pub rows: Vec<SpeculativeGeneration>,
    /// Seconds of the prefill (each row's alone, one after another).
    pub prefill_s: f64,
    /// Every pass, in order.
    pub passes: Vec<BatchPass>,
    /// Whether the backend read each weight once for all rows.
    pub shares_weight_reads: bool,
}

impl SpeculativeBatch {
    /// Decode seconds (the passes).
    pub fn decode_s(&self) -> f64 {
        self.passes.iter().map(BatchPass::total_s).sum()
    }

    /// Tokens the passes emitted.
    pub fn decoded_tokens(&self) -> usize {
        self.passes.iter().map(|p| p.emitted).sum()
    }

    /// Padded positions over verified positions, minus one, over every pass.
    pub fn padding_waste(&self) -> f64 {
        let (v, p) = self.passes.iter().fold((0, 0), |(v, p), x| (v + x.verified_positions, p + x.padded_positions));
        if v == 0 { 0.0 } else { p as f64 / v as f64 - 1.0 }
    }
}

/// A row's drafts in one pass.
struct RowDraft {
    /// Cached positions before the pass.
    base: usize,
    /// The most tokens it may draft.
    k: usize,
    /// Its last token so far (x0, then each draft).
    tok: u32,
    drafts: Vec<u32>,
    qs: Vec<Dist>,
    /// (draft step, segment) of each drafted token's layer-E state.
    saved_at: Vec<(usize, usize)>,
    drafting: bool,
}

/// Decodes `prompts` together with self-speculative decoding (`opts.mode` must be full depth).
/// Row caches are reset first; at the end each row's caches hold the positions before its last
/// token, as after [`super::batch::generate_batch`].
pub fn generate_speculative_batch<B: SpeculateRows>(backend: &mut B, prompts: &[Vec<u32>], opts: &GenerateOptions, spec: &Speculation) -> Result<SpeculativeBatch> {
    generate_speculative_batch_with(backend, prompts, opts, spec, AcceptanceRule::Exact)
}

/// [`generate_speculative_batch`] under a chosen acceptance rule.
pub fn generate_speculative_batch_with<B: SpeculateRows>(backend: &mut B, prompts: &[Vec<u32>], opts: &GenerateOptions, spec: &Speculation, rule: AcceptanceRule) -> Result<SpeculativeBatch> {
    let layers = backend.num_layers();
    spec.validate(layers, backend.has_classifier())?;
    if opts.mode != ExitMode::Full {
        return Err(Error::setting("--decode", "speculative decoding replaces the exit policy: it runs with full depth's output only"));
    }
    opts.sampling.validate()?;
    if prompts.is_empty() {
        return Err(Error::setting("--batch-size", "a batch needs at least one prompt"));
    }
    for p in prompts {
        check_prompt(backend, p)?;
    }
    let s = &opts.sampling;
    let sampling = s.temperature != 0.0;
    let e = spec.draft_layer;
    let eos = |t: u32| opts.eos_ids.contains(&t);
    let n = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    backend.start_rows(n, (longest + opts.max_new_tokens + spec.draft_tokens + 1).min(backend.max_positions()))?;
    let shared = backend.shares_weight_reads();
    let mut rngs: Vec<StdRng> = (0..n).map(|r| StdRng::seed_from_u64(s.seed.wrapping_add(r as u64))).collect();

    let start = Instant::now();
    let mut scratch = BatchStep::default();
    // Each row's prefill runs alone: the products a prompt runs alone, so that with the passes
    // below (every position's products as alone, however many rows) a row's logits are its
    // batch-1 logits bit for bit. A prefill is bound by arithmetic: rows together would save
    // little. Each row's first token as plain decoding picks it (the same draw when sampling).
    let mut firsts: Vec<(u32, Option<f32>)> = Vec::with_capacity(n);
    for (r, p) in prompts.iter().enumerate() {
        let mut h = backend.embed_rows(&[p.as_slice()])?;
        for l in 1..=layers {
            h = backend.layer_rows(l, &[r], &h)?;
        }
        firsts.push(if sampling {
            let logits = backend.exit_logits_rows(&h)?;
            (select(&logits[0], s, &mut rngs[r]), None)
        } else {
            let f = backend.head_rows(&h)?[0];
            (f.argmax, Some(f.logit_gap))
        });
    }
    backend.sync()?;
    let prefill_s = start.elapsed().as_secs_f64();
    let trace = |id: u32, gap: Option<f32>| TokenTrace { id, exit_layer: layers, confidence: None, layers_s: 0.0, exit_checks_s: 0.0, propagation_s: 0.0, gather_s: 0.0, top2_gap: gap, min_margin: None };
    let mut tokens: Vec<Vec<TokenTrace>> = firsts.iter().map(|&(id, gap)| vec![trace(id, gap)]).collect();
    let mut accepted: Vec<Vec<bool>> = vec![vec![false]; n];
    let mut stats: Vec<SpeculationStats> = vec![SpeculationStats::default(); n];
    let mut stops: Vec<Option<StopReason>> = vec![None; n];
    let mut passes = Vec::new();

    loop {
        let going = rows_going(&mut stops, &tokens, prompts, opts, backend.max_positions());
        if going.is_empty() {
            break;
        }
        let mut pass = BatchPass { rows: going.len(), ..Default::default() };
        let mut rows: Vec<RowDraft> = going
            .iter()
            .map(|&r| {
                let base = backend.row_cache_len(r, 1);
                // Drafts that can still be emitted and whose positions fit (x0 and the drafts
                // each take one), as at batch size 1.
                let room = (opts.max_new_tokens - tokens[r].len()).min(backend.max_positions() - base - 1);
                let k = spec.draft_tokens.min(room.saturating_sub(1));
                let tok = tokens[r].last().expect("nonempty").id;
                RowDraft { base, k, tok, drafts: Vec::new(), qs: Vec::new(), saved_at: Vec::new(), drafting: k > 0 }
            })
            .collect();

        // Draft: each step runs the rows still drafting through layers 1..E and the exit head.
        let t = Instant::now();
        let mut saved: Vec<B::Rows> = Vec::new();
        loop {
            let drafting: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].drafting).collect();
            if drafting.is_empty() {
                break;
            }
            let globals: Vec<usize> = drafting.iter().map(|&i| going[i]).collect();
            let toks: Vec<[u32; 1]> = drafting.iter().map(|&i| [rows[i].tok]).collect();
            let h = backend.embed_rows(&toks.iter().map(|t| &t[..]).collect::<Vec<_>>())?;
            let (prev, cur) = run_layers(backend, &globals, &h, 1..=e, &mut scratch)?;
            let (confident, heads) = match spec.stop {
                None => (vec![true; drafting.len()], None),
                Some(stop) => {
                    let (c, heads) = confidence_rows(backend, stop.measure, e, &prev, &cur, s, &mut scratch)?;
                    (c.iter().map(|&c| c as f64 >= stop.threshold).collect(), heads)
                }
            };
            let heads = match heads {
                Some(x) if !sampling || x.iter().all(|o| o.logits.is_some()) => x,
                _ => apply_head_rows(backend, &cur, s, &mut scratch)?,
            };
            for (j, (&i, head)) in drafting.iter().zip(heads).enumerate() {
                let row = &mut rows[i];
                let token = match head.logits {
                    None => head.summary.argmax,
                    Some(logits) => {
                        let q = Dist::of(&logits, s);
                        let d = q.draw(&mut rngs[going[i]]);
                        row.qs.push(q);
                        d
                    }
                };
                row.tok = token;
                row.drafts.push(token);
                row.saved_at.push((saved.len(), j));
                row.drafting = row.drafts.len() < row.k && confident[j] && !eos(token);
            }
            saved.push(cur);
            pass.draft_steps += 1;
            pass.row_draft_steps += drafting.len();
            pass.embedded += drafting.len();
        }
        backend.sync()?;
        pass.draft_s = t.elapsed().as_secs_f64();

        // Verify every row's [x0, d1, …] with the full model: one call per layer for all rows.
        let t = Instant::now();
        let segment_lens: Vec<usize> = rows.iter().map(|r| r.drafts.len() + 1).collect();
        pass.verified_positions = segment_lens.iter().sum();
        pass.padded_positions = rows.len() * segment_lens.iter().copied().max().unwrap_or(0);
        pass.embedded += match spec.cache {
            DraftCache::Shared => rows.len(),
            DraftCache::Separate => pass.verified_positions,
        };
        pass.layer_positions = pass.row_draft_steps * e
            + match spec.cache {
                DraftCache::Shared => rows.len() * e + pass.verified_positions * (layers - e),
                DraftCache::Separate => pass.verified_positions * layers,
            };
        let verified = match spec.cache {
            DraftCache::Shared => {
                // Each row's last token (its last draft, or x0 when it drafted nothing) has not
                // run layers 1..E yet; then each row's segment joins its saved layer-E states.
                let toks: Vec<[u32; 1]> = rows.iter().map(|r| [r.tok]).collect();
                let h = backend.embed_rows(&toks.iter().map(|t| &t[..]).collect::<Vec<_>>())?;
                let (_, last) = run_layers(backend, &going, &h, 1..=e, &mut scratch)?;
                let newest = saved.len();
                let picks: Vec<Vec<(usize, usize)>> = rows.iter().enumerate().map(|(i, r)| r.saved_at.iter().copied().chain(std::iter::once((newest, i))).collect()).collect();
                let parts: Vec<&B::Rows> = saved.iter().chain(std::iter::once(&last)).collect();
                let h = backend.join_rows(&parts, &picks)?;
                run_layers(backend, &going, &h, e + 1..=layers, &mut scratch)?.1
            }
            DraftCache::Separate => {
                for (&r, row) in going.iter().zip(&rows) {
                    backend.truncate_row(r, row.base)?;
                }
                let seqs: Vec<Vec<u32>> = rows.iter().zip(&going).map(|(row, &r)| std::iter::once(tokens[r].last().expect("nonempty").id).chain(row.drafts.iter().copied()).collect()).collect();
                let h = backend.embed_rows(&seqs.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
                run_layers(backend, &going, &h, 1..=layers, &mut scratch)?.1
            }
        };
        let full: Vec<FullOut> = if sampling {
            backend.position_logits_rows(&verified)?.into_iter().map(FullOut::Logits).collect()
        } else {
            backend.heads_rows(&verified)?.into_iter().map(FullOut::Heads).collect()
        };
        scratch.reads.heads += if shared { 1 } else { going.len() };
        let verdicts: Vec<(usize, u32, Vec<Option<f32>>)> = rows.iter().zip(full).zip(&going).map(|((row, full), &r)| verdict(&row.drafts, &row.qs, full, s, rule, &mut rngs[r])).collect();
        backend.sync()?;
        pass.verify_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        for ((&r, row), v) in going.iter().zip(&rows).zip(&verdicts) {
            backend.truncate_row(r, row.base + v.0 + 1)?;
        }
        pass.rollback_s = t.elapsed().as_secs_f64();
        (pass.reads, pass.attended) = (std::mem::take(&mut scratch.reads), std::mem::take(&mut scratch.attended));

        // Each row's emitted tokens; its latency per token is the pass's seconds over them.
        let share = |x: f64| x / going.len() as f64;
        for ((&r, row), (acc, next, gaps)) in going.iter().zip(&rows).zip(verdicts) {
            let emitted = row.drafts[..acc].iter().map(|&d| (d, true)).chain(std::iter::once((next, false)));
            let mut pushed = 0;
            for ((id, drafted), gap) in emitted.zip(gaps) {
                tokens[r].push(trace(id, gap));
                accepted[r].push(drafted);
                pushed += 1;
                if eos(id) || tokens[r].len() >= opts.max_new_tokens {
                    break;
                }
            }
            let from = tokens[r].len() - pushed;
            tokens[r][from..].iter_mut().for_each(|t| t.layers_s = pass.total_s() / pushed as f64);
            let st = &mut stats[r];
            st.drafted += row.drafts.len();
            st.accepted += acc;
            st.verifies += 1;
            (st.draft_s, st.verify_s, st.rollback_s) = (st.draft_s + share(pass.draft_s), st.verify_s + share(pass.verify_s), st.rollback_s + share(pass.rollback_s));
            st.passes.push(Pass { drafted: row.drafts.len(), accepted: acc, emitted: pushed });
            pass.drafted += row.drafts.len();
            pass.accepted += acc;
            pass.emitted += pushed;
        }
        passes.push(pass);
    }

    let mut out = Vec::with_capacity(n);
    for (r, ((mut toks, mut acc), st)) in tokens.into_iter().zip(accepted).zip(stats).enumerate() {
        if opts.max_new_tokens == 0 {
            toks.clear();
            acc.clear();
        }
        // Every layer keeps the positions before the row's last token, as plain decoding leaves them.
        backend.truncate_row(r, prompts[r].len() + toks.len().saturating_sub(1))?;
        let generation = Generation { prompt_tokens: prompts[r].len(), tokens: toks, prefill_s, stop: stops[r].expect("every row stopped"), layer_s: Vec::new(), layer_runs: Vec::new() };
        out.push(SpeculativeGeneration { generation, accepted_draft: acc, stats: st });
    }
    Ok(SpeculativeBatch { rows: out, prefill_s, passes, shares_weight_reads: shared })
}
