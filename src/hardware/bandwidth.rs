//! The machine's memory bandwidth, measured once per run with a STREAM-like triad
//! (`a[i] = b[i] + s·c[i]` over arrays far larger than the caches, 24 bytes moved per element as
//! STREAM counts them), on one thread and on all threads; the best pass within a time budget.
//! A batch-1 decode step streams every weight it uses, so this is the ceiling that
//! `achieved_gb_s` is compared against.
//!
//! The arrays together hold at least four times the last-level cache (read from sysfs), as
//! STREAM asks: a server CPU's L3 can hold hundreds of MiB (300 MiB on the Xeon this was written
//! on, whose earlier fixed 192 MiB arrays fit in it and measured the L3, 38–57 GB/s on 2 threads,
//! not the memory's 27–28 GB/s).

use std::time::{Duration, Instant};

/// Elements per array when the caches' sizes are unknown: 3 arrays × 8 bytes × 8 Mi = 192 MiB.
const MIN_N: usize = 8 << 20;
/// At most 3 × 2 GiB.
const MAX_N: usize = 256 << 20;

/// The largest CPU cache of CPU 0 in bytes (its last level), from
/// `/sys/devices/system/cpu/cpu0/cache/index*/size` (`32K`, `2048K`, `300M`); None when absent.
pub fn last_level_cache_bytes() -> Option<u64> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("size")).ok()).filter_map(|s| parse_size(s.trim())).max()
}

/// `32K`, `300M`, `1G` or plain bytes.
fn parse_size(s: &str) -> Option<u64> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Elements per array for a last-level cache of `llc` bytes: the three arrays (24 bytes an
/// element) hold at least 4 × `llc`, between [`MIN_N`] and [`MAX_N`].
pub fn elements_for(llc: Option<u64>) -> usize {
    let want = llc.map_or(0, |c| (4 * c).div_ceil(24)) as usize;
    want.clamp(MIN_N, MAX_N)
}

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
    let n = elements_for(last_level_cache_bytes());
    let mut a = vec![0f64; n];
    let b = vec![1f64; n];
    let c = vec![2f64; n];
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

    #[test]
    fn the_arrays_outgrow_the_last_level_cache() {
        assert_eq!(parse_size("48K"), Some(48 << 10));
        assert_eq!(parse_size("307200K"), Some(300 << 20));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!((parse_size("K"), parse_size("3X"), parse_size("")), (None, None, None));
        // 300 MiB of L3: 1.2 GiB over three arrays, not the old fixed 192 MiB.
        assert_eq!(elements_for(Some(300 << 20)), (1200usize << 20).div_ceil(24));
        assert_eq!(elements_for(Some(32 << 20)), MIN_N);
        assert_eq!(elements_for(None), MIN_N);
        assert_eq!(elements_for(Some(1 << 40)), MAX_N);
    }
}
