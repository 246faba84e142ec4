//! Decode positions of one row (one position, or the few of a verification pass after cached
//! ones) on the CPU in f32, run on host slices: a layer's norms, products, rotary embedding,
//! attention, SwiGLU and residual adds, the propagation step and the exit head, without a candle
//! op between them. Through candle each of these is an op that allocates its output and
//! dispatches on its layout, a cost that at batch 1 does not shrink with the layer's width; here
//! the arithmetic is candle's own, in its order (the same expressions over the same values, the
//! few-row product kernel candle's path calls too), so every value has the bits the candle path
//! gives it (`tests::the_host_row_has_the_candle_paths_bits`).

use super::{DecoderLayer, LayerCache, Linear, LlamaModel, Rope, RmsNorm};
use crate::error::{Error, Result};
use crate::model::attention_cpu;
use crate::model::matvec::{self, with_slice};
use candle_core::Tensor;

impl RmsNorm {
    /// candle's `rms_norm` of each row of `x` (rows of the weight's length): Σx² in f32 in
    /// order, then `x / rms * weight`.
    fn forward_host(&self, x: &[f32]) -> Result<Vec<f32>> {
        let eps = self.eps as f32;
        with_slice(&self.weight, |alpha| {
            let mut out = Vec::with_capacity(x.len());
            for row in x.chunks_exact(alpha.len()) {
                let sum2 = row.iter().map(|&v| v * v).sum::<f32>();
                let m = (sum2 / row.len() as f32 + eps).sqrt();
                out.extend(row.iter().zip(alpha).map(|(&s, &a)| s / m * a));
            }
            out
        })
    }
}

impl Linear {
    /// `x W^T (+ b)` for the rows of `x`: the few-row kernel, as [`Linear::forward`] runs it.
    fn forward_host(&self, x: &[f32]) -> Result<Vec<f32>> {
        let (rows, cols) = self.weight.dims2()?;
        if x.is_empty() || !x.len().is_multiple_of(cols) {
            return Err(Error::Internal(format!("linear: {} values for rows of a weight of {rows} × {cols}", x.len())));
        }
        let m = x.len() / cols;
        let mut y = vec![0f32; rows * m];
        with_slice(&self.weight, |w| matvec::matmul_rows(w, x, m, &mut y))?;
        if let Some(b) = &self.bias {
            with_slice(b, |b| y.chunks_exact_mut(rows).for_each(|r| r.iter_mut().zip(b).for_each(|(y, b)| *y += b)))?;
        }
        Ok(y)
    }
}

impl Rope {
    /// candle's `rope` (rotate-half) of `x` `[t, heads · hd]`, row i at position `pos + i`.
    fn rotate_host(&self, x: &[f32], pos: usize, width: usize, hd: usize) -> Result<Vec<f32>> {
        let half = hd / 2;
        let (t, positions) = (x.len() / width, self.cos.dim(0)?);
        if pos + t > positions {
            return Err(Error::Internal(format!("rope: positions {pos}..{} are past the table's {positions}", pos + t)));
        }
        with_slice(&self.cos, |cos| {
            with_slice(&self.sin, |sin| {
                let mut out = vec![0f32; x.len()];
                for (i, (row, orow)) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)).enumerate() {
                    let at = (pos + i) * half;
                    let (c, s) = (&cos[at..at + half], &sin[at..at + half]);
                    for (src, dst) in row.chunks_exact(hd).zip(orow.chunks_exact_mut(hd)) {
                        for i in 0..half {
                            dst[i] = src[i] * c[i] - src[i + half] * s[i];
                            dst[i + half] = src[i] * s[i] + src[i + half] * c[i];
                        }
                    }
                }
                out
            })
        })?
    }
}

/// The f32 values of `[1, t, d]` on the host.
fn rows_of(x: &Tensor) -> Result<Vec<f32>> {
    with_slice(&x.contiguous()?, |s| s.to_vec())
}

/// `[t, heads · hd]` (position-major) as `[heads, t, hd]` (head-major).
fn heads_first(x: &[f32], t: usize, heads: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for i in 0..t {
        for h in 0..heads {
            out[(h * t + i) * hd..(h * t + i + 1) * hd].copy_from_slice(&x[(i * heads + h) * hd..(i * heads + h + 1) * hd]);
        }
    }
    out
}

impl DecoderLayer {
    /// Rotated keys and values of the normed rows `h` (`t` positions from `pos`), appended to
    /// `cache`.
    fn append_kv_host(&self, h: &[f32], t: usize, pos: usize, rope: &Rope, cache: &mut LayerCache, like: &Tensor) -> Result<()> {
        let a = &self.attn;
        let (width, hd) = (a.kv_heads * a.head_dim, a.head_dim);
        let k = heads_first(&rope.rotate_host(&a.k.forward_host(h)?, pos, width, hd)?, t, a.kv_heads, hd);
        let v = heads_first(&a.v.forward_host(h)?, t, a.kv_heads, hd);
        let shape = (1, a.kv_heads, t, hd);
        cache.kv.append(&Tensor::from_vec(k, shape, like.device())?, &Tensor::from_vec(v, shape, like.device())?)?;
        Ok(())
    }

    /// [`DecoderLayer::forward`] of `x` `[1, t, d]` at positions `pos..pos + t` with its cache:
    /// one position, or the few of a verification pass after cached ones (each position attends
    /// as a decode step of it would).
    pub(super) fn forward_host(&self, x: &Tensor, pos: usize, rope: &Rope, cache: &mut LayerCache) -> Result<Tensor> {
        let a = &self.attn;
        let t = x.dim(1)?;
        let xs = rows_of(x)?;
        let h = self.input_norm.forward_host(&xs)?;
        let q = rope.rotate_host(&a.q.forward_host(&h)?, pos, a.heads * a.head_dim, a.head_dim)?;
        self.append_kv_host(&h, t, pos, rope, cache, x)?;
        let att = attention_cpu::attend_host(&heads_first(&q, t, a.heads, a.head_dim), &cache.kv, t, a.shape())?;
        let mut x1 = a.o.forward_host(&att)?;
        x1.iter_mut().zip(&xs).for_each(|(o, x)| *o += x);
        let h = self.post_norm.forward_host(&x1)?;
        let mut m = self.gate.forward_host(&h)?;
        // candle's SiLU, v / (1 + e^−v), times the up projection; the exponentials eight at a
        // time with `f32::exp`'s bits.
        let mut e: Vec<f32> = m.iter().map(|&g| -g).collect();
        crate::expf::exp_in_place(&mut e);
        m.iter_mut().zip(&e).zip(self.up.forward_host(&h)?).for_each(|((g, e), u)| *g = *g / (1.0 + e) * u);
        let mut out = self.down.forward_host(&m)?;
        out.iter_mut().zip(&x1).for_each(|(d, x)| *d += x);
        Ok(Tensor::from_vec(out, x.shape(), x.device())?)
    }

    /// [`DecoderLayer::project_kv`] of one position `x` `[1, 1, d]`, appended to `cache`.
    pub(super) fn propagate_host(&self, x: &Tensor, pos: usize, rope: &Rope, cache: &mut LayerCache) -> Result<()> {
        let h = self.input_norm.forward_host(&rows_of(x)?)?;
        self.append_kv_host(&h, 1, pos, rope, cache, x)
    }
}

impl LlamaModel {
    /// The exit head's logits of the positions of `x` `[1, t, d]`, written into `logits`
    /// (resized to `t` × the vocabulary, position-major): [`LlamaModel::head`] without a tensor
    /// for the logits.
    pub fn head_host(&self, x: &Tensor, logits: &mut Vec<f32>) -> Result<()> {
        let h = self.norm.forward_host(&rows_of(x)?)?;
        let (v, d) = self.lm_head.dims2()?;
        if h.is_empty() || !h.len().is_multiple_of(d) {
            return Err(Error::Internal(format!("head: {} values for rows of an LM head of {v} × {d}", h.len())));
        }
        let m = h.len() / d;
        logits.resize(v * m, 0.0);
        with_slice(&self.lm_head, |w| matvec::matmul_rows(w, &h, m, logits))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DecoderLayer, LayerCache, LlamaModel, Rope};
    use crate::model::attention_cpu;
    use crate::model::names::{self, Proj};
    use crate::model::weights::{TensorLoader, WeightSource};
    use candle_core::{DType, Device, Tensor};
    use std::collections::HashMap;

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
    }

    /// `n` seeded values around `mean` (spread `scale`).
    fn values(seed: &mut u64, n: usize, mean: f32, scale: f32) -> Tensor {
        let v: Vec<f32> = (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                mean + scale * ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            })
            .collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    }

    /// A small random model with the shape options real checkpoints use (tied embeddings, a
    /// head dim that is not hidden ÷ heads, llama3 RoPE scaling, grouped-query heads) plus
    /// q/k/v biases (Qwen2-style), its weights scaled so that values spread.
    fn model() -> LlamaModel {
        let cfg = crate::testkit::tiny_variant_config(3, 300);
        let (dev, dir) = (Device::Cpu, std::path::Path::new("tiny"));
        let base = LlamaModel::load(&cfg, &TensorLoader::new(WeightSource::Random { seed: 7 }, DType::F32, dev.clone(), dir)).unwrap();
        let mut t: HashMap<String, Tensor> = base.named_tensors().into_iter().map(|(n, t)| if n.ends_with("norm.weight") { (n, t) } else { (n, (t * 10.0).unwrap()) }).collect();
        let norms: Vec<String> = t.keys().filter(|n| n.ends_with("norm.weight")).cloned().collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for n in norms {
            t.insert(n, values(&mut seed, cfg.hidden_size, 1.0, 0.4));
        }
        for i in 0..cfg.num_hidden_layers {
            for p in [Proj::Q, Proj::K, Proj::V] {
                let rows = cfg.proj_shape(p)[0];
                t.insert(names::bias(&names::proj(i, p)), values(&mut seed, rows, 0.0, 1.0));
            }
        }
        LlamaModel::load(&cfg, &TensorLoader::new(WeightSource::Memory(t), DType::F32, dev, dir)).unwrap()
    }

    /// A layer on `x` `[1, t, d]` after cached positions through candle's ops with attention in
    /// place on the host: what `DecoderLayer::forward` ran for one CPU row (one position, or a
    /// verification pass's few) before [`DecoderLayer::forward_host`].
    fn candle_ops(layer: &DecoderLayer, x: &Tensor, pos: usize, rope: &Rope, cache: &mut LayerCache) -> Tensor {
        let a = &layer.attn;
        let t = x.dim(1).unwrap();
        let h = layer.input_norm.forward(x, false).unwrap();
        let q = a.q.forward(&h).unwrap().reshape((1, t, a.heads, a.head_dim)).unwrap().transpose(1, 2).unwrap();
        let q = rope.apply(&q, pos, false).unwrap();
        let (k, v) = layer.kv_of_normed(&h, pos, rope, false).unwrap();
        cache.kv.append(&k, &v).unwrap();
        let out = attention_cpu::attend_segments(&q, &[&cache.kv], &[t], a.shape()).unwrap();
        let att = Tensor::from_vec(out, (1, t, a.heads * a.head_dim), x.device()).unwrap();
        let x = (x + a.o.forward(&att).unwrap()).unwrap();
        let h = layer.post_norm.forward(&x, false).unwrap();
        let mlp = layer.down.forward(&(layer.gate.forward(&h).unwrap().silu().unwrap() * layer.up.forward(&h).unwrap()).unwrap()).unwrap();
        (x + mlp).unwrap()
    }

    /// Every layer output, cache entry (run and propagated) and logit of a 40-token decode on
    /// the host path has the bits of candle's ops, at positions where llama3's RoPE scaling
    /// applies, and so do verification passes of 2 to 16 positions after it (and their logits).
    /// (Reordering the norm's division or SiLU's makes it fail.)
    #[test]
    fn the_host_row_has_the_candle_paths_bits() {
        let m = model();
        let (rope, layers) = (&m.rope, m.layers());
        let (mut fast, mut slow) = (vec![LayerCache::new(4); 3], vec![LayerCache::new(4); 3]);
        let mut logits = Vec::new();
        let (mut run, mut propagated) = (0, 0);
        for step in 0..40usize {
            let x = m.embed(&[(step * 37 % 300) as u32]).unwrap();
            let (mut a, mut b) = (x.clone(), x);
            for (l, layer) in layers.iter().enumerate() {
                // Every third step exits after layer 1 and propagates into the layers after it.
                if l > 0 && step % 3 == 2 {
                    layer.propagate_host(&a, step, rope, &mut fast[l]).unwrap();
                    let (k, v) = layer.project_kv(&b, step, rope, false).unwrap();
                    slow[l].kv.append(&k, &v).unwrap();
                    propagated += 1;
                    continue;
                }
                a = layer.forward_host(&a, step, rope, &mut fast[l]).unwrap();
                b = candle_ops(layer, &b, step, rope, &mut slow[l]);
                assert_eq!(bits(&a), bits(&b), "layer {} at step {step}", l + 1);
                run += 1;
            }
            for l in 0..3 {
                let ((fk, fv), (sk, sv)) = (fast[l].kv().unwrap().unwrap(), slow[l].kv().unwrap().unwrap());
                assert_eq!((bits(&fk), bits(&fv)), (bits(&sk), bits(&sv)), "layer {} cache at step {step}", l + 1);
            }
            m.head_host(&a, &mut logits).unwrap();
            assert_eq!(logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), bits(&m.head(&b).unwrap()), "logits at step {step}");
        }
        assert_eq!((run, propagated), (94, 26));
        // Verification passes of t positions after the 40 cached ones, rolled back after each.
        for t in 2..=16usize {
            let ids: Vec<u32> = (0..t as u32).map(|i| (i * 53 + 11) % 300).collect();
            let x = m.embed(&ids).unwrap();
            let (mut a, mut b) = (x.clone(), x);
            for (l, layer) in layers.iter().enumerate() {
                a = layer.forward_host(&a, 40, rope, &mut fast[l]).unwrap();
                b = candle_ops(layer, &b, 40, rope, &mut slow[l]);
                assert_eq!(bits(&a), bits(&b), "layer {} of a {t}-position pass", l + 1);
                let ((fk, _), (sk, _)) = (fast[l].kv().unwrap().unwrap(), slow[l].kv().unwrap().unwrap());
                assert_eq!(bits(&fk), bits(&sk), "layer {} cache after a {t}-position pass", l + 1);
                fast[l].truncate(40);
                slow[l].truncate(40);
            }
            m.head_host(&a, &mut logits).unwrap();
            assert_eq!(logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), bits(&m.head(&b).unwrap()), "logits of a {t}-position pass");
        }
    }
}
