//! The decode loop, written once for every backend: batched prefill, then one token at a time
//! layer by layer, asking the exit policy at each exit point, propagating the exited state into
//! the skipped layers' caches, and timing layers / exit checks / propagation separately.

pub mod batch;
pub mod speculative;
pub mod speculative_batch;

use crate::backend::{Backend, HeadSummary};
use crate::error::{Error, Result};
use crate::head::argmax;
use crate::exit::{ExitMode, Measure};
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// Token selection.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sampling {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 keeps every token.
    pub top_p: f64,
    /// Seed of the sampling RNG.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, seed: 0 }
    }
}

impl Sampling {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::setting("--temperature", format!("{} must be ≥ 0", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::setting("--top-p", format!("{} is outside (0, 1]", self.top_p)));
        }
        Ok(())
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Exit mode (full depth, early exit, static exit, oracle).
    pub mode: ExitMode,
    /// Maximum new tokens.
    pub max_new_tokens: usize,
    /// Token selection.
    pub sampling: Sampling,
    /// Ids that end generation.
    pub eos_ids: Vec<u32>,
    /// Time every layer separately (`Generation::layer_s`), synchronizing the device after each
    /// one: free on the CPU, a profiling pass on a GPU (never inside timed GPU cells).
    pub profile_layers: bool,
    /// Split each token's time into layers / exit checks / propagation (synchronizing at their
    /// boundaries); false times the whole token at once (the split-cost row).
    pub time_split: bool,
}

impl GenerateOptions {
    /// Greedy generation in `mode`, the time split on, no per-layer profile.
    pub fn greedy(mode: ExitMode, max_new_tokens: usize, eos_ids: Vec<u32>) -> Self {
        GenerateOptions { mode, max_new_tokens, sampling: Sampling::default(), eos_ids, profile_layers: false, time_split: true }
    }
}

/// One generated token.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenTrace {
    /// Token id.
    pub id: u32,
    /// Layer (1-based) the token exited at; L at full depth.
    pub exit_layer: usize,
    /// The measure's value at the exit layer when the token exited early (None at full depth).
    pub confidence: Option<f32>,
    /// Seconds spent in decoder layers for this token.
    pub layers_s: f64,
    /// Seconds spent in exit checks (exit head + confidence measure).
    pub exit_checks_s: f64,
    /// Seconds spent propagating the exited state into skipped layers.
    pub propagation_s: f64,
    /// Seconds spent gathering rows in or out of a batch (batched decoding only; 0 at B = 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gather_s: f64,
    /// Top-1 minus top-2 logit of the exit head that chose the token (None when sampled): below
    /// ~1e-5 two runtimes may pick different tokens without either being wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top2_gap: Option<f32>,
    /// Smallest |confidence − threshold| over this token's exit checks (None without checks):
    /// below ~1e-5 two runtimes may decide differently without either being wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_margin: Option<f32>,
}

impl TokenTrace {
    /// Total seconds for this token.
    pub fn total_s(&self) -> f64 {
        self.layers_s + self.exit_checks_s + self.propagation_s + self.gather_s
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

crate::named_enum! {
    /// Why generation stopped.
    pub enum StopReason: "stop reason", "stop" {
        /// An end-of-sequence token was generated (it is included in the tokens).
        Eos = "eos",
        /// The maximum number of new tokens was reached.
        MaxNewTokens = "max-new-tokens",
        /// The model's maximum sequence length was reached.
        MaxPositions = "max-positions",
    }
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Generation {
    /// Number of prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens (prompt excluded); the first comes from the prefill.
    pub tokens: Vec<TokenTrace>,
    /// Seconds of the batched prefill (time to first token).
    pub prefill_s: f64,
    /// Why generation stopped.
    pub stop: StopReason,
    /// Seconds per layer index (index 0 = layer 1) summed over the decoded tokens that ran it;
    /// empty unless `profile_layers` was set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_s: Vec<f64>,
    /// Decoded tokens that ran each layer (index 0 = layer 1); empty unless profiled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_runs: Vec<u64>,
}

impl Generation {
    /// Generated token ids.
    pub fn ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }

    /// Mean exit layer over the decoded tokens: every generated token after the first, which
    /// the full prefill produced without an exit decision. The same tokens `decode_s` times, so
    /// L ÷ this is the theoretical speedup of the decode time (0 when none were decoded).
    pub fn avg_layers(&self) -> f64 {
        if self.tokens.len() < 2 {
            return 0.0;
        }
        self.tokens.iter().skip(1).map(|t| t.exit_layer as f64).sum::<f64>() / (self.tokens.len() - 1) as f64
    }

    /// Decode seconds (every token after the first, which the prefill produced).
    pub fn decode_s(&self) -> f64 {
        self.tokens.iter().skip(1).map(TokenTrace::total_s).sum()
    }
}

/// Generates from `prompt` with `backend`, whose caches are reset first.
pub fn generate<B: Backend>(backend: &mut B, prompt: &[u32], opts: &GenerateOptions) -> Result<Generation> {
    let layers = backend.num_layers();
    opts.mode.validate(layers)?;
    opts.sampling.validate()?;
    check_prompt(backend, prompt)?;
    if let ExitMode::Dynamic(p) = &opts.mode {
        if p.measure == Measure::Classifier && !backend.has_classifier() {
            return Err(Error::no_classifiers());
        }
    }
    backend.reset();
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.sampling.seed);
    let depth = opts.mode.depth(layers);
    let mut profile = opts.profile_layers.then(|| LayerProfile { seconds: vec![0.0; layers], runs: vec![0; layers] });

    let start = Instant::now();
    let mut h = backend.embed(prompt)?;
    for l in 1..=depth {
        h = backend.layer(l, &h)?;
    }
    let (first, gap) = choose(backend, &h, None, &opts.sampling, &mut rng)?;
    backend.sync()?;
    let prefill_s = start.elapsed().as_secs_f64();
    let mut tokens = vec![TokenTrace { id: first, exit_layer: depth, confidence: None, layers_s: 0.0, exit_checks_s: 0.0, propagation_s: 0.0, gather_s: 0.0, top2_gap: gap, min_margin: None }];

    let stop = loop {
        let last = tokens.last().map(|t| t.id).unwrap_or(first);
        if opts.eos_ids.contains(&last) {
            break StopReason::Eos;
        }
        if tokens.len() >= opts.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        if prompt.len() + tokens.len() >= backend.max_positions() {
            break StopReason::MaxPositions;
        }
        let step = tokens.len() - 1;
        let trace = decode_token_profiled(backend, last, step, opts, &mut rng, profile.as_mut())?;
        tokens.push(trace);
    };
    if opts.max_new_tokens == 0 {
        tokens.clear();
    }
    let (layer_s, layer_runs) = profile.map(|p| (p.seconds, p.runs)).unwrap_or_default();
    Ok(Generation { prompt_tokens: prompt.len(), tokens, prefill_s, stop, layer_s, layer_runs })
}

pub(crate) fn check_prompt<B: Backend>(backend: &B, prompt: &[u32]) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::setting("--prompt", "the prompt encodes to zero tokens"));
    }
    if prompt.len() >= backend.max_positions() {
        return Err(Error::setting(
            "--prompt",
            format!("{} prompt tokens do not fit max_position_embeddings = {} (one position must remain for generation)", prompt.len(), backend.max_positions()),
        ));
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= backend.vocab_size()) {
        return Err(Error::setting("--prompt", format!("token id {bad} is outside the vocabulary ({})", backend.vocab_size())));
    }
    Ok(())
}

/// Time accumulated per component while decoding one token.
#[derive(Default)]
struct Clock {
    layers: f64,
    checks: f64,
    prop: f64,
}

/// Per-layer seconds and run counts over a generation's decoded tokens.
struct LayerProfile {
    seconds: Vec<f64>,
    runs: Vec<u64>,
}

/// Runs one token through the layers (caches must hold the sequence so far); `step` is the
/// 0-based decode step (for schedules). Public for benches; `generate` is the entry point.
pub fn decode_token<B: Backend>(backend: &mut B, token: u32, step: usize, opts: &GenerateOptions, rng: &mut rand::rngs::StdRng) -> Result<TokenTrace> {
    decode_token_profiled(backend, token, step, opts, rng, None)
}

/// `decode_token`, adding each layer's time to `profile` when given.
///
/// Synchronization follows one rule in every mode: the device is synchronized only where the
/// host needs a result (an exit point's check, the token) and at the boundaries of the time
/// split (a run of layers ends before a check); consecutive layers without an exit point between
/// them run unsynchronized. With `time_split` off nothing is synchronized before the token.
fn decode_token_profiled<B: Backend>(backend: &mut B, token: u32, step: usize, opts: &GenerateOptions, rng: &mut rand::rngs::StdRng, mut profile: Option<&mut LayerProfile>) -> Result<TokenTrace> {
    let layers = backend.num_layers();
    let mut clock = Clock::default();
    let t0 = Instant::now();
    let mut h = backend.embed(&[token])?;
    clock.layers += t0.elapsed().as_secs_f64();
    let mut margin: Option<f32> = None;
    let (id, exit_layer, confidence, gap) = match &opts.mode {
        ExitMode::Full | ExitMode::Static { .. } if !opts.time_split && profile.is_none() => {
            // The split-cost row: one timer around the layers and the head, no sync between.
            let depth = opts.mode.depth(layers);
            let t = Instant::now();
            for l in 1..=depth {
                h = backend.layer(l, &h)?;
            }
            let (id, gap) = choose(backend, &h, None, &opts.sampling, rng)?;
            clock.layers += t.elapsed().as_secs_f64();
            (id, depth, None, gap)
        }
        ExitMode::Full | ExitMode::Static { .. } => {
            let depth = opts.mode.depth(layers);
            h = timed_layers(backend, &h, 1..=depth, &mut clock, profile.as_deref_mut())?.1;
            let t = Instant::now();
            let (id, gap) = choose(backend, &h, None, &opts.sampling, rng)?;
            clock.checks += t.elapsed().as_secs_f64();
            (id, depth, None, gap)
        }
        ExitMode::Oracle { min_exit_layer, exit_interval } => {
            let mut argmaxes = Vec::new();
            let mut from = 1;
            for l in 1..=layers {
                if !ExitMode::oracle_point(l, layers, *min_exit_layer, *exit_interval) && l < layers {
                    continue;
                }
                h = timed_layers(backend, &h, from..=l, &mut clock, profile.as_deref_mut())?.1;
                from = l + 1;
                if l < layers {
                    let t = Instant::now();
                    argmaxes.push((l, backend.head(&h)?.argmax));
                    clock.checks += t.elapsed().as_secs_f64();
                }
            }
            let t = Instant::now();
            let last = apply_head(backend, &h, &opts.sampling)?;
            let last_argmax = last.summary.argmax;
            let (id, gap) = choose(backend, &h, Some(last), &opts.sampling, rng)?;
            clock.checks += t.elapsed().as_secs_f64();
            let credited = argmaxes.iter().find(|(_, a)| *a == last_argmax).map(|(l, _)| *l).unwrap_or(layers);
            (id, credited, None, gap)
        }
        ExitMode::Dynamic(policy) => {
            let lambda = policy.schedule.threshold(policy.threshold, step, opts.max_new_tokens);
            let mut exited = None;
            let mut from = 1;
            for l in 1..=layers {
                let point = policy.is_exit_point(l, layers);
                if !point && l < layers {
                    continue;
                }
                // Layers `from..=l` run back to back; `prev` is the input of layer l.
                let (prev, cur) = timed_layers(backend, &h, from..=l, &mut clock, profile.as_deref_mut())?;
                from = l + 1;
                if point {
                    let t = Instant::now();
                    let (conf, head) = confidence(backend, policy.measure, l, &prev, &cur, &opts.sampling)?;
                    let m = (conf as f64 - lambda).abs() as f32;
                    margin = Some(margin.map_or(m, |x| x.min(m)));
                    let chosen = if conf as f64 >= lambda { Some(choose(backend, &cur, head, &opts.sampling, rng)?) } else { None };
                    clock.checks += t.elapsed().as_secs_f64();
                    if let Some((id, gap)) = chosen {
                        let t = Instant::now();
                        for skipped in l + 1..=layers {
                            backend.propagate(skipped, &cur)?;
                        }
                        backend.sync()?;
                        clock.prop += t.elapsed().as_secs_f64();
                        exited = Some((id, l, Some(conf), gap));
                        break;
                    }
                }
                h = cur;
            }
            match exited {
                Some(e) => e,
                None => {
                    let t = Instant::now();
                    let (id, gap) = choose(backend, &h, None, &opts.sampling, rng)?;
                    clock.checks += t.elapsed().as_secs_f64();
                    (id, layers, None, gap)
                }
            }
        }
    };
    Ok(TokenTrace { id, exit_layer, confidence, layers_s: clock.layers, exit_checks_s: clock.checks, propagation_s: clock.prop, gather_s: 0.0, top2_gap: gap, min_margin: margin })
}

/// What the decode loop runs for one generated token (after the prefill's) that a trace records
/// at `exit_layer`: the one description of which layers, exit heads, classifier checks, cosines
/// and propagations each mode pays for. `decode_bytes` counts bytes from it, and a counting
/// backend checks it against [`decode_token`]'s calls (tests/decoder.rs), so they cannot drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StepWork {
    /// Decoder layers run.
    pub layers: usize,
    /// Exit-head applications (final norm + LM head), the one that picks the token included.
    pub heads: usize,
    /// Exit-classifier checks.
    pub classifiers: usize,
    /// Cosine (saturation) checks.
    pub cosines: usize,
    /// Skipped layers given propagated key/value entries.
    pub propagations: usize,
}

impl std::ops::AddAssign for StepWork {
    fn add_assign(&mut self, o: StepWork) {
        self.layers += o.layers;
        self.heads += o.heads;
        self.classifiers += o.classifiers;
        self.cosines += o.cosines;
        self.propagations += o.propagations;
    }
}

/// The work of one decoded token of `mode` on a model of `layers` layers whose trace records
/// `exit_layer` (for the oracle, the credited layer; it runs every layer).
pub fn step_work(mode: &ExitMode, exit_layer: usize, layers: usize) -> StepWork {
    match mode {
        ExitMode::Full => StepWork { layers, heads: 1, ..Default::default() },
        ExitMode::Static { layer } => StepWork { layers: *layer, heads: 1, ..Default::default() },
        ExitMode::Oracle { min_exit_layer, exit_interval } => {
            let points = (1..layers).filter(|&x| ExitMode::oracle_point(x, layers, *min_exit_layer, *exit_interval)).count();
            StepWork { layers, heads: points + 1, ..Default::default() }
        }
        ExitMode::Dynamic(p) => {
            let checked = (1..=exit_layer).filter(|&x| p.is_exit_point(x, layers)).count();
            let base = StepWork { layers: exit_layer, propagations: layers - exit_layer, ..Default::default() };
            // The softmax measures' exit head picks the token too (one more head when no layer
            // exits); the other measures apply one head for the token, at the exit or the end.
            match p.measure {
                Measure::SoftmaxDiff | Measure::SoftmaxMax => StepWork { heads: checked + usize::from(exit_layer == layers), ..base },
                Measure::Classifier => StepWork { heads: 1, classifiers: checked, ..base },
                Measure::Saturation => StepWork { heads: 1, cosines: checked, ..base },
            }
        }
    }
}

/// The exit head applied once at a state: its summary, and the full logits when sampling needs
/// them (the summary is then reduced from those logits on the host, so the head runs once).
struct HeadOut {
    summary: HeadSummary,
    logits: Option<Vec<f32>>,
}

/// Applies the exit head at `h`: on the device when greedy, to host logits when sampling.
fn apply_head<B: Backend>(backend: &mut B, h: &B::Hidden, s: &Sampling) -> Result<HeadOut> {
    if s.temperature == 0.0 {
        return Ok(HeadOut { summary: backend.head(h)?, logits: None });
    }
    let logits = backend.exit_logits(h)?;
    Ok(HeadOut { summary: HeadSummary::of_logits(&logits), logits: Some(logits) })
}

/// The token the exit head picks at `h`: the device-side argmax when greedy, else a sample from
/// the full logits; `head` is the head already applied at `h` (by the measure), reused. Returns
/// the top-2 logit gap when greedy.
fn choose<B: Backend>(backend: &mut B, h: &B::Hidden, head: Option<HeadOut>, s: &Sampling, rng: &mut rand::rngs::StdRng) -> Result<(u32, Option<f32>)> {
    let head = match head {
        Some(x) if s.temperature == 0.0 || x.logits.is_some() => x,
        // Greedy with no head applied yet: the argmax and gap alone (no softmax normaliser).
        None if s.temperature == 0.0 => {
            let pick = backend.head_pick(h)?;
            return Ok((pick.argmax, Some(pick.logit_gap)));
        }
        _ => apply_head(backend, h, s)?,
    };
    match head.logits {
        None => Ok((head.summary.argmax, Some(head.summary.logit_gap))),
        Some(logits) => Ok((select(&logits, s, rng), None)),
    }
}

/// Runs layers `range` from `h` back to back and synchronizes once at the end (after each layer
/// too when profiling, adding each layer's seconds to the profile). Returns (the input of the
/// last layer, the output).
fn timed_layers<B: Backend>(backend: &mut B, h: &B::Hidden, range: std::ops::RangeInclusive<usize>, clock: &mut Clock, profile: Option<&mut LayerProfile>) -> Result<(B::Hidden, B::Hidden)> {
    let t = Instant::now();
    let mut prev = h.clone();
    let mut h = h.clone();
    match profile {
        None => {
            for l in range {
                prev = h;
                h = backend.layer(l, &prev)?;
            }
            backend.sync()?;
        }
        Some(p) => {
            let mut last = t;
            for l in range {
                prev = h;
                h = backend.layer(l, &prev)?;
                backend.sync()?;
                let now = Instant::now();
                p.seconds[l - 1] += (now - last).as_secs_f64();
                p.runs[l - 1] += 1;
                last = now;
            }
        }
    }
    clock.layers += t.elapsed().as_secs_f64();
    Ok((prev, h))
}

/// The measure's confidence at layer `l` (and the exit head's output when the measure applied it).
fn confidence<B: Backend>(backend: &mut B, measure: Measure, l: usize, prev: &B::Hidden, cur: &B::Hidden, s: &Sampling) -> Result<(f32, Option<HeadOut>)> {
    match measure {
        Measure::SoftmaxDiff | Measure::SoftmaxMax => {
            let out = apply_head(backend, cur, s)?;
            let sm = out.summary;
            Ok((if measure == Measure::SoftmaxMax { sm.p1 } else { sm.p1 - sm.p2 }, Some(out)))
        }
        Measure::Saturation => Ok((backend.cosine(prev, cur)?, None)),
        Measure::Classifier => Ok((backend.classifier(l, cur)?, None)),
    }
}

/// Picks a token: argmax when greedy, else temperature + top-p sampling.
pub fn select(logits: &[f32], s: &Sampling, rng: &mut rand::rngs::StdRng) -> u32 {
    if s.temperature == 0.0 {
        return argmax(logits);
    }
    let (probs, mass) = nucleus(logits, s);
    let r: f64 = rng.random::<f64>() * mass;
    let mut acc = 0.0;
    for p in &probs {
        acc += p.1;
        if r < acc {
            return p.0;
        }
    }
    probs[probs.len() - 1].0
}

/// The sampling distribution of `logits` (temperature > 0): the smallest set of most probable
/// tokens holding `top_p` of the mass, in descending order (ties by index), as (id, softmax
/// probability) pairs, and their total mass (the pairs ÷ the mass are the distribution drawn
/// from). Only a growing prefix is selected and sorted, not all V probabilities; the prefix
/// equals a full sort's.
pub fn nucleus(logits: &[f32], s: &Sampling) -> (Vec<(u32, f64)>, f64) {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, (((v - max) as f64) / s.temperature).exp()))
        .collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= z);
    let by_prob = |a: &(u32, f64), b: &(u32, f64)| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(&b.0));
    let n = probs.len();
    let mut prefix = n.min(64);
    let (kept, mass) = loop {
        if prefix < n {
            probs.select_nth_unstable_by(prefix - 1, by_prob);
        }
        probs[..prefix].sort_by(by_prob);
        let (mut kept, mut mass) = (0, 0.0);
        for p in &probs[..prefix] {
            kept += 1;
            mass += p.1;
            if mass >= s.top_p {
                break;
            }
        }
        if mass >= s.top_p || prefix == n {
            break (kept, mass);
        }
        prefix = (prefix * 4).min(n);
    };
    probs.truncate(kept);
    (probs, mass)
}
