//! Checks made before `exitbench train` writes anything: the flags describe a decoder that can
//! be built, and the model directory is either new or this run's own earlier checkpoint (never a
//! user's weights, never a checkpoint of another shape, seed or tokenizer).

use super::{model_config, TrainOptions};
use crate::error::{Error, Result};

/// Smallest vocabulary the byte-level BPE can have: 256 bytes and the 3 special tokens.
pub const MIN_VOCAB: usize = 256 + super::tokenizer::SPECIAL_TOKENS.len();

/// Rejects flag values that cannot describe a trainable decoder (each error names its flag).
pub fn validate(o: &TrainOptions) -> Result<()> {
    let positive = [
        ("--layers", o.layers),
        ("--hidden", o.hidden),
        ("--heads", o.heads),
        ("--kv-heads", o.kv_heads),
        ("--intermediate", o.intermediate),
        ("--steps", o.steps),
        ("--batch", o.batch),
        ("--checkpoint-every", o.checkpoint_every),
        ("--log-every", o.log_every),
        ("--tokenizer-samples", o.tokenizer_samples),
    ];
    for (flag, v) in positive {
        if v == 0 {
            return Err(Error::setting(flag, "must be greater than 0"));
        }
    }
    if !o.heads.is_multiple_of(o.kv_heads) {
        return Err(Error::setting("--kv-heads", format!("{} does not divide --heads {} (grouped-query attention)", o.kv_heads, o.heads)));
    }
    if !o.hidden.is_multiple_of(o.heads) {
        return Err(Error::setting("--heads", format!("{} does not divide --hidden {}", o.heads, o.hidden)));
    }
    if !(o.hidden / o.heads).is_multiple_of(2) {
        return Err(Error::setting("--heads", format!("the head width --hidden / --heads = {} must be even (RoPE rotates pairs)", o.hidden / o.heads)));
    }
    if o.vocab < MIN_VOCAB {
        return Err(Error::setting("--vocab", format!("{} is below {MIN_VOCAB}: the byte-level tokenizer needs 256 byte tokens and 3 special tokens", o.vocab)));
    }
    if o.max_len < 8 {
        return Err(Error::setting("--max-len", format!("{} tokens cannot hold a prompt and a summary (at least 8)", o.max_len)));
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return Err(Error::setting("--lr", format!("{} must be a positive number", o.lr)));
    }
    if o.warmup > o.steps {
        return Err(Error::setting("--warmup", format!("{} is longer than --steps {}", o.warmup, o.steps)));
    }
    if let Some(t) = o.time_limit_s {
        if !(t.is_finite() && t >= 0.0) {
            return Err(Error::setting("--time-limit", format!("{t} must be a number of seconds ≥ 0 (0 stops after the first step)")));
        }
    }
    model_config(o).check()
}

/// Flag of each configuration field a training run sets.
const FLAG_OF: [(&str, &str); 6] = [
    ("num_hidden_layers", "--layers"),
    ("hidden_size", "--hidden"),
    ("num_attention_heads", "--heads"),
    ("num_key_value_heads", "--kv-heads"),
    ("intermediate_size", "--intermediate"),
    ("vocab_size", "--vocab"),
];

/// Refuses a model directory this run must not write into: weights without a training
/// checkpoint (someone's model, which training from scratch would overwrite), a checkpoint whose
/// configuration differs from the flags or that is past `--steps`, or a checkpoint or tokenizer
/// made with another seed or tokenizer sample count.
pub fn check_model_dir(o: &TrainOptions) -> Result<()> {
    let dir = &o.out;
    if dir.exists() && !dir.is_dir() {
        return Err(Error::file(dir, None, "is not a directory"));
    }
    let weights = dir.join("model.safetensors");
    let resumable = dir.join("checkpoint/state.json").is_file() || dir.join("checkpoint/state.json.tmp").is_file();
    if weights.is_file() && !resumable {
        return Err(Error::file(
            &weights,
            None,
            "these weights have no training checkpoint (checkpoint/state.json): training would start from random weights and \
             overwrite them. To add exit classifiers to this model use `exitbench train --classifier-only`; to train a new model \
             name an empty --model directory",
        ));
    }
    if let Some(state) = super::checkpoint::read_state(dir)? {
        if o.steps < state.step {
            return Err(Error::setting("--steps", format!("{} is below step {}, where the checkpoint in {} stands", o.steps, state.step, dir.display())));
        }
    }
    let config_path = dir.join("config.json");
    if resumable && config_path.is_file() {
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let have: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(&config_path, None, e.to_string()))?;
        let want = serde_json::to_value(model_config(o)).map_err(|e| Error::Internal(e.to_string()))?;
        for (field, flag) in FLAG_OF {
            if have.get(field) != want.get(field) {
                return Err(Error::file(
                    &config_path,
                    None,
                    format!(
                        "the model here has {field} = {}, the flags ask for {flag} {}; resume with the model's own sizes or name another --model directory",
                        have.get(field).unwrap_or(&serde_json::Value::Null),
                        want.get(field).unwrap_or(&serde_json::Value::Null)
                    ),
                ));
            }
        }
    }
    let options_path = dir.join("train_options.json");
    let tok_path = dir.join("tokenizer.json");
    // The tokenizer (reused when present) was trained with the recorded seed and sample count.
    if (resumable || tok_path.is_file()) && options_path.is_file() {
        let text = std::fs::read_to_string(&options_path).map_err(|e| Error::io(&options_path, e))?;
        let before: TrainOptions = serde_json::from_str(&text).map_err(|e| Error::file(&options_path, None, e.to_string()))?;
        for (flag, was, now) in [("--seed", before.seed, o.seed), ("--tokenizer-samples", before.tokenizer_samples as u64, o.tokenizer_samples as u64)] {
            if was != now {
                return Err(Error::setting(flag, format!("{now} differs from {was}, which the checkpoint or tokenizer in {} was made with", dir.display())));
            }
        }
    }
    if tok_path.is_file() {
        let tok = crate::model::tokenizer::load_hf(&tok_path)?;
        if tok.get_vocab_size(true) > o.vocab {
            return Err(Error::file(&tok_path, None, format!("has {} tokens, more than --vocab {}", tok.get_vocab_size(true), o.vocab)));
        }
    }
    Ok(())
}
