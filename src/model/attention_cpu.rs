//! Decode attention on the CPU in f32, one query position per row, read in place from each row's
//! cache buffers: for every row and query head, scores against the row's cached keys, a softmax
//! in f32 and the weighted sum of its cached values, in one pass with no tensor op per row. The
//! candle path builds a dozen small tensors per row and layer (views, copies, two matrix
//! products, a softmax), each paying a dispatch cost that at small widths outweighs the
//! arithmetic; batched decoding pays it once per row.

use super::kv::KvBuffer;
use super::matvec::with_slice as with_host_f32;
use crate::error::Result;
use candle_core::Tensor;
use rayon::prelude::*;

/// Shapes of one layer's attention.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (each serves `heads / kv_heads` query heads).
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

/// Causal attention of several rows' new positions side by side (batched decode steps, and
/// batched verification passes): `q` is `[1, heads, n, hd]` (rotated), segment i owns the next
/// `lens[i]` positions and its keys and values are `caches[i]`, which already holds them after
/// every earlier position of the row; position j of segment i sees its row's positions up to
/// itself. Returns `[n, heads · hd]` row-major. Every position is computed as a single decode
/// step computes it (the same bits), and segments run in parallel when the pool has threads.
pub fn attend_segments(q: &Tensor, caches: &[&KvBuffer], lens: &[usize], h: Heads) -> Result<Vec<f32>> {
    with_host_f32(&q.contiguous()?, |q| attend_segments_host(q, caches, lens, h))?
}

/// Causal attention of the last `t` positions of one row on host slices: `q` is
/// `[heads, t, hd]` (rotated), `cache` holds the row's positions, the new ones included.
/// Returns `[t, heads · hd]`, computed as [`attend_segments`] computes one segment (the same
/// bits).
pub fn attend_host(q: &[f32], cache: &KvBuffer, t: usize, h: Heads) -> Result<Vec<f32>> {
    attend_segments_host(q, &[cache], &[t], h)
}

/// [`attend_segments`] with `q` `[heads, n, hd]` on the host.
fn attend_segments_host(q: &[f32], caches: &[&KvBuffer], lens: &[usize], h: Heads) -> Result<Vec<f32>> {
    let n: usize = lens.iter().sum();
    let (heads, hd) = (h.heads, h.head_dim);
    let rep = heads / h.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    if q.len() != n * heads * hd {
        return Err(crate::error::Error::Internal(format!("attention: {} query values for {n} positions of {heads} heads of {hd}", q.len())));
    }
    let mut out = vec![0f32; n * heads * hd];
    // Each segment's slice of the output and its first position in `q`.
    let mut parts: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(lens.len());
    let (mut rest, mut start) = (out.as_mut_slice(), 0);
    for (i, &t) in lens.iter().enumerate() {
        let (mine, tail) = rest.split_at_mut(t * heads * hd);
        parts.push((i, start, mine));
        (rest, start) = (tail, start + t);
    }
    let segment = |(i, start, o): (usize, usize, &mut [f32])| -> Result<()> {
        let t = lens[i];
        caches[i].with_host_f32(|k, v, cap, len| {
            let mut scores = vec![0f32; len];
            for (j, o) in o.chunks_mut(heads * hd).enumerate() {
                let visible = len - t + j + 1;
                for head in 0..heads {
                    let g = head / rep;
                    let at = head * n + start + j;
                    let qv = &q[at * hd..(at + 1) * hd];
                    one_query(qv, &k[g * cap * hd..], &v[g * cap * hd..], scale, &mut scores[..visible], &mut o[head * hd..(head + 1) * hd]);
                }
            }
        })
    };
    if lens.len() > 1 && rayon::current_num_threads() > 1 {
        parts.into_par_iter().try_for_each(segment)?;
    } else {
        parts.into_iter().try_for_each(segment)?;
    }
    Ok(out)
}

/// One query head's attention over the first `scores.len()` cached positions (`k`, `v`: its key
/// group's buffers, position-major), added into `acc`. The one computation every host path
/// uses, so a position gets the same bits whether it is decoded alone, in a batch or in a
/// multi-position pass.
fn one_query(qv: &[f32], k: &[f32], v: &[f32], scale: f32, scores: &mut [f32], acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::matvec::has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            return unsafe { super::attention_avx2::one_query(qv, k, v, scale, scores, acc) };
        }
    }
    one_query_with(super::matvec::dot, qv, k, v, scale, scores, acc)
}

/// [`one_query`] with `dot` for the scores, in its plain form: the order of operations every
/// kernel keeps.
#[inline(always)]
pub(super) fn one_query_with(dot: impl Fn(&[f32], &[f32]) -> f32, qv: &[f32], k: &[f32], v: &[f32], scale: f32, scores: &mut [f32], acc: &mut [f32]) {
    let hd = qv.len();
    let mut max = f32::NEG_INFINITY;
    for (j, s) in scores.iter_mut().enumerate() {
        *s = dot(qv, &k[j * hd..(j + 1) * hd]) * scale;
        max = max.max(*s);
    }
    let mut z = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        z += *s;
    }
    for (j, &p) in scores.iter().enumerate() {
        let p = p / z;
        for (a, &x) in acc.iter_mut().zip(&v[j * hd..(j + 1) * hd]) {
            *a += p * x;
        }
    }
}
