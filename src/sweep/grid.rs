//! The grid: a plan expanded into configuration groups (model × backend × device × dtype ×
//! threads, which share one loaded model and one full-depth baseline) and their cells.

use super::plan::Plan;
use crate::backend::{default_threads, BackendKind, DeviceKind};
use crate::exit::ExitMode;
use crate::model::Precision;
use crate::results::record::runtime_label;
use std::path::PathBuf;

/// Cells sharing everything but the exit knobs, with their full-depth baseline first.
#[derive(Debug, Clone)]
pub struct Group {
    /// Index of the model in the plan.
    pub model: usize,
    /// Model directory.
    pub model_dir: PathBuf,
    /// Backend.
    pub backend: BackendKind,
    /// Device.
    pub device: DeviceKind,
    /// Precision.
    pub dtype: Precision,
    /// CPU threads.
    pub threads: usize,
    /// Exit modes, full depth first.
    pub modes: Vec<ExitMode>,
}

impl Group {
    /// A stable textual key (used to order and shard groups): the model directory and
    /// [`runtime_label`], the runtime fields of the cells' [`crate::results::CellKey`].
    pub fn key(&self) -> String {
        format!("{}|{}", self.model_dir.display(), runtime_label(self.backend, self.device, self.dtype, self.threads))
    }
}

/// Expands the plan into groups, in a deterministic order.
pub fn groups(plan: &Plan) -> Vec<Group> {
    let mut out = Vec::new();
    for (mi, m) in plan.models.iter().enumerate() {
        let threads = plan.threads.clone().unwrap_or_else(|| vec![default_threads(m.config.hidden_size)]);
        for &backend in &plan.backends {
            for &device in &plan.devices {
                for &dtype in &plan.dtypes {
                    for &t in &threads {
                        out.push(Group { model: mi, model_dir: m.dir.clone(), backend, device, dtype, threads: t, modes: modes(plan) });
                    }
                }
            }
        }
    }
    out
}

/// The exit modes of every group: full, static exits, oracle(s), then every early-exit policy.
pub fn modes(plan: &Plan) -> Vec<ExitMode> {
    let mut out = vec![ExitMode::Full];
    out.extend(plan.static_exits.iter().map(|&layer| ExitMode::Static { layer }));
    if plan.oracle {
        for &min_exit_layer in &plan.min_exit_layers {
            for &exit_interval in &plan.exit_intervals {
                out.push(ExitMode::Oracle { min_exit_layer, exit_interval });
            }
        }
    }
    out.extend(plan.policies().into_iter().map(ExitMode::Dynamic));
    out
}

/// A shard `I/N` (1-based I).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, 1..=count.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// Parses `I/N`.
    pub fn parse(s: &str) -> crate::Result<Shard> {
        let bad = || crate::Error::setting("--shard", format!("`{s}` is not I/N with 1 ≤ I ≤ N"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The groups of this shard: sorted by key, every count-th from index − 1.
    pub fn select(&self, mut groups: Vec<Group>) -> Vec<Group> {
        groups.sort_by_key(Group::key);
        groups.into_iter().enumerate().filter(|(i, _)| i % self.count == self.index - 1).map(|(_, g)| g).collect()
    }
}
