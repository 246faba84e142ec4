//! `exitbench check --baseline OLD... --current NEW [--record HISTORY]`: the CI regression gate
//! (exit 1 on regression).

use crate::check::{self, BaselineRun, CheckOptions};
use crate::results::{history, store, CellStatus};
use crate::error::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

/// Flags of `exitbench check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Baseline runs: results dirs or files, or history directories (each numbered run inside
    /// counts); several (`--baseline A B` or repeated) let the gate see the spread between runs.
    #[arg(long, num_args = 1.., required_unless_present = "record")]
    pub baseline: Vec<PathBuf>,
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
    /// 1 − the coverage of the between-run prediction interval of a gated timing (0.05: 95%).
    #[arg(long, default_value_t = 0.05)]
    pub significance: f64,
    /// Gate on absolute decode ms/token and J/token too (like paired speedups: only with several
    /// baseline runs on the current machine; otherwise they are shown as information).
    #[arg(long)]
    pub absolute: bool,
    /// Append the current run to this history directory after a passing check (as its next
    /// numbered run), so later checks can give it as --baseline; without --baseline, to start one.
    #[arg(long, value_name = "HISTORY")]
    pub record: Option<PathBuf>,
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
    let mut base = Vec::new();
    for p in &a.baseline {
        for (path, records) in history::read_runs(p)? {
            if !records.iter().any(|r| r.status == CellStatus::Ok) {
                return Err(Error::setting("--baseline", format!("{} holds no finished (status ok) cell to compare against", path.display())));
            }
            base.push(BaselineRun { source: path.display().to_string(), records });
        }
    }
    let cur = store::read(&a.current)?;
    if base.is_empty() {
        // Only --record: the first run of a history.
        let dest = history::record(a.record.as_deref().expect("clap requires --baseline or --record"), &cur)?;
        eprintln!("check: no baseline given; recorded {} as {}", a.current.display(), dest.display());
        return Ok(true);
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
    if let Some(h) = &a.record {
        if failed {
            eprintln!("check: not recorded in {}: the gate failed", h.display());
        } else {
            let dest = history::record(h, &cur)?;
            eprintln!("check: recorded {} as {}", a.current.display(), dest.display());
        }
    }
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
