//! `exitbench data synth --split S --n N --out FILE.jsonl [--seed N]`.

use crate::data::dataset::{write_jsonl, Example};
use crate::data::synth::{self, Split};
use crate::error::{Error, Result};
use std::path::PathBuf;

/// Dataset subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Write n samples of a split of the synthetic cricket summarization task.
    Synth {
        /// train, validation or test.
        #[arg(long, default_value = "test")]
        split: String,
        /// Number of samples.
        #[arg(long, default_value_t = 200)]
        n: usize,
        /// Generator seed.
        #[arg(long, default_value_t = synth::DEFAULT_SEED)]
        seed: u64,
        /// Output file ("-" for stdout).
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
}

/// Runs a data subcommand.
pub fn run(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Synth { split, n, seed, out } => {
            let split = Split::parse(&split)
                .ok_or_else(|| Error::setting("--split", format!("unknown split `{split}` (expected train, validation or test)")))?;
            let examples: Vec<Example> = synth::generate(split, seed, n)
                .into_iter()
                .map(|s| Example { id: s.id, prompt: s.prompt, reference: s.reference, facts: None })
                .collect();
            if out.as_os_str() == "-" {
                write_jsonl(&examples, &mut std::io::stdout().lock()).map_err(|e| Error::io("<stdout>", e))
            } else {
                let mut f = std::io::BufWriter::new(std::fs::File::create(&out).map_err(|e| Error::io(&out, e))?);
                write_jsonl(&examples, &mut f).map_err(|e| Error::io(&out, e))
            }
        }
    }
}
