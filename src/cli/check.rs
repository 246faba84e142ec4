//! `exitbench check --baseline OLD --current NEW`: the CI regression gate (exit 1 on regression).

use crate::results::{CellStatus, store};
use crate::check::{self, CheckOptions};
use crate::error::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

/// Flags of `exitbench check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Baseline results (dir or results.jsonl).
    #[arg(long)]
    pub baseline: PathBuf,
    /// Current results (dir or results.jsonl).
    #[arg(long)]
    pub current: PathBuf,
    /// Allowed |Δ| of deterministic figures (tokens, avg layers, ROUGE); 0 = exact.
    #[arg(long, default_value_t = 0.0)]
    pub tolerance: f64,
    /// Relative changes within ± this are within noise (a paired speedup regresses only when the
    /// whole 95% interval of its change lies beyond it).
    #[arg(long, default_value_t = 0.10)]
    pub noise_threshold: f64,
    /// Significance level of the t-test on absolute figures (with --absolute).
    #[arg(long, default_value_t = 0.05)]
    pub significance: f64,
    /// Gate on absolute decode ms/token and J/token too (only between records of the same
    /// machine; otherwise they are shown as information).
    #[arg(long)]
    pub absolute: bool,
    /// Write github-action-benchmark customSmallerIsBetter JSON of the current run here.
    #[arg(long)]
    pub export_github_benchmark: Option<PathBuf>,
    /// Write Bencher metric format JSON of the current run here.
    #[arg(long)]
    pub export_bencher: Option<PathBuf>,
}

/// Runs the gate; returns whether it passed.
pub fn run(a: CheckArgs) -> Result<bool> {
    // Written so that NaN fails every condition.
    if !(a.tolerance >= 0.0 && a.noise_threshold >= 0.0 && a.significance > 0.0 && a.significance < 1.0) {
        return Err(Error::setting("check", "--tolerance and --noise-threshold must be ≥ 0 and --significance in (0, 1)"));
    }
    let base = store::read(&a.baseline)?;
    let cur = store::read(&a.current)?;
    if !base.iter().any(|r| r.status == CellStatus::Ok) {
        return Err(Error::setting("--baseline", format!("{} holds no finished (status ok) cell to compare against", a.baseline.display())));
    }
    let cmp = check::compare(&base, &cur, CheckOptions { tolerance: a.tolerance, noise_threshold: a.noise_threshold, significance: a.significance, absolute: a.absolute });
    let md = check::markdown(&cmp);
    println!("{md}");
    if let Ok(summary) = std::env::var("GITHUB_STEP_SUMMARY") {
        if !summary.is_empty() {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&summary).map_err(|e| Error::io(&summary, e))?;
            writeln!(f, "## exitbench check\n\n{md}").map_err(|e| Error::io(&summary, e))?;
        }
    }
    let write_json = |p: &PathBuf, v: serde_json::Value| -> Result<()> {
        std::fs::write(p, serde_json::to_string_pretty(&v).map_err(|e| Error::Internal(e.to_string()))?).map_err(|e| Error::io(p, e))
    };
    if let Some(p) = &a.export_github_benchmark {
        write_json(p, check::github_benchmark(&cur))?;
    }
    if let Some(p) = &a.export_bencher {
        write_json(p, check::bencher(&cur))?;
    }
    let failed = cmp.failed();
    let why: Vec<String> = [
        (!cmp.changed.is_empty()).then(|| format!("{} deterministic figure(s) changed", cmp.changed.len())),
        (!cmp.missing.is_empty()).then(|| format!("{} cell(s) missing", cmp.missing.len())),
        Some(cmp.timings.iter().filter(|c| c.verdict == check::Verdict::Regressed).count()).filter(|&n| n > 0).map(|n| format!("{n} figure(s) regressed")),
    ]
    .into_iter()
    .flatten()
    .collect();
    eprintln!("{}", if failed { format!("check: REGRESSION ({})", why.join(", ")) } else { "check: ok".to_string() });
    Ok(!failed)
}
