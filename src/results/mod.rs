//! Result records: the schema of one cell's results and the append-only JSONL file they live in
//! (`DIR/results.jsonl`, one line per cell, flushed and synced after each cell so a killed sweep
//! loses at most the cell in flight).

pub mod history;
pub mod merge;
pub mod record;
pub mod store;

pub use record::{Baseline, CellKey, CellRecord, CellStatus, SampleOutput, Stats, SCHEMA_VERSION};
