//! Matrix-vector products for one decode row on the CPU in f32: `y = W x` with `W` `[out, in]`
//! row-major, its rows split across the threads of the current rayon pool (the run's computing
//! threads, see `backend::threads`), each row a dot product with eight independent
//! accumulators that the compiler vectorises. At batch 1 every decode step is such a product
//! and is bound by how fast the weights stream from memory; splitting rows as llama2.c's OpenMP
//! loop does keeps every requested thread streaming. Used from two threads on; on one, candle's
//! gemm is as fast.

use crate::error::{Error, Result};
use candle_core::{DType, Storage, Tensor};
use rayon::prelude::*;

/// Rows handed to a thread at a time.
const ROWS_PER_TASK: usize = 32;

/// Σ a[i]·b[i]: with AVX2 and FMA where the CPU has them (checked at run time, as candle's
/// gemm does), else eight accumulators that the compiler vectorises with the baseline ISA.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features `dot_avx2` is compiled for (checked above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// The portable dot product.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// The dot product with four 8-lane FMA accumulators.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8j + 8 ≤ n, within both slices.
            *s = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j)), *s);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), s);
    let mut total = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    while i < n {
        total += a[i] * b[i];
        i += 1;
    }
    total
}

/// `y[r] = W[r, :] · x` for every row of `w` (`rows × x.len()`, row-major).
pub fn matvec(w: &[f32], x: &[f32], y: &mut [f32]) {
    let n = x.len();
    y.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(task, out)| {
        let first = task * ROWS_PER_TASK;
        for (j, o) in out.iter_mut().enumerate() {
            let r = first + j;
            *o = dot(&w[r * n..(r + 1) * n], x);
        }
    });
}

/// Runs `f` on the f32 contents of a contiguous CPU tensor.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { return Err(Error::Internal("matvec: tensor not on the CPU".into())) };
    let (from, to) = layout.contiguous_offsets().ok_or_else(|| Error::Internal("matvec: strided tensor".into()))?;
    Ok(f(&cpu.as_slice::<f32>()?[from..to]))
}

/// `x W^T` for `x` of one row (`[1, in]`) when both are f32 on the CPU and `W` `[out, in]` is
/// contiguous: `Some([1, out])`; None where this kernel does not apply (the caller uses candle's).
pub fn try_row_times_transposed(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    // Never on a tensor autograd tracks: the product would drop out of the graph.
    let applies = !x.track_op() && !w.track_op() && x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 && w.is_contiguous() && w.rank() == 2 && x.elem_count() == w.dim(1)?;
    // On one thread candle's gemm streams as fast or faster (criterion, `cargo bench --bench
    // decode -- matvec`: 1B LM head 89.9 ms vs 95.9 ms); its m = 1 product does not speed up
    // with a second thread (88.2 ms), which the row split does (58.2 ms).
    if !applies || rayon::current_num_threads() < 2 {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let rows = w.dim(0)?;
    let mut y = vec![0f32; rows];
    with_slice(&x, |xs| with_slice(w, |ws| matvec(ws, xs, &mut y)))??;
    Ok(Some(Tensor::from_vec(y, (1, rows), x.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equals_candle_matmul_within_rounding() {
        let (rows, n) = (77, 45);
        let w: Vec<f32> = (0..rows * n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let x: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0).collect();
        let wt = Tensor::from_vec(w, (rows, n), &Device::Cpu).unwrap();
        let xt = Tensor::from_vec(x, (1, n), &Device::Cpu).unwrap();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let ours = pool.install(|| try_row_times_transposed(&xt, &wt)).unwrap().expect("applies on two threads").flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert!(one.install(|| try_row_times_transposed(&xt, &wt)).unwrap().is_none(), "one thread keeps candle's gemm");
        let theirs = xt.matmul(&wt.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(ours.len(), rows);
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // Both dot products agree with a plain sum.
        let (a, b): (Vec<f32>, Vec<f32>) = ((0..77).map(|i| i as f32 * 0.5 - 9.0).collect(), (0..77).map(|i| (i % 5) as f32 - 2.0).collect());
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-3 && (dot_portable(&a, &b) - plain).abs() < 1e-3);
        // Not for f16 or several rows.
        assert!(pool.install(|| try_row_times_transposed(&xt.to_dtype(DType::F16).unwrap(), &wt.to_dtype(DType::F16).unwrap())).unwrap().is_none());
        let two = Tensor::cat(&[&xt, &xt], 0).unwrap();
        assert!(pool.install(|| try_row_times_transposed(&two, &wt)).unwrap().is_none());
    }
}
