//! `exitbench ab --a SIDE --b SIDE [--pairs N] -- RUN_FLAGS`: two exitbench binaries, or two
//! models, measured in the same job: N pairs of the same small sweep, A then B, then B then A
//! (so a drift of the machine during the job falls on both sides alike), compared cell by cell
//! (see [`crate::ab`]). Exit 1 when a cell regressed.

use crate::ab::{self, Pair};
use crate::error::{Error, Result};
use crate::results::store;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Flags of `exitbench ab`.
#[derive(Debug, clap::Args)]
pub struct AbArgs {
    /// Side A: an exitbench binary (a file) or a model directory (run by this binary).
    #[arg(long = "a", value_name = "BIN_OR_MODEL")]
    pub a: PathBuf,
    /// Side B: an exitbench binary (a file) or a model directory (run by this binary).
    #[arg(long = "b", value_name = "BIN_OR_MODEL")]
    pub b: PathBuf,
    /// Pairs of runs (each side runs the sweep this many times, alternating).
    #[arg(long, default_value_t = 5)]
    pub pairs: usize,
    /// Relative changes within ± this are within noise.
    #[arg(long, default_value_t = 0.10)]
    pub noise_threshold: f64,
    /// 1 − the coverage of the intervals over the pairs (0.05: 95%).
    #[arg(long, default_value_t = 0.05)]
    pub significance: f64,
    /// Directory for the runs (a-01/, b-01/, ...) and ab.md, ab.json [default: results/ab-<local time>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Flags of `exitbench run` for the sweep both sides run (after `--`).
    #[arg(last = true, allow_hyphen_values = true)]
    pub run_flags: Vec<String>,
}

/// One side: the program and the arguments that make it that side.
struct Side {
    program: PathBuf,
    extra: Vec<String>,
    name: String,
}

fn side(flag: &str, p: &Path) -> Result<Side> {
    if p.is_dir() {
        let me = std::env::current_exe().map_err(|e| Error::io("the running exitbench binary", e))?;
        Ok(Side { program: me, extra: vec!["--model".into(), p.display().to_string()], name: format!("model {}", p.display()) })
    } else if p.is_file() {
        // A relative binary path is run as a path, not looked up on PATH.
        let program = if p.is_absolute() { p.to_path_buf() } else { Path::new(".").join(p) };
        Ok(Side { program, extra: vec![], name: format!("binary {}", p.display()) })
    } else {
        Err(Error::setting(flag, format!("{} is neither an exitbench binary (a file) nor a model directory", p.display())))
    }
}

/// Runs `exitbench ab`; returns its exit code (1 on a regression).
pub fn run(a: AbArgs) -> Result<i32> {
    if a.pairs == 0 || a.pairs > 1000 {
        return Err(Error::setting("--pairs", format!("{} pairs: give 1 to 1000 (2 or more for an interval)", a.pairs)));
    }
    if !(a.noise_threshold >= 0.0 && a.significance > 0.0 && a.significance < 1.0) {
        return Err(Error::setting("ab", "--noise-threshold must be ≥ 0 and --significance in (0, 1)"));
    }
    for reserved in ["--out", "--resume", "--extend", "--shard"] {
        if a.run_flags.iter().any(|f| f == reserved || f.starts_with(&format!("{reserved}="))) {
            return Err(Error::setting(reserved, "is set by `ab` itself: leave it out of the run flags after --"));
        }
    }
    let (sa, sb) = (side("--a", &a.a)?, side("--b", &a.b)?);
    if (a.a.is_dir() || a.b.is_dir()) && a.run_flags.iter().any(|f| f == "--model" || f.starts_with("--model=")) {
        return Err(Error::setting("--model", "the sides are models: leave --model out of the run flags after --"));
    }
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("results/ab-{}", crate::sweep::plan::local_timestamp())));
    if out.join("ab.json").exists() {
        return Err(Error::setting("--out", format!("{} already holds an A/B comparison (ab.json)", out.display())));
    }
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let run_side = |s: &Side, dir: &Path| -> Result<Vec<crate::results::CellRecord>> {
        let status = Command::new(&s.program)
            .arg("run")
            .args(&s.extra)
            .args(&a.run_flags)
            .args(["--out", &dir.display().to_string(), "--quiet"])
            .status()
            .map_err(|e| Error::io(&s.program, e))?;
        if !status.success() {
            return Err(Error::setting("ab", format!("{} run failed ({status}); its results are in {}", s.name, dir.display())));
        }
        store::read(dir)
    };
    let mut pairs = Vec::new();
    for i in 0..a.pairs {
        let (da, db) = (out.join(format!("a-{:02}", i + 1)), out.join(format!("b-{:02}", i + 1)));
        // A B, then B A: a drift during the job falls on both sides alike.
        let (ra, rb) = if i % 2 == 0 {
            let ra = run_side(&sa, &da)?;
            (ra, run_side(&sb, &db)?)
        } else {
            let rb = run_side(&sb, &db)?;
            (run_side(&sa, &da)?, rb)
        };
        eprintln!("ab: pair {}/{} done", i + 1, a.pairs);
        pairs.push(Pair { a: ra, b: rb });
    }
    let outcome = ab::compare(&pairs, a.noise_threshold, a.significance);
    let md = ab::markdown(&outcome, &sa.name, &sb.name);
    println!("{md}");
    std::fs::write(out.join("ab.md"), &md).map_err(|e| Error::io(out.join("ab.md"), e))?;
    let json = serde_json::to_string_pretty(&outcome).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(out.join("ab.json"), json).map_err(|e| Error::io(out.join("ab.json"), e))?;
    if outcome.cells.is_empty() {
        return Err(Error::setting("ab", "the two sides have no finished cell in common"));
    }
    let regressed = outcome.cells.iter().filter(|c| c.verdict == crate::check::Verdict::Regressed).count();
    if regressed > 0 {
        eprintln!("ab: REGRESSION ({regressed} cell(s) regressed; {})", out.join("ab.md").display());
        Ok(1)
    } else {
        eprintln!("ab: ok ({})", out.join("ab.md").display());
        Ok(0)
    }
}
