//! `exitbench report RESULTS... --out DIR`: reports from one or more results dirs or files.

use crate::error::{Error, Result};
use crate::report;
use crate::results::store;
use std::path::PathBuf;

/// Flags of `exitbench report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Results directories or results.jsonl files.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Directory the reports are written to.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `exitbench report`.
pub fn run(a: ReportArgs) -> Result<()> {
    let mut inputs = Vec::new();
    for p in &a.inputs {
        inputs.push(store::read(p)?);
    }
    // Overlapping inputs (a dir and its own results.jsonl, a merge and its parts): each cell once.
    let (records, dropped) = crate::results::merge::merge(inputs);
    if dropped > 0 {
        eprintln!("warning: {dropped} record(s) repeat a cell already read; the first occurrence is kept");
    }
    if records.is_empty() {
        return Err(Error::setting("inputs", "no result records found"));
    }
    let rows = report::write_all(&records, &a.out)?;
    for line in report::terminal::summary_lines(&rows, &records) {
        println!("{line}");
    }
    Ok(())
}
