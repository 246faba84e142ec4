//! exitbench: measures what early exit buys a transformer decoder (speed, energy per token,
//! output quality) across backends, precisions and exit thresholds.
//!
//! Data flows one way: CLI args → validated plan → runner → backend (runs layers) + exit policy
//! (decides) + meter (measures) → result records → reports.

pub mod backend;
pub mod decode;
pub mod error;
pub mod exit;
pub mod metrics;
pub mod model;

pub use error::{Error, Result};

pub mod cli;
pub mod data;
pub mod train;

/// The embedded default model, relative to the repository root.
pub const DEFAULT_MODEL: &str = "models/cricket-6l";
pub mod testkit;
pub mod hardware;
pub mod meter;
pub mod report;
pub mod results;
pub mod sweep;
pub mod check;
pub mod calibrate;
pub mod card;
