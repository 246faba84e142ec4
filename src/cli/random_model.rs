//! `exitbench random-model --config CONFIG --seed S --dtype D --out DIR`: the random-weight model
//! that `--random-weights S` builds, written as real files (config.json, model.safetensors in D,
//! and a byte-level tokenizer.json whose ids are the UTF-8 bytes, as `--random-weights` encodes
//! text), so another program (e.g. PyTorch) can read exactly the weights exitbench runs.

use crate::error::{Error, Result};
use crate::model::{LoadOptions, LoadedModel, ModelFiles, Precision};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Flags of `exitbench random-model`.
#[derive(Debug, clap::Args)]
pub struct RandomModelArgs {
    /// A Hugging Face config.json (or a directory holding one).
    #[arg(long)]
    pub config: PathBuf,
    /// Seed of the random weights (the same as `--random-weights SEED`).
    #[arg(long)]
    pub seed: u64,
    /// Precision the weights are stored in.
    #[arg(long, value_enum, ignore_case = true, default_value = "f32")]
    pub dtype: Precision,
    /// New directory to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// GPT-2's byte → printable character table, the alphabet of byte-level BPE.
fn byte_chars() -> Vec<char> {
    let printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable.contains(&b) {
                char::from_u32(b).expect("printable byte")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("shifted byte")
            }
        })
        .collect()
}

/// A byte-level tokenizer with id = byte and no merges, saved to `path`.
pub fn write_byte_tokenizer(path: &Path) -> Result<()> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let vocab: tokenizers::models::bpe::Vocab = byte_chars().into_iter().enumerate().map(|(b, c)| (c.to_string(), b as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, vec![]).build().map_err(|e| Error::Internal(format!("byte tokenizer: {e}")))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(ByteLevel::new(false, false, false)));
    tk.with_decoder(Some(ByteLevel::default()));
    tk.save(path, true).map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
}

/// Runs `exitbench random-model`.
pub fn run(a: RandomModelArgs) -> Result<()> {
    let cfg_path = if a.config.is_dir() { a.config.join("config.json") } else { a.config.clone() };
    let cfg = crate::model::LlamaConfig::from_file(&cfg_path)?;
    if cfg.vocab_size < 256 {
        return Err(Error::file(&cfg_path, None, format!("vocab_size {} is below 256: a byte tokenizer needs every byte", cfg.vocab_size)));
    }
    if a.out.as_os_str().is_empty() {
        return Err(Error::setting("--out", "is empty: name a new directory"));
    }
    crate::model::check_random_fits(&cfg, &cfg_path, a.dtype)?;
    if a.out.exists() && std::fs::read_dir(&a.out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(Error::setting("--out", format!("{} exists and is not empty; choose a new directory", a.out.display())));
    }
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let cfg_out = a.out.join("config.json");
    std::fs::copy(&cfg_path, &cfg_out).map_err(|e| Error::io(&cfg_out, e))?;
    let files = ModelFiles::open(&a.out, Some(a.seed))?;
    let m = LoadedModel::build(files, &LoadOptions { precision: a.dtype, device: candle_core::Device::Cpu, random_weights: Some(a.seed) })?;
    let tensors: HashMap<String, candle_core::Tensor> = m.model.named_tensors().into_iter().collect();
    let weights = a.out.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights)?;
    write_byte_tokenizer(&a.out.join("tokenizer.json"))?;
    let bytes = std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0);
    println!("{}: random weights (seed {}, {}), {:.1} MB; `--model {}` runs what `--random-weights {}` runs", a.out.display(), a.seed, a.dtype.name(), bytes as f64 / 1e6, a.out.display(), a.seed);
    Ok(())
}
