//! Summarization datasets as JSONL: one `{"id", "prompt", "reference"}` object per line (the
//! format of the built-in synthetic task, and of CNN/DM or XSum exports users bring).
//! `synth:test`, `synth:validation` and `synth:train` name the built-in task's splits.

use super::synth::{self, Split};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Identifier, unique in the dataset.
    pub id: String,
    /// The text the model continues.
    pub prompt: String,
    /// The reference summary.
    pub reference: String,
    /// Key facts (built-in synthetic task only), for exact-match scoring; never in JSONL files.
    #[serde(skip)]
    pub facts: Option<synth::KeyFacts>,
}

/// Where examples come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DatasetSpec {
    /// The built-in synthetic task: a split and a seed.
    Synth {
        /// Split.
        split: Split,
        /// Generator seed.
        seed: u64,
    },
    /// A user JSONL file.
    Jsonl(PathBuf),
}

impl DatasetSpec {
    /// Parses `synth:SPLIT` or a file path.
    pub fn parse(s: &str) -> Result<Self> {
        if let Some(split) = s.strip_prefix("synth:") {
            let split = Split::parse(split).ok_or_else(|| {
                Error::setting("--dataset", format!("unknown synthetic split `{split}` (expected synth:train, synth:validation or synth:test)"))
            })?;
            return Ok(DatasetSpec::Synth { split, seed: synth::DEFAULT_SEED });
        }
        Ok(DatasetSpec::Jsonl(PathBuf::from(s)))
    }

    /// A short name for reports.
    pub fn name(&self) -> String {
        match self {
            DatasetSpec::Synth { split, .. } => format!("synth:{}", split.name()),
            DatasetSpec::Jsonl(p) => p.display().to_string(),
        }
    }

    /// Loads the first `n` examples (all of a file when `n` is None).
    pub fn load(&self, n: Option<usize>) -> Result<Vec<Example>> {
        match self {
            DatasetSpec::Synth { split, seed } => Ok(synth::generate(*split, *seed, n.unwrap_or(200))
                .into_iter()
                .map(|s| Example { id: s.id, prompt: s.prompt, reference: s.reference, facts: Some(s.facts) })
                .collect()),
            DatasetSpec::Jsonl(path) => {
                let mut all = read_jsonl(path)?;
                if let Some(n) = n {
                    all.truncate(n);
                }
                Ok(all)
            }
        }
    }
}

/// Reads a JSONL dataset; a malformed line is an error naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Example>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::new();
    for i in 0.. {
        buf.clear();
        let n = crate::lines::read_line_bounded(&mut reader, &mut buf).map_err(|e| Error::file(path, Some(i + 1), format!("unreadable: {e}")))?;
        if n == 0 {
            break;
        }
        if buf.len() > crate::lines::MAX_LINE_BYTES {
            return Err(Error::file(path, Some(i + 1), format!("line longer than {} bytes", crate::lines::MAX_LINE_BYTES)));
        }
        let line = std::str::from_utf8(&buf).map_err(|e| Error::file(path, Some(i + 1), format!("not UTF-8: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let ex: Example = serde_json::from_str(line)
            .map_err(|e| Error::file(path, Some(i + 1), format!("expected {{\"id\", \"prompt\", \"reference\"}} strings: {e}")))?;
        if !ids.insert(ex.id.clone()) {
            return Err(Error::file(path, Some(i + 1), format!("duplicate id `{}`", ex.id)));
        }
        out.push(ex);
    }
    if out.is_empty() {
        return Err(Error::file(path, None, "the dataset has no examples"));
    }
    Ok(out)
}

/// Writes examples as JSONL.
pub fn write_jsonl(examples: &[Example], w: &mut dyn Write) -> std::io::Result<()> {
    for ex in examples {
        serde_json::to_writer(&mut *w, ex)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}
