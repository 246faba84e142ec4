//! `exitbench rouge --input PAIRS.jsonl [--stemmer]`: one JSON line of scores per input pair.

use crate::error::{Error, Result};
use crate::metrics::rouge::Rouge;
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// Flags of `exitbench rouge`.
#[derive(Debug, clap::Args)]
pub struct RougeArgs {
    /// JSONL file of {"prediction", "reference"} objects.
    #[arg(long)]
    pub input: PathBuf,
    /// Apply the Porter stemmer (as rouge-score's use_stemmer=True).
    #[arg(long)]
    pub stemmer: bool,
}

#[derive(serde::Deserialize)]
struct Pair {
    prediction: String,
    reference: String,
}

/// Reads every pair first (a broken line fails before anything is printed), then prints scores.
pub fn run(a: RougeArgs) -> Result<()> {
    let file = std::fs::File::open(&a.input).map_err(|e| Error::io(&a.input, e))?;
    let mut pairs = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::file(&a.input, Some(i + 1), format!("unreadable: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let p: Pair = serde_json::from_str(&line)
            .map_err(|e| Error::file(&a.input, Some(i + 1), format!("expected {{\"prediction\", \"reference\"}} strings: {e}")))?;
        pairs.push(p);
    }
    let rouge = Rouge::new(a.stemmer);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for p in pairs {
        let s = rouge.score(&p.prediction, &p.reference);
        let line = serde_json::to_string(&s).map_err(|e| Error::Internal(e.to_string()))?;
        writeln!(out, "{line}").map_err(|e| Error::io("<stdout>", e))?;
    }
    Ok(())
}
