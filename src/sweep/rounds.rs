//! Rounds: how a group's cells share the machine's time. Every cell runs one block of samples,
//! then every cell the next block, with the cell order shuffled per round (as Google Benchmark's
//! random interleaving does), so drift of a shared machine hits every cell alike and a sample's
//! full-depth and early-exit times, measured in the same round, can be paired. Each cell's round
//! is appended to `rounds.jsonl` as it ends: a killed sweep loses at most the round in flight and
//! `--resume` continues at the first unfinished round.

use crate::decode::StopReason;
use crate::error::Result;
use crate::results::store;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// File of the round records inside a results directory.
pub use crate::results::store::ROUNDS_FILE;

/// Samples per round where no hardware meter needs a minimum window.
pub const DEFAULT_ROUND_SAMPLES: usize = 2;

/// The smallest block of at least `block` samples that every batch size divides.
pub fn whole_batches(block: usize, sizes: impl IntoIterator<Item = usize>) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let lcm = sizes.into_iter().fold(1usize, |l, b| l / gcd(l, b.max(1)) * b.max(1));
    block.div_ceil(lcm) * lcm
}

crate::named_enum! {
    /// The order cells take within the rounds.
    pub enum RoundOrder: "round order", "--round-order" {
        /// Round by round, every cell of the group in a shuffled order per round.
        Interleaved = "interleaved",
        /// Each cell over all its rounds before the next cell (the old way: drift lands in the
        /// speedups; for comparisons only).
        Sequential = "sequential",
    }
}

#[allow(clippy::derivable_impls)] // named_enum! defines the enum; Default is not among its derives
impl Default for RoundOrder {
    fn default() -> Self {
        RoundOrder::Interleaved
    }
}

/// One round: which samples every cell runs, in which repetition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// 0-based index within the group.
    pub index: usize,
    /// The repetition the round belongs to.
    pub repetition: usize,
    /// The block of sample indices.
    pub samples: Range<usize>,
}

/// The rounds of `n` samples in blocks of `block`, `repetitions` times over.
pub fn rounds(n: usize, block: usize, repetitions: usize) -> Vec<Round> {
    let block = block.clamp(1, n.max(1));
    let blocks = n.div_ceil(block);
    (0..repetitions * blocks)
        .map(|index| {
            let b = index % blocks;
            Round { index, repetition: index / blocks, samples: b * block..((b + 1) * block).min(n) }
        })
        .collect()
}

/// The steps (round index, cell index) of a group in the order they run.
pub fn steps(rounds: usize, cells: usize, seed: u64, order: RoundOrder) -> Vec<(usize, usize)> {
    match order {
        RoundOrder::Sequential => (0..cells).flat_map(|c| (0..rounds).map(move |r| (r, c))).collect(),
        RoundOrder::Interleaved => (0..rounds)
            .flat_map(|r| {
                let mut cells: Vec<usize> = (0..cells).collect();
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                cells.shuffle(&mut rng);
                cells.into_iter().map(move |c| (r, c))
            })
            .collect(),
    }
}

/// One sample of one cell in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRun {
    /// Index of the example in the plan.
    pub sample: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated token ids (the first from the prefill).
    pub ids: Vec<u32>,
    /// Exit layer of each generated token.
    pub exits: Vec<usize>,
    /// Confidence at exit of each token (traced samples only; else empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub confidences: Vec<Option<f32>>,
    /// Why generation stopped.
    pub stop: StopReason,
    /// Prefill seconds (first pass).
    pub prefill_s: f64,
    /// Decode seconds summed over the window's passes.
    pub decode_s: f64,
    /// Decoded tokens of one pass (every generated token but the first).
    pub decode_tokens: usize,
    /// Seconds in decoder layers, exit checks and propagation (first pass).
    pub split: [f64; 3],
    /// Drafts, acceptances and the draft / verify / rollback split (speculative cells, first pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation: Option<crate::decode::speculative::SpeculationStats>,
    /// Seconds gathering rows in or out of a batch attributed to this sample (batched cells,
    /// first pass; `decode_s` and `split` are then the sample's shares of its batch's steps).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gather_s: f64,
    /// Seconds of the batch steps that decoded this sample's tokens: its latency (batched cells,
    /// first pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_s: Option<f64>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// A batched cell's steps in one round (first pass).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BatchTally {
    /// Whether the backend read each weight once for all rows.
    pub shares_weight_reads: bool,
    /// Decode steps.
    pub steps: usize,
    /// Rows decoded, summed over steps.
    pub row_steps: usize,
    /// Layer runs summed over rows.
    pub row_layers: u64,
    /// Layer runs of rows that had already exited.
    pub wasted_row_layers: u64,
    /// Rows held past the exit point where their own measure cleared.
    pub held_row_tokens: u64,
    /// Seconds gathering rows.
    pub gather_s: f64,
    /// Seconds of the steps.
    pub decode_s: f64,
    /// Weight reads of the steps' calls (see `BatchStep::reads`; absent in older records).
    #[serde(default)]
    pub reads: crate::decode::StepWork,
    /// Cached positions attended, summed over the steps' rows and layers.
    #[serde(default)]
    pub attended: u64,
    /// Tokens the steps decoded (absent in older records, where it equals `row_steps`).
    #[serde(default)]
    pub tokens: u64,
    /// Positions the steps embedded (absent in older records: `row_steps`).
    #[serde(default)]
    pub embedded: u64,
    /// Speculative passes' verified positions (0 in other cells).
    #[serde(default)]
    pub verified_positions: u64,
    /// What padded verification passes would have run: rows × the longest segment, summed.
    #[serde(default)]
    pub padded_positions: u64,
    /// Positions run through decoder layers, summed over the steps' layer calls (absent in
    /// older records).
    #[serde(default)]
    pub layer_positions: u64,
}

impl BatchTally {
    /// Adds another tally (another round's) to this one.
    pub fn merge(&mut self, b: &BatchTally) {
        self.shares_weight_reads = b.shares_weight_reads;
        self.steps += b.steps;
        self.row_steps += b.row_steps;
        self.row_layers += b.row_layers;
        self.wasted_row_layers += b.wasted_row_layers;
        self.held_row_tokens += b.held_row_tokens;
        self.gather_s += b.gather_s;
        self.decode_s += b.decode_s;
        self.reads += b.reads;
        self.attended += b.attended;
        self.tokens += b.tokens;
        self.embedded += b.embedded;
        self.verified_positions += b.verified_positions;
        self.padded_positions += b.padded_positions;
        self.layer_positions += b.layer_positions;
    }

    /// Adds the steps of one or more batches.
    pub fn add(&mut self, steps: &[crate::decode::batch::BatchStep], shared: bool) {
        self.shares_weight_reads = shared;
        for s in steps {
            self.steps += 1;
            self.row_steps += s.rows;
            self.row_layers += s.row_layers as u64;
            self.wasted_row_layers += s.wasted_row_layers as u64;
            self.held_row_tokens += s.held_row_tokens as u64;
            self.gather_s += s.gather_s;
            self.decode_s += s.total_s();
            self.reads += s.reads;
            self.attended += s.attended as u64;
            self.tokens += s.tokens as u64;
            self.embedded += s.embedded as u64;
            self.verified_positions += s.verified_positions as u64;
            self.padded_positions += s.padded_positions as u64;
            self.layer_positions += s.layer_positions as u64;
        }
    }
}

impl SampleRun {
    /// Decode ms/token over the passes (None without decoded tokens).
    pub fn ms_per_token(&self, passes: usize) -> Option<f64> {
        (self.decode_tokens > 0 && self.decode_s > 0.0).then(|| self.decode_s * 1e3 / (self.decode_tokens * passes.max(1)) as f64)
    }
}

/// What the energy window of one cell-round read (all its passes together).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WindowJoules {
    /// `rapl`, `nvml`, `estimate`...
    pub source: crate::meter::Sources,
    /// True when modelled from CPU time.
    pub estimate: bool,
    /// Gross joules of the counted meters.
    pub total_j: f64,
    /// Gross minus idle power × duration.
    pub net_j: f64,
    /// Window seconds.
    pub duration_s: f64,
    /// GPU board, CPU package (or psys) and DRAM joules where metered.
    pub gpu_j: Option<f64>,
    /// CPU package (or psys) joules.
    pub cpu_j: Option<f64>,
    /// DRAM joules.
    pub dram_j: Option<f64>,
    /// Meter warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One cell's measurements in one round, appended to `rounds.jsonl` when that cell's round ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// The cell.
    pub cell_id: String,
    /// Round index within the group.
    pub round: usize,
    /// Repetition of the round.
    pub repetition: usize,
    /// The block's samples.
    pub samples: Vec<SampleRun>,
    /// Passes over the block inside the energy window (the --min-window rule).
    pub passes: usize,
    /// Seconds inside `generate`, all passes.
    pub generate_s: f64,
    /// Wall seconds of the cell's round (generation plus the harness's own work).
    pub wall_s: f64,
    /// The energy window.
    pub energy: WindowJoules,
    /// Per layer index, seconds summed over the first pass's decoded tokens (when profiled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_s: Vec<f64>,
    /// Per layer index, decoded tokens that ran it (when profiled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_runs: Vec<u64>,
    /// Peak resident memory during the round, MiB.
    pub peak_mem_mb: f64,
    /// Peak GPU memory during the round, MiB, and what it covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_device_mem: Option<(f64, String)>,
    /// A batched cell's steps (first pass); None at batch size 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchTally>,
}

/// The round records of `dir` (none when the file does not exist), the last of each
/// (cell, round) kept: a round rerun after an interruption replaces the partial one.
pub fn read(dir: &Path) -> Result<HashMap<(String, usize), RoundRecord>> {
    let path = dir.join(ROUNDS_FILE);
    if !path.exists() {
        return Ok(HashMap::new());
    }
    store::repair_tail(&path)?;
    let recs: Vec<RoundRecord> = store::read_lines(&path, "round record", |_| Ok(()))?;
    Ok(recs.into_iter().map(|r| ((r.cell_id.clone(), r.round), r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_cover_every_sample_of_every_repetition_once() {
        let r = rounds(7, 3, 2);
        assert_eq!(r.len(), 6);
        assert_eq!(r[0].samples, 0..3);
        assert_eq!(r[2].samples, 6..7);
        assert_eq!((r[3].repetition, r[3].samples.clone()), (1, 0..3));
        assert_eq!(rounds(4, 10, 1), vec![Round { index: 0, repetition: 0, samples: 0..4 }]);
    }

    #[test]
    fn interleaved_steps_vary_the_cell_order_and_run_each_cell_once_per_round() {
        let s = steps(4, 5, 0, RoundOrder::Interleaved);
        assert_eq!(s.len(), 20);
        let orders: Vec<Vec<usize>> = (0..4).map(|r| s.iter().filter(|x| x.0 == r).map(|x| x.1).collect()).collect();
        for o in &orders {
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        }
        assert!(orders.windows(2).any(|w| w[0] != w[1]), "{orders:?}");
        // Rounds run in order.
        assert!(s.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(steps(2, 2, 0, RoundOrder::Sequential), vec![(0, 0), (1, 0), (0, 1), (1, 1)]);
    }
}
