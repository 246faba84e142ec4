//! The library's error type. Every variant says which input (file, field, line, flag) is wrong
//! and how; `is_bad_input` tells the binary which errors map to exit code 2.

use std::path::PathBuf;

/// Errors raised by the exitbench library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory the user named could not be read. `message` says what was wrong
    /// where no system error did; otherwise the system error is the `source` (so `{err:#}` and
    /// [`Error::report`] print `path: cause` once).
    #[error("{path}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Io {
        path: PathBuf,
        message: String,
        #[source]
        source: Option<std::io::Error>,
    },
    /// A user-supplied file has malformed content (JSON, TOML, JSONL line, tensor...).
    #[error("{path}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    BadFile { path: PathBuf, line: Option<usize>, message: String },
    /// A model directory is incomplete or inconsistent (missing tensor, wrong shape...).
    #[error("model {dir}: {message}")]
    BadModel { dir: PathBuf, message: String },
    /// A flag or setting has an invalid value.
    #[error("{field}: {message}")]
    BadSetting { field: String, message: String },
    /// A request the model cannot serve (prompt too long, no exit classifier...).
    #[error("{0}")]
    Unsupported(String),
    /// A failure inside a runtime (candle, ONNX Runtime) that is not attributable to user input:
    /// `message` says what failed (empty when the runtime's own error says it all), `source` is
    /// the runtime's error, printed after it in a chain (`{err:#}`, [`Error::report`]).
    #[error("{backend}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Backend {
        backend: &'static str,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// The user (Ctrl-C) or the scheduler (SIGTERM) asked the run to stop.
    #[error("interrupted")]
    Interrupted,
    /// A sweep stopped on request with `done` of its `total` cells finished and written, and
    /// `rounds` cell-rounds of unfinished cells kept for `--resume`.
    #[error("interrupted: {done} of {total} cells done, {rounds} cell-round(s) of unfinished cells kept")]
    Stopped { done: usize, total: usize, rounds: usize },
    /// Any other internal failure.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// True when the error is caused by user input (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::BadFile { .. }
                | Error::BadModel { .. }
                | Error::BadSetting { .. }
                | Error::Unsupported(_)
        )
    }

    /// The process exit code for this error: 2 for bad input, 130 when interrupted, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Interrupted | Error::Stopped { .. } => 130,
            e if e.is_bad_input() => 2,
            _ => 1,
        }
    }

    /// Shorthand for a bad setting.
    pub fn setting(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::BadSetting { field: field.into(), message: message.into() }
    }

    /// Shorthand for a malformed file, optionally at a line (1-based).
    pub fn file(path: impl Into<PathBuf>, line: Option<usize>, message: impl Into<String>) -> Self {
        Error::BadFile { path: path.into(), line, message: message.into() }
    }

    /// A runtime's error kept as the cause (`message`: what failed, or empty).
    pub fn backend(backend: &'static str, message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Backend { backend, message: message.into(), source: Some(Box::new(source)) }
    }

    /// The error with its causes, `outer: inner: ...` (as `{:#}` of an anyhow chain): the text
    /// kept where an error becomes a record's reason.
    pub fn report(&self) -> String {
        let mut s = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            s.push_str(&format!(": {c}"));
            cause = c.source();
        }
        s
    }

    /// The `classifier` measure asked of a model without exit classifiers (one message for the
    /// decode loop, both backends and the sweep's `unsupported` rows).
    pub fn no_classifiers() -> Self {
        Error::Unsupported("the `classifier` measure needs exit classifiers, and this model has none (train them with `exitbench train --classifier-only`)".into())
    }

    /// Shorthand for an I/O failure on a path.
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io { path: path.into(), message: String::new(), source: Some(err) }
    }
}

/// Result alias of the library.
pub type Result<T> = std::result::Result<T, Error>;
