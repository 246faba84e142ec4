//! Reports from result records: derived comparisons against full depth, then exports behind one
//! `Exporter` trait (CSV, Markdown, HTML), and the terminal summary.

pub mod csv;
pub mod derive;
pub mod html;
pub mod markdown;
pub mod svg;
pub mod terminal;

use crate::error::{Error, Result};
use crate::results::CellRecord;
pub use derive::{derive, ReportRow};
use std::path::Path;

/// One output format of a report.
pub trait Exporter {
    /// File name inside the report directory.
    fn file_name(&self) -> &'static str;
    /// Renders the report.
    fn render(&self, rows: &[ReportRow], records: &[CellRecord]) -> Result<String>;
}

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
