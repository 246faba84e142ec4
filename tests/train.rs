//! Training on a tiny configuration: a few steps lower the loss, and a run stopped and resumed
//! from its checkpoint ends with exactly the weights of an uninterrupted run; exit classifiers
//! train on a model directory with a JSONL dataset and are refused once the weights change;
//! training refuses flags and directories it must not write into. Plus the synthetic dataset
//! command is byte-identical for a seed.

use std::path::Path;
use std::process::Command;

const TINY: [&str; 26] = ["--layers", "2", "--hidden", "32", "--heads", "2", "--kv-heads", "1", "--intermediate", "64", "--vocab", "400",
    "--max-len", "1024", "--batch", "2", "--warmup", "2", "--lr", "3e-3", "--log-every", "1", "--checkpoint-every", "4", "--tokenizer-samples", "60"];

fn exitbench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_exitbench")).args(args).output().unwrap()
}

/// Runs `train` on `dir` with the tiny flags, `extra` flag/value pairs replacing or adding to them.
fn train_output(dir: &Path, steps: usize, extra: &[&str]) -> std::process::Output {
    let s = steps.to_string();
    let mut args = vec!["train", "--model", dir.to_str().unwrap(), "--steps", &s, "--threads", "1"];
    args.extend(TINY);
    for pair in extra.chunks(2) {
        match args.iter().position(|a| *a == pair[0]) {
            Some(i) => args[i + 1] = pair[1],
            None => args.extend(pair),
        }
    }
    exitbench(&args)
}

/// Asserts a refused `train` run: exit 2, no panic, an error naming every needle.
fn refused(out: std::process::Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "error does not mention `{n}`: {err}");
    }
}

fn train(dir: &Path, steps: usize, extra: &[&str]) {
    let out = train_output(dir, steps, extra);
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
fn classifiers_train_on_a_jsonl_dataset_and_go_stale_with_new_weights() {
    let a = tempfile::tempdir().unwrap();
    train(a.path(), 8, &[]);
    let data = a.path().join("data.jsonl");
    assert!(exitbench(&["data", "synth", "--split", "train", "--n", "12", "--out", data.to_str().unwrap()]).status.success());
    let dir = a.path().to_str().unwrap();
    let out = exitbench(&["train", "--classifier-only", "--model", dir, "--dataset", data.to_str().unwrap(), "--samples", "12",
        "--classifier-epochs", "20", "--threads", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("layer 1:") && stdout.contains("layer 2:"), "{stdout}");
    let info = exitbench::model::weights::read_classifier_info(a.path()).unwrap().expect("exit_classifier.json written");
    assert_eq!(info["examples"], 12);
    assert_eq!(info["fits"].as_array().unwrap().len(), 2);
    let generate = || exitbench(&["generate", "--model", dir, "--prompt", "The Hawks", "--max-new-tokens", "4", "--measure", "classifier", "--threshold", "0.5"]);
    let ok = generate();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // Four more steps change the weights: the classifiers no longer belong to them.
    train(a.path(), 12, &[]);
    let stale = generate();
    let err = String::from_utf8_lossy(&stale.stderr);
    assert_eq!(stale.status.code(), Some(2), "{err}");
    assert!(err.contains("trained on other weights") && err.contains("--classifier-only"), "{err}");
}

#[test]
fn training_refuses_bad_flags_and_directories_it_must_not_write() {
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().join("new");
    refused(train_output(&e, 4, &["--kv-heads", "0"]), &["--kv-heads"]);
    refused(train_output(&e, 4, &["--kv-heads", "3", "--heads", "2"]), &["--kv-heads", "does not divide"]);
    refused(train_output(&e, 4, &["--heads", "4", "--hidden", "36"]), &["--heads", "even"]);
    refused(train_output(&e, 4, &["--vocab", "100"]), &["--vocab", "259"]);
    refused(train_output(&e, 4, &["--lr", "NaN"]), &["--lr"]);
    refused(train_output(&e, 4, &["--warmup", "9"]), &["--warmup"]);
    assert!(!e.exists(), "a refused run wrote {}", e.display());
    refused(exitbench(&["train", "--model", e.to_str().unwrap(), "--dataset", "x.jsonl"]), &["--dataset", "--classifier-only"]);

    // A model someone else trained: no checkpoint, so training would overwrite its weights.
    let foreign = tempfile::tempdir().unwrap();
    exitbench::testkit::write_tiny_model(foreign.path(), &exitbench::testkit::tiny_config(2, 400), 1).unwrap();
    let before = std::fs::read(foreign.path().join("model.safetensors")).unwrap();
    refused(train_output(foreign.path(), 4, &[]), &["model.safetensors", "no training checkpoint", "--classifier-only"]);
    assert_eq!(std::fs::read(foreign.path().join("model.safetensors")).unwrap(), before);

    // Our own checkpoint, resumed with another shape or seed: refused before anything is written.
    let own = tempfile::tempdir().unwrap();
    train(own.path(), 4, &[]);
    let config = std::fs::read(own.path().join("config.json")).unwrap();
    refused(train_output(own.path(), 8, &["--layers", "3"]), &["config.json", "num_hidden_layers", "--layers 3"]);
    refused(train_output(own.path(), 8, &["--seed", "5"]), &["--seed", "differs"]);
    refused(train_output(own.path(), 2, &[]), &["--steps", "below step 4"]);
    assert_eq!(std::fs::read(own.path().join("config.json")).unwrap(), config);
}

#[test]
fn synth_command_refuses_bad_flags() {
    let d = tempfile::tempdir().unwrap();
    refused(exitbench(&["data", "synth", "--split", "holdout", "--n", "3", "--out", "-"]), &["--split", "holdout"]);
    let nowhere = d.path().join("missing/dir/x.jsonl");
    refused(exitbench(&["data", "synth", "--split", "test", "--n", "3", "--out", nowhere.to_str().unwrap()]), &["missing/dir/x.jsonl"]);
    refused(exitbench(&["data", "synth", "--split", "test", "--n", "many", "--out", "-"]), &["--n"]);
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
