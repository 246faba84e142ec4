//! Trains the byte-level BPE tokenizer of the embedded model with the `tokenizers` crate.
//! Digits are split one by one so scores and figures are copied digit by digit. A `<bos>` is
//! prepended by the post-processor template; `<eos>` ends every training target.

use crate::error::{Error, Result};
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer, TokenizerBuilder};

/// Special tokens, in id order (0, 1, 2).
pub const SPECIAL_TOKENS: [&str; 3] = ["<pad>", "<bos>", "<eos>"];
/// Id of `<pad>`.
pub const PAD_ID: u32 = 0;
/// Id of `<bos>`.
pub const BOS_ID: u32 = 1;
/// Id of `<eos>`.
pub const EOS_ID: u32 = 2;

/// Trains a BPE tokenizer of `vocab_size` tokens on `texts` and saves it to `out`.
pub fn train_tokenizer(texts: &[String], vocab_size: usize, out: &Path) -> Result<Tokenizer> {
    let wrap = |e: Box<dyn std::error::Error + Send + Sync>| Error::Internal(format!("tokenizer training: {e}"));
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(SPECIAL_TOKENS.iter().map(|t| AddedToken::from(t.to_string(), true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]);
    let post = TemplateProcessing::builder()
        .try_single("<bos> $A")
        .map_err(|e| Error::Internal(e.to_string()))?
        .special_tokens(vec![("<bos>", BOS_ID)])
        .build()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let mut tk = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)))
        .with_post_processor(Some(tokenizers::PostProcessorWrapper::Template(post)))
        .with_decoder(Some(tokenizers::DecoderWrapper::ByteLevel(ByteLevel::default())))
        .build()
        .map_err(wrap)?;
    tk.train(&mut trainer, texts.iter()).map_err(wrap)?;
    let tokenizer: Tokenizer = tk.into();
    for (i, t) in SPECIAL_TOKENS.iter().enumerate() {
        if tokenizer.token_to_id(t) != Some(i as u32) {
            return Err(Error::Internal(format!("special token {t} did not get id {i}")));
        }
    }
    if tokenizer.get_vocab_size(true) > vocab_size {
        return Err(Error::setting("--vocab", format!("{vocab_size} is too small: the trained tokenizer has {} tokens", tokenizer.get_vocab_size(true))));
    }
    tokenizer.save(out, true).map_err(|e| Error::io(out, std::io::Error::other(e.to_string())))?;
    Ok(tokenizer)
}
