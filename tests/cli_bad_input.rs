//! Every malformed input gets one clear error naming the file / field / line, exit code 2, and
//! no panic.

use exitbench::testkit::{tiny_config, write_tiny_model};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn exitbench(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_exitbench")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Asserts exit code 2, no panic, and an error mentioning every `needle`.
fn assert_bad_input(args: &[&str], needles: &[&str]) {
    let (code, _, err) = exitbench(args);
    assert_eq!(code, 2, "args {args:?}: exit {code}, stderr: {err}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    assert!(err.starts_with("Error:") || err.contains("error:"), "{err}");
    for n in needles {
        assert!(err.contains(n), "error for {args:?} does not mention `{n}`: {err}");
    }
}

fn model_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_tiny_model(d.path(), &tiny_config(2, 300), 1).unwrap();
    d
}

fn gen_args(dir: &Path) -> Vec<String> {
    gen_args_with(dir, "The Hawks")
}

fn gen_args_with(dir: &Path, prompt: &str) -> Vec<String> {
    vec!["generate".into(), "--model".into(), dir.display().to_string(), "--prompt".into(), prompt.into(), "--max-new-tokens".into(), "3".into()]
}

fn run_gen(dir: &Path, extra: &[&str], needles: &[&str]) {
    let mut a = gen_args(dir);
    a.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_bad_input(&a, needles);
}

fn rewrite_tensors(dir: &Path, f: impl FnOnce(&mut HashMap<String, candle_core::Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    f(&mut t);
    candle_core::safetensors::save(&t, &path).unwrap();
}

#[test]
fn a_good_model_generates() {
    let d = model_dir();
    let a = gen_args(d.path());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, out, err) = exitbench(&a);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("average layers"), "{out}");
}

#[test]
fn missing_model_dir_and_config() {
    run_gen(Path::new("/nonexistent/model"), &[], &["/nonexistent/model"]);
    let d = model_dir();
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    run_gen(d.path(), &[], &["config.json"]);
}

#[test]
fn malformed_config_json() {
    let d = model_dir();
    std::fs::write(d.path().join("config.json"), "{\"hidden_size\": 64,").unwrap();
    run_gen(d.path(), &[], &["config.json, line 1: malformed JSON"]);
    std::fs::write(d.path().join("config.json"), "{\n  \"hidden_size\": \"wide\"\n}").unwrap();
    run_gen(d.path(), &[], &["config.json, line 2: field `hidden_size`: invalid type: string \"wide\""]);
    // A missing field is named plainly (not `field `config.json`: bad value: ...`).
    let mut v: serde_json::Value = serde_json::to_value(tiny_config(2, 300)).unwrap();
    v.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(d.path().join("config.json"), serde_json::to_string_pretty(&v).unwrap()).unwrap();
    run_gen(d.path(), &[], &["config.json", "required field `hidden_size` is missing"]);
    let (_, _, err) = exitbench(&gen_args(d.path()).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!err.contains("`?`") && !err.contains("bad value"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let d = model_dir();
    rewrite_tensors(d.path(), |t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    });
    run_gen(d.path(), &[], &["missing tensor", "model.layers.1.mlp.up_proj.weight"]);
}

#[test]
fn wrong_shape_is_named() {
    let d = model_dir();
    rewrite_tensors(d.path(), |t| {
        t.insert("model.norm.weight".into(), candle_core::Tensor::ones(63, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap());
    });
    run_gen(d.path(), &[], &["model.norm.weight", "[63]", "[64]"]);
}

#[test]
fn no_weights_file() {
    let d = model_dir();
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    run_gen(d.path(), &[], &["model.safetensors", "--random-weights"]);
}

#[test]
fn unknown_dtype_measure_and_flags() {
    let d = model_dir();
    run_gen(d.path(), &["--dtype", "f8"], &["--dtype", "f8"]);
    run_gen(d.path(), &["--measure", "entropy"], &["--measure", "entropy"]);
    run_gen(d.path(), &["--measure", "softmax-diff", "--threshold", "1.5"], &["--threshold"]);
    run_gen(d.path(), &["--static-exit", "9"], &["--static-exit"]);
    run_gen(d.path(), &["--measure", "classifier"], &["classifier"]);
    run_gen(d.path(), &["--device", "tpu"], &["--device"]);
    assert_bad_input(&["generate", "--no-such-flag"], &["--no-such-flag"]);
    // export-onnx's cache form: an unknown one, and in place in bf16 (no kernel for it); both
    // refused before anything is written.
    let (m, out) = (d.path().display().to_string(), d.path().join("export").display().to_string());
    assert_bad_input(&["export-onnx", "--model", &m, "--out", &out, "--cache-form", "ring"], &["--cache-form", "ring"]);
    assert_bad_input(&["export-onnx", "--model", &m, "--out", &out, "--dtype", "bf16", "--cache-form", "in-place"], &["--cache-form", "bf16"]);
    assert!(!d.path().join("export").exists(), "a refused export wrote its folder");
}

#[test]
fn tokenizer_that_does_not_fit_the_model() {
    let d = model_dir();
    let cfg = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["vocab_size"] = 100.into();
    std::fs::write(d.path().join("config.json"), v.to_string()).unwrap();
    run_gen(d.path(), &[], &["tokenizer.json", "vocab_size = 100"]);
}

#[test]
fn prompt_longer_than_max_positions() {
    let d = model_dir();
    let long = "The Hawks beat the Foxes. ".repeat(60);
    let a = gen_args_with(d.path(), &long);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_bad_input(&a, &["max_position_embeddings"]);
}

#[test]
fn broken_rouge_line_is_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("pairs.jsonl");
    std::fs::write(&p, "{\"prediction\": \"a b\", \"reference\": \"a\"}\n{\"prediction\": 3}\n").unwrap();
    assert_bad_input(&["rouge", "--input", p.to_str().unwrap()], &["pairs.jsonl", "line 2"]);
    let (code, out, _) = {
        std::fs::write(&p, "{\"prediction\": \"a b\", \"reference\": \"a\"}\n").unwrap();
        exitbench(&["rouge", "--input", p.to_str().unwrap()])
    };
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!((v["rougeL"]["fmeasure"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
}

#[test]
fn generate_threshold_without_measure_is_refused_and_text_mode_says_what_ran() {
    let d = model_dir();
    run_gen(d.path(), &["--threshold", "0.5"], &["--threshold", "needs --measure"]);
    let a = gen_args(d.path());
    let (code, out, err) = exitbench(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.contains("stop: eos") || last.contains("stop: max-new-tokens"), "{last}");
    assert!(!last.contains("Eos") && !last.contains("MaxNewTokens") && !last.contains("1 tokens"), "{last}");
    assert!(last.contains("prefill") && (last.contains("ms/token") || last.contains("1 token,")), "{last}");
}

#[test]
fn help_shows_defaults_value_names_and_aliases() {
    let (code, out, _) = exitbench(&["run", "--help"]);
    assert_eq!(code, 0);
    for want in ["--samples <SAMPLES>", "[default: 40]", "[default: 64]", "[default: 0.95,0.9,0.8,0.7,0.6,0.5]", "[default: candle,ort]",
        "[alias: --measures]", "[alias: --threshold]", "softmax-diff", "saturation", "bf16", "[possible values: fixed, decaying]", "fp32"] {
        assert!(out.contains(want), "run --help lacks `{want}`");
    }
    let (code, out, _) = exitbench(&["generate", "--help"]);
    assert_eq!(code, 0);
    for want in ["[default: 64]", "[default: candle]", "[default: f32]", "softmax-max"] {
        assert!(out.contains(want), "generate --help lacks `{want}`");
    }
    let (code, out, _) = exitbench(&["calibrate", "--help"]);
    assert_eq!(code, 0);
    for want in ["--min-window", "--cpu-tdp-watts", "--backend", "--dtype"] {
        assert!(out.contains(want), "calibrate --help lacks `{want}` (the shared model and energy flags)");
    }
    // Aliases work, and an unknown name is exit 2 naming the flag and the choices.
    let d = model_dir();
    let mut a = gen_args(d.path());
    a.extend(["--dtype".into(), "fp32".into()]);
    assert_eq!(exitbench(&a.iter().map(String::as_str).collect::<Vec<_>>()).0, 0);
    run_gen(d.path(), &["--measure", "entropy"], &["--measure", "softmax-diff"]);
}

#[test]
fn random_model_writes_the_weights_random_weights_builds() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), serde_json::to_string(&tiny_config(3, 300)).unwrap()).unwrap();
    let cfg = d.path().join("config.json").display().to_string();
    let out = d.path().join("m").display().to_string();
    let (code, _, err) = exitbench(&["random-model", "--config", &cfg, "--seed", "9", "--out", &out]);
    assert_eq!(code, 0, "{err}");
    let gen = |extra: &[&str]| {
        let mut a = vec!["generate", "--prompt", "Kelmarsh Oval, héllo", "--max-new-tokens", "12", "--json"];
        a.extend_from_slice(extra);
        let (code, o, err) = exitbench(&a);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&o).unwrap();
        (v["token_ids"].clone(), v["prompt_tokens"].clone())
    };
    let files = gen(&["--model", &out]);
    let random = gen(&["--model", d.path().to_str().unwrap(), "--random-weights", "9"]);
    assert_eq!(files, random, "the written model is not the one --random-weights builds");
    assert_eq!(files.1, serde_json::json!("Kelmarsh Oval, héllo".len()), "the tokenizer is not one id per byte");
    // A non-empty --out and a vocabulary too small for bytes are refused.
    assert_bad_input(&["random-model", "--config", &cfg, "--seed", "9", "--out", &out], &["--out", "not empty"]);
    std::fs::write(d.path().join("config.json"), serde_json::to_string(&tiny_config(3, 200)).unwrap()).unwrap();
    let fresh = d.path().join("n").display().to_string();
    assert_bad_input(&["random-model", "--config", &cfg, "--seed", "9", "--out", &fresh], &["vocab_size 200", "256"]);
}

#[test]
fn bad_draft_stops_are_refused() {
    let d = model_dir();
    run_gen(d.path(), &["--draft-layer", "1", "--draft-stop", "entropy@0.5"], &["--draft-stop", "entropy"]);
    run_gen(d.path(), &["--draft-layer", "1", "--draft-stop", "softmax-max@1.5"], &["--draft-stop", "1.5"]);
    run_gen(d.path(), &["--draft-layer", "1", "--draft-stop", "softmax-max"], &["--draft-stop", "no @"]);
    run_gen(d.path(), &["--draft-layer", "1", "--draft-stop", "classifier@0.5"], &["classifier"]);
    let m = d.path().display().to_string();
    assert_bad_input(&["run", "--model", &m, "--samples", "1", "--quiet", "--draft-stop", "softmax-max@0.5"], &["--draft-stop", "--draft-layer"]);
    assert_bad_input(&["run", "--model", &m, "--samples", "1", "--quiet", "--draft-layer", "1", "--draft-stop", "softmax-max@x"], &["--draft-stop", "not a number"]);
}

#[test]
fn non_finite_numbers_are_refused_not_defaulted() {
    let d = model_dir();
    let m = d.path().display().to_string();
    for (flag, v) in [("--tau", "nan"), ("--cooldown", "inf"), ("--pue", "NaN")] {
        assert_bad_input(&["run", "--model", &m, "--samples", "1", "--quiet", flag, v], &[flag, "not a finite number"]);
    }
    let cfg = d.path().join("sweep.toml");
    std::fs::write(&cfg, "tau = nan\n").unwrap();
    assert_bad_input(&["run", "--model", &m, "--config", cfg.to_str().unwrap()], &["sweep.toml", "tau", "not a finite number"]);
}

/// A bad value in a TOML settings file is reported against the file and its line, not the flag.
#[test]
fn a_bad_toml_value_names_the_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("sweep.toml");
    std::fs::write(&cfg, "samples = 2\n\nthresholds = [2.0]\n").unwrap();
    let out = d.path().join("out");
    let (code, _, err) = exitbench(&["run", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sweep.toml, line 3: ") && err.contains("thresholds: 2 is outside [0, 1]"), "{err}");
    assert!(!out.exists());
    // Given as a flag, the flag is named.
    let (code, _, err) = exitbench(&["run", "--config", cfg.to_str().unwrap(), "--thresholds", "3", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--thresholds: 3 is outside"), "{err}");
}

/// `generate --json` prints one document: a single prompt's generation as itself; several
/// prompts (and batches) as `{"generations": [...], "batches": [...]}` that parses as one value.
#[test]
fn generate_json_is_one_document_for_several_prompts() {
    let d = model_dir();
    let m = d.path().display().to_string();
    for (batch, batches) in [("1", 0), ("2", 2)] {
        let (code, out, err) = exitbench(&["generate", "--model", &m, "--prompt", "a", "--prompt", "bc", "--prompt", "def", "--max-new-tokens", "3", "--batch-size", batch, "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not one JSON document ({e}): {out}"));
        assert_eq!(v["generations"].as_array().map(Vec::len), Some(3), "{v}");
        assert_eq!(v["batches"].as_array().map(Vec::len), Some(batches), "{v}");
        // Each generation carries its prompt's ids (what a peer decoder is fed).
        for g in v["generations"].as_array().unwrap() {
            let ids = g["prompt_token_ids"].as_array().expect("prompt_token_ids");
            assert!(!ids.is_empty() && Some(ids.len() as u64) == g["prompt_tokens"].as_u64(), "{g}");
        }
    }
}

/// `generate --draft-layer` with several prompts: at batch size 1 each prompt alone, above 1 in
/// speculative batches; either way each row's tokens are the same (full depth's), and a batch
/// reports each row's acceptance rate and its padding.
#[test]
fn generate_speculates_over_several_prompts_and_in_batches() {
    let d = model_dir();
    let m = d.path().display().to_string();
    let run = |batch: &str| -> serde_json::Value {
        let (code, out, err) = exitbench(&["generate", "--model", &m, "--prompt", "a", "--prompt", "bc", "--prompt", "def", "--max-new-tokens", "12", "--draft-layer", "1", "--draft-tokens", "4", "--batch-size", batch, "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not one JSON document ({e}): {out}"))
    };
    let (alone, batched) = (run("1"), run("3"));
    let ids = |v: &serde_json::Value| v["generations"].as_array().unwrap().iter().map(|g| g["token_ids"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&alone).len(), 3, "{alone}");
    assert_eq!(ids(&alone), ids(&batched));
    let prompts = |v: &serde_json::Value| v["generations"].as_array().unwrap().iter().map(|g| g["prompt_token_ids"].clone()).collect::<Vec<_>>();
    assert_eq!(prompts(&alone), prompts(&batched));
    assert!(prompts(&batched).iter().all(|p| p.as_array().is_some_and(|a| !a.is_empty())), "{batched}");
    assert_eq!(alone["batches"].as_array().map(Vec::len), Some(0), "{alone}");
    let b = &batched["batches"][0];
    assert_eq!((b["batch"].as_u64(), b["row_acceptance_rates"].as_array().map(Vec::len)), (Some(3), Some(3)), "{b}");
    assert!(b["padding_waste"].as_f64().is_some_and(|w| w >= 0.0) && b["passes"].as_u64() > Some(0), "{b}");
}

/// `generate --ignore-eos` goes on past an end-of-sequence token to --max-new-tokens (a fixed
/// length, as llama-bench times); without it the embedded model stops at its EOS at once here.
#[test]
fn generate_ignore_eos_decodes_the_whole_length() {
    let m = format!("{}/models/cricket-6l", env!("CARGO_MANIFEST_DIR"));
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut a = vec!["generate", "--model", &m, "--prompt", "The Hawks beat the Foxes by 47 runs at Kelmarsh Oval.", "--max-new-tokens", "8", "--json"];
        a.extend(extra);
        let (code, out, err) = exitbench(&a);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let (stops, goes_on) = (run(&[]), run(&["--ignore-eos"]));
    assert_eq!((stops["stop"].as_str(), stops["token_ids"].as_array().map(Vec::len)), (Some("eos"), Some(1)), "{stops}");
    assert_eq!((goes_on["stop"].as_str(), goes_on["token_ids"].as_array().map(Vec::len)), (Some("max-new-tokens"), Some(8)), "{goes_on}");
    assert_eq!(goes_on["token_ids"][0], stops["token_ids"][0]);
}

/// `generate --threads N` decodes on exactly N computing OS threads (the caller among them), as
/// measured inside the pool and reported in `--json`.
#[test]
fn generate_threads_means_that_many_computing_threads() {
    let d = model_dir();
    let m = d.path().display().to_string();
    for n in [1u64, 2] {
        let (code, out, err) = exitbench(&["generate", "--model", &m, "--prompt", "abc", "--max-new-tokens", "3", "--threads", &n.to_string(), "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["threads"].as_u64(), Some(n), "{v}");
        assert_eq!(v["compute_threads"]["os_threads"].as_u64(), Some(n), "{v}");
        assert_eq!(v["compute_threads"]["caller_computes"].as_bool(), Some(true), "{v}");
    }
}
