//! A model directory in Hugging Face layout: `config.json`, `model.safetensors` (or a sharded
//! `model.safetensors.index.json`), `tokenizer.json`, and optionally
//! `exit_classifier.safetensors`. Loading checks every file and names the one that is wrong.

pub mod config;
pub mod huge_pages;
#[cfg(target_arch = "x86_64")]
mod attention_avx2;
pub mod attention_cpu;
pub mod kv;
pub mod llama;
pub mod matvec;
pub mod names;
pub mod st_header;
pub mod tokenizer;
pub mod weights;

use crate::error::{Error, Result};
use candle_core::{DType, Device};
pub use config::LlamaConfig;
pub use llama::LlamaModel;
use std::path::{Path, PathBuf};
pub use tokenizer::TextTokenizer;
use weights::{SafetensorFiles, TensorLoader, WeightSource};

crate::named_enum! {
    /// Floating-point precision of weights and activations.
    pub enum Precision: "dtype", "--dtype" {
        /// 32-bit float.
        F32 = "f32" | "fp32" | "float32",
        /// IEEE half precision.
        F16 = "f16" | "fp16" | "float16",
        /// bfloat16.
        Bf16 = "bf16" | "bfloat16",
    }
}

impl Precision {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// How candle builds a model directory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Precision of weights and activations.
    pub precision: Precision,
    /// Device to place the weights on.
    pub device: Device,
    /// Build random weights of config.json's shape with this seed instead of reading weights.
    pub random_weights: Option<u64>,
}

/// What every runtime starts from, whatever it builds: a model directory's configuration,
/// tokenizer, weight files and their provenance. Opening it checks `config.json`, the tokenizer
/// and that the weight files exist; no tensor is read.
#[derive(Clone)]
pub struct ModelFiles {
    /// The directory it came from.
    pub dir: PathBuf,
    /// Its configuration.
    pub config: LlamaConfig,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Seed of random weights, when the weights are random (quality figures are meaningless).
    pub random_weights: Option<u64>,
    /// Decoder weight files (empty for random weights; the exit classifiers are not listed).
    pub weight_files: Vec<PathBuf>,
    /// [`ModelFiles::weights_hash`], once computed (it reads every weight file).
    hash: std::sync::OnceLock<String>,
}

impl ModelFiles {
    /// Opens `dir`: its config, tokenizer and weight file names (`random_weights` builds
    /// seeded random weights of config.json's shape instead of reading weights).
    pub fn open(dir: &Path, random_weights: Option<u64>) -> Result<Self> {
        check_model_dir(dir)?;
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(Error::BadModel { dir: dir.to_path_buf(), message: "config.json is missing".into() });
        }
        let config = LlamaConfig::from_file(&cfg_path)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if random_weights.is_some() && !tok_path.exists() {
            TextTokenizer::Bytes { vocab_size: config.vocab_size }
        } else {
            TextTokenizer::from_file(&tok_path, config.vocab_size)?
        };
        let weight_files = match random_weights {
            Some(_) => Vec::new(),
            None => weights::decoder_weight_paths(dir)?,
        };
        Ok(Self { dir: dir.to_path_buf(), config, tokenizer, random_weights, weight_files, hash: std::sync::OnceLock::new() })
    }

    /// SHA-256 (first 16 hex digits) of every `*.safetensors` file of the directory (decoder
    /// weights and exit classifiers), in name order; `random:SEED` for random weights. Records
    /// and `check` match cells on it.
    pub fn weights_hash(&self) -> Result<String> {
        // Read once per opening: the runner keys cells on it and the ONNX export is named by it.
        if let Some(h) = self.hash.get() {
            return Ok(h.clone());
        }
        let h = weights_hash(&self.dir, self.random_weights)?;
        Ok(self.hash.get_or_init(|| h).clone())
    }
}

/// See [`ModelFiles::weights_hash`].
pub fn weights_hash(dir: &Path, random: Option<u64>) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    if let Some(seed) = random {
        return Ok(format!("random:{seed}"));
    }
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let mut file = std::fs::File::open(&f).map_err(|e| Error::io(&f, e))?;
        loop {
            let n = file.read(&mut buf).map_err(|e| Error::io(&f, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(crate::hex::encode(&h.finalize()[..8]))
}

/// A model directory built as candle's `LlamaModel` (the candle backend, training, the card).
/// Its backend-neutral part is reachable through `Deref` (`m.config`, `m.tokenizer`, ...).
pub struct LoadedModel {
    /// Config, tokenizer and weight files.
    pub files: ModelFiles,
    /// The decoder.
    pub model: LlamaModel,
}

impl std::ops::Deref for LoadedModel {
    type Target = ModelFiles;
    fn deref(&self) -> &ModelFiles {
        &self.files
    }
}

impl LoadedModel {
    /// Opens and builds `dir` with the given options.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        Self::build(ModelFiles::open(dir, opts.random_weights)?, opts)
    }

    /// Builds opened files (`opts.random_weights` must be the files' own).
    pub fn build(files: ModelFiles, opts: &LoadOptions) -> Result<Self> {
        let source = match files.random_weights {
            Some(seed) => WeightSource::Random { seed },
            None => WeightSource::Files(SafetensorFiles::open(&files.dir)?),
        };
        if files.random_weights.is_some() {
            check_random_fits(&files.config, &files.dir.join("config.json"), opts.precision)?;
        }
        let loader = TensorLoader::new(source, opts.precision.dtype(), opts.device.clone(), &files.dir);
        loader.check_layers(&files.config)?;
        let model = LlamaModel::load(&files.config, &loader)?;
        if let Some(at) = model.first_non_finite()? {
            return Err(Error::BadModel {
                dir: files.dir.clone(),
                message: format!("the first forward pass (token 0) is not finite from {at} on: a weight there holds NaN or infinity (or overflows {})", opts.precision.name()),
            });
        }
        Ok(Self { files, model })
    }
}

/// Refuses a `--model` that is not a directory, saying which it is (missing, or a file).
pub fn check_model_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else if dir.exists() {
        Err(Error::Io { path: dir.to_path_buf(), message: "is a file, not a model directory (--model takes a directory holding config.json, model.safetensors and tokenizer.json)".into(), source: None })
    } else {
        Err(Error::Io { path: dir.to_path_buf(), message: "model directory not found".into(), source: None })
    }
}

/// Memory this process may use for random weights: what the system reports available (or its
/// total when it reports none).
fn memory_available() -> u64 {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    match sys.available_memory() {
        0 => sys.total_memory(),
        n => n,
    }
}

/// Refuses random weights of a config too large for this machine's memory (estimated from the
/// parameter count before anything is allocated), naming the config's sizes.
pub fn check_random_fits(cfg: &LlamaConfig, config_path: &Path, precision: Precision) -> Result<()> {
    let bytes = cfg.param_count() as u128 * precision.dtype().size_in_bytes() as u128;
    let avail = memory_available() as u128;
    if avail > 0 && bytes > avail {
        return Err(Error::file(
            config_path,
            None,
            format!(
                "random weights of this config need about {:.1} GB ({} parameters in {}: hidden_size = {}, intermediate_size = {}, num_hidden_layers = {}, vocab_size = {}), more than the {:.1} GB of memory available",
                bytes as f64 / 1e9,
                cfg.param_count(),
                precision.name(),
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.num_hidden_layers,
                cfg.vocab_size,
                avail as f64 / 1e9
            ),
        ));
    }
    Ok(())
}
