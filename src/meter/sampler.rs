//! A background polling thread that owns its state: `tick` runs every interval (the interval it
//! returns), and [`Sampler::stop`] wakes the thread at once, joins it and hands the state back.
//! Used by RAPL (wraparound polling) and NVML instant power (sampling).

use crate::error::{Error, Result};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running polling thread over a state `S`.
pub struct Sampler<S: Send + 'static> {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<S>>,
}

impl<S: Send + 'static> Sampler<S> {
    /// Starts a thread that sleeps `first`, then calls `tick(&mut state)` and sleeps the interval
    /// it returns, until stopped.
    pub fn start<F>(name: &str, first: Duration, mut state: S, mut tick: F) -> Result<Sampler<S>>
    where
        F: FnMut(&mut S) -> Duration + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut wait = first;
                loop {
                    match rx.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => wait = tick(&mut state),
                        _ => return state,
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the {name} thread: {e}")))?;
        Ok(Sampler { stop: Some(tx), handle: Some(handle) })
    }

    /// Stops the thread (without waiting out its interval) and returns its state.
    pub fn stop(mut self) -> Result<S> {
        self.stop.take();
        let h = self.handle.take().ok_or_else(|| Error::Internal("sampler already stopped".into()))?;
        h.join().map_err(|_| Error::Internal("a meter's sampling thread panicked".into()))
    }
}

impl<S: Send + 'static> Drop for Sampler<S> {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_stops_promptly() {
        let s = Sampler::start("test-sampler", Duration::from_millis(1), 0u32, |n| {
            *n += 1;
            Duration::from_millis(1)
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let t = std::time::Instant::now();
        let n = s.stop().unwrap();
        assert!(n > 0);
        assert!(t.elapsed() < Duration::from_millis(500));
    }
}
