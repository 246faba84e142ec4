//! Batched decoding: several prompts decoded together, one step for every row still going, the
//! loop written once for every backend, exit mode and batch policy. Rows that want different exit
//! layers are served by a [`BatchPolicy`]:
//!
//! - `batch-min` (CALM's rule): at each exit point the batch exits when every row clears the
//!   threshold; every row takes its token from that layer; later layers get propagated entries.
//! - `per-row`: each row takes its token at its own exit layer; rows that exited ride along in
//!   the later layers' matrix products as passengers (their input is their exited state, so the
//!   keys and values they write are exactly the propagated ones, and the rest of their results is
//!   discarded) until every row has exited or the last layer ran.
//! - `compact`: rows that exit leave the batch at once (a gather, timed as its own component);
//!   later layers run on the rows still going; the exited rows' propagation is one call per
//!   skipped layer for all of them.
//!
//! `per-row` and `compact` give every row its single-row output; `batch-min` changes outputs.
//! A row that ends (EOS, its token budget, the model's length) leaves the batch under every
//! policy. Full depth, static exits and the oracle run every row through the same layers.

use super::{check_prompt, select, GenerateOptions, Generation, HeadOut, Sampling, StopReason, TokenTrace};
use crate::backend::{Batch, HeadSummary};
use crate::error::{Error, Result};
use crate::exit::{ExitMode, Measure};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Instant;

crate::named_enum! {
    /// How a batch serves rows that want different exit layers (see [`crate::decode::batch`]).
    pub enum BatchPolicy: "batch policy", "--batch-policy" {
        /// The batch exits when every row clears the threshold (CALM's `jnp.min(conf)` rule).
        BatchMin = "batch-min",
        /// Each row exits at its own layer; exited rows ride along as passengers.
        PerRow = "per-row",
        /// Exited rows leave the batch; later layers run on the rows still going.
        Compact = "compact",
    }
}

/// One step of a batch: every row still going decodes one token.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchStep {
    /// Rows that decoded a token in this step.
    pub rows: usize,
    /// Seconds in embeddings and decoder layers.
    pub layers_s: f64,
    /// Seconds in exit checks and token choice.
    pub exit_checks_s: f64,
    /// Seconds propagating exited states into skipped layers.
    pub propagation_s: f64,
    /// Seconds gathering rows out of the batch or merging passengers' states (`compact`,
    /// `per-row`).
    pub gather_s: f64,
    /// Layer runs summed over rows, passengers included.
    pub row_layers: usize,
    /// Layer runs of rows that had already exited (`per-row`'s passengers).
    pub wasted_row_layers: usize,
    /// Rows whose own measure cleared the threshold at an earlier exit point than the layer
    /// the batch took (`batch-min`).
    pub held_row_tokens: usize,
    /// Weight reads of the step's calls: a layer, exit head, classifier, cosine or propagation
    /// call counts once when the backend reads its weights once for all rows, once per row
    /// otherwise (what `decode_bytes` counts bytes from).
    #[serde(default)]
    pub reads: super::StepWork,
    /// Cached positions whose keys and values the step's layer calls attended, summed over rows
    /// and layers (the new position included).
    #[serde(default)]
    pub attended: usize,
    /// Tokens the step decoded: one per row in a decode step, each row's emitted tokens in a
    /// speculative pass (0 in older records, which meant `rows`).
    #[serde(default)]
    pub tokens: usize,
    /// Positions the step embedded: one per row in a decode step; a speculative pass embeds
    /// each draft step's tokens and its verification's (0 in older records: `rows`).
    #[serde(default)]
    pub embedded: usize,
    /// A speculative pass's verified positions, summed over its rows' segments (0 otherwise).
    #[serde(default)]
    pub verified_positions: usize,
    /// What a padded verification would run instead: rows × the longest segment (0 otherwise).
    #[serde(default)]
    pub padded_positions: usize,
    /// Positions run through decoder layers, summed over the step's layer calls: a decode
    /// step's one position per row and layer (`row_layers`), a speculative pass's draft
    /// positions and verified positions (what the layers computed, where `reads` is what they
    /// read; 0 in older records).
    #[serde(default)]
    pub layer_positions: usize,
}

impl BatchStep {
    /// Counts one call over `rows` rows into `field` of [`BatchStep::reads`].
    fn read(&mut self, shared: bool, rows: usize, field: fn(&mut super::StepWork) -> &mut usize) {
        *field(&mut self.reads) += if shared { 1 } else { rows };
    }
}

impl BatchStep {
    /// The step's seconds: every row's token latency.
    pub fn total_s(&self) -> f64 {
        self.layers_s + self.exit_checks_s + self.propagation_s + self.gather_s
    }
}

/// The result of decoding a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchGeneration {
    /// Each row's generation, in prompt order; a token's component seconds are its step's (the
    /// row waited for the whole step), and `prefill_s` is the batch's prefill.
    pub rows: Vec<Generation>,
    /// Seconds of the batched prefill.
    pub prefill_s: f64,
    /// Every decode step, in order.
    pub steps: Vec<BatchStep>,
    /// Whether the backend read each weight once for all rows (see [`Batch::shares_weight_reads`]).
    pub shares_weight_reads: bool,
}

impl BatchGeneration {
    /// Decode seconds (the steps, the prefill excluded).
    pub fn decode_s(&self) -> f64 {
        self.steps.iter().map(BatchStep::total_s).sum()
    }

    /// Tokens decoded by the steps (the prefill's first tokens excluded).
    pub fn decoded_tokens(&self) -> usize {
        self.steps.iter().map(|s| s.rows).sum()
    }
}

/// Exit layers to replay instead of the measure's decisions: `layers[row][step]` is the layer row
/// `row` exited at in decode step `step` of a recorded run (a row exits at the first exit point at
/// or after it; missing entries mean full depth). The measure still runs, so the step costs what
/// the recorded policy's step cost, on a model whose own confidences would never exit.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExitReplay {
    /// Per row, per decode step, the recorded exit layer.
    pub layers: Vec<Vec<usize>>,
}

/// Decodes `prompts` together with `backend` (its row caches are reset first) under `policy`.
pub fn generate_batch<B: Batch>(backend: &mut B, prompts: &[Vec<u32>], opts: &GenerateOptions, policy: BatchPolicy, replay: Option<&ExitReplay>) -> Result<BatchGeneration> {
    let layers = backend.num_layers();
    opts.mode.validate(layers)?;
    opts.sampling.validate()?;
    if prompts.is_empty() {
        return Err(Error::setting("--batch-size", "a batch needs at least one prompt"));
    }
    for p in prompts {
        check_prompt(backend, p)?;
    }
    if let ExitMode::Dynamic(p) = &opts.mode {
        if p.measure == Measure::Classifier && !backend.has_classifier() {
            return Err(Error::no_classifiers());
        }
    }
    if replay.is_some() && !matches!(opts.mode, ExitMode::Dynamic(_)) {
        return Err(Error::setting("--exit-trace", "replaying exit layers needs an early-exit mode (a measure and a threshold)"));
    }
    let n = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    backend.start_rows(n, (longest + opts.max_new_tokens + 1).min(backend.max_positions()))?;
    // Row r samples with seed + r: a sweep's batch starting at sample i gives each row its own
    // sample's seed, as at batch size 1.
    let mut rngs: Vec<StdRng> = (0..n).map(|r| StdRng::seed_from_u64(opts.sampling.seed.wrapping_add(r as u64))).collect();
    let depth = opts.mode.depth(layers);
    let all: Vec<usize> = (0..n).collect();

    let start = Instant::now();
    let slices: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut h = backend.embed_rows(&slices)?;
    for l in 1..=depth {
        h = backend.layer_rows(l, &all, &h)?;
    }
    let firsts = choose_rows(backend, &h, None, &opts.sampling, &mut rngs, &all, &mut BatchStep::default())?;
    backend.sync()?;
    let prefill_s = start.elapsed().as_secs_f64();
    let mut tokens: Vec<Vec<TokenTrace>> = firsts
        .into_iter()
        .map(|(id, gap)| vec![TokenTrace { id, exit_layer: depth, confidence: None, layers_s: 0.0, exit_checks_s: 0.0, propagation_s: 0.0, gather_s: 0.0, top2_gap: gap, min_margin: None }])
        .collect();
    let mut stops: Vec<Option<StopReason>> = vec![None; n];
    let mut steps = Vec::new();
    loop {
        let going = rows_going(&mut stops, &tokens, prompts, opts, backend.max_positions());
        if going.is_empty() {
            break;
        }
        // Rows start together and each step adds one token to every row still going.
        let step = tokens[going[0]].len() - 1;
        let last: Vec<u32> = going.iter().map(|&r| tokens[r].last().expect("nonempty").id).collect();
        let replayed: Option<Vec<usize>> = replay.map(|t| going.iter().map(|&r| t.layers.get(r).and_then(|s| s.get(step)).copied().unwrap_or(layers)).collect());
        let (traces, info) = decode_step(backend, &going, &last, step, opts, policy, replayed.as_deref(), &mut rngs)?;
        for (&r, t) in going.iter().zip(traces) {
            tokens[r].push(t);
        }
        steps.push(info);
    }
    let rows = tokens
        .into_iter()
        .zip(prompts)
        .zip(stops)
        .map(|((mut toks, p), stop)| {
            if opts.max_new_tokens == 0 {
                toks.clear();
            }
            Generation { prompt_tokens: p.len(), tokens: toks, prefill_s, stop: stop.expect("every row stopped"), layer_s: Vec::new(), layer_runs: Vec::new() }
        })
        .collect();
    Ok(BatchGeneration { rows, prefill_s, steps, shares_weight_reads: backend.shares_weight_reads() })
}

/// The rows still going after their last token, in order: a row whose last token is an end of
/// sequence, that has its tokens or that fills the model's positions stops (recorded in
/// `stops`, once); a stopped row stays stopped.
pub(super) fn rows_going<T: AsRef<[TokenTrace]>>(stops: &mut [Option<StopReason>], tokens: &[T], prompts: &[Vec<u32>], opts: &GenerateOptions, max_positions: usize) -> Vec<usize> {
    let mut going = Vec::new();
    for (r, stop) in stops.iter_mut().enumerate() {
        if stop.is_some() {
            continue;
        }
        let toks = tokens[r].as_ref();
        let last = toks.last().map(|t| t.id).expect("the prefill's token");
        *stop = if opts.eos_ids.contains(&last) {
            Some(StopReason::Eos)
        } else if toks.len() >= opts.max_new_tokens {
            Some(StopReason::MaxNewTokens)
        } else if prompts[r].len() + toks.len() >= max_positions {
            Some(StopReason::MaxPositions)
        } else {
            going.push(r);
            None
        };
    }
    going
}

/// A row's token once chosen: id, exit layer, confidence at the exit, top-2 gap.
#[derive(Debug, Clone, Copy)]
struct Chosen {
    id: u32,
    layer: usize,
    confidence: Option<f32>,
    gap: Option<f32>,
}

/// Decodes one token for each of `rows` (global row ids) whose last tokens are `last`.
#[allow(clippy::too_many_arguments)] // one step's inputs, called from one place
fn decode_step<B: Batch>(backend: &mut B, rows: &[usize], last: &[u32], step: usize, opts: &GenerateOptions, policy: BatchPolicy, replayed: Option<&[usize]>, rngs: &mut [StdRng]) -> Result<(Vec<TokenTrace>, BatchStep)> {
    let layers = backend.num_layers();
    let n = rows.len();
    let mut info = BatchStep { rows: n, tokens: n, embedded: n, ..Default::default() };
    let t0 = Instant::now();
    let slices: Vec<&[u32]> = last.iter().map(std::slice::from_ref).collect();
    let h = backend.embed_rows(&slices)?;
    info.layers_s += t0.elapsed().as_secs_f64();
    let mut margins: Vec<Option<f32>> = vec![None; n];
    let chosen: Vec<Chosen> = match &opts.mode {
        ExitMode::Full | ExitMode::Static { .. } => {
            let depth = opts.mode.depth(layers);
            let (_, cur) = run_layers(backend, rows, &h, 1..=depth, &mut info)?;
            let t = Instant::now();
            let picked = choose_rows(backend, &cur, None, &opts.sampling, rngs, rows, &mut info)?;
            info.exit_checks_s += t.elapsed().as_secs_f64();
            picked.into_iter().map(|(id, gap)| Chosen { id, layer: depth, confidence: None, gap }).collect()
        }
        ExitMode::Oracle { min_exit_layer, exit_interval } => {
            let mut argmaxes: Vec<Vec<(usize, u32)>> = vec![Vec::new(); n];
            let mut cur = h;
            let mut from = 1;
            for l in 1..=layers {
                if !ExitMode::oracle_point(l, layers, *min_exit_layer, *exit_interval) && l < layers {
                    continue;
                }
                cur = run_layers(backend, rows, &cur, from..=l, &mut info)?.1;
                from = l + 1;
                if l < layers {
                    let t = Instant::now();
                    let heads = backend.head_rows(&cur)?;
                    info.read(backend.shares_weight_reads(), heads.len(), |w| &mut w.heads);
                    for (i, s) in heads.into_iter().enumerate() {
                        argmaxes[i].push((l, s.argmax));
                    }
                    info.exit_checks_s += t.elapsed().as_secs_f64();
                }
            }
            let t = Instant::now();
            let heads = apply_head_rows(backend, &cur, &opts.sampling, &mut info)?;
            let finals: Vec<u32> = heads.iter().map(|o| o.summary.argmax).collect();
            let picked = choose_rows(backend, &cur, Some(heads), &opts.sampling, rngs, rows, &mut info)?;
            info.exit_checks_s += t.elapsed().as_secs_f64();
            picked
                .into_iter()
                .enumerate()
                .map(|(i, (id, gap))| {
                    let layer = argmaxes[i].iter().find(|(_, a)| *a == finals[i]).map(|(l, _)| *l).unwrap_or(layers);
                    Chosen { id, layer, confidence: None, gap }
                })
                .collect()
        }
        ExitMode::Dynamic(p) => {
            let lambda = p.schedule.threshold(p.threshold, step, opts.max_new_tokens);
            let mut decided: Vec<Option<Chosen>> = vec![None; n];
            // `run[j]`: the batch index of segment j of the running state `cur`.
            let mut run: Vec<usize> = (0..n).collect();
            let mut cur = h;
            // per-row: passengers' exited states, `frozen_at[i] = (part, segment)` in `frozen`.
            let mut frozen: Vec<B::Rows> = Vec::new();
            let mut frozen_at: Vec<Option<(usize, usize)>> = vec![None; n];
            // batch-min: the first exit point at which each row's own measure cleared.
            let mut cleared_at: Vec<Option<usize>> = vec![None; n];
            let mut from = 1;
            for l in 1..layers {
                if !p.is_exit_point(l, layers) {
                    continue;
                }
                let (prev, out) = run_layers_with_passengers(backend, rows, &run, &cur, from..=l, &frozen, &frozen_at, &mut info)?;
                cur = out;
                from = l + 1;
                // The rows still deciding, as segments of `cur`.
                let undecided: Vec<usize> = (0..run.len()).filter(|&j| decided[run[j]].is_none()).collect();
                let (pu, cu) = if undecided.len() == run.len() {
                    (prev, cur.clone())
                } else {
                    let t = Instant::now();
                    let picks: Vec<(usize, usize)> = undecided.iter().map(|&j| (0, j)).collect();
                    let both = (backend.pick_rows(&[&prev], &picks)?, backend.pick_rows(&[&cur], &picks)?);
                    info.gather_s += t.elapsed().as_secs_f64();
                    both
                };
                let t = Instant::now();
                // Gathers inside the exit checks' stretch count as gather time only.
                let gathered = info.gather_s;
                let batch_of: Vec<usize> = undecided.iter().map(|&j| run[j]).collect();
                let (confs, heads) = confidence_rows(backend, p.measure, l, &pu, &cu, &opts.sampling, &mut info)?;
                let mut clears = Vec::with_capacity(confs.len());
                for (k, &conf) in confs.iter().enumerate() {
                    let i = batch_of[k];
                    let m = (conf as f64 - lambda).abs() as f32;
                    margins[i] = Some(margins[i].map_or(m, |x| x.min(m)));
                    let own = match replayed {
                        Some(r) => l >= r[i],
                        None => conf as f64 >= lambda,
                    };
                    if own && cleared_at[i].is_none() {
                        cleared_at[i] = Some(l);
                    }
                    clears.push(own);
                }
                // Which of the undecided (indices into `batch_of`) exit here.
                let exiting: Vec<usize> = match policy {
                    BatchPolicy::BatchMin if clears.iter().all(|&c| c) => (0..clears.len()).collect(),
                    BatchPolicy::BatchMin => Vec::new(),
                    BatchPolicy::PerRow | BatchPolicy::Compact => (0..clears.len()).filter(|&k| clears[k]).collect(),
                };
                if exiting.is_empty() {
                    info.exit_checks_s += t.elapsed().as_secs_f64();
                    continue;
                }
                let all_exit = exiting.len() == undecided.len();
                let (state, heads) = if all_exit {
                    (cu, heads)
                } else {
                    let g = Instant::now();
                    let picks: Vec<(usize, usize)> = exiting.iter().map(|&k| (0, k)).collect();
                    let s = backend.pick_rows(&[&cu], &picks)?;
                    info.gather_s += g.elapsed().as_secs_f64();
                    let heads = heads.map(|mut hs| exiting.iter().map(|&k| std::mem::replace(&mut hs[k], HeadOut::empty())).collect());
                    (s, heads)
                };
                let exit_rows: Vec<usize> = exiting.iter().map(|&k| batch_of[k]).collect();
                let globals: Vec<usize> = exit_rows.iter().map(|&i| rows[i]).collect();
                let picked = choose_rows(backend, &state, heads, &opts.sampling, rngs, &globals, &mut info)?;
                info.exit_checks_s += t.elapsed().as_secs_f64() - (info.gather_s - gathered);
                for (k, (id, gap)) in picked.into_iter().enumerate() {
                    let i = exit_rows[k];
                    decided[i] = Some(Chosen { id, layer: l, confidence: Some(confs[exiting[k]]), gap });
                }
                if policy == BatchPolicy::BatchMin {
                    info.held_row_tokens += cleared_at.iter().filter(|c| matches!(c, Some(x) if *x < l)).count();
                }
                let everyone = decided.iter().all(Option::is_some);
                match policy {
                    BatchPolicy::PerRow if !everyone => {
                        // The exited rows ride along from the next layer on.
                        for (k, &i) in exit_rows.iter().enumerate() {
                            frozen_at[i] = Some((frozen.len(), k));
                        }
                        frozen.push(state);
                    }
                    BatchPolicy::PerRow => {
                        // Every row has exited: every row's exited state fills the layers left.
                        let parts: Vec<&B::Rows> = frozen.iter().chain(std::iter::once(&state)).collect();
                        let newest = frozen.len();
                        let picks: Vec<(usize, usize)> = (0..n).map(|i| frozen_at[i].unwrap_or_else(|| (newest, exit_rows.iter().position(|&x| x == i).expect("exited here")))).collect();
                        let g = Instant::now();
                        let all_states = backend.pick_rows(&parts, &picks)?;
                        info.gather_s += g.elapsed().as_secs_f64();
                        propagate(backend, l + 1..=layers, rows, &all_states, &mut info)?;
                    }
                    BatchPolicy::Compact | BatchPolicy::BatchMin => {
                        propagate(backend, l + 1..=layers, &globals, &state, &mut info)?;
                        if !everyone {
                            // The exited rows leave; the rest go on (batch-min never gets here).
                            let keep: Vec<usize> = (0..run.len()).filter(|&j| decided[run[j]].is_none()).collect();
                            let g = Instant::now();
                            cur = backend.pick_rows(&[&cur], &keep.iter().map(|&j| (0, j)).collect::<Vec<_>>())?;
                            run = keep.iter().map(|&j| run[j]).collect();
                            info.gather_s += g.elapsed().as_secs_f64();
                        }
                    }
                }
                if everyone {
                    break;
                }
            }
            if decided.iter().any(Option::is_none) {
                // The rows still deciding (and, per-row, the passengers) run to the last layer.
                let out = run_layers_with_passengers(backend, rows, &run, &cur, from..=layers, &frozen, &frozen_at, &mut info)?.1;
                let undecided: Vec<usize> = (0..run.len()).filter(|&j| decided[run[j]].is_none()).collect();
                let t = Instant::now();
                let gathered = info.gather_s;
                let state = if undecided.len() == run.len() {
                    out
                } else {
                    let g = Instant::now();
                    let s = backend.pick_rows(&[&out], &undecided.iter().map(|&j| (0, j)).collect::<Vec<_>>())?;
                    info.gather_s += g.elapsed().as_secs_f64();
                    s
                };
                let globals: Vec<usize> = undecided.iter().map(|&j| rows[run[j]]).collect();
                let picked = choose_rows(backend, &state, None, &opts.sampling, rngs, &globals, &mut info)?;
                info.exit_checks_s += t.elapsed().as_secs_f64() - (info.gather_s - gathered);
                for (k, (id, gap)) in picked.into_iter().enumerate() {
                    decided[run[undecided[k]]] = Some(Chosen { id, layer: layers, confidence: None, gap });
                }
                if policy == BatchPolicy::BatchMin {
                    info.held_row_tokens += cleared_at.iter().filter(|c| c.is_some()).count();
                }
            }
            decided.into_iter().map(|c| c.expect("every row decided")).collect()
        }
    };
    info.layer_positions = info.row_layers;
    let traces = chosen
        .into_iter()
        .zip(margins)
        .map(|(c, min_margin)| TokenTrace {
            id: c.id,
            exit_layer: c.layer,
            confidence: c.confidence,
            layers_s: info.layers_s,
            exit_checks_s: info.exit_checks_s,
            propagation_s: info.propagation_s,
            gather_s: info.gather_s,
            top2_gap: c.gap,
            min_margin,
        })
        .collect();
    Ok((traces, info))
}

/// Runs layers `range` on every segment of `h` (segment j belonging to batch index `j`, global
/// row `rows[j]`), synchronizing once at the end. Returns (the input of the last layer, output).
pub(super) fn run_layers<B: Batch>(backend: &mut B, rows: &[usize], h: &B::Rows, range: std::ops::RangeInclusive<usize>, info: &mut BatchStep) -> Result<(B::Rows, B::Rows)> {
    let run: Vec<usize> = (0..rows.len()).collect();
    run_layers_with_passengers(backend, rows, &run, h, range, &[], &vec![None; rows.len()], info)
}

/// Runs layers `range` on the running state `cur`, whose segment j is batch index `run[j]`
/// (global row `rows[run[j]]`). A row with `frozen_at` set is a passenger: its input to every
/// layer is its exited state, so it writes the propagated keys and values, and its outputs are
/// wasted work (counted). Returns (the input of the last layer, the output).
#[allow(clippy::too_many_arguments)] // the running batch's parts, called from two places
fn run_layers_with_passengers<B: Batch>(backend: &mut B, rows: &[usize], run: &[usize], cur: &B::Rows, range: std::ops::RangeInclusive<usize>, frozen: &[B::Rows], frozen_at: &[Option<(usize, usize)>], info: &mut BatchStep) -> Result<(B::Rows, B::Rows)> {
    let globals: Vec<usize> = run.iter().map(|&i| rows[i]).collect();
    let passengers = run.iter().filter(|&&i| frozen_at[i].is_some()).count();
    let picks: Vec<(usize, usize)> = run.iter().enumerate().map(|(j, &i)| frozen_at[i].map_or((0, j), |(p, s)| (p + 1, s))).collect();
    let mut prev = cur.clone();
    let mut h = cur.clone();
    let t = Instant::now();
    let mut gather = 0.0;
    for l in range {
        prev = if passengers > 0 {
            let g = Instant::now();
            let parts: Vec<&B::Rows> = std::iter::once(&h).chain(frozen.iter()).collect();
            let merged = backend.pick_rows(&parts, &picks)?;
            gather += g.elapsed().as_secs_f64();
            merged
        } else {
            h
        };
        h = backend.layer_rows(l, &globals, &prev)?;
        info.reads.layers += backend.last_layer_reads(globals.len());
        for &g in &globals {
            info.attended += backend.row_cache_len(g, l);
        }
        info.row_layers += run.len();
        info.wasted_row_layers += passengers;
    }
    backend.sync()?;
    info.layers_s += t.elapsed().as_secs_f64() - gather;
    info.gather_s += gather;
    Ok((prev, h))
}

/// Propagates `states` (segment i belonging to global row `rows[i]`) into `layers`, one call per
/// layer for all rows.
fn propagate<B: Batch>(backend: &mut B, layers: std::ops::RangeInclusive<usize>, rows: &[usize], states: &B::Rows, info: &mut BatchStep) -> Result<()> {
    let t = Instant::now();
    for l in layers {
        backend.propagate_rows(l, rows, states)?;
        info.read(backend.shares_weight_reads(), rows.len(), |w| &mut w.propagations);
    }
    backend.sync()?;
    info.propagation_s += t.elapsed().as_secs_f64();
    Ok(())
}

impl HeadOut {
    /// A placeholder left where a head was moved out.
    fn empty() -> Self {
        HeadOut { summary: HeadSummary::from_reduced(0, 0.0, 0.0, 1.0), logits: None }
    }
}

/// The exit head at every segment's last position: on the device when greedy, host logits when
/// sampling.
pub(super) fn apply_head_rows<B: Batch>(backend: &mut B, h: &B::Rows, s: &Sampling, info: &mut BatchStep) -> Result<Vec<HeadOut>> {
    let out: Vec<HeadOut> = if s.temperature == 0.0 {
        backend.head_rows(h)?.into_iter().map(|summary| HeadOut { summary, logits: None }).collect()
    } else {
        backend.exit_logits_rows(h)?.into_iter().map(|l| HeadOut { summary: HeadSummary::of_logits(&l), logits: Some(l) }).collect()
    };
    info.read(backend.shares_weight_reads(), out.len(), |w| &mut w.heads);
    Ok(out)
}

/// The token each segment's head picks (segment i is global row `rows[i]`, whose RNG samples);
/// `heads` are heads already applied at `h`, reused.
fn choose_rows<B: Batch>(backend: &mut B, h: &B::Rows, heads: Option<Vec<HeadOut>>, s: &Sampling, rngs: &mut [StdRng], rows: &[usize], info: &mut BatchStep) -> Result<Vec<(u32, Option<f32>)>> {
    let heads = match heads {
        Some(x) if s.temperature == 0.0 || x.iter().all(|o| o.logits.is_some()) => x,
        _ => apply_head_rows(backend, h, s, info)?,
    };
    Ok(heads
        .into_iter()
        .zip(rows)
        .map(|(o, &r)| match o.logits {
            None => (o.summary.argmax, Some(o.summary.logit_gap)),
            Some(logits) => (select(&logits, s, &mut rngs[r]), None),
        })
        .collect())
}

/// The measure's confidence at layer `l` for every segment (and the heads when it applied them).
pub(super) fn confidence_rows<B: Batch>(backend: &mut B, measure: Measure, l: usize, prev: &B::Rows, cur: &B::Rows, s: &Sampling, info: &mut BatchStep) -> Result<(Vec<f32>, Option<Vec<HeadOut>>)> {
    let shared = backend.shares_weight_reads();
    match measure {
        Measure::SoftmaxDiff | Measure::SoftmaxMax => {
            let heads = apply_head_rows(backend, cur, s, info)?;
            let confs = heads.iter().map(|o| if measure == Measure::SoftmaxMax { o.summary.p1 } else { o.summary.p1 - o.summary.p2 }).collect();
            Ok((confs, Some(heads)))
        }
        Measure::Saturation => {
            let c = backend.cosine_rows(prev, cur)?;
            info.read(shared, c.len(), |w| &mut w.cosines);
            Ok((c, None))
        }
        Measure::Classifier => {
            let c = backend.classifier_rows(l, cur)?;
            info.read(shared, c.len(), |w| &mut w.classifiers);
            Ok((c, None))
        }
    }
}
