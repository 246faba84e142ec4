//! Energy meters: what a window of work cost in joules, per meter, with each meter's scope and
//! source stated.
//!
//! A [`Meter`] measures one thing (a GPU board, a CPU package, DRAM, or a modelled estimate) over a
//! window opened by [`Meter::begin`] and closed by [`Meter::end`]. [`detect`] finds every meter
//! this machine offers ([`rapl`] through powercap, [`nvml`] through the NVIDIA driver) and, when
//! there is no counter at all, falls back to the [`estimate`] meter, which is labelled `estimate`
//! everywhere. [`EnergyWindow`] runs several meters over one window and sums them without double
//! counting. [`integrate`] holds the window arithmetic as pure functions, [`carbon`] turns joules
//! into grams of CO2e.
//!
//! GPU work is asynchronous: the caller synchronizes the device at both edges of a window
//! ([`EnergyWindow::measure`] takes the synchronizing closure).

#![warn(missing_docs)]

pub mod carbon;
pub mod estimate;
pub mod integrate;
pub mod nvml;
pub mod rapl;
pub mod sampler;
pub mod window;

pub use window::{idle_power, net_energy, EnergyWindow, NetEnergy, WindowReading};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

crate::named_enum! {
    /// What a meter's joules cover.
    pub enum Scope: "energy scope", "scope" {
        /// One GPU board as NVML reports it (module power on GH200).
        GpuBoard = "gpu-board",
        /// One CPU package (RAPL `package-N`): cores, uncore and, on client parts, the iGPU.
        CpuPackage = "cpu-package",
        /// DRAM attached to one package (RAPL `dram`).
        Dram = "dram",
        /// The whole SoC/platform (RAPL `psys`), only on request.
        Psys = "psys",
        /// Modelled from process CPU time, not measured.
        Estimate = "estimate",
    }
}

crate::named_enum! {
    /// Where a meter's figures come from.
    pub enum Source: "energy source", "source" {
        /// NVML's total-energy counter, read at both edges of the window.
        Nvml = "nvml",
        /// NVML instant power sampled on a background thread and integrated.
        NvmlInstant = "nvml-instant",
        /// RAPL energy counters through Linux powercap.
        Rapl = "rapl",
        /// Process CPU time × per-core power from the CPU's TDP (a model, not a measurement).
        Estimate = "estimate",
    }
}

/// The sources behind a window's joules, as records write them: `none`, `rapl`, `nvml+rapl`,
/// `estimate` (sorted, each once).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sources(Vec<Source>);

impl Sources {
    /// The set of `sources` (sorted, each once).
    pub fn of(sources: impl IntoIterator<Item = Source>) -> Sources {
        let mut v: Vec<Source> = sources.into_iter().collect();
        v.sort();
        v.dedup();
        Sources(v)
    }

    /// No meter: nothing measured.
    pub fn none() -> Sources {
        Sources(Vec::new())
    }

    /// True when no meter contributed.
    pub fn is_none(&self) -> bool {
        self.0.is_empty()
    }

    /// True when the joules are the CPU-time estimate alone (modelled, not measured).
    pub fn is_estimate_only(&self) -> bool {
        self.0 == [Source::Estimate]
    }

    /// The sources, sorted.
    pub fn sources(&self) -> &[Source] {
        &self.0
    }

    /// Reads the record form back (`none`, `nvml+rapl`).
    pub fn parse(s: &str) -> Result<Sources> {
        if s.trim() == "none" {
            return Ok(Sources::none());
        }
        s.split('+').map(Source::parse).collect::<Result<Vec<_>>>().map(Sources::of)
    }
}

impl std::fmt::Display for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.0.iter().map(|s| s.name()).collect::<Vec<_>>().join("+"))
    }
}

impl Serialize for Sources {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Sources {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Sources::parse(&s).map_err(|e| serde::de::Error::custom(format!("energy source `{s}`: {e}")))
    }
}

/// One meter's figures over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterReading {
    /// Meter name, `SOURCE:DEVICE` (e.g. `rapl:package-0`, `nvml:0`, `estimate:cpu`).
    pub meter: String,
    /// What the joules cover.
    pub scope: Scope,
    /// Where they come from.
    pub source: Source,
    /// Energy over the window, joules.
    pub energy_j: f64,
    /// Window length, seconds.
    pub duration_s: f64,
    /// Average power over the window, watts (0 for a zero-length window).
    pub avg_w: f64,
    /// Highest power seen between two reads, watts, where the meter sees more than the two edges.
    pub peak_w: Option<f64>,
    /// Number of reads or samples the figure rests on.
    pub samples: usize,
    /// How often the underlying counter refreshes, seconds, when known.
    pub update_period_s: Option<f64>,
    /// Anything that makes the figure less trustworthy (short window, 0 J, shared GPU...).
    pub warnings: Vec<String>,
    /// Whether the window's total includes this reading (false when another reading covers the
    /// same energy, e.g. NVML instant power next to the NVML counter of the same GPU).
    #[serde(default = "yes")]
    pub in_total: bool,
}

fn yes() -> bool {
    true
}

/// A source of energy figures over windows. Implementations never panic on a missing or odd
/// counter: they return an error or add a warning.
pub trait Meter: Send {
    /// Meter name, `SOURCE:DEVICE` (meters with the same scope and device measure the same
    /// energy, which [`EnergyWindow`] counts once).
    fn name(&self) -> String;
    /// What the joules cover.
    fn scope(&self) -> Scope;
    /// Where they come from.
    fn source(&self) -> Source;
    /// How often the underlying counter refreshes, when known.
    fn update_period(&self) -> Option<Duration>;
    /// Opens a window (reads the counter, starts any sampling thread).
    fn begin(&mut self) -> Result<()>;
    /// Closes the window opened by `begin` and returns its figures.
    fn end(&mut self) -> Result<MeterReading>;
}

/// Environment variable naming the powercap root (for containers that mount it elsewhere).
pub const POWERCAP_ROOT_ENV: &str = "EXITBENCH_POWERCAP_ROOT";

/// Where Linux exposes powercap zones.
pub const DEFAULT_POWERCAP_ROOT: &str = "/sys/class/powercap";

/// Which meters to look for and how to run them.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterOptions {
    /// Powercap root (default `/sys/class/powercap`, or `EXITBENCH_POWERCAP_ROOT`; flag
    /// `--powercap-root`).
    pub powercap_root: PathBuf,
    /// Count RAPL `psys` (whole platform) instead of package + DRAM.
    pub psys: bool,
    /// GPUs to meter by NVML index (None: all).
    pub gpus: Option<Vec<u32>>,
    /// CPU TDP in watts for the estimate meter (and as a power bound for RAPL polling).
    pub cpu_tdp_watts: Option<f64>,
    /// Instant-power sampling rate in Hz (None: half the measured update period, at least 10 Hz).
    pub sample_hz: Option<f64>,
    /// Also add NVML instant-power meters next to the counter (for `exitbench meter`, which
    /// compares them); they are left out of the window's total.
    pub nvml_both: bool,
}

/// The meter flags every command that measures energy takes (`run` and `calibrate` with the same
/// TOML keys, `meter`, `info`), declared once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct MeterSourceArgs {
    /// CPU TDP in watts for the estimate meter [default: from the CPU model table, else 85 W].
    #[arg(long, value_name = "W")]
    pub cpu_tdp_watts: Option<f64>,
    /// Powercap root for RAPL [default: /sys/class/powercap or $EXITBENCH_POWERCAP_ROOT].
    #[arg(long, value_name = "DIR")]
    pub powercap_root: Option<PathBuf>,
}

impl MeterSourceArgs {
    /// The default meter options with these flags applied, validated (bad values name their flag).
    pub fn options(&self) -> Result<MeterOptions> {
        let o = MeterOptions {
            powercap_root: self.powercap_root.clone().unwrap_or_else(default_powercap_root),
            cpu_tdp_watts: self.cpu_tdp_watts,
            ..MeterOptions::default()
        };
        o.validate()?;
        Ok(o)
    }
}

impl Default for MeterOptions {
    fn default() -> Self {
        MeterOptions { powercap_root: default_powercap_root(), psys: false, gpus: None, cpu_tdp_watts: None, sample_hz: None, nvml_both: false }
    }
}

/// `EXITBENCH_POWERCAP_ROOT` when set and not empty, else `/sys/class/powercap`.
pub fn default_powercap_root() -> PathBuf {
    match std::env::var_os(POWERCAP_ROOT_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_POWERCAP_ROOT),
    }
}

impl MeterOptions {
    /// Checks the numeric options (`--cpu-tdp-watts`, `--sample-hz`), naming the flag at fault.
    pub fn validate(&self) -> Result<()> {
        if let Some(w) = self.cpu_tdp_watts {
            if !w.is_finite() || w <= 0.0 || w > 10_000.0 {
                return Err(Error::setting("--cpu-tdp-watts", format!("{w} is not a TDP in watts (expected 0 < W ≤ 10000)")));
            }
        }
        if let Some(hz) = self.sample_hz {
            if !hz.is_finite() || hz <= 0.0 || hz > 1000.0 {
                return Err(Error::setting("--sample-hz", format!("{hz} is not a sampling rate (expected 0 < Hz ≤ 1000)")));
            }
        }
        Ok(())
    }
}

/// Whether one meter (or backend) can be used here, and why (not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterStatus {
    /// Backend (`rapl`, `nvml`, `estimate`) or meter (`rapl:package-0`, `nvml:0`) name.
    pub name: String,
    /// Whether it can be read on this machine.
    pub available: bool,
    /// Whether [`detect`] put it in the returned meters.
    pub used: bool,
    /// Why it is (not) available or (not) used, with the fix where there is one.
    pub why: String,
}

impl MeterStatus {
    /// A status line.
    pub fn new(name: impl Into<String>, available: bool, used: bool, why: impl Into<String>) -> Self {
        MeterStatus { name: name.into(), available, used, why: why.into() }
    }
}

/// What [`detect`] found.
pub struct Detected {
    /// The meters to run, in order: NVML, RAPL, then the estimate when nothing else exists.
    pub meters: Vec<Box<dyn Meter>>,
    /// Every backend and meter considered, available or not and why.
    pub status: Vec<MeterStatus>,
}

impl std::fmt::Debug for Detected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.meters.iter().map(|m| m.name()).collect();
        f.debug_struct("Detected").field("meters", &names).field("status", &self.status).finish()
    }
}

impl Detected {
    /// An [`EnergyWindow`] over the detected meters.
    pub fn into_window(self) -> EnergyWindow {
        EnergyWindow::new(self.meters)
    }

    /// The source label a window over these meters carries (`nvml+rapl`, `estimate`, `none`).
    pub fn source_label(&self) -> Sources {
        let empty = |m: &dyn Meter| MeterReading {
            meter: m.name(),
            scope: m.scope(),
            source: m.source(),
            energy_j: 0.0,
            duration_s: 0.0,
            avg_w: 0.0,
            peak_w: None,
            samples: 0,
            update_period_s: None,
            warnings: Vec::new(),
            in_total: true,
        };
        WindowReading::from_readings(0.0, self.meters.iter().map(|m| empty(m.as_ref())).collect()).source_label
    }
}

/// Finds every meter this machine offers. Never fails: a backend that cannot be used is listed
/// in `status` with the reason. When no counter exists, the estimate meter is used (and
/// labelled `estimate`).
pub fn detect(opts: &MeterOptions) -> Detected {
    let mut meters: Vec<Box<dyn Meter>> = Vec::new();
    let mut status = Vec::new();
    let (gpu, gpu_status) = nvml::detect(opts);
    meters.extend(gpu);
    status.extend(gpu_status);
    let (cpu, cpu_status) = rapl::detect(opts);
    meters.extend(cpu);
    status.extend(cpu_status);
    let est = estimate::EstimateMeter::probe(opts.cpu_tdp_watts);
    let model = est.describe();
    if meters.is_empty() {
        status.push(MeterStatus::new("estimate", true, true, format!("no energy counter here: joules are modelled, not measured: {model}")));
        meters.push(Box::new(est));
    } else {
        status.push(MeterStatus::new("estimate", true, false, format!("not used: a measured counter exists; model: {model}")));
    }
    Detected { meters, status }
}

/// Which readings a window's total counts: per scope and device the best source (NVML counter
/// over instant power), psys instead of package + DRAM, and an estimate only when nothing was
/// measured. Pure; exposed for tests.
pub fn counted(readings: &[MeterReading]) -> Vec<bool> {
    let device = |r: &MeterReading| r.meter.split_once(':').map(|(_, d)| d.to_string()).unwrap_or_default();
    let rank = |s: Source| match s {
        Source::Nvml | Source::Rapl => 0,
        Source::NvmlInstant => 1,
        Source::Estimate => 2,
    };
    let measured = readings.iter().any(|r| r.source != Source::Estimate);
    let psys = readings.iter().any(|r| r.scope == Scope::Psys);
    readings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if r.source == Source::Estimate && measured {
                return false;
            }
            if psys && matches!(r.scope, Scope::CpuPackage | Scope::Dram) {
                return false;
            }
            // The first reading with the best source for this (scope, device) wins.
            !readings.iter().enumerate().any(|(j, o)| {
                j != i && o.scope == r.scope && device(o) == device(r) && (rank(o.source), j) < (rank(r.source), i)
            })
        })
        .collect()
}
