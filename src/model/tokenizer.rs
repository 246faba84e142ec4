//! Text ↔ token ids. A model directory's `tokenizer.json` is loaded with the `tokenizers` crate and
//! its own post-processor template decides whether a BOS token is prepended. A random-weights
//! model without a tokenizer falls back to one id per UTF-8 byte (quality figures are then
//! meaningless anyway).

use crate::error::{Error, Result};
use std::path::Path;

/// The tokenizer of a model.
#[derive(Clone)]
pub enum TextTokenizer {
    /// A Hugging Face `tokenizer.json`.
    Hf(Box<tokenizers::Tokenizer>),
    /// One token per byte, ids `byte % vocab_size` (random-weights models without a tokenizer).
    Bytes { vocab_size: usize },
}

/// Reads a Hugging Face `tokenizer.json`; any failure is an error naming the file. The tokenizers
/// library panics on some malformed files (an `expect` in its decoder deserializer, found by
/// tests/fuzz.rs): that is bad input too, not a crash.
pub fn load_hf(path: &Path) -> Result<tokenizers::Tokenizer> {
    let loaded = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_file(path)).map_err(|p| {
        let why = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
        Error::file(path, None, format!("not a valid tokenizer.json: the tokenizers library could not read it ({why})"))
    })?;
    loaded.map_err(|e| Error::file(path, None, format!("not a valid tokenizer.json: {e}")))
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and checks that its vocabulary fits the model's.
    pub fn from_file(path: &Path, model_vocab: usize) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Io { path: path.to_path_buf(), message: "tokenizer.json not found".into(), source: None });
        }
        let tok = load_hf(path)?;
        let n = tok.get_vocab_size(true);
        let max_id = tok.get_vocab(true).values().copied().max().unwrap_or(0) as usize;
        if n > model_vocab || max_id >= model_vocab {
            return Err(Error::file(
                path,
                None,
                format!("the tokenizer's vocabulary ({n} tokens, largest id {max_id}) does not fit the model's vocab_size = {model_vocab}"),
            ));
        }
        Ok(TextTokenizer::Hf(Box::new(tok)))
    }

    /// Token ids of `text`, with the tokenizer's special-token template applied.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            TextTokenizer::Hf(t) => Ok(t
                .encode(text, true)
                .map_err(|e| Error::Internal(format!("tokenizer failed on prompt: {e}")))?
                .get_ids()
                .to_vec()),
            TextTokenizer::Bytes { vocab_size } => Ok(text.bytes().map(|b| (b as usize % vocab_size) as u32).collect()),
        }
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            TextTokenizer::Hf(t) => t.decode(ids, true).map_err(|e| Error::Internal(format!("tokenizer decode failed: {e}"))),
            TextTokenizer::Bytes { .. } => Ok(String::from_utf8_lossy(&ids.iter().map(|&i| i as u8).collect::<Vec<_>>()).into_owned()),
        }
    }

    /// The text each token adds to the decoded output (incremental decoding, so multi-token
    /// characters and leading spaces come out right). Concatenated they equal `decode(ids)`.
    pub fn pieces(&self, ids: &[u32]) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(ids.len());
        let mut prev = String::new();
        for i in 0..ids.len() {
            let cur = self.decode(&ids[..=i])?;
            let piece = match cur.strip_prefix(prev.as_str()) {
                Some(rest) => rest.to_string(),
                None => cur.clone(),
            };
            out.push(piece);
            prev = cur;
        }
        Ok(out)
    }
}
