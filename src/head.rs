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

/// The index of the largest logit (the first on ties), the largest and the second largest.
fn top2(logits: &[f32]) -> (usize, f32, f32) {
    let (mut i1, mut v1, mut v2) = (0usize, f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > v1 {
            v2 = v1;
            v1 = v;
            i1 = i;
        } else if v > v2 {
            v2 = v;
        }
    }
    (i1, v1, v2)
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

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }
}
