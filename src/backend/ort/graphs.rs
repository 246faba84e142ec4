//! The ONNX graphs of the early-exit decoder, shaped like candle's computation (see
//! `model/llama.rs`): RMSNorm in f32, RoPE (rotate-half) from positions, grouped-query attention
//! with an additive causal mask and an f32 softmax, SwiGLU, Qwen2-style q/k/v biases when present.
//! Standard ONNX ops (opset 21), except the attention of [`CacheForm::InPlace`] layer graphs:
//! ONNX Runtime's `GroupQueryAttention` (domain `com.microsoft`), which extends a preallocated
//! cache in place.
//!
//! Graph interfaces (`t` new positions, `P` cached positions, `C` ≥ P + t a buffer's capacity;
//! `B` rows; `dtype` the export's precision):
//! - `embed`: `ids` i64 `[t]` → `hidden` `[1, t, d]`
//! - `layer_i`, concatenating: `hidden`, `past_k`/`past_v` `[1, kv, P, hd]`, `positions` i64 `[t]`
//!   → `hidden_out`, `present_k`/`present_v` `[1, kv, P + t, hd]` (one graph for prefill and
//!   decode); in place, with a batch axis: `hidden` `[B, t, d]`, `positions` i64 `[B, t]` (row
//!   b's new positions, from its own cached length), `past_k`/`past_v` buffers `[B, kv, C, hd]`
//!   holding each row's positions first, and `present_k`/`present_v` the same buffers (bound to
//!   the same memory) extended by t positions per row. `GroupQueryAttention` takes several
//!   positions per row only at B = 1 or when every row's cache is empty (a batched prefill)
//! - `propagate_i`: the last position of `hidden`, `positions` i64 `[1]` (and `past_k`/`past_v`
//!   when concatenating) → `present_k`/`present_v`; in place, with a batch axis: `hidden`
//!   `[B, t, d]`, `positions` `[B, 1]` → `new_k`/`new_v` `[B, kv, 1, hd]` for the host to write
//!   (the layer's input norm + k/v projections only)
//! - `head`: `hidden` `[B, t, d]` → `summary` f32 `[B, 4]` = (argmax, top-1 logit, top-2 logit,
//!   Σ exp(logit − top-1)) and `logits` f32 `[B, V]` of each row's last position
//! - `classifier`: `hidden`, `layer` i64 `[1]` (0-based) → `prob` f32 `[1]`
//! - `cosine`: `a`, `b` → `cosine` f32 `[1]` of their last positions
//! - `full`: `ids`, `positions`, `past_k_i`/`past_v_i` → `summary`, `logits`, `present_k_i`/`present_v_i`
//!   (caches as the layer graphs of its export hold them)

use super::onnx::{dt, Attr, Dim, Graph, Payload};
use crate::error::{Error, Result};
use crate::model::names::{self, Proj};
use crate::model::{LlamaConfig, Precision};
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// The ONNX element type of a precision.
pub fn elem(p: Precision) -> i32 {
    match p {
        Precision::F32 => dt::FLOAT,
        Precision::F16 => dt::FLOAT16,
        Precision::Bf16 => dt::BFLOAT16,
    }
}

/// Little-endian bytes of a candle tensor (f32, f16, bf16), row-major.
pub fn raw_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => t.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        DType::BF16 => t.to_vec1::<half::bf16>()?.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        other => return Err(Error::Internal(format!("cannot export a {other:?} tensor"))),
    })
}

/// A model tensor (or its transpose) as an initializer's bytes, converted only when the graph
/// is written: the graph shares the tensor's storage instead of holding a copy.
struct TensorPayload {
    t: Tensor,
    /// Write the transpose `[in, out]` of the `[out, in]` matrix (made contiguous then, the only
    /// copy the export makes of a tensor).
    transpose: bool,
}

impl Payload for TensorPayload {
    fn byte_len(&self) -> usize {
        self.t.elem_count() * self.t.dtype().size_in_bytes()
    }

    fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        let err = |e: candle_core::Error| std::io::Error::other(format!("export: {e}"));
        let t = if self.transpose { self.t.t().and_then(|t| t.contiguous()).map_err(err)? } else { self.t.to_device(&candle_core::Device::Cpu).map_err(err)? };
        let t = t.contiguous().map_err(err)?;
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| std::io::Error::other("export: a contiguous tensor has no contiguous offsets"))?;
        let candle_core::Storage::Cpu(cpu) = &*storage else { return Err(std::io::Error::other("export: tensor not on the CPU")) };
        match t.dtype() {
            DType::F32 => write_le(w, &cpu.as_slice::<f32>().map_err(err)?[start..end], |x| x.to_le_bytes()),
            DType::F16 => write_le(w, &cpu.as_slice::<half::f16>().map_err(err)?[start..end], |x| x.to_bits().to_le_bytes()),
            DType::BF16 => write_le(w, &cpu.as_slice::<half::bf16>().map_err(err)?[start..end], |x| x.to_bits().to_le_bytes()),
            other => Err(std::io::Error::other(format!("cannot export a {other:?} tensor"))),
        }
    }
}

/// Writes `v` as little-endian bytes through a small buffer (64 Ki elements at a time).
fn write_le<T: Copy, const N: usize>(w: &mut dyn std::io::Write, v: &[T], le: impl Fn(T) -> [u8; N]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(N << 16);
    for chunk in v.chunks(1 << 16) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|&x| le(x)));
        w.write_all(&buf)?;
    }
    Ok(())
}

/// The model's tensors by Hugging Face name, in the export's precision (norms and classifiers
/// in f32), as candle loaded them.
pub struct Weights<'a> {
    /// Shape and constants.
    pub cfg: &'a LlamaConfig,
    /// Tensors by name.
    pub t: HashMap<String, Tensor>,
    /// Precision of matrices and activations.
    pub p: Precision,
}

impl Weights<'_> {
    fn get(&self, name: &str) -> Result<&Tensor> {
        self.t.get(name).ok_or_else(|| Error::Internal(format!("export: tensor `{name}` missing")))
    }

    /// An initializer holding tensor `name` as stored.
    fn init(&self, g: &mut Graph, name: &str) -> Result<String> {
        let t = self.get(name)?;
        let el = match t.dtype() {
            DType::F32 => dt::FLOAT,
            DType::F16 => dt::FLOAT16,
            DType::BF16 => dt::BFLOAT16,
            other => return Err(Error::Internal(format!("cannot export a {other:?} tensor"))),
        };
        let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
        Ok(g.init_lazy("w", el, &dims, Box::new(TensorPayload { t: t.clone(), transpose: false })))
    }

    /// An initializer holding the transpose `[in, out]` of the `[out, in]` matrix `name`.
    fn init_t(&self, g: &mut Graph, name: &str) -> Result<String> {
        let t = self.get(name)?;
        let (out, inp) = t.dims2()?;
        if t.dtype() != self.p.dtype() {
            return Err(Error::Internal(format!("export: `{name}` is {:?}, the export is {}", t.dtype(), self.p.name())));
        }
        Ok(g.init_lazy("wt", elem(self.p), &[inp as i64, out as i64], Box::new(TensorPayload { t: t.clone(), transpose: true })))
    }

    /// A scalar constant in the export's precision.
    fn scalar(&self, g: &mut Graph, v: f32) -> String {
        let raw = match self.p {
            Precision::F32 => v.to_le_bytes().to_vec(),
            Precision::F16 => half::f16::from_f32(v).to_bits().to_le_bytes().to_vec(),
            Precision::Bf16 => half::bf16::from_f32(v).to_bits().to_le_bytes().to_vec(),
        };
        g.init("s", elem(self.p), &[], raw)
    }

    fn cast_to(&self, g: &mut Graph, x: &str, to: i32) -> String {
        g.node("Cast", &[x], &[("to", Attr::Int(to as i64))])
    }

    /// `x` in the export dtype → f32 (no node at f32).
    fn to_f32(&self, g: &mut Graph, x: &str) -> String {
        if self.p == Precision::F32 {
            x.to_string()
        } else {
            self.cast_to(g, x, dt::FLOAT)
        }
    }

    /// f32 `x` → the export dtype (no node at f32).
    fn f32_to_dtype(&self, g: &mut Graph, x: &str) -> String {
        if self.p == Precision::F32 {
            x.to_string()
        } else {
            self.cast_to(g, x, elem(self.p))
        }
    }

    /// RMSNorm over the last axis, computed in f32 like candle: x / sqrt(mean(x²) + eps) · w;
    /// the output has the export dtype.
    fn rms_norm(&self, g: &mut Graph, x: &str, weight: &str) -> Result<String> {
        let w = self.init(g, weight)?;
        let xf = self.to_f32(g, x);
        let sq = g.node("Mul", &[&xf, &xf], &[]);
        let axes = g.ints(&[-1]);
        let ms = g.node("ReduceMean", &[&sq, &axes], &[("keepdims", Attr::Int(1))]);
        let eps = g.float_const(&[self.cfg.rms_norm_eps as f32], true);
        let ms = g.node("Add", &[&ms, &eps], &[]);
        let r = g.node("Sqrt", &[&ms], &[]);
        let y = g.node("Div", &[&xf, &r], &[]);
        let y = g.node("Mul", &[&y, &w], &[]);
        Ok(self.f32_to_dtype(g, &y))
    }

    /// `x W^T (+ b)` for the `[out, in]` matrix `prefix.weight`.
    fn linear(&self, g: &mut Graph, x: &str, prefix: &str) -> Result<String> {
        let w = self.init_t(g, &names::weight(prefix))?;
        let y = g.node("MatMul", &[x, &w], &[]);
        let b = names::bias(prefix);
        if self.t.contains_key(&b) {
            let b = self.init(g, &b)?;
            return Ok(g.node("Add", &[&y, &b], &[]));
        }
        Ok(y)
    }

    /// The last position of `[1, t, d]`, as `[1, 1, d]`.
    fn last(&self, g: &mut Graph, x: &str) -> String {
        let (s, e, a) = (g.ints(&[-1]), g.ints(&[i64::MAX]), g.ints(&[1]));
        g.node("Slice", &[x, &s, &e, &a], &[])
    }
}

/// cos and sin `[…, hd/2]` (export dtype) of the positions i64 `[t]` or `[B, t]`, from the
/// config's inverse frequencies (llama3 scaling included): angle = position · inv_freq in f32,
/// as candle's tables.
pub fn emit_rope(w: &Weights, g: &mut Graph, positions: &str) -> (String, String) {
    let inv = g.float_const(&w.cfg.rope_inv_freq(), false);
    let p = g.node("Cast", &[positions], &[("to", Attr::Int(dt::FLOAT as i64))]);
    let ax = g.ints(&[-1]);
    let p = g.node("Unsqueeze", &[&p, &ax], &[]);
    let ang = g.node("Mul", &[&p, &inv], &[]);
    let cos = g.node("Cos", &[&ang], &[]);
    let sin = g.node("Sin", &[&ang], &[]);
    (w.f32_to_dtype(g, &cos), w.f32_to_dtype(g, &sin))
}

/// Rotate-half RoPE of `[1, h, t, hd]`: (x1·cos − x2·sin, x2·cos + x1·sin).
fn rope(w: &Weights, g: &mut Graph, x: &str, cos: &str, sin: &str) -> String {
    let half = (w.cfg.head_dim() / 2) as i64;
    let (z, hf, end, ax) = (g.ints(&[0]), g.ints(&[half]), g.ints(&[i64::MAX]), g.ints(&[-1]));
    let x1 = g.node("Slice", &[x, &z, &hf, &ax], &[]);
    let x2 = g.node("Slice", &[x, &hf, &end, &ax], &[]);
    let a = g.node("Mul", &[&x1, cos], &[]);
    let b = g.node("Mul", &[&x2, sin], &[]);
    let lo = g.node("Sub", &[&a, &b], &[]);
    let c = g.node("Mul", &[&x2, cos], &[]);
    let d = g.node("Mul", &[&x1, sin], &[]);
    let hi = g.node("Add", &[&c, &d], &[]);
    g.node("Concat", &[&lo, &hi], &[("axis", Attr::Int(-1))])
}

/// `[1, t, heads·hd]` → `[1, heads, t, hd]`.
fn split_heads(g: &mut Graph, x: &str, heads: usize, hd: usize) -> String {
    let shape = g.ints(&[1, -1, heads as i64, hd as i64]);
    let r = g.node("Reshape", &[x, &shape], &[]);
    g.node("Transpose", &[&r], &[("perm", Attr::Ints(vec![0, 2, 1, 3]))])
}

/// Keys (rotated) and values of the normed `h` for this layer: `[1, kv, t, hd]` each.
fn kv_of_normed(w: &Weights, g: &mut Graph, i: usize, h: &str, cos: &str, sin: &str) -> Result<(String, String)> {
    let (kvh, hd) = (w.cfg.kv_heads(), w.cfg.head_dim());
    let k = w.linear(g, h, &names::proj(i, Proj::K))?;
    let k = split_heads(g, &k, kvh, hd);
    let k = rope(w, g, &k, cos, sin);
    let v = w.linear(g, h, &names::proj(i, Proj::V))?;
    Ok((k, split_heads(g, &v, kvh, hd)))
}

/// One decoder layer (0-based `i`) on `x`; returns (output, present_k, present_v).
pub fn emit_layer(w: &Weights, g: &mut Graph, i: usize, x: &str, past: (&str, &str), positions: &str, rope_cs: (&str, &str)) -> Result<(String, String, String)> {
    let cfg = w.cfg;
    let (nh, kvh, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
    let rep = nh / kvh;
    let (cos, sin) = rope_cs;
    let h = w.rms_norm(g, x, &names::input_norm(i))?;
    let q = w.linear(g, &h, &names::proj(i, Proj::Q))?;
    let q = split_heads(g, &q, nh, hd);
    let q = rope(w, g, &q, cos, sin);
    let (k, v) = kv_of_normed(w, g, i, &h, cos, sin)?;
    let pk = g.node("Concat", &[past.0, &k], &[("axis", Attr::Int(2))]);
    let pv = g.node("Concat", &[past.1, &v], &[("axis", Attr::Int(2))]);
    // Fold each group's query heads into rows, as candle does: [1, kv, rep·t, hd].
    let fold = g.ints(&[1, kvh as i64, -1, hd as i64]);
    let qg = g.node("Reshape", &[&q, &fold], &[]);
    let kt = g.node("Transpose", &[&pk], &[("perm", Attr::Ints(vec![0, 1, 3, 2]))]);
    let s = g.node("MatMul", &[&qg, &kt], &[]);
    let scale = w.scalar(g, (1.0 / (hd as f64).sqrt()) as f32);
    let s = g.node("Mul", &[&s, &scale], &[]);
    let s = w.to_f32(g, &s);
    // Causal mask [rep·t, T] (row r·t + i is the query at positions[i], which sees keys
    // 0..=positions[i]), as candle's.
    let total = g.node("Shape", &[&pk], &[("start", Attr::Int(2)), ("end", Attr::Int(3))]);
    let ax0 = g.ints(&[0]);
    let total = g.node("Squeeze", &[&total, &ax0], &[]);
    let zero = g.init("i", dt::INT64, &[], 0i64.to_le_bytes().to_vec());
    let one = g.init("i", dt::INT64, &[], 1i64.to_le_bytes().to_vec());
    let keys = g.node("Range", &[&zero, &total, &one], &[]);
    let ax1 = g.ints(&[1]);
    let qpos = g.node("Unsqueeze", &[positions, &ax1], &[]);
    let future = g.node("Greater", &[&keys, &qpos], &[]);
    let (ninf, fzero) = (g.float_const(&[f32::NEG_INFINITY], true), g.float_const(&[0.0], true));
    let mask = g.node("Where", &[&future, &ninf, &fzero], &[]);
    let reps = g.ints(&[rep as i64, 1]);
    let mask = g.node("Tile", &[&mask, &reps], &[]);
    let s = g.node("Add", &[&s, &mask], &[]);
    let pr = g.node("Softmax", &[&s], &[("axis", Attr::Int(-1))]);
    let pr = w.f32_to_dtype(g, &pr);
    let att = g.node("MatMul", &[&pr, &pv], &[]);
    let heads = g.ints(&[1, nh as i64, -1, hd as i64]);
    let att = g.node("Reshape", &[&att, &heads], &[]);
    let att = g.node("Transpose", &[&att], &[("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
    let flat = g.ints(&[1, -1, (nh * hd) as i64]);
    let att = g.node("Reshape", &[&att, &flat], &[]);
    Ok((emit_after_attention(w, g, i, x, &att)?, pk, pv))
}

/// The rest of layer `i` after attention `att` `[1, t, heads·hd]`: the output projection and its
/// residual, the post-attention norm and the SwiGLU MLP with its residual.
fn emit_after_attention(w: &Weights, g: &mut Graph, i: usize, x: &str, att: &str) -> Result<String> {
    let o = w.linear(g, att, &names::proj(i, Proj::O))?;
    let x = g.node("Add", &[x, &o], &[]);
    let h = w.rms_norm(g, &x, &names::post_norm(i))?;
    let gate = w.linear(g, &h, &names::proj(i, Proj::Gate))?;
    let sg = g.node("Sigmoid", &[&gate], &[]);
    let gate = g.node("Mul", &[&gate, &sg], &[]);
    let up = w.linear(g, &h, &names::proj(i, Proj::Up))?;
    let m = g.node("Mul", &[&gate, &up], &[]);
    let down = w.linear(g, &m, &names::proj(i, Proj::Down))?;
    Ok(g.node("Add", &[&x, &down], &[]))
}

/// Rotate-half RoPE of `[B, t, heads·hd]` (the sequence-major layout `GroupQueryAttention`
/// takes) with cos and sin `[B, t, hd/2]`: the same products as [`rope`] on `[1, heads, t, hd]`,
/// so the same values.
fn rope_seq_major(w: &Weights, g: &mut Graph, x: &str, heads: usize, cos: &str, sin: &str) -> String {
    let r = seq_major_heads(w, g, x, heads);
    let r = rope_heads_last(w, g, &r, cos, sin);
    let hd = w.cfg.head_dim() as i64;
    let flat = g.ints(&[0, -1, heads as i64 * hd]);
    g.node("Reshape", &[&r, &flat], &[])
}

/// `[B, t, heads·hd]` → `[B, t, heads, hd]`.
fn seq_major_heads(w: &Weights, g: &mut Graph, x: &str, heads: usize) -> String {
    let split = g.ints(&[0, -1, heads as i64, w.cfg.head_dim() as i64]);
    g.node("Reshape", &[x, &split], &[])
}

/// Rotate-half RoPE of `[B, t, heads, hd]`, cos and sin `[B, t, hd/2]` broadcast over the heads.
fn rope_heads_last(w: &Weights, g: &mut Graph, x: &str, cos: &str, sin: &str) -> String {
    let ax = g.ints(&[-2]);
    let (c, s) = (g.node("Unsqueeze", &[cos, &ax], &[]), g.node("Unsqueeze", &[sin, &ax], &[]));
    rope(w, g, x, &c, &s)
}

/// `GroupQueryAttention`'s lengths from the positions i64 `[B, t]` of the new positions:
/// `seqlens_k` i32 `[B]` (each row's last position, i.e. its total length − 1) and
/// `total_sequence_length` i32 `[]` (the longest row's).
fn gqa_lengths(g: &mut Graph, positions: &str) -> (String, String) {
    let (s, e, a) = (g.ints(&[-1]), g.ints(&[i64::MAX]), g.ints(&[1]));
    let last = g.node("Slice", &[positions, &s, &e, &a], &[]);
    let flat = g.ints(&[-1]);
    let last = g.node("Reshape", &[&last, &flat], &[]);
    let seqlens = g.node("Cast", &[&last], &[("to", Attr::Int(dt::INT32 as i64))]);
    let longest = g.node("ReduceMax", &[&last], &[("keepdims", Attr::Int(0))]);
    let one = g.init("i", dt::INT64, &[], 1i64.to_le_bytes().to_vec());
    let total = g.node("Add", &[&longest, &one], &[]);
    (seqlens, g.node("Cast", &[&total], &[("to", Attr::Int(dt::INT32 as i64))]))
}

/// Layer `i` on `x` `[B, t, d]` with its cache held in place: `cache` are buffers
/// `[B, kv, capacity, hd]` holding each row's cached positions first, which
/// `GroupQueryAttention` (ONNX Runtime's contrib op) extends by the new positions' keys and
/// values in place (when its `present` outputs are bound to the same buffers) and attends over
/// up to each row's last position (`positions` `[B, t]`) only. Returns (output, present_k,
/// present_v).
pub fn emit_layer_in_place(w: &Weights, g: &mut Graph, i: usize, x: &str, cache: (&str, &str), positions: &str, rope_cs: (&str, &str)) -> Result<(String, String, String)> {
    let cfg = w.cfg;
    let (nh, kvh, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
    let (cos, sin) = rope_cs;
    let h = w.rms_norm(g, x, &names::input_norm(i))?;
    let q = w.linear(g, &h, &names::proj(i, Proj::Q))?;
    let q = rope_seq_major(w, g, &q, nh, cos, sin);
    let k = w.linear(g, &h, &names::proj(i, Proj::K))?;
    let k = rope_seq_major(w, g, &k, kvh, cos, sin);
    let v = w.linear(g, &h, &names::proj(i, Proj::V))?;
    let (seqlens, total) = gqa_lengths(g, positions);
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    let attrs = [("num_heads", Attr::Int(nh as i64)), ("kv_num_heads", Attr::Int(kvh as i64)), ("scale", Attr::Float(scale))];
    let outs = g.ms_node_n("GroupQueryAttention", &[&q, &k, &v, cache.0, cache.1, &seqlens, &total], 3, &attrs);
    let out = emit_after_attention(w, g, i, x, &outs[0])?;
    Ok((out, outs[1].clone(), outs[2].clone()))
}

/// The exit head on each row's last position of `x` `[B, t, d]`: (summary `[B, 4]`, logits
/// `[B, V]`).
pub fn emit_head(w: &Weights, g: &mut Graph, x: &str) -> Result<(String, String)> {
    let last = w.last(g, x);
    let h = w.rms_norm(g, &last, names::FINAL_NORM)?;
    let lm = if w.t.contains_key(names::LM_HEAD) { names::LM_HEAD } else { names::EMBED };
    let wt = w.init_t(g, lm)?;
    let logits = g.node("MatMul", &[&h, &wt], &[]);
    let logits = w.to_f32(g, &logits);
    let rows = g.ints(&[0, -1]);
    let logits = g.node("Reshape", &[&logits, &rows], &[]);
    let k = g.ints(&[2]);
    let tk = g.node_n("TopK", &[&logits, &k], 2, &[("axis", Attr::Int(-1)), ("largest", Attr::Int(1)), ("sorted", Attr::Int(1))]);
    let (s0, s1, ax) = (g.ints(&[0]), g.ints(&[1]), g.ints(&[1]));
    let top1 = g.node("Slice", &[&tk[0], &s0, &s1, &ax], &[]);
    let shifted = g.node("Sub", &[&logits, &top1], &[]);
    let e = g.node("Exp", &[&shifted], &[]);
    let z = g.node("ReduceSum", &[&e, &ax], &[("keepdims", Attr::Int(1))]);
    let idx = g.node("Slice", &[&tk[1], &s0, &s1, &ax], &[]);
    let idx = g.node("Cast", &[&idx], &[("to", Attr::Int(dt::FLOAT as i64))]);
    let summary = g.node("Concat", &[&idx, &tk[0], &z], &[("axis", Attr::Int(1))]);
    Ok((summary, logits))
}

/// `[1, t, d]`: one row's hidden states.
fn hidden_dims() -> [Dim; 3] {
    [Dim::Fixed(1), Dim::Named("t"), Dim::Named("d")]
}

/// `[B, t, d]`: hidden states of a batch of rows.
fn rows_dims() -> [Dim; 3] {
    [Dim::Named("b"), Dim::Named("t"), Dim::Named("d")]
}

fn kv_dims(w: &Weights, len: &'static str) -> [Dim; 4] {
    [Dim::Fixed(1), Dim::Fixed(w.cfg.kv_heads() as i64), Dim::Named(len), Dim::Fixed(w.cfg.head_dim() as i64)]
}

/// `[B, kv, len, hd]`: a batch of rows' caches.
fn kv_rows_dims(w: &Weights, len: &'static str) -> [Dim; 4] {
    [Dim::Named("b"), Dim::Fixed(w.cfg.kv_heads() as i64), Dim::Named(len), Dim::Fixed(w.cfg.head_dim() as i64)]
}

/// The summary and logits outputs of a head, one row each.
fn head_outputs(w: &Weights, g: &mut Graph, summary: &str, logits: &str) {
    g.output(summary, "summary", dt::FLOAT, &[Dim::Named("b"), Dim::Fixed(4)]);
    g.output(logits, "logits", dt::FLOAT, &[Dim::Named("b"), Dim::Fixed(w.cfg.vocab_size as i64)]);
}

/// `embed`.
pub fn embed_graph(w: &Weights) -> Result<Graph> {
    let mut g = Graph::new("embed");
    let ids = g.input("ids", dt::INT64, &[Dim::Named("t")]);
    let e = w.init(&mut g, names::EMBED)?;
    let rows = g.node("Gather", &[&e, &ids], &[("axis", Attr::Int(0))]);
    let ax = g.ints(&[0]);
    let h = g.node("Unsqueeze", &[&rows, &ax], &[]);
    g.output(&h, "hidden", elem(w.p), &hidden_dims());
    Ok(g)
}

/// The inputs a concatenating layer graph takes: `hidden`, `past_k`, `past_v`, `positions`.
fn cached_inputs(w: &Weights, g: &mut Graph) -> (String, String, String, String) {
    let x = g.input("hidden", elem(w.p), &hidden_dims());
    let pk = g.input("past_k", elem(w.p), &kv_dims(w, "past"));
    let pv = g.input("past_v", elem(w.p), &kv_dims(w, "past"));
    let pos = g.input("positions", dt::INT64, &[Dim::Named("t")]);
    (x, pk, pv, pos)
}

/// How the layer graphs hold a layer's key/value cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheForm {
    /// `past` `[1, kv, P, hd]` in, `present = Concat(past, new)` out: a copy of the whole cache
    /// per call, standard ops only (any device and precision).
    Concat,
    /// One buffer `[1, kv, capacity, hd]` per layer, bound as both `past` and `present` of
    /// `GroupQueryAttention`, which writes the new positions in place and attends over the
    /// cached length only; propagation graphs output the new entries (`new_k`, `new_v`
    /// `[1, kv, 1, hd]`) for the host to write. ONNX Runtime implements the op on its CPU
    /// provider in f32 and f16.
    InPlace,
}

impl CacheForm {
    /// The form for a device and precision: in place where ONNX Runtime's CPU provider has the
    /// op (f32, f16) and the host can write propagated entries; the concatenating graphs
    /// elsewhere (bf16, and CUDA, whose op takes no f32 and whose buffers the host cannot write).
    pub fn for_run(cpu: bool, p: Precision) -> CacheForm {
        if cpu && p != Precision::Bf16 {
            CacheForm::InPlace
        } else {
            CacheForm::Concat
        }
    }

    /// Its name in export folder names and manifests.
    pub fn name(self) -> &'static str {
        match self {
            CacheForm::Concat => "concat",
            CacheForm::InPlace => "in-place",
        }
    }
}

/// `layer_i` (0-based `i`) with its cache in `form` (in place: with a batch axis).
pub fn layer_graph(w: &Weights, i: usize, form: CacheForm) -> Result<Graph> {
    let mut g = Graph::new(&format!("layer_{}", i + 1));
    if form == CacheForm::InPlace {
        let x = g.input("hidden", elem(w.p), &rows_dims());
        let pk = g.input("past_k", elem(w.p), &kv_rows_dims(w, "capacity"));
        let pv = g.input("past_v", elem(w.p), &kv_rows_dims(w, "capacity"));
        let pos = g.input("positions", dt::INT64, &[Dim::Named("b"), Dim::Named("t")]);
        let (c, s) = emit_rope(w, &mut g, &pos);
        let (out, k, v) = emit_layer_in_place(w, &mut g, i, &x, (&pk, &pv), &pos, (&c, &s))?;
        g.output(&out, "hidden_out", elem(w.p), &rows_dims());
        g.output(&k, "present_k", elem(w.p), &kv_rows_dims(w, "capacity"));
        g.output(&v, "present_v", elem(w.p), &kv_rows_dims(w, "capacity"));
        return Ok(g);
    }
    let (x, pk, pv, pos) = cached_inputs(w, &mut g);
    let (c, s) = emit_rope(w, &mut g, &pos);
    let (out, k, v) = emit_layer(w, &mut g, i, &x, (&pk, &pv), &pos, (&c, &s))?;
    g.output(&out, "hidden_out", elem(w.p), &hidden_dims());
    g.output(&k, "present_k", elem(w.p), &kv_dims(w, "total"));
    g.output(&v, "present_v", elem(w.p), &kv_dims(w, "total"));
    Ok(g)
}

/// `propagate_i` (0-based `i`): the layer's input norm + k/v projections of the last position,
/// appended to the cache (`Concat`) or output as `new_k`/`new_v` for the host to write
/// (`InPlace`, with a batch axis: one last position per row).
pub fn propagate_graph(w: &Weights, i: usize, form: CacheForm) -> Result<Graph> {
    let mut g = Graph::new(&format!("propagate_{}", i + 1));
    if form == CacheForm::InPlace {
        let x = g.input("hidden", elem(w.p), &rows_dims());
        let pos = g.input("positions", dt::INT64, &[Dim::Named("b"), Dim::Fixed(1)]);
        let last = w.last(&mut g, &x);
        let (c, s) = emit_rope(w, &mut g, &pos);
        let h = w.rms_norm(&mut g, &last, &names::input_norm(i))?;
        let (kvh, hd) = (w.cfg.kv_heads(), w.cfg.head_dim());
        let k = w.linear(&mut g, &h, &names::proj(i, Proj::K))?;
        let k = seq_major_heads(w, &mut g, &k, kvh);
        let k = rope_heads_last(w, &mut g, &k, &c, &s);
        let v = w.linear(&mut g, &h, &names::proj(i, Proj::V))?;
        let v = seq_major_heads(w, &mut g, &v, kvh);
        let heads_first = [("perm", Attr::Ints(vec![0, 2, 1, 3]))];
        let (k, v) = (g.node("Transpose", &[&k], &heads_first), g.node("Transpose", &[&v], &heads_first));
        let one = [Dim::Named("b"), Dim::Fixed(kvh as i64), Dim::Fixed(1), Dim::Fixed(hd as i64)];
        g.output(&k, "new_k", elem(w.p), &one);
        g.output(&v, "new_v", elem(w.p), &one);
        return Ok(g);
    }
    let x = g.input("hidden", elem(w.p), &hidden_dims());
    let (pk, pv) = (g.input("past_k", elem(w.p), &kv_dims(w, "past")), g.input("past_v", elem(w.p), &kv_dims(w, "past")));
    let pos = g.input("positions", dt::INT64, &[Dim::Fixed(1)]);
    let last = w.last(&mut g, &x);
    let (c, s) = emit_rope(w, &mut g, &pos);
    let h = w.rms_norm(&mut g, &last, &names::input_norm(i))?;
    let (k, v) = kv_of_normed(w, &mut g, i, &h, &c, &s)?;
    let k = g.node("Concat", &[&pk, &k], &[("axis", Attr::Int(2))]);
    let v = g.node("Concat", &[&pv, &v], &[("axis", Attr::Int(2))]);
    g.output(&k, "present_k", elem(w.p), &kv_dims(w, "total"));
    g.output(&v, "present_v", elem(w.p), &kv_dims(w, "total"));
    Ok(g)
}

/// `head`, with a batch axis (one summary per row).
pub fn head_graph(w: &Weights) -> Result<Graph> {
    let mut g = Graph::new("head");
    let x = g.input("hidden", elem(w.p), &rows_dims());
    let (summary, logits) = emit_head(w, &mut g, &x)?;
    head_outputs(w, &mut g, &summary, &logits);
    Ok(g)
}

/// `classifier`: sigmoid(w_l · finalnorm(x) + b_l), the final norm's output rounded to the
/// export dtype as candle's is. `None` when the model has no classifiers.
pub fn classifier_graph(w: &Weights) -> Result<Option<Graph>> {
    let l = w.cfg.num_hidden_layers;
    if !w.t.contains_key(&names::classifier_weight(0)) {
        return Ok(None);
    }
    let d = w.cfg.hidden_size;
    let mut ws = Vec::with_capacity(l * d * 4);
    let mut bs = Vec::with_capacity(l * 4);
    for i in 0..l {
        ws.extend(raw_bytes(w.get(&names::classifier_weight(i))?)?);
        bs.extend(raw_bytes(w.get(&names::classifier_bias(i))?)?);
    }
    let mut g = Graph::new("classifier");
    let x = g.input("hidden", elem(w.p), &hidden_dims());
    let layer = g.input("layer", dt::INT64, &[Dim::Fixed(1)]);
    let wm = g.init("cls_w", dt::FLOAT, &[l as i64, d as i64], ws);
    let bm = g.init("cls_b", dt::FLOAT, &[l as i64], bs);
    let last = w.last(&mut g, &x);
    let h = w.rms_norm(&mut g, &last, names::FINAL_NORM)?;
    let h = w.to_f32(&mut g, &h);
    let flat = g.ints(&[-1]);
    let h = g.node("Reshape", &[&h, &flat], &[]);
    let wl = g.node("Gather", &[&wm, &layer], &[("axis", Attr::Int(0))]);
    let wl = g.node("Reshape", &[&wl, &flat], &[]);
    let bl = g.node("Gather", &[&bm, &layer], &[("axis", Attr::Int(0))]);
    let prod = g.node("Mul", &[&h, &wl], &[]);
    let ax = g.ints(&[0]);
    let z = g.node("ReduceSum", &[&prod, &ax], &[("keepdims", Attr::Int(1))]);
    let z = g.node("Add", &[&z, &bl], &[]);
    let p = g.node("Sigmoid", &[&z], &[]);
    g.output(&p, "prob", dt::FLOAT, &[Dim::Fixed(1)]);
    Ok(Some(g))
}

/// `cosine` of the last positions of two states, in f32 (devices other than the CPU).
pub fn cosine_graph(w: &Weights) -> Result<Graph> {
    let mut g = Graph::new("cosine");
    let a = g.input("a", elem(w.p), &hidden_dims());
    let b = g.input("b", elem(w.p), &hidden_dims());
    let (a, b) = (w.last(&mut g, &a), w.last(&mut g, &b));
    let (a, b) = (w.to_f32(&mut g, &a), w.to_f32(&mut g, &b));
    let ab = g.node("Mul", &[&a, &b], &[]);
    let aa = g.node("Mul", &[&a, &a], &[]);
    let bb = g.node("Mul", &[&b, &b], &[]);
    let ax = g.ints(&[0, 1, 2]);
    let kd = [("keepdims", Attr::Int(0))];
    let (ab, aa, bb) = (g.node("ReduceSum", &[&ab, &ax], &kd), g.node("ReduceSum", &[&aa, &ax], &kd), g.node("ReduceSum", &[&bb, &ax], &kd));
    let n = g.node("Mul", &[&aa, &bb], &[]);
    let n = g.node("Sqrt", &[&n], &[]);
    let c = g.node("Div", &[&ab, &n], &[]);
    let one = g.ints(&[1]);
    let c = g.node("Reshape", &[&c, &one], &[]);
    g.output(&c, "cosine", dt::FLOAT, &[Dim::Fixed(1)]);
    Ok(g)
}

/// `full`: embedding, every layer and the head in one graph, caches in `form` (to measure what
/// layer-by-layer dispatch costs).
pub fn full_graph(w: &Weights, form: CacheForm) -> Result<Graph> {
    let mut g = Graph::new("full");
    let ids = g.input("ids", dt::INT64, &[Dim::Named("t")]);
    let pos = g.input("positions", dt::INT64, &[Dim::Named("t")]);
    let e = w.init(&mut g, names::EMBED)?;
    let rows = g.node("Gather", &[&e, &ids], &[("axis", Attr::Int(0))]);
    let ax = g.ints(&[0]);
    let mut h = g.node("Unsqueeze", &[&rows, &ax], &[]);
    // The in-place layers take positions per row: `[1, t]`.
    let row_pos = if form == CacheForm::InPlace { g.node("Unsqueeze", &[&pos, &ax], &[]) } else { pos.clone() };
    let (c, s) = emit_rope(w, &mut g, &row_pos);
    let mut presents = Vec::new();
    for i in 0..w.cfg.num_hidden_layers {
        let len = if form == CacheForm::InPlace { "capacity" } else { "past" };
        let pk = g.input(&format!("past_k_{}", i + 1), elem(w.p), &kv_dims(w, len));
        let pv = g.input(&format!("past_v_{}", i + 1), elem(w.p), &kv_dims(w, len));
        let (out, k, v) = match form {
            CacheForm::Concat => emit_layer(w, &mut g, i, &h, (&pk, &pv), &row_pos, (&c, &s))?,
            CacheForm::InPlace => emit_layer_in_place(w, &mut g, i, &h, (&pk, &pv), &row_pos, (&c, &s))?,
        };
        presents.push((k, v));
        h = out;
    }
    let (summary, logits) = emit_head(w, &mut g, &h)?;
    head_outputs(w, &mut g, &summary, &logits);
    let total = if form == CacheForm::InPlace { "capacity" } else { "total" };
    for (i, (k, v)) in presents.iter().enumerate() {
        g.output(k, &format!("present_k_{}", i + 1), elem(w.p), &kv_dims(w, total));
        g.output(v, &format!("present_v_{}", i + 1), elem(w.p), &kv_dims(w, total));
    }
    Ok(g)
}
