//! One decode position of one row on the CPU in f32, run on host slices: a layer's norms,
//! products, rotary embedding, attention, SwiGLU and residual adds, the propagation step and the
//! exit head, without a candle op between them. Through candle each of these is an op that
//! allocates its output and dispatches on its layout, a cost that at batch 1 does not shrink
//! with the layer's width; here the arithmetic is candle's own, in its order (the same
//! expressions over the same values), so every value has the bits the candle path gives it
//! (`tests::the_host_row_has_the_candle_paths_bits`).

use super::{DecoderLayer, LayerCache, Linear, LlamaModel, Rope, RmsNorm};
use crate::error::{Error, Result};
use crate::model::attention_cpu;
use crate::model::matvec::{self, with_slice};
use candle_core::Tensor;

impl RmsNorm {
    /// candle's `rms_norm` of one row: Σx² in f32 in order, then `x / rms * weight`.
    fn forward_host(&self, x: &[f32]) -> Result<Vec<f32>> {
        let eps = self.eps as f32;
        with_slice(&self.weight, |alpha| {
            let sum2 = x.iter().map(|&v| v * v).sum::<f32>();
            let m = (sum2 / x.len() as f32 + eps).sqrt();
            x.iter().zip(alpha).map(|(&s, &a)| s / m * a).collect()
        })
    }
}

impl Linear {
    /// `W x (+ b)` for one row: the few-row kernel at one row, as [`Linear::forward`] runs it.
    fn forward_host(&self, x: &[f32]) -> Result<Vec<f32>> {
        let (rows, cols) = self.weight.dims2()?;
        if cols != x.len() {
            return Err(Error::Internal(format!("linear: a row of {} for a weight of {rows} × {cols}", x.len())));
        }
        let mut y = vec![0f32; rows];
        with_slice(&self.weight, |w| matvec::matvec(w, x, &mut y))?;
        if let Some(b) = &self.bias {
            with_slice(b, |b| y.iter_mut().zip(b).for_each(|(y, b)| *y += b))?;
        }
        Ok(y)
    }
}

impl Rope {
    /// candle's `rope` (rotate-half) of `x` `[heads · hd]` at position `pos`.
    fn rotate_host(&self, x: &[f32], pos: usize, hd: usize) -> Result<Vec<f32>> {
        let half = hd / 2;
        let positions = self.cos.dim(0)?;
        if pos >= positions {
            return Err(Error::Internal(format!("rope: position {pos} is past the table's {positions}")));
        }
        with_slice(&self.cos, |cos| {
            with_slice(&self.sin, |sin| {
                let (c, s) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
                let mut out = vec![0f32; x.len()];
                for (src, dst) in x.chunks_exact(hd).zip(out.chunks_exact_mut(hd)) {
                    for i in 0..half {
                        dst[i] = src[i] * c[i] - src[i + half] * s[i];
                        dst[i + half] = src[i] * s[i] + src[i + half] * c[i];
                    }
                }
                out
            })
        })?
    }
}

/// candle's SiLU in f32.
fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// The f32 values of `[1, 1, d]` on the host.
fn row_of(x: &Tensor) -> Result<Vec<f32>> {
    with_slice(&x.contiguous()?, |s| s.to_vec())
}

impl DecoderLayer {
    /// Rotated keys and values of the normed row `h` at `pos`, appended to `cache`.
    fn append_kv_host(&self, h: &[f32], pos: usize, rope: &Rope, cache: &mut LayerCache, like: &Tensor) -> Result<()> {
        let a = &self.attn;
        let k = rope.rotate_host(&a.k.forward_host(h)?, pos, a.head_dim)?;
        let v = a.v.forward_host(h)?;
        let shape = (1, a.kv_heads, 1, a.head_dim);
        cache.kv.append(&Tensor::from_vec(k, shape, like.device())?, &Tensor::from_vec(v, shape, like.device())?)?;
        Ok(())
    }

    /// [`DecoderLayer::forward`] of one position `x` `[1, 1, d]` at `pos` with its cache.
    pub(super) fn forward_host(&self, x: &Tensor, pos: usize, rope: &Rope, cache: &mut LayerCache) -> Result<Tensor> {
        let a = &self.attn;
        let xs = row_of(x)?;
        let h = self.input_norm.forward_host(&xs)?;
        let q = rope.rotate_host(&a.q.forward_host(&h)?, pos, a.head_dim)?;
        self.append_kv_host(&h, pos, rope, cache, x)?;
        let att = attention_cpu::attend_one(&q, &cache.kv, a.shape())?;
        let mut x1 = a.o.forward_host(&att)?;
        x1.iter_mut().zip(&xs).for_each(|(o, x)| *o += x);
        let h = self.post_norm.forward_host(&x1)?;
        let mut m = self.gate.forward_host(&h)?;
        m.iter_mut().zip(self.up.forward_host(&h)?).for_each(|(g, u)| *g = silu(*g) * u);
        let mut out = self.down.forward_host(&m)?;
        out.iter_mut().zip(&x1).for_each(|(d, x)| *d += x);
        Ok(Tensor::from_vec(out, x.shape(), x.device())?)
    }

    /// [`DecoderLayer::project_kv`] of one position `x` `[1, 1, d]`, appended to `cache`.
    pub(super) fn propagate_host(&self, x: &Tensor, pos: usize, rope: &Rope, cache: &mut LayerCache) -> Result<()> {
        let h = self.input_norm.forward_host(&row_of(x)?)?;
        self.append_kv_host(&h, pos, rope, cache, x)
    }
}

impl LlamaModel {
    /// The exit head's logits of one position `x` `[1, 1, d]`, written into `logits` (resized
    /// to the vocabulary): [`LlamaModel::head`] without a tensor for the logits.
    pub fn head_host(&self, x: &Tensor, logits: &mut Vec<f32>) -> Result<()> {
        let h = self.norm.forward_host(&row_of(x)?)?;
        let (v, d) = self.lm_head.dims2()?;
        if d != h.len() {
            return Err(Error::Internal(format!("head: a row of {} for an LM head of {v} × {d}", h.len())));
        }
        logits.resize(v, 0.0);
        with_slice(&self.lm_head, |w| matvec::matvec(w, &h, logits))
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

    /// The one-position layer through candle's ops with attention in place on the host: what
    /// `DecoderLayer::forward` ran for one CPU row before [`DecoderLayer::forward_host`].
    fn candle_ops(layer: &DecoderLayer, x: &Tensor, pos: usize, rope: &Rope, cache: &mut LayerCache) -> Tensor {
        let a = &layer.attn;
        let h = layer.input_norm.forward(x, false).unwrap();
        let q = a.q.forward(&h).unwrap().reshape((1, 1, a.heads, a.head_dim)).unwrap().transpose(1, 2).unwrap();
        let q = rope.apply(&q, pos, false).unwrap();
        let (k, v) = layer.kv_of_normed(&h, pos, rope, false).unwrap();
        cache.kv.append(&k, &v).unwrap();
        let out = attention_cpu::attend_rows(&q, &[&cache.kv], a.shape()).unwrap();
        let att = Tensor::from_vec(out, (1, 1, a.heads * a.head_dim), x.device()).unwrap();
        let x = (x + a.o.forward(&att).unwrap()).unwrap();
        let h = layer.post_norm.forward(&x, false).unwrap();
        let mlp = layer.down.forward(&(layer.gate.forward(&h).unwrap().silu().unwrap() * layer.up.forward(&h).unwrap()).unwrap()).unwrap();
        (x + mlp).unwrap()
    }

    /// Every layer output, cache entry (run and propagated) and logit of a 40-token decode on
    /// the host path has the bits of candle's ops, at positions where llama3's RoPE scaling
    /// applies. (Reordering the norm's division or SiLU's makes it fail.)
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
    }
}
