//! Sweeps: the validated plan, the grid of cells, sharding, the rounds cells are interleaved
//! in, and the runner that measures them and appends their records.

pub mod assemble;
pub mod cell;
pub mod energy;
pub mod exit_trace;
pub mod fingerprint;
pub mod grid;
pub mod plan;
pub mod planfile;
pub mod rounds;
pub mod runner;

pub use grid::{Group, Shard};
pub use plan::{Plan, RawSettings};
