//! `--exit-trace DIR`: early-exit cells that replay the exit layers an earlier run recorded
//! instead of following their own confidences, so that batching policies can be costed on a
//! model that cannot exit by itself (random weights of a large shape): each row exits at the
//! first exit point at or after its recorded layer, scaled from the recording model's depth to
//! this one's, while the measure still runs and costs what it costs.
//!
//! The trace is a results directory (`results.jsonl` and `rounds.jsonl`) of a run on the same
//! dataset at batch size 1; each early-exit setting of the new run takes the exits of the
//! recorded cell with the same measure, threshold, schedule and exit knobs, sample by sample.

use crate::decode::batch::ExitReplay;
use crate::error::{Error, Result};
use crate::exit::ExitPolicy;
use crate::results::{store, Baseline, CellStatus};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Exit layers recorded by an earlier run, by setting and sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitTrace {
    /// The results directory they were read from.
    pub source: PathBuf,
    /// SHA-256 (first 16 hex digits) of its round records: the replaying cells' key field.
    pub hash: String,
    /// Layers of the model that recorded them.
    pub layers: usize,
    /// Per recorded early-exit setting, each sample's exit layers at its decode steps.
    pub settings: Vec<(ExitPolicy, BTreeMap<usize, Vec<usize>>)>,
}

impl ExitTrace {
    /// Reads the batch-size-1 early-exit cells of the results directory `dir` (or of the
    /// directory of a `results.jsonl` given instead) and their first repetition's per-sample
    /// exits.
    pub fn read(dir: &Path) -> Result<Self> {
        let dir = if dir.is_file() { dir.parent().unwrap_or(Path::new(".")) } else { dir };
        let records = store::read(dir)?;
        let rounds_file = dir.join(super::rounds::ROUNDS_FILE);
        let bytes = std::fs::read(&rounds_file).map_err(|e| Error::io(&rounds_file, e))?;
        let hash = {
            use sha2::{Digest, Sha256};
            let d = Sha256::digest(&bytes);
            d.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>()
        };
        let rounds = super::rounds::read(dir)?;
        let mut settings = Vec::new();
        let mut layers = None;
        for r in records.iter().filter(|r| r.key.baseline == Baseline::None && r.key.batch() == 1 && r.status == CellStatus::Ok) {
            let k = &r.key;
            let (Some(measure), Some(threshold), Some(schedule)) = (k.measure, k.threshold, k.schedule) else { continue };
            let policy = ExitPolicy { measure, threshold, schedule, min_exit_layer: k.min_exit_layer.unwrap_or(1), exit_interval: k.exit_interval.unwrap_or(1) };
            let mut by_sample = BTreeMap::new();
            for rec in rounds.values().filter(|x| x.cell_id == r.cell_id && x.repetition == 0) {
                for s in &rec.samples {
                    by_sample.insert(s.sample, s.exits.iter().skip(1).copied().collect::<Vec<usize>>());
                }
            }
            if by_sample.is_empty() {
                continue;
            }
            match layers {
                Some(l) if l != r.num_layers => {
                    return Err(Error::setting("--exit-trace", format!("{}: cells of models with {l} and {} layers; a trace must come from one model", dir.display(), r.num_layers)));
                }
                _ => layers = Some(r.num_layers),
            }
            settings.push((policy, by_sample));
        }
        let layers = layers.ok_or_else(|| Error::setting("--exit-trace", format!("{}: no finished early-exit cell at batch size 1 with recorded rounds", dir.display())))?;
        Ok(ExitTrace { source: dir.to_path_buf(), hash, layers, settings })
    }

    /// The recorded exits of `policy` for `samples` (in order), scaled to a model of `layers`
    /// layers (layer e of L_trace becomes ⌈e · layers ÷ L_trace⌉); None when the trace has no
    /// such setting or lacks one of the samples.
    pub fn replay(&self, policy: &ExitPolicy, samples: &[usize], layers: usize) -> Option<ExitReplay> {
        let (_, by_sample) = self.settings.iter().find(|(p, _)| p == policy)?;
        let rows = samples.iter().map(|i| by_sample.get(i).map(|exits| exits.iter().map(|&e| (e * layers).div_ceil(self.layers)).collect())).collect::<Option<Vec<Vec<usize>>>>()?;
        Some(ExitReplay { layers: rows })
    }

    /// Checks that every setting in `policies` was recorded for samples `0..samples`.
    pub fn check_covers(&self, policies: &[ExitPolicy], samples: usize) -> Result<()> {
        let all: Vec<usize> = (0..samples).collect();
        for p in policies {
            if self.replay(p, &all, self.layers).is_none() {
                let have: Vec<String> = self.settings.iter().map(|(q, s)| format!("{}@{} ({} samples)", q.measure, q.threshold, s.len())).collect();
                return Err(Error::setting(
                    "--exit-trace",
                    format!("{} has no recorded exits of {}@{} for samples 0..{samples} (it has: {})", self.source.display(), p.measure, p.threshold, if have.is_empty() { "none".into() } else { have.join(", ") }),
                ));
            }
        }
        Ok(())
    }
}
