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
    let inputs = a.inputs.iter().map(|p| store::read(p)).collect::<Result<Vec<_>>>()?;
    let (records, dropped) = merge::merge(inputs);
    if dropped > 0 {
        eprintln!("warning: {dropped} duplicate cells dropped (first occurrence kept)");
    }
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let path = a.out.join(store::RESULTS_FILE);
    if path.exists() {
        return Err(Error::setting("--out", format!("{} already exists; merge into a new directory", path.display())));
    }
    for r in &records {
        store::append(&path, r)?;
    }
    let rows = report::write_all(&records, &a.out)?;
    for line in report::terminal::summary_lines(&rows, &records) {
        println!("{line}");
    }
    eprintln!("merged {} cells into {}", records.len(), path.display());
    Ok(())
}
