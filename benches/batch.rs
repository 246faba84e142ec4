//! Batched decode steps at full depth: tokens per second (every row's token counted) at batch
//! sizes 1, 4, 16 and 64, on the embedded model's shape and the Llama-3.2-1B shape (random
//! weights), candle and ONNX Runtime, every row with 16 prompt tokens in its cache (the step is
//! repeated from the same caches). A step reads each weight once for all its rows: on candle
//! through its few-row kernel (gemm above 16 rows), on ONNX Runtime through its in-place graphs'
//! batch axis (one cache buffer per layer for all rows).
//!
//! - `replay`: the Llama-3.2-1B shape at B = 16 replaying the embedded model's own exit layers
//!   (softmax-diff at 0.9 on 16 synthetic prompts, scaled from 6 to 16 layers), `per-row`
//!   against `compact`: decode seconds per step (prefill excluded) and compact's gather share.
//!
//! Run: `cargo bench --bench batch` (one group: `cargo bench --bench batch -- 'cricket/candle'`);
//! `EXITBENCH_BENCH_1B=0` leaves out the 1B shape (never run by `cargo test`) (it loads ~5 GB of random f32 weights),
//! `EXITBENCH_BENCH_ORT=0` ONNX Runtime.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use exitbench::backend::{BackendKind, Batch, DeviceKind};
use exitbench::decode::batch::{generate_batch, BatchPolicy, ExitReplay};
use exitbench::decode::{GenerateOptions, Sampling};
use exitbench::exit::{ExitMode, ExitPolicy, Measure, Schedule};
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
            let rows: Vec<usize> = (0..n).collect();
            // Prefilled at the first call (a benchmark left out by a filter never prefills).
            let mut prefilled = false;
            g.bench_function(format!("B{n}"), |bch| {
                if !prefilled {
                    prefill(b, n);
                    prefilled = true;
                }
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

/// The embedded model's exit layers on 16 synthetic prompts (softmax-diff at 0.9, 8 new tokens),
/// scaled to `layers` layers, and the prompts' token counts.
fn embedded_trace(layers: usize, max_new: usize) -> (ExitReplay, Vec<usize>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cricket-6l");
    let files = ModelFiles::open(&root, None).unwrap();
    let mut open = exitbench::backend::open(BackendKind::Candle, &files, DeviceKind::Cpu, Precision::F32, 1).unwrap();
    let examples = exitbench::data::synth::generate(exitbench::data::synth::Split::Test, exitbench::data::synth::DEFAULT_SEED, 16);
    let prompts: Vec<Vec<u32>> = examples.iter().map(|e| files.tokenizer.encode(&e.prompt).unwrap()).collect();
    let mode = ExitMode::Dynamic(ExitPolicy { measure: Measure::SoftmaxDiff, threshold: 0.9, schedule: Schedule::Fixed, min_exit_layer: 1, exit_interval: 1 });
    let opts = GenerateOptions { mode, max_new_tokens: max_new, sampling: Sampling::default(), eos_ids: vec![], profile_layers: false, time_split: true };
    let from = files.config.num_hidden_layers;
    let traces = exitbench::with_backend!(&mut open, b => prompts.iter().map(|p| {
        let g = exitbench::decode::generate(b, p, &opts).unwrap();
        g.tokens[1..].iter().map(|t| (t.exit_layer * layers).div_ceil(from)).collect::<Vec<_>>()
    }).collect::<Vec<_>>());
    (ExitReplay { layers: traces }, prompts.iter().map(Vec::len).collect())
}

fn bench_replay(c: &mut Criterion, files: &ModelFiles, threads: usize) {
    let layers = files.config.num_hidden_layers;
    let max_new = 8;
    let (trace, lens) = embedded_trace(layers, max_new);
    // Two-token prompts: the replayed exits decide the steps, and a long prefill of 16 rows on
    // this shape would take most of each iteration (only decode steps are timed).
    let _ = lens;
    let prompts: Vec<Vec<u32>> = (0..trace.layers.len()).map(|r| vec![(3 + r * 13 % 250) as u32, 7]).collect();
    let mut open = exitbench::backend::open(BackendKind::Candle, files, DeviceKind::Cpu, Precision::F32, threads).unwrap();
    // The exits are replayed; the measure only sets what each exit check costs: softmax-diff
    // applies the 128k-vocabulary LM head at every exit point, saturation a cosine.
    for measure in [Measure::SoftmaxDiff, Measure::Saturation] {
    let mode = ExitMode::Dynamic(ExitPolicy { measure, threshold: 0.9, schedule: Schedule::Fixed, min_exit_layer: 1, exit_interval: 1 });
    let opts = GenerateOptions { mode, max_new_tokens: max_new, sampling: Sampling::default(), eos_ids: vec![], profile_layers: false, time_split: true };
    let mut g = c.benchmark_group(format!("replay/llama-3.2-1b/candle/{threads}t/B16/{measure} checks"));
    g.sample_size(10).measurement_time(Duration::from_secs(40)).warm_up_time(Duration::from_secs(1));
    for policy in [BatchPolicy::PerRow, BatchPolicy::Compact] {
        let mut gather = (0.0, 0.0);
        exitbench::with_backend!(&mut open, b => {
            g.bench_function(policy.name(), |bch| {
                bch.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let out = generate_batch(b, &prompts, &opts, policy, Some(&trace)).unwrap();
                        // Seconds per decode step (the prefill is the same for both policies).
                        total += Duration::from_secs_f64(out.decode_s() / out.steps.len() as f64);
                        gather.0 += out.steps.iter().map(|s| s.gather_s).sum::<f64>();
                        gather.1 += out.decode_s();
                    }
                    total
                })
            });
        });
        eprintln!("replay {measure} checks, {policy}: gather {:.3}% of decode time", 100.0 * gather.0 / gather.1.max(1e-12));
    }
    g.finish();
    }
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
    // The 1B shape only under `cargo bench` (`cargo test --all-targets` runs each bench once, and
    // building 5 GB of weights there would only slow CI down).
    if on("EXITBENCH_BENCH_1B") && std::env::args().any(|a| a == "--bench") {
        let shape = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shapes/llama-3.2-1b");
        let big = ModelFiles::open(&shape, Some(1)).unwrap();
        bench_shape(c, "llama-3.2-1b", &big, BackendKind::Candle, cores, &[1, 4, 16, 64]);
        if on("EXITBENCH_BENCH_ORT") {
            bench_shape(c, "llama-3.2-1b", &big, BackendKind::Ort, cores, &[1, 4, 16, 64]);
        }
        bench_replay(c, &big, cores);
    }
}

criterion_group!(batch, benches);
criterion_main!(batch);
