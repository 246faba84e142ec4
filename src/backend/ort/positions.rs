//! Host-side edits along the position and row axes of ONNX Runtime values (`[B, t, d]` hidden
//! states, `[B, kv_heads, t, head_dim]` caches), in their own element type: what
//! self-speculative decoding needs (cache rollback, per-position exit heads, states joined from
//! saved parts), the in-place caches' buffers (allocation, entries written at a row's position)
//! and batched calls' inputs and outputs (rows stacked into one value and taken back out). Each
//! edit copies through host memory: cheap on the CPU provider, a round trip on CUDA (in-place
//! buffers live on the CPU only).

use super::oe;
use crate::error::{Error, Result};
use crate::model::Precision;
use ort::memory::{AllocationDevice, Allocator};
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor, TensorElementType as E};

/// A host copy of `v` (a no-op view when already host-accessible).
fn host(v: &DynValue) -> Result<DynTensor> {
    let t = v.view().downcast::<DynTensorValueType>().map_err(oe)?;
    if t.memory_info().is_cpu_accessible() {
        return Ok(t.clone());
    }
    t.to(AllocationDevice::CPU, 0).map_err(oe)
}

/// Positions `from..to` of each value along `axis`, joined in order, as one new value.
pub fn gather(parts: &[(&DynValue, usize, usize)], axis: usize) -> Result<DynValue> {
    let hosts: Vec<DynTensor> = parts.iter().map(|(v, _, _)| host(v)).collect::<Result<_>>()?;
    let ty = hosts.first().ok_or_else(|| Error::Internal("ort: nothing to gather".into()))?.data_type();
    macro_rules! typed {
        ($t:ty) => {{
            let mut shape: Vec<usize> = Vec::new();
            let mut pieces: Vec<(Vec<usize>, Vec<$t>, usize, usize)> = Vec::new();
            for (h, &(_, from, to)) in hosts.iter().zip(parts) {
                let (s, data) = h.try_extract_tensor::<$t>().map_err(oe)?;
                let dims: Vec<usize> = s.iter().map(|&d| d as usize).collect();
                if to > dims[axis] || from > to {
                    return Err(Error::Internal(format!("ort: positions {from}..{to} of a value with {} along axis {axis}", dims[axis])));
                }
                shape = dims.clone();
                pieces.push((dims, data.to_vec(), from, to));
            }
            let outer: usize = shape[..axis].iter().product();
            let inner: usize = shape[axis + 1..].iter().product();
            let total: usize = pieces.iter().map(|p| p.3 - p.2).sum();
            let mut out: Vec<$t> = Vec::with_capacity(outer * total * inner);
            for o in 0..outer {
                for (dims, data, from, to) in &pieces {
                    let base = o * dims[axis] * inner;
                    out.extend_from_slice(&data[base + from * inner..base + to * inner]);
                }
            }
            shape[axis] = total;
            Ok(Tensor::from_array((shape, out)).map_err(oe)?.into_dyn())
        }};
    }
    match ty {
        E::Float32 => typed!(f32),
        E::Float16 => typed!(half::f16),
        E::Bfloat16 => typed!(half::bf16),
        other => Err(Error::Internal(format!("ort: unexpected element type {other:?}"))),
    }
}

/// An in-place cache buffer `shape` (`[B, kv_heads, capacity, head_dim]`) in `p` on the CPU,
/// allocated by ONNX Runtime (so that it can be bound as a graph's output); its contents are
/// unset until written.
pub fn buffer(p: Precision, shape: [usize; 4]) -> Result<DynValue> {
    let a = Allocator::default();
    Ok(match p {
        Precision::F32 => Tensor::<f32>::new(&a, shape).map_err(oe)?.into_dyn(),
        Precision::F16 => Tensor::<half::f16>::new(&a, shape).map_err(oe)?.into_dyn(),
        Precision::Bf16 => Tensor::<half::bf16>::new(&a, shape).map_err(oe)?.into_dyn(),
    })
}

/// Positions a cache buffer holds (its axis 2).
pub fn capacity(v: &DynValue) -> usize {
    v.shape().get(2).map_or(0, |&n| n.max(0) as usize)
}

/// Writes row `from` of `new` `[B', kv_heads, t, head_dim]` into row `row` of the host buffer
/// `buf` `[B, kv_heads, capacity, head_dim]`, at positions `at..at + t` of every head.
pub fn write_at(buf: &mut DynValue, row: usize, at: usize, new: &DynValue, from: usize) -> Result<()> {
    let src = host(new)?;
    let (nd, bd) = (src.shape().to_vec(), buf.shape().to_vec());
    let dims_ok = nd.len() == 4 && bd.len() == 4 && (from as i64) < nd[0] && (row as i64) < bd[0] && nd[1] == bd[1] && nd[3] == bd[3];
    if !dims_ok || at + nd[2] as usize > bd[2] as usize || Some(*src.data_type()) != buf.dtype().tensor_type() {
        return Err(Error::Internal(format!("ort: writing row {from} of {nd:?} {:?} at row {row}, position {at} of a cache buffer {bd:?} {:?}", src.data_type(), buf.dtype())));
    }
    let (heads, t, cap, hd) = (nd[1] as usize, nd[2] as usize, bd[2] as usize, nd[3] as usize);
    let (dst_base, src_base) = (row * heads * cap * hd, from * heads * t * hd);
    let mut dst = buf.view_mut().downcast::<DynTensorValueType>().map_err(oe)?;
    if !dst.memory_info().is_cpu_accessible() {
        return Err(Error::Internal("ort: an in-place cache buffer is not in host memory".into()));
    }
    macro_rules! typed {
        ($t:ty) => {{
            let (_, s) = src.try_extract_tensor::<$t>().map_err(oe)?;
            let (_, d) = dst.try_extract_tensor_mut::<$t>().map_err(oe)?;
            for h in 0..heads {
                let (d0, s0) = (dst_base + (h * cap + at) * hd, src_base + h * t * hd);
                d[d0..d0 + t * hd].copy_from_slice(&s[s0..s0 + t * hd]);
            }
            Ok(())
        }};
    }
    match src.data_type() {
        E::Float32 => typed!(f32),
        E::Float16 => typed!(half::f16),
        E::Bfloat16 => typed!(half::bf16),
        other => Err(Error::Internal(format!("ort: unexpected element type {other:?}"))),
    }
}

/// A cache buffer with room for `need` positions in place of `old` (holding `len` positions in
/// its longest row), when `old` is absent or too small: `shape`'s capacity at least, `need`, or
/// twice `old`'s, with every row's first `len` positions copied; None when `old` has room.
pub fn grown(p: Precision, old: Option<&DynValue>, len: usize, need: usize, shape: [usize; 4]) -> Result<Option<DynValue>> {
    let held = old.map_or(0, capacity);
    if held >= need {
        return Ok(None);
    }
    let [b, heads, cap, hd] = shape;
    let mut fresh = buffer(p, [b, heads, cap.max(need).max(2 * held), hd])?;
    if let Some(o) = old.filter(|_| len > 0) {
        let kept = gather(&[(o, 0, len)], 2)?;
        for row in 0..b {
            write_at(&mut fresh, row, 0, &kept, row)?;
        }
    }
    Ok(Some(fresh))
}

/// One value `[B, t, d]` from `parts[b]` = `(value [1, _, d], from, to)`: row b holds positions
/// `from..to` of its value first and zeros after them (up to `t`); a `None` row is all zeros (a
/// row riding along in a batched call).
pub fn stack(parts: &[Option<(&DynValue, usize, usize)>], t: usize, d: usize, p: Precision) -> Result<DynValue> {
    let hosts: Vec<Option<(DynTensor, usize, usize)>> = parts.iter().map(|x| x.map(|(v, a, b)| Ok::<_, Error>((host(v)?, a, b))).transpose()).collect::<Result<_>>()?;
    macro_rules! typed {
        ($t:ty) => {{
            let mut out: Vec<$t> = vec![<$t>::default(); parts.len() * t * d];
            for (row, part) in hosts.iter().enumerate() {
                let Some((h, from, to)) = part else { continue };
                let (s, data) = h.try_extract_tensor::<$t>().map_err(oe)?;
                if s.len() != 3 || s[0] != 1 || s[2] as usize != d || *to > s[1] as usize || from > to || to - from > t {
                    return Err(Error::Internal(format!("ort: stacking positions {from}..{to} of {s:?} into rows of {t} × {d}")));
                }
                out[row * t * d..(row * t + to - from) * d].copy_from_slice(&data[from * d..to * d]);
            }
            Ok(Tensor::from_array(([parts.len(), t, d], out)).map_err(oe)?.into_dyn())
        }};
    }
    match p {
        Precision::F32 => typed!(f32),
        Precision::F16 => typed!(half::f16),
        Precision::Bf16 => typed!(half::bf16),
    }
}

/// Row `row` of `v` `[B, …]` as a value `[1, …]`, its first `n` entries along axis 1 only when
/// `n` is given.
pub fn take_row(v: &DynValue, row: usize, n: Option<usize>) -> Result<DynValue> {
    let h = host(v)?;
    let dims: Vec<usize> = h.shape().iter().map(|&d| d as usize).collect();
    if dims.len() < 2 || row >= dims[0] || n.is_some_and(|n| n > dims[1]) {
        return Err(Error::Internal(format!("ort: row {row} ({n:?} positions) of a value {dims:?}")));
    }
    let inner: usize = dims[2..].iter().product();
    let keep = n.unwrap_or(dims[1]);
    let mut shape = dims.clone();
    (shape[0], shape[1]) = (1, keep);
    let start = row * dims[1] * inner;
    macro_rules! typed {
        ($t:ty) => {{
            let (_, data) = h.try_extract_tensor::<$t>().map_err(oe)?;
            Ok(Tensor::from_array((shape, data[start..start + keep * inner].to_vec())).map_err(oe)?.into_dyn())
        }};
    }
    match h.data_type() {
        E::Float32 => typed!(f32),
        E::Float16 => typed!(half::f16),
        E::Bfloat16 => typed!(half::bf16),
        other => Err(Error::Internal(format!("ort: unexpected element type {other:?}"))),
    }
}
