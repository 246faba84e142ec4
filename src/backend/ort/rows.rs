//! Batched rows with in-place caches: every row's cache of a layer lives in one buffer
//! `[B, kv, capacity, hd]`, so one call of a layer graph (which has a batch axis) decodes all
//! rows and reads each weight once, however different their lengths: `GroupQueryAttention`
//! takes each row's length (`seqlens_k`).
//!
//! The op cannot address a subset of the rows in a buffer, so every layer call carries all B
//! rows. A row that takes no part in the call (it exited, or `compact` left it out) rides along
//! with zeros: its keys and values land at its own next position, past its cached length, where
//! they are never read and are overwritten by the next entry that row writes (its own step or
//! its propagation). Nor does the op take several positions per row at B > 1 once any cache
//! holds something. So:
//! - a batched prefill (every row's cache empty) runs as one call, each prompt padded with zeros
//!   after its end (those positions land past the row's length too);
//! - a prompt of a row whose cache is empty while others hold theirs runs alone, on a buffer of
//!   its own, and its entries are then written into the rows' buffer;
//! - a verification pass of several positions per row after cached ones runs as one batched
//!   call per position (position by position, as the op allows), reading each weight once per
//!   position: [`OrtBackend::last_layer_reads`] says how many calls a layer took.
//!
//! Propagation and the exit head have no cache to address: they run on exactly the rows given,
//! stacked into one call.

use super::{positions, CacheForm, Hidden, OrtBackend};
use crate::backend::{HeadSummary, KvSnapshot};
use crate::error::{Error, Result};
use ort::value::DynValue;
use std::rc::Rc;

/// The rows' caches: per layer, one key and one value buffer for all rows (allocated at the
/// layer's first call), and each row's cached length per layer.
#[derive(Default)]
pub(super) struct RowBuffers {
    k: Vec<Option<DynValue>>,
    v: Vec<Option<DynValue>>,
    /// `[row][layer - 1]`.
    lens: Vec<Vec<usize>>,
}

impl RowBuffers {
    /// `n` rows over `layers` layers, no buffer yet.
    pub(super) fn new(n: usize, layers: usize) -> Self {
        RowBuffers { k: (0..layers).map(|_| None).collect(), v: (0..layers).map(|_| None).collect(), lens: vec![vec![0; layers]; n] }
    }

    pub(super) fn rows(&self) -> usize {
        self.lens.len()
    }

    pub(super) fn len(&self, row: usize, layer: usize) -> usize {
        self.lens[row][layer - 1]
    }

    /// Empties every row, keeping the buffers.
    pub(super) fn clear(&mut self) {
        self.lens.iter_mut().flatten().for_each(|l| *l = 0);
    }

    /// Keeps the first `n` positions of every layer's cache of `row`.
    pub(super) fn truncate(&mut self, row: usize, n: usize) {
        self.lens[row].iter_mut().for_each(|l| *l = (*l).min(n));
    }

    /// Every row's length at `layer`.
    fn lens_at(&self, layer: usize) -> Vec<usize> {
        self.lens.iter().map(|l| l[layer - 1]).collect()
    }
}

impl OrtBackend {
    /// Makes `layer`'s row buffers hold `need` positions per row (allocated at the first use
    /// with [`OrtBackend::row_capacity`] positions or `need`; doubled, every row's cached
    /// positions copied, when outgrown).
    fn row_room(&mut self, layer: usize, need: usize) -> Result<()> {
        let b = &mut self.batch;
        let shape = [b.rows(), self.cfg.kv_heads(), self.row_capacity, self.cfg.head_dim()];
        let len = b.lens.iter().map(|l| l[layer - 1]).max().unwrap_or(0);
        if let Some(k) = positions::grown(self.precision, b.k[layer - 1].as_ref(), len, need, shape)? {
            b.k[layer - 1] = Some(k);
        }
        if let Some(v) = positions::grown(self.precision, b.v[layer - 1].as_ref(), len, need, shape)? {
            b.v[layer - 1] = Some(v);
        }
        Ok(())
    }

    /// [`crate::backend::Batch::layer_rows`] with in-place row buffers (see the module header).
    pub(super) fn layer_in_place_rows(&mut self, layer: usize, rows: &[usize], h: &[Hidden]) -> Result<Vec<Hidden>> {
        let ts: Vec<usize> = h.iter().map(|x| Self::t_of(x)).collect::<Result<_>>()?;
        let t = ts.iter().copied().max().unwrap_or(0);
        let lens = self.batch.lens_at(layer);
        if t <= 1 || lens.iter().all(|&l| l == 0) || self.batch.rows() == 1 {
            self.last_reads = 1;
            return self.layer_call_rows(layer, rows, h, &ts, t);
        }
        let mut out: Vec<Option<Hidden>> = vec![None; rows.len()];
        let mut calls = 0;
        // Prompts of rows whose caches are empty: alone.
        let (alone, rest): (Vec<usize>, Vec<usize>) = (0..rows.len()).partition(|&i| ts[i] > 1 && lens[rows[i]] == 0);
        for &i in &alone {
            out[i] = Some(self.layer_alone(layer, rows[i], &h[i], ts[i])?);
            calls += 1;
        }
        // The others: one batched call per position.
        let t = rest.iter().map(|&i| ts[i]).max().unwrap_or(0);
        let mut parts: Vec<Vec<Hidden>> = vec![Vec::new(); rows.len()];
        for j in 0..t {
            let going: Vec<usize> = rest.iter().copied().filter(|&i| ts[i] > j).collect();
            let xs: Vec<Hidden> = going.iter().map(|&i| Ok(Rc::new(positions::gather(&[(h[i].as_ref(), j, j + 1)], 1)?))).collect::<Result<_>>()?;
            let rs: Vec<usize> = going.iter().map(|&i| rows[i]).collect();
            let ys = self.layer_call_rows(layer, &rs, &xs, &vec![1; xs.len()], 1)?;
            going.iter().zip(ys).for_each(|(&i, y)| parts[i].push(y));
            calls += 1;
        }
        for &i in &rest {
            let spans: Vec<(&DynValue, usize, usize)> = parts[i].iter().map(|p| (p.as_ref(), 0, 1)).collect();
            out[i] = Some(if spans.len() == 1 { parts[i][0].clone() } else { Rc::new(positions::gather(&spans, 1)?) });
        }
        self.last_reads = calls;
        out.into_iter().map(|o| o.ok_or_else(|| Error::Internal("ort: a row without an output".into()))).collect()
    }

    /// `layer` on the `t` positions `h` of `row`, whose cache is empty, on a buffer of its own
    /// (one row, `t` positions); its entries are then written into the rows' buffer.
    fn layer_alone(&mut self, layer: usize, row: usize, h: &Hidden, t: usize) -> Result<Hidden> {
        let shape = [1, self.cfg.kv_heads(), t, self.cfg.head_dim()];
        let (mut k, mut v) = (positions::buffer(self.precision, shape)?, positions::buffer(self.precision, shape)?);
        let pos = Self::row_positions(&[0], t)?;
        let mut out = self.layers[layer - 1].run_in_place(&[("hidden", h.as_ref()), ("positions", &pos)], &mut [("past_k", "present_k", &mut k), ("past_v", "present_v", &mut v)])?;
        let y = Self::take(&mut out, "hidden_out")?;
        drop(out);
        self.row_room(layer, t)?;
        let b = &mut self.batch;
        let (Some(bk), Some(bv)) = (b.k[layer - 1].as_mut(), b.v[layer - 1].as_mut()) else { return Err(Error::Internal("ort: row buffers missing after making room".into())) };
        positions::write_at(bk, row, 0, &k, 0)?;
        positions::write_at(bv, row, 0, &v, 0)?;
        b.lens[row][layer - 1] = t;
        Ok(Rc::new(y))
    }

    /// One call of `layer`'s graph on all rows, `t` positions each: row `rows[i]` runs the
    /// `ts[i]` positions of `h[i]`, the others ride along (module header).
    fn layer_call_rows(&mut self, layer: usize, rows: &[usize], h: &[Hidden], ts: &[usize], t: usize) -> Result<Vec<Hidden>> {
        let n = self.batch.rows();
        let mut parts: Vec<Option<(&DynValue, usize, usize)>> = vec![None; n];
        for ((&r, x), &ti) in rows.iter().zip(h).zip(ts) {
            parts[r] = Some((x.as_ref(), 0, ti));
        }
        let x = positions::stack(&parts, t, self.cfg.hidden_size, self.precision)?;
        let starts = self.batch.lens_at(layer);
        let pos = Self::row_positions(&starts, t)?;
        self.row_room(layer, starts.iter().max().copied().unwrap_or(0) + t)?;
        let (k, v) = (&mut self.batch.k[layer - 1], &mut self.batch.v[layer - 1]);
        let (Some(k), Some(v)) = (k.as_mut(), v.as_mut()) else { return Err(Error::Internal("ort: row buffers missing after making room".into())) };
        let mut out = self.layers[layer - 1].run_in_place(&[("hidden", &x), ("positions", &pos)], &mut [("past_k", "present_k", k), ("past_v", "present_v", v)])?;
        let y = Self::take(&mut out, "hidden_out")?;
        drop(out);
        let mut res = Vec::with_capacity(rows.len());
        for (&r, &ti) in rows.iter().zip(ts) {
            res.push(Rc::new(positions::take_row(&y, r, Some(ti))?));
            self.batch.lens[r][layer - 1] += ti;
        }
        Ok(res)
    }

    /// [`crate::backend::Batch::propagate_rows`] with in-place row buffers: one call for the
    /// last positions of all `rows`, their entries written into the rows' buffers.
    pub(super) fn propagate_in_place_rows(&mut self, layer: usize, rows: &[usize], h: &[Hidden]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let x = self.stack_lasts(h)?;
        let starts: Vec<usize> = rows.iter().map(|&r| self.batch.len(r, layer)).collect();
        let pos = Self::row_positions(&starts, 1)?;
        self.row_room(layer, starts.iter().max().copied().unwrap_or(0) + 1)?;
        let mut out = self.props[layer - 1].run(&[("hidden", &x), ("positions", &pos)])?;
        let (nk, nv) = (Self::take(&mut out, "new_k")?, Self::take(&mut out, "new_v")?);
        drop(out);
        let b = &mut self.batch;
        let (Some(k), Some(v)) = (b.k[layer - 1].as_mut(), b.v[layer - 1].as_mut()) else { return Err(Error::Internal("ort: row buffers missing after making room".into())) };
        for (i, (&r, &at)) in rows.iter().zip(&starts).enumerate() {
            positions::write_at(k, r, at, &nk, i)?;
            positions::write_at(v, r, at, &nv, i)?;
            b.lens[r][layer - 1] = at + 1;
        }
        Ok(())
    }

    /// The last positions of `h`, one row each: `[B, 1, d]`.
    fn stack_lasts(&self, h: &[Hidden]) -> Result<DynValue> {
        let parts: Vec<Option<(&DynValue, usize, usize)>> = h.iter().map(|x| Ok(Some((x.as_ref(), Self::t_of(x)? - 1, Self::t_of(x)?)))).collect::<Result<_>>()?;
        positions::stack(&parts, 1, self.cfg.hidden_size, self.precision)
    }

    /// The head graph's `output` (one row per state) for the last positions of `h`, in one
    /// call, on the host.
    fn head_output_of_rows(&mut self, h: &[Hidden], output: &str) -> Result<Vec<f32>> {
        if h.is_empty() {
            return Ok(Vec::new());
        }
        let x = self.stack_lasts(h)?;
        let mut out = self.head.run(&[("hidden", &x)])?;
        super::to_host_f32(&Self::take(&mut out, output)?)
    }

    /// The exit head at the last position of every state in `h`, in one call.
    pub(super) fn head_of_rows(&mut self, h: &[Hidden]) -> Result<Vec<HeadSummary>> {
        let s = self.head_output_of_rows(h, "summary")?;
        Ok(s.chunks_exact(4).map(|s| HeadSummary::from_reduced(s[0] as u32, s[1], s[2], s[3])).collect())
    }

    /// The exit head's f32 logits at the last position of every state in `h`, in one call.
    pub(super) fn logits_of_rows(&mut self, h: &[Hidden]) -> Result<Vec<Vec<f32>>> {
        let l = self.head_output_of_rows(h, "logits")?;
        Ok(l.chunks_exact(self.cfg.vocab_size).map(<[f32]>::to_vec).collect())
    }

    /// `f` (a head over states, one result per state) at every position of every state in
    /// `h`, in one call: one list per state.
    pub(super) fn per_position<T>(&mut self, h: &[Hidden], f: fn(&mut Self, &[Hidden]) -> Result<Vec<T>>) -> Result<Vec<Vec<T>>> {
        let mut positions_of = Vec::new();
        let mut counts = Vec::with_capacity(h.len());
        for x in h {
            let t = Self::t_of(x)?;
            for j in 0..t {
                positions_of.push(if t == 1 { x.clone() } else { Rc::new(positions::gather(&[(x.as_ref(), j, j + 1)], 1)?) });
            }
            counts.push(t);
        }
        let mut all = f(self, &positions_of)?.into_iter();
        Ok(counts.iter().map(|&t| all.by_ref().take(t).collect()).collect())
    }

    /// A host copy of `row`'s cache of `layer` (`None` while empty).
    pub(super) fn row_snapshot(&self, row: usize, layer: usize) -> Result<Option<KvSnapshot>> {
        let len = self.batch.len(row, layer);
        let (Some(k), Some(v)) = (self.batch.k[layer - 1].as_ref(), self.batch.v[layer - 1].as_ref()) else { return Ok(None) };
        if len == 0 {
            return Ok(None);
        }
        let (k, v) = (positions::take_row(k, row, None)?, positions::take_row(v, row, None)?);
        Self::snapshot(&super::Cache { k, v, len }).map(Some)
    }

    /// Whether batched rows share one buffer per layer (the in-place form).
    pub(super) fn rows_in_place(&self) -> bool {
        self.form == CacheForm::InPlace
    }
}
