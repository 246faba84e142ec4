//! `exitbench run`: a sweep over the grid, results appended to `--out DIR/results.jsonl`, reports
//! written at the end. With no flags it runs the default grid on the embedded model.

use crate::results::CellStatus;
use crate::error::{Error, Result};
use crate::report;
use crate::sweep::runner::{self, Progress, RunOptions};
use crate::sweep::{Plan, RawSettings, Shard};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;

/// Flags of `exitbench run`: the sweep settings (comma lists; each overrides the same key of
/// --config), and how to run them.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML file with the same keys as the flags (kebab-case).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The grid, the dataset, decoding and energy settings.
    #[command(flatten)]
    pub settings: RawSettings,
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
    /// Errors only: no progress bar, warnings or summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// ONNX export cache directory for the `ort` backend (sets EXITBENCH_ONNX_CACHE for this
    /// process and its children; default: $EXITBENCH_ONNX_CACHE, else
    /// $XDG_CACHE_HOME/exitbench/onnx, else ~/.cache/exitbench/onnx).
    #[arg(long, value_name = "DIR")]
    pub onnx_cache: Option<PathBuf>,
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

/// Progress for a log (stderr is not a terminal, as in CI): warnings, and a line per finished
/// round of a group with the samples done and the time, so a long job is not minutes of silence.
struct Log {
    started: std::time::Instant,
    total: u64,
    done: u64,
}

impl Progress for Log {
    fn start(&mut self, total: u64) {
        self.total = total;
        eprintln!("run: {total} samples to generate");
    }
    fn cell(&mut self, _: &str) {}
    fn tick(&mut self) {
        self.done += 1;
    }
    fn warn(&mut self, msg: &str) {
        eprintln!("warning: {msg}");
    }
    fn finish(&mut self) {}
    fn round_done(&mut self, what: &str) {
        let s = self.started.elapsed().as_secs();
        let pct = (100 * self.done).checked_div(self.total).unwrap_or(100);
        eprintln!("[{:02}:{:02}] {what} · {}/{} samples ({pct}%)", s / 60, s % 60, self.done, self.total);
    }
}

/// After Ctrl-C or SIGTERM: the reports of what is done (even when nothing is), how many cells
/// are done, and the exact command that continues the sweep; exit code 130.
fn interrupted(out: &std::path::Path, done: usize, total: usize, rounds: usize, out_given: bool) -> Result<i32> {
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
    eprintln!(
        "interrupted: {done} of {total} cells done, in {}{reports}; {rounds} finished round(s) of unfinished cells are kept in {} and the round in flight was dropped",
        out.display(),
        crate::sweep::rounds::ROUNDS_FILE
    );
    eprintln!("continue with: {}", cmd.join(" "));
    Ok(130)
}

/// A setting refused while planning that came from `--config FILE` (not overridden by a flag) is
/// reported against the file and the line of its key, not as a flag the user never typed.
fn from_config_file(e: Error, config: Option<&std::path::Path>, flags: &RawSettings) -> Error {
    let (Error::BadSetting { field, message }, Some(path)) = (&e, config) else { return e };
    let key = field.trim_start_matches("--");
    let Ok(text) = std::fs::read_to_string(path) else { return e };
    match crate::sweep::plan::toml_file::line_of_key(&text, key) {
        Some(line) if !flags.sets(key) => Error::file(path, Some(line), format!("{key}: {message}")),
        _ => e,
    }
}

/// Runs `exitbench run`; the exit code is 1 when a cell of this run failed (its row says why).
pub fn run(a: RunArgs) -> Result<i32> {
    let file = match &a.config {
        Some(p) => RawSettings::from_toml_file(p)?,
        None => RawSettings::default(),
    };
    file.check_finite().map_err(|e| match e {
        Error::BadSetting { field, message } => Error::file(a.config.clone().unwrap_or_default(), None, format!("{}: {message}", field.trim_start_matches('-'))),
        other => other,
    })?;
    a.settings.check_finite()?;
    let out_given = file.out.is_some() || a.settings.out.is_some();
    let settings = RawSettings::layered(file, a.settings.clone());
    if (a.resume || a.extend) && !out_given {
        return Err(Error::setting("--resume", "needs --out DIR (the sweep to continue): without --out every run starts a fresh results/run-<time>"));
    }
    // Without --out every run gets its own directory (results/run-<local time>), so the main
    // command can be rerun.
    let shard = a.shard.as_deref().map(Shard::parse).transpose()?;
    let plan = Plan::from_settings(settings).map_err(|e| from_config_file(e, a.config.as_deref(), &a.settings))?;
    if !a.quiet {
        plan.warnings.iter().for_each(|w| eprintln!("warning: {w}"));
    }
    let mut progress: Box<dyn Progress> = if a.quiet {
        Box::new(runner::Silent)
    } else if !std::io::stderr().is_terminal() {
        Box::new(Log { started: std::time::Instant::now(), total: 0, done: 0 })
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
        Err(Error::Stopped { done, total, rounds }) => return interrupted(&plan.out, done, total, rounds, out_given),
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
    if !written.is_empty() && written.iter().all(|r| r.status == CellStatus::Unsupported) {
        let mut reasons: Vec<String> = written.iter().filter_map(|r| r.reason.clone()).collect();
        reasons.sort();
        reasons.dedup();
        return Err(Error::Unsupported(format!(
            "no cell of this run can run here ({}); the `unsupported` rows are in {}/results.jsonl",
            reasons.join("; "),
            plan.out.display()
        )));
    }
    let failed = written.iter().filter(|r| r.status == CellStatus::Error).count();
    if failed > 0 {
        eprintln!("error: {failed} cell(s) failed; their rows in results.csv have status `error` and the reason");
        return Ok(1);
    }
    Ok(0)
}
