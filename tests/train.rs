//! Training on a tiny configuration: a few steps lower the loss, and a run stopped and resumed
//! from its checkpoint ends with exactly the weights of an uninterrupted run. Plus the synthetic
//! dataset command is byte-identical for a seed.

use std::path::Path;
use std::process::Command;

fn train(dir: &Path, steps: usize, extra: &[&str]) {
    let s = steps.to_string();
    let mut args = vec!["train", "--model", dir.to_str().unwrap(), "--layers", "2", "--hidden", "32", "--heads", "2", "--kv-heads", "1",
        "--intermediate", "64", "--vocab", "400", "--max-len", "1024", "--batch", "2", "--steps", &s, "--warmup", "2", "--lr", "3e-3",
        "--log-every", "1", "--checkpoint-every", "4", "--tokenizer-samples", "60", "--threads", "1"];
    args.extend(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_exitbench")).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn a_few_steps_lower_the_loss_and_resume_is_exact() {
    let a = tempfile::tempdir().unwrap();
    train(a.path(), 12, &[]);
    let l = losses(a.path());
    assert_eq!(l.len(), 12);
    let first = l[..3].iter().sum::<f64>() / 3.0;
    let last = l[9..].iter().sum::<f64>() / 3.0;
    assert!(last < first - 0.3, "loss did not fall: first steps {first:.3}, last steps {last:.3}");

    // Stop after the first step (time limit 0), then resume to the end with the same command.
    let b = tempfile::tempdir().unwrap();
    std::fs::copy(a.path().join("tokenizer.json"), b.path().join("tokenizer.json")).unwrap();
    train(b.path(), 12, &["--time-limit", "0"]);
    assert_eq!(losses(b.path()).len(), 1);
    train(b.path(), 12, &[]);
    assert_eq!(losses(b.path()), l, "resumed run logged different losses");
    let wa = std::fs::read(a.path().join("model.safetensors")).unwrap();
    let wb = std::fs::read(b.path().join("model.safetensors")).unwrap();
    assert!(wa == wb, "resumed weights differ from the uninterrupted run's");
}

#[test]
fn synth_command_is_byte_identical_for_a_seed() {
    let d = tempfile::tempdir().unwrap();
    let write = |name: &str, seed: &str| {
        let p = d.path().join(name);
        let out = Command::new(env!("CARGO_BIN_EXE_exitbench"))
            .args(["data", "synth", "--split", "validation", "--n", "50", "--seed", seed, "--out", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::read(p).unwrap()
    };
    let a = write("a.jsonl", "7");
    assert_eq!(a, write("b.jsonl", "7"));
    assert_ne!(a, write("c.jsonl", "8"));
    let text = String::from_utf8(a).unwrap();
    assert_eq!(text.lines().count(), 50);
    let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(v["id"].is_string() && v["prompt"].as_str().unwrap().ends_with("\nSummary:") && v["reference"].is_string());
}
