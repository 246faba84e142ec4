//! `exitbench run`: a sweep over the grid, results appended to `--out DIR/results.jsonl`, reports
//! written at the end. With no flags it runs the default grid on the embedded model.

use crate::error::{Error, Result};
use crate::report;
use crate::sweep::runner::{self, Progress, Quiet, RunOptions};
use crate::sweep::{Plan, RawSettings, Shard};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;

/// Flags of `exitbench run` (comma lists; each overrides the same key of --config).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML file with the same keys as the flags (kebab-case).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model directories.
    #[arg(long, value_delimiter = ',')]
    pub model: Option<Vec<String>>,
    /// Backends.
    #[arg(long, value_delimiter = ',')]
    pub backend: Option<Vec<String>>,
    /// Devices (cpu, cuda, cuda:N).
    #[arg(long, value_delimiter = ',')]
    pub device: Option<Vec<String>>,
    /// Precisions (f32, f16, bf16).
    #[arg(long, value_delimiter = ',')]
    pub dtype: Option<Vec<String>>,
    /// CPU thread counts.
    #[arg(long, value_delimiter = ',')]
    pub threads: Option<Vec<usize>>,
    /// Confidence measures.
    #[arg(long, alias = "measures", value_delimiter = ',')]
    pub measure: Option<Vec<String>>,
    /// Thresholds: numbers or start:stop:step.
    #[arg(long, alias = "threshold", value_delimiter = ',')]
    pub thresholds: Option<Vec<String>>,
    /// Schedules (fixed, decaying).
    #[arg(long, value_delimiter = ',')]
    pub schedule: Option<Vec<String>>,
    /// τ of the decaying schedule.
    #[arg(long)]
    pub tau: Option<f64>,
    /// Minimum exit layers.
    #[arg(long, value_delimiter = ',')]
    pub min_exit_layer: Option<Vec<usize>>,
    /// Exit intervals.
    #[arg(long, value_delimiter = ',')]
    pub exit_interval: Option<Vec<usize>>,
    /// Static exit layers to add as baselines.
    #[arg(long, value_delimiter = ',')]
    pub static_exit: Option<Vec<usize>>,
    /// Include the oracle analysis.
    #[arg(long, overrides_with = "no_oracle")]
    pub oracle: bool,
    /// Leave out the oracle analysis.
    #[arg(long)]
    pub no_oracle: bool,
    /// Dataset: synth:test, synth:validation, synth:train or a JSONL file.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Samples.
    #[arg(long)]
    pub samples: Option<usize>,
    /// Maximum new tokens.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Unmeasured warm-up samples per cell.
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Measured repetitions per cell.
    #[arg(long)]
    pub repetitions: Option<usize>,
    /// Seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory.
    #[arg(long)]
    pub out: Option<String>,
    /// Keep per-token exit traces for the first N samples of every cell.
    #[arg(long)]
    pub trace_samples: Option<usize>,
    /// Random weights of config.json's shape (speed only; quality meaningless).
    #[arg(long)]
    pub random_weights: Option<u64>,
    /// Seconds of idle power measured before the sweep (0 skips; default 5).
    #[arg(long)]
    pub idle_seconds: Option<f64>,
    /// Repeat a repetition's samples inside one energy window until it lasts this long, then
    /// divide (coarse meters; 0 disables; default 5).
    #[arg(long)]
    pub min_window: Option<f64>,
    /// Grid carbon intensity: g CO2e/kWh, or a country code of the built-in table.
    #[arg(long)]
    pub carbon_intensity: Option<String>,
    /// Power usage effectiveness (default 1.0).
    #[arg(long)]
    pub pue: Option<f64>,
    /// CPU TDP in watts for the estimate meter.
    #[arg(long)]
    pub cpu_tdp_watts: Option<f64>,
    /// Powercap root for RAPL (default /sys/class/powercap or $EXITBENCH_POWERCAP_ROOT).
    #[arg(long)]
    pub powercap_root: Option<String>,
    /// Seconds to sleep between cells.
    #[arg(long)]
    pub cooldown: Option<f64>,
    /// Continue a sweep in --out, skipping finished cells (refused when the settings differ from
    /// the ones recorded in its plan.json).
    #[arg(long)]
    pub resume: bool,
    /// Add this plan's cells to an existing --out (other settings than the sweep there).
    #[arg(long, conflicts_with = "resume")]
    pub extend: bool,
    /// Run a deterministic 1/N of the configuration groups: I/N.
    #[arg(long)]
    pub shard: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

impl RunArgs {
    fn flags(&self) -> RawSettings {
        RawSettings {
            model: self.model.clone(),
            backend: self.backend.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            threads: self.threads.clone(),
            measure: self.measure.clone(),
            thresholds: self.thresholds.clone(),
            schedule: self.schedule.clone(),
            tau: self.tau,
            min_exit_layer: self.min_exit_layer.clone(),
            exit_interval: self.exit_interval.clone(),
            static_exit: self.static_exit.clone(),
            oracle: if self.no_oracle { Some(false) } else if self.oracle { Some(true) } else { None },
            dataset: self.dataset.clone(),
            samples: self.samples,
            max_new_tokens: self.max_new_tokens,
            warmup: self.warmup,
            repetitions: self.repetitions,
            seed: self.seed,
            out: self.out.clone(),
            trace_samples: self.trace_samples,
            random_weights: self.random_weights,
            idle_seconds: self.idle_seconds,
            min_window: self.min_window,
            carbon_intensity: self.carbon_intensity.clone(),
            pue: self.pue,
            cpu_tdp_watts: self.cpu_tdp_watts,
            powercap_root: self.powercap_root.clone(),
            cooldown: self.cooldown,
        }
    }
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&mut self, total: u64) {
        self.0.set_length(total);
    }
    fn cell(&mut self, label: &str) {
        self.0.set_message(label.to_string());
    }
    fn tick(&mut self) {
        self.0.inc(1);
    }
    fn warn(&mut self, msg: &str) {
        self.0.suspend(|| eprintln!("warning: {msg}"));
    }
    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

/// After Ctrl-C or SIGTERM: the reports of what is done (even when nothing is), how many cells
/// are done, and the exact command that continues the sweep; exit code 130.
fn interrupted(out: &std::path::Path, done: usize, total: usize, out_given: bool) -> Result<i32> {
    let records = crate::results::store::read(out).unwrap_or_default();
    let reports = report::write_all(&records, out).map(|_| " (summary.md and report.html cover them)").unwrap_or("");
    let mut args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--extend").collect();
    if !args.iter().any(|a| a == "--resume") {
        args.push("--resume".into());
    }
    if !out_given {
        args.push("--out".into());
        args.push(out.display().to_string());
    }
    let quote = |a: &String| if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c)) { a.clone() } else { format!("'{}'", a.replace('\'', "'\\''")) };
    let cmd: Vec<String> = std::iter::once("exitbench".to_string()).chain(args.iter().map(quote)).collect();
    eprintln!("interrupted: {done} of {total} cells done, in {}{reports}; the cell in flight was dropped", out.display());
    eprintln!("continue with: {}", cmd.join(" "));
    Ok(130)
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

/// Runs `exitbench run`; the exit code is 1 when a cell of this run failed (its row says why).
pub fn run(a: RunArgs) -> Result<i32> {
    let file = match &a.config {
        Some(p) => RawSettings::from_toml_file(p)?,
        None => RawSettings::default(),
    };
    let out_given = file.out.is_some() || a.out.is_some();
    let mut settings = RawSettings::defaults().overridden_by(file).overridden_by(a.flags());
    if (a.resume || a.extend) && !out_given {
        return Err(Error::setting("--resume", "needs --out DIR (the sweep to continue): without --out every run starts a fresh results/run-<time>"));
    }
    if !out_given {
        // Without --out every run gets its own directory, so the main command can be rerun.
        settings.out = Some(format!("results/run-{}", local_timestamp()));
    }
    let shard = a.shard.as_deref().map(Shard::parse).transpose()?;
    let plan = Plan::from_settings(settings)?;
    if !a.quiet {
        plan.warnings.iter().for_each(|w| eprintln!("warning: {w}"));
    }
    let mut progress: Box<dyn Progress> = if a.quiet {
        Box::new(runner::Silent)
    } else if !std::io::stderr().is_terminal() {
        Box::new(Quiet)
    } else {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} samples · eta {eta} · {msg}")
                .map_err(|e| Error::Internal(e.to_string()))?,
        );
        Box::new(Bar(bar))
    };
    crate::interrupt::install();
    let written = match runner::run(&plan, RunOptions { shard, resume: a.resume, extend: a.extend }, progress.as_mut()) {
        Err(Error::Stopped { done, total }) => return interrupted(&plan.out, done, total, out_given),
        other => other?,
    };
    let records = crate::results::store::read(&plan.out)?;
    let rows = report::write_all(&records, &plan.out)?;
    // -q: errors only.
    if !a.quiet {
        for line in report::terminal::summary_lines(&rows, &records) {
            println!("{line}");
        }
        if let Some(line) = report::terminal::bookkeeping_line(&written) {
            eprintln!("{line}");
        }
        eprintln!("results: {}/results.jsonl; reports: results.csv, summary.md, report.html", plan.out.display());
    }
    let failed = written.iter().filter(|r| r.status == "error").count();
    if failed > 0 {
        eprintln!("error: {failed} cell(s) failed; their rows in results.csv have status `error` and the reason");
        return Ok(1);
    }
    Ok(0)
}
