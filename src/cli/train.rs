//! `exitbench train`: the embedded model (from scratch or resumed), or `--classifier-only` exit
//! classifiers for any model directory.

use crate::data::DatasetSpec;
use crate::error::{Error, Result};
use crate::model::{LoadOptions, LoadedModel, Precision};
use crate::train::{classifier, train, TrainOptions};
use std::path::PathBuf;

/// Flags of `exitbench train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Model directory to write (or, with --classifier-only, to read and add classifiers to);
    /// relative to the working directory.
    #[arg(long, default_value = crate::DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Only train per-layer exit classifiers on the frozen model.
    #[arg(long)]
    pub classifier_only: bool,
    /// Dataset for --classifier-only (synth:train, synth:validation or a JSONL file) [default:
    /// synth:train]. The decoder itself always trains on the synthetic train split.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Examples used for --classifier-only.
    #[arg(long, default_value_t = 400)]
    pub samples: usize,
    /// Full-batch epochs of the classifiers (--classifier-only).
    #[arg(long, default_value_t = 300)]
    pub classifier_epochs: usize,
    /// Decoder layers.
    #[arg(long, default_value_t = 6)]
    pub layers: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// Query heads.
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    /// Key/value heads.
    #[arg(long, default_value_t = 4)]
    pub kv_heads: usize,
    /// SwiGLU width.
    #[arg(long, default_value_t = 688)]
    pub intermediate: usize,
    /// Tokenizer vocabulary size.
    #[arg(long, default_value_t = 1024)]
    pub vocab: usize,
    /// Longest training sequence (tokens).
    #[arg(long, default_value_t = 320)]
    pub max_len: usize,
    /// Total optimizer steps.
    #[arg(long, default_value_t = 3000)]
    pub steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Seed.
    #[arg(long, default_value_t = crate::data::synth::DEFAULT_SEED)]
    pub seed: u64,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Log every N steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// Stop after this many seconds (after a checkpoint); rerun the same command to resume.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Synthetic samples the tokenizer is trained on.
    #[arg(long, default_value_t = 4000)]
    pub tokenizer_samples: usize,
    /// CPU threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Runs `exitbench train`.
pub fn run(a: TrainArgs) -> Result<()> {
    crate::backend::check_threads(a.threads, "--threads")?;
    crate::backend::candle::set_cpu_threads(a.threads);
    if a.classifier_only {
        if a.samples == 0 || a.classifier_epochs == 0 {
            return Err(Error::setting("train", "--samples and --classifier-epochs must be positive"));
        }
        let ds = DatasetSpec::parse(a.dataset.as_deref().unwrap_or("synth:train"))?;
        let examples = ds.load(Some(a.samples))?;
        // Taken before loading, so that weights replaced meanwhile are noticed.
        let fingerprint = crate::model::weights::decoder_fingerprint(&a.model);
        let m = LoadedModel::load(&a.model, &LoadOptions { precision: Precision::F32, device: candle_core::Device::Cpu, random_weights: None })?;
        let (path, fits) = classifier::train_classifiers(&m, &fingerprint?, &examples, a.classifier_epochs, 0.05)?;
        for f in &fits {
            println!("layer {}: positive rate {:.3}, accuracy {:.3}, loss {:.4}", f.layer, f.positive_rate, f.accuracy, f.loss);
        }
        println!("wrote {}", path.display());
        return Ok(());
    }
    if let Some(d) = &a.dataset {
        return Err(Error::setting(
            "--dataset",
            format!("`{d}` is only read with --classifier-only (the decoder trains on the synthetic train split); add --classifier-only to train exit classifiers on it"),
        ));
    }
    let o = TrainOptions {
        out: a.model,
        layers: a.layers,
        hidden: a.hidden,
        heads: a.heads,
        kv_heads: a.kv_heads,
        intermediate: a.intermediate,
        vocab: a.vocab,
        max_len: a.max_len,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        warmup: a.warmup,
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        log_every: a.log_every,
        time_limit_s: a.time_limit,
        tokenizer_samples: a.tokenizer_samples,
    };
    let steps = train(&o)?;
    println!("trained to step {steps} of {}; model in {}", o.steps, o.out.display());
    Ok(())
}
