//! Sweeps end to end through the binary on a tiny random-weight model: golden reports, SIGKILL
//! and --resume, shards merged, the CI gate, and bad settings.

use exitbench::decode::batch::BatchPolicy;
use exitbench::results::{Baseline, CellStatus};
use exitbench::testkit::{tiny_config, write_tiny_model};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary, its ONNX export cache in `target/tmp/onnx-cache`.
fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_exitbench"));
    c.env("EXITBENCH_ONNX_CACHE", std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx-cache"));
    c
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn model() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_tiny_model(d.path(), &tiny_config(4, 300), 21).unwrap();
    d
}

/// A tiny model, a temporary directory and an `n`-line dataset in it.
fn fixture(n: usize) -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let data = dataset(d.path(), n);
    (model(), d, data)
}

fn dataset(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("data.jsonl");
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"id": format!("s{i}"), "prompt": format!("The Hawks beat the Foxes by {i} runs at Kelmarsh Oval."),
                "reference": "The Hawks beat the Foxes."}).to_string()
        })
        .collect();
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

fn sweep_args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    sweep_args_with(model, data, out, &[])
}

/// The small sweep's flags; `over` replaces a flag's value (or adds the flag).
fn sweep_args_with<'a>(model: &'a str, data: &'a str, out: &'a str, over: &[(&'a str, &'a str)]) -> Vec<&'a str> {
    let mut flags: Vec<(&str, &str)> = vec![("--model", model), ("--dataset", data), ("--out", out), ("--measure", "softmax-diff,saturation"),
        ("--thresholds", "0.9,0.3"), ("--static-exit", "2"), ("--samples", "4"), ("--max-new-tokens", "8"), ("--warmup", "0"),
        ("--min-window", "0"), ("--idle-seconds", "0"), ("--powercap-root", "/nonexistent/powercap"), ("--backend", "candle"),
        // Batch size 1 alone unless a test asks (the default grid adds batch 8).
        ("--batch-size", "1")];
    for (k, v) in over {
        match flags.iter_mut().find(|(f, _)| f == k) {
            Some(slot) => slot.1 = v,
            None => flags.push((k, v)),
        }
    }
    let mut a = vec!["run", "--oracle", "--quiet"];
    for (k, v) in flags {
        a.extend([k, v]);
    }
    a
}

/// Masks the columns that depend on timing, the machine or temp paths.
fn mask_csv(text: &str) -> String {
    let mut rd = csv::Reader::from_reader(text.as_bytes());
    let headers = rd.headers().unwrap().clone();
    let masked = ["model", "dataset", "machine", "speedup_measured", "speedup_measured_err", "ms_per_token", "ms_per_token_std", "tokens_per_s",
        "prefill_ms", "duration_s", "layers_s", "exit_checks_s", "propagation_s", "peak_mem_mb", "energy_j", "avg_watts", "j_per_token",
        "energy_net_j", "idle_w", "prefill_j", "decode_j_per_token", "wh_per_1k_queries", "gco2e", "energy_gpu_j", "energy_cpu_j", "energy_dram_j",
        "energy_warnings", "runtime_version", "export_s", "session_s", "achieved_gb_s", "mem_bandwidth_gb_s", "mem_bandwidth_all_gb_s",
        "speedup_measured_lo", "speedup_measured_hi", "prefill_j_per_query", "layer_us", "huge_page_weights_mib"];
    let mut out = headers.iter().collect::<Vec<_>>().join(",") + "\n";
    for rec in rd.records() {
        let rec = rec.unwrap();
        let fields: Vec<String> = rec.iter().zip(headers.iter()).map(|(v, h)| if masked.contains(&h) { "*".into() } else { v.to_string() }).collect();
        out += &(fields.join(",") + "\n");
    }
    out
}

/// Masks the measured-speedup column, headings with paths and the machine line.
fn mask_md(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("## ") || l.starts_with("### ") || l.starts_with("Machine ") || l.starts_with("**Memory system.**") || (l.starts_with("- ") && l.contains("measured ÷ theoretical")) {
                "*".to_string()
            } else if l.contains(" vs candle ") {
                // The cross-runtime table: the ms/token and J/token ratios depend on timing; token
                // agreement, identical samples, D and ROUGE do not.
                let mut cells: Vec<String> = l.split('|').map(str::to_string).collect();
                cells[3] = " * ".into();
                cells[4] = " * ".into();
                cells.join("|")
            } else if l.starts_with("| ") && !l.starts_with("| setting") && !l.starts_with("| group") {
                let mut cells: Vec<String> = l.split('|').map(str::to_string).collect();
                // Timing- and energy-dependent columns: measured speedup, J/token, decode J/token, Wh, gCO2e.
                for i in [5, 7, 8, 9, 10] {
                    if cells.len() > i + 1 {
                        cells[i] = " * ".into();
                    }
                }
                cells.join("|")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn golden(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden").join(name);
    if std::env::var("UPDATE_GOLDEN").is_ok() || !path.exists() && std::env::var("CI").is_err() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing golden file {}", path.display()));
    assert_eq!(got, want, "{name} differs from the golden file (UPDATE_GOLDEN=1 rewrites it)");
}

#[test]
fn golden_csv_and_markdown() {
    let (m, d, data) = fixture(4);
    let out = d.path().join("out");
    // Both runtimes: the golden deterministic columns (tokens, layers, ROUGE, D) of the ORT rows
    // equal candle's.
    let mut args = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap(), &[("--backend", "candle,ort")]);
    args.retain(|a| *a != "--quiet");
    let (code, stdout, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("faster than full depth") || stdout.contains("slower than full depth"), "{stdout}");
    // No counter (no RAPL tree, no NVIDIA driver): the estimate is labelled end to end.
    let csv_text = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let mut rd = csv::Reader::from_reader(csv_text.as_bytes());
    let col = rd.headers().unwrap().iter().position(|h| h == "energy_source").unwrap();
    let jcol = rd.headers().unwrap().iter().position(|h| h == "j_per_token").unwrap();
    for rec in rd.records() {
        let rec = rec.unwrap();
        assert_eq!(&rec[col], "estimate");
        assert!(rec[jcol].parse::<f64>().unwrap() > 0.0);
    }
    assert!(std::fs::read_to_string(out.join("summary.md")).unwrap().contains("Energy is an estimate"));
    assert!(std::fs::read_to_string(out.join("report.html")).unwrap().contains("modelled from CPU time"));
    let rec: serde_json::Value = serde_json::from_str(std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(rec["energy"]["estimate"], true);
    // The harness accounts for its own time in every cell and reports it at the end.
    assert!(rec["generate_s"].as_f64().unwrap() > 0.0 && rec["bookkeeping_s"].as_f64().unwrap() >= 0.0, "{rec}");
    assert!(err.contains("harness bookkeeping:"), "{err}");
    golden("small.csv", &mask_csv(&csv_text));
    golden("small.md", &mask_md(&std::fs::read_to_string(out.join("summary.md")).unwrap()));
}

/// Records written before average layers counted decoded tokens only (schema 1) read back as this
/// build computes them: rewrite this run's records the old way and compare.
#[test]
fn schema_1_records_are_upgraded_exactly() {
    let (m, d, data) = fixture(4);
    let out = d.path().join("out");
    let (code, _, err) = run(&sweep_args(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap()));
    assert_eq!(code, 0, "{err}");
    let now = exitbench::results::store::read(&out).unwrap();
    let old: Vec<String> = now
        .iter()
        .map(|r| {
            let mut v = r.clone();
            v.schema_version = 1;
            let depth = if v.key.baseline == Baseline::Static { v.key.static_layer.unwrap() } else { v.num_layers };
            v.exit_histogram[depth - 1] += v.outputs.iter().filter(|o| o.tokens > 0).count() as u64;
            let n: u64 = v.exit_histogram.iter().sum();
            v.avg_layers = v.exit_histogram.iter().enumerate().map(|(i, &c)| (i + 1) as f64 * c as f64).sum::<f64>() / n as f64;
            for o in &mut v.outputs {
                o.avg_layers = (o.avg_layers * (o.tokens - 1) as f64 + depth as f64) / o.tokens as f64;
            }
            serde_json::to_string(&v).unwrap()
        })
        .collect();
    let v1 = d.path().join("v1.jsonl");
    std::fs::write(&v1, old.join("\n") + "\n").unwrap();
    let upgraded = exitbench::results::store::read(&v1).unwrap();
    assert_eq!(upgraded.len(), now.len());
    for (u, r) in upgraded.iter().zip(&now) {
        assert_eq!(u.schema_version, r.schema_version);
        assert_eq!(u.exit_histogram, r.exit_histogram, "{}", r.key.label());
        assert!((u.avg_layers - r.avg_layers).abs() < 1e-12, "{}: {} vs {}", r.key.label(), u.avg_layers, r.avg_layers);
        for (a, b) in u.outputs.iter().zip(&r.outputs) {
            assert!((a.avg_layers - b.avg_layers).abs() < 1e-12);
        }
    }
    assert!(now.iter().any(|r| r.key.baseline == Baseline::Static) && now.iter().any(|r| r.avg_layers < r.num_layers as f64 - 0.5));
    // Version 2 kept the prefill's joules per query in `prefill_j`.
    let v2: Vec<String> = now
        .iter()
        .map(|r| {
            let mut v = r.clone();
            v.schema_version = 2;
            v.energy.prefill_j = v.energy.prefill_j_per_query.take();
            v.energy.prefill_energy_method = None;
            serde_json::to_string(&v).unwrap()
        })
        .collect();
    let v2p = d.path().join("v2.jsonl");
    std::fs::write(&v2p, v2.join("\n") + "\n").unwrap();
    for (u, r) in exitbench::results::store::read(&v2p).unwrap().iter().zip(&now) {
        assert_eq!((u.schema_version, u.energy.prefill_j_per_query), (3, r.energy.prefill_j_per_query));
        assert!((u.energy.prefill_j.unwrap() - r.energy.prefill_j.unwrap()).abs() < 1e-9, "{}", r.key.label());
        assert_eq!(u.energy.prefill_energy_method.as_deref(), Some("time-share"));
    }
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap_or_default().lines().map(str::to_string).collect()
}

fn cell_ids(p: &Path) -> Vec<String> {
    lines(p).iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["cell_id"].as_str().unwrap().to_string()).collect()
}

/// (cell, round) of every complete line of a rounds file.
fn round_keys(p: &Path) -> Vec<(String, u64)> {
    lines(p)
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| (v["cell_id"].as_str().unwrap().to_string(), v["round"].as_u64().unwrap()))
        .collect()
}

#[test]
fn sigkill_mid_round_then_resume_counts_every_round_once() {
    let (m, d, data) = fixture(12);
    let out = d.path().join("out");
    // 12 samples in rounds of 5 (3 blocks) × 3 repetitions: 9 rounds of 7 cells.
    let args = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap(),
        &[("--samples", "12"), ("--max-new-tokens", "24"), ("--repetitions", "3"), ("--round-samples", "5")]);
    let (results, rounds) = (out.join("results.jsonl"), out.join("rounds.jsonl"));
    let mut child = bin().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    // Kill inside a round: some cells of the third round are in, others not.
    while round_keys(&rounds).len() < 2 * 7 + 3 {
        assert!(start.elapsed() < Duration::from_secs(120), "no rounds appeared");
        assert!(child.try_wait().unwrap().is_none(), "the sweep finished before it could be killed; make it longer");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = round_keys(&rounds);
    assert!(before.len() >= 17 && before.len() < 63, "killed after {} cell-rounds", before.len());
    assert!(lines(&results).is_empty(), "records are written when a group's rounds are all in");
    let complete_rounds = (0..9).take_while(|r| before.iter().filter(|k| k.1 == *r).count() == 7).count() as u64;
    // Without --resume the directory is refused rather than overwritten.
    let (code, _, err) = run(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--resume"), "{err}");
    let mut resume = args.clone();
    resume.push("--resume");
    let (code, _, err) = run(&resume);
    assert_eq!(code, 0, "{err}");
    let after = round_keys(&rounds);
    assert_eq!(&after[..before.len()], &before[..], "earlier round records changed");
    // Finished rounds were not run again; the round in flight was run again whole; none is missing.
    for r in 0..9u64 {
        let n = after.iter().filter(|k| k.1 == r).count();
        let want = if r < complete_rounds { 7 } else { 7 + before.iter().filter(|k| k.1 == r).count() };
        assert_eq!(n, want, "round {r}: {n} lines (complete before the kill: {complete_rounds})");
    }
    let ids = cell_ids(&results);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(ids.len(), unique.len(), "a cell appears twice");
    assert_eq!(ids.len(), 7, "full + static + oracle + 2 measures × 2 thresholds");
    for l in lines(&results) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!((v["rounds"].as_u64(), v["samples"].as_u64(), v["ms_per_token"]["n"].as_u64()), (Some(9), Some(12), Some(3)), "{}", v["cell_id"]);
    }
}

#[test]
fn shards_merged_equal_the_unsharded_sweep() {
    let (m, d, data) = fixture(3);
    let mp = m.path().to_str().unwrap().to_string();
    let dp = data.to_str().unwrap().to_string();
    let sweep = |out: &Path, shard: Option<&str>| {
        let o = out.to_str().unwrap().to_string();
        let mut over = vec![("--samples", "3"), ("--threads", "1,2,3")];
        if let Some(s) = shard {
            over.push(("--shard", s));
        }
        let a = sweep_args_with(&mp, &dp, &o, &over);
        let (code, _, err) = run(&a);
        assert_eq!(code, 0, "{err}");
    };
    let whole = d.path().join("whole");
    sweep(&whole, None);
    let mut parts = Vec::new();
    for s in ["1/3", "2/3", "3/3"] {
        let p = d.path().join(format!("shard{}", &s[..1]));
        sweep(&p, Some(s));
        assert!(!lines(&p.join("results.jsonl")).is_empty(), "shard {s} is empty");
        parts.push(p);
    }
    let merged = d.path().join("merged");
    let mut a = vec!["merge".to_string()];
    a.extend(parts.iter().map(|p| p.display().to_string()));
    a.extend(["--out".to_string(), merged.display().to_string()]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, _, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    let mut w = cell_ids(&whole.join("results.jsonl"));
    let mut g = cell_ids(&merged.join("results.jsonl"));
    w.sort();
    g.sort();
    assert_eq!(w, g);
    assert_eq!(mask_csv(&sorted_csv(&whole)), mask_csv(&sorted_csv(&merged)));
}

fn sorted_csv(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let mut l: Vec<&str> = text.lines().collect();
    let head = l.remove(0);
    l.sort();
    format!("{head}\n{}\n", l.join("\n"))
}

#[test]
fn check_passes_identical_and_fails_a_doctored_regression() {
    let (m, d, data) = fixture(10);
    let out = d.path().join("base");
    let a = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap(), &[("--samples", "10")]);
    let (code, _, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    let base = out.to_str().unwrap();
    let summary = d.path().join("summary.md");
    let gh = d.path().join("gh.json");
    let out_cmd = bin()
        .args(["check", "--baseline", base, "--current", base, "--export-github-benchmark", gh.to_str().unwrap()])
        .env("GITHUB_STEP_SUMMARY", &summary)
        .output()
        .unwrap();
    assert_eq!(out_cmd.status.code(), Some(0), "{}", String::from_utf8_lossy(&out_cmd.stderr));
    assert!(std::fs::read_to_string(&summary).unwrap().contains("exitbench check"));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&gh).unwrap()).unwrap();
    assert!(v.as_array().unwrap().iter().all(|x| (x["unit"] == "ms/token" || x["unit"] == "J/token") && x["value"].as_f64().is_some()));
    // Doctor one deterministic figure: the gate must fail.
    let text = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let fresh = || -> Vec<serde_json::Value> { text.lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    let mut recs = fresh();
    recs[1]["tokens"] = (recs[1]["tokens"].as_u64().unwrap() + 1).into();
    let doctored = d.path().join("doctored.jsonl");
    write_jsonl(&doctored, &recs);
    // The same cells run with the model and dataset given by other paths (another machine, another
    // working directory) match the baseline: the content hashes identify them.
    let mut moved = fresh();
    for r in &mut moved {
        for field in ["model", "dataset"] {
            let name = Path::new(r["key"][field].as_str().unwrap()).file_name().unwrap().to_str().unwrap().to_string();
            r["key"][field] = format!("/elsewhere/./{name}/").into();
        }
    }
    let moved_path = d.path().join("moved.jsonl");
    write_jsonl(&moved_path, &moved);
    let (code, stdout, _) = run(&["check", "--baseline", base, "--current", moved_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
    assert!(!stdout.contains("issing"), "{stdout}");
    let (code, stdout, _) = run(&["check", "--baseline", base, "--current", doctored.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("Deterministic figures: 1 of") && stdout.contains("| tokens |"), "{stdout}");
    // A 2× slowdown of one cell's decode: its per-sample speedups halve. Against one baseline run
    // this is information only (a run's intervals cover no between-run spread); against three
    // runs of this machine (their speedups 3% apart) it regresses.
    let mut slow = fresh();
    let cell = slow.iter().position(|r| r["speedup"]["ratios"].as_array().is_some_and(|a| a.len() >= 8)).unwrap();
    let scale = |v: &mut serde_json::Value, f: f64| {
        for k in ["measured", "lo", "hi"] {
            v[k] = (v[k].as_f64().unwrap() * f).into();
        }
        for x in v["ratios"].as_array_mut().unwrap() {
            *x = (x.as_f64().unwrap() * f).into();
        }
    };
    scale(&mut slow[cell]["speedup"], 0.5);
    let slow_path = d.path().join("slow.jsonl");
    write_jsonl(&slow_path, &slow);
    let (code, stdout, _) = run(&["check", "--baseline", base, "--current", slow_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("Timings are shown, not gated: the baseline holds one run on this machine"), "{stdout}");
    let mut runs = vec![base.to_string()];
    for (i, f) in [1.03, 0.97].into_iter().enumerate() {
        let mut r = fresh();
        for rec in r.iter_mut().filter(|x| x["speedup"].is_object()) {
            scale(&mut rec["speedup"], f);
            rec["finished_at"] = (rec["finished_at"].as_u64().unwrap() - 1000 * (i as u64 + 1)).into();
        }
        let p = d.path().join(format!("run{i}.jsonl"));
        write_jsonl(&p, &r);
        runs.push(p.to_str().unwrap().to_string());
    }
    let with_runs = |current: &str, extra: &[&str]| {
        let mut args = vec!["check", "--baseline"];
        args.extend(runs.iter().map(String::as_str));
        args.extend(["--current", current]);
        args.extend(extra);
        run(&args)
    };
    let (code, stdout, err) = with_runs(slow_path.to_str().unwrap(), &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("Paired speedups are gated: the baseline holds 3 runs on this machine"), "{stdout}");
    assert!(stdout.contains("| paired speedup |") && stdout.contains("regressed"), "{stdout}");
    assert!(err.contains("1 figure(s) regressed"), "{err}");
    // One sample of ten twice as slow: the median does not move beyond noise.
    let mut one = fresh();
    let r0 = one[cell]["speedup"]["ratios"][0].as_f64().unwrap();
    one[cell]["speedup"]["ratios"][0] = (r0 / 2.0).into();
    let one_path = d.path().join("one.jsonl");
    write_jsonl(&one_path, &one);
    let (code, stdout, _) = with_runs(one_path.to_str().unwrap(), &[]);
    assert_eq!(code, 0, "{stdout}");
    // A history directory that `check --record` appends to serves as several runs: the unchanged
    // run is recorded (the gate passed), the slow one is not.
    let hist = d.path().join("history");
    for p in &runs {
        let (code, _, err) = run(&["check", "--record", hist.to_str().unwrap(), "--current", p]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, stdout, err) = run(&["check", "--baseline", hist.to_str().unwrap(), "--current", slow_path.to_str().unwrap(), "--record", hist.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(err.contains("not recorded"), "{err}");
    let (code, _, err) = run(&["check", "--baseline", hist.to_str().unwrap(), "--current", base, "--record", hist.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(hist.join("0004/results.jsonl").is_file() && !hist.join("0005").exists(), "{err}");
    // Different grids are explained: fewer cells (a threshold left out) and other sample counts.
    let fewer: Vec<serde_json::Value> = fresh().into_iter().filter(|r| r["key"]["threshold"] != serde_json::json!(0.3)).collect();
    let fewer_path = d.path().join("fewer.jsonl");
    write_jsonl(&fewer_path, &fewer);
    let (code, stdout, _) = run(&["check", "--baseline", base, "--current", fewer_path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("**Missing** from the current run (2 cells)") && stdout.contains("threshold: only the baseline has 0.3"), "{stdout}");
    let (code, stdout, _) = run(&["check", "--baseline", fewer_path.to_str().unwrap(), "--current", base]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("New in the current run (2 cells"), "{stdout}");
    // Absolute timings are information; with --absolute and several runs of this machine they gate.
    let ms = |f: f64, at: u64| -> Vec<serde_json::Value> {
        let mut r = fresh();
        for rec in r.iter_mut() {
            rec["ms_per_token"] = serde_json::json!({"n": 3, "mean": f, "std": 0.01, "median": f, "min": f, "max": f, "ci_lo": f, "ci_hi": f});
            rec["finished_at"] = at.into();
        }
        r
    };
    let (b1, b2, c) = (d.path().join("b1.jsonl"), d.path().join("b2.jsonl"), d.path().join("c.jsonl"));
    write_jsonl(&b1, &ms(1.0, 1));
    write_jsonl(&b2, &ms(1.04, 2));
    write_jsonl(&c, &ms(2.0, 3));
    let (b1, b2, c) = (b1.to_str().unwrap(), b2.to_str().unwrap(), c.to_str().unwrap());
    let (code, stdout, _) = run(&["check", "--absolute", "--baseline", b1, "--current", c]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("one baseline run on this machine covers no between-run spread"), "{stdout}");
    let (code, stdout, _) = run(&["check", "--baseline", b1, b2, "--current", c]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("information (gated only with --absolute)"), "{stdout}");
    let (code, stdout, _) = run(&["check", "--absolute", "--baseline", b1, b2, "--current", c]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("| decode ms/token | 1.0400 | 2.0000 | +92.31% [") && stdout.contains("regressed"), "{stdout}");
    // Another machine's timings are never gated, however many runs.
    let mut other = ms(2.0, 3);
    for r in other.iter_mut() {
        r["key"]["machine"] = "elsewhere".into();
    }
    let o = d.path().join("other.jsonl");
    write_jsonl(&o, &other);
    let (code, stdout, _) = run(&["check", "--absolute", "--baseline", b1, b2, "--current", o.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("≠ current machine elsewhere") && stdout.contains("this run on machine elsewhere"), "{stdout}");
}

fn write_jsonl(path: &Path, records: &[serde_json::Value]) {
    std::fs::write(path, records.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n") + "\n").unwrap();
}

#[test]
fn bad_settings_name_the_field_or_line() {
    let (m, d, data) = fixture(2);
    let (mp, dp) = (m.path().to_str().unwrap(), data.to_str().unwrap());
    let out = d.path().join("o");
    let o = out.to_str().unwrap();
    let bad = |extra: &[&str], needles: &[&str]| {
        let mut a = vec!["run", "--model", mp, "--out", o, "--quiet", "--min-window", "0", "--idle-seconds", "0"];
        if !extra.contains(&"--dataset") {
            a.extend(["--dataset", dp]);
        }
        a.extend(extra);
        let (code, _, err) = run(&a);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        for n in needles {
            assert!(err.contains(n), "{extra:?}: `{n}` not in {err}");
        }
        assert!(!out.join("results.jsonl").exists(), "nothing may run before validation");
    };
    bad(&["--measure", "entropy"], &["--measure", "entropy"]);
    bad(&["--thresholds", "0.5,1.5"], &["--thresholds", "1.5"]);
    bad(&["--measure", "softmax-diff", "--thresholds", ""], &["--thresholds"]);
    bad(&["--min-exit-layer", "9"], &["--min-exit-layer"]);
    bad(&["--shard", "4/3"], &["--shard"]);
    let broken = d.path().join("broken.jsonl");
    std::fs::write(&broken, "{\"id\":\"a\",\"prompt\":\"x\",\"reference\":\"y\"}\n{\"id\": \"b\", \"prompt\": 5}\n").unwrap();
    bad(&["--dataset", broken.to_str().unwrap()], &["broken.jsonl", "line 2"]);
    let toml = d.path().join("sweep.toml");
    std::fs::write(&toml, "samples = 2\nthreshold = [0.5]\n").unwrap();
    bad(&["--config", toml.to_str().unwrap()], &["sweep.toml", "threshold", "line 2"]);
}

#[test]
fn generated_text_is_escaped_in_report_html() {
    let (m, d, data) = fixture(2);
    let out = d.path().join("o");
    let a = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap(), &[("--samples", "2")]);
    let (code, _, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Pareto frontier") && html.contains("Speedup vs threshold"));
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("@import"), "the page must be self-contained");
    // Doctor the outputs with markup, then report again.
    let text = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let evil = "<script>alert(1)</script>";
    let recs: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["outputs"][0]["text"] = evil.into();
            if v["outputs"][0]["trace"].is_array() {
                v["outputs"][0]["trace"][0]["text"] = evil.into();
            }
            v["key"]["model"] = format!("model{evil}").into();
            v.to_string()
        })
        .collect();
    let doctored = d.path().join("evil.jsonl");
    std::fs::write(&doctored, recs.join("\n") + "\n").unwrap();
    let rep = d.path().join("rep");
    let (code, _, err) = run(&["report", doctored.to_str().unwrap(), "--out", rep.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(rep.join("report.html")).unwrap();
    assert!(!html.contains("<script"), "unescaped markup in report.html");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
}

#[test]
fn repeated_values_empty_shards_torn_lines_and_resume_without_out() {
    let (m, d, data) = fixture(2);
    let (mp, dp) = (m.path().to_str().unwrap(), data.to_str().unwrap());
    // A value given twice runs once: full, static@2, oracle and 2 measures × 2 thresholds.
    let out = d.path().join("out");
    let a = sweep_args_with(mp, dp, out.to_str().unwrap(), &[("--samples", "2"), ("--thresholds", "0.9,0.9,0.3"), ("--threads", "1,1")]);
    let (code, _, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    let ids = cell_ids(&out.join("results.jsonl"));
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (7, 7), "{ids:?}");
    // A shard with no group (one group, two shards) writes an empty results file, and merges.
    let empty = d.path().join("empty");
    let mut a = sweep_args_with(mp, dp, empty.to_str().unwrap(), &[("--samples", "2"), ("--shard", "2/2")]);
    a.retain(|x| *x != "--quiet");
    let (code, _, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("has no configuration group"), "{err}");
    assert_eq!(std::fs::read_to_string(empty.join("results.jsonl")).unwrap(), "");
    let merged = d.path().join("merged");
    let (code, _, err) = run(&["merge", out.to_str().unwrap(), empty.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(cell_ids(&merged.join("results.jsonl")).len(), 7);
    // Nothing to compare against: exit 2, not a silent pass.
    let (code, _, err) = run(&["check", "--baseline", empty.to_str().unwrap(), "--current", out.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no finished"), "{err}");
    // A torn last line cut inside a multi-byte character is skipped by report, with a warning.
    let mut f = std::fs::OpenOptions::new().append(true).open(out.join("results.jsonl")).unwrap();
    std::io::Write::write_all(&mut f, b"{\"schema_version\":1,\"cell_id\":\"\xc3").unwrap();
    drop(f);
    let (code, _, err) = run(&["report", out.to_str().unwrap(), "--out", d.path().join("rep").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("torn last line"), "{err}");
    // --resume without --out would start a fresh directory: refused.
    let (code, _, err) = run(&["run", "--resume", "--quiet", "--model", mp, "--dataset", dp]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--resume") && err.contains("--out"), "{err}");
}

#[test]
fn merged_machines_are_compared_side_by_side() {
    let (m, d, data) = fixture(2);
    let a_dir = d.path().join("a");
    let args = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), a_dir.to_str().unwrap(), &[("--samples", "2"), ("--measure", "softmax-diff"), ("--thresholds", "0.9")]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    // The same results as if from a second machine (another fingerprint, CPU and GPU).
    let b_dir = d.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    let other: Vec<String> = lines(&a_dir.join("results.jsonl"))
        .iter()
        .map(|l| {
            let mut r: serde_json::Value = serde_json::from_str(l).unwrap();
            let old = r["key"]["machine"].as_str().unwrap().to_string();
            r["key"]["machine"] = "othermachine01".into();
            r["cell_id"] = r["cell_id"].as_str().unwrap().replace(&old, "othermachine01").into();
            r["hardware"]["machine_id"] = "othermachine01".into();
            r["hardware"]["cpu_model"] = "Example CPU | 96 cores".into();
            r.to_string()
        })
        .collect();
    std::fs::write(b_dir.join("results.jsonl"), other.join("\n") + "\n").unwrap();
    let merged = d.path().join("merged");
    let (code, _, err) = run(&["merge", a_dir.to_str().unwrap(), b_dir.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let md = std::fs::read_to_string(merged.join("summary.md")).unwrap();
    let html = std::fs::read_to_string(merged.join("report.html")).unwrap();
    assert!(md.contains("## Hardware") && md.contains("`othermachine01`") && md.contains("Example CPU \\| 96 cores"), "{md}");
    assert!(html.contains("<h2>Hardware</h2>") && html.contains("<code>othermachine01</code>"), "missing hardware table in report.html");
    // Each machine's full-depth speed sits in its row.
    let row = md.lines().find(|l| l.contains("othermachine01")).unwrap();
    assert!(row.contains("candle cpu f32 1t:"), "{row}");
}

#[test]
fn resume_refuses_another_plan_extend_adds_cells_and_resume_counts_skips() {
    let (m, d, data) = fixture(2);
    let (mp, dp) = (m.path().to_str().unwrap(), data.to_str().unwrap());
    let out = d.path().join("out");
    let o = out.to_str().unwrap();
    let base = sweep_args_with(mp, dp, o, &[("--samples", "2"), ("--thresholds", "0.9")]);
    let (code, _, err) = run(&base);
    assert_eq!(code, 0, "{err}");
    assert!(out.join("plan.json").is_file());
    let before = cell_ids(&out.join("results.jsonl"));
    // Other --samples: refused, naming what differs, and nothing appended.
    let mut other = sweep_args_with(mp, dp, o, &[("--samples", "1"), ("--thresholds", "0.9")]);
    other.push("--resume");
    let (code, _, err) = run(&other);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("samples: 2 → 1") && err.contains("--extend"), "{err}");
    assert_eq!(cell_ids(&out.join("results.jsonl")), before);
    // The same plan resumes, saying how many cells it skipped.
    let mut same = base.clone();
    same.retain(|a| *a != "--quiet");
    same.push("--resume");
    let (code, _, err) = run(&same);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("{n} of this plan's {n} cells were already done and skipped", n = before.len())), "{err}");
    // --extend adds the new plan's cells (another threshold) beside the old ones.
    let mut ext = sweep_args_with(mp, dp, o, &[("--samples", "2"), ("--thresholds", "0.3")]);
    ext.push("--extend");
    let (code, _, err) = run(&ext);
    assert_eq!(code, 0, "{err}");
    let after = cell_ids(&out.join("results.jsonl"));
    assert_eq!(after.len(), before.len() + 2, "two measures at the new threshold: {after:?}");
    let plans: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
    assert_eq!(plans["plans"].as_array().unwrap().len(), 2);
}

#[test]
fn a_damaged_model_is_refused_before_anything_is_written() {
    let (m, d, data) = fixture(2);
    let w = m.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() - 100]).unwrap();
    // Classifiers whose fingerprint no longer matches: their warning must not come first.
    exitbench::testkit::write_random_classifiers(m.path(), &tiny_config(4, 300), 3).unwrap();
    std::fs::write(m.path().join("exit_classifier.json"), r#"{"decoder_fingerprint": "0000000000000000"}"#).unwrap();
    let out = d.path().join("out");
    let args = sweep_args(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap());
    let (code, _, err) = run(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("Error:") && err.contains("model.safetensors") && !err.contains("warning"), "{err}");
    assert!(!out.exists(), "a run that cannot start wrote {:?}", std::fs::read_dir(&out).map(|r| r.count()));
    // A tensor of the wrong shape is named from the headers alone, too.
    write_tiny_model(m.path(), &tiny_config(4, 300), 21).unwrap();
    let mut cfg = tiny_config(4, 300);
    cfg.intermediate_size = 96;
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(m.path().join("config.json")).unwrap()).unwrap();
    v["intermediate_size"] = cfg.intermediate_size.into();
    std::fs::write(m.path().join("config.json"), v.to_string()).unwrap();
    let (code, _, err) = run(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("gate_proj.weight") && err.contains("[96, 64]"), "{err}");
    assert!(!out.exists());
}

#[test]
fn quiet_prints_errors_only_and_summaries_are_labelled_by_group() {
    let (m, d, data) = fixture(2);
    let (mp, dp) = (m.path().to_str().unwrap(), data.to_str().unwrap());
    let out = d.path().join("q");
    let a = sweep_args_with(mp, dp, out.to_str().unwrap(), &[("--samples", "50")]);
    let (code, stdout, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.is_empty() && err.is_empty(), "-q printed: {stdout}{err}");
    let out2 = d.path().join("loud");
    let mut b = sweep_args_with(mp, dp, out2.to_str().unwrap(), &[("--samples", "50"), ("--dtype", "f32,bf16")]);
    b.retain(|x| *x != "--quiet");
    let (code, stdout, err) = run(&b);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--samples 50:") && err.contains("has only 2 examples; running 2"), "{err}");
    assert!(stdout.contains("candle · cpu · f32 · 1 thread · ") && stdout.contains("candle · cpu · bf16 · 1 thread · "), "{stdout}");
    let md = std::fs::read_to_string(out2.join("summary.md")).unwrap();
    assert!(md.contains("· 1 thread ·") && !md.contains("1 threads"), "{md}");
}

#[test]
fn report_defaults_its_out_and_writes_results_that_check_reads() {
    let (m, d, data) = fixture(2);
    let out = d.path().join("out");
    let (code, _, err) = run(&sweep_args(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap()));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["report", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let rep = out.join("report");
    for f in ["results.jsonl", "results.csv", "summary.md", "report.html"] {
        assert!(rep.join(f).is_file(), "report/ lacks {f}");
    }
    assert_eq!(cell_ids(&rep.join("results.jsonl")), cell_ids(&out.join("results.jsonl")));
    let (code, stdout, err) = run(&["check", "--baseline", out.to_str().unwrap(), "--current", rep.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{err}");
    // Several inputs need a named --out.
    let (code, _, err) = run(&["report", out.to_str().unwrap(), rep.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--out"), "{err}");
}

/// Ctrl-C (SIGINT) and SIGTERM: the cell in flight is dropped, reports cover what is done, the
/// exact resume command is printed, exit 130; that command finishes the sweep with every cell once.
#[test]
fn sigint_and_sigterm_stop_cleanly_and_print_the_resume_command() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let (m, d, data) = fixture(12);
        let out = d.path().join("out");
        let mut args = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap(),
            &[("--samples", "12"), ("--max-new-tokens", "24"), ("--repetitions", "3")]);
        args.retain(|a| *a != "--quiet");
        let results = out.join("results.jsonl");
        let child = bin().args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let start = Instant::now();
        while round_keys(&out.join("rounds.jsonl")).len() < 10 {
            assert!(start.elapsed() < Duration::from_secs(120), "no rounds appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, sig) };
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(130), "signal {sig}: {err}");
        let done = lines(&results);
        assert!(done.iter().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "a torn record");
        assert!(err.contains(&format!("interrupted: {} of 7 cells done", done.len())) && err.contains("round(s) of unfinished cells are kept in rounds.jsonl"), "{err}");
        assert!(out.join("summary.md").is_file() && out.join("report.html").is_file());
        let cmd = err.lines().find_map(|l| l.strip_prefix("continue with: exitbench ")).unwrap_or_else(|| panic!("no resume command: {err}"));
        let resume: Vec<&str> = cmd.split(' ').collect();
        assert!(resume.contains(&"--resume"), "{cmd}");
        let (code, _, err) = run(&resume);
        assert_eq!(code, 0, "{err}");
        let ids = cell_ids(&results);
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!((ids.len(), unique.len()), (7, 7), "{ids:?}");
    }
}

/// report.html: time-split bars are the table's ms/token (one source, also when --min-window
/// repeats samples), and the oracle is in the J/token vs ROUGE-L scatter; on the committed sample.
#[test]
fn html_time_split_matches_the_table_and_the_scatter_shows_the_oracle() {
    use exitbench::report::Exporter;
    let records = exitbench::results::store::read(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reports/default")).unwrap();
    let rows = exitbench::report::derive(&records);
    let ok: Vec<&exitbench::report::ReportRow> = rows.iter().filter(|r| records[r.record].status == CellStatus::Ok).collect();
    for (r, (_, parts)) in ok.iter().zip(exitbench::report::html::time_split_bars(&ok, &records)) {
        let table = records[r.record].ms_per_token.median;
        assert!((parts.iter().sum::<f64>() - table).abs() < 1e-9 * table.max(1.0), "{}: bar {} vs table {table}", r.label, parts.iter().sum::<f64>());
    }
    let html = exitbench::report::html::HtmlExporter.render(&rows, &records).unwrap();
    assert!(html.contains("oracle (all layers run)"), "the oracle is missing from the scatter");
    assert!(html.contains("Across runtimes and precisions"));
}

#[test]
fn without_out_a_run_gets_a_readable_sortable_directory() {
    let (m, d, data) = fixture(1);
    let mut a = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), "unused", &[("--samples", "1")]);
    let i = a.iter().position(|x| *x == "--out").unwrap();
    a.drain(i..i + 2);
    let out = bin().args(&a).current_dir(d.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let names: Vec<String> = std::fs::read_dir(d.path().join("results")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // run-YYYY-MM-DD_HH-MM-SS (local time)
    let n = &names[0];
    let digits: String = n.chars().filter(|c| c.is_ascii_digit()).collect();
    assert!(n.starts_with("run-20") && n.len() == "run-2026-12-01_10-15-44".len() && digits.len() == 14, "{n}");
    assert_eq!(&n[8..9], "-");
    assert_eq!(&n[14..15], "_");
}

/// Runs the small grid of full depth and static@1 on a tiny model whose every layer and exit
/// head costs 300 µs, twice that after `slow_from` layer calls; returns static@1's measured
/// speedup and the layer calls made.
fn drifting_speedup(order: &str, slow_from: u64, dir: &Path) -> (f64, u64) {
    use exitbench::backend::{candle::CandleBackend, DeviceKind};
    use exitbench::sweep::{plan::RawSettings, runner, Plan};
    let m = dir.join("model");
    if !m.exists() {
        write_tiny_model(&m, &tiny_config(4, 300), 21).unwrap();
    }
    let data = dataset(dir, 20);
    let out = dir.join(format!("out-{order}-{slow_from}"));
    let over = RawSettings {
        model: Some(vec![m.display().to_string()]),
        dataset: Some(data.display().to_string()),
        out: Some(out.display().to_string()),
        backend: Some(vec![exitbench::backend::BackendKind::Candle]),
        measure: Some(vec![]),
        oracle: Some(false),
        static_exit: Some(vec![1]),
        samples: Some(20),
        max_new_tokens: Some(12),
        warmup: Some(0),
        round_samples: Some(1),
        order: Some(serde_json::from_value(serde_json::json!(order)).unwrap()),
        random_weights: None,
        batch_size: Some(vec![1]),
        ..Default::default()
    };
    let mut settings = RawSettings::defaults().overridden_by(over);
    settings.energy.min_window = Some(0.0);
    settings.energy.idle_seconds = Some(0.0);
    settings.energy.meter.powercap_root = Some("/nonexistent/powercap".into());
    let plan = Plan::from_settings(settings).unwrap();
    let files = exitbench::model::ModelFiles::open(&m, None).unwrap();
    let inner = CandleBackend::open(&files, DeviceKind::Cpu, exitbench::model::Precision::F32, 1).unwrap();
    let mut b = exitbench::testkit::Drifting { inner, cost: Duration::from_micros(300), slow_from, factor: 2.0, calls: 0 };
    let recs = runner::run_on(&plan, &mut b, &mut runner::Silent).unwrap();
    let st = recs.iter().find(|r| r.key.baseline == Baseline::Static).unwrap();
    (st.speedup.as_ref().unwrap().measured, b.calls)
}

#[test]
fn interleaved_rounds_keep_the_paired_speedup_when_the_machine_slows_down_mid_run() {
    let d = tempfile::tempdir().unwrap();
    // Without drift: the reference speedup (4 layers + head ÷ 1 layer + head ≈ 2.5 from the
    // spins alone; the model's own work and other tests on the machine move it somewhat).
    let (steady, calls) = drifting_speedup("interleaved", u64::MAX, d.path());
    assert!((1.5..5.0).contains(&steady), "{steady}");
    // Everything twice as slow for the last stretch of the run: from the point where, in
    // sequential order, full depth has run (48 of every 60 layer calls are full depth's).
    let (interleaved, _) = drifting_speedup("interleaved", calls * 4 / 5, d.path());
    let (sequential, _) = drifting_speedup("sequential", calls * 4 / 5, d.path());
    eprintln!("steady {steady:.3}, drifting: interleaved {interleaved:.3}, sequential {sequential:.3}");
    assert!((interleaved / steady - 1.0).abs() < 0.15, "interleaved {interleaved} vs steady {steady}");
    // Sequentially, full depth ran in the fast half and static@1 in the slow one.
    assert!(sequential / steady < 0.75, "sequential {sequential} vs steady {steady}");
}

/// The committed small baseline (`scripts/make-ci-baseline.sh`) holds against a fresh run of the
/// same grid on an unchanged checkout: the CI gate does not fail on day one.
#[test]
fn ci_baseline_holds_on_an_unchanged_checkout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = root.join("tests/fixtures/ci-baseline");
    let flags = std::fs::read_to_string(base.join("FLAGS")).unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let mut args: Vec<&str> = vec!["run"];
    args.extend(flags.split_whitespace());
    args.extend(["--out", out.to_str().unwrap(), "--quiet"]);
    let o = bin().current_dir(root).args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let (code, stdout, err) = run(&["check", "--baseline", base.to_str().unwrap(), "--current", out.to_str().unwrap()]);
    eprintln!("{stdout}");
    assert_eq!(code, 0, "{stdout}\n{err}\n(remake the baseline with scripts/make-ci-baseline.sh if a cell key, the weights or a default changed on purpose)");
    assert!(stdout.contains("Deterministic figures: all") && !stdout.contains("issing"), "{stdout}");
}

/// `--threads N` means N OS threads run candle's kernels, the decode loop's thread among them, in
/// every group of one process (rayon's global pool would keep the first group's count), and the
/// record says what was measured.
#[test]
fn each_group_computes_on_exactly_its_thread_count() {
    let (m, d, data) = fixture(2);
    let out = d.path().join("t");
    let a = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap(), &[("--samples", "2"), ("--threads", "1,2"), ("--measure", "softmax-diff"), ("--thresholds", "0.9"), ("--static-exit", "2")]);
    let (code, _, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut seen = std::collections::BTreeSet::new();
    for r in &recs {
        let threads = r["key"]["threads"].as_u64().unwrap();
        let c = &r["runtime"]["compute"];
        assert_eq!(c["os_threads"].as_u64(), Some(threads), "{}", r["runtime"]);
        assert_eq!(c["caller_computes"], true, "{}", r["runtime"]);
        seen.insert(threads);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 2]);
    // Pinned: recorded per thread; a CPU list that names no CPU is refused before anything runs.
    let out2 = d.path().join("p");
    let a = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out2.to_str().unwrap(), &[("--samples", "2"), ("--threads", "2"), ("--pin-cpus", "0"), ("--measure", "softmax-diff"), ("--thresholds", "0.9"), ("--static-exit", "2")]);
    let (code, _, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    let first: serde_json::Value = serde_json::from_str(std::fs::read_to_string(out2.join("results.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["runtime"]["compute"]["pinned"], serde_json::json!([0, 0]));
    let out3 = d.path().join("bad");
    let a = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out3.to_str().unwrap(), &[("--pin-cpus", "x")]);
    let (code, _, err) = run(&a);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--pin-cpus") && !out3.exists(), "{err}");
}

/// Speculative cells run in a sweep beside the early-exit cells (both backends, both cache
/// modes): their tokens are full depth's, sample for sample; they record an acceptance rate and
/// tokens per verification; the report lists them; cells of older kinds keep their ids (no
/// draft fields in their keys).
#[test]
fn speculative_cells_in_a_sweep_keep_full_depths_tokens() {
    let (m, d, data) = fixture(3);
    let out = d.path().join("spec");
    let args = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap(), &[
        ("--backend", "candle,ort"), ("--max-new-tokens", "16"), ("--draft-layer", "1,3"), ("--draft-tokens", "1,4"), ("--draft-cache", "shared,separate"),
    ]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let recs = exitbench::results::store::read(&out.join("results.jsonl")).unwrap();
    let mut speculative = 0;
    for backend in ["candle", "ort"] {
        let of = |b: Baseline| recs.iter().filter(move |r| r.key.backend.name() == backend && r.key.baseline == b);
        let full = of(Baseline::Full).next().expect("full depth");
        assert!(full.key.draft_layer.is_none() && !serde_json::to_string(&full.key).unwrap().contains("draft"));
        for r in of(Baseline::Speculative) {
            speculative += 1;
            assert_eq!(r.status, CellStatus::Ok, "{:?}", r.reason);
            for (o, f) in r.outputs.iter().zip(&full.outputs) {
                assert_eq!((&o.id, &o.token_ids), (&f.id, &f.token_ids), "{}", r.key.label());
            }
            let s = r.speculation.as_ref().expect("speculation figures");
            let rate = s.acceptance_rate.expect("drafted");
            assert!((0.0..=1.0).contains(&rate) && s.tokens_per_verify.unwrap() >= 1.0, "{s:?}");
            assert!(r.key.id().contains("|speculative|") && r.key.label().starts_with("speculative E"));
        }
    }
    assert_eq!(speculative, 2 * 2 * 2 * 2);
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("speculative E1 k4 (separate cache)"), "{summary}");
    for cache in ["shared", "separate"] {
        assert_eq!(summary.matches(&format!("**Self-speculative decoding ({cache} cache)**")).count(), 2, "one table per group: {summary}");
    }
    assert!(summary.contains("| E \\ k | 1 | 4 |") && summary.lines().any(|l| l.starts_with("| 3 | ") && l.contains("%)")), "{summary}");
    // A draft layer the model does not have is bad input, named.
    let bad_out = d.path().join("bad");
    let bad = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), bad_out.to_str().unwrap(), &[("--draft-layer", "4")]);
    let (code, _, err) = run(&bad);
    assert!(code == 2 && err.contains("--draft-layer"), "{code} {err}");
    assert!(!d.path().join("bad").exists());
}

/// Speculative cells at a batch size above 1 (rows of 3 samples, a last batch of 2), both
/// backends and cache modes: every sample's tokens are full depth's; the record has each row's
/// acceptance rate, the padding a padded verification would need, bytes per token from the
/// passes' counted reads, and a speedup paired with full depth at the same batch size; the
/// summary's batch section lists them and their breakdown line gives acceptance per row.
#[test]
fn speculative_cells_run_batched_in_a_sweep() {
    let (m, d, data) = fixture(5);
    let out = d.path().join("spec-batch");
    let args = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap(), &[
        ("--backend", "candle,ort"), ("--samples", "5"), ("--max-new-tokens", "16"), ("--draft-layer", "2"), ("--draft-tokens", "4"), ("--draft-cache", "shared,separate"),
        ("--batch-size", "1,3"), ("--batch-settings", "softmax-diff@0.9"), ("--batch-policy", "compact"),
    ]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let recs = exitbench::results::store::read(&out.join("results.jsonl")).unwrap();
    let mut batched = 0;
    for backend in ["candle", "ort"] {
        let of = |b: Baseline, size: usize| recs.iter().filter(move |r| r.key.backend.name() == backend && r.key.baseline == b && r.key.batch() == size);
        let full = of(Baseline::Full, 1).next().expect("full depth");
        for r in of(Baseline::Speculative, 3) {
            batched += 1;
            let what = r.key.label();
            assert_eq!(r.status, CellStatus::Ok, "{what}: {:?}", r.reason);
            assert_eq!(r.outputs.len(), 5);
            for (o, f) in r.outputs.iter().zip(&full.outputs) {
                assert_eq!((&o.id, &o.token_ids), (&f.id, &f.token_ids), "{what}");
            }
            let s = r.speculation.as_ref().expect("speculation figures");
            assert_eq!(s.sample_acceptance.len(), 5, "{what}: one acceptance rate per row: {s:?}");
            let b = r.batch.as_ref().expect("batch figures");
            assert!(b.padding_waste.is_some_and(|w| w >= 0.0) && b.steps > 0 && b.mean_rows > 1.0, "{what}: {b:?}");
            assert!(r.bytes_per_token.is_some_and(|x| x > 0.0), "{what}");
            assert!(r.speedup.is_some(), "{what}: paired with full depth at batch 3");
            assert!(b.layer_reads_per_token.is_some_and(|x| x > 0.0), "{what}: {b:?}");
            // Every decoded token ran all layers at some position; drafts and rejections add.
            assert!(b.layer_positions_per_token.is_some_and(|x| x >= r.num_layers as f64), "{what}: {b:?}");
        }
        // Full depth at batch 3 reads each layer once per step for all its rows.
        let full3 = of(Baseline::Full, 3).next().expect("full depth at batch 3");
        let b = full3.batch.as_ref().unwrap();
        let per_row = if b.shares_weight_reads { full3.num_layers as f64 / b.mean_rows } else { full3.num_layers as f64 };
        assert!((b.layer_reads_per_token.unwrap() - per_row).abs() < 1e-9, "{backend}: {b:?}");
        assert_eq!(b.layer_positions_per_token, Some(full3.num_layers as f64), "{backend}: one position per row through every layer");
    }
    assert_eq!(batched, 2 * 2);
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("acceptance per row") && summary.contains("a padded verification would run") && summary.contains("layer-positions of arithmetic"), "{summary}");
    let section = &summary[summary.find("## Batched decoding").expect("batch section")..];
    assert!(section.contains("| speculative E2 k4 | 3 |"), "{section}");
    // report.html's batch charts draw a line per speculative setting too.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let charts = &html[html.find("<h2>Batched decoding</h2>").expect("batch charts")..];
    // The charts only, not the answers listed after them.
    let charts = &charts[..charts.find("<ul>").unwrap_or(charts.len())];
    assert!(charts.contains("speculative E2 k4 at B = 3"), "no speculative point in the batch charts");
}

/// Batched cells in a sweep: keys carry the batch size (and the policy for early exit) only at
/// B > 1, so batch-1 ids are unchanged; per-row and compact cells emit each sample's batch-1
/// tokens and exit layers (rows of 3 samples, a last batch of 2); batch-min exits no earlier;
/// each record has its batch figures; the summary has the batch section; a SIGKILL mid-run and
/// --resume leave every cell once; records without batch fields read as batch size 1.
#[test]
fn batched_cells_in_a_sweep() {
    let (m, d, data) = fixture(5);
    let out = d.path().join("batch");
    let args = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap(), &[
        ("--backend", "candle,ort"), ("--max-new-tokens", "12"), ("--samples", "5"), ("--batch-size", "1,3"), ("--thresholds", "0.3"),
        ("--repetitions", "2"), ("--batch-settings", "all"),
    ]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let recs = exitbench::results::store::read(&out.join("results.jsonl")).unwrap();
    for backend in ["candle", "ort"] {
        let mine: Vec<_> = recs.iter().filter(|r| r.key.backend.name() == backend).collect();
        let one = |r: &exitbench::results::CellRecord| mine.iter().find(|o| o.key.batch_size.is_none() && o.key.setting_id() == exitbench::results::CellKey { batch_size: None, batch_policy: None, ..r.key.clone() }.setting_id()).copied();
        let mut batched = 0;
        for r in mine.iter().filter(|r| r.key.batch_size == Some(3)) {
            batched += 1;
            assert_eq!(r.status, CellStatus::Ok, "{:?}", r.reason);
            assert_eq!(r.batch_size, 3);
            let b = r.batch.as_ref().expect("batch figures");
            // Both read each weight once per step (ONNX Runtime on the CPU in f32: its in-place
            // graphs' batch axis).
            assert!(b.shares_weight_reads, "{}", r.key.label());
            assert!(b.steps > 0 && b.mean_rows > 1.0 && b.mean_rows <= 3.0 && b.latency_ms_per_token > 0.0, "{b:?}");
            assert!(r.key.id().ends_with(&match r.key.batch_policy { Some(p) => format!("|3|{p}"), None => "|3".into() }), "{}", r.key.id());
            let alone = one(r).unwrap_or_else(|| panic!("{}: no batch-1 cell", r.key.label()));
            let policy = r.key.batch_policy;
            for (o, a) in r.outputs.iter().zip(&alone.outputs) {
                let exits = |t: &Option<Vec<exitbench::results::record::TraceToken>>| t.as_ref().map(|t| t.iter().map(|x| x.exit_layer).collect::<Vec<_>>());
                match policy {
                    Some(BatchPolicy::BatchMin) => {
                        // The batch waits for its least confident row: no token exits earlier.
                        if o.token_ids == a.token_ids {
                            assert!(o.avg_layers >= a.avg_layers - 1e-9, "{}: {} < {}", r.key.label(), o.avg_layers, a.avg_layers);
                        }
                    }
                    _ => {
                        assert_eq!((&o.id, &o.token_ids), (&a.id, &a.token_ids), "{}", r.key.label());
                        assert_eq!(exits(&o.trace), exits(&a.trace), "{}", r.key.label());
                    }
                }
            }
            match policy {
                Some(BatchPolicy::PerRow) => assert_eq!(b.held_row_tokens, 0),
                Some(BatchPolicy::Compact) => assert_eq!((b.wasted_row_layers, b.held_row_tokens), (0, 0)),
                Some(BatchPolicy::BatchMin) => assert_eq!(b.wasted_row_layers, 0),
                None => assert_eq!((b.wasted_row_layers, b.held_row_tokens), (0, 0)),
            }
            if r.key.baseline != Baseline::Full && r.key.baseline != Baseline::Oracle {
                assert!(r.speedup.is_some(), "{}: paired with full depth at B = 3", r.key.label());
            }
        }
        // full, static, oracle at B = 3, and 2 measures × 3 policies.
        assert_eq!(batched, 3 + 2 * 3, "{backend}");
        for r in mine.iter().filter(|r| r.key.batch_size.is_none()) {
            assert!(r.batch.is_none() && r.batch_size == 1 && !serde_json::to_string(&r.key).unwrap().contains("batch"));
        }
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("## Batched decoding") && summary.contains("softmax-diff@0.3 (compact)"), "{summary}");
    // Both runtimes read each weight once per step on the CPU in f32: no cell is marked (the
    // marker appears in the section's explanation only).
    assert_eq!(summary.matches("*rows one by one*").count(), 1, "{summary}");
    assert!(summary.contains("Does early exit beat it?"), "{summary}");

    // SIGKILL while the rounds run, then --resume: every cell once, the same deterministic outputs.
    let out2 = d.path().join("killed");
    let args2 = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out2.to_str().unwrap(), &[
        ("--max-new-tokens", "24"), ("--samples", "5"), ("--batch-size", "3"), ("--thresholds", "0.3"), ("--repetitions", "4"), ("--round-samples", "3"),
        ("--batch-settings", "all"),
    ]);
    let rounds = out2.join("rounds.jsonl");
    let mut child = bin().args(&args2).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while round_keys(&rounds).len() < 12 {
        assert!(start.elapsed() < Duration::from_secs(120), "no rounds appeared");
        assert!(child.try_wait().unwrap().is_none(), "the sweep finished before it could be killed; make it longer");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut resume = args2.clone();
    resume.push("--resume");
    let (code, _, err) = run(&resume);
    assert_eq!(code, 0, "{err}");
    let again = exitbench::results::store::read(&out2.join("results.jsonl")).unwrap();
    let mut ids: Vec<String> = again.iter().map(|r| r.cell_id.clone()).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!((ids.len(), n), (9, 9), "each batched cell once");
    let first = exitbench::results::store::read(&out.join("results.jsonl")).unwrap();
    for r in again.iter().filter(|r| r.key.baseline == Baseline::Full) {
        let f = first.iter().find(|f| f.key.backend == r.key.backend && f.key.batch_size == Some(3) && f.key.baseline == Baseline::Full).unwrap();
        for (a, b) in r.outputs.iter().zip(&f.outputs) {
            assert_eq!(&a.token_ids[..b.token_ids.len().min(a.token_ids.len())], &b.token_ids[..b.token_ids.len().min(a.token_ids.len())]);
        }
    }
}

/// `--exit-trace DIR`: early-exit cells of a sweep on an 8-layer model replay, sample by sample,
/// the exit layers a 4-layer model's sweep recorded (scaled: layer e becomes 2e), at batch size 1
/// and under per-row and compact at batch size 3, with their own key field and label; full depth
/// does not replay. A trace without the grid's setting is refused before anything is written.
#[test]
fn exit_trace_cells_replay_the_recorded_exits() {
    let (m, d, data) = fixture(5);
    let (mp, dp) = (m.path().to_str().unwrap(), data.to_str().unwrap());
    let src = d.path().join("trace");
    // Several thresholds: the test replays one whose exits are mixed (this random model's
    // confidences are not known in advance).
    let thresholds = ["0.5", "0.8", "0.9", "0.95", "0.98", "0.995"];
    let list = thresholds.join(",");
    let args = sweep_args_with(mp, dp, src.to_str().unwrap(), &[("--measure", "saturation"), ("--thresholds", &list), ("--static-exit", "1"), ("--samples", "5"), ("--max-new-tokens", "10")]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let recorded = |dir: &Path, pick: &dyn Fn(&exitbench::results::CellKey) -> bool| -> std::collections::BTreeMap<usize, Vec<usize>> {
        let recs = exitbench::results::store::read(&dir.join("results.jsonl")).unwrap();
        let cell = recs.iter().find(|r| pick(&r.key)).unwrap_or_else(|| panic!("no such cell in {}", dir.display()));
        let rounds = exitbench::sweep::rounds::read(dir).unwrap();
        let mut out = std::collections::BTreeMap::new();
        for r in rounds.values().filter(|r| r.cell_id == cell.cell_id && r.repetition == 0) {
            for s in &r.samples {
                out.insert(s.sample, s.exits[1..].to_vec());
            }
        }
        out
    };
    let mixed = |w: &std::collections::BTreeMap<usize, Vec<usize>>| w.values().flatten().any(|&e| e < 4) && w.values().flatten().any(|&e| e == 4);
    let threshold = thresholds
        .iter()
        .find(|t| mixed(&recorded(&src, &|k| k.baseline == Baseline::None && k.threshold == Some(t.parse().unwrap()))))
        .expect("a threshold whose recorded exits are both early and at full depth");
    let want = recorded(&src, &|k| k.baseline == Baseline::None && k.threshold == Some(threshold.parse().unwrap()));
    let deep = tempfile::tempdir().unwrap();
    write_tiny_model(deep.path(), &tiny_config(8, 300), 5).unwrap();
    let out = d.path().join("replay");
    let args = sweep_args_with(deep.path().to_str().unwrap(), dp, out.to_str().unwrap(), &[
        ("--measure", "saturation"), ("--thresholds", threshold), ("--static-exit", "1"), ("--samples", "5"), ("--max-new-tokens", "10"),
        ("--batch-size", "1,3"), ("--batch-policy", "per-row,compact"), ("--batch-settings", "all"), ("--exit-trace", src.to_str().unwrap()),
    ]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let recs = exitbench::results::store::read(&out.join("results.jsonl")).unwrap();
    let replaying: Vec<_> = recs.iter().filter(|r| r.key.baseline == Baseline::None).collect();
    assert_eq!(replaying.len(), 3, "B = 1, and per-row and compact at B = 3");
    for r in &replaying {
        assert_eq!(r.status, CellStatus::Ok, "{:?}", r.reason);
        assert!(r.key.exit_trace.is_some() && r.key.label().ends_with("replayed"), "{}", r.key.label());
        let got = recorded(&out, &|k| k.id() == r.key.id());
        assert_eq!(got.len(), 5);
        for (sample, exits) in &got {
            // Tokens differ between the models, so the generations may end at different steps;
            // every step both have exits where the trace said, scaled.
            let scaled: Vec<usize> = want[sample].iter().map(|&e| 2 * e).collect();
            let n = exits.len().min(scaled.len());
            assert_eq!(exits[..n], scaled[..n], "{} sample {sample}", r.key.label());
            assert!(n > 0);
        }
    }
    assert!(recs.iter().filter(|r| r.key.baseline != Baseline::None).all(|r| r.key.exit_trace.is_none()));
    // A setting the trace lacks: exit 2, naming the flag, nothing written.
    let out = d.path().join("missing");
    let args = sweep_args_with(deep.path().to_str().unwrap(), dp, out.to_str().unwrap(), &[("--measure", "softmax-diff"), ("--thresholds", "0.3"), ("--samples", "5"), ("--exit-trace", src.to_str().unwrap())]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--exit-trace") && err.contains("softmax-diff@0.3"), "{err}");
    assert!(!out.join("results.jsonl").exists());
    // The trace's results.jsonl names its directory as well.
    let out = d.path().join("by-file");
    let file = src.join("results.jsonl");
    let args = sweep_args_with(deep.path().to_str().unwrap(), dp, out.to_str().unwrap(), &[("--measure", "saturation"), ("--thresholds", threshold), ("--static-exit", "1"), ("--samples", "5"), ("--max-new-tokens", "4"), ("--exit-trace", file.to_str().unwrap())]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
}

/// A `--batch-settings` entry outside the grid's measures × thresholds runs nowhere: the sweep
/// warns, naming it.
#[test]
fn a_batch_setting_outside_the_grid_is_warned_about() {
    let (m, d, data) = fixture(2);
    let out = d.path().join("o");
    let mut a = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap(), &[
        ("--measure", "softmax-diff"), ("--thresholds", "0.3"), ("--samples", "2"), ("--max-new-tokens", "3"), ("--batch-size", "1,2"), ("--batch-settings", "softmax-diff@0.3,saturation@0.5"),
    ]);
    a.retain(|x| *x != "--quiet");
    let (code, _, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--batch-settings saturation@0.5: not in the grid"), "{err}");
    assert!(!err.contains("softmax-diff@0.3: not in the grid"), "{err}");
    // At batch size 1 alone nothing is batched: no warning.
    let out = d.path().join("one");
    let mut a = sweep_args_with(m.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap(), &[
        ("--measure", "softmax-diff"), ("--thresholds", "0.3"), ("--samples", "2"), ("--max-new-tokens", "3"), ("--batch-size", "1"), ("--batch-settings", "saturation@0.5"),
    ]);
    a.retain(|x| *x != "--quiet");
    let (code, _, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("not in the grid"), "{err}");
}
