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

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_measure_is_rejected_with_its_name() {
        let e = Measure::parse("entropy").unwrap_err().to_string();
        assert!(e.contains("entropy") && e.contains("--measure"), "{e}");
    }
}
