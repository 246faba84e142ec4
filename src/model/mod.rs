//! A model directory in Hugging Face layout: `config.json`, `model.safetensors` (or a sharded
//! `model.safetensors.index.json`), `tokenizer.json`, and optionally
//! `exit_classifier.safetensors`. Loading checks every file and names the one that is wrong.

pub mod config;
pub mod llama;
pub mod tokenizer;
pub mod weights;

use crate::error::{Error, Result};
use candle_core::{DType, Device};
pub use config::LlamaConfig;
pub use llama::LlamaModel;
use std::path::{Path, PathBuf};
pub use tokenizer::TextTokenizer;
use weights::{SafetensorFiles, TensorLoader, WeightSource};

/// Floating-point precision of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl Precision {
    /// Parses `f32`, `f16` or `bf16`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(Error::setting("--dtype", format!("unknown dtype `{other}` (expected f32, f16 or bf16)"))),
        }
    }

    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// Canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

/// How to load a model directory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Precision of weights and activations.
    pub precision: Precision,
    /// Device to place the weights on.
    pub device: Device,
    /// Build random weights of config.json's shape with this seed instead of reading weights.
    pub random_weights: Option<u64>,
}

/// A loaded model with its tokenizer and provenance.
pub struct LoadedModel {
    /// The directory it came from.
    pub dir: PathBuf,
    /// Its configuration.
    pub config: LlamaConfig,
    /// The decoder.
    pub model: LlamaModel,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Seed of random weights, when the weights are random (quality figures are meaningless).
    pub random_weights: Option<u64>,
    /// Weight files read (empty for random weights).
    pub weight_files: Vec<PathBuf>,
}

impl LoadedModel {
    /// Loads `dir` with the given options.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Io { path: dir.to_path_buf(), message: "model directory not found".into() });
        }
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(Error::BadModel { dir: dir.to_path_buf(), message: "config.json is missing".into() });
        }
        let config = LlamaConfig::from_file(&cfg_path)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if opts.random_weights.is_some() && !tok_path.exists() {
            TextTokenizer::Bytes { vocab_size: config.vocab_size }
        } else {
            TextTokenizer::from_file(&tok_path, config.vocab_size)?
        };
        let (source, weight_files) = match opts.random_weights {
            Some(seed) => (WeightSource::Random { seed }, Vec::new()),
            None => {
                let files = SafetensorFiles::open(dir)?;
                let paths = files.paths();
                (WeightSource::Files(files), paths)
            }
        };
        let loader = TensorLoader::new(source, opts.precision.dtype(), opts.device.clone(), dir);
        let model = LlamaModel::load(&config, &loader)?;
        Ok(Self { dir: dir.to_path_buf(), config, model, tokenizer, random_weights: opts.random_weights, weight_files })
    }
}
