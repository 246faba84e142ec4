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

/// The most samples `data synth` writes in one call (each is a few hundred bytes of JSON).
pub const MAX_SYNTH_SAMPLES: usize = 10_000_000;

/// Runs a data subcommand.
pub fn run(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Synth { split, n, seed, out } => {
            let split = Split::parse(&split)
                .ok_or_else(|| Error::setting("--split", format!("unknown split `{split}` (expected train, validation or test)")))?;
            if n == 0 || n > MAX_SYNTH_SAMPLES {
                return Err(Error::setting("--n", format!("{n} is outside 1..={MAX_SYNTH_SAMPLES}")));
            }
            if out.as_os_str().is_empty() {
                return Err(Error::setting("--out", "is empty: name a file, or - for stdout"));
            }
            // One sample at a time: memory does not grow with --n.
            let write = |w: &mut dyn std::io::Write| -> std::io::Result<()> {
                for i in 0..n {
                    let s = synth::sample(split, seed, i);
                    write_jsonl(&[Example { id: s.id, prompt: s.prompt, reference: s.reference, facts: None }], w)?;
                }
                w.flush()
            };
            if out.as_os_str() == "-" {
                write(&mut std::io::BufWriter::new(std::io::stdout().lock())).map_err(|e| Error::io("<stdout>", e))
            } else {
                let mut f = std::io::BufWriter::new(std::fs::File::create(&out).map_err(|e| Error::io(&out, e))?);
                write(&mut f).map_err(|e| Error::io(&out, e))
            }
        }
    }
}
