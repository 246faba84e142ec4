//! From raw settings (flags, a TOML file, defaults) to a validated `Plan`, checked before any
//! model is loaded: unknown keys, unknown measures, thresholds outside [0, 1], exit layers beyond
//! a model's depth, an empty grid or an unreadable dataset line are all reported here.

use crate::backend::{BackendKind, DeviceKind};
use crate::data::{DatasetSpec, Example};
use crate::error::{Error, Result};
use crate::exit::schedule::DEFAULT_TAU;
use crate::exit::{Measure, Schedule};
use crate::model::{LlamaConfig, Precision};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// TOML list keys written the ways the command line takes them: `thresholds = [0.9, 0.5]`,
/// `thresholds = "0.9:0.5:0.1"`, `thresholds = 0.9`, `measure = "softmax-diff,saturation"`,
/// `threads = 2` or `threads = [1, 2]`; typed values are parsed with the flags' own parser.
mod lenient {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Int(i64),
        Float(f64),
        Str(String),
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Scalar),
        Many(Vec<Scalar>),
    }

    fn text(s: Scalar) -> Vec<String> {
        match s {
            Scalar::Int(i) => vec![i.to_string()],
            Scalar::Float(f) => vec![format!("{f}")],
            Scalar::Str(s) => s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
        }
    }

    fn items<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
        let v = Option::<OneOrMany>::deserialize(d).map_err(|_| serde::de::Error::custom("expected a string, a number or a list of them"))?;
        Ok(v.map(|v| match v {
            OneOrMany::One(s) => text(s),
            OneOrMany::Many(v) => v.into_iter().flat_map(text).collect(),
        }))
    }

    /// A string (comma-separated), a number, or a list of strings and numbers.
    pub fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
        items(d)
    }

    /// Like [`strings`], each item parsed as the flag parses it (measures, dtypes, backends...).
    pub fn list<'de, D: Deserializer<'de>, T: std::str::FromStr>(d: D) -> Result<Option<Vec<T>>, D::Error>
    where
        T::Err: std::fmt::Display,
    {
        match items(d)? {
            None => Ok(None),
            Some(v) => v.iter().map(|x| x.parse::<T>().map_err(serde::de::Error::custom)).collect::<Result<Vec<T>, _>>().map(Some),
        }
    }

    /// A non-negative integer or a list of them.
    pub fn counts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<usize>>, D::Error> {
        let v = Option::<OneOrMany>::deserialize(d).map_err(|_| serde::de::Error::custom("expected a whole number or a list of them"))?;
        let one = |s: Scalar| match s {
            Scalar::Int(i) if i >= 0 => Ok(i as usize),
            Scalar::Str(t) => t.trim().parse::<usize>().map_err(|_| serde::de::Error::custom(format!("`{t}` is not a whole number"))),
            _ => Err(serde::de::Error::custom("expected a whole number ≥ 0")),
        };
        match v {
            None => Ok(None),
            Some(OneOrMany::One(s)) => Ok(Some(vec![one(s)?])),
            Some(OneOrMany::Many(v)) => v.into_iter().map(one).collect::<Result<Vec<_>, _>>().map(Some),
        }
    }
}

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
    #[arg(long, value_delimiter = ',', value_enum)]
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
    #[arg(long, visible_alias = "measures", value_delimiter = ',', value_enum)]
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
    #[arg(long, value_enum)]
    pub order: Option<super::rounds::RoundOrder>,
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
    /// CPU TDP in watts for the estimate meter [default: from the CPU model table].
    #[arg(long)]
    pub cpu_tdp_watts: Option<f64>,
    /// Powercap root for RAPL [default: /sys/class/powercap or $EXITBENCH_POWERCAP_ROOT].
    #[arg(long)]
    pub powercap_root: Option<String>,
    /// Seconds to sleep between cells (lets temperature and clocks settle).
    #[arg(long)]
    pub cooldown: Option<f64>,
}

/// The most samples a sweep takes from its dataset (the synthetic task builds them in memory).
pub const MAX_SAMPLES: usize = 1_000_000;

/// Maximum new tokens per sample, for `run`, `generate`, `calibrate` and the model card.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 64;

impl RawSettings {
    /// Reads a TOML settings file; unknown keys and bad types name the key and its line.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let line_of = |key: &str| text.lines().position(|l| l.trim_start().strip_prefix(key).is_some_and(|r| r.trim_start().starts_with('='))).map(|i| i + 1);
        // Unknown keys (flattened sub-tables rule out serde's deny_unknown_fields).
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| text[..s.start].lines().count().max(1));
            Error::file(path, line, e.message().to_string())
        })?;
        let known = Self::keys();
        if let Some(k) = table.keys().find(|k| !known.contains(k)) {
            let hint = known.iter().find(|c| c.trim_end_matches('s') == k.trim_end_matches('s')).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
            return Err(Error::file(path, line_of(k), format!("key `{k}`: unknown key{hint}")));
        }
        let de = toml::Deserializer::new(&text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // The key's own line when the path names one, else the parser's span.
            let leaf = key.rsplit('.').next().unwrap_or("").to_string();
            let line = line_of(&leaf).filter(|_| !leaf.is_empty()).or_else(|| inner.span().map(|s| text[..s.start].lines().count().max(1)));
            Error::file(path, line, format!("key `{key}`: {}", inner.message()))
        })
    }

    /// Every TOML key, kebab-case.
    pub fn keys() -> Vec<String> {
        match serde_json::to_value(RawSettings::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Refuses numbers that are not finite (`--tau nan`, `cooldown = inf`): layering would
    /// otherwise turn them into "not set" and fall back to the default.
    pub fn check_finite(&self) -> Result<()> {
        let e = &self.energy;
        let named = [("--tau", self.tau), ("--idle-seconds", e.idle_seconds), ("--min-window", e.min_window), ("--pue", e.pue), ("--cpu-tdp-watts", e.cpu_tdp_watts), ("--cooldown", e.cooldown)];
        match named.iter().find(|(_, v)| v.is_some_and(|x| !x.is_finite())) {
            Some((flag, v)) => Err(Error::setting(*flag, format!("{} is not a finite number", v.unwrap_or_default()))),
            None => Ok(()),
        }
    }

    /// `self` with every field that `over` sets replaced (`--no-oracle` folded into `oracle`).
    pub fn overridden_by(self, over: RawSettings) -> RawSettings {
        let (mut a, b) = (self.normalized().to_json(), over.normalized().to_json());
        if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
            for (k, v) in b.iter().filter(|(_, v)| !v.is_null()) {
                a.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(a).expect("settings serialized by this build read back")
    }

    fn normalized(mut self) -> RawSettings {
        if self.no_oracle {
            self.oracle = Some(false);
            self.no_oracle = false;
        }
        self
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("settings serialize")
    }

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
            dataset: Some("synth:test".into()),
            samples: Some(40),
            max_new_tokens: Some(DEFAULT_MAX_NEW_TOKENS),
            warmup: Some(1),
            repetitions: Some(1),
            round_samples: None,
            order: Some(super::rounds::RoundOrder::Interleaved),
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
                cpu_tdp_watts: None,
                powercap_root: None,
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
}

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
    pub order: super::rounds::RoundOrder,
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

fn energy_settings(e: &EnergyArgs) -> Result<EnergySettings> {
    let nonneg = |v: Option<f64>, f: &str| -> Result<f64> {
        let v = need(v, f)?;
        if v.is_finite() && v >= 0.0 { Ok(v) } else { Err(Error::setting(f, format!("{v} must be a number ≥ 0"))) }
    };
    let mut meters = crate::meter::MeterOptions::default();
    if let Some(r) = &e.powercap_root {
        meters.powercap_root = PathBuf::from(r);
    }
    meters.cpu_tdp_watts = e.cpu_tdp_watts;
    meters.validate()?;
    Ok(EnergySettings {
        meters,
        idle_seconds: nonneg(e.idle_seconds, "--idle-seconds")?,
        min_window: nonneg(e.min_window, "--min-window")?,
        carbon: crate::meter::carbon::resolve(e.carbon_intensity.as_deref())?,
        pue: crate::meter::carbon::check_pue(need(e.pue, "--pue")?)?,
    })
}

/// A setting that [`RawSettings::defaults`] always fills (missing only if a caller bypassed it).
fn need<T>(v: Option<T>, flag: &str) -> Result<T> {
    v.ok_or_else(|| Error::setting(flag, "missing (no default)"))
}

/// A non-empty list.
fn nonempty<T: Clone>(v: &Option<Vec<T>>, flag: &str) -> Result<Vec<T>> {
    match v {
        Some(v) if !v.is_empty() => Ok(v.clone()),
        _ => Err(Error::setting(flag, "the list is empty")),
    }
}

/// The local time as a sortable, readable directory name part: `2026-12-01_10-15-44`.
pub fn local_timestamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as libc::time_t).unwrap_or(0);
    // SAFETY: localtime_r writes into the tm we own; a zeroed tm is a valid initial value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&now, &mut tm) }.is_null() {
        return now.to_string();
    }
    format!("{:04}-{:02}-{:02}_{:02}-{:02}-{:02}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
}

fn list<T>(field: &str, v: &[String], parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    if v.is_empty() {
        return Err(Error::setting(field, "the list is empty"));
    }
    v.iter().map(|s| parse(s.trim())).collect()
}

/// The most thresholds one `start:stop:step` range may expand to.
pub const MAX_RANGE_THRESHOLDS: usize = 10_000;

/// Drops repeated values, keeping the first of each (a grid must not hold one cell twice).
pub fn dedup_keep_order<T: PartialEq + Clone>(v: Vec<T>) -> Vec<T> {
    dedup_by_key(v, T::clone)
}

/// Drops values whose `key` was seen before, keeping the first of each.
pub fn dedup_by_key<T, K: PartialEq>(v: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut seen: Vec<K> = Vec::with_capacity(v.len());
    v.into_iter()
        .filter(|x| {
            let k = key(x);
            let fresh = !seen.contains(&k);
            if fresh {
                seen.push(k);
            }
            fresh
        })
        .collect()
}

/// Parses thresholds: numbers or `start:stop:step` ranges (inclusive, descending or ascending);
/// a value given twice counts once.
pub fn parse_thresholds(items: &[String]) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for item in items {
        let item = item.trim();
        let num = |s: &str| -> Result<f64> {
            s.trim().parse::<f64>().map_err(|_| Error::setting("--thresholds", format!("`{s}` is not a number")))
        };
        if item.contains(':') {
            let parts: Vec<&str> = item.split(':').collect();
            if parts.len() != 3 {
                return Err(Error::setting("--thresholds", format!("`{item}` is not start:stop:step")));
            }
            let (a, b, step) = (num(parts[0])?, num(parts[1])?, num(parts[2])?.abs());
            // Bounds before expansion: `0:1e9:1` must be an error, not billions of values.
            for t in [a, b] {
                if !(0.0..=1.0).contains(&t) {
                    return Err(Error::setting("--thresholds", format!("{t} in `{item}` is outside [0, 1]")));
                }
            }
            if step.is_nan() || step <= 0.0 {
                return Err(Error::setting("--thresholds", format!("`{item}` needs a positive step")));
            }
            let count = (b - a).abs() / step + 1e-9;
            if count > MAX_RANGE_THRESHOLDS as f64 {
                return Err(Error::setting("--thresholds", format!("`{item}` expands to {:.0} thresholds; at most {MAX_RANGE_THRESHOLDS} per range", count.floor() + 1.0)));
            }
            let n = count.floor() as usize;
            let dir = if b >= a { 1.0 } else { -1.0 };
            for i in 0..=n {
                out.push(((a + dir * step * i as f64) * 1e9).round() / 1e9);
            }
        } else {
            out.push(num(item)?);
        }
    }
    for &t in &out {
        if !(0.0..=1.0).contains(&t) {
            return Err(Error::setting("--thresholds", format!("{t} is outside [0, 1]")));
        }
    }
    Ok(dedup_keep_order(out))
}

impl Plan {
    /// Validates resolved settings (defaults ← file ← flags).
    pub fn from_settings(s: RawSettings) -> Result<Plan> {
        // Whatever the caller layered, the defaults fill the rest: each lives in one place.
        s.check_finite()?;
        let s = RawSettings::defaults().overridden_by(s);
        let backends = nonempty(&s.backend, "--backend")?;
        let devices = nonempty(&s.device, "--device")?;
        let dtypes = nonempty(&s.dtype, "--dtype")?;
        let measures = s.measure.clone().unwrap_or_default();
        let thresholds = parse_thresholds(s.thresholds.as_deref().unwrap_or(&[]))?;
        let tau = need(s.tau, "--tau")?;
        let schedules = list("--schedule", &nonempty(&s.schedule, "--schedule")?, |x| Schedule::parse(x, tau))?;
        let min_exit_layers = nonempty(&s.min_exit_layer, "--min-exit-layer")?;
        let exit_intervals = nonempty(&s.exit_interval, "--exit-interval")?;
        if let Some(&0) = exit_intervals.iter().find(|&&k| k == 0) {
            return Err(Error::setting("--exit-interval", "must be at least 1"));
        }
        if !measures.is_empty() && thresholds.is_empty() {
            return Err(Error::setting("--thresholds", "measures are given but no thresholds: the grid is empty"));
        }
        if let Some(t) = &s.threads {
            if t.is_empty() || t.contains(&0) {
                return Err(Error::setting("--threads", "must be a non-empty list of positive numbers"));
            }
            t.iter().try_for_each(|&n| crate::backend::check_threads(n, "--threads"))?;
        }
        let out = match s.out.as_deref() {
            Some(o) if o.trim().is_empty() => return Err(Error::setting("--out", "is empty: name the results directory")),
            Some(o) if Path::new(o).exists() && !Path::new(o).is_dir() => {
                return Err(Error::setting("--out", format!("{o} is a file; --out names a results directory")))
            }
            Some(o) => PathBuf::from(o),
            None => PathBuf::from(format!("results/run-{}", local_timestamp())),
        };
        let static_exits = s.static_exit.clone().unwrap_or_default();
        let oracle = need(s.oracle, "--oracle")?;
        let smallest = dtypes.iter().copied().min_by_key(|p| p.dtype().size_in_bytes()).unwrap_or(Precision::F32);
        let models = list("--model", &nonempty(&s.model, "--model")?, |m| plan_model(Path::new(m), s.random_weights, smallest))?;
        for m in &models {
            let l = m.config.num_hidden_layers;
            for &k in &min_exit_layers {
                if k == 0 || k > l {
                    return Err(Error::setting("--min-exit-layer", format!("{k} is outside 1..={l} for model {}", m.dir.display())));
                }
            }
            for &k in &static_exits {
                if k == 0 || k > l {
                    return Err(Error::setting("--static-exit", format!("{k} is outside 1..={l} for model {}", m.dir.display())));
                }
            }
        }
        let dataset = DatasetSpec::parse(&need(s.dataset.clone(), "--dataset")?)?;
        let samples = need(s.samples, "--samples")?;
        if samples == 0 || samples > MAX_SAMPLES {
            return Err(Error::setting("--samples", format!("{samples} is outside 1..={MAX_SAMPLES}")));
        }
        let examples = dataset.load(Some(samples))?;
        let mut warnings = Vec::new();
        if examples.len() < samples {
            warnings.push(format!("--samples {samples}: {} has only {} examples; running {}", dataset.name(), examples.len(), examples.len()));
        }
        let max_new_tokens = need(s.max_new_tokens, "--max-new-tokens")?;
        if max_new_tokens == 0 {
            return Err(Error::setting("--max-new-tokens", "must be at least 1"));
        }
        let energy = energy_settings(&s.energy)?;
        let repetitions = need(s.repetitions, "--repetitions")?;
        if repetitions == 0 {
            return Err(Error::setting("--repetitions", "must be at least 1"));
        }
        // Repeated values (`--threads 1,1`, `--device cuda,cuda:0`) would run one cell twice.
        let models = dedup_by_key(models, |m| m.dir.canonicalize().unwrap_or_else(|_| m.dir.clone()));
        let plan = Plan {
            models,
            backends: dedup_keep_order(backends),
            devices: dedup_keep_order(devices),
            dtypes: dedup_keep_order(dtypes),
            threads: s.threads.clone().map(dedup_keep_order),
            measures: dedup_keep_order(measures),
            thresholds,
            schedules: dedup_keep_order(schedules),
            min_exit_layers: dedup_keep_order(min_exit_layers),
            exit_intervals: dedup_keep_order(exit_intervals),
            static_exits: dedup_keep_order(static_exits),
            oracle,
            dataset,
            examples,
            max_new_tokens,
            warmup: need(s.warmup, "--warmup")?,
            repetitions,
            round_samples: match s.round_samples {
                Some(0) => return Err(Error::setting("--round-samples", "must be at least 1")),
                other => other,
            },
            order: need(s.order, "--order")?,
            split_cost_row: s.split_cost_row,
            pin_cpus: s.pin_cpus.as_deref().map(crate::backend::threads::parse_cpu_list).transpose()?,
            seed: need(s.seed, "--seed")?,
            out,
            trace_samples: need(s.trace_samples, "--trace-samples")?,
            random_weights: s.random_weights,
            energy,
            cooldown_s: match need(s.energy.cooldown, "--cooldown")? {
                c if c.is_finite() && c >= 0.0 => c,
                c => return Err(Error::setting("--cooldown", format!("{c} must be a number ≥ 0"))),
            },
            warnings,
            resolved: s,
        };
        // Every prompt must fit every model before anything is written.
        for m in &plan.models {
            let files = crate::model::ModelFiles::open(&m.dir, plan.random_weights)?;
            super::runner::encode_prompts(&plan, &files)?;
        }
        Ok(plan)
    }
}

/// A model directory's config, and (unless the weights are random) its weight files checked from
/// their headers: a damaged model is refused before anything is written.
fn plan_model(dir: &Path, random_weights: Option<u64>, precision: Precision) -> Result<PlannedModel> {
    // Config, tokenizer and weight file names, in the order `generate` checks them.
    let config = crate::model::ModelFiles::open(dir, random_weights)?.config;
    let cfg = dir.join("config.json");
    match random_weights {
        Some(_) => crate::model::check_random_fits(&config, &cfg, precision)?,
        None => {
            crate::model::weights::SafetensorFiles::check_headers(dir, &config)?;
            crate::model::weights::SafetensorFiles::check_classifier(dir, &config)?;
        }
    }
    Ok(PlannedModel { dir: dir.to_path_buf(), config })
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
