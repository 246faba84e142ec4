//! The candle backend: runs `LlamaModel` layer by layer on a candle device with one KV cache per
//! layer.

use super::Backend;
use crate::error::Result;
use crate::model::llama::{LayerCache, LlamaModel};
use candle_core::{DType, Tensor};

/// candle runtime over a loaded model.
#[derive(Clone)]
pub struct CandleBackend<'m> {
    model: &'m LlamaModel,
    caches: Vec<LayerCache>,
}

impl<'m> CandleBackend<'m> {
    /// A backend with empty caches.
    pub fn new(model: &'m LlamaModel) -> Self {
        let n = model.config().max_position_embeddings.min(4096);
        let caches = (0..model.num_layers()).map(|_| LayerCache::new(n)).collect();
        Self { model, caches }
    }

    /// The cache of `layer` (1-based), for inspection.
    pub fn cache(&self, layer: usize) -> &LayerCache {
        &self.caches[layer - 1]
    }

    /// The model.
    pub fn model(&self) -> &LlamaModel {
        self.model
    }
}

impl Backend for CandleBackend<'_> {
    type Hidden = Tensor;

    fn num_layers(&self) -> usize {
        self.model.num_layers()
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn max_positions(&self) -> usize {
        self.model.config().max_position_embeddings
    }

    fn has_classifier(&self) -> bool {
        self.model.has_classifiers()
    }

    fn reset(&mut self) {
        self.caches.iter_mut().for_each(LayerCache::reset);
    }

    fn cache_len(&self, layer: usize) -> usize {
        self.caches[layer - 1].len()
    }

    fn embed(&mut self, tokens: &[u32]) -> Result<Tensor> {
        self.model.embed(tokens)
    }

    fn layer(&mut self, layer: usize, h: &Tensor) -> Result<Tensor> {
        let pos = self.caches[layer - 1].len();
        self.model.layer_forward(layer, h, pos, Some(&mut self.caches[layer - 1]))
    }

    fn propagate(&mut self, layer: usize, h: &Tensor) -> Result<()> {
        let pos = self.caches[layer - 1].len();
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?;
        self.model.propagate(layer, &last, pos, &mut self.caches[layer - 1])
    }

    fn exit_logits(&mut self, h: &Tensor) -> Result<Vec<f32>> {
        self.model.head_last(h)
    }

    fn cosine(&mut self, a: &Tensor, b: &Tensor) -> Result<f32> {
        let last = |x: &Tensor| -> Result<Tensor> {
            let t = x.dim(1)?;
            Ok(x.narrow(1, t - 1, 1)?.flatten_all()?.to_dtype(DType::F32)?)
        };
        let (a, b) = (last(a)?.to_vec1::<f32>()?, last(b)?.to_vec1::<f32>()?);
        Ok(crate::exit::measure::cosine(&a, &b))
    }

    fn classifier(&mut self, layer: usize, h: &Tensor) -> Result<f32> {
        self.model.classifier_prob(layer, h)
    }

    fn sync(&self) -> Result<()> {
        Ok(self.model.device().synchronize()?)
    }
}
