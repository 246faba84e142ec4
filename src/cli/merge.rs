//! `exitbench merge A B ... --out DIR`: one results set from many runs (e.g. the shards of a
//! Slurm job array, or sweeps on different machines), then its reports.

use crate::error::{Error, Result};
use crate::report;
use crate::results::{merge, store};
use std::path::PathBuf;

/// Flags of `exitbench merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// Results directories or results.jsonl files.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Directory for the merged results.jsonl and reports.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `exitbench merge`.
pub fn run(a: MergeArgs) -> Result<()> {
    if a.out.as_os_str().is_empty() {
        return Err(Error::setting("--out", "is empty: name the directory for the merged results"));
    }
    if a.out.exists() && !a.out.is_dir() {
        return Err(Error::setting("--out", format!("{} is a file; --out names a directory", a.out.display())));
    }
    let inputs = a.inputs.iter().map(|p| store::read(p)).collect::<Result<Vec<_>>>()?;
    let (records, dropped) = merge::merge(inputs);
    if dropped > 0 {
        eprintln!("warning: {dropped} duplicate cells dropped (first occurrence kept)");
    }
    let path = a.out.join(store::RESULTS_FILE);
    if path.exists() {
        return Err(Error::setting("--out", format!("{} already exists; merge into a new directory", path.display())));
    }
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    // Whole or not at all: a temporary file synced, then renamed over the name.
    store::write_records(&path, &records)?;
    let rows = report::write_all(&records, &a.out)?;
    for line in report::terminal::summary_lines(&rows, &records) {
        println!("{line}");
    }
    eprintln!("merged {} cells into {}", records.len(), path.display());
    Ok(())
}
