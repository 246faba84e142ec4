//! Reading and appending result records. Appends are one `write` of a whole line followed by
//! fsync; on reading, a torn last line (a sweep killed mid-write) is ignored with a warning,
//! every other malformed line is an error naming the line.

use super::record::CellRecord;
use crate::error::{Error, Result};
use std::io::{BufRead, Write};
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

/// Appends one record and syncs it to disk.
pub fn append(path: &Path, rec: &CellRecord) -> Result<()> {
    let mut line = serde_json::to_string(rec).map_err(|e| Error::Internal(e.to_string()))?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(line.as_bytes()).map_err(|e| Error::io(path, e))?;
    f.sync_data().map_err(|e| Error::io(path, e))
}

/// Reads every record of a file or results directory.
pub fn read(p: &Path) -> Result<Vec<CellRecord>> {
    let path = records_path(p);
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io(&path, e))?;
    let mut out = Vec::with_capacity(lines.len());
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<CellRecord>(line) {
            Ok(r) => out.push(r),
            Err(e) if Some(i) == last && e.is_eof() => {
                eprintln!("warning: {}: ignoring a torn last line {} (a sweep was killed while writing it)", path.display(), i + 1);
            }
            Err(e) => return Err(Error::file(&path, Some(i + 1), format!("not a result record: {e}"))),
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
    std::fs::write(path, &bytes[..keep]).map_err(|e| Error::io(path, e))
}
