//! `config.json` of a Llama-family decoder (Hugging Face `LlamaForCausalLM` layout), parsed and
//! validated. Unknown keys are ignored (real configs carry many); known keys are checked.

use super::names::{self, Proj};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `eos_token_id` may be one id or a list of ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids (Llama 3 instruct models list three).
    Many(Vec<u32>),
}

impl TokenIds {
    /// All ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// Llama 3 style RoPE frequency scaling (`rope_scaling` with `rope_type: "llama3"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// Must be "llama3" (the only scaling supported).
    #[serde(alias = "type")]
    pub rope_type: String,
    /// Overall scaling factor.
    pub factor: f64,
    /// Wavelengths longer than original_max / low_freq_factor are scaled fully.
    pub low_freq_factor: f64,
    /// Wavelengths shorter than original_max / high_freq_factor are kept.
    pub high_freq_factor: f64,
    /// Context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
}

/// The decoder's shape and constants, as in Hugging Face's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU feed-forward layer.
    pub intermediate_size: usize,
    /// Number of decoder layers L.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Longest sequence (prompt + generated tokens) the model accepts.
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Optional Llama 3 RoPE scaling (any other `rope_type` is refused by name).
    #[serde(default, deserialize_with = "rope_scaling")]
    pub rope_scaling: Option<RopeScaling>,
    /// Vocabulary size (rows of the embedding and LM head).
    pub vocab_size: usize,
    /// True when the LM head reuses the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence id, if any.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id(s), if any.
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Architecture names (informational; must be a Llama-family causal LM when present).
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
}

/// `rope_scaling`: null, or a llama3 scaling; another type (`dynamic`, `yarn`, `linear`...) is
/// named before its fields are read (they differ per type, so "missing field" would mislead).
fn rope_scaling<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<RopeScaling>, D::Error> {
    use serde::de::Error as _;
    let Some(v) = Option::<serde_json::Value>::deserialize(d)? else { return Ok(None) };
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).map(str::to_string);
    match kind.as_deref() {
        Some("llama3") => serde_json::from_value(v).map(Some).map_err(D::Error::custom),
        Some(other) => Err(D::Error::custom(format!("unsupported rope_scaling type '{other}' (only 'llama3' is supported)"))),
        None => Err(D::Error::custom("rope_scaling has no `rope_type` (only 'llama3' is supported)")),
    }
}

/// The largest value each size field of `config.json` may take: far above any real checkpoint,
/// low enough that nothing is ever allocated from an absurd header value.
pub const SIZE_LIMITS: [(&str, usize); 7] = [
    ("hidden_size", 1 << 17),
    ("intermediate_size", 1 << 20),
    ("num_hidden_layers", 4096),
    ("num_attention_heads", 4096),
    ("max_position_embeddings", 1 << 24),
    ("vocab_size", 1 << 24),
    ("head_dim", 1 << 14),
];

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10000.0
}

impl LlamaConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg = Self::deserialize(&text).map_err(|(line, message)| Error::file(path, line, message))?;
        cfg.check().map_err(|e| match e {
            Error::BadSetting { field, message } => Error::file(path, None, format!("field `{field}`: {message}")),
            other => other,
        })?;
        Ok(cfg)
    }

    /// Parses and validates a config from JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg = Self::deserialize(text).map_err(|(line, message)| {
            Error::setting("config.json", match line {
                Some(l) => format!("line {l}: {message}"),
                None => message,
            })
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Deserializes without checking; an error is (line, plain message naming the field).
    fn deserialize(text: &str) -> std::result::Result<Self, (Option<usize>, String)> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let line = (inner.line() > 0).then_some(inner.line());
            // serde_json appends " at line L column C"; the line is reported separately.
            let full = inner.to_string();
            let msg = full.rsplit_once(" at line ").map(|(m, _)| m.to_string()).unwrap_or(full);
            let message = if inner.is_syntax() || inner.is_eof() {
                format!("malformed JSON: {msg}")
            } else if let Some(missing) = msg.strip_prefix("missing field ") {
                let missing = if field == "." { missing.to_string() } else { format!("`{field}.{}`", missing.trim_matches('`')) };
                format!("required field {missing} is missing")
            } else if field == "." {
                msg
            } else {
                format!("field `{field}`: {msg}")
            };
            (line, message)
        })
    }

    /// Number of key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// End-of-sequence ids (empty when the config names none).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default()
    }

    /// `[out, in]` of a decoder layer's projection `p`.
    pub fn proj_shape(&self, p: Proj) -> [usize; 2] {
        let (d, f) = (self.hidden_size, self.intermediate_size);
        let (q, kv) = (self.num_attention_heads * self.head_dim(), self.kv_heads() * self.head_dim());
        match p {
            Proj::Q => [q, d],
            Proj::K | Proj::V => [kv, d],
            Proj::O => [d, q],
            Proj::Gate | Proj::Up => [f, d],
            Proj::Down => [d, f],
        }
    }

    /// Elements of one decoder layer's projection matrices (norms and biases left out).
    pub fn layer_matrix_params(&self) -> usize {
        Proj::ALL.iter().map(|&p| self.proj_shape(p).iter().product::<usize>()).sum()
    }

    /// Every decoder tensor this config needs: its Hugging Face name ([`super::names`]), its
    /// shape, and whether it is required (biases are optional; the LM head is optional with tied
    /// embeddings). The one table loading, checking and training read.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, bool)> {
        let (v, d) = (self.vocab_size, self.hidden_size);
        let mut out = vec![(names::EMBED.to_string(), vec![v, d], true)];
        for i in 0..self.num_hidden_layers {
            out.push((names::input_norm(i), vec![d], true));
            out.push((names::post_norm(i), vec![d], true));
            for p in Proj::ALL {
                let m = names::proj(i, p);
                let [rows, cols] = self.proj_shape(p);
                out.push((names::weight(&m), vec![rows, cols], true));
                if p.may_have_bias() {
                    out.push((names::bias(&m), vec![rows], false));
                }
            }
        }
        out.push((names::FINAL_NORM.to_string(), vec![d], true));
        out.push((names::LM_HEAD.to_string(), vec![v, d], !self.tie_word_embeddings));
        out
    }

    /// Parameter count of the decoder (embedding, layers, norm, head; untied head counted).
    pub fn param_count(&self) -> usize {
        let (d, v) = (self.hidden_size, self.vocab_size);
        let layer = self.layer_matrix_params() + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + self.num_hidden_layers * layer + d + head
    }

    /// Checks that the configuration describes a decoder this crate can build.
    pub fn check(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vocab_size", self.vocab_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::setting(name, "must be greater than 0"));
            }
        }
        let values = [
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.max_position_embeddings,
            self.vocab_size,
            self.head_dim.unwrap_or(0),
        ];
        for ((name, limit), v) in SIZE_LIMITS.iter().zip(values) {
            if v > *limit {
                return Err(Error::setting(*name, format!("{v} exceeds the largest supported value {limit}")));
            }
        }
        if let Some(kv) = self.num_key_value_heads {
            if kv > self.num_attention_heads {
                return Err(Error::setting("num_key_value_heads", format!("{kv} exceeds num_attention_heads = {}", self.num_attention_heads)));
            }
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return Err(Error::setting(
                "num_key_value_heads",
                format!("{kv} does not divide num_attention_heads = {}", self.num_attention_heads),
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::setting(
                "num_attention_heads",
                format!("{} does not divide hidden_size = {}", self.num_attention_heads, self.hidden_size),
            ));
        }
        if !self.head_dim().is_multiple_of(2) || self.head_dim() == 0 {
            return Err(Error::setting("head_dim", format!("{} must be even and positive (RoPE)", self.head_dim())));
        }
        // Negated comparisons on purpose: NaN fails them too.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(self.rms_norm_eps > 0.0) {
            return Err(Error::setting("rms_norm_eps", "must be positive"));
        }
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(self.rope_theta > 0.0) {
            return Err(Error::setting("rope_theta", "must be positive"));
        }
        if let Some(rs) = &self.rope_scaling {
            if rs.rope_type != "llama3" {
                return Err(Error::setting(
                    "rope_scaling.rope_type",
                    format!("unsupported rope_scaling type '{}' (only 'llama3' is supported)", rs.rope_type),
                ));
            }
            if !(rs.factor > 0.0 && rs.low_freq_factor > 0.0 && rs.high_freq_factor > rs.low_freq_factor) {
                return Err(Error::setting(
                    "rope_scaling",
                    "factor and low_freq_factor must be positive and high_freq_factor > low_freq_factor",
                ));
            }
        }
        for id in self.eos_ids().into_iter().chain(self.bos_token_id) {
            if id as usize >= self.vocab_size {
                return Err(Error::setting(
                    "eos_token_id/bos_token_id",
                    format!("token id {id} is outside the vocabulary (vocab_size = {})", self.vocab_size),
                ));
            }
        }
        if let Some(archs) = &self.architectures {
            let ok = archs.iter().any(|a| {
                ["LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "ExitbenchForCausalLM"].contains(&a.as_str())
            });
            if !ok && !archs.is_empty() {
                return Err(Error::setting(
                    "architectures",
                    format!("{archs:?} is not a Llama-family causal LM (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)"),
                ));
            }
        }
        Ok(())
    }

    /// RoPE inverse frequencies (with Llama 3 scaling when configured), length head_dim / 2.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let hd = self.head_dim();
        let base: Vec<f64> = (0..hd / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / hd as f64))
            .collect();
        let Some(rs) = &self.rope_scaling else {
            return base.iter().map(|&f| f as f32).collect();
        };
        let orig = rs.original_max_position_embeddings as f64;
        let low_wavelen = orig / rs.low_freq_factor;
        let high_wavelen = orig / rs.high_freq_factor;
        base.iter()
            .map(|&freq| {
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let f = if wavelen < high_wavelen {
                    freq
                } else if wavelen > low_wavelen {
                    freq / rs.factor
                } else {
                    let smooth = (orig / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
                    (1.0 - smooth) * freq / rs.factor + smooth * freq
                };
                f as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
            "vocab_size": 100, "eos_token_id": [1, 2]
        })
    }

    #[test]
    fn parses_defaults_and_eos_list() {
        let c = LlamaConfig::from_json(&base().to_string()).unwrap();
        assert_eq!(c.head_dim(), 16);
        assert_eq!(c.kv_heads(), 2);
        assert_eq!(c.eos_ids(), vec![1, 2]);
        assert_eq!(c.rope_theta, 10000.0);
    }

    #[test]
    fn param_count_is_the_tensor_tables_required_elements() {
        for tied in [false, true] {
            let mut v = base();
            v["tie_word_embeddings"] = tied.into();
            let c = LlamaConfig::from_json(&v.to_string()).unwrap();
            let table: usize = c.tensors().iter().filter(|t| t.2).map(|t| t.1.iter().product::<usize>()).sum();
            assert_eq!(c.param_count(), table, "tied {tied}");
        }
        // By hand: embedding 100×64, 4 layers of (q 64×64, k/v 32×64, o 64×64, 3 × 128×64, 2 norms), norm, head.
        let c = LlamaConfig::from_json(&base().to_string()).unwrap();
        let layer = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 128 * 64 + 2 * 64;
        assert_eq!(c.param_count(), 100 * 64 + 4 * layer + 64 + 100 * 64);
    }

    #[test]
    fn rejects_bad_gqa_and_types() {
        let mut v = base();
        v["num_key_value_heads"] = 3.into();
        let e = LlamaConfig::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let mut v = base();
        v["hidden_size"] = "big".into();
        let e = LlamaConfig::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("hidden_size") || e.contains("invalid type"), "{e}");
        let mut v = base();
        v["eos_token_id"] = 1000.into();
        assert!(LlamaConfig::from_json(&v.to_string()).is_err());
    }

    #[test]
    fn llama3_scaling_keeps_high_and_scales_low_frequencies() {
        let mut v = base();
        v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        v["rope_theta"] = 500000.0.into();
        let c = LlamaConfig::from_json(&v.to_string()).unwrap();
        let scaled = c.rope_inv_freq();
        let mut plain = c.clone();
        plain.rope_scaling = None;
        let plain = plain.rope_inv_freq();
        assert_eq!(scaled[0], plain[0]);
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-12);
    }
}
