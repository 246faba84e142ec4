//! Correctness of the early-exit decoder on tiny random-weight models written to temp dirs.

use candle_core::{Device, Tensor};
use exitbench::backend::candle::CandleBackend;
use exitbench::backend::{Backend, BackendKind, DeviceKind, Inspect, OpenBackend};
use exitbench::decode::{generate, GenerateOptions, Sampling};
use exitbench::exit::{ExitMode, ExitPolicy, Measure, Schedule};
use exitbench::model::{LlamaConfig, LoadOptions, LoadedModel, ModelFiles, Precision};
use exitbench::testkit::{tiny_config, tiny_variant_config, write_tiny_model};
use exitbench::with_backend;
use std::path::Path;

const PROMPT: &str = "The Hawks beat the Foxes by 47 runs at Kelmarsh Oval.";

fn load(dir: &Path, p: Precision) -> LoadedModel {
    LoadedModel::load(dir, &LoadOptions { precision: p, device: Device::Cpu, random_weights: None }).unwrap()
}

fn tiny(layers: usize, seed: u64) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_config(layers, 300), seed).unwrap();
    let m = load(dir.path(), Precision::F32);
    (dir, m)
}

fn opts(mode: ExitMode, n: usize) -> GenerateOptions {
    GenerateOptions { mode, max_new_tokens: n, sampling: Sampling::default(), eos_ids: vec![], profile_layers: false, time_split: true }
}

fn dynamic(measure: Measure, threshold: f64) -> ExitMode {
    ExitMode::Dynamic(ExitPolicy { measure, threshold, schedule: Schedule::Fixed, min_exit_layer: 1, exit_interval: 1 })
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Logits of the last position recomputed from scratch (no cache) for `ids`.
fn recompute(m: &LoadedModel, ids: &[u32]) -> Vec<f32> {
    let mut h = m.model.embed(ids).unwrap();
    for l in 1..=m.model.num_layers() {
        h = m.model.layer_forward(l, &h, 0, None).unwrap();
    }
    m.model.head_last(&h).unwrap()
}

// ---- The conformance suite: properties every backend must have, on two model shapes ----

/// Builds a backend under test for a model directory.
type Opener = fn(&Path) -> OpenBackend;

fn open_candle(dir: &Path) -> OpenBackend {
    let files = ModelFiles::open(dir, None).unwrap();
    exitbench::backend::open(BackendKind::Candle, &files, DeviceKind::Cpu, Precision::F32, 1).unwrap()
}

/// A tiny model of either shape in a temp dir: `variant` = tied embeddings, head_dim ≠ d/heads,
/// llama3 rope scaling.
fn model_dir(variant: bool, layers: usize, seed: u64) -> (tempfile::TempDir, LlamaConfig) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = if variant { tiny_variant_config(layers, 300) } else { tiny_config(layers, 300) };
    let cfg = write_tiny_model(dir.path(), &cfg, seed).unwrap();
    (dir, cfg)
}

fn prompt_of(dir: &Path) -> Vec<u32> {
    ModelFiles::open(dir, None).unwrap().tokenizer.encode(PROMPT).unwrap()
}

/// Full-depth logits of the last position of `ids`, from empty caches in one prefill.
fn prefill_logits<B: Backend>(b: &mut B, ids: &[u32]) -> Vec<f32> {
    b.reset();
    let mut h = b.embed(ids).unwrap();
    for l in 1..=b.num_layers() {
        h = b.layer(l, &h).unwrap();
    }
    b.exit_logits(&h).unwrap()
}

fn cached_decoding_matches_recomputation(open: Opener, variant: bool) {
    let (dir, _) = model_dir(variant, 4, 7);
    let mut ids = prompt_of(dir.path());
    let (mut inc, mut fresh) = (open(dir.path()), open(dir.path()));
    with_backend!(&mut inc, b => with_backend!(&mut fresh, r => {
        let mut logits = prefill_logits(b, &ids);
        let mut worst = 0f32;
        for _ in 0..12 {
            worst = worst.max(max_abs_diff(&logits, &prefill_logits(r, &ids)));
            let next = exitbench::head::argmax(&logits);
            ids.push(next);
            let mut h = b.embed(&[next]).unwrap();
            for l in 1..=4 {
                h = b.layer(l, &h).unwrap();
            }
            logits = b.exit_logits(&h).unwrap();
            // The device-side reductions agree with the host logits.
            let s = b.head(&h).unwrap();
            assert_eq!(s.argmax, exitbench::head::argmax(&logits));
        }
        assert!(worst <= 1e-4, "cached vs recomputed logits differ by {worst}");
        let range = logits.iter().cloned().fold(f32::MIN, f32::max) - logits.iter().cloned().fold(f32::MAX, f32::min);
        assert!(range > 0.1, "logits are degenerate (range {range}); the test would prove nothing");
    }));
}

fn unreachable_threshold_reproduces_full_depth_tokens(open: Opener, variant: bool) {
    let (dir, _) = model_dir(variant, 4, 11);
    let prompt = prompt_of(dir.path());
    with_backend!(&mut open(dir.path()), b => {
        let full = generate(b, &prompt, &opts(ExitMode::Full, 20)).unwrap();
        assert_eq!(full.tokens.len(), 20);
        for measure in [Measure::SoftmaxDiff, Measure::SoftmaxMax, Measure::Saturation] {
            let g = generate(b, &prompt, &opts(dynamic(measure, 1.0), 20)).unwrap();
            assert_eq!(g.ids(), full.ids(), "{measure:?}");
            assert!(g.tokens.iter().all(|t| t.exit_layer == 4));
        }
        // And a threshold of 0 exits every decoded token at the first layer.
        let g = generate(b, &prompt, &opts(dynamic(Measure::SoftmaxDiff, 0.0), 20)).unwrap();
        assert!(g.tokens.iter().skip(1).all(|t| t.exit_layer == 1));
    });
}

fn static_exit_equals_truncated_model(open: Opener, variant: bool) {
    let (dir, cfg) = model_dir(variant, 4, 5);
    // The same weights with only the first 2 layers.
    let trunc = tempfile::tempdir().unwrap();
    let mut tcfg = cfg.clone();
    tcfg.num_hidden_layers = 2;
    std::fs::write(trunc.path().join("config.json"), serde_json::to_string(&tcfg).unwrap()).unwrap();
    std::fs::copy(dir.path().join("tokenizer.json"), trunc.path().join("tokenizer.json")).unwrap();
    // Only the first 2 layers' tensors: weights and config must describe the same model.
    let all = candle_core::safetensors::load(dir.path().join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let kept: std::collections::HashMap<String, candle_core::Tensor> =
        all.into_iter().filter(|(n, _)| !(n.starts_with("model.layers.2.") || n.starts_with("model.layers.3."))).collect();
    candle_core::safetensors::save(&kept, trunc.path().join("model.safetensors")).unwrap();
    let prompt = prompt_of(dir.path());
    with_backend!(&mut open(dir.path()), b => with_backend!(&mut open(trunc.path()), t => {
        let s = generate(b, &prompt, &opts(ExitMode::Static { layer: 2 }, 16)).unwrap();
        let f = generate(t, &prompt, &opts(ExitMode::Full, 16)).unwrap();
        assert_eq!(s.ids(), f.ids());
        assert!(s.tokens.iter().all(|t| t.exit_layer == 2));
        // Layers above k are never run: their caches stay empty.
        generate(b, &prompt, &opts(ExitMode::Static { layer: 2 }, 5)).unwrap();
        assert_eq!(b.cache_len(3), 0);
        assert_eq!(b.cache_len(4), 0);
        assert!(b.cache_len(2) > 0);
    }));
}

fn propagation_fills_every_skipped_layer_with_its_own_projection(open: Opener, variant: bool) {
    let (dir, cfg) = model_dir(variant, 4, 3);
    let prompt = prompt_of(dir.path());
    // The reference: candle's own layer 1 and k/v projections, computed without any cache.
    let m = load(dir.path(), Precision::F32);
    let (kvh, hd) = (cfg.kv_heads(), cfg.head_dim());
    with_backend!(&mut open(dir.path()), b => {
        let g = generate(b, &prompt, &opts(dynamic(Measure::SoftmaxMax, 0.0), 10)).unwrap();
        assert!(g.tokens.iter().skip(1).all(|t| t.exit_layer == 1));
        // Every layer's cache has the same length: prompt + all generated tokens but the last.
        let want = prompt.len() + g.tokens.len() - 1;
        for l in 1..=4 {
            assert_eq!(b.cache_len(l), want, "layer {l}");
        }
        // Layer 1 is computed for every position, so its outputs over the whole sequence are the
        // exited states; propagated entries must equal each layer's own norm + k/v projection of them.
        let seq: Vec<u32> = prompt.iter().copied().chain(g.ids()[..g.tokens.len() - 1].iter().copied()).collect();
        let h1 = m.model.layer_forward(1, &m.model.embed(&seq).unwrap(), 0, None).unwrap();
        for l in 2..=4 {
            let kv = b.cached_kv(l).unwrap().unwrap();
            assert_eq!(kv.len, want);
            for p in prompt.len()..seq.len() {
                let (pk, pv) = m.model.project_kv(l, &h1.narrow(1, p, 1).unwrap(), p).unwrap();
                let (pk, pv) = (pk.flatten_all().unwrap().to_vec1::<f32>().unwrap(), pv.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                let at = |x: &[f32], h: usize| x[(h * kv.len + p) * hd..(h * kv.len + p + 1) * hd].to_vec();
                for h in 0..kvh {
                    let dk = max_abs_diff(&at(&kv.k, h), &pk[h * hd..(h + 1) * hd]);
                    let dv = max_abs_diff(&at(&kv.v, h), &pv[h * hd..(h + 1) * hd]);
                    assert!(dk < 1e-4 && dv < 1e-4, "layer {l} position {p} head {h}: |Δk| {dk}, |Δv| {dv}");
                }
            }
        }
    });
}

fn seeded_sampling_is_reproducible_and_oracle_keeps_full_tokens(open: Opener, variant: bool) {
    let (dir, _) = model_dir(variant, 4, 13);
    let prompt = prompt_of(dir.path());
    with_backend!(&mut open(dir.path()), b => {
        let mut o = opts(ExitMode::Full, 12);
        o.sampling = Sampling { temperature: 1.0, top_p: 0.9, seed: 42 };
        let a = generate(b, &prompt, &o).unwrap();
        let c = generate(b, &prompt, &o).unwrap();
        assert_eq!(a.ids(), c.ids());
        let full = generate(b, &prompt, &opts(ExitMode::Full, 12)).unwrap();
        let oracle = generate(b, &prompt, &opts(ExitMode::Oracle { min_exit_layer: 1, exit_interval: 1 }, 12)).unwrap();
        assert_eq!(oracle.ids(), full.ids());
        assert_eq!(oracle.tokens.len(), 12);
        let avg = oracle.avg_layers();
        assert!((1.0..=4.0).contains(&avg), "{avg}");
        let by_hand = oracle.tokens[1..].iter().map(|t| t.exit_layer as f64).sum::<f64>() / 11.0;
        assert_eq!(avg, by_hand, "the prefill's token is not averaged");
    });
}

/// Self-speculative greedy decoding emits full depth's tokens for every draft layer E in 1..L−1,
/// k ∈ {1, 3, 8} and both cache modes; some drafts are rejected (so rollback is exercised) and
/// some accepted; afterwards every layer's cache equals plain full-depth decoding's.
fn speculative_greedy_equals_full_depth_and_rolls_back_exactly(open: Opener, variant: bool) {
    use exitbench::backend::Inspect;
    use exitbench::decode::speculative::{generate_speculative, DraftCache, Speculation};
    let layers = 4;
    let (dir, _) = model_dir(variant, layers, 13);
    let prompt = prompt_of(dir.path());
    with_backend!(&mut open(dir.path()), b => {
        let full = generate(b, &prompt, &opts(ExitMode::Full, 24)).unwrap();
        let reference: Vec<_> = (1..=layers).map(|l| b.cached_kv(l).unwrap().unwrap()).collect();
        let (mut drafted, mut accepted) = (0, 0);
        for draft_layer in 1..layers {
            for draft_tokens in [1, 3, 8] {
                for cache in [DraftCache::Shared, DraftCache::Separate] {
                    let spec = Speculation { draft_layer, draft_tokens, cache, stop: None };
                    let g = generate_speculative(b, &prompt, &opts(ExitMode::Full, 24), &spec).unwrap();
                    assert_eq!(g.generation.ids(), full.ids(), "{spec:?}");
                    assert!(g.accepted_draft.iter().filter(|&&a| a).count() <= g.stats.accepted, "{spec:?}");
                    drafted += g.stats.drafted;
                    accepted += g.stats.accepted;
                    for l in 1..=layers {
                        let (got, want) = (b.cached_kv(l).unwrap().unwrap(), &reference[l - 1]);
                        assert_eq!(got.len, want.len, "{spec:?} layer {l}: cached positions");
                        assert!(max_abs_diff(&got.k, &want.k) <= 1e-4 && max_abs_diff(&got.v, &want.v) <= 1e-4, "{spec:?} layer {l}: cache differs after rollback");
                    }
                }
            }
        }
        assert!(accepted > 0 && accepted < drafted, "drafts accepted {accepted} of {drafted}: both outcomes must occur");
    });
}

/// Instantiates every conformance property for one backend on both model shapes.
macro_rules! conformance {
    ($name:ident, $open:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn speculative_greedy_equals_full_depth_and_rolls_back_exactly() {
                for v in [false, true] {
                    super::speculative_greedy_equals_full_depth_and_rolls_back_exactly($open, v);
                }
            }
            #[test]
            fn cached_decoding_matches_recomputation() {
                for v in [false, true] {
                    super::cached_decoding_matches_recomputation($open, v);
                }
            }
            #[test]
            fn unreachable_threshold_reproduces_full_depth_tokens() {
                for v in [false, true] {
                    super::unreachable_threshold_reproduces_full_depth_tokens($open, v);
                }
            }
            #[test]
            fn static_exit_equals_truncated_model() {
                for v in [false, true] {
                    super::static_exit_equals_truncated_model($open, v);
                }
            }
            #[test]
            fn propagation_fills_every_skipped_layer_with_its_own_projection() {
                for v in [false, true] {
                    super::propagation_fills_every_skipped_layer_with_its_own_projection($open, v);
                }
            }
            #[test]
            fn seeded_sampling_is_reproducible_and_oracle_keeps_full_tokens() {
                for v in [false, true] {
                    super::seeded_sampling_is_reproducible_and_oracle_keeps_full_tokens($open, v);
                }
            }
        }
    };
}

fn open_ort(dir: &Path) -> OpenBackend {
    exitbench::testkit::onnx_cache_once(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx-cache"));
    let files = ModelFiles::open(dir, None).unwrap();
    // A test that cannot find ONNX Runtime fails (CI installs it with scripts/setup-venv.sh).
    exitbench::backend::open(BackendKind::Ort, &files, DeviceKind::Cpu, Precision::F32, 1).unwrap_or_else(|e| panic!("ONNX Runtime backend: {e}"))
}

conformance!(candle, open_candle);
conformance!(ort, open_ort);

#[test]
fn the_variant_shape_is_what_it_claims() {
    // Guards the suite's second shape: if these options stopped mattering, the suite would
    // silently test the plain shape twice.
    let (dir, cfg) = model_dir(true, 2, 21);
    assert!(cfg.tie_word_embeddings && cfg.head_dim() != cfg.hidden_size / cfg.num_attention_heads && cfg.rope_scaling.is_some());
    let names: Vec<String> = candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap().into_keys().collect();
    assert!(!names.iter().any(|n| n == "lm_head.weight"), "tied: no separate LM head");
    let scaled = prompt_logits(&load(dir.path(), Precision::F32));
    let mut plain = cfg.clone();
    plain.rope_scaling = None;
    std::fs::write(dir.path().join("config.json"), serde_json::to_string(&plain).unwrap()).unwrap();
    let unscaled = prompt_logits(&load(dir.path(), Precision::F32));
    assert!(max_abs_diff(&scaled, &unscaled) > 1e-4, "rope scaling had no effect on the test prompt");
}

#[test]
fn half_precision_logits_stay_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_config(4, 300), 9).unwrap();
    let m32 = load(dir.path(), Precision::F32);
    let prompt = m32.tokenizer.encode(PROMPT).unwrap();
    let logits = |m: &LoadedModel| {
        let mut b = CandleBackend::new(&m.model);
        let mut h = b.embed(&prompt).unwrap();
        for l in 1..=4 {
            h = b.layer(l, &h).unwrap();
        }
        b.exit_logits(&h).unwrap()
    };
    let base = logits(&m32);
    let range = base.iter().cloned().fold(f32::MIN, f32::max) - base.iter().cloned().fold(f32::MAX, f32::min);
    assert!(range > 0.1);
    for (p, tol) in [(Precision::F16, 0.02), (Precision::Bf16, 0.05)] {
        let l = logits(&load(dir.path(), p));
        assert!(l.iter().all(|x| x.is_finite()), "{p:?} produced non-finite logits");
        let d = max_abs_diff(&l, &base);
        assert!(d <= tol * range, "{p:?}: max |Δ| {d} > {tol} × range {range}");
    }
}

/// Logits of the prompt's last position at full depth.
fn prompt_logits(m: &LoadedModel) -> Vec<f32> {
    let ids = m.tokenizer.encode(PROMPT).unwrap();
    recompute(m, &ids)
}

#[test]
fn sharded_weights_load_like_a_single_file() {
    let (dir, m) = tiny(2, 17);
    let single = prompt_logits(&m);
    let path = dir.path().join("model.safetensors");
    let all = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let (mut a, mut b) = (std::collections::HashMap::new(), std::collections::HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, (name, t)) in all.into_iter().enumerate() {
        let file = if i % 2 == 0 { "model-00001-of-00002.safetensors" } else { "model-00002-of-00002.safetensors" };
        map.insert(name.clone(), file.into());
        if i % 2 == 0 { a.insert(name, t) } else { b.insert(name, t) };
    }
    candle_core::safetensors::save(&a, dir.path().join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    std::fs::write(dir.path().join("model.safetensors.index.json"), serde_json::json!({"metadata": {}, "weight_map": map}).to_string()).unwrap();
    std::fs::remove_file(&path).unwrap();
    let sharded = load(dir.path(), Precision::F32);
    assert_eq!(prompt_logits(&sharded), single);
    // A shard listed in the index but absent is named.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = LoadedModel::load(dir.path(), &LoadOptions { precision: Precision::F32, device: Device::Cpu, random_weights: None }).err().unwrap();
    assert!(err.to_string().contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn qwen2_style_qkv_biases_are_applied_when_present() {
    let (dir, m) = tiny(2, 19);
    let plain = prompt_logits(&m);
    let path = dir.path().join("model.safetensors");
    let mut all = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    for l in 0..2 {
        for (p, n) in [("q_proj", 64), ("k_proj", 32), ("v_proj", 32)] {
            let b = Tensor::full(0.5f32, n, &Device::Cpu).unwrap();
            all.insert(format!("model.layers.{l}.self_attn.{p}.bias"), b);
        }
    }
    candle_core::safetensors::save(&all, &path).unwrap();
    let biased = load(dir.path(), Precision::F32);
    let with_bias = prompt_logits(&biased);
    assert!(max_abs_diff(&plain, &with_bias) > 1e-3, "biases had no effect");
    // A bias of the wrong shape is reported, not ignored.
    all.insert("model.layers.0.self_attn.q_proj.bias".into(), Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&all, &path).unwrap();
    let err = LoadedModel::load(dir.path(), &LoadOptions { precision: Precision::F32, device: Device::Cpu, random_weights: None }).err().unwrap();
    assert!(err.to_string().contains("q_proj.bias"), "{err}");
}

#[test]
fn random_weights_need_only_config_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), serde_json::to_string(&tiny_config(3, 256)).unwrap()).unwrap();
    let o = LoadOptions { precision: Precision::F32, device: Device::Cpu, random_weights: Some(4) };
    let a = LoadedModel::load(dir.path(), &o).unwrap();
    let b = LoadedModel::load(dir.path(), &o).unwrap();
    let ids = a.tokenizer.encode("abc").unwrap();
    assert_eq!(recompute(&a, &ids), recompute(&b, &ids), "same seed, same weights");
    assert_eq!(a.model.num_layers(), 3);
}

/// `decode::step_work` (what `decode_bytes` counts) is what the decode loop really runs, for
/// every mode and measure, greedy and sampling: a counting backend tallies the calls.
#[test]
fn step_work_describes_what_the_decode_loop_runs() {
    use exitbench::decode::{step_work, StepWork};
    use exitbench::testkit::{write_random_classifiers, Counting};
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_tiny_model(dir.path(), &tiny_config(4, 300), 7).unwrap();
    write_random_classifiers(dir.path(), &cfg, 3).unwrap();
    let m = load(dir.path(), Precision::F32);
    let layers = m.model.num_layers();
    let prompt = m.tokenizer.encode(PROMPT).unwrap();
    let knobs = |measure, threshold, min_exit_layer, exit_interval| ExitMode::Dynamic(ExitPolicy { measure, threshold, schedule: Schedule::Fixed, min_exit_layer, exit_interval });
    let mut modes = vec![ExitMode::Full, ExitMode::Static { layer: 2 }, ExitMode::Oracle { min_exit_layer: 1, exit_interval: 1 }, ExitMode::Oracle { min_exit_layer: 2, exit_interval: 2 }];
    for &measure in Measure::ALL {
        for threshold in [0.0, 0.3, 0.6, 1.0] {
            modes.push(knobs(measure, threshold, 1, 1));
        }
        modes.push(knobs(measure, 0.3, 2, 2));
    }
    let mut exits_seen = std::collections::BTreeSet::new();
    for mode in modes {
        for temperature in [0.0, 0.8] {
            let mut o = opts(mode, 12);
            o.sampling = Sampling { temperature, top_p: 0.9, seed: 5 };
            let mut b = Counting { inner: CandleBackend::new(&m.model), work: StepWork::default() };
            let g = generate(&mut b, &prompt, &o).unwrap();
            // The prefill: every layer up to the mode's depth and one head for the first token.
            let mut want = StepWork { layers: mode.depth(layers), heads: 1, ..Default::default() };
            for t in &g.tokens[1..] {
                want += step_work(&mode, t.exit_layer, layers);
                exits_seen.insert(t.exit_layer);
            }
            assert_eq!(b.work, want, "{mode:?} at temperature {temperature}");
        }
    }
    // Tokens exited at intermediate layers and at the last one, so both branches were checked.
    assert!(exits_seen.contains(&1) && exits_seen.contains(&layers) && exits_seen.len() > 2, "{exits_seen:?}");
}
