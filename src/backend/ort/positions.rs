//! Host-side edits along the position axis of ONNX Runtime values (`[1, t, d]` hidden states,
//! `[1, kv_heads, t, head_dim]` caches), in their own element type: what self-speculative
//! decoding needs (cache rollback, per-position exit heads, states joined from saved parts).
//! Each edit copies through host memory: cheap on the CPU provider, a round trip on CUDA.

use super::oe;
use crate::error::{Error, Result};
use ort::memory::AllocationDevice;
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
