//! The machine's memory bandwidth, measured once per run with a STREAM-like triad
//! (`a[i] = b[i] + s·c[i]` over arrays far larger than the caches, 24 bytes moved per element as
//! STREAM counts them), on one thread and on all threads; the best pass within a time budget.
//! A batch-1 decode step streams every weight it uses, so this is the ceiling that
//! `achieved_gb_s` is compared against.

use std::time::{Duration, Instant};

/// Elements per array: 3 arrays × 8 bytes × 8 Mi = 192 MiB, beyond any CPU cache here.
const N: usize = 8 << 20;

/// GB/s (10⁹ bytes per second) on one thread and on every available thread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    /// One thread.
    pub one_thread_gb_s: f64,
    /// All threads.
    pub all_threads_gb_s: f64,
}

fn triad(a: &mut [f64], b: &[f64], c: &[f64], s: f64) {
    for ((x, y), z) in a.iter_mut().zip(b).zip(c) {
        *x = y + s * z;
    }
}

/// Best triad bandwidth with `threads` threads within `budget`.
fn best(threads: usize, budget: Duration, a: &mut [f64], b: &[f64], c: &[f64]) -> f64 {
    let start = Instant::now();
    let mut best = 0f64;
    let mut passes = 0;
    while passes < 2 || (start.elapsed() < budget && passes < 20) {
        let t = Instant::now();
        let chunk = a.len().div_ceil(threads);
        std::thread::scope(|sc| {
            for ((a, b), c) in a.chunks_mut(chunk).zip(b.chunks(chunk)).zip(c.chunks(chunk)) {
                sc.spawn(move || triad(a, b, c, 3.0));
            }
        });
        let s = t.elapsed().as_secs_f64();
        best = best.max(24.0 * a.len() as f64 / s / 1e9);
        passes += 1;
    }
    std::hint::black_box(&a[a.len() / 2]);
    best
}

/// Measures both figures within about `budget` in total.
pub fn measure(budget: Duration) -> Bandwidth {
    let all = all_threads();
    let by = measure_threads(&[1, all], budget);
    let at = |n: usize| by.iter().find(|(t, _)| *t == n).map(|x| x.1).unwrap_or(0.0);
    Bandwidth { one_thread_gb_s: at(1), all_threads_gb_s: at(all) }
}

/// The machine's logical CPUs.
pub fn all_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The triad bandwidth at each of `threads` (distinct, sorted; 0 left out), sharing `budget`.
pub fn measure_threads(threads: &[usize], budget: Duration) -> Vec<(usize, f64)> {
    let mut counts: Vec<usize> = threads.iter().copied().filter(|&t| t > 0).collect();
    counts.sort_unstable();
    counts.dedup();
    let mut a = vec![0f64; N];
    let b = vec![1f64; N];
    let c = vec![2f64; N];
    let each = budget / counts.len().max(1) as u32;
    counts.iter().map(|&t| (t, best(t, each, &mut a, &b, &c))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_reports_positive_finite_figures() {
        let bw = measure(Duration::from_millis(200));
        assert!(bw.one_thread_gb_s.is_finite() && bw.one_thread_gb_s > 0.1, "{bw:?}");
        assert!(bw.all_threads_gb_s.is_finite() && bw.all_threads_gb_s > 0.1, "{bw:?}");
        let by = measure_threads(&[2, 1, 2, 0], Duration::from_millis(100));
        assert_eq!(by.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(by.iter().all(|x| x.1.is_finite() && x.1 > 0.1), "{by:?}");
    }
}
