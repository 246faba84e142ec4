//! Self-speculative decoding (LayerSkip's `self_speculation`, transformers'
//! `assistant_early_exit`): draft up to k tokens with the first E layers and the shared exit
//! head, verify them with the whole model in one multi-token pass, keep the longest prefix the
//! full model agrees with plus the full model's own next token, and roll every cache back to the
//! accepted length. Greedy decoding emits full depth's tokens, token for token.
//!
//! Two cache modes: `shared` (LayerSkip) verifies by running only layers E+1..L on the saved
//! layer-E states of the drafted tokens, the draft's entries in layers 1..E being exactly what
//! the full model would write; `separate` (transformers) discards the draft's entries and the
//! verifier recomputes all L layers. Both run in one set of caches: `separate` pays the
//! recomputation, not the memory of a second cache.

use super::{Generation, GenerateOptions, Sampling, StopReason, TokenTrace};
use crate::backend::Speculate;
use crate::error::{Error, Result};
use crate::exit::{ExitMode, Measure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

crate::named_enum! {
    /// Where the draft's key/value entries live.
    pub enum DraftCache: "draft cache", "--draft-cache" {
        /// The verifier reuses the draft's entries of layers 1..E (LayerSkip).
        Shared = "shared",
        /// The verifier recomputes every layer; the draft's entries are its own (transformers).
        Separate = "separate",
    }
}

/// The most tokens drafted per verification.
pub const MAX_DRAFT_TOKENS: usize = 64;

/// When drafting stops before k tokens: as soon as the draft's own confidence in the token it
/// just drafted falls below the threshold (Kangaroo's and DEL's rule, with exitbench's
/// measures). That token is still verified; the draft drafts no more in this pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DraftStop {
    /// The confidence measure, read at the draft's last layer E.
    pub measure: Measure,
    /// Drafting stops when the confidence is below it.
    pub threshold: f64,
}

impl DraftStop {
    /// Parses `MEASURE@THRESHOLD` (`softmax-diff@0.5`); `flag` names the input in errors.
    pub fn parse(flag: &str, x: &str) -> Result<Self> {
        let bad = |why: &str| Error::setting(flag, format!("`{x}`: {why} (expected measure@threshold such as softmax-max@0.6, or none)"));
        let (m, t) = x.trim().split_once('@').ok_or_else(|| bad("no @"))?;
        let measure = Measure::parse(m).map_err(|e| bad(&e.to_string()))?;
        let threshold: f64 = t.trim().parse().map_err(|_| bad("the threshold is not a number"))?;
        crate::exit::policy::check_threshold(flag, threshold)?;
        Ok(DraftStop { measure, threshold })
    }
}

impl serde::Serialize for DraftStop {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DraftStop {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DraftStop::parse("draft_stop", &s).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for DraftStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.measure.name(), self.threshold)
    }
}

/// A self-speculative setting.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Speculation {
    /// Layers the draft runs (1..L−1).
    pub draft_layer: usize,
    /// The most tokens drafted per verification.
    pub draft_tokens: usize,
    /// Where the draft's cache entries live.
    pub cache: DraftCache,
    /// Stop drafting early on low draft confidence (None: always draft k tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<DraftStop>,
}

impl Speculation {
    /// Checks the setting against a model of `layers` layers (`classifiers`: whether it has exit
    /// classifiers, which a classifier draft stop needs).
    pub fn validate(&self, layers: usize, classifiers: bool) -> Result<()> {
        if self.draft_layer == 0 || self.draft_layer >= layers {
            return Err(Error::setting("--draft-layer", format!("{} is outside 1..={} (the draft must stop below the last of {layers} layers)", self.draft_layer, layers.saturating_sub(1))));
        }
        if self.draft_tokens == 0 || self.draft_tokens > MAX_DRAFT_TOKENS {
            return Err(Error::setting("--draft-tokens", format!("{} is outside 1..={MAX_DRAFT_TOKENS}", self.draft_tokens)));
        }
        if self.stop.is_some_and(|s| s.measure == Measure::Classifier) && !classifiers {
            return Err(Error::no_classifiers());
        }
        Ok(())
    }
}

/// What one verification pass did: tokens drafted and tokens emitted (accepted drafts plus the
/// full model's own token). A generation's passes say what it read (`decode_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pass {
    /// Tokens drafted.
    pub drafted: usize,
    /// Drafts the full model accepted.
    pub accepted: usize,
    /// Tokens emitted: the accepted drafts and the full model's own token, fewer when the
    /// generation ended inside the pass.
    pub emitted: usize,
}

impl Pass {
    /// Per emitted token of `passes`, in order: true when it was a drafted token the full model
    /// accepted.
    pub fn accepted_flags(passes: &[Pass]) -> Vec<bool> {
        passes.iter().flat_map(|p| (0..p.emitted).map(move |i| i < p.accepted)).collect()
    }
}

/// The backend calls one verification pass that drafted `drafted` tokens makes (the one
/// description `decode_bytes` counts from; tests/decoder.rs checks it against the loop with a
/// counting backend). A call over several positions counts once: it reads its weights once.
pub fn pass_work(spec: &Speculation, layers: usize, drafted: usize) -> [super::StepWork; 2] {
    let e = spec.draft_layer;
    let classifiers = if spec.stop.is_some_and(|s| s.measure == Measure::Classifier) { drafted } else { 0 };
    let cosines = if spec.stop.is_some_and(|s| s.measure == Measure::Saturation) { drafted } else { 0 };
    let draft = super::StepWork { layers: drafted * e, heads: drafted, classifiers, cosines, propagations: 0 };
    let verify = match spec.cache {
        // The last token's layers 1..E, then layers E+1..L over every position, one head pass.
        DraftCache::Shared => super::StepWork { layers: e + (layers - e), heads: 1, ..Default::default() },
        DraftCache::Separate => super::StepWork { layers, heads: 1, ..Default::default() },
    };
    [draft, verify]
}

/// Which acceptance rule verification applies when sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptanceRule {
    /// Speculative sampling (Leviathan et al., Chen et al.): accept a draft d with probability
    /// min(1, p(d)/q(d)); on rejection draw from the normalised residual max(0, p − q). The
    /// output distribution is full depth's. Greedy: accept while the draft equals the argmax.
    Exact,
    /// Accepts every draft: wrong on purpose, so that the distribution test can show it
    /// catches a wrong rule. Never used outside tests.
    AcceptAll,
}

/// What a speculative generation drafted, accepted and spent.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpeculationStats {
    /// Tokens drafted.
    pub drafted: usize,
    /// Drafted tokens the full model agreed with.
    pub accepted: usize,
    /// Verification passes.
    pub verifies: usize,
    /// Seconds drafting (layers 1..E and the exit head per drafted token).
    pub draft_s: f64,
    /// Seconds verifying (the multi-token pass and its exit heads).
    pub verify_s: f64,
    /// Seconds rolling caches back.
    pub rollback_s: f64,
    /// Each verification pass's drafted and emitted tokens, in order (one generation's; empty
    /// in a cell's totals).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passes: Vec<Pass>,
}

impl SpeculationStats {
    /// Accepted ÷ drafted (LayerSkip's acceptance rate); None before any draft.
    pub fn acceptance_rate(&self) -> Option<f64> {
        (self.drafted > 0).then(|| self.accepted as f64 / self.drafted as f64)
    }
}

/// A speculative generation: the tokens (as [`Generation`]), which emitted tokens were accepted
/// drafts, and the statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeculativeGeneration {
    /// The tokens and timings; every token is the full model's (exit layer L).
    pub generation: Generation,
    /// Per generated token: true when it was drafted and accepted.
    pub accepted_draft: Vec<bool>,
    /// Drafts, acceptances, passes and the time split.
    pub stats: SpeculationStats,
}

impl SpeculativeGeneration {
    /// Mean tokens emitted per verification pass (decoded tokens only).
    pub fn tokens_per_verify(&self) -> Option<f64> {
        let decoded = self.generation.tokens.len().saturating_sub(1);
        (self.stats.verifies > 0).then(|| decoded as f64 / self.stats.verifies as f64)
    }
}

/// Generates from `prompt` with self-speculative decoding (`opts.mode` must be full depth: the
/// output is the full model's, token for token when greedy and in distribution when sampling).
/// Caches are reset first; at the end every layer holds exactly the positions before the last
/// generated token, as after [`super::generate`].
pub fn generate_speculative<B: Speculate>(backend: &mut B, prompt: &[u32], opts: &GenerateOptions, spec: &Speculation) -> Result<SpeculativeGeneration> {
    generate_speculative_with(backend, prompt, opts, spec, AcceptanceRule::Exact)
}

/// A drafted token: the state at layer E, the token, the draft's distribution (sampling) and
/// whether the draft stays confident enough to draft on.
struct Drafted<H> {
    h: H,
    token: u32,
    q: Option<Dist>,
    confident: bool,
}

/// Runs `tok` through layers 1..E and the exit head: the next draft.
fn draft_step<B: Speculate>(backend: &mut B, tok: u32, spec: &Speculation, s: &Sampling, rng: &mut StdRng) -> Result<Drafted<B::Hidden>> {
    let mut h = backend.embed(&[tok])?;
    let mut prev = h.clone();
    for l in 1..=spec.draft_layer {
        prev = h;
        h = backend.layer(l, &prev)?;
    }
    let (confident, head) = match spec.stop {
        None => (true, None),
        Some(stop) => {
            let (c, head) = super::confidence(backend, stop.measure, spec.draft_layer, &prev, &h, s)?;
            (c as f64 >= stop.threshold, head)
        }
    };
    let head = match head {
        Some(x) => x,
        None => super::apply_head(backend, &h, s)?,
    };
    let (token, q) = match head.logits {
        None => (head.summary.argmax, None),
        Some(logits) => {
            let q = Dist::of(&logits, s);
            (q.draw(rng), Some(q))
        }
    };
    Ok(Drafted { h, token, q, confident })
}

/// The full model's outputs at a verification pass's positions: summaries when greedy, host
/// logits when sampling.
pub(super) enum FullOut {
    /// Reduced heads (greedy).
    Heads(Vec<crate::backend::HeadSummary>),
    /// Full logits per position (sampling).
    Logits(Vec<Vec<f32>>),
}

/// The full model's verdict on `drafts` (drawn from `qs` when sampling): how many it accepts,
/// its own token after them, and the top-2 gaps of the emitted tokens (greedy). Greedy accepts
/// while a draft equals the full model's argmax; sampling accepts draft i with probability
/// min(1, p(d)/q(d)) and otherwise draws from the residual, or draws the token after every
/// accepted draft from p.
pub(super) fn verdict(drafts: &[u32], qs: &[Dist], full: FullOut, s: &Sampling, rule: AcceptanceRule, rng: &mut StdRng) -> (usize, u32, Vec<Option<f32>>) {
    match full {
        FullOut::Logits(logits) => {
            let ps: Vec<Dist> = logits.iter().map(|l| Dist::of(l, s)).collect();
            let mut n = 0;
            let mut next = None;
            for (i, &d) in drafts.iter().enumerate() {
                let (p, q) = (&ps[i], &qs[i]);
                let accept = match rule {
                    AcceptanceRule::AcceptAll => true,
                    AcceptanceRule::Exact => {
                        let (pd, qd) = (p.prob(d), q.prob(d));
                        rng.random::<f64>() < (pd / qd).min(1.0)
                    }
                };
                if !accept {
                    next = Some(p.residual_draw(q, rng));
                    break;
                }
                n += 1;
            }
            let next = next.unwrap_or_else(|| ps[n].draw(rng));
            (n, next, vec![None; n + 1])
        }
        FullOut::Heads(heads) => {
            let n = match rule {
                AcceptanceRule::Exact => drafts.iter().zip(&heads).take_while(|(d, f)| **d == f.argmax).count(),
                AcceptanceRule::AcceptAll => drafts.len(),
            };
            (n, heads[n].argmax, heads[..=n].iter().map(|f| Some(f.logit_gap)).collect())
        }
    }
}

/// A sampling distribution: the nucleus of `super::nucleus`, normalised.
pub(super) struct Dist {
    probs: Vec<(u32, f64)>,
}

impl Dist {
    pub(super) fn of(logits: &[f32], s: &Sampling) -> Self {
        let (mut probs, mass) = super::nucleus(logits, s);
        probs.iter_mut().for_each(|p| p.1 /= mass);
        Dist { probs }
    }

    fn prob(&self, id: u32) -> f64 {
        self.probs.iter().find(|p| p.0 == id).map_or(0.0, |p| p.1)
    }

    pub(super) fn draw(&self, rng: &mut StdRng) -> u32 {
        draw(&self.probs, rng)
    }

    /// A draw from max(0, self − q), normalised (self when the residual vanishes, which exact
    /// arithmetic rules out after a rejection).
    fn residual_draw(&self, q: &Dist, rng: &mut StdRng) -> u32 {
        // q by id: one pass over each distribution, not one search of q per token of p (which a
        // 128k vocabulary at top-p 1 would make 10¹⁰ steps).
        let qs: std::collections::HashMap<u32, f64> = q.probs.iter().copied().collect();
        let r: Vec<(u32, f64)> = self.probs.iter().map(|&(id, p)| (id, (p - qs.get(&id).copied().unwrap_or(0.0)).max(0.0))).collect();
        if r.iter().map(|x| x.1).sum::<f64>() > 0.0 { draw(&r, rng) } else { self.draw(rng) }
    }
}

/// A draw from unnormalised weights.
fn draw(w: &[(u32, f64)], rng: &mut StdRng) -> u32 {
    let total: f64 = w.iter().map(|x| x.1).sum();
    let r = rng.random::<f64>() * total;
    let mut acc = 0.0;
    for &(id, p) in w {
        acc += p;
        if r < acc {
            return id;
        }
    }
    w.iter().rev().find(|x| x.1 > 0.0).map_or(w[0].0, |x| x.0)
}

/// [`generate_speculative`] under a chosen acceptance rule (tests use the wrong one on purpose).
pub fn generate_speculative_with<B: Speculate>(backend: &mut B, prompt: &[u32], opts: &GenerateOptions, spec: &Speculation, rule: AcceptanceRule) -> Result<SpeculativeGeneration> {
    let layers = backend.num_layers();
    spec.validate(layers, backend.has_classifier())?;
    if opts.mode != ExitMode::Full {
        return Err(Error::setting("--decode", "speculative decoding replaces the exit policy: it runs with full depth's output only"));
    }
    opts.sampling.validate()?;
    super::check_prompt(backend, prompt)?;
    let s = &opts.sampling;
    let sampling = s.temperature != 0.0;
    let mut rng = StdRng::seed_from_u64(s.seed);
    let e = spec.draft_layer;
    backend.reset();
    let eos = |t: u32| opts.eos_ids.contains(&t);

    let start = Instant::now();
    let mut h = backend.embed(prompt)?;
    for l in 1..=layers {
        h = backend.layer(l, &h)?;
    }
    // The first token as plain decoding picks it (the same draw when sampling).
    let (first, first_gap) = if sampling {
        (super::select(&backend.exit_logits(&h)?, s, &mut rng), None)
    } else {
        let f = backend.head(&h)?;
        (f.argmax, Some(f.logit_gap))
    };
    backend.sync()?;
    let prefill_s = start.elapsed().as_secs_f64();
    let trace = |id: u32, gap: Option<f32>, s: f64| TokenTrace { id, exit_layer: layers, confidence: None, layers_s: s, exit_checks_s: 0.0, propagation_s: 0.0, gather_s: 0.0, top2_gap: gap, min_margin: None };
    let mut tokens = vec![trace(first, first_gap, 0.0)];
    let mut accepted_draft = vec![false];
    let mut stats = SpeculationStats::default();

    let stop = loop {
        let x0 = tokens.last().map(|t| t.id).unwrap_or(first);
        if eos(x0) {
            break StopReason::Eos;
        }
        if tokens.len() >= opts.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        if prompt.len() + tokens.len() >= backend.max_positions() {
            break StopReason::MaxPositions;
        }
        let pass = Instant::now();
        let base = backend.cache_len(1);
        // Drafts that can still be emitted and whose positions fit (x0 and the drafts each take one).
        let room = (opts.max_new_tokens - tokens.len()).min(backend.max_positions() - base - 1);
        let k = spec.draft_tokens.min(room.saturating_sub(1));

        // Draft: x0, d1, … through layers 1..E, each drafting the next token, until k drafts,
        // an end-of-sequence draft or (with a draft stop) an unconfident one.
        let t = Instant::now();
        let mut saved = Vec::with_capacity(k + 1);
        let mut drafts: Vec<u32> = Vec::with_capacity(k);
        let mut qs: Vec<Dist> = Vec::new();
        let mut tok = x0;
        let mut confident = true;
        while drafts.len() < k && confident && !(drafts.last().is_some_and(|&d| eos(d))) {
            let d = draft_step(backend, tok, spec, s, &mut rng)?;
            tok = d.token;
            confident = d.confident;
            saved.push(d.h);
            drafts.push(tok);
            qs.extend(d.q);
        }
        backend.sync()?;
        stats.draft_s += t.elapsed().as_secs_f64();
        stats.drafted += drafts.len();

        // Verify [x0, d1, …, dk] with the full model: one multi-token pass.
        let t = Instant::now();
        let verified = match spec.cache {
            DraftCache::Shared => {
                // The last draft (or x0 when nothing was drafted) has not run layers 1..E yet.
                let mut h = backend.embed(&[tok])?;
                for l in 1..=e {
                    h = backend.layer(l, &h)?;
                }
                saved.push(h);
                let mut h = backend.join(&saved)?;
                for l in e + 1..=layers {
                    h = backend.layer(l, &h)?;
                }
                h
            }
            DraftCache::Separate => {
                for l in 1..=e {
                    backend.truncate(l, base)?;
                }
                let mut seq = vec![x0];
                seq.extend(&drafts);
                let mut h = backend.embed(&seq)?;
                for l in 1..=layers {
                    h = backend.layer(l, &h)?;
                }
                h
            }
        };
        let full = if sampling { FullOut::Logits(backend.position_logits(&verified)?) } else { FullOut::Heads(backend.heads(&verified)?) };
        let (n, next, gaps) = verdict(&drafts, &qs, full, s, rule, &mut rng);
        backend.sync()?;
        let verify_s = t.elapsed().as_secs_f64();
        stats.verify_s += verify_s;
        stats.verifies += 1;
        stats.accepted += n;

        let t = Instant::now();
        for l in 1..=layers {
            backend.truncate(l, base + n + 1)?;
        }
        stats.rollback_s += t.elapsed().as_secs_f64();
        let emitted = drafts[..n].iter().map(|&d| (d, true)).chain(std::iter::once((next, false)));
        // The pass's time (draft, verification, rollback), shared by the tokens it emitted.
        let mut pushed = 0;
        for ((id, drafted), gap) in emitted.zip(gaps) {
            tokens.push(trace(id, gap, 0.0));
            accepted_draft.push(drafted);
            pushed += 1;
            if eos(id) || tokens.len() >= opts.max_new_tokens {
                break;
            }
        }
        stats.passes.push(Pass { drafted: drafts.len(), accepted: n, emitted: pushed });
        let pass_s = pass.elapsed().as_secs_f64();
        let from = tokens.len() - pushed;
        tokens[from..].iter_mut().for_each(|t| t.layers_s = pass_s / pushed as f64);
    };
    if opts.max_new_tokens == 0 {
        tokens.clear();
        accepted_draft.clear();
    }
    // Every layer keeps the positions before the last token, as plain decoding leaves them.
    let keep = prompt.len() + tokens.len().saturating_sub(1);
    for l in 1..=layers {
        backend.truncate(l, keep)?;
    }
    Ok(SpeculativeGeneration { generation: Generation { prompt_tokens: prompt.len(), tokens, prefill_s, stop, layer_s: vec![], layer_runs: vec![] }, accepted_draft, stats })
}
