//! Correctness of the early-exit decoder on tiny random-weight models written to temp dirs.

use candle_core::{Device, Tensor};
use exitbench::backend::candle::CandleBackend;
use exitbench::backend::Backend;
use exitbench::decode::{generate, GenerateOptions, Sampling};
use exitbench::exit::{ExitMode, ExitPolicy, Measure, Schedule};
use exitbench::model::{LoadOptions, LoadedModel, Precision};
use exitbench::testkit::{tiny_config, write_tiny_model};
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
    GenerateOptions { mode, max_new_tokens: n, sampling: Sampling::default(), eos_ids: vec![] }
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

#[test]
fn kv_cached_decoding_matches_recomputation() {
    let (_d, m) = tiny(4, 7);
    let mut ids = m.tokenizer.encode(PROMPT).unwrap();
    let mut b = CandleBackend::new(&m.model);
    let mut h = b.embed(&ids).unwrap();
    for l in 1..=4 {
        h = b.layer(l, &h).unwrap();
    }
    let mut logits = b.exit_logits(&h).unwrap();
    let mut worst = 0f32;
    for _ in 0..12 {
        worst = worst.max(max_abs_diff(&logits, &recompute(&m, &ids)));
        let next = exitbench::exit::measure::argmax(&logits);
        ids.push(next);
        let mut h = b.embed(&[next]).unwrap();
        for l in 1..=4 {
            h = b.layer(l, &h).unwrap();
        }
        logits = b.exit_logits(&h).unwrap();
    }
    assert!(worst <= 1e-4, "cached vs recomputed logits differ by {worst}");
    let range = logits.iter().cloned().fold(f32::MIN, f32::max) - logits.iter().cloned().fold(f32::MAX, f32::min);
    assert!(range > 0.1, "logits are degenerate (range {range}); the test would prove nothing");
}

#[test]
fn unreachable_threshold_reproduces_full_depth_tokens() {
    let (_d, m) = tiny(4, 11);
    let prompt = m.tokenizer.encode(PROMPT).unwrap();
    let mut b = CandleBackend::new(&m.model);
    let full = generate(&mut b, &prompt, &opts(ExitMode::Full, 20)).unwrap();
    assert_eq!(full.tokens.len(), 20);
    for measure in [Measure::SoftmaxDiff, Measure::SoftmaxMax, Measure::Saturation] {
        let g = generate(&mut b, &prompt, &opts(dynamic(measure, 1.0), 20)).unwrap();
        assert_eq!(g.ids(), full.ids(), "{measure:?}");
        assert!(g.tokens.iter().all(|t| t.exit_layer == 4));
    }
    // And a threshold of 0 exits every decoded token at the first layer.
    let g = generate(&mut b, &prompt, &opts(dynamic(Measure::SoftmaxDiff, 0.0), 20)).unwrap();
    assert!(g.tokens.iter().skip(1).all(|t| t.exit_layer == 1));
}

#[test]
fn static_exit_equals_truncated_model() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_tiny_model(dir.path(), &tiny_config(4, 300), 5).unwrap();
    let m = load(dir.path(), Precision::F32);
    // The same weights with only the first 2 layers.
    let trunc = tempfile::tempdir().unwrap();
    let mut tcfg = cfg.clone();
    tcfg.num_hidden_layers = 2;
    std::fs::write(trunc.path().join("config.json"), serde_json::to_string(&tcfg).unwrap()).unwrap();
    std::fs::copy(dir.path().join("tokenizer.json"), trunc.path().join("tokenizer.json")).unwrap();
    std::fs::copy(dir.path().join("model.safetensors"), trunc.path().join("model.safetensors")).unwrap();
    let t = load(trunc.path(), Precision::F32);
    let prompt = m.tokenizer.encode(PROMPT).unwrap();
    let s = generate(&mut CandleBackend::new(&m.model), &prompt, &opts(ExitMode::Static { layer: 2 }, 16)).unwrap();
    let f = generate(&mut CandleBackend::new(&t.model), &prompt, &opts(ExitMode::Full, 16)).unwrap();
    assert_eq!(s.ids(), f.ids());
    assert!(s.tokens.iter().all(|t| t.exit_layer == 2));
    // Layers above k are never run: their caches stay empty.
    let mut b = CandleBackend::new(&m.model);
    generate(&mut b, &prompt, &opts(ExitMode::Static { layer: 2 }, 5)).unwrap();
    assert_eq!(b.cache_len(3), 0);
    assert_eq!(b.cache_len(4), 0);
    assert!(b.cache_len(2) > 0);
}

#[test]
fn propagation_fills_every_skipped_layer_with_its_own_projection() {
    let (_d, m) = tiny(4, 3);
    let prompt = m.tokenizer.encode(PROMPT).unwrap();
    let mut b = CandleBackend::new(&m.model);
    let g = generate(&mut b, &prompt, &opts(dynamic(Measure::SoftmaxMax, 0.0), 10)).unwrap();
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
        let (k, v) = b.cache(l).kv().unwrap().unwrap();
        for p in prompt.len()..seq.len() {
            let state = h1.narrow(1, p, 1).unwrap();
            let (pk, pv) = m.model.project_kv(l, &state, p).unwrap();
            let ck = k.narrow(2, p, 1).unwrap();
            let cv = v.narrow(2, p, 1).unwrap();
            let dk = (pk - ck).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let dv = (pv - cv).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(dk < 1e-4 && dv < 1e-4, "layer {l} position {p}: |Δk| {dk}, |Δv| {dv}");
        }
    }
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

#[test]
fn seeded_sampling_is_reproducible_and_oracle_keeps_full_tokens() {
    let (_d, m) = tiny(4, 13);
    let prompt = m.tokenizer.encode(PROMPT).unwrap();
    let mut b = CandleBackend::new(&m.model);
    let mut o = opts(ExitMode::Full, 12);
    o.sampling = Sampling { temperature: 1.0, top_p: 0.9, seed: 42 };
    let a = generate(&mut b, &prompt, &o).unwrap();
    let c = generate(&mut b, &prompt, &o).unwrap();
    assert_eq!(a.ids(), c.ids());
    let full = generate(&mut b, &prompt, &opts(ExitMode::Full, 12)).unwrap();
    let oracle = generate(&mut b, &prompt, &opts(ExitMode::Oracle { min_exit_layer: 1, exit_interval: 1 }, 12)).unwrap();
    assert_eq!(oracle.ids(), full.ids());
    assert_eq!(oracle.tokens.len(), 12);
    let avg = oracle.avg_layers();
    assert!((1.0..=4.0).contains(&avg), "{avg}");
    let by_hand = oracle.tokens[1..].iter().map(|t| t.exit_layer as f64).sum::<f64>() / 11.0;
    assert_eq!(avg, by_hand, "the prefill's token is not averaged");
    let _ = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap();
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
