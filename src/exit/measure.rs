//! Confidence measures (CALM): how sure a layer is that its token is final. All are computed in
//! f32 and lie in [0, 1] for softmax and classifier measures, [-1, 1] for saturation.

use crate::error::{Error, Result};

/// A confidence measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// Top-1 minus top-2 softmax probability (CALM's "softmax response").
    SoftmaxDiff,
    /// Top-1 softmax probability (the t5x code's default; not the paper's measure).
    SoftmaxMax,
    /// Cosine similarity of this layer's and the previous layer's hidden states.
    Saturation,
    /// A learned per-layer linear + sigmoid classifier on the hidden state.
    Classifier,
}

impl std::str::FromStr for Measure {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Measure::parse(s.trim())
    }
}

impl Measure {
    /// Every measure, in report order.
    pub const ALL: [Measure; 4] = [Measure::SoftmaxDiff, Measure::SoftmaxMax, Measure::Saturation, Measure::Classifier];

    /// Parses a measure name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "softmax-diff" => Ok(Measure::SoftmaxDiff),
            "softmax-max" => Ok(Measure::SoftmaxMax),
            "saturation" => Ok(Measure::Saturation),
            "classifier" => Ok(Measure::Classifier),
            other => Err(Error::setting(
                "--measure",
                format!("unknown measure `{other}` (expected softmax-diff, softmax-max, saturation or classifier)"),
            )),
        }
    }

    /// Canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Measure::SoftmaxDiff => "softmax-diff",
            Measure::SoftmaxMax => "softmax-max",
            Measure::Saturation => "saturation",
            Measure::Classifier => "classifier",
        }
    }

    /// True when the measure needs the exit head's logits at every checked layer.
    pub fn needs_logits(self) -> bool {
        matches!(self, Measure::SoftmaxDiff | Measure::SoftmaxMax)
    }
}

/// Softmax confidence of host `logits` for a logits-based measure (backends reduce on their
/// device with the same formulas: [`crate::backend::HeadSummary`]).
pub fn softmax_confidence(measure: Measure, logits: &[f32]) -> f32 {
    let s = crate::backend::HeadSummary::of_logits(logits);
    match measure {
        Measure::SoftmaxMax => s.p1,
        _ => s.p1 - s.p2,
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
    fn softmax_measures_match_direct_computation() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let e: Vec<f64> = logits.iter().map(|&x| (x as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        let (p1, p2) = (e[1] / z, e[2] / z);
        assert!((softmax_confidence(Measure::SoftmaxMax, &logits) as f64 - p1).abs() < 1e-6);
        assert!((softmax_confidence(Measure::SoftmaxDiff, &logits) as f64 - (p1 - p2)).abs() < 1e-6);
        assert_eq!(argmax(&logits), 1);
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn unknown_measure_is_rejected_with_its_name() {
        let e = Measure::parse("entropy").unwrap_err().to_string();
        assert!(e.contains("entropy") && e.contains("--measure"), "{e}");
    }
}
