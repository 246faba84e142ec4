//! The spread between independent runs of the same cells (`exitbench report RUN1 RUN2 ...`): a
//! run's intervals cover the noise within it, and this section shows how far separate runs of
//! the same cell on the same machine land apart.

use crate::results::{CellRecord, CellStatus};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Markdown of the cells found, finished, in two or more of `inputs` as separate runs (records of
/// one cell that differ in `finished_at`); None when there are none.
pub fn markdown(inputs: &[Vec<CellRecord>]) -> Option<String> {
    let mut by_cell: BTreeMap<&str, Vec<&CellRecord>> = BTreeMap::new();
    for input in inputs {
        for r in input.iter().filter(|r| r.status == CellStatus::Ok) {
            let runs = by_cell.entry(r.cell_id.as_str()).or_default();
            // The same record read twice (a directory and its own results.jsonl) is one run.
            if !runs.iter().any(|x| x.finished_at == r.finished_at) {
                runs.push(r);
            }
        }
    }
    let repeated: Vec<(&str, Vec<&CellRecord>)> = by_cell.into_iter().filter(|(_, v)| v.len() >= 2).collect();
    if repeated.is_empty() {
        return None;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Between runs\n\n{} cells ran in several separate runs on the same machine. The tables above show the first run of each; \
         here each run's median, and the spread max ÷ min between the runs, which the within-run intervals do not cover.\n",
        repeated.len()
    );
    let _ = writeln!(s, "| cell | runs | decode ms/token per run | spread | paired speedup per run | spread |\n|---|---|---|---|---|---|");
    let list = |xs: &[f64]| xs.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ");
    let spread = |xs: &[f64]| {
        let (lo, hi) = xs.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        if xs.len() >= 2 && lo > 0.0 { format!("{:.2}×", hi / lo) } else { "–".into() }
    };
    for (_, runs) in &repeated {
        let ms: Vec<f64> = runs.iter().map(|r| r.ms_per_token.median).collect();
        let sp: Vec<f64> = runs.iter().filter_map(|r| r.speedup.as_ref().map(|p| p.measured)).collect();
        let _ = writeln!(s, "| {} | {} | {} | {} | {} | {} |", crate::check::label(runs[0]), runs.len(), list(&ms), spread(&ms), if sp.is_empty() { "–".into() } else { list(&sp) }, spread(&sp));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separate_runs_of_a_cell_show_their_spread_and_a_file_read_twice_does_not() {
        let text = include_str!("../../tests/fixtures/ci-baseline/results.jsonl");
        let run: Vec<CellRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(markdown(&[run.clone(), run.clone()]), None);
        let mut later = run.clone();
        for r in later.iter_mut() {
            r.finished_at += 86_400;
            r.ms_per_token.median *= 1.5;
        }
        let s = markdown(&[run.clone(), later]).unwrap();
        assert!(s.contains(&format!("{} cells ran in several separate runs", run.len())), "{s}");
        let full = s.lines().find(|l| l.starts_with("| full [")).unwrap();
        assert!(full.contains("| 2 |") && full.contains("| 1.50× |"), "{full}");
    }
}
