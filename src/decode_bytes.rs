//! Bytes a decoded token reads (weights and KV cache), counted from the exit trace with the same
//! rules the decode loop follows for which heads, classifiers and propagations each mode runs (`decode::step_work`, the one
//! description): the
//! figure that `achieved_gb_s` divides by decode time. An estimate by counting, not a hardware
//! counter.

/// Bytes of weights and KV cache a decode step reads, from the trace (an estimate by counting,
/// not a hardware counter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelBytes {
    /// One embedding row.
    pub embed_row: f64,
    /// One decoder layer's weights (projections in the weights' dtype, norms in f32).
    pub layer: f64,
    /// One exit check's head: final norm + LM head.
    pub head: f64,
    /// The classifier of one layer (f32).
    pub classifier: f64,
    /// One propagation: a layer's input norm + k/v projections.
    pub propagation: f64,
    /// K and V of one cached position in one layer.
    pub kv_per_position: f64,
}

impl ModelBytes {
    /// The sizes of a config's tensors at `bytes_per_element` (4 for f32, 2 for f16/bf16).
    pub fn of(cfg: &crate::model::LlamaConfig, bytes_per_element: f64) -> Self {
        use crate::model::names::Proj;
        let (d, v) = (cfg.hidden_size as f64, cfg.vocab_size as f64);
        let kv = cfg.proj_shape(Proj::K)[0] as f64;
        // The same count as the config's parameter count: one definition of a layer's matrices.
        let proj = cfg.layer_matrix_params() as f64;
        ModelBytes {
            embed_row: d * bytes_per_element,
            layer: proj * bytes_per_element + 2.0 * d * 4.0,
            head: v * d * bytes_per_element + d * 4.0,
            classifier: d * 4.0,
            propagation: 2.0 * d * kv * bytes_per_element + d * 4.0,
            kv_per_position: 2.0 * kv * bytes_per_element,
        }
    }

    /// Bytes read by one decoded token that ran `layers` layers, made `heads` exit-head checks
    /// and `classifiers` classifier checks, propagated into `propagations` layers, with
    /// `cached` positions in each cache before it.
    pub fn token(&self, layers: usize, heads: usize, classifiers: usize, propagations: usize, cached: usize) -> f64 {
        self.embed_row
            + layers as f64 * (self.layer + self.kv_per_position * (cached + 1) as f64)
            + heads as f64 * self.head
            + classifiers as f64 * self.classifier
            + propagations as f64 * self.propagation
    }
}

/// Mean bytes read per decoded token over `samples` (each generation's prompt length and the
/// exit layers of its generated tokens, the prefill's first) for `mode` on a model of `cfg` at
/// `bytes_per_element`; None without decoded tokens.
pub fn bytes_per_token<'a>(mode: &crate::exit::ExitMode, cfg: &crate::model::LlamaConfig, bytes_per_element: f64, samples: impl IntoIterator<Item = (usize, &'a [usize])>) -> Option<f64> {
    let l = cfg.num_hidden_layers;
    let b = ModelBytes::of(cfg, bytes_per_element);
    let (mut total, mut n) = (0.0, 0usize);
    for (prompt_tokens, exits) in samples {
        for (i, &exit_layer) in exits.iter().enumerate().skip(1) {
            let cached = prompt_tokens + i - 1;
            let w = crate::decode::step_work(mode, exit_layer, l);
            // Cosine checks read two hidden states and no weights.
            let bytes = b.token(w.layers, w.heads, w.classifiers, w.propagations, cached);
            total += bytes;
            n += 1;
        }
    }
    (n > 0).then(|| total / n as f64)
}

/// Bytes a batched decode step read: `rows` embedding rows, the weights of the calls counted in
/// `reads` (once per call where the backend shares weight reads across rows, else once per
/// row), and `attended` cached positions of keys and values (`decode::batch::BatchStep`).
pub fn batch_step_bytes(b: &ModelBytes, rows: usize, reads: &crate::decode::StepWork, attended: usize) -> f64 {
    rows as f64 * b.embed_row + reads.layers as f64 * b.layer + reads.heads as f64 * b.head + reads.classifiers as f64 * b.classifier + reads.propagations as f64 * b.propagation + attended as f64 * b.kv_per_position
}

/// Mean bytes read per decoded token of self-speculative decoding over `samples` (each
/// generation's prompt length and its verification passes) with `spec` on a model of `cfg` at
/// `bytes_per_element`; None without decoded tokens. Each draft step reads layers 1..E (and
/// their caches) and the head for one token; a verification pass reads each of its layers'
/// weights once for all its positions, and their caches up to the pass's last position
/// (`speculative::pass_work` says which calls a pass makes).
pub fn speculative_bytes_per_token<'a>(spec: &crate::decode::speculative::Speculation, cfg: &crate::model::LlamaConfig, bytes_per_element: f64, samples: impl IntoIterator<Item = (usize, &'a [crate::decode::speculative::Pass])>) -> Option<f64> {
    let l = cfg.num_hidden_layers;
    let b = ModelBytes::of(cfg, bytes_per_element);
    let (mut total, mut n) = (0.0, 0usize);
    for (prompt_tokens, passes) in samples {
        // Positions cached before the pass's first token (the prefill wrote the prompt's).
        let mut base = prompt_tokens;
        let [step, _] = crate::decode::speculative::pass_work(spec, l, 1);
        for p in passes {
            let [_, verify] = crate::decode::speculative::pass_work(spec, l, p.drafted);
            // Draft step i reads E layers with base + i positions cached before it.
            for i in 0..p.drafted {
                total += b.token(step.layers, step.heads, step.classifiers, 0, base + i);
            }
            // Verification: the new positions' embeddings, each layer's weights once and its
            // cache through the last position, one head pass.
            let positions = p.drafted + 1;
            let embedded = match spec.cache {
                crate::decode::speculative::DraftCache::Shared => 1,
                crate::decode::speculative::DraftCache::Separate => positions,
            };
            total += embedded as f64 * b.embed_row + verify.layers as f64 * (b.layer + b.kv_per_position * (base + positions) as f64) + verify.heads as f64 * b.head;
            base += p.emitted;
            n += p.emitted;
        }
    }
    (n > 0).then(|| total / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_per_token_by_hand_for_a_tiny_model() {
        // d 64, f 128, 4 heads of 16, 2 kv heads, vocab 300, f32.
        let cfg = crate::testkit::tiny_config(4, 300);
        let b = ModelBytes::of(&cfg, 4.0);
        let d = 64.0;
        // q 64×64, k and v 32×64 each, o 64×64, gate/up/down 3 × 128×64; two f32 norms.
        let layer = (64.0 * 64.0 + 2.0 * 32.0 * 64.0 + 64.0 * 64.0 + 3.0 * 128.0 * 64.0) * 4.0 + 2.0 * d * 4.0;
        assert_eq!(b.layer, layer);
        assert_eq!(b.head, 300.0 * 64.0 * 4.0 + 64.0 * 4.0);
        assert_eq!(b.propagation, 2.0 * 32.0 * 64.0 * 4.0 + 64.0 * 4.0);
        assert_eq!(b.kv_per_position, 2.0 * 32.0 * 4.0);
        // A token that exits at layer 2 after two softmax checks, propagating into layers 3 and 4,
        // with 10 positions cached: embedding + 2 layers (+ 11 positions of K/V each) + 2 heads + 2 propagations.
        let want = d * 4.0 + 2.0 * (layer + 11.0 * 256.0) + 2.0 * b.head + 2.0 * b.propagation;
        assert_eq!(b.token(2, 2, 0, 2, 10), want);
    }

    #[test]
    fn speculative_bytes_per_token_by_hand() {
        use crate::decode::speculative::{DraftCache, DraftStop, Pass, Speculation};
        let cfg = crate::testkit::tiny_config(4, 300);
        let b = ModelBytes::of(&cfg, 4.0);
        let kv = b.kv_per_position;
        // Prompt of 5; pass 1 drafts 3 and emits 2, pass 2 drafts 0 and emits 1.
        let passes = [Pass { drafted: 3, accepted: 1, emitted: 2 }, Pass { drafted: 0, accepted: 0, emitted: 1 }];
        let shared = Speculation { draft_layer: 1, draft_tokens: 3, cache: DraftCache::Shared, stop: None };
        // Pass 1: draft steps with 5, 6, 7 positions cached (1 layer + head each); verify reads
        // one embedding row, 4 layers with 9 positions each, one head. Pass 2 (base 7): 4 layers
        // with 8 positions, one embedding row, one head.
        let draft = (0..3).map(|i| b.embed_row + b.layer + kv * (5 + i + 1) as f64 + b.head).sum::<f64>();
        let verify1 = b.embed_row + 4.0 * (b.layer + kv * 9.0) + b.head;
        let verify2 = b.embed_row + 4.0 * (b.layer + kv * 8.0) + b.head;
        let got = speculative_bytes_per_token(&shared, &cfg, 4.0, [(5, passes.as_slice())]).unwrap();
        assert!((got - (draft + verify1 + verify2) / 3.0).abs() < 1e-6, "{got}");
        // Separate: the verifier embeds every position of the pass; a classifier stop reads one
        // classifier per draft step.
        let sep = Speculation { cache: DraftCache::Separate, stop: Some(DraftStop { measure: crate::exit::Measure::Classifier, threshold: 0.5 }), ..shared };
        let draft = draft + 3.0 * b.classifier;
        let verify1 = 4.0 * b.embed_row + 4.0 * (b.layer + kv * 9.0) + b.head;
        let got = speculative_bytes_per_token(&sep, &cfg, 4.0, [(5, passes.as_slice())]).unwrap();
        assert!((got - (draft + verify1 + verify2) / 3.0).abs() < 1e-6, "{got}");
        assert_eq!(speculative_bytes_per_token(&shared, &cfg, 4.0, [(5, &[][..])]), None);
    }
}
