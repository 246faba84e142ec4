//! ROUGE-1/2/L/Lsum identical to Google's `rouge-score` package (tokenizer, optional NLTK Porter
//! stemmer, summary-level Lsum). The scoring itself is the `rougers` crate, which reproduces the
//! Python package bit for bit (checked against our own fixture in tests/rouge_fixture.rs).
//!
//! Known limitation inherited from rouge-score: the tokenizer keeps only `[a-z0-9]`, so
//! non-ASCII letters are dropped and a text in another script scores as empty.
//! The headline "ROUGE-L" everywhere in exitbench is rougeL F, no stemmer, corpus mean.

use super::stats::{bootstrap_mean, Interval};
use rougers::{RougeScorer, RougeType};
use serde::{Deserialize, Serialize};

/// Precision, recall and F of one ROUGE variant.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Prf {
    /// Matched units ÷ prediction units.
    pub precision: f64,
    /// Matched units ÷ reference units.
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub fmeasure: f64,
}

/// Scores of one prediction/reference pair.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[allow(non_snake_case)]
pub struct PairScores {
    /// Unigram overlap.
    pub rouge1: Prf,
    /// Bigram overlap.
    pub rouge2: Prf,
    /// Longest common subsequence.
    pub rougeL: Prf,
    /// Summary-level LCS over "\n"-separated sentences.
    pub rougeLsum: Prf,
}

/// Corpus-level F: mean over pairs with a bootstrap 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[allow(non_snake_case)]
pub struct CorpusScores {
    /// ROUGE-1 F.
    pub rouge1: Interval,
    /// ROUGE-2 F.
    pub rouge2: Interval,
    /// ROUGE-L F (the headline figure).
    pub rougeL: Interval,
    /// ROUGE-Lsum F.
    pub rougeLsum: Interval,
}

/// A ROUGE scorer with or without the Porter stemmer.
pub struct Rouge {
    scorer: RougeScorer,
}

impl Rouge {
    /// A scorer for rouge1, rouge2, rougeL and rougeLsum.
    pub fn new(stemmer: bool) -> Self {
        let scorer = RougeScorer::new(["rouge1", "rouge2", "rougeL", "rougeLsum"], stemmer)
            .expect("the four standard ROUGE types are valid");
        Self { scorer }
    }

    /// Scores a prediction against a reference.
    pub fn score(&self, prediction: &str, reference: &str) -> PairScores {
        let s = self.scorer.score(reference, prediction);
        let get = |t: RougeType| {
            let v = s.get(t).unwrap_or_default();
            Prf { precision: v.precision, recall: v.recall, fmeasure: v.fmeasure }
        };
        PairScores { rouge1: get(RougeType::N(1)), rouge2: get(RougeType::N(2)), rougeL: get(RougeType::L), rougeLsum: get(RougeType::LSum) }
    }

    /// Scores every pair.
    pub fn score_all(&self, pairs: &[(String, String)]) -> Vec<PairScores> {
        pairs.iter().map(|(p, r)| self.score(p, r)).collect()
    }
}

/// Corpus scores of per-pair scores: mean F with a bootstrap 95% interval (1,000 resamples,
/// seeded, so the interval is deterministic).
pub fn corpus(scores: &[PairScores], seed: u64) -> CorpusScores {
    let f = |pick: fn(&PairScores) -> f64| bootstrap_mean(&scores.iter().map(pick).collect::<Vec<_>>(), 1000, seed);
    CorpusScores {
        rouge1: f(|s| s.rouge1.fmeasure),
        rouge2: f(|s| s.rouge2.fmeasure),
        rougeL: f(|s| s.rougeL.fmeasure),
        rougeLsum: f(|s| s.rougeLsum.fmeasure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_and_disjoint_texts() {
        let r = Rouge::new(false);
        let s = r.score("the cat sat", "the cat sat");
        assert_eq!(s.rougeL.fmeasure, 1.0);
        let s = r.score("dogs bark", "the cat sat");
        assert_eq!(s.rouge1.fmeasure, 0.0);
    }

    #[test]
    fn lcs_counts_subsequence() {
        // LCS("a b c d", "a c d e") = 3 → P = R = 3/4.
        let s = Rouge::new(false).score("a b c d", "a c d e");
        assert!((s.rougeL.precision - 0.75).abs() < 1e-12);
        assert!((s.rougeL.recall - 0.75).abs() < 1e-12);
    }
}
