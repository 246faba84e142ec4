//! Reading and appending result records. Appends are one `write` of a whole line followed by
//! fsync; on reading, a torn last line (a sweep killed mid-write) is ignored with a warning,
//! every other malformed line is an error naming the line.

use super::record::CellRecord;
use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the records inside a results directory.
pub const RESULTS_FILE: &str = "results.jsonl";

/// The JSONL file of a results directory, or the file itself.
pub fn records_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join(RESULTS_FILE)
    } else {
        p.to_path_buf()
    }
}

/// Appends one record (any JSON line: cell records, round records) and syncs it to disk.
pub fn append<T: serde::Serialize>(path: &Path, rec: &T) -> Result<()> {
    let mut line = serde_json::to_string(rec).map_err(|e| Error::Internal(e.to_string()))?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(line.as_bytes()).map_err(|e| Error::io(path, e))?;
    f.sync_data().map_err(|e| Error::io(path, e))
}

/// Writes `records` as the whole of `path` (a temporary file synced, then renamed over it).
pub fn write_records(path: &Path, records: &[CellRecord]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).map_err(|e| Error::Internal(e.to_string()))?);
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Reads every record of a file or results directory.
pub fn read(p: &Path) -> Result<Vec<CellRecord>> {
    read_lines(&records_path(p), "result record", |r: &mut CellRecord| r.upgrade())
}

/// Reads a JSONL file of `what`s, applying `upgrade` to each (a torn last line is skipped).
pub fn read_lines<T: serde::de::DeserializeOwned>(path: &Path, what: &str, upgrade: impl Fn(&mut T)) -> Result<Vec<T>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    // A sweep killed mid-append leaves a last line without its newline, possibly cut inside a
    // multi-byte character: that line alone is skipped; any other bad line is an error.
    let ends_clean = bytes.is_empty() || bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let blank = |l: &[u8]| l.iter().all(u8::is_ascii_whitespace);
    let last = lines.iter().rposition(|l| !blank(l));
    let mut out = Vec::with_capacity(lines.len());
    for (i, raw) in lines.iter().enumerate() {
        if blank(raw) {
            continue;
        }
        let parsed = std::str::from_utf8(raw).map_err(|e| e.to_string()).and_then(|l| serde_json::from_str::<T>(l).map_err(|e| e.to_string()));
        match parsed {
            Ok(mut r) => {
                upgrade(&mut r);
                out.push(r)
            }
            Err(_) if Some(i) == last && !ends_clean => {
                eprintln!("warning: {}: ignoring a torn last line {} (a sweep was killed while writing it)", path.display(), i + 1);
            }
            Err(e) => return Err(Error::file(path, Some(i + 1), format!("not a {what}: {e}"))),
        }
    }
    Ok(out)
}

/// Cuts a torn last line off a results file so that appends start on a fresh line.
pub fn repair_tail(path: &Path) -> Result<()> {
    let Ok(bytes) = std::fs::read(path) else { return Ok(()) };
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
    // Truncate in place: rewriting the file would lose every record if killed in between.
    let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| Error::io(path, e))?;
    f.set_len(keep as u64).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, e))
}
