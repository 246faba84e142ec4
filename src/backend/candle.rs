//! The candle backend: runs `LlamaModel` layer by layer on a candle device with one KV cache per
//! layer. Exit-head reductions run on the device; on the CPU the device is the host, so they are
//! one pass over the logits there.

use super::{Backend, Batch, DeviceKind, HeadPick, HeadSummary, KvSnapshot, RuntimeInfo, Speculate};
use crate::error::{Error, Result};
use crate::model::llama::{LayerCache, LlamaModel, RowSegments};
use crate::model::{LoadOptions, LoadedModel, ModelFiles, Precision};
use candle_core::{DType, Device, Tensor};

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::backend("candle", "", e)
    }
}

/// The candle device for `device` (an error when CUDA is not compiled in or not present).
pub fn candle_device(device: DeviceKind) -> Result<Device> {
    match device {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::Unsupported("CUDA is not available: this exitbench was built without the `cuda` feature".into()));
            }
            Device::new_cuda(n).map_err(|e| Error::Unsupported(format!("CUDA device {n}: {e}")))
        }
    }
}

/// Sets the number of CPU threads candle's kernels use. candle has no per-call knob: its matmuls
/// read `RAYON_NUM_THREADS` on every call and its pool `CANDLE_NUM_THREADS` at first use, so this
/// must run before the process's first tensor op for the pool to take it. Called by
/// [`CandleBackend::open`] (and by training, which uses candle directly).
pub fn set_cpu_threads(n: usize) {
    let n = n.max(1).to_string();
    std::env::set_var("RAYON_NUM_THREADS", &n);
    std::env::set_var("CANDLE_NUM_THREADS", &n);
}

/// candle runtime over a loaded model (it owns a cheap clone: candle tensors are shared).
#[derive(Clone)]
pub struct CandleBackend {
    model: LlamaModel,
    threads: usize,
    caches: Vec<LayerCache>,
    /// Batched decoding's caches, `[layer - 1][row]` (empty until [`Batch::start_rows`]).
    row_caches: Vec<Vec<LayerCache>>,
    /// Constants of the on-device top-2, made at the first exit check (non-CPU devices only).
    scratch: Option<HeadScratch>,
    /// The exit head's logits of the positions last checked on host slices (a vocabulary's worth
    /// per position), kept between checks rather than allocated per check.
    logits: Vec<f32>,
}

impl CandleBackend {
    /// A backend with empty caches over `model`.
    pub fn new(model: &LlamaModel) -> Self {
        let n = model.config().max_position_embeddings.min(4096);
        let caches = (0..model.num_layers()).map(|_| LayerCache::new(n)).collect();
        let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(0);
        Self { model: model.clone(), threads, caches, row_caches: Vec::new(), scratch: None, logits: Vec::new() }
    }

    /// Sets candle's threads, builds the model from `files` on `device` in `precision`.
    pub fn open(files: &ModelFiles, device: DeviceKind, precision: Precision, threads: usize) -> Result<Self> {
        set_cpu_threads(threads);
        let device = candle_device(device)?;
        let m = LoadedModel::build(files.clone(), &LoadOptions { precision, device, random_weights: files.random_weights })?;
        let mut b = Self::new(&m.model);
        b.threads = threads;
        Ok(b)
    }

    /// The cache of `layer` (1-based), for inspection.
    pub fn cache(&self, layer: usize) -> &LayerCache {
        &self.caches[layer - 1]
    }

    /// The model.
    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    fn last(x: &Tensor) -> Result<Tensor> {
        let t = x.dim(1)?;
        Ok(x.narrow(1, t - 1, 1)?)
    }

    /// Writes the exit head's logits of `x`'s positions into `self.logits` when they run on host
    /// slices ([`LlamaModel::runs_on_host`]); false (nothing written) otherwise.
    fn head_on_host(&mut self, x: &Tensor) -> Result<bool> {
        if !self.model.runs_on_host(x) {
            return Ok(false);
        }
        self.model.head_host(x, &mut self.logits)?;
        Ok(true)
    }

    /// The exit-head summary of `logits` `[V]` f32, on the host or reduced on the device.
    fn summarize(&mut self, logits: &Tensor) -> Result<HeadSummary> {
        if self.model.device().is_cpu() {
            return head_summary_on_cpu(logits);
        }
        if self.scratch.is_none() {
            self.scratch = Some(HeadScratch::new(logits.dim(0)?, logits.device())?);
        }
        head_summary_on_device(logits, self.scratch.as_ref().expect("set above"))
    }
}

/// Several rows' states for the candle backend: `[1, n, d]` and each row's segment length.
#[derive(Debug, Clone)]
pub struct CandleRows {
    /// The positions of every row side by side.
    pub h: Tensor,
    /// Positions per segment (row), in order.
    pub lens: Vec<usize>,
}

impl CandleRows {
    /// Index of the last position of every segment.
    fn last_indices(&self) -> Vec<u32> {
        let mut end = 0u32;
        self.lens.iter().map(|&t| { end += t as u32; end - 1 }).collect()
    }

    /// The last position of every segment, `[1, segments, d]`.
    fn lasts(&self) -> Result<Tensor> {
        if self.lens.iter().all(|&t| t == 1) {
            return Ok(self.h.clone());
        }
        let idx = Tensor::new(self.last_indices(), self.h.device())?;
        Ok(self.h.index_select(&idx, 1)?)
    }
}

/// Constants the on-device exit-head reduction needs, built once per backend rather than at
/// every exit check: `-inf` and the indices `0..V`.
#[derive(Debug, Clone)]
pub struct HeadScratch {
    neg_inf: Tensor,
    index: Tensor,
}

impl HeadScratch {
    /// The constants for a vocabulary of `v` on `device`.
    pub fn new(v: usize, device: &Device) -> Result<Self> {
        Ok(Self { neg_inf: Tensor::full(f32::NEG_INFINITY, v, device)?, index: Tensor::arange(0u32, v as u32, device)? })
    }
}

/// The exit-head reductions with candle ops, leaving only four f32 scalars to copy (argmax,
/// max, second max, normaliser): what a non-CPU device runs. `logits` is `[V]` f32.
pub fn head_summary_on_device(logits: &Tensor, scratch: &HeadScratch) -> Result<HeadSummary> {
    let m = logits.max_keepdim(0)?;
    let idx = logits.argmax_keepdim(0)?;
    let z = logits.broadcast_sub(&m)?.exp()?.sum_keepdim(0)?;
    let masked = scratch.index.broadcast_eq(&idx)?.where_cond(&scratch.neg_inf, logits)?;
    let m2 = masked.max_keepdim(0)?;
    // Indices below 2^24 are exact in f32 (vocabularies are far smaller).
    let s = Tensor::cat(&[idx.to_dtype(DType::F32)?, m, m2, z], 0)?.to_vec1::<f32>()?;
    Ok(HeadSummary::from_reduced(s[0] as u32, s[1], s[2], s[3]))
}

/// The exit-head summary of CPU logits `[.., V]` (f32), read in place from candle's storage
/// rather than copied into a new vector first.
pub fn head_summary_on_cpu(logits: &Tensor) -> Result<HeadSummary> {
    let logits = logits.contiguous()?;
    let (storage, layout) = logits.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(crate::error::Error::Internal("head_summary_on_cpu: logits are not on the CPU".into()));
    };
    let all = cpu.as_slice::<f32>()?;
    let (from, to) = layout.contiguous_offsets().ok_or_else(|| crate::error::Error::Internal("head_summary_on_cpu: strided logits".into()))?;
    Ok(HeadSummary::of_logits(&all[from..to]))
}

impl Backend for CandleBackend {
    type Hidden = Tensor;

    fn num_layers(&self) -> usize {
        self.model.num_layers()
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn max_positions(&self) -> usize {
        self.model.config().max_position_embeddings.min(crate::model::llama::MAX_ROPE_POSITIONS)
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
        self.model.propagate(layer, &Self::last(h)?, pos, &mut self.caches[layer - 1])
    }

    fn head(&mut self, h: &Tensor) -> Result<HeadSummary> {
        let last = Self::last(h)?;
        if self.head_on_host(&last)? {
            return Ok(HeadSummary::of_logits(&self.logits));
        }
        let logits = self.model.head(&last)?.flatten_all()?;
        self.summarize(&logits)
    }

    fn head_pick(&mut self, h: &Tensor) -> Result<HeadPick> {
        if self.head_on_host(&Self::last(h)?)? {
            return Ok(HeadPick::of_logits(&self.logits));
        }
        Ok(self.head(h)?.into())
    }

    fn exit_logits(&mut self, h: &Tensor) -> Result<Vec<f32>> {
        self.model.head_last(h)
    }

    fn cosine(&mut self, a: &Tensor, b: &Tensor) -> Result<f32> {
        let (a, b) = (Self::last(a)?.flatten_all()?.to_dtype(DType::F32)?, Self::last(b)?.flatten_all()?.to_dtype(DType::F32)?);
        if self.model.device().is_cpu() {
            return Ok(crate::head::cosine(&a.to_vec1::<f32>()?, &b.to_vec1::<f32>()?));
        }
        let s = Tensor::stack(&[(&a * &b)?.sum_all()?, a.sqr()?.sum_all()?, b.sqr()?.sum_all()?], 0)?.to_vec1::<f32>()?;
        Ok(if s[1] == 0.0 || s[2] == 0.0 { 0.0 } else { s[0] / (s[1].sqrt() * s[2].sqrt()) })
    }

    fn classifier(&mut self, layer: usize, h: &Tensor) -> Result<f32> {
        self.model.classifier_prob(layer, h)
    }

    fn sync(&self) -> Result<()> {
        Ok(self.model.device().synchronize()?)
    }

    fn runtime_info(&self) -> RuntimeInfo {
        let compute_dtype = match self.model.dtype() {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            _ => "f32",
        };
        RuntimeInfo { version: crate::hardware::CANDLE_VERSION.to_string(), compute_dtype: compute_dtype.into(), threads: self.threads, huge_pages: self.model.huge_pages(), ..Default::default() }
    }

}

impl Batch for CandleBackend {
    type Rows = CandleRows;

    fn shares_weight_reads(&self) -> bool {
        true
    }

    fn start_rows(&mut self, n: usize, capacity: usize) -> Result<()> {
        let layers = self.model.num_layers();
        if self.row_caches.len() != layers || self.row_caches.first().map_or(0, Vec::len) != n {
            self.row_caches = (0..layers).map(|_| (0..n).map(|_| LayerCache::new(capacity)).collect()).collect();
        }
        self.row_caches.iter_mut().flatten().for_each(LayerCache::reset);
        Ok(())
    }

    fn row_cache_len(&self, row: usize, layer: usize) -> usize {
        self.row_caches[layer - 1][row].len()
    }

    fn embed_rows(&mut self, tokens: &[&[u32]]) -> Result<CandleRows> {
        let all: Vec<u32> = tokens.iter().flat_map(|t| t.iter().copied()).collect();
        Ok(CandleRows { h: self.model.embed(&all)?, lens: tokens.iter().map(|t| t.len()).collect() })
    }

    fn layer_rows(&mut self, layer: usize, rows: &[usize], h: &CandleRows) -> Result<CandleRows> {
        let segs = RowSegments { rows, lens: &h.lens };
        let out = self.model.layer_forward_rows(layer, &h.h, segs, &mut self.row_caches[layer - 1])?;
        Ok(CandleRows { h: out, lens: h.lens.clone() })
    }

    fn propagate_rows(&mut self, layer: usize, rows: &[usize], h: &CandleRows) -> Result<()> {
        let x = h.lasts()?;
        self.model.propagate_rows(layer, &x, rows, &mut self.row_caches[layer - 1])
    }

    fn head_rows(&mut self, h: &CandleRows) -> Result<Vec<HeadSummary>> {
        let logits = self.model.head(&h.lasts()?)?;
        (0..h.lens.len()).map(|i| self.summarize(&logits.narrow(1, i, 1)?.flatten_all()?)).collect()
    }

    fn exit_logits_rows(&mut self, h: &CandleRows) -> Result<Vec<Vec<f32>>> {
        let logits = self.model.head(&h.lasts()?)?.squeeze(0)?;
        Ok(logits.to_vec2::<f32>()?)
    }

    fn cosine_rows(&mut self, a: &CandleRows, b: &CandleRows) -> Result<Vec<f32>> {
        let (a, b) = (a.lasts()?.squeeze(0)?.to_dtype(DType::F32)?, b.lasts()?.squeeze(0)?.to_dtype(DType::F32)?);
        let (a, b) = (a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        Ok(a.iter().zip(&b).map(|(x, y)| crate::head::cosine(x, y)).collect())
    }

    fn classifier_rows(&mut self, layer: usize, h: &CandleRows) -> Result<Vec<f32>> {
        self.model.classifier_probs(layer, &h.lasts()?)
    }

    fn pick_rows(&mut self, parts: &[&CandleRows], picks: &[(usize, usize)]) -> Result<CandleRows> {
        let mut offsets = Vec::with_capacity(parts.len());
        let mut base = 0u32;
        for p in parts {
            offsets.push((base, p.last_indices()));
            base += p.h.dim(1)? as u32;
        }
        let idx: Vec<u32> = picks.iter().map(|&(p, i)| offsets[p].0 + offsets[p].1[i]).collect();
        let all = if parts.len() == 1 { parts[0].h.clone() } else { Tensor::cat(&parts.iter().map(|p| &p.h).collect::<Vec<_>>(), 1)? };
        let idx = Tensor::new(idx, all.device())?;
        Ok(CandleRows { h: all.index_select(&idx, 1)?, lens: vec![1; picks.len()] })
    }

    fn truncate_row(&mut self, row: usize, n: usize) -> Result<()> {
        self.row_caches.iter_mut().for_each(|layer| layer[row].truncate(n));
        Ok(())
    }

    fn row_cached_kv(&self, row: usize, layer: usize) -> Result<Option<KvSnapshot>> {
        snapshot(&self.row_caches[layer - 1][row])
    }
}

impl super::SpeculateRows for CandleBackend {
    fn join_rows(&mut self, parts: &[&CandleRows], picks: &[Vec<(usize, usize)>]) -> Result<CandleRows> {
        let mut offsets = Vec::with_capacity(parts.len());
        let mut base = 0u32;
        for p in parts {
            offsets.push((base, p.last_indices()));
            base += p.h.dim(1)? as u32;
        }
        let idx: Vec<u32> = picks.iter().flatten().map(|&(p, i)| offsets[p].0 + offsets[p].1[i]).collect();
        let all = if parts.len() == 1 { parts[0].h.clone() } else { Tensor::cat(&parts.iter().map(|p| &p.h).collect::<Vec<_>>(), 1)? };
        let idx = Tensor::new(idx, all.device())?;
        Ok(CandleRows { h: all.index_select(&idx, 1)?, lens: picks.iter().map(Vec::len).collect() })
    }

    fn heads_rows(&mut self, h: &CandleRows) -> Result<Vec<Vec<HeadSummary>>> {
        // One head pass over every position, reduced position by position.
        let logits = self.model.head_each_row(&h.h)?;
        let mut start = 0;
        let mut out = Vec::with_capacity(h.lens.len());
        for &t in &h.lens {
            out.push((start..start + t).map(|i| self.summarize(&logits.narrow(1, i, 1)?.flatten_all()?)).collect::<Result<Vec<_>>>()?);
            start += t;
        }
        Ok(out)
    }

    fn position_logits_rows(&mut self, h: &CandleRows) -> Result<Vec<Vec<Vec<f32>>>> {
        let logits = self.model.head_each_row(&h.h)?.to_dtype(DType::F32)?.squeeze(0)?.to_vec2::<f32>()?;
        let mut it = logits.into_iter();
        Ok(h.lens.iter().map(|&t| it.by_ref().take(t).collect()).collect())
    }
}

/// A host copy of one cache.
fn snapshot(cache: &LayerCache) -> Result<Option<KvSnapshot>> {
    let Some((k, v)) = cache.kv()? else { return Ok(None) };
    let len = k.dim(2)?;
    let host = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) };
    Ok(Some(KvSnapshot { k: host(&k)?, v: host(&v)?, len }))
}

impl super::Inspect for CandleBackend {
    fn hidden_to_host(&self, h: &Tensor) -> Result<Vec<f32>> {
        Ok(h.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }
    fn cached_kv(&self, layer: usize) -> Result<Option<KvSnapshot>> {
        snapshot(&self.caches[layer - 1])
    }
}

impl Speculate for CandleBackend {
    fn truncate(&mut self, layer: usize, n: usize) -> Result<()> {
        self.caches[layer - 1].truncate(n);
        Ok(())
    }

    fn heads(&mut self, h: &Tensor) -> Result<Vec<HeadSummary>> {
        if self.head_on_host(h)? {
            return Ok(self.logits.chunks_exact(self.model.config().vocab_size).map(HeadSummary::of_logits).collect());
        }
        let logits = self.model.head(h)?;
        let t = logits.dim(1)?;
        (0..t).map(|i| self.summarize(&logits.narrow(1, i, 1)?.flatten_all()?)).collect()
    }

    fn position_logits(&mut self, h: &Tensor) -> Result<Vec<Vec<f32>>> {
        let logits = self.model.head(h)?.to_dtype(DType::F32)?;
        let t = logits.dim(1)?;
        (0..t).map(|i| Ok(logits.narrow(1, i, 1)?.flatten_all()?.to_vec1::<f32>()?)).collect()
    }

    fn join(&mut self, parts: &[Tensor]) -> Result<Tensor> {
        Ok(Tensor::cat(parts, 1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_reductions_equal_host_reductions() {
        let logits = vec![0.5f32, 3.0, -1.0, 2.5, 3.0 - 1e-3, -7.0];
        let host = HeadSummary::of_logits(&logits);
        let t = Tensor::new(logits.as_slice(), &Device::Cpu).unwrap();
        let dev = head_summary_on_device(&t, &HeadScratch::new(logits.len(), &Device::Cpu).unwrap()).unwrap();
        let cpu = head_summary_on_cpu(&t).unwrap();
        assert_eq!((cpu.argmax, cpu.p1, cpu.p2, cpu.logit_gap), (host.argmax, host.p1, host.p2, host.logit_gap));
        assert_eq!(host.argmax, 1);
        assert_eq!(dev.argmax, host.argmax);
        assert!((dev.p1 - host.p1).abs() < 1e-6 && (dev.p2 - host.p2).abs() < 1e-6, "{dev:?} vs {host:?}");
        assert!((dev.logit_gap - 1e-3).abs() < 1e-6 && (host.logit_gap - 1e-3).abs() < 1e-6);
        // An exact tie: the first index wins, p2 = p1, gap 0, on both paths.
        let tie = [1.0f32, 2.0, 2.0];
        let h = HeadSummary::of_logits(&tie);
        let d = head_summary_on_device(&Tensor::new(&tie, &Device::Cpu).unwrap(), &HeadScratch::new(3, &Device::Cpu).unwrap()).unwrap();
        assert_eq!((h.argmax, h.logit_gap), (1, 0.0));
        assert_eq!((d.argmax, d.logit_gap), (1, 0.0));
        assert_eq!(h.p1, h.p2);
    }
}
