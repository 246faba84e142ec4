//! Bad input that used to crash, allocate from an unchecked size, run a different model without a
//! word, or leave files behind: each is one clear error, exit code 2, and nothing written.

use exitbench::testkit::{tiny_config, write_tiny_model};
use std::path::{Path, PathBuf};
use std::process::Command;

fn exitbench_in(cwd: Option<&Path>, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_exitbench"));
    c.args(args);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn exitbench(args: &[&str]) -> (i32, String, String) {
    exitbench_in(None, &[], args)
}

/// Asserts exit code 2, no panic, and an error mentioning every `needle`.
fn assert_bad(res: (i32, String, String), what: &str, needles: &[&str]) {
    let (code, _, err) = res;
    assert_eq!(code, 2, "{what}: exit {code}, stderr: {err}");
    assert!(!err.contains("panicked"), "panic for {what}: {err}");
    assert!(err.starts_with("Error:") || err.contains("error:"), "{what}: {err}");
    for n in needles {
        assert!(err.contains(n), "error for {what} does not mention `{n}`: {err}");
    }
}

fn model_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_tiny_model(d.path(), &tiny_config(2, 300), 1).unwrap();
    d
}

fn set_config(dir: &Path, key: &str, v: serde_json::Value) {
    let p = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c[key] = v;
    std::fs::write(&p, c.to_string()).unwrap();
}

fn gen(dir: &Path, extra: &[&str]) -> (i32, String, String) {
    let m = dir.display().to_string();
    let mut a = vec!["generate", "--model", m.as_str(), "--prompt", "The Hawks", "--max-new-tokens", "3"];
    a.extend_from_slice(extra);
    exitbench(&a)
}

fn dataset(dir: &Path, prompt: &str) -> PathBuf {
    let p = dir.join("data.jsonl");
    let line = serde_json::json!({"id": "a", "prompt": prompt, "reference": "The Hawks won."});
    std::fs::write(&p, format!("{line}\n")).unwrap();
    p
}

/// A small sweep of `model` into `out` (candle on the CPU unless `extra` says otherwise).
fn sweep(model: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    sweep_env(model, out, &[], extra)
}

fn sweep_env(model: &Path, out: &Path, env: &[(&str, &str)], extra: &[&str]) -> (i32, String, String) {
    let data = dataset(model, "The Hawks beat the Foxes.");
    let (m, o, d) = (model.display().to_string(), out.display().to_string(), data.display().to_string());
    let mut a = vec!["run", "--quiet", "--model", &m, "--out", &o, "--dataset", &d, "--samples", "1", "--max-new-tokens", "2", "--warmup", "0",
        "--measure", "softmax-diff", "--thresholds", "0.5", "--no-oracle", "--min-window", "0", "--idle-seconds", "0",
        "--powercap-root", "/nonexistent/powercap"];
    if !extra.contains(&"--backend") {
        a.extend(["--backend", "candle"]);
    }
    a.extend_from_slice(extra);
    exitbench_in(None, env, &a)
}

/// Rewrites bytes of `model.safetensors`'s header: `from` → `to` (same length) in the entry of `tensor`.
fn patch_header(dir: &Path, tensor: &str, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let p = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let at = header.find(&format!("\"{tensor}\"")).unwrap_or_else(|| panic!("{tensor} not in header"));
    let rel = header[at..].find(from).unwrap() + at;
    bytes[8 + rel..8 + rel + from.len()].copy_from_slice(to.as_bytes());
    std::fs::write(&p, bytes).unwrap();
}

#[test]
fn absurd_config_sizes_are_refused_before_anything_is_allocated() {
    let d = model_dir();
    let out = d.path().join("out");
    set_config(d.path(), "num_hidden_layers", 1_000_000_000u64.into());
    assert_bad(sweep(d.path(), &out, &[]), "1e9 layers (run)", &["config.json", "num_hidden_layers", "1000000000"]);
    assert!(!out.exists(), "a run that cannot start writes nothing");
    set_config(d.path(), "num_hidden_layers", 2.into());
    set_config(d.path(), "max_position_embeddings", (1u64 << 62).into());
    assert_bad(gen(d.path(), &[]), "2^62 positions", &["config.json", "max_position_embeddings", "4611686018427387904"]);
}

#[test]
fn thread_counts_and_sample_counts_are_bounded() {
    let d = model_dir();
    assert_bad(gen(d.path(), &["--threads", "100000"]), "generate --threads 100000", &["--threads", "100000", "1024"]);
    let out = d.path().join("out");
    assert_bad(sweep(d.path(), &out, &["--threads", "100000"]), "run --threads 100000", &["--threads", "100000"]);
    assert!(!out.exists());
    assert_bad(exitbench(&["data", "synth", "--n", "100000000000"]), "synth --n 1e11", &["--n", "100000000000"]);
    assert_bad(exitbench(&["data", "synth", "--n", "0"]), "synth --n 0", &["--n", "0"]);
    assert_bad(gen(d.path(), &["--max-new-tokens", "0"]), "generate --max-new-tokens 0", &["--max-new-tokens"]);
}

#[test]
fn random_weights_too_large_for_memory_are_refused_naming_the_sizes() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = serde_json::to_value(tiny_config(4096, 300)).unwrap();
    cfg["hidden_size"] = 65536.into();
    cfg["intermediate_size"] = 262144.into();
    cfg["num_attention_heads"] = 512.into();
    cfg["num_key_value_heads"] = 512.into();
    cfg["vocab_size"] = (1u64 << 20).into();
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let c = d.path().join("config.json").display().to_string();
    let out = d.path().join("m");
    let o = out.display().to_string();
    assert_bad(exitbench(&["random-model", "--config", &c, "--seed", "1", "--out", &o]), "random-model", &["config.json", "hidden_size = 65536", "GB"]);
    assert!(!out.exists());
    let m = d.path().display().to_string();
    assert_bad(exitbench(&["generate", "--model", &m, "--random-weights", "1", "--prompt", "a"]), "--random-weights", &["num_hidden_layers = 4096"]);
}

/// Damages the model in `p` as `what` says.
fn damage(what: &str, p: &Path) {
    match what {
        "missing tokenizer" => std::fs::remove_file(p.join("tokenizer.json")).unwrap(),
        "empty tokenizer" => std::fs::write(p.join("tokenizer.json"), "").unwrap(),
        "junk tokenizer" => std::fs::write(p.join("tokenizer.json"), "{junk").unwrap(),
        "tokenizer larger than the vocabulary" => set_config(p, "vocab_size", 100.into()),
        "junk classifier" => std::fs::write(p.join("exit_classifier.safetensors"), b"\x10\0\0\0\0\0\0\0{junk}").unwrap(),
        "truncated classifier" => {
            write_classifier(p, true, 64);
            let f = p.join("exit_classifier.safetensors");
            let b = std::fs::read(&f).unwrap();
            std::fs::write(&f, &b[..b.len() - 7]).unwrap();
        }
        "classifier without a bias" => write_classifier(p, false, 64),
        "classifier of the wrong width" => write_classifier(p, true, 32),
        "prompt beyond max_position_embeddings" => {
            dataset(p, &"The Hawks beat the Foxes. ".repeat(60));
        }
        other => panic!("no damage `{other}`"),
    }
}

#[test]
fn a_run_that_cannot_start_writes_nothing() {
    let cases: &[(&str, &[&str])] = &[
        ("missing tokenizer", &["tokenizer.json"]),
        ("empty tokenizer", &["tokenizer.json"]),
        ("junk tokenizer", &["tokenizer.json"]),
        ("tokenizer larger than the vocabulary", &["tokenizer.json", "vocab_size = 100"]),
        ("junk classifier", &["exit_classifier.safetensors"]),
        ("truncated classifier", &["exit_classifier.safetensors"]),
        ("classifier without a bias", &["exit_classifier.safetensors", "exit_classifier.layers.0.bias", "missing"]),
        ("classifier of the wrong width", &["exit_classifier.safetensors", "[1, 32]", "[1, 64]"]),
        ("prompt beyond max_position_embeddings", &["max_position_embeddings"]),
    ];
    for &(what, needles) in cases {
        let d = model_dir();
        let out = d.path().join("out");
        damage(what, d.path());
        let res = if what.starts_with("prompt") {
            let (m, o, data) = (d.path().display().to_string(), out.display().to_string(), d.path().join("data.jsonl").display().to_string());
            exitbench(&["run", "--quiet", "--model", &m, "--out", &o, "--dataset", &data, "--samples", "1", "--backend", "candle", "--min-window", "0", "--idle-seconds", "0"])
        } else {
            sweep(d.path(), &out, &[])
        };
        assert_bad(res, what, needles);
        assert!(!out.exists(), "{what}: the refused run wrote {}", out.display());
    }
}

fn write_classifier(dir: &Path, bias: bool, width: usize) {
    use candle_core::{DType, Device, Tensor};
    let mut t = std::collections::HashMap::new();
    for i in 0..2 {
        t.insert(format!("exit_classifier.layers.{i}.weight"), Tensor::zeros((1, width), DType::F32, &Device::Cpu).unwrap());
        if bias {
            t.insert(format!("exit_classifier.layers.{i}.bias"), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
        }
    }
    candle_core::safetensors::save(&t, dir.join("exit_classifier.safetensors")).unwrap();
}

#[test]
fn a_directory_with_a_plan_but_no_results_is_not_results() {
    let d = model_dir();
    let out = d.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("plan.json"), "{\"plans\": []}").unwrap();
    std::fs::write(out.join("results.jsonl"), "").unwrap();
    let (code, _, err) = sweep(d.path(), &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("--resume"), "{err}");
}

#[test]
fn weights_that_would_make_another_model_are_refused() {
    // An integer tensor where a float one belongs.
    let d = model_dir();
    patch_header(d.path(), "model.norm.weight", "\"F32\"", "\"I32\"");
    assert_bad(gen(d.path(), &[]), "I32 norm", &["model.safetensors", "model.norm.weight", "I32"]);
    // Fewer layers in the config than in the weights: not a silently shallower model.
    let d = model_dir();
    set_config(d.path(), "num_hidden_layers", 1.into());
    assert_bad(gen(d.path(), &[]), "1 of 2 layers (generate)", &["num_hidden_layers = 1", "model.layers.1.*"]);
    let out = d.path().join("out");
    assert_bad(sweep(d.path(), &out, &[]), "1 of 2 layers (run)", &["model.layers.1.*"]);
    // A tensor named twice in the header.
    let d = model_dir();
    patch_header(d.path(), "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight");
    assert_bad(gen(d.path(), &[]), "duplicate tensor", &["model.safetensors", "model.layers.0.mlp.up_proj.weight", "listed twice"]);
    // A norm of NaNs.
    let d = model_dir();
    let p = d.path().join("model.safetensors");
    let mut t = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
    t.insert("model.norm.weight".into(), candle_core::Tensor::new(&[f32::NAN; 64], &candle_core::Device::Cpu).unwrap());
    candle_core::safetensors::save(&t, &p).unwrap();
    assert_bad(gen(d.path(), &[]), "NaN norm", &["model.norm.weight", "non-finite"]);
    // One infinity in a large matrix (not scanned at load): the first forward pass names the layer.
    let d = model_dir();
    let p = d.path().join("model.safetensors");
    let mut t = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
    let w = &t["model.layers.1.mlp.down_proj.weight"];
    let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter_mut().for_each(|x| *x = f32::INFINITY);
    let bad = candle_core::Tensor::from_vec(v, w.shape(), &candle_core::Device::Cpu).unwrap();
    t.insert("model.layers.1.mlp.down_proj.weight".into(), bad);
    candle_core::safetensors::save(&t, &p).unwrap();
    assert_bad(gen(d.path(), &[]), "infinite down_proj", &["model.layers.1.*", "not finite"]);
    let out = d.path().join("out");
    assert_bad(sweep(d.path(), &out, &[]), "infinite down_proj (run)", &["model.layers.1.*"]);
}

#[test]
fn a_shard_outside_the_model_directory_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let m = root.path().join("m");
    write_tiny_model(&m, &tiny_config(2, 300), 1).unwrap();
    std::fs::create_dir_all(root.path().join("other")).unwrap();
    std::fs::rename(m.join("model.safetensors"), root.path().join("other/model.safetensors")).unwrap();
    let map: serde_json::Map<String, serde_json::Value> =
        candle_core::safetensors::load(root.path().join("other/model.safetensors"), &candle_core::Device::Cpu).unwrap().keys().map(|k| (k.clone(), "../other/model.safetensors".into())).collect();
    std::fs::write(m.join("model.safetensors.index.json"), serde_json::json!({"weight_map": map}).to_string()).unwrap();
    assert_bad(gen(&m, &[]), "../ shard", &["model.safetensors.index.json", "../other/model.safetensors", "outside the model directory"]);
}

#[test]
fn nothing_runnable_is_exit_2_before_anything_is_written() {
    let d = model_dir();
    let out = d.path().join("out");
    for dev in ["cuda:99", "cuda", "gpu"] {
        let res = sweep(d.path(), &out, &["--device", dev]);
        if cfg!(feature = "cuda") {
            return;
        }
        assert_bad(res, dev, &["nothing this run asks for can run here", "CUDA"]);
        assert!(!out.exists(), "{dev}: wrote {}", out.display());
    }
    let res = sweep_env(d.path(), &out, &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")], &["--backend", "ort"]);
    assert_bad(res, "ort without a library", &["ORT_DYLIB_PATH"]);
    assert!(!out.exists());
}

#[test]
fn unsupported_rope_scaling_is_named() {
    let d = model_dir();
    for kind in ["yarn", "dynamic"] {
        set_config(d.path(), "rope_scaling", serde_json::json!({"rope_type": kind, "factor": 4.0}));
        assert_bad(gen(d.path(), &[]), kind, &["config.json", &format!("unsupported rope_scaling type '{kind}'")]);
    }
}

#[test]
fn out_and_model_flags_naming_the_wrong_thing() {
    let d = model_dir();
    let cwd = tempfile::tempdir().unwrap();
    let m = d.path().display().to_string();
    let base = ["run", "--quiet", "--model", m.as_str(), "--samples", "1", "--backend", "candle", "--min-window", "0", "--idle-seconds", "0"];
    let mut a = base.to_vec();
    a.extend(["--out", ""]);
    assert_bad(exitbench_in(Some(cwd.path()), &[], &a), "--out \"\"", &["--out", "empty"]);
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "--out \"\" wrote into the working directory");
    let file = cwd.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let f = file.display().to_string();
    let mut a = base.to_vec();
    a.extend(["--out", &f]);
    assert_bad(exitbench(&a), "--out FILE", &["--out", "a-file", "is a file"]);
    let cfg = d.path().join("config.json").display().to_string();
    assert_bad(exitbench(&["generate", "--model", &cfg, "--prompt", "a"]), "--model FILE", &["config.json", "is a file, not a model directory"]);
}

/// A results record of the CI baseline with `edit` applied, written as `dir/results.jsonl`.
fn record_file(dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ci-baseline/results.jsonl");
    let line = std::fs::read_to_string(base).unwrap().lines().next().unwrap().to_string();
    let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
    edit(&mut v);
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("results.jsonl");
    std::fs::write(&p, format!("{v}\n")).unwrap();
    p
}

#[test]
fn result_records_that_cannot_be_read_faithfully_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let big = record_file(&d.path().join("big"), |v| v["exit_histogram"] = vec![1u64; 2_000_000].into());
    let b = big.display().to_string();
    assert_bad(exitbench(&["report", &b, "--out", d.path().join("r1").to_str().unwrap()]), "huge histogram", &["results.jsonl", "line 1", "exit_histogram"]);
    let short = record_file(&d.path().join("short"), |v| v["exit_histogram"] = serde_json::json!([]));
    assert_bad(exitbench(&["report", short.to_str().unwrap(), "--out", d.path().join("r2").to_str().unwrap()]), "empty histogram", &["exit_histogram has 0 entries"]);
    let newer = record_file(&d.path().join("newer"), |v| v["schema_version"] = 99.into());
    let n = newer.display().to_string();
    assert_bad(exitbench(&["report", &n, "--out", d.path().join("r3").to_str().unwrap()]), "schema 99 (report)", &["schema_version 99", "1 to 3"]);
    assert_bad(exitbench(&["check", "--baseline", &n, "--current", &n]), "schema 99 (check)", &["schema_version 99"]);
    // A round log is not results; an empty results file is named.
    let run = d.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("rounds.jsonl"), "{}\n").unwrap();
    let rounds = run.join("rounds.jsonl").display().to_string();
    assert_bad(exitbench(&["merge", &rounds, "--out", d.path().join("m").to_str().unwrap()]), "merge rounds.jsonl", &["rounds.jsonl", "round log"]);
    let empty = d.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    assert_bad(exitbench(&["report", empty.to_str().unwrap(), "--out", d.path().join("r4").to_str().unwrap()]), "empty results", &["empty.jsonl", "no result records"]);
}

#[test]
fn merge_writes_its_results_whole() {
    let d = tempfile::tempdir().unwrap();
    let a = record_file(&d.path().join("a"), |_| {});
    let out = d.path().join("merged");
    let (code, _, err) = exitbench(&["merge", a.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines().count(), 1);
    assert!(!out.join("results.jsonl.tmp").exists());
    let cwd = tempfile::tempdir().unwrap();
    assert_bad(exitbench_in(Some(cwd.path()), &[], &["merge", a.to_str().unwrap(), "--out", ""]), "merge --out \"\"", &["--out"]);
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "merge --out \"\" wrote into the working directory");
}
