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

use super::{Generation, GenerateOptions, StopReason, TokenTrace};
use crate::backend::Speculate;
use crate::error::{Error, Result};
use crate::exit::ExitMode;
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

/// A self-speculative setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Speculation {
    /// Layers the draft runs (1..L−1).
    pub draft_layer: usize,
    /// The most tokens drafted per verification.
    pub draft_tokens: usize,
    /// Where the draft's cache entries live.
    pub cache: DraftCache,
}

impl Speculation {
    /// Checks the setting against a model of `layers` layers.
    pub fn validate(&self, layers: usize) -> Result<()> {
        if self.draft_layer == 0 || self.draft_layer >= layers {
            return Err(Error::setting("--draft-layer", format!("{} is outside 1..={} (the draft must stop below the last of {layers} layers)", self.draft_layer, layers.saturating_sub(1))));
        }
        if self.draft_tokens == 0 || self.draft_tokens > MAX_DRAFT_TOKENS {
            return Err(Error::setting("--draft-tokens", format!("{} is outside 1..={MAX_DRAFT_TOKENS}", self.draft_tokens)));
        }
        Ok(())
    }
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

/// Generates greedily from `prompt` with self-speculative decoding (`opts.mode` must be full
/// depth: the output is the full model's). Caches are reset first; at the end every layer holds
/// exactly the positions before the last generated token, as after [`super::generate`].
pub fn generate_speculative<B: Speculate>(backend: &mut B, prompt: &[u32], opts: &GenerateOptions, spec: &Speculation) -> Result<SpeculativeGeneration> {
    let layers = backend.num_layers();
    spec.validate(layers)?;
    if opts.mode != ExitMode::Full {
        return Err(Error::setting("--decode", "speculative decoding replaces the exit policy: it runs with full depth's output only"));
    }
    if opts.sampling.temperature != 0.0 {
        return Err(Error::Unsupported("speculative decoding with sampling (the min(1, p/q) acceptance rule) is not implemented yet: use greedy decoding".into()));
    }
    super::check_prompt(backend, prompt)?;
    let e = spec.draft_layer;
    backend.reset();
    let eos = |t: u32| opts.eos_ids.contains(&t);

    let start = Instant::now();
    let mut h = backend.embed(prompt)?;
    for l in 1..=layers {
        h = backend.layer(l, &h)?;
    }
    let first = backend.head(&h)?;
    backend.sync()?;
    let prefill_s = start.elapsed().as_secs_f64();
    let trace = |id: u32, gap: Option<f32>, s: f64| TokenTrace { id, exit_layer: layers, confidence: None, layers_s: s, exit_checks_s: 0.0, propagation_s: 0.0, gather_s: 0.0, top2_gap: gap, min_margin: None };
    let mut tokens = vec![trace(first.argmax, Some(first.logit_gap), 0.0)];
    let mut accepted_draft = vec![false];
    let mut stats = SpeculationStats::default();

    let stop = loop {
        let x0 = tokens.last().map(|t| t.id).unwrap_or(first.argmax);
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

        // Draft: x0, d1, … through layers 1..E, each drafting the next token.
        let t = Instant::now();
        let mut saved = Vec::with_capacity(k + 1);
        let mut drafts: Vec<u32> = Vec::with_capacity(k);
        let mut tok = x0;
        while drafts.len() < k && !(drafts.last().is_some_and(|&d| eos(d))) {
            let mut h = backend.embed(&[tok])?;
            for l in 1..=e {
                h = backend.layer(l, &h)?;
            }
            tok = backend.head(&h)?.argmax;
            saved.push(h);
            drafts.push(tok);
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
        let heads = backend.heads(&verified)?;
        backend.sync()?;
        let verify_s = t.elapsed().as_secs_f64();
        stats.verify_s += verify_s;
        stats.verifies += 1;

        // The longest agreeing prefix, then the full model's own next token.
        let n = drafts.iter().zip(&heads).take_while(|(d, f)| **d == f.argmax).count();
        stats.accepted += n;
        let t = Instant::now();
        for l in 1..=layers {
            backend.truncate(l, base + n + 1)?;
        }
        stats.rollback_s += t.elapsed().as_secs_f64();
        let emitted: Vec<(u32, bool, Option<f32>)> = drafts[..n].iter().zip(&heads).map(|(&d, f)| (d, true, Some(f.logit_gap))).chain(std::iter::once((heads[n].argmax, false, Some(heads[n].logit_gap)))).collect();
        // The pass's time (draft, verification, rollback), shared by the tokens it emitted.
        let mut pushed = 0;
        for (id, drafted, gap) in emitted {
            tokens.push(trace(id, gap, 0.0));
            accepted_draft.push(drafted);
            pushed += 1;
            if eos(id) || tokens.len() >= opts.max_new_tokens {
                break;
            }
        }
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
