//! Quality and statistics: ROUGE (identical to Google's rouge-score) and bootstrap intervals.

pub mod rouge;
pub mod stats;
