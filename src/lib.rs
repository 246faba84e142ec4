//! exitbench: measures what early exit buys a transformer decoder (speed, energy per token,
//! output quality) across backends, precisions and exit thresholds.
//!
//! Data flows one way: CLI args → validated plan → runner → backend (runs layers) + exit policy
//! (decides) + meter (measures) → result records → reports.

pub mod backend;
pub mod decode;
pub mod decode_bytes;
pub mod error;
pub mod expf;
pub mod exit;
pub mod head;
pub mod lines;
pub mod names;
pub mod hex;
pub mod runtime_info;
pub mod metrics;
pub mod model;

pub use error::{Error, Result};

pub mod cli;
pub mod data;
pub mod train;

/// The embedded default model, relative to the repository root.
pub const DEFAULT_MODEL: &str = "models/cricket-6l";

/// Where the default model is: [`DEFAULT_MODEL`] when the working directory is the repository
/// root (the usual case, and the name records keep), else the copy in the source tree this binary
/// was built from, so `exitbench run` works from any directory on the machine that built it.
pub fn default_model() -> String {
    let built_from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL);
    if std::path::Path::new(DEFAULT_MODEL).is_dir() || !built_from.is_dir() {
        DEFAULT_MODEL.to_string()
    } else {
        built_from.display().to_string()
    }
}
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod hardware;
pub mod interrupt;
pub mod meter;
pub mod report;
pub mod results;
pub mod sweep;
pub mod check;
pub mod ab;
pub mod calibrate;
pub mod card;
