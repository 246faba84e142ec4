//! Datasets: the built-in synthetic summarization task and user JSONL files.

pub mod dataset;
pub mod synth;

pub use dataset::{DatasetSpec, Example};
