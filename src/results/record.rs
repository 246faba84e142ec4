//! The results schema (version `SCHEMA_VERSION`). A record holds a cell's key, its summary
//! figures, per-sample outputs (and per-token exit traces for the first samples), the resolved
//! configuration and the hardware block. Derived comparisons against full depth are computed at
//! report time, never stored.

use crate::backend::{BackendKind, DeviceKind};
use crate::decode::speculative::DraftCache;
use crate::exit::{Measure, Schedule};
use crate::hardware::Hardware;
use crate::model::Precision;
use crate::metrics::rouge::CorpusScores;
use crate::metrics::stats;
use serde::{Deserialize, Serialize};

/// Version of this schema; bumped on incompatible changes.
/// Version 2: `avg_layers` and `exit_histogram` count decoded tokens only (version 1 counted each
/// sample's first token, made by the prefill, too); version-1 records are upgraded on reading.
/// Version 3: `prefill_j` is per pass over the samples and `prefill_j_per_query` per query
/// (version 2's `prefill_j`); `speedup` is the paired speedup from rounds (absent before).
pub const SCHEMA_VERSION: u32 = 3;

crate::named_enum! {
    /// A cell's outcome.
    pub enum CellStatus: "status", "status" {
        /// Measured.
        Ok = "ok",
        /// The cell cannot run here (a dtype the runtime lacks, a measure the model lacks).
        Unsupported = "unsupported",
        /// The cell failed at run time (`reason` says why).
        Error = "error",
    }
}

crate::named_enum! {
    /// What kind of cell a key names: a baseline or an early-exit setting.
    pub enum Baseline: "baseline kind", "baseline" {
        /// Full depth, the reference every other cell of its group is compared with.
        Full = "full",
        /// Full depth timed without the layers / checks / propagation split (what the split costs).
        FullUnsplit = "full-unsplit",
        /// Every token at one fixed layer.
        Static = "static",
        /// The oracle: each token credited to the first layer whose argmax equals the final one.
        Oracle = "oracle",
        /// An early-exit cell (a measure and a threshold).
        None = "none",
        /// Self-speculative decoding (draft layer, draft tokens, cache mode): full depth's output.
        Speculative = "speculative",
    }
}

/// What identifies a cell. Two records with equal keys measure the same thing. Its JSON form is
/// schema version 3's (strings, with `-` for a measure or schedule that does not apply); its
/// identity strings come from [`CellKey::fields`] alone, so a new grid dimension is a field here
/// and a line there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellKey {
    /// Model directory as given.
    pub model: String,
    /// SHA-256 (first 16 hex digits) of the weight files, or `random:SEED`.
    pub weights_hash: String,
    /// Dataset name (`synth:test` or a path).
    pub dataset: String,
    /// SHA-256 (first 16 hex digits) of the examples used.
    pub dataset_hash: String,
    /// Backend.
    pub backend: BackendKind,
    /// Device.
    pub device: DeviceKind,
    /// Precision.
    pub dtype: Precision,
    /// CPU threads.
    pub threads: usize,
    /// Confidence measure (None for baselines; `-` in JSON).
    #[serde(with = "dash::measure")]
    pub measure: Option<Measure>,
    /// Threshold λ (None for baselines).
    pub threshold: Option<f64>,
    /// Schedule (None for baselines; `-` in JSON, else `fixed` or `decaying(tau=T)`).
    #[serde(with = "dash::schedule")]
    pub schedule: Option<Schedule>,
    /// Minimum exit layer (None where it does not apply).
    pub min_exit_layer: Option<usize>,
    /// Exit interval (None where it does not apply).
    pub exit_interval: Option<usize>,
    /// `full`, `full-unsplit`, `static`, `oracle` or `none` (an early-exit cell).
    pub baseline: Baseline,
    /// Static exit layer (static baseline only).
    pub static_layer: Option<usize>,
    /// Machine fingerprint id.
    pub machine: String,
    /// Maximum new tokens per sample (the decaying schedule depends on it too).
    #[serde(default)]
    pub max_new_tokens: usize,
    /// Layers the draft runs (speculative cells only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_layer: Option<usize>,
    /// Most tokens drafted per verification (speculative cells only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_tokens: Option<usize>,
    /// Where the draft's cache entries live (speculative cells only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_cache: Option<DraftCache>,
    /// The draft's early stop, `measure@threshold` (speculative cells that stop drafting on
    /// low confidence only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_stop: Option<crate::decode::speculative::DraftStop>,
    /// Early-exit cells replaying recorded exit layers (`--exit-trace`): the trace's hash (None:
    /// the cell followed its own confidences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_trace: Option<String>,
    /// Rows decoded together (None: batch size 1, as in every record older than batching).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// How the batch served rows that wanted different exit layers (early-exit cells at batch
    /// sizes above 1; None elsewhere, which at batch size 1 equals `per-row`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_policy: Option<crate::decode::batch::BatchPolicy>,
}

/// A runtime as reports (and the grid's group order) name it: `candle cpu f32 1t`.
pub fn runtime_label(backend: BackendKind, device: DeviceKind, dtype: Precision, threads: usize) -> String {
    format!("{backend} {device} {dtype} {threads}t")
}

/// What part of a cell's identity a key field is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// What is measured on: model, dataset, machine, token budget.
    Scope,
    /// What runs it: backend, device, precision, threads.
    Runtime,
    /// The exit setting within a configuration group.
    Setting,
}

/// One field of a [`CellKey`] as identity strings and tables show it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyField {
    /// The field's name (as in JSON).
    pub name: &'static str,
    /// Its role.
    pub role: KeyRole,
    /// Its value as ids show it (`-` where it does not apply).
    pub value: String,
}

impl CellKey {
    /// Every field with its role and value, in id order: the one description ids, group ids,
    /// grid comparisons and tables are built from.
    pub fn fields(&self) -> Vec<KeyField> {
        use KeyRole::{Runtime, Scope, Setting};
        let dash = |x: Option<String>| x.unwrap_or_else(|| "-".into());
        let u = |x: Option<usize>| dash(x.map(|v| v.to_string()));
        let f = |name, role, value| KeyField { name, role, value };
        let mut fields = vec![
            f("model", Scope, self.model.clone()),
            f("weights_hash", Scope, self.weights_hash.clone()),
            f("dataset", Scope, self.dataset.clone()),
            f("dataset_hash", Scope, self.dataset_hash.clone()),
            f("backend", Runtime, self.backend.name().into()),
            f("device", Runtime, self.device.name()),
            f("dtype", Runtime, self.dtype.name().into()),
            f("threads", Runtime, self.threads.to_string()),
            f("measure", Setting, dash(self.measure.map(|m| m.name().into()))),
            f("threshold", Setting, dash(self.threshold.map(|v| format!("{v}")))),
            f("schedule", Setting, dash(self.schedule.map(|s| s.key_name()))),
            f("min_exit_layer", Setting, u(self.min_exit_layer)),
            f("exit_interval", Setting, u(self.exit_interval)),
            f("baseline", Setting, self.baseline.name().into()),
            f("static_layer", Setting, u(self.static_layer)),
            f("machine", Scope, self.machine.clone()),
            f("max_new_tokens", Scope, self.max_new_tokens.to_string()),
        ];
        // Dimensions added later appear only where set, so the ids of older cells do not change.
        let optional = [
            ("draft_layer", self.draft_layer.map(|x| x.to_string())),
            ("draft_tokens", self.draft_tokens.map(|x| x.to_string())),
            ("draft_cache", self.draft_cache.map(|x| x.to_string())),
            ("draft_stop", self.draft_stop.map(|x| x.to_string())),
            ("exit_trace", self.exit_trace.clone()),
        ];
        fields.extend(optional.into_iter().filter_map(|(name, v)| Some(f(name, Setting, v?))));
        // The batch size is part of the runtime (full depth at the same batch size is a cell's
        // baseline); the policy is part of the exit setting.
        fields.extend(self.batch_size.map(|b| f("batch_size", Runtime, b.to_string())));
        fields.extend(self.batch_policy.map(|p| f("batch_policy", Setting, p.name().to_string())));
        fields
    }

    fn joined(&self, keep: impl Fn(KeyRole) -> bool) -> String {
        self.fields().into_iter().filter(|f| keep(f.role)).map(|f| f.value).collect::<Vec<_>>().join("|")
    }

    /// A stable id of the cell (used by --resume, merge, check and round records).
    pub fn id(&self) -> String {
        self.joined(|_| true)
    }

    /// Id of the configuration group: everything but the exit setting (what a full-depth
    /// baseline is matched on).
    pub fn group_id(&self) -> String {
        self.joined(|r| r != KeyRole::Setting)
    }

    /// Id of the exit setting alone, whatever group runs it.
    pub fn setting_id(&self) -> String {
        self.joined(|r| r == KeyRole::Setting)
    }

    /// The runtime as reports name it: `candle cpu f32 1t`, with ` B8` at batch size 8.
    pub fn runtime_label(&self) -> String {
        let base = runtime_label(self.backend, self.device, self.dtype, self.threads);
        match self.batch_size {
            Some(b) => format!("{base} B{b}"),
            None => base,
        }
    }

    /// Rows decoded together (1 unless batched).
    pub fn batch(&self) -> usize {
        self.batch_size.unwrap_or(1)
    }

    /// The cell as tables and benchmark exports name it: `softmax-diff@0.9 [candle cpu f32 1t]`.
    pub fn display_name(&self) -> String {
        format!("{} [{}]", self.label(), self.runtime_label())
    }

    /// True for candle on the CPU in f32, the reference runtime comparisons are made against.
    pub fn is_reference_runtime(&self) -> bool {
        self.backend == BackendKind::Candle && self.device == DeviceKind::Cpu && self.dtype == Precision::F32
    }

    /// A short human label: `softmax-diff@0.8`, `full`, `static@3`, `oracle`.
    pub fn label(&self) -> String {
        match self.baseline {
            Baseline::Full => "full".into(),
            Baseline::FullUnsplit => "full (no time split)".into(),
            Baseline::Static => format!("static@{}", self.static_layer.unwrap_or(0)),
            Baseline::Oracle => "oracle".into(),
            Baseline::None => format!(
                "{}@{}{}{}{}",
                self.measure_name(),
                self.threshold.unwrap_or(0.0),
                self.knobs(),
                self.batch_policy.map(|p| format!(" ({p})")).unwrap_or_default(),
                if self.exit_trace.is_some() { " replayed" } else { "" }
            ),
            Baseline::Speculative => format!(
                "speculative E{} k{}{}{}",
                self.draft_layer.unwrap_or(0),
                self.draft_tokens.unwrap_or(0),
                self.draft_stop.map(|s| format!(" stop {s}")).unwrap_or_default(),
                if self.draft_cache == Some(DraftCache::Separate) { " (separate cache)" } else { "" }
            ),
        }
    }

    /// The measure's name, `-` for a baseline.
    pub fn measure_name(&self) -> &'static str {
        self.measure.map(Measure::name).unwrap_or("-")
    }

    /// The exit knobs that differ from the defaults, as a label suffix: ` (decaying(tau=4))`,
    /// ` [min 2 every 1]`; empty for a fixed schedule from layer 1 at every layer.
    pub fn knobs(&self) -> String {
        let mut s = String::new();
        if let Some(schedule) = self.schedule.filter(|s| *s != Schedule::Fixed) {
            s.push_str(&format!(" ({})", schedule.key_name()));
        }
        if self.min_exit_layer.unwrap_or(1) != 1 || self.exit_interval.unwrap_or(1) != 1 {
            s.push_str(&format!(" [min {} every {}]", self.min_exit_layer.unwrap_or(1), self.exit_interval.unwrap_or(1)));
        }
        s
    }
}

/// Serde for key fields written `-` when they do not apply.
mod dash {
    use serde::{Deserialize, Deserializer, Serializer};

    fn read<'de, D: Deserializer<'de>, T>(d: D, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Option<T>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s == "-" {
            return Ok(None);
        }
        parse(&s).map(Some).ok_or_else(|| serde::de::Error::custom(format!("unknown {what} `{s}`")))
    }

    pub mod measure {
        use crate::exit::Measure;

        pub fn serialize<S: super::Serializer>(m: &Option<Measure>, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(m.map(Measure::name).unwrap_or("-"))
        }

        pub fn deserialize<'de, D: super::Deserializer<'de>>(d: D) -> Result<Option<Measure>, D::Error> {
            super::read(d, "measure", |s| Measure::parse(s).ok())
        }
    }

    pub mod schedule {
        use crate::exit::Schedule;

        pub fn serialize<S: super::Serializer>(m: &Option<Schedule>, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&m.map(|x| x.key_name()).unwrap_or_else(|| "-".into()))
        }

        pub fn deserialize<'de, D: super::Deserializer<'de>>(d: D) -> Result<Option<Schedule>, D::Error> {
            super::read(d, "schedule", Schedule::from_key_name)
        }
    }
}

/// What batching did in a cell at batch size above 1, over its samples' first passes (the
/// first repetition).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct BatchSummary {
    /// True when the backend read each weight once for all rows of a step (candle); false when it
    /// ran rows one by one through its single-row path (ONNX Runtime's batch-1 graphs), so
    /// batching saved no weight reads there.
    pub shares_weight_reads: bool,
    /// Decode steps (each decodes one token for every row still going).
    pub steps: usize,
    /// Mean rows per step (rows leave when they end).
    pub mean_rows: f64,
    /// Layer runs summed over rows, passengers included.
    pub row_layers: u64,
    /// Layer runs of rows that had already exited (`per-row`'s passengers).
    pub wasted_row_layers: u64,
    /// Tokens whose own measure cleared the threshold at an earlier exit point than the layer
    /// the batch took (`batch-min`).
    pub held_row_tokens: u64,
    /// Share of decode time spent gathering rows out of the batch or merging passengers' states.
    pub gather_share: f64,
    /// Per-row decode latency, ms per token: the median over rows of each row's mean step time
    /// (a row waits for the whole step).
    pub latency_ms_per_token: f64,
    /// The 90th percentile over rows of the same.
    pub latency_ms_per_token_p90: f64,
    /// Self-speculative batches: positions a padded verification would run beyond the rows'
    /// own segments, as a share of them (rows × the longest segment ÷ the segments − 1); this
    /// harness runs the segments unpadded. None for other cells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding_waste: Option<f64>,
    /// Decoder-layer weight reads per decoded token: layer calls counted as `BatchStep::reads`
    /// (one per call where rows share reads) over the tokens the steps decoded. Full depth's
    /// over a speculative cell's is that cell's theoretical speedup at its batch size. None in
    /// older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_reads_per_token: Option<f64>,
    /// Positions run through decoder layers per decoded token (the layers' arithmetic, where
    /// `layer_reads_per_token` is their weight reads): L at full depth; a speculative cell adds
    /// its drafts and its rejected positions. None in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_positions_per_token: Option<f64>,
}

/// What a speculative cell drafted and accepted, over its samples' first passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeculationSummary {
    /// Accepted drafted tokens ÷ drafted tokens (LayerSkip's acceptance rate).
    pub acceptance_rate: Option<f64>,
    /// Mean tokens emitted per verification pass (decoded tokens ÷ passes).
    pub tokens_per_verify: Option<f64>,
    /// Each sample's (each batch row's) own acceptance rate, in sample order (samples that
    /// drafted nothing left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sample_acceptance: Vec<f64>,
    /// Drafted, accepted and passes, with seconds drafting, verifying and rolling back.
    pub totals: crate::decode::speculative::SpeculationStats,
}

/// Summary statistics of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Number of values.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation.
    pub std: f64,
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Lower end of the 95% Student-t interval of the mean.
    pub ci_lo: f64,
    /// Upper end of the 95% Student-t interval of the mean.
    pub ci_hi: f64,
}

impl Stats {
    /// Statistics of `xs`, with a Student-t interval of the mean.
    pub fn of(xs: &[f64]) -> Stats {
        if xs.is_empty() {
            return Stats::default();
        }
        let (lo, hi) = stats::t_interval95(xs);
        Stats {
            n: xs.len(),
            mean: stats::mean(xs),
            std: stats::std_dev(xs),
            median: stats::median(xs),
            min: xs.iter().cloned().fold(f64::INFINITY, f64::min),
            max: xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            ci_lo: lo,
            ci_hi: hi,
        }
    }
}

/// Seconds spent per component over a cell's decode steps (first repetition).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TimeSplit {
    /// Decoder layers.
    pub layers_s: f64,
    /// Exit checks: exit head + confidence measure.
    pub exit_checks_s: f64,
    /// State propagation into skipped layers.
    pub propagation_s: f64,
}

/// Energy of a cell (filled by the meters; `source` is `none` where no meter ran). Figures are
/// per pass over the cell's samples, the median repetition's. The prefill's share comes from a
/// prefill-only window (`prefill_energy_method` = `window`) or, where none was measured, from
/// its share of the time (`time-share`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Energy {
    /// Where the figure comes from: `none`, `rapl`, `nvml`, `nvml+rapl`, `estimate`...
    pub source: crate::meter::Sources,
    /// True when the joules are modelled from CPU time (not measured).
    pub estimate: bool,
    /// Gross joules of one pass over the samples (as measured).
    pub energy_j: Option<f64>,
    /// Gross joules minus idle power × duration.
    pub energy_net_j: Option<f64>,
    /// Idle power of the counted meters, watts.
    pub idle_w: Option<f64>,
    /// Average power over the window, watts.
    pub avg_watts: Option<f64>,
    /// Gross joules per generated token, prefill included (the first token of each sample is the
    /// prefill's); `decode_j_per_token` is the decode-only figure beside the decode-only speedup.
    pub j_per_token: Option<f64>,
    /// Prefill joules of one pass over the samples (all its queries).
    pub prefill_j: Option<f64>,
    /// Prefill joules per query.
    pub prefill_j_per_query: Option<f64>,
    /// How the prefill's joules were found: `window` (a prefill-only pass, repeated to fill the
    /// minimum window) or `time-share` (the window split by time).
    pub prefill_energy_method: Option<String>,
    /// Decode joules per decoded token (the window's joules less the prefill's).
    pub decode_j_per_token: Option<f64>,
    /// Watt-hours per 1,000 queries (gross).
    pub wh_per_1k_queries: Option<f64>,
    /// Grams CO2e of one pass (gross energy × intensity × PUE).
    pub gco2e: Option<f64>,
    /// Grid intensity used, g/kWh, and where it came from.
    pub carbon_g_per_kwh: Option<f64>,
    /// Origin of the intensity.
    pub carbon_source: Option<String>,
    /// PUE used.
    pub pue: Option<f64>,
    /// GPU board joules per pass.
    pub energy_gpu_j: Option<f64>,
    /// CPU package (or psys) joules per pass.
    pub energy_cpu_j: Option<f64>,
    /// DRAM joules per pass.
    pub energy_dram_j: Option<f64>,
    /// Passes over the samples inside one window (the --min-window rule).
    pub min_window_repeats: Option<usize>,
    /// Meter warnings (short windows, zero readings...).
    pub warnings: Vec<String>,
    /// Gross joules per pass over the repetitions (the figures above are the median repetition's).
    pub energy_j_stats: Option<Stats>,
    /// Gross joules per token over the repetitions.
    pub j_per_token_stats: Option<Stats>,
}

/// A paired speedup: per sample and repetition, full depth's decode ms/token ÷ this cell's, both
/// measured in the same round; the median of those ratios with a 95% cluster-bootstrap interval
/// over rounds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PairedSpeedup {
    /// Median of the per-sample ratios.
    pub measured: f64,
    /// Lower end of the 95% bootstrap interval of the median (whole rounds resampled).
    pub lo: f64,
    /// Upper end of the interval.
    pub hi: f64,
    /// Pairs (sample × repetition) the median is over.
    pub pairs: usize,
    /// Samples left out because one side decoded no token.
    pub excluded: usize,
    /// The per-pair ratios (for `check`, which bootstraps their change between two runs).
    pub ratios: Vec<f64>,
    /// The round of each ratio: the interval resamples whole rounds, since a machine state that
    /// lasts a round moves all of its samples together.
    #[serde(default)]
    pub rounds: Vec<usize>,
}

/// One exited token in a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceToken {
    /// Token id.
    pub id: u32,
    /// Decoded text the token adds.
    pub text: String,
    /// Exit layer.
    pub exit_layer: usize,
    /// Confidence at exit (None at full depth).
    pub confidence: Option<f32>,
    /// Speculative cells: whether the token was drafted and accepted (None elsewhere and for
    /// the prefill's token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_draft: Option<bool>,
}

/// One sample's output in a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleOutput {
    /// Example id.
    pub id: String,
    /// Generated text (prompt excluded, special tokens skipped).
    pub text: String,
    /// Generated tokens.
    pub tokens: usize,
    /// Mean exit layer over this sample's decoded tokens (all but the first, which the full
    /// prefill produced without an exit decision).
    pub avg_layers: f64,
    /// ROUGE-L F against the reference.
    pub rouge_l: f64,
    /// All key facts (winner, score, top performer) stated as in the reference wording
    /// (built-in synthetic task only).
    #[serde(default)]
    pub key_facts: Option<bool>,
    /// Prefill seconds (first repetition).
    pub prefill_s: f64,
    /// Decode seconds (first repetition).
    pub decode_s: f64,
    /// Per-token exit trace (first `trace_samples` samples only).
    pub trace: Option<Vec<TraceToken>>,
    /// Generated token ids (for token agreement across runtimes and precisions); empty in
    /// records older than the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_ids: Vec<u32>,
}

/// Mean exit layer of an exit histogram (index 0 = layer 1); 0 when it is empty.
pub fn mean_exit_layer(histogram: &[u64]) -> f64 {
    let n: u64 = histogram.iter().sum();
    if n == 0 {
        return 0.0;
    }
    histogram.iter().enumerate().map(|(i, &c)| (i + 1) as f64 * c as f64).sum::<f64>() / n as f64
}

impl CellRecord {
    /// Upgrades an older record exactly. Version 1 → 2: each sample's first token (made by the
    /// prefill at L layers, or at the static layer) leaves the histogram and the averages.
    /// Version 2 → 3: `prefill_j` was per query and is now per pass over the samples (the
    /// per-query figure moves to `prefill_j_per_query`; the method was `time-share`).
    pub fn upgrade(&mut self) {
        if self.schema_version == 1 {
            self.schema_version = 2;
            let depth = if self.key.baseline == Baseline::Static { self.key.static_layer.unwrap_or(self.num_layers) } else { self.num_layers };
            if depth > 0 && depth <= self.exit_histogram.len() {
                let firsts = self.outputs.iter().filter(|o| o.tokens > 0).count() as u64;
                self.exit_histogram[depth - 1] = self.exit_histogram[depth - 1].saturating_sub(firsts);
                self.avg_layers = mean_exit_layer(&self.exit_histogram);
                for o in &mut self.outputs {
                    o.avg_layers = if o.tokens >= 2 { (o.avg_layers * o.tokens as f64 - depth as f64) / (o.tokens - 1) as f64 } else { 0.0 };
                }
            }
        }
        if self.schema_version == 2 {
            self.schema_version = 3;
            if self.energy.prefill_j_per_query.is_none() {
                self.energy.prefill_j_per_query = self.energy.prefill_j;
                self.energy.prefill_j = self.energy.prefill_j.map(|j| j * self.samples as f64);
                if self.energy.prefill_j.is_some() {
                    self.energy.prefill_energy_method = Some("time-share".into());
                }
            }
        }
    }
}

/// Everything measured for one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellRecord {
    /// Schema version.
    pub schema_version: u32,
    /// exitbench version that wrote the record.
    pub exitbench_version: String,
    /// Stable id of the cell.
    pub cell_id: String,
    /// The cell's key.
    pub key: CellKey,
    /// `ok`, `unsupported` or `error`.
    pub status: CellStatus,
    /// Why a cell is unsupported or failed.
    pub reason: Option<String>,
    /// Layers L of the model.
    pub num_layers: usize,
    /// Samples measured.
    pub samples: usize,
    /// Generated tokens over all samples (one repetition).
    pub tokens: usize,
    /// Mean exit layer over decoded tokens (every generated token but each sample's first, which
    /// the full prefill produced without an exit decision); the tokens `ms_per_token` times.
    pub avg_layers: f64,
    /// Decoded tokens that exited at each layer (index 0 = layer 1).
    pub exit_histogram: Vec<u64>,
    /// Prefill seconds per sample (time to first token), over samples of the first repetition.
    pub prefill_s: Stats,
    /// Decode milliseconds per token, one value per repetition.
    pub ms_per_token: Stats,
    /// Decode tokens per second, one value per repetition.
    pub tokens_per_s: Stats,
    /// Seconds of one repetition over all samples (prefill + decode).
    pub duration_s: Stats,
    /// Where decode time went.
    pub time_split: TimeSplit,
    /// Energy figures.
    pub energy: Energy,
    /// Peak resident memory of the process during the cell, MiB.
    pub peak_mem_mb: f64,
    /// Peak GPU memory in use during the cell, MiB, sampled through NVML after every sample
    /// (CUDA cells only; `None` elsewhere or when NVML cannot be read).
    #[serde(default)]
    pub peak_device_mem_mb: Option<f64>,
    /// What `peak_device_mem_mb` covers: `process` (this process) or `device` (everything on
    /// the GPU, when NVML does not list this process, e.g. in a container).
    #[serde(default)]
    pub device_mem_scope: Option<String>,
    /// ROUGE against the references (corpus mean F with bootstrap intervals).
    pub rouge: CorpusScores,
    /// Share of samples whose output states every key fact (built-in synthetic task only).
    #[serde(default)]
    pub key_facts_exact: Option<f64>,
    /// The harness's own time in the cell, seconds: the cell's wall time outside `generate`
    /// (backend set-up, energy window reads, progress, statistics, ROUGE, traces; the JSONL append
    /// that follows is not included). Compare with `generate_s`.
    #[serde(default)]
    pub bookkeeping_s: f64,
    /// Seconds spent inside `generate` in the cell (warm-up and every repetition).
    #[serde(default)]
    pub generate_s: f64,
    /// The precision the runtime really computed matrix products in (the key's `dtype` is the
    /// requested one); None in records older than the field and where the backend never opened.
    #[serde(default)]
    pub compute_dtype: Option<String>,
    /// Bytes of weights and KV cache read per decoded token, counted from the trace (the layers,
    /// exit heads, classifiers and propagations each token ran, and its cached positions): an
    /// estimate by counting, not a hardware counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_token: Option<f64>,
    /// Self-speculative decoding's figures (speculative cells only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation: Option<SpeculationSummary>,
    /// `bytes_per_token` ÷ the median decode time per token, GB/s: compare with the hardware
    /// block's measured `mem_bandwidth_gb_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub achieved_gb_s: Option<f64>,
    /// The paired measured speedup over full depth (None for full depth itself, the oracle, and
    /// records older than rounds, whose speedup reports derive from the medians).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speedup: Option<PairedSpeedup>,
    /// Rounds the cell was measured in (every cell of the group over one block of samples per
    /// round, in a varied order); 0 in records older than rounds.
    #[serde(default)]
    pub rounds: usize,
    /// Samples per round.
    #[serde(default)]
    pub round_samples: usize,
    /// Mean microseconds of each layer index (index 0 = layer 1) over the decoded tokens that ran
    /// it; empty where not measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_us: Vec<f64>,
    /// Where `layer_us` comes from: `timed rounds` (CPU: synchronizing is free) or `profiling
    /// pass` (a GPU: an untimed pass synchronizing after every layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_us_source: Option<String>,
    /// The runtime and what building it cost (export, session creation; never in ms/token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<crate::runtime_info::RuntimeInfo>,
    /// Per-sample outputs.
    pub outputs: Vec<SampleOutput>,
    /// True when weights are random (quality figures meaningless).
    pub random_weights: bool,
    /// Rows decoded together (1 unless the sweep asked for --batch-size; the key says the same).
    pub batch_size: usize,
    /// Batched decoding's figures (cells at batch sizes above 1 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSummary>,
    /// Seed of the sweep.
    pub seed: u64,
    /// The resolved sweep settings.
    pub config: serde_json::Value,
    /// The machine.
    pub hardware: Hardware,
    /// When the cell finished (seconds since the Unix epoch).
    pub finished_at: u64,
}
