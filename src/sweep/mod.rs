//! Sweeps: the validated plan, the grid of cells, sharding, and the runner that measures each
//! cell and appends its record.

pub mod grid;
pub mod plan;
pub mod runner;

pub use grid::{Group, Shard};
pub use plan::{Plan, RawSettings};
