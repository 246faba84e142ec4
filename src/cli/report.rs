//! `exitbench report RESULTS... [--out DIR]`: reports from one or more results dirs or files,
//! with the merged `results.jsonl` beside them (so `check` and `report` take the directory).

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
    /// Directory the reports and the merged results.jsonl are written to (default: `report/`
    /// inside the one input directory, or beside the one input file).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `exitbench report`.
pub fn run(a: ReportArgs) -> Result<()> {
    if a.out.as_ref().is_some_and(|o| o.as_os_str().is_empty()) {
        return Err(Error::setting("--out", "is empty: name the directory the reports go to"));
    }
    let mut inputs = Vec::new();
    for p in &a.inputs {
        inputs.push(store::read(p)?);
    }
    let between = report::between::markdown(&inputs);
    // Overlapping inputs (a dir and its own results.jsonl, a merge and its parts): each cell once.
    let (records, dropped) = crate::results::merge::merge(inputs);
    if dropped > 0 {
        eprintln!("warning: {dropped} record(s) repeat a cell already read; the first occurrence is kept in the tables{}", if between.is_some() { ", and summary.md's \"Between runs\" shows the separate runs' spread" } else { "" });
    }
    if records.is_empty() {
        let names: Vec<String> = a.inputs.iter().map(|p| store::records_path(p).display().to_string()).collect();
        return Err(Error::file(names.join(", "), None, "no result records found (the file is empty)"));
    }
    let out = match (&a.out, a.inputs.as_slice()) {
        (Some(o), _) => o.clone(),
        (None, [one]) if one.is_dir() => one.join("report"),
        (None, [one]) => one.parent().unwrap_or(std::path::Path::new(".")).join("report"),
        (None, _) => return Err(Error::setting("--out", "several inputs: name the directory the merged report goes to")),
    };
    let rows = report::write_all(&records, &out)?;
    if let Some(section) = &between {
        let summary = out.join("summary.md");
        let text = std::fs::read_to_string(&summary).map_err(|e| Error::io(&summary, e))? + "\n" + section;
        let tmp = out.join(".summary.md.tmp");
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &summary).map_err(|e| Error::io(&summary, e))?;
    }
    // The merged records beside the reports, unless that file is one of the inputs.
    let merged = out.join(store::RESULTS_FILE);
    let canon = |p: &std::path::Path| std::fs::canonicalize(store::records_path(p)).ok();
    let is_input = canon(&out).is_some() && a.inputs.iter().any(|i| canon(i) == canon(&out));
    if !is_input {
        store::write_records(&merged, &records)?;
    }
    for line in report::terminal::summary_lines(&rows, &records) {
        println!("{line}");
    }
    eprintln!("reports: {}/ (results.jsonl, results.csv, summary.md, report.html)", out.display());
    Ok(())
}
