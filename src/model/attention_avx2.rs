//! One query head's decode attention with AVX2 and FMA, with the bits of the plain form
//! (`attention_cpu::one_query_with` over `matvec::dot`): eight keys' scores are reduced
//! together by shuffles in the order a lone dot product sums its lanes, and the weighted sum of
//! values keeps each output element's running sum in a register across keys, adding the keys in
//! the same order. Every score, softmax weight and output is the same float as before; only the
//! instructions between them change.

use super::matvec::{dot_avx2, dot_lanes_avx2};
use std::arch::x86_64::*;

/// Attention of query `qv` over the first `scores.len()` positions of `k` and `v`
/// (position-major, `qv.len()` floats each), added into `acc` (`qv.len()` floats; checked, as
/// the value loads rely on it).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn one_query(qv: &[f32], k: &[f32], v: &[f32], scale: f32, scores: &mut [f32], acc: &mut [f32]) {
    let hd = qv.len();
    assert_eq!(acc.len(), hd, "attention: the output must have the head dimension");
    scores_into(qv, k, scale, scores);
    let mut max = f32::NEG_INFINITY;
    for &s in scores.iter() {
        max = max.max(s);
    }
    // (s − max).exp() for every score, the exponentials eight at a time with `f32::exp`'s bits.
    scores.iter_mut().for_each(|s| *s -= max);
    crate::expf::exp_in_place(scores);
    let mut z = 0f32;
    for &s in scores.iter() {
        z += s;
    }
    for s in scores.iter_mut() {
        *s /= z;
    }
    weighted_values(scores, &v[..scores.len() * hd], acc);
}

/// `scores[j] = dot(qv, k_j) · scale` with [`dot_avx2`]'s bits, eight keys at a time.
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_into(qv: &[f32], k: &[f32], scale: f32, scores: &mut [f32]) {
    let hd = qv.len();
    let key = |j: usize| &k[j * hd..(j + 1) * hd];
    let mut j = 0;
    // A head dimension with a tail past its last 8 lanes sums that tail per key: key by key.
    if hd.is_multiple_of(8) {
        let sc = _mm256_set1_ps(scale);
        while j + 8 <= scores.len() {
            // SAFETY: AVX2 and FMA, as this function requires.
            let lanes: [__m256; 8] = std::array::from_fn(|t| unsafe { dot_lanes_avx2(qv, key(j + t)).0 });
            let totals = sum_lanes8(lanes);
            // SAFETY: j + 8 ≤ scores.len().
            _mm256_storeu_ps(scores.as_mut_ptr().add(j), _mm256_mul_ps(totals, sc));
            j += 8;
        }
    }
    for (j, s) in scores.iter_mut().enumerate().skip(j) {
        *s = dot_avx2(qv, key(j)) * scale;
    }
}

/// The lane sums of eight registers at once, each in `matvec::sum_lanes`' order
/// ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)): lane t of the result is register t's sum.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn sum_lanes8(s: [__m256; 8]) -> __m256 {
    // Per register the four sums l_i + l_{i+4}, two registers to a vector (low half, high half).
    let v = |a: __m256, b: __m256| _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b));
    let (v01, v23, v45, v67) = (v(s[0], s[1]), v(s[2], s[3]), v(s[4], s[5]), v(s[6], s[7]));
    // Pairwise sums, then the two pairs: low half holds registers 0, 2, 4, 6; high 1, 3, 5, 7.
    let h = _mm256_hadd_ps(_mm256_hadd_ps(v01, v23), _mm256_hadd_ps(v45, v67));
    _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `acc[e] += Σ_j p[j] · v_j[e]`, adding the keys in order for each element (as the plain loop
/// does), with 32 elements' running sums in registers across all keys.
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_values(p: &[f32], v: &[f32], acc: &mut [f32]) {
    let hd = acc.len();
    let mut e = 0;
    while e + 32 <= hd {
        let mut a: [__m256; 4] = std::array::from_fn(|r| unsafe { _mm256_loadu_ps(acc.as_ptr().add(e + 8 * r)) });
        for (j, &pj) in p.iter().enumerate() {
            let pv = _mm256_set1_ps(pj);
            let row = v.as_ptr().add(j * hd + e);
            for (r, ar) in a.iter_mut().enumerate() {
                // Multiply, then add: no fused multiply-add, as the plain loop.
                *ar = _mm256_add_ps(*ar, _mm256_mul_ps(pv, _mm256_loadu_ps(row.add(8 * r))));
            }
        }
        for (r, ar) in a.iter().enumerate() {
            _mm256_storeu_ps(acc.as_mut_ptr().add(e + 8 * r), *ar);
        }
        e += 32;
    }
    while e + 8 <= hd {
        let mut a = _mm256_loadu_ps(acc.as_ptr().add(e));
        for (j, &pj) in p.iter().enumerate() {
            a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(pj), _mm256_loadu_ps(v.as_ptr().add(j * hd + e))));
        }
        _mm256_storeu_ps(acc.as_mut_ptr().add(e), a);
        e += 8;
    }
    for (e, a) in acc.iter_mut().enumerate().skip(e) {
        for (j, &pj) in p.iter().enumerate() {
            *a += pj * v[j * hd + e];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::attention_cpu::one_query_with;
    use super::super::matvec::{dot_portable_for_tests, has_avx2_fma};

    /// Random floats of mixed magnitudes, where the order of additions changes the result.
    fn floats(seed: &mut u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                let mag = [1e-2f32, 0.3, 1.0, 4.0][(*seed >> 60) as usize % 4];
                ((*seed >> 11) as f32 / (1u64 << 53) as f32 - 0.5) * mag
            })
            .collect()
    }

    /// The AVX2 attention gives the plain form's bits (every output element) for head
    /// dimensions with and without a tail past 8 and 32 lanes and for key counts around
    /// multiples of 8, starting from a non-zero accumulator; and the plain form over the
    /// portable dot product differs, so the comparison can tell kernels apart.
    #[test]
    fn avx2_attention_has_the_plain_forms_bits() {
        assert!(has_avx2_fma(), "this test needs AVX2 and FMA, which every CI machine of this project has");
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut differs_from_portable = 0;
        for hd in [4usize, 8, 12, 32, 40, 44, 64, 96] {
            for len in [1usize, 7, 8, 9, 16, 23, 64, 131] {
                let (q, k, v, acc0) = (floats(&mut seed, hd), floats(&mut seed, len * hd), floats(&mut seed, len * hd), floats(&mut seed, hd));
                let scale = 1.0 / (hd as f32).sqrt();
                let (mut s1, mut a1) = (vec![0f32; len], acc0.clone());
                // SAFETY: AVX2 and FMA checked above.
                one_query_with(|a, b| unsafe { super::dot_avx2(a, b) }, &q, &k, &v, scale, &mut s1, &mut a1);
                let (mut s2, mut a2) = (vec![0f32; len], acc0.clone());
                // SAFETY: as above.
                unsafe { super::one_query(&q, &k, &v, scale, &mut s2, &mut a2) };
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a2), bits(&a1), "outputs, hd {hd}, {len} keys");
                let (mut s3, mut a3) = (vec![0f32; len], acc0.clone());
                one_query_with(dot_portable_for_tests, &q, &k, &v, scale, &mut s3, &mut a3);
                differs_from_portable += (bits(&a3) != bits(&a1)) as usize;
            }
        }
        assert!(differs_from_portable > 10, "the inputs must be ones where the summation order shows");
    }
}
