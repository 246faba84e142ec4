//! candle vs ONNX Runtime on the same weights: one decode step at full depth and with early exit,
//! and ORT layer by layer against ORT's full-depth graph (the price of dynamic depth).
//!
//! Default model: always. The Llama-3.2-1B shape (random weights, f32, 16 layers, vocabulary
//! 128,256): only under `cargo bench` (it exports ~12 GB of graphs into the ONNX export cache,
//! `exitbench info` shows where, on first use, and needs ~16 GB of memory).
//! Each measured step feeds the model's own greedy token after a prefilled prompt; every 32 steps
//! the context is rebuilt outside the timing, so the steps see contexts of prompt + 0..32 tokens.

use criterion::{criterion_group, criterion_main, Criterion};
use exitbench::backend::ort::{FullDepth, OrtBackend};
use exitbench::backend::{self, Backend, BackendKind, DeviceKind};
use exitbench::decode::{decode_token, GenerateOptions, Sampling};
use exitbench::exit::{ExitMode, ExitPolicy, Measure, Schedule};
use exitbench::model::{ModelFiles, Precision};
use exitbench::with_backend;
use rand::SeedableRng;
use std::path::Path;
use std::time::{Duration, Instant};

const STEPS_PER_CONTEXT: u64 = 32;

/// Prefills `prompt`; returns the first generated token.
fn prefill<B: Backend>(b: &mut B, prompt: &[u32]) -> u32 {
    b.reset();
    let mut h = b.embed(prompt).unwrap();
    for l in 1..=b.num_layers() {
        h = b.layer(l, &h).unwrap();
    }
    b.head(&h).unwrap().argmax
}

/// Time of `iters` decode steps (contexts rebuilt untimed every 32 steps).
fn time_steps<B: Backend>(b: &mut B, prompt: &[u32], opts: &GenerateOptions, iters: u64) -> Duration {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let (mut total, mut done) = (Duration::ZERO, 0);
    while done < iters {
        // The model's own greedy continuation, so confidences (and exits) are the real ones.
        let mut token = prefill(b, prompt);
        for step in 0..STEPS_PER_CONTEXT.min(iters - done) {
            let t = Instant::now();
            token = decode_token(b, token, step as usize, opts, &mut rng).unwrap().id;
            total += t.elapsed();
            done += 1;
        }
    }
    total
}

fn time_full_graph(f: &mut FullDepth, prompt: &[u32], iters: u64) -> Duration {
    let (mut total, mut done) = (Duration::ZERO, 0);
    while done < iters {
        f.reset();
        let mut token = f.step(prompt).unwrap().argmax;
        for _ in 0..STEPS_PER_CONTEXT.min(iters - done) {
            let t = Instant::now();
            token = f.step(&[token]).unwrap().argmax;
            total += t.elapsed();
            done += 1;
        }
    }
    total
}

fn modes(layers: usize, early: bool) -> Vec<(String, ExitMode)> {
    let mut m = vec![("full".to_string(), ExitMode::Full)];
    if early {
        let p = ExitPolicy { measure: Measure::SoftmaxDiff, threshold: 0.9, schedule: Schedule::Fixed, min_exit_layer: 1, exit_interval: 1 };
        m.push(("softmax-diff@0.9".into(), ExitMode::Dynamic(p)));
    }
    for k in [layers / 4, layers / 2] {
        if k >= 1 {
            m.push((format!("static@{k}"), ExitMode::Static { layer: k }));
        }
    }
    m
}

fn bench_model(c: &mut Criterion, name: &str, files: &ModelFiles, prompt: &[u32], samples: usize, early: bool) {
    let threads = backend::default_threads(files.config.hidden_size);
    let layers = files.config.num_hidden_layers;
    let mut g = c.benchmark_group(format!("decode_step/{name}/{threads}t"));
    g.sample_size(samples).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(if samples <= 10 { 20 } else { 4 }));
    for kind in [BackendKind::Candle, BackendKind::Ort] {
        let mut b = backend::open(kind, files, DeviceKind::Cpu, Precision::F32, threads).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        for (label, mode) in modes(layers, early) {
            let opts = GenerateOptions { mode, max_new_tokens: 64, sampling: Sampling::default(), eos_ids: vec![], profile_layers: false, time_split: true };
            g.bench_function(format!("{}/{label}", kind.name()), |bch| bch.iter_custom(|iters| with_backend!(&mut b, x => time_steps(x, prompt, &opts, iters))));
        }
    }
    // The price of dynamic depth: ORT layer by layer (above, `ort/full`) vs one full-depth graph.
    let mut f = FullDepth::open(files, DeviceKind::Cpu, Precision::F32, threads, exitbench::backend::ort::DEFAULT_SPINNING).unwrap();
    g.bench_function("ort/full (one full-depth graph)", |bch| bch.iter_custom(|iters| time_full_graph(&mut f, prompt, iters)));
    drop(f);
    if threads > 1 {
        // Spinning intra-op threads, against the default (off) measured above as `ort/full`.
        let mut spin = OrtBackend::open_with(files, DeviceKind::Cpu, Precision::F32, threads, true).unwrap();
        let opts = GenerateOptions { mode: ExitMode::Full, max_new_tokens: 64, sampling: Sampling::default(), eos_ids: vec![], profile_layers: false, time_split: true };
        g.bench_function("ort/full (spinning threads)", |bch| bch.iter_custom(|iters| time_steps(&mut spin, prompt, &opts, iters)));
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join(exitbench::DEFAULT_MODEL);
    let files = ModelFiles::open(&default, None).unwrap();
    let ex = exitbench::data::synth::generate(exitbench::data::synth::Split::Test, exitbench::data::synth::DEFAULT_SEED, 1);
    let prompt = files.tokenizer.encode(&ex[0].prompt).unwrap();
    bench_model(c, "cricket-6l", &files, &prompt, 30, true);
    // The 1B shape only under `cargo bench` (cargo passes --bench); `cargo test --all-targets`
    // runs this binary in test mode, where it would cost minutes and ~16 GB.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let wanted = filters.is_empty() || filters.iter().any(|f| "decode_step/llama-3.2-1b-shape".contains(f.as_str()) || f.contains("llama"));
    if args.iter().any(|a| a == "--bench") && wanted {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shapes/llama-3.2-1b");
        let files = ModelFiles::open(&dir, Some(7)).unwrap();
        let prompt: Vec<u32> = (0..128u32).map(|i| 1000 + i * 37).collect();
        bench_model(c, "llama-3.2-1b-shape", &files, &prompt, 10, false);
    }
}

criterion_group!(decode, benches);
criterion_main!(decode);
