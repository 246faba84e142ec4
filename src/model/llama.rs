//! The Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU, optional Qwen2-style
//! q/k/v biases) split into the pieces early exit needs: embedding, one layer at a time, the
//! propagation step (a layer's own norm + k/v projections only) and the shared exit head
//! (final RMSNorm + LM head), plus optional per-layer exit classifiers.
//!
//! The same code serves inference (KV cache, fused kernels) and training (no cache,
//! differentiable ops). Norms, softmax and confidence computations run in f32 whatever the
//! weights' dtype. Caches live outside the weights (`LayerCache`).

use super::config::LlamaConfig;
use super::names::{self, Proj};
use super::weights::TensorLoader;
use crate::error::{Error, Result};
use crate::runtime_info::HugePageShare;
use candle_core::{DType, Device, Tensor, D};
use super::kv::KvBuffer;
use super::matvec;

mod one_row;


/// An RMSNorm whose statistics are computed in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(w: &TensorLoader, name: &str, d: usize, eps: f64) -> Result<Self> {
        let weight = w.get_as(name, &[d], DType::F32)?;
        // A norm weight is small: a NaN or infinity in it would silently turn every output to NaN.
        let values = weight.flatten_all()?.to_vec1::<f32>()?;
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return Err(w.bad_tensor(name, format!("holds a non-finite value ({} at index {i})", values[i])));
        }
        Ok(Self { weight, eps })
    }

    /// The norm's weight (f32).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Normalises the last dimension; output has the input's dtype.
    pub fn forward(&self, x: &Tensor, differentiable: bool) -> Result<Tensor> {
        let dt = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let y = if differentiable {
            candle_nn::ops::rms_norm_slow(&x32, &self.weight, self.eps as f32)?
        } else {
            candle_nn::ops::rms_norm(&x32.contiguous()?, &self.weight, self.eps as f32)?
        };
        Ok(y.to_dtype(dt)?)
    }
}

/// A linear map `x W^T + b` with weight `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn load(w: &TensorLoader, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Self> {
        let weight = w.get(&names::weight(prefix), &[out, inp])?;
        let bias = if bias { w.get_opt(&names::bias(prefix), &[out])? } else { None };
        Ok(Self { weight, bias })
    }

    /// Applies the map to `[.., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }

    /// Applies the map to `[.., in]` giving every row the bits it gets alone, however many rows
    /// (the few-row kernel, `matvec::rows_times_transposed`); candle's gemm where that kernel
    /// does not apply (a GPU, half precision).
    pub fn forward_each_row(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }

    fn apply(&self, x: &Tensor, each_row: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = *dims.last().unwrap_or(&0);
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, inp))?;
        let kernel = if each_row { matvec::rows_times_transposed(&x2, &self.weight)? } else { matvec::try_row_times_transposed(&x2, &self.weight)? };
        let y = match kernel {
            Some(y) => y,
            None => x2.matmul(&self.weight.t()?)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().unwrap() = self.weight.dim(0)?;
        Ok(y.reshape(out)?)
    }

    /// The weight matrix `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

/// The most positions a RoPE table holds (Llama 3.1's 128k context): the table is sized by this,
/// never by an unchecked `max_position_embeddings` alone.
pub const MAX_ROPE_POSITIONS: usize = 1 << 17;

/// Precomputed RoPE cos/sin tables, `[min(max_positions, MAX_ROPE_POSITIONS), head_dim / 2]`.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// Tables for every position of the config, in `dtype`.
    pub fn new(cfg: &LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let inv = cfg.rope_inv_freq();
        let half = inv.len();
        let n = cfg.max_position_embeddings.min(MAX_ROPE_POSITIONS);
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?;
        Ok(Self { cos, sin })
    }

    /// Rotates `[b, heads, t, hd]` whose first position is `pos`.
    fn apply(&self, x: &Tensor, pos: usize, differentiable: bool) -> Result<Tensor> {
        let t = x.dim(2)?;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        Ok(if differentiable {
            candle_nn::rotary_emb::rope_slow(x, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?
        })
    }

    /// Rotates `[1, heads, n, hd]` whose position i is `positions[i]` (positions of several rows
    /// side by side); the same table entries as [`Rope::apply`], so the same values.
    fn apply_at(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let cos = self.cos.index_select(positions, 0)?;
        let sin = self.sin.index_select(positions, 0)?;
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?)
    }
}

/// One layer's key/value cache.
#[derive(Debug, Clone)]
pub struct LayerCache {
    kv: KvBuffer,
}

impl LayerCache {
    /// An empty cache whose first allocation holds `max_len` positions (it grows beyond).
    pub fn new(max_len: usize) -> Self {
        Self { kv: KvBuffer::new(max_len) }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.kv.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }

    /// Cached keys and values, `[1, kv_heads, len, head_dim]` each (views of the buffers).
    pub fn kv(&self) -> Result<Option<(Tensor, Tensor)>> {
        self.kv.kv()
    }

    /// Drops every cached position, keeping the buffers for the next sequence.
    pub fn reset(&mut self) {
        self.kv.clear()
    }

    /// Keeps the first `n` positions (drops rejected drafts).
    pub fn truncate(&mut self, n: usize) {
        self.kv.truncate(n)
    }
}

/// Grouped-query self-attention.
#[derive(Debug, Clone)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn shape(&self) -> super::attention_cpu::Heads {
        super::attention_cpu::Heads { heads: self.heads, kv_heads: self.kv_heads, head_dim: self.head_dim }
    }
}

/// True where decode steps run on the host: f32 on the CPU, one position of one row as a whole
/// on host slices (`one_row`), several positions with attention in place
/// ([`super::attention_cpu`]). Set `EXITBENCH_CANDLE_ATTENTION=1` to use candle's ops instead,
/// for comparison.
fn host_decode(x: &Tensor) -> bool {
    static CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    x.device().is_cpu() && x.dtype() == DType::F32 && !*CANDLE.get_or_init(|| std::env::var("EXITBENCH_CANDLE_ATTENTION").is_ok_and(|v| v == "1"))
}

/// One decoder block: pre-norm attention and SwiGLU MLP, each with a residual connection.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_norm: RmsNorm,
    post_norm: RmsNorm,
    attn: Attention,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl DecoderLayer {
    fn load(w: &TensorLoader, cfg: &LlamaConfig, i: usize) -> Result<Self> {
        let d = cfg.hidden_size;
        let eps = cfg.rms_norm_eps;
        let lin = |p: Proj| {
            let [rows, cols] = cfg.proj_shape(p);
            Linear::load(w, &names::proj(i, p), rows, cols, p.may_have_bias())
        };
        Ok(Self {
            input_norm: RmsNorm::load(w, &names::input_norm(i), d, eps)?,
            post_norm: RmsNorm::load(w, &names::post_norm(i), d, eps)?,
            attn: Attention {
                q: lin(Proj::Q)?,
                k: lin(Proj::K)?,
                v: lin(Proj::V)?,
                o: lin(Proj::O)?,
                heads: cfg.num_attention_heads,
                kv_heads: cfg.kv_heads(),
                head_dim: cfg.head_dim(),
            },
            gate: lin(Proj::Gate)?,
            up: lin(Proj::Up)?,
            down: lin(Proj::Down)?,
        })
    }

    /// Keys (rotated) and values of `x` `[b, t, d]` at positions `pos..pos+t`, each
    /// `[b, kv_heads, t, head_dim]`: what the layer writes into its cache.
    pub fn project_kv(&self, x: &Tensor, pos: usize, rope: &Rope, differentiable: bool) -> Result<(Tensor, Tensor)> {
        let h = self.input_norm.forward(x, differentiable)?;
        self.kv_of_normed(&h, pos, rope, differentiable)
    }

    fn kv_of_normed(&self, h: &Tensor, pos: usize, rope: &Rope, differentiable: bool) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = h.dims3()?;
        let a = &self.attn;
        let k = a.k.forward(h)?.reshape((b, t, a.kv_heads, a.head_dim))?.transpose(1, 2)?;
        let v = a.v.forward(h)?.reshape((b, t, a.kv_heads, a.head_dim))?.transpose(1, 2)?.contiguous()?;
        let k = rope.apply(&k, pos, differentiable)?;
        Ok((k, v))
    }

    /// Runs the block on `x` `[b, t, d]` at positions `pos..pos+t`. With a cache the new keys and
    /// values are appended and attention covers every cached position.
    pub fn forward(&self, x: &Tensor, pos: usize, rope: &Rope, mut cache: Option<&mut LayerCache>, differentiable: bool) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        // One position of one row on the CPU, or a few after cached ones (a speculative
        // verification pass): the whole layer on host slices. A prefill, which starts from an
        // empty cache, keeps candle's matrix products.
        let host = b == 1 && !differentiable && host_decode(x);
        if let Some(c) = cache.as_deref_mut().filter(|c| host && (t == 1 || (t <= super::matvec::MAX_ROWS && !c.is_empty()))) {
            return self.forward_host(x, pos, rope, c);
        }
        let a = &self.attn;
        let h = self.input_norm.forward(x, differentiable)?;
        let q = a.q.forward(&h)?.reshape((b, t, a.heads, a.head_dim))?.transpose(1, 2)?;
        let q = rope.apply(&q, pos, differentiable)?;
        let (k, v) = self.kv_of_normed(&h, pos, rope, differentiable)?;
        let (k, v) = match cache {
            Some(c) => c.kv.append(&k, &v)?,
            None => (k, v),
        };
        let att = attend(&q, &k, &v, a.kv_heads, pos, differentiable)?;
        let att = att.transpose(1, 2)?.reshape((b, t, a.heads * a.head_dim))?;
        let x = (x + a.o.forward(&att)?)?;
        let h = self.post_norm.forward(&x, differentiable)?;
        let mlp = self.down.forward(&(self.gate.forward(&h)?.silu()? * self.up.forward(&h)?)?)?;
        Ok((x + mlp)?)
    }
}

/// Several rows side by side in one state `[1, n, d]`: row `rows[i]` owns the next `lens[i]`
/// positions, which continue that row's own cache (per-row offsets, no padding: each row's
/// positions start at its own cache length and its attention sees only its own cache).
#[derive(Debug, Clone, Copy)]
pub struct RowSegments<'a> {
    /// Which row (index into the layer's caches) each segment belongs to, in order.
    pub rows: &'a [usize],
    /// Positions in each segment.
    pub lens: &'a [usize],
}

impl RowSegments<'_> {
    /// The absolute position of every position of the state, from each row's cache length.
    fn positions(&self, caches: &[LayerCache], device: &Device) -> Result<Tensor> {
        let mut p = Vec::with_capacity(self.lens.iter().sum());
        for (&r, &t) in self.rows.iter().zip(self.lens) {
            let start = caches[r].len() as u32;
            p.extend(start..start + t as u32);
        }
        Ok(Tensor::new(p, device)?)
    }
}

impl DecoderLayer {
    /// Runs the block on the rows of `x` `[1, n, d]` laid out by `segs`: one matrix product per
    /// projection for every row (each weight read once), then each row's attention over its own
    /// cache `caches[row]`, to which its keys and values are appended.
    pub fn forward_rows(&self, x: &Tensor, segs: RowSegments<'_>, rope: &Rope, caches: &mut [LayerCache]) -> Result<Tensor> {
        let (_, n, _) = x.dims3()?;
        let a = &self.attn;
        // On the CPU, decode steps (one position per row) and verification passes (a few
        // positions after cached ones) attend in place, each position as the row alone attends
        // it (the same bits). A prefill, which starts from an empty cache (or a segment longer
        // than the few-row kernel's rows, which alone would use candle's gemm), keeps candle's
        // matrix products.
        let in_place = |(&r, &t): (&usize, &usize)| t == 1 || (t <= super::matvec::MAX_ROWS && !caches[r].is_empty());
        let host = host_decode(x) && segs.rows.iter().zip(segs.lens).all(in_place);
        // A verification pass (some segment of several positions) runs every product through
        // the few-row kernel however many positions it has; decode steps keep candle's gemm
        // above 16 rows, where it is faster.
        let each_row = host && segs.lens.iter().any(|&t| t > 1);
        let lin = |l: &Linear, x: &Tensor| if each_row { l.forward_each_row(x) } else { l.forward(x) };
        let positions = segs.positions(caches, x.device())?;
        let h = self.input_norm.forward(x, false)?;
        let q = lin(&a.q, &h)?.reshape((1, n, a.heads, a.head_dim))?.transpose(1, 2)?;
        let q = rope.apply_at(&q, &positions)?;
        let (k, v) = self.kv_rows(&h, &positions, rope, each_row)?;
        let att = if host {
            let mut start = 0;
            for (&r, &t) in segs.rows.iter().zip(segs.lens) {
                caches[r].kv.append(&k.narrow(2, start, t)?.contiguous()?, &v.narrow(2, start, t)?.contiguous()?)?;
                start += t;
            }
            let rows: Vec<&KvBuffer> = segs.rows.iter().map(|&r| &caches[r].kv).collect();
            let out = super::attention_cpu::attend_segments(&q, &rows, segs.lens, a.shape())?;
            Tensor::from_vec(out, (1, n, a.heads * a.head_dim), x.device())?
        } else {
            let mut outs = Vec::with_capacity(segs.rows.len());
            let mut start = 0;
            for (&r, &t) in segs.rows.iter().zip(segs.lens) {
                let pos = caches[r].len();
                let (kc, vc) = caches[r].kv.append(&k.narrow(2, start, t)?.contiguous()?, &v.narrow(2, start, t)?.contiguous()?)?;
                outs.push(attend(&q.narrow(2, start, t)?, &kc, &vc, a.kv_heads, pos, false)?);
                start += t;
            }
            Tensor::cat(&outs, 2)?.transpose(1, 2)?.reshape((1, n, a.heads * a.head_dim))?
        };
        let x = (x + lin(&a.o, &att)?)?;
        let h = self.post_norm.forward(&x, false)?;
        let mlp = lin(&self.down, &(lin(&self.gate, &h)?.silu()? * lin(&self.up, &h)?)?)?;
        Ok((x + mlp)?)
    }

    /// Propagation for several rows at once: the layer's norm and k/v projections of `x`
    /// `[1, n, d]` (one position per row, `rows[i]` owning position i), appended to each row's
    /// cache at its own position.
    pub fn propagate_rows(&self, x: &Tensor, rows: &[usize], rope: &Rope, caches: &mut [LayerCache]) -> Result<()> {
        let ones = vec![1; rows.len()];
        let positions = RowSegments { rows, lens: &ones }.positions(caches, x.device())?;
        let h = self.input_norm.forward(x, false)?;
        let (k, v) = self.kv_rows(&h, &positions, rope, false)?;
        for (i, &r) in rows.iter().enumerate() {
            caches[r].kv.append(&k.narrow(2, i, 1)?.contiguous()?, &v.narrow(2, i, 1)?.contiguous()?)?;
        }
        Ok(())
    }

    /// Rotated keys and values `[1, kv_heads, n, hd]` of normed `h` `[1, n, d]` at `positions`
    /// (`each_row`: every row's products with its own bits, see [`Linear::forward_each_row`]).
    fn kv_rows(&self, h: &Tensor, positions: &Tensor, rope: &Rope, each_row: bool) -> Result<(Tensor, Tensor)> {
        let (_, n, _) = h.dims3()?;
        let a = &self.attn;
        let lin = |l: &Linear| if each_row { l.forward_each_row(h) } else { l.forward(h) };
        let k = lin(&a.k)?.reshape((1, n, a.kv_heads, a.head_dim))?.transpose(1, 2)?;
        let v = lin(&a.v)?.reshape((1, n, a.kv_heads, a.head_dim))?.transpose(1, 2)?.contiguous()?;
        Ok((rope.apply_at(&k, positions)?, v))
    }
}

/// Scaled dot-product attention with grouped-query heads and a causal mask. `q` is
/// `[b, heads, t, hd]` for positions `pos..pos+t`; `k`, `v` are `[b, kv_heads, T, hd]` for
/// positions `0..T`. Scores and softmax are computed in f32.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, kv_heads: usize, pos: usize, differentiable: bool) -> Result<Tensor> {
    let (b, heads, t, hd) = q.dims4()?;
    let total = k.dim(2)?;
    let rep = heads / kv_heads;
    // Fold the query heads of a group into rows so keys and values are never copied per head.
    let qg = q.reshape((b, kv_heads, rep * t, hd))?;
    let scale = 1.0 / (hd as f64).sqrt();
    // `k.t()` is a strided view of the cache (no copy of the cached keys per token).
    let scores = (qg.contiguous()?.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
    let scores = if t > 1 {
        let mask = causal_mask(rep, t, total, pos, q.device())?;
        scores.broadcast_add(&mask)?
    } else {
        scores
    };
    let probs = if differentiable {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    let out = probs.to_dtype(v.dtype())?.matmul(v)?;
    Ok(out.reshape((b, heads, t, hd))?)
}

/// `[rep * t, total]` additive mask: row r·t+i (query position pos+i) sees keys 0..=pos+i.
fn causal_mask(rep: usize, t: usize, total: usize, pos: usize, device: &Device) -> Result<Tensor> {
    let mut m = Vec::with_capacity(rep * t * total);
    for _ in 0..rep {
        for i in 0..t {
            for j in 0..total {
                m.push(if j > pos + i { f32::NEG_INFINITY } else { 0.0 });
            }
        }
    }
    Ok(Tensor::from_vec(m, (rep * t, total), device)?)
}

/// The whole decoder with its shared exit head.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    cfg: LlamaConfig,
    embed: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    classifiers: Option<Vec<(Tensor, Tensor)>>,
    rope: Rope,
    dtype: DType,
    /// True when the LM head is the embedding matrix (tied, and no `lm_head.weight` given).
    head_is_embedding: bool,
    /// True while training: differentiable ops instead of fused kernels.
    pub differentiable: bool,
    /// How much of the weights sits on 2 MiB pages (CPU; None elsewhere).
    huge_pages: Option<HugePageShare>,
}

impl LlamaModel {
    /// Builds the model from a tensor loader (HF tensor names).
    pub fn load(cfg: &LlamaConfig, w: &TensorLoader) -> Result<Self> {
        let (v, d) = (cfg.vocab_size, cfg.hidden_size);
        let embed = w.get(names::EMBED, &[v, d])?;
        let layers = (0..cfg.num_hidden_layers).map(|i| DecoderLayer::load(w, cfg, i)).collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(w, names::FINAL_NORM, d, cfg.rms_norm_eps)?;
        let head_is_embedding = cfg.tie_word_embeddings && !w.contains(names::LM_HEAD);
        let lm_head = if head_is_embedding { embed.clone() } else { w.get(names::LM_HEAD, &[v, d])? };
        let classifiers = load_classifiers(w, cfg)?;
        let rope = Rope::new(cfg, w.dtype(), w.device())?;
        let mut m = Self { cfg: cfg.clone(), embed, layers, norm, lm_head, classifiers, rope, dtype: w.dtype(), head_is_embedding, differentiable: false, huge_pages: None };
        if w.device().is_cpu() {
            m.huge_pages = Some(super::huge_pages::gather_onto_huge_pages(m.weights_mut())?);
        }
        Ok(m)
    }

    /// Every weight of the model (the LM head once more, even when it is the embedding).
    fn weights_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = vec![&mut self.embed];
        for l in &mut self.layers {
            out.push(&mut l.input_norm.weight);
            out.push(&mut l.post_norm.weight);
            for lin in [&mut l.attn.q, &mut l.attn.k, &mut l.attn.v, &mut l.attn.o, &mut l.gate, &mut l.up, &mut l.down] {
                out.push(&mut lin.weight);
                if let Some(b) = &mut lin.bias {
                    out.push(b);
                }
            }
        }
        out.push(&mut self.norm.weight);
        out.push(&mut self.lm_head);
        for (w, b) in self.classifiers.iter_mut().flatten() {
            out.push(w);
            out.push(b);
        }
        out
    }

    /// How much of the weights sits on 2 MiB pages (CPU only; see `model::huge_pages`).
    pub fn huge_pages(&self) -> Option<HugePageShare> {
        self.huge_pages
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Number of layers L.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// dtype of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device of the weights.
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// The layers (index 0 is layer 1).
    pub fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    /// True when every layer has an exit classifier.
    pub fn has_classifiers(&self) -> bool {
        self.classifiers.is_some()
    }

    /// Token embeddings of `ids` as `[1, t, d]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let ids_t = Tensor::new(ids, self.device())?;
        Ok(self.embed.index_select(&ids_t, 0)?.unsqueeze(0)?)
    }

    /// Embeddings of a batch of equal-length rows, `[b, t, d]`.
    pub fn embed_batch(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        Ok(self.embed.index_select(&flat, 0)?.reshape((b, t, self.cfg.hidden_size))?)
    }

    /// One forward pass of token 0 at position 0 through every layer and the head; names where
    /// the values first stop being finite (weights holding NaN or infinity show here), or None.
    pub fn first_non_finite(&self) -> Result<Option<String>> {
        let finite = |t: &Tensor| -> Result<bool> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().all(|x| x.is_finite())) };
        let mut h = self.embed(&[0])?;
        if !finite(&h)? {
            return Ok(Some(format!("{} (the embedding of token 0)", names::EMBED)));
        }
        for l in 1..=self.layers.len() {
            h = self.layer_forward(l, &h, 0, None)?;
            if !finite(&h)? {
                return Ok(Some(format!("{}.* (the output of layer {l})", names::layer(l - 1))));
            }
        }
        if !finite(&self.head(&h)?)? {
            return Ok(Some(format!("{} or {} (the head's logits)", names::FINAL_NORM, names::LM_HEAD)));
        }
        Ok(None)
    }

    /// Runs layer `layer` (1-based) on `x` at position `pos`.
    pub fn layer_forward(&self, layer: usize, x: &Tensor, pos: usize, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        self.layers[layer - 1].forward(x, pos, &self.rope, cache, self.differentiable)
    }

    /// Runs layer `layer` (1-based) on several rows side by side (see [`RowSegments`]), each
    /// row's cache being `caches[row]`.
    pub fn layer_forward_rows(&self, layer: usize, x: &Tensor, segs: RowSegments<'_>, caches: &mut [LayerCache]) -> Result<Tensor> {
        self.layers[layer - 1].forward_rows(x, segs, &self.rope, caches)
    }

    /// Propagation into layer `layer` for several rows: `x` `[1, n, d]` holds one exited state
    /// per row, `rows[i]` owning position i.
    pub fn propagate_rows(&self, layer: usize, x: &Tensor, rows: &[usize], caches: &mut [LayerCache]) -> Result<()> {
        self.layers[layer - 1].propagate_rows(x, rows, &self.rope, caches)
    }

    /// CALM's state propagation into layer `layer` (1-based): the layer's own input norm and k/v
    /// projections of the exited state `x`, appended to its cache; the state passes unchanged.
    pub fn propagate(&self, layer: usize, x: &Tensor, pos: usize, cache: &mut LayerCache) -> Result<()> {
        if self.runs_on_host(x) {
            return self.layers[layer - 1].propagate_host(x, pos, &self.rope, cache);
        }
        let (k, v) = self.layers[layer - 1].project_kv(x, pos, &self.rope, false)?;
        cache.kv.append(&k, &v)?;
        Ok(())
    }

    /// True when the positions of one row `x` `[1, t, d]` (t ≤ [`matvec::MAX_ROWS`]) run on
    /// host slices ([`LlamaModel::head_host`]): f32 on the CPU, outside training.
    pub fn runs_on_host(&self, x: &Tensor) -> bool {
        let rows = matches!(x.dims(), &[1, t, d] if (1..=matvec::MAX_ROWS).contains(&t) && d == self.cfg.hidden_size);
        rows && !self.differentiable && host_decode(x)
    }

    /// The k/v a layer computes for a state: what propagation writes (for tests and analysis).
    pub fn project_kv(&self, layer: usize, x: &Tensor, pos: usize) -> Result<(Tensor, Tensor)> {
        self.layers[layer - 1].project_kv(x, pos, &self.rope, self.differentiable)
    }

    /// Final norm of `x` `[.., d]`, in f32.
    pub fn final_norm_f32(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.norm.forward(x, self.differentiable)?.to_dtype(DType::F32)?)
    }

    /// The exit head: final RMSNorm + LM head, logits in f32 with the input's leading shape.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        self.head_with(x, false)
    }

    /// [`LlamaModel::head`] giving every row (position) the bits it gets alone, however many
    /// rows there are (the few-row kernel; candle's gemm where it does not apply): the exit head
    /// over a batch's verification passes.
    pub fn head_each_row(&self, x: &Tensor) -> Result<Tensor> {
        self.head_with(x, true)
    }

    fn head_with(&self, x: &Tensor, each_row: bool) -> Result<Tensor> {
        let h = self.norm.forward(x, self.differentiable)?;
        let dims = h.dims().to_vec();
        let d = *dims.last().unwrap_or(&0);
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let h2 = h.reshape((rows, d))?;
        let kernel = if each_row { matvec::rows_times_transposed(&h2, &self.lm_head)? } else { matvec::try_row_times_transposed(&h2, &self.lm_head)? };
        let logits = match kernel {
            Some(y) => y,
            None => h2.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)?,
        };
        let mut out = dims;
        *out.last_mut().unwrap() = self.cfg.vocab_size;
        Ok(logits.reshape(out)?)
    }

    /// Logits of the last position of `x` `[1, t, d]`, as a host vector.
    pub fn head_last(&self, x: &Tensor) -> Result<Vec<f32>> {
        let t = x.dim(1)?;
        let last = x.narrow(1, t - 1, 1)?;
        Ok(self.head(&last)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Exit-classifier probability for layer `layer` (1-based) on the last position of `x`:
    /// sigmoid(w · finalnorm(x) + b).
    pub fn classifier_prob(&self, layer: usize, x: &Tensor) -> Result<f32> {
        let cls = self.classifiers.as_ref().ok_or_else(Error::no_classifiers)?;
        let (w, b) = &cls[layer - 1];
        let t = x.dim(1)?;
        let h = self.final_norm_f32(&x.narrow(1, t - 1, 1)?)?.flatten_all()?;
        let z = (h.unsqueeze(0)?.matmul(&w.t()?)?.flatten_all()? + b)?;
        let z = z.to_vec1::<f32>()?[0];
        Ok(1.0 / (1.0 + (-z).exp()))
    }

    /// Exit-classifier probabilities of layer `layer` for every position of `x` `[1, n, d]`.
    pub fn classifier_probs(&self, layer: usize, x: &Tensor) -> Result<Vec<f32>> {
        let cls = self.classifiers.as_ref().ok_or_else(Error::no_classifiers)?;
        let (w, b) = &cls[layer - 1];
        let (_, n, d) = x.dims3()?;
        let h = self.final_norm_f32(x)?.reshape((n, d))?;
        let z = h.matmul(&w.t()?)?.flatten_all()?.broadcast_add(b)?.to_vec1::<f32>()?;
        Ok(z.into_iter().map(|z| 1.0 / (1.0 + (-z).exp())).collect())
    }

    /// Named tensors of the model (HF names), e.g. for saving.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(names::EMBED.to_string(), self.embed.clone())];
        for (i, l) in self.layers.iter().enumerate() {
            out.push((names::input_norm(i), l.input_norm.weight.clone()));
            out.push((names::post_norm(i), l.post_norm.weight.clone()));
            let projs = [(Proj::Q, &l.attn.q), (Proj::K, &l.attn.k), (Proj::V, &l.attn.v), (Proj::O, &l.attn.o), (Proj::Gate, &l.gate), (Proj::Up, &l.up), (Proj::Down, &l.down)];
            for (p, lin) in projs {
                let m = names::proj(i, p);
                out.push((names::weight(&m), lin.weight.clone()));
                if let Some(b) = &lin.bias {
                    out.push((names::bias(&m), b.clone()));
                }
            }
        }
        out.push((names::FINAL_NORM.to_string(), self.norm.weight.clone()));
        // A tied model may still ship its own `lm_head.weight`, which candle then uses: keep it.
        if !self.head_is_embedding {
            out.push((names::LM_HEAD.to_string(), self.lm_head.clone()));
        }
        out
    }

    /// Named exit-classifier tensors (empty when the model has none).
    pub fn classifier_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (w, b)) in self.classifiers.iter().flatten().enumerate() {
            out.push((names::classifier_weight(i), w.clone()));
            out.push((names::classifier_bias(i), b.clone()));
        }
        out
    }
}

/// Every decoder tensor a config needs, with its shape and whether it is required (biases are
/// optional; the LM head is optional with tied embeddings): what `LlamaModel::load` reads.
pub fn expected_tensors(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>, bool)> {
    cfg.tensors()
}

fn load_classifiers(w: &TensorLoader, cfg: &LlamaConfig) -> Result<Option<Vec<(Tensor, Tensor)>>> {
    let d = cfg.hidden_size;
    let mut out = Vec::new();
    for i in 0..cfg.num_hidden_layers {
        let wn = names::classifier_weight(i);
        let bn = names::classifier_bias(i);
        match (w.contains(&wn), w.contains(&bn)) {
            (true, true) => out.push((w.get_as(&wn, &[1, d], DType::F32)?, w.get_as(&bn, &[1], DType::F32)?)),
            (false, false) if i == 0 => return Ok(None),
            _ => {
                return Err(Error::Unsupported(format!(
                    "exit classifiers are incomplete: `{wn}` or `{bn}` is missing (every layer needs both)"
                )))
            }
        }
    }
    Ok(Some(out))
}
