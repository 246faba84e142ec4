//! `exitbench meter [--seconds S] [-- COMMAND ARGS...]`: the energy of a command (or of S seconds
//! of whatever runs), per meter, like `perf stat` for joules. The command's exit code is
//! propagated. Where a GPU has both the NVML counter and instant power, both are reported with
//! their difference. Also holds the meter flags shared with `info` (and the sweep).

#![warn(missing_docs)]

use crate::error::{Error, Result};
use crate::meter::{self, EnergyWindow, MeterOptions, MeterReading, MeterStatus, Source, WindowReading};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Flags choosing and tuning the meters.
#[derive(Debug, Clone, clap::Args)]
pub struct MeterFlags {
    /// Where RAPL is read and the estimate's TDP (shared with `run` and `calibrate`).
    #[command(flatten)]
    pub source: meter::MeterSourceArgs,
    /// Count RAPL psys (the whole platform) instead of package + DRAM.
    #[arg(long)]
    pub psys: bool,
    /// GPUs to meter by NVML index, comma-separated (default: all).
    #[arg(long, value_name = "LIST")]
    pub gpus: Option<String>,
    /// Instant-power sampling rate (default: twice per measured update period, at least 10 Hz).
    #[arg(long, value_name = "HZ")]
    pub sample_hz: Option<f64>,
}

impl MeterFlags {
    /// Validated meter options (bad values name their flag; exit code 2).
    pub fn options(&self) -> Result<MeterOptions> {
        let gpus = match &self.gpus {
            None => None,
            Some(s) => Some(
                s.split(',')
                    .map(|x| x.trim().parse::<u32>().map_err(|_| Error::setting("--gpus", format!("`{x}` in `{s}` is not a GPU index (expected e.g. 0,1)"))))
                    .collect::<Result<Vec<u32>>>()?,
            ),
        };
        let o = MeterOptions { psys: self.psys, gpus, sample_hz: self.sample_hz, nvml_both: false, ..self.source.options()? };
        o.validate()?;
        Ok(o)
    }
}

/// Flags of `exitbench meter`.
#[derive(Debug, clap::Args)]
pub struct MeterArgs {
    /// Measure this many seconds of whatever runs (instead of a command).
    #[arg(long, value_name = "S")]
    pub seconds: Option<f64>,
    /// Print the readings as JSON on stdout (instead of text on stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Meter selection.
    #[command(flatten)]
    pub meters: MeterFlags,
    /// The command to measure, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// NVML counter against integrated instant power for one GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// GPU index.
    pub gpu: String,
    /// Joules from the total-energy counter.
    pub counter_j: f64,
    /// Joules from integrated instant power.
    pub instant_j: f64,
    /// instant − counter, joules.
    pub diff_j: f64,
    /// instant − counter relative to the counter, percent (None when the counter read 0 J).
    pub diff_pct: Option<f64>,
}

/// What `exitbench meter` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterReport {
    /// The command measured (None for `--seconds`).
    pub command: Option<Vec<String>>,
    /// Its exit code (None for `--seconds`).
    pub exit_code: Option<i32>,
    /// The window.
    pub window: WindowReading,
    /// True when the total is modelled from CPU time, not measured.
    pub estimate: bool,
    /// GPUs with both NVML counter and instant power.
    pub comparisons: Vec<Comparison>,
    /// Every meter considered, available or not and why.
    pub meters: Vec<MeterStatus>,
    /// Notes on the whole report.
    pub notes: Vec<String>,
}

/// Pairs `nvml:N` with `nvml-instant:N`.
pub fn compare(readings: &[MeterReading]) -> Vec<Comparison> {
    readings
        .iter()
        .filter(|r| r.source == Source::Nvml)
        .filter_map(|c| {
            let gpu = c.meter.strip_prefix("nvml:")?;
            let i = readings.iter().find(|r| r.source == Source::NvmlInstant && r.meter.strip_prefix("nvml-instant:") == Some(gpu))?;
            let diff_j = i.energy_j - c.energy_j;
            let diff_pct = (c.energy_j > 0.0).then(|| 100.0 * diff_j / c.energy_j);
            Some(Comparison { gpu: gpu.to_string(), counter_j: c.energy_j, instant_j: i.energy_j, diff_j, diff_pct })
        })
        .collect()
}

/// Measures, prints, and returns the command's exit code (0 for `--seconds`).
pub fn run(a: MeterArgs) -> Result<i32> {
    let seconds = match (a.seconds, a.command.is_empty()) {
        (Some(_), false) => return Err(Error::setting("--seconds", "give either --seconds S or -- COMMAND, not both")),
        (None, true) => return Err(Error::setting("COMMAND", "nothing to measure: give --seconds S or -- COMMAND ARGS...")),
        (Some(s), true) if !s.is_finite() || !(0.0..=86_400.0).contains(&s) => {
            return Err(Error::setting("--seconds", format!("{s} is not a number of seconds (0 to 86400)")))
        }
        (s, _) => s,
    };
    let mut opts = a.meters.options()?;
    opts.nvml_both = true;
    let detected = meter::detect(&opts);
    let status = detected.status.clone();
    let mut window = EnergyWindow::new(detected.meters);
    window.begin()?;
    let exit_code = match seconds {
        Some(s) => {
            std::thread::sleep(Duration::from_secs_f64(s));
            None
        }
        None => match std::process::Command::new(&a.command[0]).args(&a.command[1..]).status() {
            Ok(st) => Some(exit_code(st)),
            Err(e) => {
                let _ = window.end();
                return Err(Error::Io { path: PathBuf::from(&a.command[0]), message: format!("cannot run the command: {e}"), source: None });
            }
        },
    };
    let reading = window.end()?;
    let mut notes = Vec::new();
    if reading.is_estimate() {
        notes.push("estimate: these joules are modelled from CPU time (this process and the command it ran), not measured".into());
        if seconds.is_some() {
            notes.push("with --seconds the estimate sees only this (sleeping) process: other processes' CPU time is not in it".into());
        }
    }
    let report = MeterReport {
        command: (!a.command.is_empty()).then(|| a.command.clone()),
        exit_code,
        estimate: reading.is_estimate(),
        comparisons: compare(&reading.readings),
        window: reading,
        meters: status,
        notes,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Internal(e.to_string()))?;
    if let Some(p) = &a.output {
        std::fs::write(p, format!("{json}\n")).map_err(|e| Error::io(p, e))?;
    }
    if a.json {
        println!("{json}");
    } else {
        let _ = std::io::stderr().write_all(render(&report).as_bytes());
    }
    Ok(exit_code.unwrap_or(0))
}

/// The exit code of a finished command (128 + signal when killed by one).
fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().or_else(|| st.signal().map(|s| 128 + s)).unwrap_or(1)
}

/// The text report (`perf stat` style).
pub fn render(r: &MeterReport) -> String {
    let w = &r.window;
    let what = match &r.command {
        Some(c) => format!("'{}'", c.join(" ")),
        None => "the system".into(),
    };
    let mut s = format!("\n Energy of {what} ({:.3} s, source: {}):\n\n", w.duration_s, w.source_label);
    for m in &w.readings {
        let peak = m.peak_w.map(|p| format!("  peak {p:.1} W")).unwrap_or_default();
        let counted = if m.in_total { "" } else { "  (not in total)" };
        s.push_str(&format!("  {:>14.3} J  {:<24} {:<12} {:>8.2} W avg{peak}{counted}\n", m.energy_j, m.meter, m.scope.name(), m.avg_w));
    }
    s.push_str(&format!("  {:>14.3} J  total ({})\n", w.total_j, w.source_label));
    for c in &r.comparisons {
        let pct = c.diff_pct.map(|p| format!(" ({p:+.2}%)")).unwrap_or_default();
        s.push_str(&format!("\n  GPU {}: counter {:.3} J vs instant power {:.3} J: {:+.3} J{pct}\n", c.gpu, c.counter_j, c.instant_j, c.diff_j));
    }
    for m in &w.readings {
        for x in &m.warnings {
            s.push_str(&format!("  warning: {}: {x}\n", m.meter));
        }
    }
    for n in &r.notes {
        s.push_str(&format!("  note: {n}\n"));
    }
    if let Some(c) = r.exit_code {
        s.push_str(&format!("  exit code: {c}\n"));
    }
    s.push('\n');
    s
}
