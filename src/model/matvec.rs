//! Products of a few decode rows with a weight matrix on the CPU in f32: `y = W x` with `W`
//! `[out, in]` row-major, its rows split across the threads of the current rayon pool (the run's
//! computing threads, see `backend::threads`), each output a dot product with eight independent
//! accumulators. At batch 1 every decode step is such a product and is bound by how fast the
//! weights stream from memory; splitting rows as llama2.c's OpenMP loop does keeps every
//! requested thread streaming. A batch of up to [`MAX_ROWS`] rows reads each weight row once for
//! all of them, and each row's result is the same as alone. Several rows are bound by arithmetic
//! rather than reads; where the CPU has AVX-512 two rows share each 16-lane register, with the
//! same bits as the 8-lane kernel (`sixteen_lane_kernel_has_the_eight_lane_kernels_bits`).

use crate::error::{Error, Result};
use candle_core::{DType, Storage, Tensor};

/// The least weight bytes a thread claims at a time (see [`for_each_claimed`]): small enough
/// that the threads end a product within a few microseconds of each other, large enough that the
/// rows stream in runs the prefetchers follow.
const MIN_CLAIM_BYTES: usize = 64 * 1024;

/// Σ a[i]·b[i]: with AVX2 and FMA where the CPU has them (checked at run time, as candle's
/// gemm does), else eight accumulators that the compiler vectorises with the baseline ISA.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports the features `dot_avx2` is compiled for (checked above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Whether the CPU has AVX2 and FMA (checked at run time; the answer is cached).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
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

/// The portable dot product, for tests that compare kernels.
#[cfg(test)]
pub(crate) fn dot_portable_for_tests(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

/// The dot product with four 8-lane FMA accumulators.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    let (s, mut i) = dot_lanes_avx2(a, b);
    let n = a.len().min(b.len());
    let mut total = sum_lanes(s);
    while i < n {
        total += a[i] * b[i];
        i += 1;
    }
    total
}

/// [`dot_avx2`] before its lane sum: the eight lanes ((acc0 + acc1) + (acc2 + acc3)) over the
/// elements up to the last multiple of 8, and that index (the tail after it is summed in order).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn dot_lanes_avx2(a: &[f32], b: &[f32]) -> (std::arch::x86_64::__m256, usize) {
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
    (_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])), i)
}

/// `y[r] = W[r, :] · x` for every row of `w` (`rows × x.len()`, row-major).
pub fn matvec(w: &[f32], x: &[f32], y: &mut [f32]) {
    matmul_rows(w, x, 1, y)
}

/// `Y = X W^T` for `m` rows `xs` (`m × n`, row-major) and `w` (`rows × n`): `y` is `m × rows`.
/// Weight rows are claimed by the threads in runs that shrink towards the end
/// ([`for_each_claimed`]); within a run a block of weight rows is read once for a group of input
/// rows (register blocking), so at a few rows the weights stream from memory once per call.
/// Every output has its own 8-lane accumulator summed in one fixed order, so a row's result is
/// the same bits whatever the other rows, the blocking, the kernel or the thread count: a row of
/// a batch computes exactly what it computes alone.
pub fn matmul_rows(w: &[f32], xs: &[f32], m: usize, y: &mut [f32]) {
    matmul_rows_on(Kernel::detect(), w, xs, m, y)
}

/// The instruction sets the products run on (the best the CPU has, checked at run time as
/// candle's gemm does). Every kernel gives the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Eight accumulator lanes the compiler vectorises with the baseline ISA.
    Portable,
    /// 8-lane FMA accumulators: 8 weight rows × 1 input row, or 4 × 3.
    Avx2,
    /// Several input rows: two rows' 8-lane accumulators share one 16-lane register, each weight
    /// chunk broadcast to both halves (4 weight rows × up to 5 row pairs: 9 loads per 20 FMAs of
    /// 16 lanes). One row: as [`Kernel::Avx2`].
    Avx512,
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                return if has!("avx512f") && has!("avx512dq") { Kernel::Avx512 } else { Kernel::Avx2 };
            }
        }
        Kernel::Portable
    }
}

fn matmul_rows_on(kernel: Kernel, w: &[f32], xs: &[f32], m: usize, y: &mut [f32]) {
    // A kernel the CPU lacks must never be asked for (the unsafe calls below rely on it).
    assert!(kernel == Kernel::Portable || Kernel::detect() == Kernel::Avx512 || kernel == Kernel::detect(), "matvec: {kernel:?} is not available on this CPU");
    let m = m.max(1);
    let n = xs.len() / m;
    let rows = y.len() / m;
    if n == 0 || rows == 0 {
        return;
    }
    // Rows packed in pairs, once per call, for the 16-lane kernel.
    let pairs = (kernel == Kernel::Avx512 && m > 1).then(|| pack_pairs(xs, n, m));
    let task = |first: usize, out: &mut [f32]| {
        let count = out.len() / m;
        let w = &w[first * n..(first + count) * n];
        match &pairs {
            Some(p) => block_rows_paired(w, xs, p, n, m, out),
            None => block_rows(kernel, w, xs, n, m, out),
        }
    };
    // Several input rows run in blocks of 4 weight rows: claims keep to multiples of 4.
    let step = if m == 1 { 1 } else { 4 };
    let least = (MIN_CLAIM_BYTES / (n * 4)).max(1).next_multiple_of(step);
    if m == 1 {
        for_each_claimed(y, 1, least, step, task);
        return;
    }
    let mut yt = vec![0f32; rows * m];
    for_each_claimed(&mut yt, m, least, step, task);
    for (r, col) in yt.chunks(m).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            y[i * rows + r] = v;
        }
    }
}

/// Runs `task(first_row, out)` over `y` (rows of `m` outputs) on every thread of the current
/// rayon pool, each thread claiming the next run of rows as soon as it is free (guided
/// self-scheduling): a claim takes half the remaining rows ÷ the threads, at least `least`
/// rows, rounded up to a multiple of `step`. The first claims are long runs each thread streams
/// in memory order; the last ones are short, so the threads finish within one short claim of
/// each other even when one of them started late or ran slower (a woken worker, a busy
/// neighbour on the core). Fixed halves, as a parallel iterator splits them, leave the faster
/// thread waiting for the slower one's whole last piece at every product. On one thread `y` is
/// one task.
fn for_each_claimed(y: &mut [f32], m: usize, least: usize, step: usize, task: impl Fn(usize, &mut [f32]) + Sync) {
    let threads = rayon::current_num_threads();
    let rows = y.len() / m;
    if threads == 1 || rows <= least {
        task(0, y);
        return;
    }
    // The rows not yet claimed, and the index of the first of them.
    let left = std::sync::Mutex::new((y, 0usize));
    let work = || loop {
        let (first, out) = {
            let mut guard = left.lock().unwrap_or_else(|e| e.into_inner());
            let (rest, first) = std::mem::take(&mut *guard);
            let remaining = rest.len() / m;
            if remaining == 0 {
                return;
            }
            let take = (remaining / (2 * threads)).max(least).next_multiple_of(step).min(remaining);
            let (out, rest) = rest.split_at_mut(take * m);
            *guard = (rest, first + take);
            (first, out)
        };
        task(first, out);
    };
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| work());
        }
        work();
    });
}

/// `out[r · m + i] = w_r · x_i` for the `count` weight rows of `w` and the `m` rows of `xs`:
/// at batch 1 the weight rows in memory order on AVX2 ([`one_row_avx2`]), else blocks of 8; with
/// several rows, blocks of 4 weight rows (they stay in L1) against groups of 3 input rows, then
/// against the pair or row left over.
fn block_rows(kernel: Kernel, w: &[f32], xs: &[f32], n: usize, m: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if m == 1 && kernel != Kernel::Portable && w.len() == out.len() * n && xs.len() == n {
        // SAFETY: the non-portable kernels are only chosen where the CPU has AVX2 and FMA; the
        // lengths were checked above.
        unsafe { one_row_avx2(w, xs, out) };
        return;
    }
    let count = w.len() / n;
    let wrow = |r: usize| &w[r * n..(r + 1) * n];
    let xrow = |i: usize| &xs[i * n..(i + 1) * n];
    let wb = if m == 1 { 8 } else { 4 };
    let mut r = 0;
    while r + wb <= count {
        if m == 1 {
            // The portable kernel (on AVX2 `one_row_avx2` serves one row).
            let v = products::<8, 1>(kernel, std::array::from_fn(|k| wrow(r + k)), [xrow(0)]);
            (0..8).for_each(|k| out[r + k] = v[k][0]);
        } else {
            let ws: [&[f32]; 4] = std::array::from_fn(|k| wrow(r + k));
            let mut i = 0;
            while i + 3 <= m {
                let v = products::<4, 3>(kernel, ws, std::array::from_fn(|j| xrow(i + j)));
                (0..4).for_each(|k| (0..3).for_each(|j| out[(r + k) * m + i + j] = v[k][j]));
                i += 3;
            }
            if m - i == 2 {
                let v = products::<4, 2>(kernel, ws, [xrow(i), xrow(i + 1)]);
                (0..4).for_each(|k| (0..2).for_each(|j| out[(r + k) * m + i + j] = v[k][j]));
            } else if m - i == 1 {
                let v = products::<4, 1>(kernel, ws, [xrow(i)]);
                (0..4).for_each(|k| out[(r + k) * m + i] = v[k][0]);
            }
        }
        r += wb;
    }
    for r in r..count {
        for i in 0..m {
            out[r * m + i] = products::<1, 1>(kernel, [wrow(r)], [xrow(i)])[0][0];
        }
    }
}

/// The `m` rows of `xs` (`m × n`) in pairs for [`block_rows_paired`]: pair p's chunk c is rows
/// 2p and 2p + 1's elements 8c..8c + 8 side by side (16 floats), the second row zero when `m` is
/// odd. Elements past the last full chunk are left out (the kernel adds them from `xs`).
fn pack_pairs(xs: &[f32], n: usize, m: usize) -> Vec<f32> {
    let chunks = n / 8;
    let mut p = vec![0f32; m.div_ceil(2) * chunks * 16];
    for i in 0..m {
        let (pair, half) = (i / 2, i % 2);
        for c in 0..chunks {
            let at = (pair * chunks + c) * 16 + half * 8;
            p[at..at + 8].copy_from_slice(&xs[i * n + c * 8..i * n + c * 8 + 8]);
        }
    }
    p
}

/// [`block_rows`] for several rows on the 16-lane kernel: blocks of 4 weight rows against up to
/// 5 row pairs of `pairs` ([`pack_pairs`]) at once (more in groups of 3 or 4), the memory after
/// the block prefetched while the first group reads the block; then the weight rows left over one
/// at a time. An odd row's zero partner is computed and dropped.
fn block_rows_paired(w: &[f32], xs: &[f32], pairs: &[f32], n: usize, m: usize, out: &mut [f32]) {
    let count = w.len() / n;
    let pn = (n / 8) * 16;
    let wrow = |r: usize| &w[r * n..(r + 1) * n];
    let xrow = |i: usize| if i < m { &xs[i * n..(i + 1) * n] } else { &[][..] };
    let prow = |p: usize| &pairs[p * pn..(p + 1) * pn];
    let npairs = m.div_ceil(2);
    // W weight rows from r against P pairs from p, written to `out`.
    macro_rules! run {
        ($W:literal, $P:literal, $ws:expr, $r:expr, $p:expr, $ahead:expr) => {{
            let (r, p) = ($r, $p);
            let ps: [&[f32]; $P] = std::array::from_fn(|j| prow(p + j));
            let xt: [[&[f32]; 2]; $P] = std::array::from_fn(|j| [xrow(2 * (p + j)), xrow(2 * (p + j) + 1)]);
            // SAFETY: `Kernel::Avx512` is only chosen where the CPU has AVX-512 F/DQ, AVX2, FMA.
            let v = unsafe { products_paired::<$W, $P>($ws, ps, xt, $ahead) };
            for k in 0..$W {
                for j in 0..$P {
                    let i = 2 * (p + j);
                    out[(r + k) * m + i] = v[k][j][0];
                    if i + 1 < m {
                        out[(r + k) * m + i + 1] = v[k][j][1];
                    }
                }
            }
        }};
    }
    let mut r = 0;
    while r + 4 <= count {
        let ws: [&[f32]; 4] = std::array::from_fn(|k| wrow(r + k));
        // The memory after this block (as in `block_rows`), fetched while the first group
        // streams this block's rows.
        let next = w.as_ptr().wrapping_add((r + 4) * n);
        let mut p = 0;
        while p < npairs {
            let ahead = (p == 0).then_some(next);
            // Up to 5 pairs at once (20 accumulators of the 32 registers), so the weight rows
            // stream once for up to 10 rows; more in groups of 3 or 4.
            let take = match npairs - p {
                left @ 1..=5 => left,
                6 => 3,
                _ => 4,
            };
            match take {
                1 => run!(4, 1, ws, r, p, ahead),
                2 => run!(4, 2, ws, r, p, ahead),
                3 => run!(4, 3, ws, r, p, ahead),
                4 => run!(4, 4, ws, r, p, ahead),
                _ => run!(4, 5, ws, r, p, ahead),
            }
            p += take;
        }
        r += 4;
    }
    for r in r..count {
        for p in 0..npairs {
            run!(1, 1, [wrow(r)], r, p, None);
        }
    }
}

/// The dot products of `W` weight rows with `P` row pairs (packed by [`pack_pairs`]; `xt` are
/// each pair's two rows unpacked, for the elements past the last full chunk, an empty slice for
/// an odd row's missing partner; `ahead`: where the weights read next start, a prefetch hint as in
/// [`one_row_avx2`]). Each output's eight lanes run exactly the FMAs of
/// [`products_avx2`] in the same order and are summed by [`sum_lanes`], so the bits are its bits.
///
/// # Safety
/// The CPU must support AVX-512 F and DQ, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn products_paired<const W: usize, const P: usize>(w: [&[f32]; W], xp: [&[f32]; P], xt: [[&[f32]; 2]; P], ahead: Option<*const f32>) -> [[[f32; 2]; P]; W] {
    use std::arch::x86_64::*;
    let n = w[0].len();
    let chunks = n / 8;
    let mut acc = [[_mm512_setzero_ps(); P]; W];
    for c in 0..chunks {
        if let Some(a) = ahead.filter(|_| c.is_multiple_of(2)) {
            for k in 0..W {
                // A hint: the address is never read.
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(k * n + c * 8) as *const i8);
            }
        }
        let mut xv = [_mm512_setzero_ps(); P];
        for j in 0..P {
            // SAFETY: pair j holds `chunks` chunks of 16 floats.
            xv[j] = _mm512_loadu_ps(xp[j].as_ptr().add(c * 16));
        }
        for k in 0..W {
            // SAFETY: 8c + 8 ≤ n, the length of every weight row.
            let wv = _mm512_broadcast_f32x8(_mm256_loadu_ps(w[k].as_ptr().add(c * 8)));
            for j in 0..P {
                acc[k][j] = _mm512_fmadd_ps(wv, xv[j], acc[k][j]);
            }
        }
    }
    let i = chunks * 8;
    let mut out = [[[0f32; 2]; P]; W];
    for k in 0..W {
        for j in 0..P {
            let halves = [_mm512_castps512_ps256(acc[k][j]), _mm512_extractf32x8_ps::<1>(acc[k][j])];
            for (h, lanes) in halves.into_iter().enumerate() {
                let mut total = sum_lanes(lanes);
                if let Some(x) = xt[j][h].get(i..) {
                    for (a, b) in w[k][i..].iter().zip(x) {
                        total += a * b;
                    }
                }
                out[k][j][h] = total;
            }
        }
    }
    out
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn products_paired<const W: usize, const P: usize>(_: [&[f32]; W], _: [&[f32]; P], _: [[&[f32]; 2]; P], _: Option<*const f32>) -> [[[f32; 2]; P]; W] {
    unreachable!("the 16-lane kernel is only chosen on x86_64")
}

/// The W × X dot products of `w` rows and `x` rows (all of one length): with AVX2 and FMA where
/// the CPU has them, else the same arithmetic without fused multiply-adds.
fn products<const W: usize, const X: usize>(kernel: Kernel, w: [&[f32]; W], x: [&[f32]; X]) -> [[f32; X]; W] {
    #[cfg(target_arch = "x86_64")]
    {
        if kernel != Kernel::Portable {
            // SAFETY: the CPU supports the features `products_avx2` is compiled for.
            return unsafe { products_avx2::<W, X>(w, x) };
        }
    }
    let n = w[0].len();
    let mut out = [[0f32; X]; W];
    for k in 0..W {
        for j in 0..X {
            let mut lanes = [0f32; 8];
            let mut i = 0;
            while i + 8 <= n {
                for l in 0..8 {
                    lanes[l] += w[k][i + l] * x[j][i + l];
                }
                i += 8;
            }
            out[k][j] = reduce(&lanes, &w[k][i..], &x[j][i..]);
        }
    }
    out
}

/// One output's 8 lanes summed in a fixed order, plus the tail past the last full lane group.
fn reduce(lanes: &[f32; 8], wt: &[f32], xt: &[f32]) -> f32 {
    let mut total = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (a, b) in wt.iter().zip(xt) {
        total += a * b;
    }
    total
}

/// [`products`] with one 8-lane FMA accumulator per output (W·X ≤ 12 keeps them in registers).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn products_avx2<const W: usize, const X: usize>(w: [&[f32]; W], x: [&[f32]; X]) -> [[f32; X]; W] {
    use std::arch::x86_64::*;
    let n = w[0].len();
    let mut acc = [[_mm256_setzero_ps(); X]; W];
    let mut i = 0;
    while i + 8 <= n {
        let mut xv = [_mm256_setzero_ps(); X];
        for j in 0..X {
            // SAFETY: i + 8 ≤ n, the length of every row.
            xv[j] = _mm256_loadu_ps(x[j].as_ptr().add(i));
        }
        for k in 0..W {
            let wv = _mm256_loadu_ps(w[k].as_ptr().add(i));
            for j in 0..X {
                acc[k][j] = _mm256_fmadd_ps(wv, xv[j], acc[k][j]);
            }
        }
        i += 8;
    }
    let mut out = [[0f32; X]; W];
    for k in 0..W {
        for j in 0..X {
            let mut total = sum_lanes(acc[k][j]);
            for (a, b) in w[k][i..].iter().zip(&x[j][i..]) {
                total += a * b;
            }
            out[k][j] = total;
        }
    }
    out
}

/// [`block_rows`] at one input row on AVX2 and FMA, inside one call: each weight row's product
/// with [`products_avx2`]'s arithmetic (`W` = `X` = 1: one 8-lane FMA accumulator, its lanes
/// summed, then the tail), so the bits are [`block_rows`]'. The rows run one after another, so
/// the weights are read in the order they lie in memory, one stream; the next row's independent
/// chain overlaps this one's in the out-of-order core. Blocks of 8 rows read side by side (eight
/// streams a row apart) streamed 0.76–0.8× as fast from DRAM on an AMD EPYC with a 32 MiB L3
/// (docs/performance.md). The weights [`PREFETCH_AHEAD`] bytes ahead are prefetched one line at
/// a time as the reads advance: a burst of a whole row's hints before each row (128 for a
/// 2,048-wide row) made the 1B shape's step at 2 threads 1.1–1.3× slower.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and `w` must hold `out.len()` rows of `x.len()` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn one_row_avx2(w: &[f32], x: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let (n, count) = (x.len(), out.len());
    debug_assert_eq!(w.len(), count * n);
    for (r, y) in out.iter_mut().enumerate() {
        // SAFETY (every read below): row r lies within `w`, and i + 8 ≤ n.
        let row = w.as_ptr().add(r * n);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            if i.is_multiple_of(16) {
                // A hint only, never read: it may point past the matrix.
                _mm_prefetch::<_MM_HINT_T0>((row.wrapping_add(i) as *const i8).wrapping_add(PREFETCH_AHEAD));
            }
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(i)), _mm256_loadu_ps(x.as_ptr().add(i)), acc);
            i += 8;
        }
        let mut total = sum_lanes(acc);
        for (wv, xv) in w[r * n + i..(r + 1) * n].iter().zip(&x[i..]) {
            total += wv * xv;
        }
        *y = total;
    }
}

/// How far ahead of the weights being read [`one_row_avx2`] prefetches them, in bytes
/// (one prefetch per 64-byte line read).
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 1024;

/// The eight lanes of `a` summed in registers in [`reduce`]'s order, so with the same bits:
/// (l0+l4, l1+l5, l2+l6, l3+l7), then pairwise, then the two pairs.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn sum_lanes(a: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let v = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
    let h = _mm_hadd_ps(v, v);
    _mm_cvtss_f32(_mm_hadd_ps(h, h))
}

/// Runs `f` on the f32 contents of a contiguous CPU tensor, in place.
pub(crate) fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    with_slice_of::<f32, R>(t, f)
}

/// [`with_slice`] for a tensor of any dtype `T`.
pub(crate) fn with_slice_of<T: candle_core::WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { return Err(Error::Internal("matvec: tensor not on the CPU".into())) };
    let (from, to) = layout.contiguous_offsets().ok_or_else(|| Error::Internal("matvec: strided tensor".into()))?;
    Ok(f(&cpu.as_slice::<T>()?[from..to]))
}

/// The most rows [`try_row_times_transposed`] serves: above this candle's gemm, whose packing
/// of the weights is then amortised over enough rows, is faster.
pub const MAX_ROWS: usize = 16;

/// `x W^T` for `x` of `m ≤ MAX_ROWS` rows (`[m, in]`) when both are f32 on the CPU and `W`
/// `[out, in]` is contiguous: `Some([m, out])`; None where this kernel does not apply (the caller
/// uses candle's gemm). At a few rows candle's gemm copies (packs) the whole weight matrix on
/// every call, which costs more than the product (`cargo bench --bench batch`); at one row on one
/// thread it is as fast, but the same kernel serves every row count so that a row of a batch
/// computes exactly what it computes alone.
pub fn try_row_times_transposed(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    if x.rank() != 2 || x.dim(0)? > MAX_ROWS {
        return Ok(None);
    }
    rows_times_transposed(x, w)
}

/// `x W^T` for any number of rows through the same kernel as [`try_row_times_transposed`]
/// (each weight read once for all rows), so that every row gets the bits it gets alone whatever
/// the number of rows: a verification pass's positions of several rows side by side. None where
/// the kernel does not apply. Above [`MAX_ROWS`] candle's gemm is faster; this is for where a
/// row's bits must not depend on its neighbours.
pub fn rows_times_transposed(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    // Never on a tensor autograd tracks: the product would drop out of the graph.
    let applies = !x.track_op() && !w.track_op() && x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 && w.is_contiguous() && w.rank() == 2 && x.rank() == 2 && x.dim(1)? == w.dim(1)?;
    let m = x.dim(0)?;
    if !applies || m == 0 {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let rows = w.dim(0)?;
    let mut y = vec![0f32; rows * m];
    with_slice(&x, |xs| with_slice(w, |ws| matmul_rows(ws, xs, m, &mut y)))??;
    Ok(Some(Tensor::from_vec(y, (m, rows), x.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The in-register lane sum gives `reduce`'s bits (the order every path sums in) over lanes
    /// of mixed signs and magnitudes, where any other order rounds differently.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn lanes_sum_in_registers_as_reduce_sums_them() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            panic!("this test needs AVX2 and FMA, which every CI machine of this project has");
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mag = [1e-3f32, 1.0, 1e3, 1e7][(seed >> 60) as usize % 4];
            ((seed >> 11) as f32 / (1u64 << 53) as f32 - 0.5) * mag
        };
        let mut differs_from_sequential = 0;
        for _ in 0..10_000 {
            let lanes: [f32; 8] = std::array::from_fn(|_| next());
            // SAFETY: AVX2 and FMA checked above.
            let got = unsafe { sum_lanes(std::arch::x86_64::_mm256_loadu_ps(lanes.as_ptr())) };
            assert_eq!(got.to_bits(), reduce(&lanes, &[], &[]).to_bits(), "{lanes:?}");
            differs_from_sequential += (got != lanes.iter().sum::<f32>()) as usize;
        }
        assert!(differs_from_sequential > 100, "the lanes must be ones where the order matters");
    }

    /// The 16-lane kernel gives the 8-lane kernel's bits for every row count up to 24 (each
    /// grouping of row pairs, an odd row's zero partner), weight-row counts with and without a
    /// leftover past blocks of 4, and row lengths with and without a tail past 8 lanes. On a CPU
    /// without AVX-512 it checks instead that the kernel is refused.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_lane_kernel_has_the_eight_lane_kernels_bits() {
        assert!(has_avx2_fma(), "this test needs AVX2 and FMA, which every CI machine of this project has");
        if Kernel::detect() != Kernel::Avx512 {
            // Where the CPU lacks AVX-512 the 16-lane kernel is never chosen, and asking for it
            // is refused rather than run: that is what this CPU can check.
            let asked = std::panic::catch_unwind(|| matmul_rows_on(Kernel::Avx512, &[1.0; 16], &[1.0; 16], 2, &mut [0.0; 2]));
            assert!(asked.is_err(), "the 16-lane kernel must be refused on a CPU without AVX-512 F/DQ");
            return;
        }
        // Weight-row counts leaving 1, 3, 0, 1, 2 rows past blocks of 4; row lengths with no full
        // chunk, a tail, whole chunks.
        let mut differs_from_portable = 0;
        for (rows, n) in [(5usize, 8usize), (7, 5), (77, 45), (36, 256), (38, 19), (9, 700)] {
            let w: Vec<f32> = (0..rows * n).map(|i| (((i * 37 + 5) % 101) as f32 - 50.0) / 37.0).collect();
            for m in 1..=24 {
                let xs: Vec<f32> = (0..m * n).map(|i| (((i * 13 + m) % 17) as f32 - 8.0) / 3.0).collect();
                let (mut a, mut b, mut c) = (vec![0f32; rows * m], vec![0f32; rows * m], vec![0f32; rows * m]);
                matmul_rows_on(Kernel::Avx2, &w, &xs, m, &mut a);
                matmul_rows_on(Kernel::Avx512, &w, &xs, m, &mut b);
                matmul_rows_on(Kernel::Portable, &w, &xs, m, &mut c);
                let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&b), bits(&a), "{rows}×{n} weights, {m} rows");
                differs_from_portable += (bits(&c) != bits(&a)) as usize;
            }
        }
        assert!(differs_from_portable > 50, "the inputs must be ones where the order of the arithmetic shows");
    }

    /// Claims cover every row once, each handed with its own first row, in multiples of the
    /// step but the last, shrinking towards the end; at 2 and 3 threads a product made of many
    /// claims has the bits of the one-thread product.
    #[test]
    fn claims_cover_every_row_once_with_its_index() {
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for (rows, m, least, step) in [(1usize, 1usize, 1usize, 1usize), (7, 1, 1, 1), (200, 1, 3, 1), (201, 3, 4, 4), (64, 2, 8, 4), (1000, 1, 1, 1)] {
                let mut y = vec![f32::NAN; rows * m];
                let claims = std::sync::Mutex::new(Vec::new());
                pool.install(|| {
                    for_each_claimed(&mut y, m, least, step, |first, out| {
                        assert_eq!(out.len() % m, 0);
                        claims.lock().unwrap().push((first, out.len() / m));
                        out.chunks_mut(m).enumerate().for_each(|(r, o)| o.fill((first + r) as f32));
                    })
                });
                for (r, o) in y.chunks(m).enumerate() {
                    assert!(o.iter().all(|&v| v == r as f32), "{rows} rows, {m} each: row {r} got {o:?}");
                }
                let mut claims = claims.into_inner().unwrap();
                claims.sort_unstable();
                let last = claims.last().unwrap().0;
                for &(first, len) in &claims {
                    assert!(first == last || (len % step == 0 && len >= least), "claim of {len} rows at {first}");
                }
                if rows >= 200 {
                    assert!(claims.len() > 2 * threads, "{rows} rows in {} claims: they must shrink", claims.len());
                    assert!(claims[0].1 > claims.last().unwrap().1, "the first claims are the long ones: {claims:?}");
                }
            }
            // A product of many claims (a row is 256 bytes, so a claim is at least 256 rows),
            // at one row and at several, against one thread.
            let (rows, n) = (2_000, 64);
            let w: Vec<f32> = (0..rows * n).map(|i| (((i * 37 + 5) % 101) as f32 - 50.0) / 37.0).collect();
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            for m in [1, 5] {
                let xs: Vec<f32> = (0..m * n).map(|i| (((i * 13 + m) % 17) as f32 - 8.0) / 3.0).collect();
                let (mut a, mut b) = (vec![0f32; rows * m], vec![0f32; rows * m]);
                pool.install(|| matmul_rows(&w, &xs, m, &mut a));
                one.install(|| matmul_rows(&w, &xs, m, &mut b));
                assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{threads} threads, {m} rows");
            }
        }
    }

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
        let single = one.install(|| try_row_times_transposed(&xt, &wt)).unwrap().expect("applies on one thread").flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(single, ours, "the thread count does not change a row's result");
        let theirs = xt.matmul(&wt.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(ours.len(), rows);
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // Both dot products agree with a plain sum.
        let (a, b): (Vec<f32>, Vec<f32>) = ((0..77).map(|i| i as f32 * 0.5 - 9.0).collect(), (0..77).map(|i| (i % 5) as f32 - 2.0).collect());
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-3 && (dot_portable(&a, &b) - plain).abs() < 1e-3);
        // Not for f16; several rows each equal the row alone, bit for bit.
        assert!(pool.install(|| try_row_times_transposed(&xt.to_dtype(DType::F16).unwrap(), &wt.to_dtype(DType::F16).unwrap())).unwrap().is_none());
        let x2 = (&xt * 0.5).unwrap();
        let two = Tensor::cat(&[&xt, &x2, &xt], 0).unwrap();
        let both = pool.install(|| try_row_times_transposed(&two, &wt)).unwrap().expect("three rows").to_vec2::<f32>().unwrap();
        let alone2 = pool.install(|| try_row_times_transposed(&x2, &wt)).unwrap().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!((&both[0], &both[1], &both[2]), (&ours, &alone2, &ours));
        // Every row count up to MAX_ROWS (each blocking and leftover path): each row equals
        // itself alone, bit for bit.
        let rowx = |i: usize| (&xt * (1.0 + i as f64 * 0.25)).unwrap();
        let alone: Vec<Vec<f32>> = (0..MAX_ROWS).map(|i| pool.install(|| try_row_times_transposed(&rowx(i), &wt)).unwrap().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect();
        for m in 1..=MAX_ROWS {
            let x = Tensor::cat(&(0..m).map(rowx).collect::<Vec<_>>(), 0).unwrap();
            let y = pool.install(|| try_row_times_transposed(&x, &wt)).unwrap().unwrap().to_vec2::<f32>().unwrap();
            for (i, row) in y.iter().enumerate() {
                assert_eq!(row, &alone[i], "{m} rows: row {i} differs from itself alone");
            }
        }
        let many = Tensor::cat(&[&xt; MAX_ROWS + 1], 0).unwrap();
        assert!(pool.install(|| try_row_times_transposed(&many, &wt)).unwrap().is_none(), "above MAX_ROWS candle's gemm");
        // Any number of rows in one call: each row's bits as alone.
        for m in [MAX_ROWS + 1, 2 * MAX_ROWS + 5] {
            let xs = Tensor::cat(&(0..m).map(|i| rowx(i % MAX_ROWS)).collect::<Vec<_>>(), 0).unwrap();
            let got = pool.install(|| rows_times_transposed(&xs, &wt)).unwrap().expect("applies").to_vec2::<f32>().unwrap();
            for (i, row) in got.iter().enumerate() {
                assert_eq!(row, &alone[i % MAX_ROWS], "{m} rows: row {i}");
            }
        }
    }
}
