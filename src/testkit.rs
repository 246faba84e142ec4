//! Tiny random-weight models written to disk in Hugging Face layout, for tests and benches
//! (no network, no shipped weights needed).

use crate::error::{Error, Result};
use crate::model::config::TokenIds;
use crate::model::llama::LlamaModel;
use crate::model::weights::{TensorLoader, WeightSource};
use crate::model::LlamaConfig;
use candle_core::{DType, Device};
use std::collections::HashMap;
use std::path::Path;

/// A small Llama config (GQA 4/2 heads, head_dim 16).
pub fn tiny_config(layers: usize, vocab: usize) -> LlamaConfig {
    LlamaConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        head_dim: None,
        max_position_embeddings: 128,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        vocab_size: vocab,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_id: Some(TokenIds::One(2)),
        architectures: Some(vec!["LlamaForCausalLM".into()]),
    }
}

/// A tiny config exercising the shape options real checkpoints use: tied embeddings (Llama 3.2,
/// Qwen2), `head_dim` ≠ hidden ÷ heads (24 vs 16) and llama3 `rope_scaling` with an original
/// context short enough (32) that the test prompts reach the scaled frequencies.
pub fn tiny_variant_config(layers: usize, vocab: usize) -> LlamaConfig {
    LlamaConfig {
        head_dim: Some(24),
        tie_word_embeddings: true,
        rope_theta: 500000.0,
        rope_scaling: Some(crate::model::config::RopeScaling {
            rope_type: "llama3".into(),
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 32,
        }),
        ..tiny_config(layers, vocab)
    }
}

/// Sentences the tiny tokenizer is trained on.
pub const TINY_CORPUS: &[&str] = &[
    "The Hawks beat the Foxes by 47 runs at Kelmarsh Oval.",
    "Ansel Morrow top-scored with 87 off 64 balls.",
    "Rain delayed the start, and the crowd of 4,200 waited patiently.",
    "The captain said the team played with real courage today.",
    "Quenby Foxes made 198 all out in reply to 245 for 7.",
];

/// Writes config.json, tokenizer.json and model.safetensors (random weights from `seed`) to
/// `dir`, scaling the embedding so that logits are not all alike. Returns the config.
pub fn write_tiny_model(dir: &Path, cfg: &LlamaConfig, seed: u64) -> Result<LlamaConfig> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let texts: Vec<String> = TINY_CORPUS.iter().map(|s| s.to_string()).collect();
    let tok = crate::train::tokenizer::train_tokenizer(&texts, cfg.vocab_size.min(300), &dir.join("tokenizer.json"))?;
    let mut cfg = cfg.clone();
    if tok.get_vocab_size(true) > cfg.vocab_size {
        cfg.vocab_size = tok.get_vocab_size(true);
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).map_err(|e| Error::Internal(e.to_string()))?)
        .map_err(|e| Error::io(dir, e))?;
    let loader = TensorLoader::new(WeightSource::Random { seed }, DType::F32, Device::Cpu, dir);
    let model = LlamaModel::load(&cfg, &loader)?;
    let mut tensors: HashMap<String, candle_core::Tensor> = HashMap::new();
    for (name, t) in model.named_tensors() {
        // Larger weights than the 0.02 default make confidences spread over (0, 1).
        let t = if name.ends_with("norm.weight") { t } else { (t * 10.0)? };
        tensors.insert(name, t);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    Ok(cfg)
}

/// Writes random per-layer exit classifiers (`exit_classifier.safetensors`) for `cfg` into `dir`.
pub fn write_random_classifiers(dir: &Path, cfg: &LlamaConfig, seed: u64) -> Result<()> {
    let loader = TensorLoader::new(WeightSource::Random { seed }, DType::F32, Device::Cpu, dir);
    let mut tensors = HashMap::new();
    for i in 0..cfg.num_hidden_layers {
        let w = crate::model::names::classifier_weight(i);
        let b = crate::model::names::classifier_bias(i);
        tensors.insert(w.clone(), loader.get(&w, &[1, cfg.hidden_size])?);
        tensors.insert(b.clone(), loader.get(&b, &[1])?);
    }
    candle_core::safetensors::save(&tensors, dir.join(crate::model::weights::CLASSIFIER_FILE))?;
    Ok(())
}

/// The embedded default model's shape (6 layers, hidden 256, GQA 8/4, vocab 1024).
pub fn default_shape() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 256,
        intermediate_size: 688,
        num_attention_heads: 8,
        num_key_value_heads: Some(4),
        max_position_embeddings: 512,
        ..tiny_config(6, 1024)
    }
}

/// A backend whose layers and exit heads each cost `cost` (spun, on top of the inner backend's
/// own time) and `factor` × that from the `slow_from`-th layer call on: a machine that slows
/// down mid-run, for scheduling tests. Outputs are the inner backend's.
pub struct Drifting<B> {
    /// The backend doing the work.
    pub inner: B,
    /// Added cost of a layer or an exit head.
    pub cost: std::time::Duration,
    /// Layer calls after which everything costs `factor` times more.
    pub slow_from: u64,
    /// The slowdown.
    pub factor: f64,
    /// Layer calls so far.
    pub calls: u64,
}

impl<B> Drifting<B> {
    fn spin(&self) {
        let d = if self.calls >= self.slow_from { self.cost.mul_f64(self.factor) } else { self.cost };
        let t = std::time::Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    }
}

impl<B: crate::backend::Backend> crate::backend::Backend for Drifting<B> {
    type Hidden = B::Hidden;
    fn num_layers(&self) -> usize {
        self.inner.num_layers()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn max_positions(&self) -> usize {
        self.inner.max_positions()
    }
    fn has_classifier(&self) -> bool {
        self.inner.has_classifier()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn cache_len(&self, layer: usize) -> usize {
        self.inner.cache_len(layer)
    }
    fn embed(&mut self, tokens: &[u32]) -> Result<Self::Hidden> {
        self.inner.embed(tokens)
    }
    fn layer(&mut self, layer: usize, h: &Self::Hidden) -> Result<Self::Hidden> {
        self.calls += 1;
        self.spin();
        self.inner.layer(layer, h)
    }
    fn propagate(&mut self, layer: usize, h: &Self::Hidden) -> Result<()> {
        self.inner.propagate(layer, h)
    }
    fn head(&mut self, h: &Self::Hidden) -> Result<crate::backend::HeadSummary> {
        self.spin();
        self.inner.head(h)
    }
    fn exit_logits(&mut self, h: &Self::Hidden) -> Result<Vec<f32>> {
        self.inner.exit_logits(h)
    }
    fn cosine(&mut self, a: &Self::Hidden, b: &Self::Hidden) -> Result<f32> {
        self.inner.cosine(a, b)
    }
    fn classifier(&mut self, layer: usize, h: &Self::Hidden) -> Result<f32> {
        self.inner.classifier(layer, h)
    }
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
    fn runtime_info(&self) -> crate::backend::RuntimeInfo {
        self.inner.runtime_info()
    }
}

impl<B: crate::backend::Speculate> crate::backend::Speculate for Drifting<B> {
    fn truncate(&mut self, layer: usize, n: usize) -> Result<()> {
        self.inner.truncate(layer, n)
    }
    fn heads(&mut self, h: &Self::Hidden) -> Result<Vec<crate::backend::HeadSummary>> {
        self.spin();
        self.inner.heads(h)
    }
    fn position_logits(&mut self, h: &Self::Hidden) -> Result<Vec<Vec<f32>>> {
        self.spin();
        self.inner.position_logits(h)
    }
    fn join(&mut self, parts: &[Self::Hidden]) -> Result<Self::Hidden> {
        self.inner.join(parts)
    }
}

impl<B: crate::backend::Speculate> crate::backend::Speculate for Counting<B> {
    fn truncate(&mut self, layer: usize, n: usize) -> Result<()> {
        self.inner.truncate(layer, n)
    }
    fn heads(&mut self, h: &Self::Hidden) -> Result<Vec<crate::backend::HeadSummary>> {
        self.work.heads += 1;
        self.inner.heads(h)
    }
    fn position_logits(&mut self, h: &Self::Hidden) -> Result<Vec<Vec<f32>>> {
        self.work.heads += 1;
        self.inner.position_logits(h)
    }
    fn join(&mut self, parts: &[Self::Hidden]) -> Result<Self::Hidden> {
        self.inner.join(parts)
    }
}

impl<B: crate::backend::Batch> crate::backend::Batch for Drifting<B> {
    type Rows = B::Rows;
    fn shares_weight_reads(&self) -> bool {
        self.inner.shares_weight_reads()
    }
    fn start_rows(&mut self, n: usize, capacity: usize) -> Result<()> {
        self.inner.start_rows(n, capacity)
    }
    fn row_cache_len(&self, row: usize, layer: usize) -> usize {
        self.inner.row_cache_len(row, layer)
    }
    fn embed_rows(&mut self, tokens: &[&[u32]]) -> Result<B::Rows> {
        self.inner.embed_rows(tokens)
    }
    fn layer_rows(&mut self, layer: usize, rows: &[usize], h: &B::Rows) -> Result<B::Rows> {
        self.calls += 1;
        self.spin();
        self.inner.layer_rows(layer, rows, h)
    }
    fn last_layer_reads(&self, rows: usize) -> usize {
        self.inner.last_layer_reads(rows)
    }
    fn propagate_rows(&mut self, layer: usize, rows: &[usize], h: &B::Rows) -> Result<()> {
        self.inner.propagate_rows(layer, rows, h)
    }
    fn head_rows(&mut self, h: &B::Rows) -> Result<Vec<crate::backend::HeadSummary>> {
        self.spin();
        self.inner.head_rows(h)
    }
    fn exit_logits_rows(&mut self, h: &B::Rows) -> Result<Vec<Vec<f32>>> {
        self.inner.exit_logits_rows(h)
    }
    fn cosine_rows(&mut self, a: &B::Rows, b: &B::Rows) -> Result<Vec<f32>> {
        self.inner.cosine_rows(a, b)
    }
    fn classifier_rows(&mut self, layer: usize, h: &B::Rows) -> Result<Vec<f32>> {
        self.inner.classifier_rows(layer, h)
    }
    fn pick_rows(&mut self, parts: &[&B::Rows], picks: &[(usize, usize)]) -> Result<B::Rows> {
        self.inner.pick_rows(parts, picks)
    }
    fn truncate_row(&mut self, row: usize, n: usize) -> Result<()> {
        self.inner.truncate_row(row, n)
    }
    fn row_cached_kv(&self, row: usize, layer: usize) -> Result<Option<crate::backend::KvSnapshot>> {
        self.inner.row_cached_kv(row, layer)
    }
}

impl<B: crate::backend::SpeculateRows> crate::backend::SpeculateRows for Drifting<B> {
    fn join_rows(&mut self, parts: &[&B::Rows], picks: &[Vec<(usize, usize)>]) -> Result<B::Rows> {
        self.inner.join_rows(parts, picks)
    }
    fn heads_rows(&mut self, h: &B::Rows) -> Result<Vec<Vec<crate::backend::HeadSummary>>> {
        self.spin();
        self.inner.heads_rows(h)
    }
    fn position_logits_rows(&mut self, h: &B::Rows) -> Result<Vec<Vec<Vec<f32>>>> {
        self.spin();
        self.inner.position_logits_rows(h)
    }
}

/// A backend that counts what the decode loop asks of it (layers, exit heads, classifier checks,
/// cosines, propagations), to check `decode::step_work` against the loop.
pub struct Counting<B> {
    /// The backend doing the work.
    pub inner: B,
    /// What was asked so far.
    pub work: crate::decode::StepWork,
}

impl<B: crate::backend::Backend> crate::backend::Backend for Counting<B> {
    type Hidden = B::Hidden;
    fn num_layers(&self) -> usize {
        self.inner.num_layers()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn max_positions(&self) -> usize {
        self.inner.max_positions()
    }
    fn has_classifier(&self) -> bool {
        self.inner.has_classifier()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn cache_len(&self, layer: usize) -> usize {
        self.inner.cache_len(layer)
    }
    fn embed(&mut self, tokens: &[u32]) -> Result<Self::Hidden> {
        self.inner.embed(tokens)
    }
    fn layer(&mut self, layer: usize, h: &Self::Hidden) -> Result<Self::Hidden> {
        self.work.layers += 1;
        self.inner.layer(layer, h)
    }
    fn propagate(&mut self, layer: usize, h: &Self::Hidden) -> Result<()> {
        self.work.propagations += 1;
        self.inner.propagate(layer, h)
    }
    fn head(&mut self, h: &Self::Hidden) -> Result<crate::backend::HeadSummary> {
        self.work.heads += 1;
        self.inner.head(h)
    }
    fn exit_logits(&mut self, h: &Self::Hidden) -> Result<Vec<f32>> {
        self.work.heads += 1;
        self.inner.exit_logits(h)
    }
    fn cosine(&mut self, a: &Self::Hidden, b: &Self::Hidden) -> Result<f32> {
        self.work.cosines += 1;
        self.inner.cosine(a, b)
    }
    fn classifier(&mut self, layer: usize, h: &Self::Hidden) -> Result<f32> {
        self.work.classifiers += 1;
        self.inner.classifier(layer, h)
    }
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
    fn runtime_info(&self) -> crate::backend::RuntimeInfo {
        self.inner.runtime_info()
    }
}

/// Points this process's ONNX export cache (`EXITBENCH_ONNX_CACHE`) at `dir` the first time it
/// is called; later calls keep the first directory. Tests that open the `ort` backend in-process
/// call it before anything else, so the variable is set once, before their threads use it.
pub fn onnx_cache_once(dir: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| crate::backend::ort::export::set_cache_root(dir));
}
