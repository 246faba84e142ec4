//! Early-exit decisions: confidence measures, threshold schedules, and the exit policy that
//! combines them with the exit points (minimum exit layer, exit interval).

pub mod measure;
pub mod policy;
pub mod schedule;

pub use measure::Measure;
pub use policy::{ExitMode, ExitPolicy};
pub use schedule::Schedule;
