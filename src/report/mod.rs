//! Reports from result records: derived comparisons against full depth, then exports behind one
//! `Exporter` trait (CSV, Markdown, HTML), and the terminal summary.

pub mod batching;
pub mod between;
pub mod compare;
pub mod csv;
pub mod derive;
pub mod html;
pub mod markdown;
pub mod svg;
pub mod terminal;

use crate::results::{Baseline, CellRecord, CellStatus};
use crate::error::{Error, Result};
pub use derive::{derive, ReportRow};
use std::path::Path;

/// One output format of a report.
pub trait Exporter {
    /// File name inside the report directory.
    fn file_name(&self) -> &'static str;
    /// Renders the report.
    fn render(&self, rows: &[ReportRow], records: &[CellRecord]) -> Result<String>;
}

/// What a run's intervals cover, said in every report: the noise within the run, not between runs.
pub const INTERVALS_COVER: &str = "Intervals cover the noise within this run only (bootstrap over its samples and rounds). \
A run is one draw of the machine's state (on a shared CPU, how much cache and memory bandwidth other tenants leave): \
another run, day or machine can differ by more. `exitbench check` gates timings only with several baseline runs on \
one machine (their spread enters the interval), and `exitbench ab` measures two versions in the same job.";

/// Every exporter.
pub fn exporters() -> Vec<Box<dyn Exporter>> {
    vec![Box::new(csv::CsvExporter), Box::new(markdown::MarkdownExporter), Box::new(html::HtmlExporter)]
}

/// Writes every export of `records` into `dir` (each file replaced atomically).
pub fn write_all(records: &[CellRecord], dir: &Path) -> Result<Vec<ReportRow>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let rows = derive(records);
    for e in exporters() {
        let text = e.render(&rows, records)?;
        let path = dir.join(e.file_name());
        let tmp = dir.join(format!(".{}.tmp", e.file_name()));
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    }
    Ok(rows)
}

/// With results from more than one machine, the hardware side by side: a header and one row per
/// machine (id, CPU, logical CPUs, memory, GPUs, OS, kernel, exitbench, and each machine's
/// full-depth decode ms/token per configuration). `None` for a single machine.
pub fn machines_table(records: &[CellRecord]) -> Option<(Vec<&'static str>, Vec<Vec<String>>)> {
    let mut machines: Vec<&crate::hardware::Hardware> = Vec::new();
    for r in records {
        if !machines.iter().any(|m| m.machine_id == r.hardware.machine_id) {
            machines.push(&r.hardware);
        }
    }
    if machines.len() < 2 {
        return None;
    }
    let header = vec!["machine", "CPU", "logical CPUs", "memory (MiB)", "GPUs", "OS", "kernel", "exitbench", "full depth ms/token (per configuration)"];
    let rows = machines
        .iter()
        .map(|m| {
            let speeds: Vec<String> = records
                .iter()
                .filter(|r| r.hardware.machine_id == m.machine_id && r.key.baseline == Baseline::Full && r.status == CellStatus::Ok)
                .map(|r| format!("{}: {:.3}", r.key.runtime_label(), r.ms_per_token.median))
                .collect();
            let gpus = m.gpu.as_ref().map(|g| g.gpus.iter().map(|x| x.name.clone()).collect::<Vec<_>>().join(", ")).filter(|s| !s.is_empty()).unwrap_or_else(|| "none".into());
            vec![m.machine_id.clone(), m.cpu_model.clone(), m.logical_cpus.to_string(), m.memory_mib.to_string(), gpus, m.os.clone(), m.kernel.clone(), m.exitbench_version.clone(), speeds.join("; ")]
        })
        .collect();
    Some((header, rows))
}

/// `1 thread`, `2 threads`: a count with its noun in the right number.
/// The measured speedup as reports show it: `3.46× [3.30, 3.61]` (paired, with its 95% interval),
/// `3.46 ± 0.12×` (older records, σ propagated), or `3.46×`; None where there is none.
pub fn speedup_text(r: &ReportRow) -> Option<String> {
    let m = r.speedup_measured?;
    Some(match (r.speedup_measured_lo, r.speedup_measured_hi, r.speedup_measured_err) {
        (Some(lo), Some(hi), _) => format!("{m:.2}× [{lo:.2}, {hi:.2}]"),
        (_, _, Some(e)) => format!("{m:.2} ± {e:.2}×"),
        _ => format!("{m:.2}×"),
    })
}

pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Group ids in order of first appearance.
pub fn group_order(rows: &[ReportRow]) -> Vec<&str> {
    let mut groups: Vec<&str> = Vec::new();
    for r in rows {
        if !groups.contains(&r.group.as_str()) {
            groups.push(&r.group);
        }
    }
    groups
}
