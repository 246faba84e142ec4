//! What an exit check reduces a layer's output to: the exit head's top-2 summary and the cosine
//! of two hidden states, computed with the same formulas on every backend (a leaf module: the
//! backends, the exit measures and the decode loop all use it, and it uses none of them).

/// What the exit head (final norm + LM head) says about the last position, reduced on the
/// backend's device so that only these scalars cross to the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadSummary {
    /// Index of the largest logit (the first on ties).
    pub argmax: u32,
    /// Top-1 softmax probability.
    pub p1: f32,
    /// Top-2 softmax probability (equal to `p1` on an exact tie).
    pub p2: f32,
    /// Top-1 minus top-2 logit: how close the argmax was to changing (near-ties).
    pub logit_gap: f32,
}

/// What a greedy choice of the token needs from the exit head: the argmax and the top-2 logit
/// gap, without the softmax's normaliser (a pass of `exp` over the vocabulary that choosing the
/// token does not use).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadPick {
    /// Index of the largest logit (the first on ties), as [`HeadSummary::argmax`].
    pub argmax: u32,
    /// Top-1 minus top-2 logit, as [`HeadSummary::logit_gap`].
    pub logit_gap: f32,
}

impl HeadPick {
    /// The pick from host logits: [`HeadSummary::of_logits`]'s top-2 pass alone.
    pub fn of_logits(logits: &[f32]) -> Self {
        let (i1, v1, v2) = top2(logits);
        HeadPick { argmax: i1 as u32, logit_gap: v1 - v2 }
    }
}

impl From<HeadSummary> for HeadPick {
    fn from(s: HeadSummary) -> Self {
        HeadPick { argmax: s.argmax, logit_gap: s.logit_gap }
    }
}

/// The index of the largest logit (the first on ties), the largest and the second largest (the
/// largest left once one instance of the largest is set aside; NaN is never either): eight lanes
/// at a time where the CPU has AVX2, with the scalar pass's result.
fn top2(logits: &[f32]) -> (usize, f32, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if logits.len() >= 64 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above).
            let (i1, v1, v2) = unsafe { top2_avx2(logits) };
            // Zeros of both signs compare equal but differ in bits: which one the scalar pass
            // keeps depends on the order it meets them, so such a result is taken from it.
            if v1 != 0.0 && v2 != 0.0 {
                return (i1, v1, v2);
            }
        }
    }
    top2_scalar(logits, (0, f32::NEG_INFINITY, f32::NEG_INFINITY), 0)
}

/// The scalar top-2 pass over `logits` (whose first index is `from`), continuing from `state`.
fn top2_scalar(logits: &[f32], state: (usize, f32, f32), from: usize) -> (usize, f32, f32) {
    let (mut i1, mut v1, mut v2) = state;
    for (i, &v) in logits.iter().enumerate() {
        if v > v1 {
            v2 = v1;
            v1 = v;
            i1 = from + i;
        } else if v > v2 {
            v2 = v;
        }
    }
    (i1, v1, v2)
}

/// [`top2`] with each of eight lanes running the scalar pass over every eighth logit, the lanes
/// then merged (the largest, at the smallest index among the lanes that hold it; the second the
/// largest of the other lanes' largest and every lane's second), and the tail past the last
/// eight continued by the scalar pass.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn top2_avx2(logits: &[f32]) -> (usize, f32, f32) {
    use std::arch::x86_64::*;
    let n = logits.len() / 8 * 8;
    let (mut m1, mut m2) = (_mm256_set1_ps(f32::NEG_INFINITY), _mm256_set1_ps(f32::NEG_INFINITY));
    let (mut i1, mut idx) = (_mm256_setzero_si256(), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    let eight = _mm256_set1_epi32(8);
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 ≤ n ≤ logits.len().
        let v = _mm256_loadu_ps(logits.as_ptr().add(i));
        // Ordered comparisons: false for NaN, as `>` is.
        let gt1 = _mm256_cmp_ps::<_CMP_GT_OQ>(v, m1);
        let gt2 = _mm256_cmp_ps::<_CMP_GT_OQ>(v, m2);
        m2 = _mm256_blendv_ps(_mm256_blendv_ps(m2, v, gt2), m1, gt1);
        m1 = _mm256_blendv_ps(m1, v, gt1);
        i1 = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(i1), _mm256_castsi256_ps(idx), gt1));
        idx = _mm256_add_epi32(idx, eight);
        i += 8;
    }
    let (mut l1, mut l2, mut li) = ([0f32; 8], [0f32; 8], [0i32; 8]);
    _mm256_storeu_ps(l1.as_mut_ptr(), m1);
    _mm256_storeu_ps(l2.as_mut_ptr(), m2);
    _mm256_storeu_si256(li.as_mut_ptr() as *mut __m256i, i1);
    let mut best: Option<usize> = None;
    for l in 0..8 {
        best = match best {
            Some(b) if !(l1[l] > l1[b] || (l1[l] == l1[b] && li[l] < li[b])) => Some(b),
            _ => Some(l),
        };
    }
    let b = best.expect("eight lanes");
    let mut v2 = f32::NEG_INFINITY;
    for l in 0..8 {
        for c in [l2[l], if l == b { f32::NEG_INFINITY } else { l1[l] }] {
            if c > v2 {
                v2 = c;
            }
        }
    }
    // No logit above −∞: the scalar pass's answer is index 0.
    let i1 = if l1[b] > f32::NEG_INFINITY { li[b] as usize } else { 0 };
    top2_scalar(&logits[n..], (i1, l1[b], v2), n)
}

impl HeadSummary {
    /// The reductions on host logits (one pass for top-2, one for the normaliser).
    pub fn of_logits(logits: &[f32]) -> Self {
        let (i1, v1, v2) = top2(logits);
        // z = Σ exp(v − v1) in order; the exponentials eight at a time, with `f32::exp`'s bits.
        let mut buf = [0f32; 512];
        let mut z = 0f32;
        for chunk in logits.chunks(buf.len()) {
            let e = &mut buf[..chunk.len()];
            e.iter_mut().zip(chunk).for_each(|(e, &v)| *e = v - v1);
            crate::expf::exp_in_place(e);
            z = e.iter().fold(z, |z, &e| z + e);
        }
        HeadSummary::from_reduced(i1 as u32, v1, v2, z)
    }

    /// The summary from the reductions a device computed: argmax, top-1 and top-2 logits, and
    /// z = Σ exp(logit − top-1).
    pub fn from_reduced(argmax: u32, v1: f32, v2: f32, z: f32) -> Self {
        let p2 = if v2.is_finite() { (v2 - v1).exp() / z } else { 0.0 };
        HeadSummary { argmax, p1: 1.0 / z, p2, logit_gap: v1 - v2 }
    }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += x as f64 * y as f64;
        na += x as f64 * x as f64;
        nb += y as f64 * y as f64;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na.sqrt() * nb.sqrt())) as f32
    }
}

/// Index of the largest logit (first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_summary_matches_direct_computation() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let e: Vec<f64> = logits.iter().map(|&x| (x as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        let (p1, p2) = (e[1] / z, e[2] / z);
        let s = HeadSummary::of_logits(&logits);
        assert!((s.p1 as f64 - p1).abs() < 1e-6 && (s.p2 as f64 - p2).abs() < 1e-6);
        assert_eq!((s.argmax, s.logit_gap), (1, 1.0));
        assert_eq!(argmax(&logits), 1);
    }

    /// The eight-lane top-2 gives the scalar pass's index and bits on ties, NaN, infinities,
    /// zeros of both signs, every length around the lane count and seeded vocabularies.
    #[test]
    fn the_lane_top2_is_the_scalar_pass() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut cases: Vec<Vec<f32>> = Vec::new();
        for n in [64, 65, 71, 72, 80, 1000, 32000] {
            cases.push((0..n).map(|_| (next() % 2001) as f32 * 0.01 - 10.0).collect());
            // Few distinct values: ties everywhere.
            cases.push((0..n).map(|_| (next() % 4) as f32).collect());
        }
        let mut special = vec![-5.0f32; 100];
        special[3] = f32::NAN;
        special[40] = 2.0;
        special[77] = 2.0;
        special[90] = f32::NAN;
        cases.push(special.clone());
        special[50] = f32::INFINITY;
        cases.push(special.clone());
        cases.push(vec![f32::NEG_INFINITY; 70]);
        cases.push(vec![f32::NAN; 70]);
        let mut zeros = vec![-1.0f32; 90];
        zeros[10] = -0.0;
        zeros[33] = 0.0;
        zeros[60] = -0.0;
        cases.push(zeros);
        let mut tail = vec![0.5f32; 67];
        tail[66] = 0.75;
        cases.push(tail);
        for (k, c) in cases.iter().enumerate() {
            let (a, b) = (top2(c), top2_scalar(c, (0, f32::NEG_INFINITY, f32::NEG_INFINITY), 0));
            assert_eq!((a.0, a.1.to_bits(), a.2.to_bits()), (b.0, b.1.to_bits(), b.2.to_bits()), "case {k}");
        }
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }
}
