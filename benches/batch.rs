//! Batched decode steps at full depth: tokens per second (every row's token counted) at batch
//! sizes 1, 4, 16 and 64, on the embedded model's shape and the Llama-3.2-1B shape (random
//! weights), candle and ONNX Runtime, every row with 16 prompt tokens in its cache (the step is
//! repeated from the same caches). A step reads each weight once for all its rows on candle;
//! ONNX Runtime's batch-1 graphs run rows one by one.
//!
//! Run: `cargo bench --bench batch` (one group: `cargo bench --bench batch -- 'cricket/candle'`);
//! `EXITBENCH_BENCH_1B=0` leaves out the 1B shape (it loads ~5 GB of random f32 weights),
//! `EXITBENCH_BENCH_ORT=0` ONNX Runtime.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use exitbench::backend::{BackendKind, Batch, DeviceKind};
use exitbench::model::{ModelFiles, Precision};
use exitbench::testkit::{default_shape, write_tiny_model};
use std::path::Path;
use std::time::{Duration, Instant};

const PROMPT: usize = 16;

/// One full-depth step for every row, then the rows' caches back to the prompt.
fn step<B: Batch>(b: &mut B, rows: &[usize]) {
    let tokens: Vec<Vec<u32>> = rows.iter().map(|&r| vec![(7 + r % 200) as u32]).collect();
    let slices: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
    let mut h = b.embed_rows(&slices).unwrap();
    for l in 1..=b.num_layers() {
        h = b.layer_rows(l, rows, &h).unwrap();
    }
    b.head_rows(&h).unwrap();
    b.sync().unwrap();
}

fn prefill<B: Batch>(b: &mut B, n: usize) {
    b.start_rows(n, PROMPT + 2).unwrap();
    let prompts: Vec<Vec<u32>> = (0..n).map(|r| (0..PROMPT).map(|i| (3 + (i * 7 + r * 13) % 250) as u32).collect()).collect();
    let slices: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let rows: Vec<usize> = (0..n).collect();
    let mut h = b.embed_rows(&slices).unwrap();
    for l in 1..=b.num_layers() {
        h = b.layer_rows(l, &rows, &h).unwrap();
    }
}

fn bench_shape(c: &mut Criterion, name: &str, files: &ModelFiles, kind: BackendKind, threads: usize, sizes: &[usize]) {
    let mut open = exitbench::backend::open(kind, files, DeviceKind::Cpu, Precision::F32, threads).unwrap_or_else(|e| panic!("{kind}: {e}"));
    let mut g = c.benchmark_group(format!("batch_step/{name}/{kind}/{threads}t"));
    g.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    for &n in sizes {
        g.throughput(Throughput::Elements(n as u64));
        exitbench::with_backend!(&mut open, b => {
            prefill(b, n);
            let rows: Vec<usize> = (0..n).collect();
            g.bench_function(format!("B{n}"), |bch| {
                bch.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        step(b, &rows);
                        total += t.elapsed();
                        for &r in &rows {
                            b.truncate_row(r, PROMPT).unwrap();
                        }
                    }
                    total
                })
            });
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let on = |var: &str| std::env::var(var).map_or(true, |v| v != "0");
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &default_shape(), 1).unwrap();
    let cricket = ModelFiles::open(dir.path(), None).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    bench_shape(c, "cricket", &cricket, BackendKind::Candle, 1, &[1, 4, 16, 64]);
    if on("EXITBENCH_BENCH_ORT") {
        exitbench::testkit::onnx_cache_once(&std::env::temp_dir().join("exitbench-bench-onnx"));
        bench_shape(c, "cricket", &cricket, BackendKind::Ort, 1, &[1, 4, 16, 64]);
    }
    if on("EXITBENCH_BENCH_1B") {
        let shape = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shapes/llama-3.2-1b");
        let big = ModelFiles::open(&shape, Some(1)).unwrap();
        bench_shape(c, "llama-3.2-1b", &big, BackendKind::Candle, cores, &[1, 4, 16, 64]);
    }
}

criterion_group!(batch, benches);
criterion_main!(batch);
