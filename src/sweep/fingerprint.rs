//! What identifies a cell: its key (model and weights, dataset, runtime, exit knobs, machine) and
//! the hash of the examples it ran; and the empty record every outcome starts from.

use crate::results::{Baseline, SCHEMA_VERSION};
use crate::results::record::{CellKey, CellRecord, CellStatus, Energy, Stats, TimeSplit};
use super::grid::Group;
use super::plan::Plan;
use crate::hardware::Hardware;
use crate::hex;
use crate::exit::ExitMode;
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// A cell of a group: an exit mode, timed with or without the time split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellMode {
    /// How deep tokens go.
    pub mode: ExitMode,
    /// False for the split-cost row (full depth timed as one piece).
    pub time_split: bool,
    /// Self-speculative decoding (with `mode` full depth): the cell's output is full depth's.
    pub speculation: Option<crate::decode::speculative::Speculation>,
    /// Rows decoded together (None: batch size 1).
    pub batch: Option<CellBatch>,
}

/// A cell's batch: its size (above 1) and, for an early-exit cell, the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellBatch {
    /// Rows per batch.
    pub size: usize,
    /// How rows wanting different exit layers are served (early-exit cells only).
    pub policy: Option<crate::decode::batch::BatchPolicy>,
}

impl CellMode {
    /// Rows per batch (1 unless batched).
    pub fn batch_size(&self) -> usize {
        self.batch.map_or(1, |b| b.size)
    }
}

impl CellMode {
    /// The cell's kind of baseline: `full` (or `full (no time split)`), `static`, `oracle`, or
    /// `none` for an early-exit setting.
    pub fn baseline(&self) -> Baseline {
        if self.speculation.is_some() {
            return Baseline::Speculative;
        }
        match self.mode {
            ExitMode::Full if !self.time_split => Baseline::FullUnsplit,
            ExitMode::Full => Baseline::Full,
            ExitMode::Dynamic(_) => Baseline::None,
            ExitMode::Static { .. } => Baseline::Static,
            ExitMode::Oracle { .. } => Baseline::Oracle,
        }
    }
}

/// What every cell of one configuration group shares.
pub struct GroupCtx<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// The group.
    pub group: &'a Group,
    /// The machine (measured once per run).
    pub hardware: &'a Hardware,
    /// Hash of the plan's examples.
    pub dataset_hash: &'a str,
}

impl GroupCtx<'_> {
    /// The key of `cell` in this group.
    pub fn key(&self, cell: &CellMode, weights_hash: &str) -> CellKey {
        let g = self.group;
        let (measure, threshold, schedule, min, interval, static_layer) = match &cell.mode {
            ExitMode::Full => (None, None, None, None, None, None),
            ExitMode::Static { layer } => (None, None, None, None, None, Some(*layer)),
            ExitMode::Oracle { min_exit_layer, exit_interval } => (None, None, None, Some(*min_exit_layer), Some(*exit_interval), None),
            ExitMode::Dynamic(p) => (Some(p.measure), Some(p.threshold), Some(p.schedule), Some(p.min_exit_layer), Some(p.exit_interval), None),
        };
        CellKey {
            model: g.model_dir.display().to_string(),
            weights_hash: weights_hash.to_string(),
            dataset: self.plan.dataset.name(),
            dataset_hash: self.dataset_hash.to_string(),
            backend: g.backend,
            device: g.device,
            dtype: g.dtype,
            threads: g.threads,
            measure,
            threshold,
            schedule,
            min_exit_layer: min,
            exit_interval: interval,
            baseline: cell.baseline(),
            static_layer,
            machine: self.hardware.machine_id.clone(),
            draft_layer: cell.speculation.map(|s| s.draft_layer),
            draft_tokens: cell.speculation.map(|s| s.draft_tokens),
            draft_cache: cell.speculation.map(|s| s.cache),
            draft_stop: cell.speculation.and_then(|s| s.stop),
            exit_trace: match cell.mode {
                ExitMode::Dynamic(_) => self.plan.exit_trace.as_ref().map(|t| t.hash.clone()),
                _ => None,
            },
            batch_size: cell.batch.map(|b| b.size),
            batch_policy: cell.batch.and_then(|b| b.policy),
            max_new_tokens: self.plan.max_new_tokens,
        }
    }

    /// A record with the key, the plan and the machine filled in and nothing measured.
    pub fn base_record(&self, key: CellKey, num_layers: usize, status: CellStatus, reason: Option<String>) -> CellRecord {
        let batch_size = key.batch();
        CellRecord {
            schema_version: SCHEMA_VERSION,
            exitbench_version: env!("CARGO_PKG_VERSION").into(),
            cell_id: key.id(),
            key,
            status,
            reason,
            num_layers,
            samples: 0,
            tokens: 0,
            avg_layers: 0.0,
            exit_histogram: vec![0; num_layers],
            prefill_s: Stats::default(),
            ms_per_token: Stats::default(),
            tokens_per_s: Stats::default(),
            duration_s: Stats::default(),
            time_split: TimeSplit::default(),
            energy: Energy { source: crate::meter::Sources::none(), ..Default::default() },
            peak_mem_mb: 0.0,
            peak_device_mem_mb: None,
            device_mem_scope: None,
            rouge: Default::default(),
            key_facts_exact: None,
            bookkeeping_s: 0.0,
            generate_s: 0.0,
            compute_dtype: None,
            bytes_per_token: None,
            speculation: None,
            achieved_gb_s: None,
            speedup: None,
            rounds: 0,
            round_samples: 0,
            layer_us: Vec::new(),
            layer_us_source: None,
            runtime: None,
            outputs: Vec::new(),
            random_weights: self.plan.random_weights.is_some(),
            batch_size,
            batch: None,
            seed: self.plan.seed,
            config: serde_json::to_value(&self.plan.resolved).unwrap_or_default(),
            hardware: self.hardware.clone(),
            finished_at: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        }
    }
}

/// SHA-256 (first 16 hex digits) of the plan's examples (ids, prompts, references).
pub fn hash_examples(plan: &Plan) -> String {
    let mut h = Sha256::new();
    for ex in &plan.examples {
        h.update(ex.id.as_bytes());
        h.update([0]);
        h.update(ex.prompt.as_bytes());
        h.update([0]);
        h.update(ex.reference.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}
