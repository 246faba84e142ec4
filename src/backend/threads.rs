//! The computing threads of a configuration group: `--threads N` means N OS threads run the
//! kernels, the calling thread among them. candle's CPU kernels use rayon's pool of whichever
//! thread calls them, and rayon's global pool is built once per process with worker threads of
//! its own: at N = 1 every softmax, norm and rotary embedding was handed to a second OS thread
//! (a `futex` wake and a `sched_yield` per operation), and a process running `--threads 1,2` kept
//! the first group's pool for the second. Here each group runs on a fresh thread that becomes
//! worker 0 of a pool of exactly N threads (N − 1 spawned beside it), so at N = 1 the kernels run
//! inline on that thread; the pool ends with the group. `--pin-cpus` pins the pool's threads.

use crate::error::{Error, Result};
pub use crate::runtime_info::ComputeThreads;

/// Runs `f` on a fresh OS thread that is worker 0 of a rayon pool of `n` threads (pinned to
/// `pin[i % len]` when given), passing it what the pool measured; returns `f`'s value.
pub fn with_compute_threads<R: Send>(n: usize, pin: Option<&[usize]>, f: impl FnOnce(&ComputeThreads) -> R + Send) -> Result<R> {
    if n == 0 {
        return Err(Error::setting("--threads", "0 threads: give at least 1"));
    }
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("exitbench-compute".into())
            .spawn_scoped(s, move || -> Result<R> {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .use_current_thread()
                    .thread_name(|i| format!("exitbench-compute-{i}"))
                    .build()
                    .map_err(|e| Error::Internal(format!("cannot build the compute thread pool of {n} threads: {e}")))?;
                let caller = thread_id();
                let pinned = match pin {
                    Some(cpus) if !cpus.is_empty() => {
                        let chosen: Vec<usize> = (0..n).map(|i| cpus[i % cpus.len()]).collect();
                        let errors: Vec<String> = pool.broadcast(|ctx| pin_to(chosen[ctx.index()]).err()).into_iter().flatten().collect();
                        if let Some(e) = errors.first() {
                            return Err(Error::setting("--pin-cpus", e.clone()));
                        }
                        Some(chosen)
                    }
                    _ => None,
                };
                let mut ids = pool.broadcast(|_| thread_id());
                ids.sort_unstable();
                ids.dedup();
                let measured = ComputeThreads { os_threads: ids.len(), caller_computes: ids.contains(&caller), pinned };
                let out = f(&measured);
                drop(pool);
                Ok(out)
            })
            .map_err(|e| Error::Internal(format!("cannot start the compute thread: {e}")))?;
        handle.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The calling OS thread's id.
fn thread_id() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i64 }
}

/// Pins the calling thread to one CPU.
fn pin_to(cpu: usize) -> std::result::Result<(), String> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("CPU {cpu} is beyond the {} CPUs an affinity mask can name", libc::CPU_SETSIZE));
    }
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it (cpu < CPU_SETSIZE); the
    // call reads the set we own.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("cannot pin a thread to CPU {cpu}: {}", std::io::Error::last_os_error()))
    }
}

/// Parses `--pin-cpus`: a comma list of CPU numbers and ranges (`0,2`, `0-3`, `0-3,8`).
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let bad = |why: String| Error::setting("--pin-cpus", format!("'{s}': {why}"));
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let num = |x: &str| x.trim().parse::<usize>().map_err(|_| bad(format!("'{x}' is not a CPU number")));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b >= libc::CPU_SETSIZE as usize {
                    return Err(bad(format!("the range {a}-{b} is empty or beyond CPU {}", libc::CPU_SETSIZE - 1)));
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    if out.iter().any(|&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(bad(format!("CPU numbers stop at {}", libc::CPU_SETSIZE - 1)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn n_threads_are_n_os_threads_with_the_caller_among_them() {
        for n in [1, 2, 3] {
            let (inner, t) = with_compute_threads(n, None, |t| (rayon::current_num_threads(), t.clone())).unwrap();
            assert_eq!((t.os_threads, inner), (n, n), "{t:?}");
            assert!(t.caller_computes, "{t:?}");
        }
        // At one thread a parallel iterator stays on the calling thread (no hand-off).
        let inline = with_compute_threads(1, None, |_| {
            let me = thread_id();
            (0..1000).into_par_iter().map(|_| thread_id()).all(|id| id == me)
        })
        .unwrap();
        assert!(inline, "a parallel iterator left the calling thread at --threads 1");
        // Two groups in one process get their own counts (rayon's global pool keeps the first).
        let a = with_compute_threads(1, None, |_| rayon::current_num_threads()).unwrap();
        let b = with_compute_threads(2, None, |_| rayon::current_num_threads()).unwrap();
        assert_eq!((a, b), (1, 2));
    }

    #[test]
    fn cpu_lists_parse_pin_and_bad_ones_are_named() {
        assert_eq!(parse_cpu_list("0-3,8").unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(parse_cpu_list("1").unwrap(), vec![1]);
        for bad in ["", "a", "3-1", "0-99999"] {
            let e = parse_cpu_list(bad).unwrap_err().to_string();
            assert!(e.contains("--pin-cpus"), "{e}");
        }
        let t = with_compute_threads(1, Some(&[0]), |t| t.clone()).unwrap();
        assert_eq!(t.pinned, Some(vec![0]));
    }
}
