//! Host-side edits along the position axis of ONNX Runtime values (`[1, t, d]` hidden states,
//! `[1, kv_heads, t, head_dim]` caches), in their own element type: what self-speculative
//! decoding needs (cache rollback, per-position exit heads, states joined from saved parts), and
//! the in-place caches' buffers (allocation, entries written at a position). Each edit copies
//! through host memory: cheap on the CPU provider, a round trip on CUDA (in-place buffers live
//! on the CPU only).

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

/// An in-place cache buffer `shape` (`[1, kv_heads, capacity, head_dim]`) in `p` on the CPU,
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

/// Writes `new` `[1, kv_heads, t, head_dim]` into the host buffer `buf`
/// `[1, kv_heads, capacity, head_dim]` at positions `at..at + t` of every head.
pub fn write_at(buf: &mut DynValue, at: usize, new: &DynValue) -> Result<()> {
    let src = host(new)?;
    let (nd, bd) = (src.shape().to_vec(), buf.shape().to_vec());
    let dims_ok = nd.len() == 4 && bd.len() == 4 && nd[0] == 1 && bd[0] == 1 && nd[1] == bd[1] && nd[3] == bd[3];
    if !dims_ok || at + nd[2] as usize > bd[2] as usize || Some(*src.data_type()) != buf.dtype().tensor_type() {
        return Err(Error::Internal(format!("ort: writing {nd:?} {:?} at position {at} of a cache buffer {bd:?} {:?}", src.data_type(), buf.dtype())));
    }
    let (heads, t, cap, hd) = (nd[1] as usize, nd[2] as usize, bd[2] as usize, nd[3] as usize);
    let mut dst = buf.view_mut().downcast::<DynTensorValueType>().map_err(oe)?;
    if !dst.memory_info().is_cpu_accessible() {
        return Err(Error::Internal("ort: an in-place cache buffer is not in host memory".into()));
    }
    macro_rules! typed {
        ($t:ty) => {{
            let (_, s) = src.try_extract_tensor::<$t>().map_err(oe)?;
            let (_, d) = dst.try_extract_tensor_mut::<$t>().map_err(oe)?;
            for h in 0..heads {
                d[(h * cap + at) * hd..(h * cap + at + t) * hd].copy_from_slice(&s[h * t * hd..(h + 1) * t * hd]);
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

/// A cache buffer with room for `need` positions in place of `old` (holding `len`), when `old`
/// is absent or too small: `shape`'s capacity at least, `need`, or twice `old`'s, with `old`'s
/// first `len` positions copied; None when `old` has room.
pub fn grown(p: Precision, old: Option<&DynValue>, len: usize, need: usize, shape: [usize; 4]) -> Result<Option<DynValue>> {
    let held = old.map_or(0, capacity);
    if held >= need {
        return Ok(None);
    }
    let [b, heads, cap, hd] = shape;
    let mut fresh = buffer(p, [b, heads, cap.max(need).max(2 * held), hd])?;
    if let Some(o) = old.filter(|_| len > 0) {
        write_at(&mut fresh, 0, &gather(&[(o, 0, len)], 2)?)?;
    }
    Ok(Some(fresh))
}
