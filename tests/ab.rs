//! `exitbench ab`: two sides measured alternately in one job. A side against itself is within
//! noise; a model of the same shape with four times the layers (really that much slower per token
//! at full depth) regresses; binaries as sides run too.

mod common;

use common::{exitbench, NO_ENV};
use exitbench::model::LlamaConfig;
use exitbench::testkit::{tiny_config, write_tiny_model};
use std::path::Path;

fn shape(layers: usize) -> LlamaConfig {
    // Layers large enough that they, not the per-token overhead, set the time per token.
    LlamaConfig { hidden_size: 256, intermediate_size: 768, num_attention_heads: 8, num_key_value_heads: Some(4), ..tiny_config(layers, 300) }
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
fn ab_passes_a_side_against_itself_and_catches_a_deeper_model() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    write_tiny_model(&a, &shape(2), 5).unwrap();
    write_tiny_model(&b, &shape(8), 5).unwrap();
    let data = dataset(d.path());
    let flags = ["--dataset", data.as_str(), "--backend", "candle", "--threads", "1", "--measure", "softmax-diff", "--thresholds", "0.9", "--no-oracle",
        "--samples", "8", "--max-new-tokens", "32", "--warmup", "1", "--min-window", "0", "--idle-seconds", "0", "--powercap-root", "/nonexistent/powercap"];
    let ab = |sa: &str, sb: &str, out: &str, pairs: &str, extra: &[&str]| {
        let out = d.path().join(out);
        let mut args = vec!["ab", "--a", sa, "--b", sb, "--pairs", pairs, "--out", out.to_str().unwrap(), "--"];
        args.extend(extra);
        args.extend(flags);
        let r = exitbench(&args, NO_ENV);
        (r, out)
    };
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    // The same model on both sides: within noise, no deterministic difference, exit 0.
    let ((code, stdout, err), out) = ab(a, a, "same", "4", &[]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    assert!(stdout.contains("| full [candle cpu f32 1t] |") && !stdout.contains("regressed") && !stdout.contains("differ between"), "{stdout}");
    assert!(out.join("ab.json").is_file() && out.join("a-04/results.jsonl").is_file() && out.join("b-04/results.jsonl").is_file());
    // Four times the layers (a model of the same shape, really that much slower per token, not a
    // test-only slow path): full depth's decode ms/token rises well beyond the noise of a shared
    // machine, so the cell regresses, exit 1.
    let ((code, stdout, err), out) = ab(a, b, "deeper", "6", &[]);
    assert_eq!(code, 1, "{stdout}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("ab.json")).unwrap()).unwrap();
    let full = v["cells"].as_array().unwrap().iter().find(|c| c["cell"].as_str().unwrap().starts_with("full ")).unwrap();
    assert_eq!(full["verdict"], "regressed", "{stdout}");
    let change = full["ms_per_token"]["change"].as_f64().unwrap();
    // About 4× the layers' work per token (less the per-token overhead; more when the deeper
    // model's weights no longer fit the caches).
    assert!(change > 0.5 && change < 8.0, "four times the layers changed full depth's ms/token by {change}: {stdout}");
    assert!(err.contains("ab: REGRESSION"), "{err}");
    // Binaries as sides (here the same binary twice, the model given in the run flags); two pairs
    // are too few for a verdict, whatever they show.
    let me = env!("CARGO_BIN_EXE_exitbench");
    let ((code, stdout, err), _) = ab(me, me, "binaries", "2", &["--model", a]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    assert!(stdout.contains(&format!("A = binary {me}")), "{stdout}");
    // Flags ab sets itself are refused before anything runs.
    let ((code, _, err), out) = ab(a, a, "refused", "2", &["--out", "x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--out") && !out.exists(), "{err}");
}
