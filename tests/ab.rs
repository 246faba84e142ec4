//! `exitbench ab`: two sides measured alternately in one job. A side against itself is within
//! noise; a model of the same shape with twice the layers (really about 2× slower per token at
//! full depth) regresses; binaries as sides run too.

mod common;

use common::{exitbench, NO_ENV};
use exitbench::model::LlamaConfig;
use exitbench::testkit::{tiny_config, write_tiny_model};
use std::path::Path;

fn shape(layers: usize) -> LlamaConfig {
    LlamaConfig { hidden_size: 128, intermediate_size: 256, ..tiny_config(layers, 300) }
}

fn dataset(dir: &Path) -> String {
    let p = dir.join("data.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| serde_json::json!({"id": format!("s{i}"), "prompt": format!("The Hawks beat the Foxes by {i} runs at Kelmarsh Oval."), "reference": "The Hawks beat the Foxes."}).to_string())
        .collect();
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p.display().to_string()
}

#[test]
fn ab_passes_a_side_against_itself_and_catches_a_model_twice_as_deep() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    write_tiny_model(&a, &shape(3), 5).unwrap();
    write_tiny_model(&b, &shape(6), 5).unwrap();
    let data = dataset(d.path());
    let flags = ["--dataset", data.as_str(), "--backend", "candle", "--threads", "1", "--measure", "softmax-diff", "--thresholds", "0.9", "--no-oracle",
        "--samples", "8", "--max-new-tokens", "32", "--warmup", "1", "--min-window", "0", "--idle-seconds", "0", "--powercap-root", "/nonexistent/powercap"];
    let ab = |sa: &str, sb: &str, out: &str, extra: &[&str]| {
        let out = d.path().join(out);
        let mut args = vec!["ab", "--a", sa, "--b", sb, "--pairs", "4", "--out", out.to_str().unwrap(), "--"];
        args.extend(extra);
        args.extend(flags);
        let r = exitbench(&args, NO_ENV);
        (r, out)
    };
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    // The same model on both sides: within noise, no deterministic difference, exit 0.
    let ((code, stdout, err), out) = ab(a, a, "same", &[]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    assert!(stdout.contains("| full [candle f32 cpu 1t] |") && !stdout.contains("regressed") && !stdout.contains("differ between"), "{stdout}");
    assert!(out.join("ab.json").is_file() && out.join("a-04/results.jsonl").is_file() && out.join("b-04/results.jsonl").is_file());
    // Twice the layers: full depth's decode ms/token about doubles, so the cell regresses, exit 1.
    let ((code, stdout, err), out) = ab(a, b, "deeper", &[]);
    assert_eq!(code, 1, "{stdout}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("ab.json")).unwrap()).unwrap();
    let full = v["cells"].as_array().unwrap().iter().find(|c| c["cell"].as_str().unwrap().starts_with("full ")).unwrap();
    assert_eq!(full["verdict"], "regressed", "{stdout}");
    let change = full["ms_per_token"]["change"].as_f64().unwrap();
    assert!(change > 0.5 && change < 1.5, "twice the layers changed full depth's ms/token by {change}: {stdout}");
    assert!(err.contains("ab: REGRESSION"), "{err}");
    // Binaries as sides (here the same binary twice, the model given in the run flags).
    let me = env!("CARGO_BIN_EXE_exitbench");
    let ((code, stdout, err), _) = ab(me, me, "binaries", &["--model", a]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    assert!(stdout.contains(&format!("A = binary {me}")), "{stdout}");
    // Flags ab sets itself are refused before anything runs.
    let ((code, _, err), out) = ab(a, a, "refused", &["--out", "x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--out") && !out.exists(), "{err}");
}
