//! The Hugging Face tensor names of a Llama-family decoder and of exitbench's exit classifiers:
//! the one table that loading, saving, training and the ONNX export all name tensors by. A leaf
//! module (no imports): shapes live with the config ([`crate::model::LlamaConfig::tensors`]).

/// The token embedding `[vocab, hidden]` (also the LM head when the embeddings are tied).
pub const EMBED: &str = "model.embed_tokens.weight";

/// The final RMSNorm's weight `[hidden]`, applied before the LM head.
pub const FINAL_NORM: &str = "model.norm.weight";

/// The LM head `[vocab, hidden]` (optional with tied embeddings).
pub const LM_HEAD: &str = "lm_head.weight";

/// What every decoder layer's tensor names start with: `model.layers.{i}.…`, `i` 0-based.
pub const LAYERS_PREFIX: &str = "model.layers.";

/// Tensor-name prefix of the optional exit classifiers: `exit_classifier.layers.{i}.weight`
/// (shape `[1, hidden]`) and `.bias` (shape `[1]`), `i` the 0-based index of `model.layers.{i}`.
pub const CLASSIFIER_PREFIX: &str = "exit_classifier.layers";

/// The name prefix of decoder layer `i` (0-based): `model.layers.{i}`.
pub fn layer(i: usize) -> String {
    format!("{LAYERS_PREFIX}{i}")
}

/// The 0-based layer index a tensor name belongs to (`model.layers.3.mlp.up_proj.weight` → 3).
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix(LAYERS_PREFIX).and_then(|r| r.split('.').next()).and_then(|i| i.parse().ok())
}

/// Layer `i`'s input RMSNorm weight `[hidden]`.
pub fn input_norm(i: usize) -> String {
    format!("{}.input_layernorm.weight", layer(i))
}

/// Layer `i`'s post-attention RMSNorm weight `[hidden]`.
pub fn post_norm(i: usize) -> String {
    format!("{}.post_attention_layernorm.weight", layer(i))
}

/// The linear projections of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    /// Attention query.
    Q,
    /// Attention key.
    K,
    /// Attention value.
    V,
    /// Attention output.
    O,
    /// SwiGLU gate.
    Gate,
    /// SwiGLU up.
    Up,
    /// SwiGLU down.
    Down,
}

impl Proj {
    /// Every projection, in the order a layer's tensors are listed.
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// The module path within a layer: `self_attn.q_proj`, `mlp.gate_proj`...
    pub fn path(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    /// True for the projections that may carry a bias (Qwen2-style q/k/v).
    pub fn may_have_bias(self) -> bool {
        matches!(self, Proj::Q | Proj::K | Proj::V)
    }
}

/// Layer `i`'s projection `p` without its suffix: `model.layers.{i}.self_attn.q_proj`.
pub fn proj(i: usize, p: Proj) -> String {
    format!("{}.{}", layer(i), p.path())
}

/// The weight of a module named by [`proj`]: `{module}.weight`.
pub fn weight(module: &str) -> String {
    format!("{module}.weight")
}

/// The bias of a module named by [`proj`]: `{module}.bias`.
pub fn bias(module: &str) -> String {
    format!("{module}.bias")
}

/// The exit classifier of layer `i` (0-based): its weight `[1, hidden]`.
pub fn classifier_weight(i: usize) -> String {
    format!("{CLASSIFIER_PREFIX}.{i}.weight")
}

/// The exit classifier of layer `i` (0-based): its bias `[1]`.
pub fn classifier_bias(i: usize) -> String {
    format!("{CLASSIFIER_PREFIX}.{i}.bias")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_hugging_face_ones() {
        assert_eq!(weight(&proj(2, Proj::Q)), "model.layers.2.self_attn.q_proj.weight");
        assert_eq!(bias(&proj(0, Proj::V)), "model.layers.0.self_attn.v_proj.bias");
        assert_eq!(weight(&proj(1, Proj::Down)), "model.layers.1.mlp.down_proj.weight");
        assert_eq!(input_norm(3), "model.layers.3.input_layernorm.weight");
        assert_eq!(post_norm(3), "model.layers.3.post_attention_layernorm.weight");
        assert_eq!(classifier_bias(4), "exit_classifier.layers.4.bias");
        assert_eq!(layer_of(&post_norm(12)), Some(12));
        assert_eq!(layer_of(EMBED), None);
    }
}
