//! The sweep's settings schema: one definition for the command line (clap), the TOML file (serde,
//! the same keys in kebab-case) and the record of what ran, with every default in one place.

use super::lenient;
use crate::backend::{BackendKind, DeviceKind};
use crate::exit::schedule::DEFAULT_TAU;
use crate::exit::Measure;
use crate::model::Precision;
use serde::{Deserialize, Serialize};

fn parse_device(s: &str) -> std::result::Result<DeviceKind, String> {
    DeviceKind::parse(s).map_err(|e| e.to_string())
}

/// The sweep's settings, one definition for the command line (clap), the TOML file (serde, the
/// same keys in kebab-case) and the record of what ran: every field optional, layered defaults ←
/// file ← flags ([`RawSettings::overridden_by`]); each default lives in
/// [`RawSettings::defaults`], which `--help` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct RawSettings {
    /// Model directories (Hugging Face layout).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, deserialize_with = "lenient::strings")]
    pub model: Option<Vec<String>>,
    /// Runtimes.
    #[arg(long, value_delimiter = ',', value_enum, ignore_case = true)]
    #[serde(default, deserialize_with = "lenient::list")]
    pub backend: Option<Vec<BackendKind>>,
    /// Devices: cpu, cuda or cuda:N.
    #[arg(long, value_delimiter = ',', value_parser = parse_device)]
    #[serde(default, deserialize_with = "lenient::list")]
    pub device: Option<Vec<DeviceKind>>,
    /// Precisions of weights and activations (fp32, float32, fp16, float16 and bfloat16 work too).
    #[arg(long, value_delimiter = ',', value_enum, ignore_case = true)]
    #[serde(default, deserialize_with = "lenient::list")]
    pub dtype: Option<Vec<Precision>>,
    /// CPU thread counts: N OS threads run the kernels, the calling thread among them
    /// [default: 1 below hidden size 1024, else all cores].
    #[arg(long, value_delimiter = ',')]
    #[serde(default, deserialize_with = "lenient::counts")]
    pub threads: Option<Vec<usize>>,
    /// Pin candle's computing threads to these CPUs (`0,2` or `0-3`; thread i on the i-th CPU,
    /// round robin) [default: not pinned].
    #[arg(long, value_name = "CPUS")]
    pub pin_cpus: Option<String>,
    /// Confidence measures.
    #[arg(long, visible_alias = "measures", value_delimiter = ',', value_enum, ignore_case = true)]
    #[serde(default, deserialize_with = "lenient::list")]
    pub measure: Option<Vec<Measure>>,
    /// Thresholds: numbers or start:stop:step ranges (inclusive).
    #[arg(long, visible_alias = "threshold", value_delimiter = ',')]
    #[serde(default, deserialize_with = "lenient::strings")]
    pub thresholds: Option<Vec<String>>,
    /// Threshold schedules: fixed, or decaying (CALM's Eq. 5 with --tau).
    #[arg(long, value_delimiter = ',', value_parser = ["fixed", "decaying"])]
    #[serde(default, deserialize_with = "lenient::strings")]
    pub schedule: Option<Vec<String>>,
    /// τ of the decaying schedule.
    #[arg(long)]
    pub tau: Option<f64>,
    /// Minimum exit layers (1-based).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, deserialize_with = "lenient::counts")]
    pub min_exit_layer: Option<Vec<usize>>,
    /// Exit intervals (check every k-th layer).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, deserialize_with = "lenient::counts")]
    pub exit_interval: Option<Vec<usize>>,
    /// Static exit layers to add as baselines.
    #[arg(long, value_delimiter = ',')]
    #[serde(default, deserialize_with = "lenient::counts")]
    pub static_exit: Option<Vec<usize>>,
    /// Include the oracle analysis (`--oracle false` or `--no-oracle` leaves it out).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", overrides_with = "no_oracle")]
    pub oracle: Option<bool>,
    /// Leave out the oracle analysis (the later of --oracle and --no-oracle wins).
    #[arg(long, overrides_with = "oracle")]
    #[serde(skip)]
    pub no_oracle: bool,
    /// Self-speculative cells: draft layers E (1..L−1), each with every --draft-tokens and
    /// --draft-cache (none unless given; greedy, lossless: full depth's tokens).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::counts")]
    pub draft_layer: Option<Vec<usize>>,
    /// Most tokens drafted per verification in speculative cells (default 4).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::counts")]
    pub draft_tokens: Option<Vec<usize>>,
    /// Where the draft's cache entries live: shared (LayerSkip) or separate (transformers;
    /// the verifier recomputes every layer). Default shared.
    #[arg(long, value_delimiter = ',', value_enum, ignore_case = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_cache: Option<Vec<crate::decode::speculative::DraftCache>>,
    /// Early-exit cells replay the exit layers recorded in this results directory (a run on the
    /// same dataset at batch size 1, e.g. of the embedded model) instead of their own
    /// confidences, scaled to each model's depth: batching costed on a model that cannot exit.
    /// Quality figures of replaying cells are meaningless.
    #[arg(long, value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_trace: Option<String>,
    /// Stop drafting when the draft's confidence in its token falls below a threshold:
    /// MEASURE@THRESHOLD (softmax-max@0.6), or none (always draft k); each a speculative
    /// setting of its own. Default none.
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_stop: Option<Vec<String>>,
    /// Batch sizes: full depth and the --batch-settings cells run at each. A batch's rows are consecutive samples;
    /// a row that ends leaves the batch and the others go on. Self-speculative settings run at every
    /// batch size (each row drafts, accepts and rolls back its own); the split-cost row runs at
    /// batch size 1 only.
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::counts")]
    pub batch_size: Option<Vec<usize>>,
    /// How a batch serves rows that want different exit layers (early-exit cells at batch sizes
    /// above 1): batch-min (CALM's rule: the batch exits when every row clears the threshold),
    /// per-row (exited rows ride along as passengers), compact (exited rows leave the batch).
    /// Default: all three.
    #[arg(long, value_delimiter = ',', value_enum, ignore_case = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_policy: Option<Vec<crate::decode::batch::BatchPolicy>>,
    /// Which early-exit settings also run at batch sizes above 1, as measure@threshold
    /// (`softmax-diff@0.9`), or `all` for every cell of the grid (static exits and the oracle
    /// included). Full depth always runs at every batch size.
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::strings")]
    pub batch_settings: Option<Vec<String>>,
    /// Dataset: synth:test, synth:validation, synth:train or a JSONL file.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Samples taken from the dataset (its first N).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Maximum new tokens per sample.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Unmeasured warm-up samples per cell.
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Measured repetitions of every cell.
    #[arg(long)]
    pub repetitions: Option<usize>,
    /// Samples per round: every cell of a group runs this block of samples, then every cell the
    /// next (cell order shuffled per round) [default: 2, or all samples when a hardware meter
    /// needs --min-window per cell and round].
    #[arg(long)]
    pub round_samples: Option<usize>,
    /// The cells' order within the rounds: interleaved, or sequential (each cell over all its
    /// samples before the next; drift then lands in the speedups: for comparisons only).
    #[arg(long, value_enum, ignore_case = true)]
    pub order: Option<crate::sweep::rounds::RoundOrder>,
    /// Add a full-depth row timed without the layers / checks / propagation split, showing what
    /// the split's synchronization costs [default: on for CUDA devices].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub split_cost_row: Option<bool>,
    /// Seed (sampling, bootstrap).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory [default: results/run-<local time>].
    #[arg(long)]
    pub out: Option<String>,
    /// Per-token exit traces kept for the first N samples of every cell.
    #[arg(long)]
    pub trace_samples: Option<usize>,
    /// Random weights of config.json's shape with this seed (speed only; quality meaningless).
    #[arg(long)]
    pub random_weights: Option<u64>,
    /// How energy is measured.
    #[command(flatten)]
    #[serde(flatten)]
    pub energy: EnergyArgs,
}

/// Energy-measurement settings, shared by `run` and `calibrate` (flags and TOML keys).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct EnergyArgs {
    /// Seconds of idle power measured before the sweep (0 skips; hardware counters only).
    #[arg(long)]
    pub idle_seconds: Option<f64>,
    /// Repeat a repetition's samples inside one energy window until it lasts this long, then
    /// divide (coarse hardware counters; 0 disables; the estimate needs none).
    #[arg(long)]
    pub min_window: Option<f64>,
    /// Grid carbon intensity: g CO2e per kWh, or a country code of the built-in table
    /// [default: CodeCarbon's world figure, 475].
    #[arg(long)]
    pub carbon_intensity: Option<String>,
    /// Power usage effectiveness of the site.
    #[arg(long)]
    pub pue: Option<f64>,
    /// The meters' sources (the flags `meter` and `info` take too).
    #[command(flatten)]
    #[serde(flatten)]
    pub meter: crate::meter::MeterSourceArgs,
    /// Seconds to sleep between cells (lets temperature and clocks settle).
    #[arg(long)]
    pub cooldown: Option<f64>,
}

/// The largest batch a sweep or `generate` accepts (far beyond what a CPU decodes usefully, low
/// enough that a typo is an error rather than thousands of row caches).
pub const MAX_BATCH_SIZE: usize = 256;

/// The most samples a sweep takes from its dataset (the synthetic task builds them in memory).
pub const MAX_SAMPLES: usize = 1_000_000;

/// Maximum new tokens per sample, for `run`, `generate`, `calibrate` and the model card.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 64;

impl RawSettings {
    /// The default grid: the shipped model on synth:test, 40 samples (in rounds of 2), every
    /// backend on CPU in f32, all four measures at 0.95 … 0.5, full depth and oracle.
    pub fn defaults() -> RawSettings {
        RawSettings {
            model: Some(vec![crate::default_model()]),
            backend: Some(vec![BackendKind::Candle, BackendKind::Ort]),
            device: Some(vec![DeviceKind::Cpu]),
            dtype: Some(vec![Precision::F32]),
            threads: None,
            pin_cpus: None,
            measure: Some(Measure::ALL.to_vec()),
            thresholds: Some(["0.95", "0.9", "0.8", "0.7", "0.6", "0.5"].iter().map(|s| s.to_string()).collect()),
            schedule: Some(vec!["fixed".into()]),
            tau: Some(DEFAULT_TAU),
            min_exit_layer: Some(vec![1]),
            exit_interval: Some(vec![1]),
            static_exit: Some(vec![]),
            oracle: Some(true),
            no_oracle: false,
            draft_layer: None,
            draft_tokens: None,
            draft_cache: None,
            draft_stop: None,
            exit_trace: None,
            batch_size: Some(vec![1, 8]),
            batch_policy: None,
            batch_settings: Some(vec!["softmax-diff@0.9".into(), "softmax-diff@0.7".into()]),
            dataset: Some("synth:test".into()),
            samples: Some(40),
            max_new_tokens: Some(DEFAULT_MAX_NEW_TOKENS),
            warmup: Some(1),
            repetitions: Some(1),
            round_samples: None,
            order: Some(crate::sweep::rounds::RoundOrder::Interleaved),
            split_cost_row: None,
            seed: Some(0),
            out: None,
            trace_samples: Some(20),
            random_weights: None,
            energy: EnergyArgs {
                idle_seconds: Some(5.0),
                min_window: Some(5.0),
                carbon_intensity: None,
                pue: Some(1.0),
                meter: crate::meter::MeterSourceArgs::default(),
                cooldown: Some(0.0),
            },
        }
    }

    /// `(flag id, default shown in --help)` for every setting with a default.
    pub fn help_defaults() -> Vec<(String, String)> {
        let v = Self::defaults().to_json();
        let show = |x: &serde_json::Value| match x {
            serde_json::Value::Array(a) => a.iter().map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string())).collect::<Vec<_>>().join(","),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        v.as_object()
            .map(|m| m.iter().filter(|(_, x)| !x.is_null()).map(|(k, x)| (k.replace('-', "_"), show(x))).collect())
            .unwrap_or_default()
    }

    /// Every TOML key, kebab-case.
    pub fn keys() -> Vec<String> {
        match serde_json::to_value(RawSettings::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }
}
