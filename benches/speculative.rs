//! What one self-speculative verification pass costs against the single-token steps it
//! replaces, on the embedded model (real weights, f32, 1 thread), candle and ONNX Runtime.
//!
//! - `verify/{backend}/{cache}/E{e}/k{k}`: one pass over [x0, d1..dk] with 64 positions cached:
//!   `shared` runs x0's missing layers 1..E for the last token, then layers E+1..L over all k+1
//!   positions; `separate` runs all L layers over k+1 positions; then the exit head at every
//!   position and the rollback to the cached length.
//! - `steps/{backend}/k{k}`: k+1 single-token full-depth steps (what the pass replaces when every
//!   draft is accepted), then the same rollback.
//!
//! The ratio verify ÷ steps is a pass's cost in single steps: near 1/(k+1) when a step is bound
//! by weight reads, near 1 when it is bound by arithmetic (as on this tiny model on a CPU).
//!
//! Run: `cargo bench --bench speculative`; `EXITBENCH_BENCH_ORT=0` leaves out ONNX Runtime.

use criterion::{criterion_group, criterion_main, Criterion};
use exitbench::backend::{Backend, BackendKind, DeviceKind, Speculate};
use exitbench::decode::speculative::DraftCache;
use exitbench::model::{ModelFiles, Precision};
use std::path::Path;
use std::time::{Duration, Instant};

const CACHED: usize = 64;

fn tokens(n: usize) -> Vec<u32> {
    (0..n).map(|i| (5 + i * 37 % 900) as u32).collect()
}

fn prefill<B: Speculate>(b: &mut B) {
    b.reset();
    let mut h = b.embed(&tokens(CACHED)).unwrap();
    for l in 1..=b.num_layers() {
        h = b.layer(l, &h).unwrap();
    }
    b.sync().unwrap();
}

fn rollback<B: Speculate>(b: &mut B) {
    for l in 1..=b.num_layers() {
        b.truncate(l, CACHED).unwrap();
    }
}

/// One verification pass over k+1 positions (layers 1..E of the first k positions already
/// cached, as after drafting, in the shared mode).
fn verify<B: Speculate>(b: &mut B, cache: DraftCache, e: usize, k: usize, saved: &[B::Hidden]) {
    let layers = b.num_layers();
    let seq = tokens(k + 1);
    let h = match cache {
        DraftCache::Shared => {
            let mut h = b.embed(&seq[k..]).unwrap();
            for l in 1..=e {
                h = b.layer(l, &h).unwrap();
            }
            let mut parts = saved.to_vec();
            parts.push(h);
            let mut h = b.join(&parts).unwrap();
            for l in e + 1..=layers {
                h = b.layer(l, &h).unwrap();
            }
            h
        }
        DraftCache::Separate => {
            let mut h = b.embed(&seq).unwrap();
            for l in 1..=layers {
                h = b.layer(l, &h).unwrap();
            }
            h
        }
    };
    b.heads(&h).unwrap();
    b.sync().unwrap();
}

fn bench_backend(c: &mut Criterion, files: &ModelFiles, kind: BackendKind) {
    let mut open = exitbench::backend::open(kind, files, DeviceKind::Cpu, Precision::F32, 1).unwrap_or_else(|e| panic!("{kind}: {e}"));
    let mut g = c.benchmark_group(format!("speculative/{kind}"));
    g.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    exitbench::with_backend!(&mut open, b => {
        let layers = b.num_layers();
        for k in [1usize, 2, 4, 8] {
            g.bench_function(format!("steps/k{k}"), |bch| {
                bch.iter_custom(|iters| {
                    prefill(b);
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        for tok in tokens(k + 1) {
                            let mut h = b.embed(&[tok]).unwrap();
                            for l in 1..=layers {
                                h = b.layer(l, &h).unwrap();
                            }
                            b.head(&h).unwrap();
                        }
                        b.sync().unwrap();
                        total += t.elapsed();
                        rollback(b);
                    }
                    total
                })
            });
            for cache in [DraftCache::Shared, DraftCache::Separate] {
                let es: &[usize] = if cache == DraftCache::Shared { &[1, 3] } else { &[3] };
                for &e in es {
                    g.bench_function(format!("verify/{cache}/E{e}/k{k}"), |bch| {
                        bch.iter_custom(|iters| {
                            let mut total = Duration::ZERO;
                            for _ in 0..iters {
                                // The draft's layers 1..E for the first k positions, untimed.
                                prefill(b);
                                let mut saved = Vec::new();
                                for tok in tokens(k) {
                                    let mut h = b.embed(&[tok]).unwrap();
                                    for l in 1..=e {
                                        h = b.layer(l, &h).unwrap();
                                    }
                                    saved.push(h);
                                }
                                if cache == DraftCache::Separate {
                                    for l in 1..=e {
                                        b.truncate(l, CACHED).unwrap();
                                    }
                                }
                                b.sync().unwrap();
                                let t = Instant::now();
                                verify(b, cache, e, k, &saved);
                                total += t.elapsed();
                            }
                            total
                        })
                    });
                }
            }
        }
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cricket-6l");
    let files = ModelFiles::open(&root, None).unwrap();
    bench_backend(c, &files, BackendKind::Candle);
    if std::env::var("EXITBENCH_BENCH_ORT").map_or(true, |v| v != "0") {
        exitbench::testkit::onnx_cache_once(&std::env::temp_dir().join("exitbench-bench-onnx"));
        bench_backend(c, &files, BackendKind::Ort);
    }
}

criterion_group!(speculative, benches);
criterion_main!(speculative);
