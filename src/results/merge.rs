//! Combining results from several runs or machines into one set: records are kept whole (each
//! with its own hardware block); a cell present twice keeps its first occurrence.

use super::record::CellRecord;
use std::collections::HashSet;

/// Merged records and the number of duplicates dropped.
pub fn merge(inputs: Vec<Vec<CellRecord>>) -> (Vec<CellRecord>, usize) {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut dropped = 0;
    for records in inputs {
        for r in records {
            if seen.insert(r.cell_id.clone()) {
                out.push(r);
            } else {
                dropped += 1;
            }
        }
    }
    (out, dropped)
}
