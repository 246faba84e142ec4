//! ROUGE against a fixture computed with Google's rouge-score 0.1.2
//! (`.venv/bin/python scripts/make_rouge_fixture.py`): every pair, both stemmer settings, all four
//! variants, precision/recall/F, and the corpus means.

use exitbench::metrics::rouge::{corpus, PairScores, Prf, Rouge};
use serde_json::Value;

fn load() -> (Vec<(String, String)>, Value) {
    let root = env!("CARGO_MANIFEST_DIR");
    let pairs = std::fs::read_to_string(format!("{root}/tests/fixtures/rouge/pairs.jsonl")).unwrap();
    let pairs = pairs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["prediction"].as_str().unwrap().to_string(), v["reference"].as_str().unwrap().to_string())
        })
        .collect();
    let expected = std::fs::read_to_string(format!("{root}/tests/fixtures/rouge/expected.json")).unwrap();
    (pairs, serde_json::from_str(&expected).unwrap())
}

fn check(got: &Prf, want: &Value, what: &str) {
    for (name, g) in [("precision", got.precision), ("recall", got.recall), ("fmeasure", got.fmeasure)] {
        let w = want[name].as_f64().unwrap();
        assert!((g - w).abs() <= 1e-12, "{what} {name}: got {g}, rouge-score {w}");
    }
}

fn run(stemmer: bool, key: &str) {
    let (pairs, expected) = load();
    let want = &expected[key];
    let rouge = Rouge::new(stemmer);
    let scores: Vec<PairScores> = rouge.score_all(&pairs);
    let wp = want["pairs"].as_array().unwrap();
    assert_eq!(scores.len(), wp.len());
    assert!(scores.len() >= 50);
    for (i, (s, w)) in scores.iter().zip(wp).enumerate() {
        check(&s.rouge1, &w["rouge1"], &format!("pair {i} rouge1"));
        check(&s.rouge2, &w["rouge2"], &format!("pair {i} rouge2"));
        check(&s.rougeL, &w["rougeL"], &format!("pair {i} rougeL"));
        check(&s.rougeLsum, &w["rougeLsum"], &format!("pair {i} rougeLsum"));
    }
    let c = corpus(&scores, 0);
    let cm = &want["corpus_mean"];
    for (name, g) in [("rouge1", c.rouge1.mean), ("rouge2", c.rouge2.mean), ("rougeL", c.rougeL.mean), ("rougeLsum", c.rougeLsum.mean)] {
        let w = cm[name].as_f64().unwrap();
        assert!((g - w).abs() <= 1e-12, "corpus {name}: got {g}, rouge-score {w}");
    }
}

#[test]
fn matches_rouge_score_without_stemmer() {
    run(false, "no_stemmer");
}

#[test]
fn matches_rouge_score_with_stemmer() {
    run(true, "stemmer");
}
