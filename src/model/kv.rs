//! A layer's key/value cache: two preallocated buffers `[b, kv_heads, capacity, head_dim]`
//! filled along the position axis, read as views of their first `len` positions. Clearing keeps
//! the allocation (a new prompt does not re-zero hundreds of MiB inside its timed prefill), and
//! truncating drops the newest positions (a rollback); the buffers grow by doubling when a
//! sequence outgrows them.

use crate::error::{Error, Result};
use candle_core::Tensor;

/// Keys and values of one layer. A clone owns its own buffers (appends write in place, so two
/// caches must never share them).
#[derive(Debug)]
pub struct KvBuffer {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    capacity: usize,
}

/// The position axis of `[b, kv_heads, positions, head_dim]`.
const POS: usize = 2;

impl Clone for KvBuffer {
    fn clone(&self) -> Self {
        // Only an allocation failure can make a copy fail.
        let copy = |t: &Option<Tensor>| t.as_ref().map(|t| t.copy().expect("copying a KV cache buffer"));
        Self { k: copy(&self.k), v: copy(&self.v), len: self.len, capacity: self.capacity }
    }
}

impl KvBuffer {
    /// An empty cache whose first allocation holds `capacity` positions.
    pub fn new(capacity: usize) -> Self {
        Self { k: None, v: None, len: 0, capacity: capacity.max(1) }
    }

    /// Cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffers hold before they must grow (0 before the first append).
    pub fn allocated(&self) -> usize {
        self.k.as_ref().and_then(|k| k.dim(POS).ok()).unwrap_or(0)
    }

    /// Forgets every position, keeping the buffers.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps the first `n` positions (no-op when `n ≥ len`).
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// The cached keys and values, views `[b, kv_heads, len, head_dim]`; None when empty.
    pub fn kv(&self) -> Result<Option<(Tensor, Tensor)>> {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) if self.len > 0 => Ok(Some((k.narrow(POS, 0, self.len)?, v.narrow(POS, 0, self.len)?))),
            _ => Ok(None),
        }
    }

    /// The buffers' f32 contents on the CPU in place, `[b, kv_heads, capacity, head_dim]` each,
    /// with the capacity and the cached length, passed to `f`; an error for another device or
    /// dtype, or an empty cache.
    pub fn with_host_f32<R>(&self, f: impl FnOnce(&[f32], &[f32], usize, usize) -> R) -> Result<R> {
        let (Some(k), Some(v)) = (&self.k, &self.v) else {
            return Err(Error::Internal("kv cache: reading an empty cache".into()));
        };
        let cap = k.dim(POS)?;
        super::matvec::with_slice(k, |ks| super::matvec::with_slice(v, |vs| f(ks, vs, cap, self.len)))?
    }

    /// Appends `k`, `v` `[b, kv_heads, t, head_dim]` (contiguous) and returns every cached
    /// position, as [`KvBuffer::kv`] does.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(POS)?;
        let need = self.len + t;
        self.k = Some(Self::room(self.k.take(), k, self.len, need, self.capacity)?);
        self.v = Some(Self::room(self.v.take(), v, self.len, need, self.capacity)?);
        let (kb, vb) = (self.k.as_ref().expect("set above"), self.v.as_ref().expect("set above"));
        kb.slice_set(&k.contiguous()?, POS, self.len)?;
        vb.slice_set(&v.contiguous()?, POS, self.len)?;
        self.len = need;
        Ok((kb.narrow(POS, 0, need)?, vb.narrow(POS, 0, need)?))
    }

    /// A buffer shaped like `src` with room for `need` positions, keeping the first `len` of
    /// `buf`: `buf` itself when it fits, else a new one (doubled) with those positions copied.
    fn room(buf: Option<Tensor>, src: &Tensor, len: usize, need: usize, capacity: usize) -> Result<Tensor> {
        let (b, h, _, d) = src.dims4()?;
        let fits = |x: &Tensor| {
            let (xb, xh, xt, xd) = x.dims4().unwrap_or((0, 0, 0, 0));
            (xb, xh, xd) == (b, h, d) && xt >= need && x.dtype() == src.dtype() && x.device().same_device(src.device())
        };
        match buf {
            Some(x) if fits(&x) => Ok(x),
            old => {
                let keep = old.as_ref().filter(|_| len > 0);
                if let Some(o) = keep {
                    let (ob, oh, _, od) = o.dims4()?;
                    if (ob, oh, od) != (b, h, d) || o.dtype() != src.dtype() {
                        return Err(Error::Internal(format!("kv cache: appending {:?} {:?} to a cache of {:?} {:?}", src.dims(), src.dtype(), o.dims(), o.dtype())));
                    }
                }
                let grown = keep.map(|o| o.dim(POS).unwrap_or(0) * 2).unwrap_or(0);
                let size = need.max(capacity).max(grown);
                let fresh = Tensor::zeros((b, h, size, d), src.dtype(), src.device())?;
                if let Some(o) = keep {
                    fresh.slice_set(&o.narrow(POS, 0, len)?.contiguous()?, POS, 0)?;
                }
                Ok(fresh)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn block(first: f32, t: usize) -> Tensor {
        let data: Vec<f32> = (0..2 * t * 3).map(|i| first + i as f32).collect();
        Tensor::from_vec(data, (1, 2, t, 3), &Device::Cpu).unwrap()
    }

    fn host(x: &Tensor) -> Vec<f32> {
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn appends_grow_clear_keeps_the_buffer_and_truncate_rolls_back() {
        let mut c = KvBuffer::new(2);
        let (a, b) = (block(0.0, 2), block(100.0, 3));
        c.append(&a, &a).unwrap();
        assert_eq!(c.allocated(), 2);
        let (k, v) = c.append(&b, &b).unwrap();
        assert!(c.allocated() >= 5, "grew to {}", c.allocated());
        assert_eq!(host(&k), host(&Tensor::cat(&[&a, &b], 2).unwrap()));
        assert_eq!(host(&v), host(&k));
        c.truncate(3);
        let c3 = block(500.0, 1);
        let (k, _) = c.append(&c3, &c3).unwrap();
        let expected = Tensor::cat(&[&a, &b.narrow(2, 0, 1).unwrap(), &c3], 2).unwrap();
        assert_eq!(host(&k), host(&expected));
        let before = c.allocated();
        c.clear();
        assert!(c.kv().unwrap().is_none() && c.is_empty());
        let (k, _) = c.append(&b, &b).unwrap();
        assert_eq!(c.allocated(), before, "clearing must keep the allocation");
        assert_eq!(host(&k), host(&b));
        assert_eq!(k.dtype(), DType::F32);
        // A clone is independent: appending to it leaves the original as it was.
        let mut twin = c.clone();
        twin.truncate(1);
        twin.append(&c3, &c3).unwrap();
        assert_eq!(host(&c.kv().unwrap().unwrap().0), host(&b));
    }
}
