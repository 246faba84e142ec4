//! Confidence measures (CALM): how sure a layer is that its token is final. All are computed in
//! f32 and lie in [0, 1] for softmax and classifier measures, [-1, 1] for saturation.

crate::named_enum! {
    /// A confidence measure.
    pub enum Measure: "measure", "--measure" {
        /// Top-1 minus top-2 softmax probability (CALM's "softmax response").
        SoftmaxDiff = "softmax-diff",
        /// Top-1 softmax probability (the t5x code's default; not the paper's measure).
        SoftmaxMax = "softmax-max",
        /// Cosine similarity of this layer's and the previous layer's hidden states.
        Saturation = "saturation",
        /// A learned per-layer linear + sigmoid classifier on the hidden state.
        Classifier = "classifier",
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
