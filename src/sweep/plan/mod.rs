//! From raw settings (flags, a TOML file, defaults) to a validated `Plan`, checked before any
//! model is loaded: unknown keys, unknown measures, thresholds outside [0, 1], exit layers beyond
//! a model's depth, an empty grid or an unreadable dataset line are all reported here.
//!
//! One job per file: [`schema`] (the settings' clap + serde definition and defaults), `lenient`
//! (TOML values written as the flags write them), [`toml_file`] (the TOML reader), [`layer`]
//! (defaults ← file ← flags), [`thresholds`] (the `start:stop:step` parser), [`dedup`] and
//! [`validate`] (settings to a [`Plan`]).

mod lenient;
pub mod dedup;
pub mod layer;
pub mod schema;
pub mod thresholds;
pub mod toml_file;
pub mod validate;

pub use dedup::{dedup_by_key, dedup_keep_order};
pub use schema::{EnergyArgs, RawSettings, DEFAULT_MAX_NEW_TOKENS, MAX_BATCH_SIZE, MAX_SAMPLES};
pub use thresholds::{parse_thresholds, MAX_RANGE_THRESHOLDS};

use crate::backend::{BackendKind, DeviceKind};
use crate::data::{DatasetSpec, Example};
use crate::exit::{Measure, Schedule};
use crate::model::{LlamaConfig, Precision};
use std::path::PathBuf;

/// A model of the plan, with its config read and checked.
#[derive(Debug, Clone)]
pub struct PlannedModel {
    /// Directory.
    pub dir: PathBuf,
    /// Its config.
    pub config: LlamaConfig,
}

/// A validated sweep.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Models.
    pub models: Vec<PlannedModel>,
    /// Backends.
    pub backends: Vec<BackendKind>,
    /// Devices.
    pub devices: Vec<DeviceKind>,
    /// Precisions.
    pub dtypes: Vec<Precision>,
    /// Thread counts (None: each model's default).
    pub threads: Option<Vec<usize>>,
    /// Measures.
    pub measures: Vec<Measure>,
    /// Thresholds.
    pub thresholds: Vec<f64>,
    /// Schedules.
    pub schedules: Vec<Schedule>,
    /// Minimum exit layers.
    pub min_exit_layers: Vec<usize>,
    /// Exit intervals.
    pub exit_intervals: Vec<usize>,
    /// Static exit baselines.
    pub static_exits: Vec<usize>,
    /// Oracle analysis on or off.
    pub oracle: bool,
    /// Self-speculative settings (empty: no speculative cells).
    pub speculations: Vec<crate::decode::speculative::Speculation>,
    /// Batch sizes (1 alone unless asked for).
    pub batch_sizes: Vec<usize>,
    /// Batch policies of early-exit cells at batch sizes above 1.
    pub batch_policies: Vec<crate::decode::batch::BatchPolicy>,
    /// The early-exit settings (measure, threshold) that also run at batch sizes above 1; None:
    /// every cell of the grid.
    pub batch_settings: Option<Vec<(crate::exit::Measure, f64)>>,
    /// Exit layers replayed by every early-exit cell (`--exit-trace`; None: each cell follows
    /// its own confidences).
    pub exit_trace: Option<crate::sweep::exit_trace::ExitTrace>,
    /// Dataset.
    pub dataset: DatasetSpec,
    /// The examples (loaded and validated up front).
    pub examples: Vec<Example>,
    /// Max new tokens.
    pub max_new_tokens: usize,
    /// Warm-up samples per cell.
    pub warmup: usize,
    /// Repetitions per cell.
    pub repetitions: usize,
    /// Samples per round (None: the default for the meters found).
    pub round_samples: Option<usize>,
    /// The cells' order within the rounds.
    pub order: crate::sweep::rounds::RoundOrder,
    /// The split-cost row (None: on for CUDA devices).
    pub split_cost_row: Option<bool>,
    /// CPUs candle's computing threads are pinned to (None: not pinned).
    pub pin_cpus: Option<Vec<usize>>,
    /// Seed.
    pub seed: u64,
    /// Output directory.
    pub out: PathBuf,
    /// Traced samples per cell.
    pub trace_samples: usize,
    /// Random weights seed.
    pub random_weights: Option<u64>,
    /// Energy measurement settings.
    pub energy: EnergySettings,
    /// Seconds of cooldown between cells.
    pub cooldown_s: f64,
    /// What the user should know before the sweep starts (e.g. fewer examples than --samples).
    pub warnings: Vec<String>,
    /// The resolved settings (recorded with every result).
    pub resolved: RawSettings,
}

impl Plan {
    /// Every early-exit policy of the grid, in grid order: measures × schedules × first exit
    /// layers × exit intervals × thresholds.
    pub fn policies(&self) -> Vec<crate::exit::ExitPolicy> {
        let mut out = Vec::new();
        for &measure in &self.measures {
            for &schedule in &self.schedules {
                for &min_exit_layer in &self.min_exit_layers {
                    for &exit_interval in &self.exit_intervals {
                        for &threshold in &self.thresholds {
                            out.push(crate::exit::ExitPolicy { measure, threshold, schedule, min_exit_layer, exit_interval });
                        }
                    }
                }
            }
        }
        out
    }
}

/// How energy is measured in a sweep.
#[derive(Debug, Clone)]
pub struct EnergySettings {
    /// Meter options (powercap root, TDP override...).
    pub meters: crate::meter::MeterOptions,
    /// Idle baseline seconds (0 skips).
    pub idle_seconds: f64,
    /// Minimum energy window per repetition, seconds (0 disables).
    pub min_window: f64,
    /// Grid intensity.
    pub carbon: crate::meter::carbon::Intensity,
    /// PUE.
    pub pue: f64,
}

/// The local time as a sortable, readable directory name part: `2026-12-01_10-15-44`.
pub fn local_timestamp() -> String {
    jiff::Zoned::now().strftime("%Y-%m-%d_%H-%M-%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_ranges_expand_inclusively() {
        let t = parse_thresholds(&["0.9:0.5:0.1".into(), "0.95".into(), "0.7".into()]).unwrap();
        assert_eq!(t, vec![0.9, 0.8, 0.7, 0.6, 0.5, 0.95], "0.7 twice counts once");
        let e = parse_thresholds(&["0:1e9:1".into()]).unwrap_err().to_string();
        assert!(e.contains("outside [0, 1]"), "{e}");
        let e = parse_thresholds(&["0:1:1e-12".into()]).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
        assert!(parse_thresholds(&["1.2".into()]).unwrap_err().to_string().contains("outside [0, 1]"));
        assert!(parse_thresholds(&["0.1:0.5:0".into()]).is_err());
    }

    #[test]
    fn flags_override_file_values() {
        let file = RawSettings { samples: Some(10), dataset: Some("synth:validation".into()), ..Default::default() };
        let flags = RawSettings { samples: Some(3), ..Default::default() };
        let r = file.overridden_by(flags);
        assert_eq!(r.samples, Some(3));
        assert_eq!(r.dataset.as_deref(), Some("synth:validation"));
    }

    #[test]
    fn unknown_toml_key_is_named_with_its_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sweep.toml");
        std::fs::write(&p, "samples = 3\nthreshold = [0.5]\n").unwrap();
        let e = RawSettings::from_toml_file(&p).unwrap_err().to_string();
        assert!(e.contains("sweep.toml") && e.contains("threshold") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn toml_lists_take_numbers_strings_and_ranges_as_flags_do() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sweep.toml");
        std::fs::write(&p, "thresholds = [0.9, 0.5, \"0.3\"]\nmeasure = \"softmax-diff, saturation\"\nthreads = 2\nstatic-exit = [1, 3]\n").unwrap();
        let r = RawSettings::from_toml_file(&p).unwrap();
        assert_eq!(r.thresholds, Some(vec!["0.9".to_string(), "0.5".into(), "0.3".into()]));
        assert_eq!(r.measure, Some(vec![Measure::SoftmaxDiff, Measure::Saturation]));
        assert_eq!((r.threads, r.static_exit), (Some(vec![2]), Some(vec![1, 3])));
        std::fs::write(&p, "thresholds = \"0.9:0.5:0.2\"\n").unwrap();
        let r = RawSettings::from_toml_file(&p).unwrap();
        assert_eq!(r.thresholds, Some(vec!["0.9:0.5:0.2".to_string()]));
        std::fs::write(&p, "thresholds = 0.7\n").unwrap();
        assert_eq!(RawSettings::from_toml_file(&p).unwrap().thresholds, Some(vec!["0.7".to_string()]));
        std::fs::write(&p, "samples = 3\nthreads = [-1]\n").unwrap();
        let e = RawSettings::from_toml_file(&p).unwrap_err().to_string();
        assert!(e.contains("threads") && e.contains("line 2"), "{e}");
    }
}
