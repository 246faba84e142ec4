//! `exitbench calibrate --risk`: thresholds with Learn-then-Test's guarantee on the embedded model,
//! the fixed sequence as recorded (highest threshold first, stopping at the first failure, the
//! chosen one the last rejected), p-values recomputed from the recorded risks, and the validity
//! check over random splits; calibration at a batch size and the choice of a self-speculative
//! setting.

mod common;

use common::{exitbench, NO_ENV};
use exitbench::calibrate::ltt::hb_p_value;

#[test]
fn calibrate_with_learn_then_test_records_a_valid_fixed_sequence() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("cal");
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, stdout, err) = exitbench(
        &["calibrate", "--model", &format!("{root}/models/cricket-6l"), "--measure", "softmax-diff", "--thresholds", "0.99,0.9,0.6,0.3", "--samples", "12",
            "--max-new-tokens", "16", "--risk", "textual", "--delta", "0.3", "--epsilon", "0.2", "--check-validity", "--out", out.to_str().unwrap(),
            "--idle-seconds", "0", "--min-window", "0", "--powercap-root", "/nonexistent/powercap"],
        NO_ENV,
    );
    assert_eq!(code, 0, "{stdout}\n{err}");
    assert!(stdout.contains("1 − ε = 0.8 over the n = 12 validation samples") && stdout.contains("δ = 0.3"), "{stdout}");
    let cal: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("calibration.json")).unwrap()).unwrap();
    assert_eq!(cal["ltt"], serde_json::json!({"risk": "textual", "delta": 0.3, "epsilon": 0.2, "n": 12}));
    let m = &cal["measures"][0];
    let steps = m["ltt_steps"].as_array().unwrap();
    assert!(!steps.is_empty());
    let thresholds: Vec<f64> = steps.iter().map(|s| s["threshold"].as_f64().unwrap()).collect();
    assert!(thresholds.windows(2).all(|w| w[0] > w[1]) && thresholds[0] == 0.99, "{thresholds:?}");
    let mut last_rejected = None;
    for (i, s) in steps.iter().enumerate() {
        let (risk, n, p) = (s["risk"].as_f64().unwrap(), s["n"].as_u64().unwrap() as usize, s["p_value"].as_f64().unwrap());
        assert_eq!(n, 12);
        assert!((p - hb_p_value(risk, n, 0.3)).abs() < 1e-12, "{s}");
        let rejected = s["rejected"].as_bool().unwrap();
        assert_eq!(rejected, p <= 0.2, "{s}");
        if rejected {
            last_rejected = Some(thresholds[i]);
        } else {
            assert_eq!(i, steps.len() - 1, "the sequence goes on after a failure: {steps:?}");
        }
    }
    assert_eq!(m["threshold"].as_f64(), last_rejected, "{m}");
    let v = &m["validity"];
    assert_eq!(v["splits"], 100, "{m}");
    assert!(v["violation_rate"].as_f64().unwrap() <= 0.2 + 3.0 * (0.2f64 * 0.8 / 100.0).sqrt(), "{v}");
    // The LTT flags need --risk.
    let (code, _, err) = exitbench(&["calibrate", "--delta", "0.1"], NO_ENV);
    assert_eq!(code, 2, "{err}");
}

/// `calibrate --batch-size 4 --batch-policy batch-min` judges every threshold at that batch size
/// (every cell of both splits is batched, the calibration says so), and `--draft-layer` picks the
/// fastest self-speculative setting on validation, runs only it on test, with D = 0; the two
/// together are refused.
#[test]
fn calibrate_at_a_batch_size_and_choosing_a_speculative_setting() {
    let root = env!("CARGO_MANIFEST_DIR");
    let model = format!("{root}/models/cricket-6l");
    let d = tempfile::tempdir().unwrap();
    let common = ["--measure", "softmax-diff", "--thresholds", "0.9,0.5", "--samples", "8", "--max-new-tokens", "16", "--idle-seconds", "0", "--min-window", "0", "--powercap-root", "/nonexistent/powercap"];
    let run = |extra: &[&str], out: &std::path::Path| {
        let mut a = vec!["calibrate", "--model", &model];
        a.extend(common);
        a.extend(extra);
        a.extend(["--out", out.to_str().unwrap()]);
        exitbench(&a, NO_ENV)
    };
    let batched = d.path().join("batched");
    let (code, stdout, err) = run(&["--batch-size", "4", "--batch-policy", "batch-min"], &batched);
    assert_eq!(code, 0, "{stdout}\n{err}");
    assert!(stdout.contains("batch size 4 (batch-min)"), "{stdout}");
    let cal: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(batched.join("calibration.json")).unwrap()).unwrap();
    assert_eq!((cal["batch_size"].as_u64(), cal["batch_policy"].as_str()), (Some(4), Some("batch-min")), "{cal}");
    for split in ["validation", "test"] {
        let records = std::fs::read_to_string(batched.join(split).join("results.jsonl")).unwrap();
        for line in records.lines().filter(|l| l.contains("\"key\"")) {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(r["key"]["batch_size"].as_u64(), Some(4), "{split}: {}", r["key"]);
            if r["key"]["baseline"] == "none" {
                assert_eq!(r["key"]["batch_policy"], "batch-min", "{split}: {}", r["key"]);
            }
        }
    }
    let spec = d.path().join("spec");
    let (code, stdout, err) = run(&["--draft-layer", "2,3", "--draft-tokens", "2,4"], &spec);
    assert_eq!(code, 0, "{stdout}\n{err}");
    let cal: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(spec.join("calibration.json")).unwrap()).unwrap();
    let s = &cal["speculation"];
    assert_eq!(s["tried"], 4, "{s}");
    assert_eq!(s["test_d"].as_f64(), Some(0.0), "{s}");
    let (e, k) = (s["setting"]["draft_layer"].as_u64().unwrap(), s["setting"]["draft_tokens"].as_u64().unwrap());
    assert!([2, 3].contains(&e) && [2, 4].contains(&k), "{s}");
    assert!(stdout.contains("Self-speculative decoding: the fastest of 4 settings"), "{stdout}");
    let test = std::fs::read_to_string(spec.join("test").join("results.jsonl")).unwrap();
    let spec_cells: Vec<serde_json::Value> = test.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|r| r["key"]["baseline"] == "speculative").collect();
    assert_eq!(spec_cells.len(), 1, "only the chosen setting runs on test");
    assert_eq!((spec_cells[0]["key"]["draft_layer"].as_u64(), spec_cells[0]["key"]["draft_tokens"].as_u64()), (Some(e), Some(k)));
    // Speculative settings calibrate at a batch size too: every speculative cell of both splits
    // runs batched.
    let both = d.path().join("both");
    let (code, stdout, err) = run(&["--batch-size", "4", "--draft-layer", "2", "--draft-tokens", "2,4"], &both);
    assert_eq!(code, 0, "{stdout}\n{err}");
    let cal: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(both.join("calibration.json")).unwrap()).unwrap();
    assert_eq!((cal["speculation"]["tried"].as_u64(), cal["speculation"]["test_d"].as_f64()), (Some(2), Some(0.0)), "{cal}");
    for split in ["validation", "test"] {
        let records = std::fs::read_to_string(both.join(split).join("results.jsonl")).unwrap();
        let spec: Vec<serde_json::Value> = records.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|r| r["key"]["baseline"] == "speculative").collect();
        assert!(!spec.is_empty(), "{split}");
        assert!(spec.iter().all(|r| r["key"]["batch_size"].as_u64() == Some(4) && r["batch"]["padding_waste"].as_f64().is_some()), "{split}: {spec:?}");
    }
}
