//! Baseline runs for `check`: a results directory or file is one run; a history directory holds
//! several (`HISTORY/NNNN/results.jsonl`, one per `check --record HISTORY`), so the gate can see
//! how much timings move between runs and not only within one.

use super::record::CellRecord;
use super::store;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The numbered run directories of a history directory, oldest first (empty when `dir` is none).
fn run_dirs(dir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(n) = name.parse::<u32>() else { continue };
        let path = e.path();
        if name.len() == 4 && path.join(store::RESULTS_FILE).is_file() {
            out.push((n, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `p` is a history directory: a directory without results.jsonl holding numbered runs.
pub fn is_history(p: &Path) -> bool {
    p.is_dir() && !p.join(store::RESULTS_FILE).exists() && run_dirs(p).is_ok_and(|r| !r.is_empty())
}

/// The runs at `p`: each run of a history directory, or the one run of a results dir or file.
pub fn read_runs(p: &Path) -> Result<Vec<(PathBuf, Vec<CellRecord>)>> {
    if is_history(p) {
        run_dirs(p)?.into_iter().map(|(_, d)| Ok((d.clone(), store::read(&d)?))).collect()
    } else if p.is_dir() && !p.join(store::RESULTS_FILE).exists() {
        Err(Error::file(p, None, "neither a results directory (no results.jsonl) nor a history directory (no numbered runs such as 0001/results.jsonl)"))
    } else {
        Ok(vec![(p.to_path_buf(), store::read(p)?)])
    }
}

/// Appends `records` to the history at `dir` as its next numbered run (created when missing;
/// written to a temporary directory, then renamed, so a history never holds a torn run).
pub fn record(dir: &Path, records: &[CellRecord]) -> Result<PathBuf> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::file(dir, None, "--record needs a directory (a history of runs), and this is a file"));
    }
    if dir.join(store::RESULTS_FILE).exists() {
        return Err(Error::file(dir, None, "--record needs a history directory, and this is a results directory (it holds results.jsonl)"));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let next = run_dirs(dir)?.last().map(|(n, _)| n + 1).unwrap_or(1);
    if next > 9999 {
        return Err(Error::file(dir, None, "the history holds 9999 runs: start a new one"));
    }
    let tmp = dir.join(format!(".{next:04}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    store::write_records(&tmp.join(store::RESULTS_FILE), records)?;
    let dest = dir.join(format!("{next:04}"));
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_grows_by_numbered_runs_and_reads_back_in_order() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("hist");
        let text = include_str!("../../tests/fixtures/ci-baseline/results.jsonl");
        let recs: Vec<CellRecord> = text.lines().take(2).map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(record(&h, &recs).unwrap(), h.join("0001"));
        assert_eq!(record(&h, &recs[..1]).unwrap(), h.join("0002"));
        assert!(is_history(&h));
        let runs = read_runs(&h).unwrap();
        assert_eq!(runs.iter().map(|(_, r)| r.len()).collect::<Vec<_>>(), vec![2, 1]);
        // A results directory is one run, and not a place to record into.
        let one = read_runs(&h.join("0001")).unwrap();
        assert_eq!(one.len(), 1);
        assert!(record(&h.join("0001"), &recs).is_err());
        // An empty directory is neither.
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = read_runs(&empty).unwrap_err().to_string();
        assert!(e.contains("neither a results directory"), "{e}");
    }
}
