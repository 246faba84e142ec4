//! Decode-step benchmarks on a random-weight model of the embedded default's shape (6 layers,
//! hidden 256, vocab 1024), with a 200-token prompt in the cache:
//! - one decode step at full depth vs the per-layer loop with exit checks at every layer
//!   (threshold 1.0: never met, so every check is paid and all layers run);
//! - the cost of one layer and of each confidence measure's check;
//! - 1 vs 2 CPU threads;
//! - one row times a weight matrix (`x W^T`, what every decode step does), candle's gemm vs
//!   exitbench's row-split kernel, on the embedded model's LM head and the Llama-3.2-1B shape's
//!   MLP and LM head, at 1 and 2 threads;
//! - one layer's decode step with 64, 512 and 2,048 cached positions (the attention's cost as
//!   the context grows; the cache is read in place, never copied per token), on candle and on
//!   ONNX Runtime with both cache forms (in-place buffers, and the concatenating graphs that copy
//!   the cache every step).
//!
//! Run: `cargo bench --bench decode` (one group: `cargo bench --bench decode -- matvec`);
//! `EXITBENCH_BENCH_ORT=0` leaves out ONNX Runtime.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use exitbench::backend::candle::CandleBackend;
use exitbench::backend::candle::set_cpu_threads;
use exitbench::backend::ort::graphs::CacheForm;
use exitbench::backend::ort::OrtBackend;
use exitbench::backend::{Backend, Speculate};
use exitbench::decode::{decode_token, GenerateOptions, Sampling};
use exitbench::exit::{ExitMode, ExitPolicy, Measure, Schedule};
use exitbench::model::{LoadOptions, LoadedModel, Precision};
use exitbench::testkit::{default_shape, write_random_classifiers, write_tiny_model};
use rand::SeedableRng;
use std::time::Duration;

fn setup() -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_tiny_model(dir.path(), &default_shape(), 1).unwrap();
    write_random_classifiers(dir.path(), &cfg, 2).unwrap();
    let m = LoadedModel::load(dir.path(), &LoadOptions { precision: Precision::F32, device: candle_core::Device::Cpu, random_weights: None }).unwrap();
    (dir, m)
}

fn prefilled(m: &LoadedModel) -> CandleBackend {
    let mut b = CandleBackend::new(&m.model);
    let prompt: Vec<u32> = (0..200u32).map(|i| 3 + (i * 7) % 250).collect();
    let mut h = b.embed(&prompt).unwrap();
    for l in 1..=m.model.num_layers() {
        h = b.layer(l, &h).unwrap();
    }
    b
}

fn policy(measure: Measure) -> ExitMode {
    ExitMode::Dynamic(ExitPolicy { measure, threshold: 1.0, schedule: Schedule::Fixed, min_exit_layer: 1, exit_interval: 1 })
}

fn bench_steps(c: &mut Criterion, m: &LoadedModel, threads: usize) {
    set_cpu_threads(threads);
    let base = prefilled(m);
    let mut g = c.benchmark_group(format!("decode_step/{threads}t"));
    g.sample_size(30).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    let mut modes = vec![("full", ExitMode::Full)];
    for &measure in Measure::ALL {
        modes.push((measure.name(), policy(measure)));
    }
    for (name, mode) in modes {
        let opts = GenerateOptions { mode, max_new_tokens: 64, sampling: Sampling::default(), eos_ids: vec![], profile_layers: false, time_split: true };
        g.bench_function(name, |bch| {
            bch.iter_batched(
                || (base.clone(), rand::rngs::StdRng::seed_from_u64(0)),
                |(mut b, mut rng)| decode_token(&mut b, 5, 3, &opts, &mut rng).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_components(c: &mut Criterion, m: &LoadedModel) {
    set_cpu_threads(1);
    let base = prefilled(m);
    let mut b0 = base.clone();
    let x = b0.embed(&[5]).unwrap();
    let h1 = b0.layer(1, &x).unwrap();
    let h2 = b0.layer(2, &h1).unwrap();
    let mut g = c.benchmark_group("component/1t");
    g.sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    g.bench_function("one_layer", |bch| bch.iter_batched(|| base.clone(), |mut b| b.layer(3, &h2).unwrap(), BatchSize::SmallInput));
    g.bench_function("propagate_one_layer", |bch| bch.iter_batched(|| base.clone(), |mut b| b.propagate(3, &h2).unwrap(), BatchSize::SmallInput));
    let mut b = base.clone();
    g.bench_function("check_softmax (head + top2)", |bch| {
        bch.iter(|| { let s = exitbench::head::HeadSummary::of_logits(&b.exit_logits(&h2).unwrap()); s.p1 - s.p2 })
    });
    g.bench_function("check_saturation (cosine)", |bch| bch.iter(|| b.cosine(&h1, &h2).unwrap()));
    g.bench_function("check_classifier", |bch| bch.iter(|| b.classifier(2, &h2).unwrap()));
    g.finish();
}

fn bench_context(c: &mut Criterion) {
    // The default shape with room for 2,048 + 1 positions.
    let dir = tempfile::tempdir().unwrap();
    let cfg = exitbench::model::LlamaConfig { max_position_embeddings: 4096, ..default_shape() };
    write_tiny_model(dir.path(), &cfg, 1).unwrap();
    let m = &LoadedModel::load(dir.path(), &LoadOptions { precision: Precision::F32, device: candle_core::Device::Cpu, random_weights: None }).unwrap();
    set_cpu_threads(1);
    let mut g = c.benchmark_group("layer_step_by_context/1t");
    g.sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for cached in [64usize, 512, 2048] {
        let mut b = CandleBackend::new(&m.model);
        let prompt: Vec<u32> = (0..cached as u32).map(|i| 3 + (i * 7) % 250).collect();
        let h = b.embed(&prompt).unwrap();
        b.layer(1, &h).unwrap();
        let x = b.embed(&[5]).unwrap();
        let mut cache = b.cache(1).clone();
        g.bench_function(format!("{cached}_positions"), |bch| {
            bch.iter(|| {
                let y = m.model.layer_forward(1, &x, cached, Some(&mut cache)).unwrap();
                cache.truncate(cached);
                y
            })
        });
    }
    if std::env::var("EXITBENCH_BENCH_ORT").map_or(true, |v| v != "0") {
        exitbench::testkit::onnx_cache_once(&std::env::temp_dir().join("exitbench-bench-onnx"));
        let files = exitbench::model::ModelFiles::open(dir.path(), None).unwrap();
        for form in [CacheForm::InPlace, CacheForm::Concat] {
            for cached in [64usize, 512, 2048] {
                ort_layer_step(&mut g, &files, form, cached);
            }
        }
    }
    g.finish();
}

/// ONNX Runtime's decode step of layer 1 after `cached` positions, caches in `form`: runs of up
/// to 32 steps (so the cache holds `cached` to `cached + 32` positions), each run rolled back
/// untimed.
fn ort_layer_step(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, files: &exitbench::model::ModelFiles, form: CacheForm, cached: usize) {
    let mut b = OrtBackend::open_form(files, exitbench::backend::DeviceKind::Cpu, Precision::F32, 1, false, form).unwrap();
    let prompt: Vec<u32> = (0..cached as u32).map(|i| 3 + (i * 7) % 250).collect();
    let h = b.embed(&prompt).unwrap();
    b.layer(1, &h).unwrap();
    let x = b.embed(&[5]).unwrap();
    g.bench_function(format!("ort {}/{cached}_positions", form.name()), |bch| {
        bch.iter_custom(|iters| {
            let (mut total, mut done) = (Duration::ZERO, 0);
            while done < iters {
                let n = (iters - done).min(32);
                let t = std::time::Instant::now();
                for _ in 0..n {
                    std::hint::black_box(b.layer(1, &x).unwrap());
                }
                total += t.elapsed();
                b.truncate(1, cached).unwrap();
                done += n;
            }
            total
        })
    });
}

fn bench_matvec(c: &mut Criterion) {
    for threads in [1usize, 2] {
        set_cpu_threads(threads);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut g = c.benchmark_group(format!("matvec/{threads}t"));
        g.sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
        for (rows, cols, what) in [(1024usize, 256usize, "cricket LM head"), (8192, 2048, "1B MLP up"), (128_256, 2048, "1B LM head")] {
            let w = candle_core::Tensor::randn(0f32, 1.0, (rows, cols), &candle_core::Device::Cpu).unwrap();
            let x = candle_core::Tensor::randn(0f32, 1.0, (1, cols), &candle_core::Device::Cpu).unwrap();
            let wt = w.t().unwrap();
            g.bench_function(format!("{what} {rows}x{cols}/candle gemm"), |b| b.iter(|| pool.install(|| x.matmul(&wt).unwrap())));
            // The row-split kernel itself on exactly `threads` threads (the decode path uses it
            // from two threads on, candle's gemm on one).
            let (xs, ws) = (x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), w.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            let mut y = vec![0f32; rows];
            g.bench_function(format!("{what} {rows}x{cols}/row split"), |b| b.iter(|| pool.install(|| exitbench::model::matvec::matvec(&ws, &xs, &mut y))));
        }
        g.finish();
    }
}

fn benches(c: &mut Criterion) {
    bench_matvec(c);
    let (_dir, m) = setup();
    bench_context(c);
    bench_components(c, &m);
    bench_steps(c, &m, 1);
    bench_steps(c, &m, 2);
}

criterion_group!(decode, benches);
criterion_main!(decode);
