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

pub use crate::lines::{read_line_bounded, MAX_LINE_BYTES};

/// File name of the round log inside a results directory (the rounds of unfinished cells).
pub const ROUNDS_FILE: &str = "rounds.jsonl";

/// Reads every record of a file or results directory; each is upgraded to this schema and
/// checked ([`check_record`]), an error naming the file and line.
pub fn read(p: &Path) -> Result<Vec<CellRecord>> {
    let path = records_path(p);
    if path.file_name().is_some_and(|n| n == ROUNDS_FILE) {
        return Err(Error::file(&path, None, "is a round log (the rounds of unfinished cells), not results: pass the results directory or its results.jsonl"));
    }
    read_lines(&path, "result record", |r: &mut CellRecord| {
        check_record(r)?;
        r.upgrade();
        Ok(())
    })
}

/// Refuses a record this build cannot read faithfully: a newer schema, or an exit histogram
/// whose length is not its layer count (reports index one by the other).
pub fn check_record(r: &CellRecord) -> std::result::Result<(), String> {
    use super::record::SCHEMA_VERSION;
    if r.schema_version == 0 || r.schema_version > SCHEMA_VERSION {
        return Err(format!("schema_version {} is not one this exitbench reads (it reads 1 to {SCHEMA_VERSION}); a newer exitbench wrote it", r.schema_version));
    }
    if r.num_layers > crate::model::config::SIZE_LIMITS[2].1 {
        return Err(format!("num_layers {} exceeds the largest supported {}", r.num_layers, crate::model::config::SIZE_LIMITS[2].1));
    }
    if r.exit_histogram.len() != r.num_layers {
        return Err(format!("exit_histogram has {} entries, but num_layers is {}", r.exit_histogram.len(), r.num_layers));
    }
    Ok(())
}

/// Reads a JSONL file of `what`s, applying `check` to each (a torn last line is skipped), one
/// line at a time: no line longer than [`MAX_LINE_BYTES`] is held in memory.
pub fn read_lines<T: serde::de::DeserializeOwned>(path: &Path, what: &str, check: impl Fn(&mut T) -> std::result::Result<(), String>) -> Result<Vec<T>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(f);
    let blank = |l: &[u8]| l.iter().all(u8::is_ascii_whitespace);
    let mut out = Vec::new();
    // A sweep killed mid-append leaves a last line without its newline, possibly cut inside a
    // multi-byte character: that line alone is skipped; any other bad line is an error.
    let mut buf = Vec::new();
    for i in 1.. {
        buf.clear();
        let n = read_line_bounded(&mut reader, &mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        let ends_clean = buf.ends_with(b"\n");
        if !ends_clean && buf.len() > MAX_LINE_BYTES {
            return Err(Error::file(path, Some(i), format!("line longer than {MAX_LINE_BYTES} bytes: not a {what}")));
        }
        if blank(&buf) {
            continue;
        }
        let parsed = std::str::from_utf8(&buf).map_err(|e| e.to_string()).and_then(|l| serde_json::from_str::<T>(l).map_err(|e| e.to_string()));
        match parsed.and_then(|mut r| check(&mut r).map(|()| r)) {
            Ok(r) => out.push(r),
            Err(_) if !ends_clean => {
                eprintln!("warning: {}: ignoring a torn last line {i} (a sweep was killed while writing it)", path.display());
            }
            Err(e) => return Err(Error::file(path, Some(i), format!("not a {what}: {e}"))),
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
