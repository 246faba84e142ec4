//! Self-speculative decoding beyond greedy: speculative sampling keeps full depth's output
//! distribution (and a wrong acceptance rule is caught), the draft stop is lossless and stops,
//! and `pass_work` (what bytes per token count) is what the loop runs.

use exitbench::backend::candle::CandleBackend;
use exitbench::backend::{BackendKind, DeviceKind, OpenBackend};
use exitbench::decode::speculative::{generate_speculative, generate_speculative_with, pass_work, AcceptanceRule, DraftCache, DraftStop, Speculation};
use exitbench::decode::{generate, GenerateOptions, Sampling, StepWork};
use exitbench::exit::{ExitMode, Measure};
use exitbench::model::{LoadOptions, LoadedModel, ModelFiles, Precision};
use exitbench::testkit::{tiny_config, write_random_classifiers, write_tiny_model, Counting};
use exitbench::with_backend;
use statrs::distribution::{ChiSquared, ContinuousCDF};
use std::collections::HashMap;
use std::path::Path;

const PROMPT: &str = "The Hawks beat the Foxes by 47 runs at Kelmarsh Oval.";

fn opts(n: usize, sampling: Sampling) -> GenerateOptions {
    GenerateOptions { mode: ExitMode::Full, max_new_tokens: n, sampling, eos_ids: vec![], profile_layers: false, time_split: true }
}

fn tiny_model(layers: usize, seed: u64) -> (tempfile::TempDir, LoadedModel, Vec<u32>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_tiny_model(dir.path(), &tiny_config(layers, 300), seed).unwrap();
    write_random_classifiers(dir.path(), &cfg, 3).unwrap();
    let m = LoadedModel::load(dir.path(), &LoadOptions { precision: Precision::F32, device: candle_core::Device::Cpu, random_weights: None }).unwrap();
    let prompt = m.tokenizer.encode(PROMPT).unwrap();
    (dir, m, prompt)
}

/// Two-sample chi-square test of homogeneity between two equally sized samples of categories:
/// categories seen fewer than 10 times in both samples together are pooled into one. Returns
/// (p-value, degrees of freedom).
fn homogeneity_p<K: std::hash::Hash + Eq>(a: &[K], b: &[K]) -> (f64, usize) {
    assert_eq!(a.len(), b.len());
    let mut counts: HashMap<&K, (f64, f64)> = HashMap::new();
    a.iter().for_each(|k| counts.entry(k).or_default().0 += 1.0);
    b.iter().for_each(|k| counts.entry(k).or_default().1 += 1.0);
    let (mut bins, mut pooled) = (Vec::new(), (0.0, 0.0));
    for &(x, y) in counts.values() {
        if x + y >= 10.0 {
            bins.push((x, y));
        } else {
            pooled = (pooled.0 + x, pooled.1 + y);
        }
    }
    if pooled.0 + pooled.1 > 0.0 {
        bins.push(pooled);
    }
    let stat: f64 = bins.iter().map(|(x, y)| (x - y).powi(2) / (x + y)).sum();
    let df = bins.len() - 1;
    (1.0 - ChiSquared::new(df as f64).unwrap().cdf(stat), df)
}

/// Speculative sampling (min(1, p/q), residual resampling) draws the first three tokens from
/// full-depth sampling's distribution: over 5,000 seeds each, the joint distribution of the
/// three tokens passes a chi-square test of homogeneity against full depth's (p > 0.01), for
/// both cache modes. Accepting every draft (a wrong rule) fails the same test (p < 1e-6).
#[test]
fn speculative_sampling_keeps_full_depths_distribution() {
    const SEEDS: u64 = 5_000;
    let (_dir, m, prompt) = tiny_model(4, 3);
    let mut b = CandleBackend::new(&m.model);
    // At temperature 0.3 this random model's three tokens fall into about a hundred categories
    // (0.1 gives 4, 1.0 nearly one per seed, where no test has power) and its layer-1
    // distribution is unlike the last layer's.
    let sampling = |seed| Sampling { temperature: 0.3, top_p: 0.95, seed };
    let full: Vec<Vec<u32>> = (0..SEEDS).map(|seed| generate(&mut b, &prompt, &opts(3, sampling(seed))).unwrap().ids()).collect();
    let spec = |cache| Speculation { draft_layer: 1, draft_tokens: 3, cache, stop: None };
    let run = |b: &mut CandleBackend, cache, rule| -> (Vec<Vec<u32>>, usize, usize) {
        let (mut drafted, mut accepted) = (0, 0);
        // Seeds disjoint from full depth's, so the two samples are independent.
        let ids = (SEEDS..2 * SEEDS)
            .map(|seed| {
                let g = generate_speculative_with(b, &prompt, &opts(3, sampling(seed)), &spec(cache), rule).unwrap();
                drafted += g.stats.drafted;
                accepted += g.stats.accepted;
                g.generation.ids()
            })
            .collect();
        (ids, drafted, accepted)
    };
    for cache in [DraftCache::Shared, DraftCache::Separate] {
        let (ids, drafted, accepted) = run(&mut b, cache, AcceptanceRule::Exact);
        let (p, df) = homogeneity_p(&full, &ids);
        eprintln!("{cache}: p = {p:.4} over {df} degrees of freedom; {accepted} of {drafted} drafts accepted");
        assert!(p > 0.01, "{cache}: speculative sampling's tokens differ from full depth's (p = {p}, df {df})");
        assert!(accepted > 0 && accepted < drafted, "{cache}: {accepted} of {drafted}: both outcomes must occur");
        assert!(df >= 5, "{df}: too few categories for the test to mean anything");
    }
    let (wrong, _, _) = run(&mut b, DraftCache::Shared, AcceptanceRule::AcceptAll);
    let (p, df) = homogeneity_p(&full, &wrong);
    eprintln!("accept-all: p = {p:.3e} over {df} degrees of freedom");
    assert!(p < 1e-6, "accepting every draft went unnoticed (p = {p})");
}

/// ONNX Runtime's speculative sampling (its per-position logits) draws what candle's does for
/// the same seeds.
#[test]
fn ort_speculative_sampling_equals_candles() {
    let (dir, m, prompt) = tiny_model(4, 3);
    exitbench::testkit::onnx_cache_once(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx-cache"));
    let files = ModelFiles::open(dir.path(), None).unwrap();
    let mut ort: OpenBackend = exitbench::backend::open(BackendKind::Ort, &files, DeviceKind::Cpu, Precision::F32, 1).unwrap_or_else(|e| panic!("ONNX Runtime backend: {e}"));
    let mut candle = CandleBackend::new(&m.model);
    let mut accepted = 0;
    for seed in 0..12 {
        for cache in [DraftCache::Shared, DraftCache::Separate] {
            let o = opts(12, Sampling { temperature: 0.05, top_p: 0.95, seed });
            let spec = Speculation { draft_layer: 2, draft_tokens: 3, cache, stop: None };
            let want = generate_speculative(&mut candle, &prompt, &o, &spec).unwrap();
            let got = with_backend!(&mut ort, b => generate_speculative(b, &prompt, &o, &spec)).unwrap();
            assert_eq!(got.generation.ids(), want.generation.ids(), "seed {seed} {cache}");
            assert_eq!(got.stats.passes, want.stats.passes, "seed {seed} {cache}");
            accepted += want.stats.accepted;
        }
    }
    assert!(accepted > 0);
}

/// A draft stop never changes greedy output; at threshold 0 it never stops (the passes equal
/// those without a stop) and at threshold 1 every pass drafts at most one token; in between it
/// drafts fewer tokens than without. For every measure, both cache modes.
#[test]
fn draft_stop_is_lossless_and_stops_drafting() {
    let (_dir, m, prompt) = tiny_model(4, 11);
    let mut b = CandleBackend::new(&m.model);
    let o = opts(24, Sampling::default());
    let full = generate(&mut b, &prompt, &o).unwrap().ids();
    for cache in [DraftCache::Shared, DraftCache::Separate] {
        let plain = Speculation { draft_layer: 2, draft_tokens: 6, cache, stop: None };
        let never = generate_speculative(&mut b, &prompt, &o, &plain).unwrap();
        assert_eq!(never.generation.ids(), full);
        for &measure in Measure::ALL {
            let with = |threshold| Speculation { stop: Some(DraftStop { measure, threshold }), ..plain };
            let zero = generate_speculative(&mut b, &prompt, &o, &with(0.0)).unwrap();
            assert_eq!(zero.generation.ids(), full, "{measure} at 0");
            assert_eq!(zero.stats.passes, never.stats.passes, "{measure} at 0 stopped a draft");
            let one = generate_speculative(&mut b, &prompt, &o, &with(1.0)).unwrap();
            assert_eq!(one.generation.ids(), full, "{measure} at 1");
            assert!(one.stats.passes.iter().all(|p| p.drafted <= 1), "{measure} at 1: {:?}", one.stats.passes);
            assert!(one.stats.drafted < never.stats.drafted, "{measure} at 1");
        }
    }
}

/// `speculative::pass_work` (what `decode_bytes` counts for speculative cells) is what the loop
/// runs: a counting backend tallies the calls, greedy and sampling, both cache modes, with and
/// without each measure's draft stop.
#[test]
fn pass_work_describes_what_the_speculative_loop_runs() {
    let (_dir, m, prompt) = tiny_model(4, 5);
    let layers = 4;
    let mut stops = vec![None];
    stops.extend(Measure::ALL.iter().map(|&measure| Some(DraftStop { measure, threshold: 0.3 })));
    for cache in [DraftCache::Shared, DraftCache::Separate] {
        for &stop in &stops {
            for temperature in [0.0, 0.8] {
                let spec = Speculation { draft_layer: 2, draft_tokens: 4, cache, stop };
                let mut b = Counting { inner: CandleBackend::new(&m.model), work: StepWork::default() };
                let g = generate_speculative(&mut b, &prompt, &opts(20, Sampling { temperature, top_p: 0.9, seed: 2 }), &spec).unwrap();
                // The prefill: every layer and one head for the first token.
                let mut want = StepWork { layers, heads: 1, ..Default::default() };
                for p in &g.stats.passes {
                    let [draft, verify] = pass_work(&spec, layers, p.drafted);
                    want += draft;
                    want += verify;
                }
                assert_eq!(b.work, want, "{spec:?} at temperature {temperature}");
                assert_eq!(g.stats.passes.iter().map(|p| p.emitted).sum::<usize>(), g.generation.tokens.len() - 1);
                assert_eq!(g.stats.passes.iter().map(|p| p.drafted).sum::<usize>(), g.stats.drafted);
                // The per-token flags reports draw are the ones the loop recorded.
                assert_eq!(exitbench::decode::speculative::Pass::accepted_flags(&g.stats.passes), g.accepted_draft[1..].to_vec());
            }
        }
    }
}
