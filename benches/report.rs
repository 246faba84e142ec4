//! `report` over 10,000 cell records (target < 2 s): derive + CSV + Markdown + HTML, from records
//! made by a real sweep of a tiny model and replicated with distinct keys.
//! Run: `cargo bench --bench report`.

use criterion::{criterion_group, criterion_main, Criterion};
use exitbench::results::CellRecord;
use exitbench::testkit::{tiny_config, write_tiny_model};
use std::process::Command;
use std::time::Duration;

fn records() -> Vec<CellRecord> {
    let d = tempfile::tempdir().unwrap();
    write_tiny_model(&d.path().join("m"), &tiny_config(4, 300), 1).unwrap();
    let out = d.path().join("out");
    let data = d.path().join("data.jsonl");
    let lines: Vec<String> = (0..20)
        .map(|i| format!("{{\"id\":\"s{i}\",\"prompt\":\"The Hawks beat the Foxes by {i} runs.\",\"reference\":\"The Hawks beat the Foxes.\"}}"))
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_exitbench"))
        .args(["run", "--model", d.path().join("m").to_str().unwrap(), "--out", out.to_str().unwrap(), "--samples", "20", "--dataset", data.to_str().unwrap(),
               "--max-new-tokens", "16", "--measure", "softmax-diff", "--thresholds", "0.9,0.5", "--oracle", "--quiet",
               "--min-window", "0", "--idle-seconds", "0", "--warmup", "0"])
        .status()
        .unwrap();
    assert!(status.success());
    let base = exitbench::results::store::read(&out).unwrap();
    let mut all = Vec::with_capacity(10_000);
    for i in 0..10_000 / base.len() + 1 {
        for r in &base {
            let mut r = r.clone();
            r.key.threads = 1 + i; // a distinct configuration group per copy
            r.cell_id = r.key.id();
            all.push(r);
        }
    }
    all.truncate(10_000);
    all
}

fn bench(c: &mut Criterion) {
    let recs = records();
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("report");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("10k_records_all_exports", |b| b.iter(|| exitbench::report::write_all(&recs, dir.path()).unwrap()));
    g.finish();
}

criterion_group!(report, bench);
criterion_main!(report);
