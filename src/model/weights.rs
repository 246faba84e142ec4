//! Where a model's tensors come from: memory-mapped safetensors files (single or sharded through
//! `model.safetensors.index.json`, plus an optional `exit_classifier.safetensors`), or seeded
//! random values for speed/energy studies of a shape without its weights.
//!
//! Every lookup checks the tensor's presence and shape and names the file on failure.

use crate::error::{Error, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// File holding the optional per-layer exit classifiers beside a checkpoint's own weights.
pub const CLASSIFIER_FILE: &str = "exit_classifier.safetensors";
/// What the classifiers were trained on, beside them: `decoder_fingerprint` (see
/// [`decoder_fingerprint`]), dataset, examples and per-layer fits.
pub const CLASSIFIER_INFO_FILE: &str = "exit_classifier.json";

/// A cheap fingerprint of a model directory's decoder weights (not its classifiers): SHA-256 over
/// each weight file's length and 16 evenly spaced 4 KiB windows, so that retrained weights are
/// told apart without reading a multi-gigabyte checkpoint whole.
pub fn decoder_fingerprint(dir: &Path) -> Result<String> {
    use crate::hex;
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4096];
    for p in decoder_weight_paths(dir)? {
        let mut f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
        let len = f.metadata().map_err(|e| Error::io(&p, e))?.len();
        h.update(len.to_le_bytes());
        for i in 0..16u64 {
            f.seek(SeekFrom::Start(len.saturating_sub(4096) * i / 15)).map_err(|e| Error::io(&p, e))?;
            let n = f.read(&mut buf).map_err(|e| Error::io(&p, e))?;
            h.update(&buf[..n]);
        }
    }
    Ok(hex::encode(&h.finalize()[..8]))
}

/// `exit_classifier.json` of `dir`, parsed; `None` when there is none.
pub fn read_classifier_info(dir: &Path) -> Result<Option<serde_json::Value>> {
    let info = dir.join(CLASSIFIER_INFO_FILE);
    let Ok(text) = std::fs::read_to_string(&info) else { return Ok(None) };
    serde_json::from_str(&text).map(Some).map_err(|e| Error::file(&info, Some(e.line()), format!("malformed JSON: {e}")))
}

/// Whether the classifiers in `dir` were trained on its current weights: `Err(reason)` when
/// `exit_classifier.json` names another fingerprint; files without that record are trusted.
fn classifier_matches(dir: &Path) -> std::result::Result<(), String> {
    let Some(v) = read_classifier_info(dir).map_err(|e| e.to_string())? else { return Ok(()) };
    let Some(trained_on) = v.get("decoder_fingerprint").and_then(|f| f.as_str()) else { return Ok(()) };
    let now = decoder_fingerprint(dir).map_err(|e| e.to_string())?;
    if trained_on == now {
        Ok(())
    } else {
        Err(format!("they were trained on other weights (fingerprint {trained_on}, the weights now are {now})"))
    }
}

/// A source of named tensors.
pub enum WeightSource {
    /// Memory-mapped safetensors files.
    Files(SafetensorFiles),
    /// Seeded random weights (normal(0, 0.02) matrices, unit norms, zero biases).
    Random { seed: u64 },
    /// Tensors already in memory (training, tests).
    Memory(HashMap<String, Tensor>),
}

/// Safetensors files of one model directory with a name → file routing table.
pub struct SafetensorFiles {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    routing: HashMap<String, usize>,
}

impl SafetensorFiles {
    /// Opens `model.safetensors` or the shards listed in `model.safetensors.index.json`, plus
    /// `exit_classifier.safetensors` when present.
    pub fn open(dir: &Path) -> Result<Self> {
        // The decoder's own files first: a damaged weights file is the error to report, before
        // any verdict on the classifiers (whose fingerprint check reads those files).
        let mut s = Self::open_paths(&decoder_weight_paths(dir)?)?;
        let cls = dir.join(CLASSIFIER_FILE);
        if cls.is_file() {
            match classifier_matches(dir) {
                Ok(()) => {
                    let c = Self::open_paths(&[cls])?;
                    let base = s.files.len();
                    s.routing.extend(c.routing.into_iter().map(|(n, i)| (n, i + base)));
                    s.files.extend(c.files);
                }
                Err(why) => eprintln!(
                    "warning: {} not loaded: {why}; retrain them with `exitbench train --classifier-only --model {}`",
                    cls.display(),
                    dir.display()
                ),
            }
        }
        Ok(s)
    }

    fn open_paths(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut routing = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            super::st_header::check_file(p)?;
            // SAFETY: the file is mapped read-only; exitbench never writes weights it has mapped.
            let st = unsafe { MmapedSafetensors::new(p) }
                .map_err(|e| Error::file(p, None, format!("not a valid safetensors file: {e}")))?;
            for (name, _) in st.tensors() {
                routing.insert(name, i);
            }
            files.push((p.clone(), st));
        }
        Ok(Self { files, routing })
    }

    /// Checks, from the headers alone, that the decoder files of `dir` hold every tensor `cfg`
    /// needs with its shape (safetensors checks each tensor's byte length against its header),
    /// so a sweep refuses a damaged model before it writes anything.
    pub fn check_headers(dir: &Path, cfg: &super::LlamaConfig) -> Result<()> {
        let s = Self::open_paths(&decoder_weight_paths(dir)?)?;
        // The layer count first: the per-layer name list below is sized by it.
        s.check_layers(dir, cfg)?;
        for (name, shape, required) in super::llama::expected_tensors(cfg) {
            let Some(&i) = s.routing.get(&name) else {
                if required {
                    return Err(Error::BadModel { dir: dir.to_path_buf(), message: format!("tensor `{name}` is missing from the weights") });
                }
                continue;
            };
            let (path, st) = &s.files[i];
            let view = st.get(&name).map_err(|e| Error::file(path, None, format!("tensor `{name}`: {e}")))?;
            super::st_header::check_float(path, &name, view.dtype())?;
            if view.shape() != shape.as_slice() {
                return Err(Error::file(path, None, format!("tensor `{name}` has shape {:?}, the config needs {shape:?}", view.shape())));
            }
        }
        Ok(())
    }

    /// Refuses weights whose layers are not the config's `num_hidden_layers`: tensors of layers
    /// beyond it (a config that would silently build a shallower model) or layers missing.
    pub fn check_layers(&self, dir: &Path, cfg: &super::LlamaConfig) -> Result<()> {
        let l = cfg.num_hidden_layers;
        let layer_of = super::names::layer_of;
        let held = self.routing.keys().filter_map(|n| layer_of(n.as_str())).max().map_or(0, |m| m + 1);
        let mut extra: Vec<&String> = self.routing.keys().filter(|n| layer_of(n.as_str()).is_some_and(|i| i >= l)).collect();
        if !extra.is_empty() {
            extra.sort_by_key(|n| (layer_of(n.as_str()), n.to_string()));
            let first = layer_of(extra[0].as_str()).unwrap_or(l);
            return Err(Error::BadModel {
                dir: dir.to_path_buf(),
                message: format!(
                    "config.json says num_hidden_layers = {l}, but the weights hold {held} layers: unexpected tensors `{}.*` ({} tensors, e.g. `{}`)",
                    super::names::layer(first),
                    extra.len(),
                    extra[0]
                ),
            });
        }
        if held < l {
            return Err(Error::BadModel {
                dir: dir.to_path_buf(),
                message: format!("config.json says num_hidden_layers = {l}, but the weights hold only {held} layers (tensors `{}.*` are missing)", super::names::layer(held)),
            });
        }
        Ok(())
    }

    /// Checks `exit_classifier.safetensors` of `dir` (when present and trained on these weights)
    /// from its header: every layer's `.weight` `[1, hidden]` and `.bias` `[1]`, float dtypes.
    pub fn check_classifier(dir: &Path, cfg: &super::LlamaConfig) -> Result<()> {
        let cls = dir.join(CLASSIFIER_FILE);
        if !cls.is_file() || classifier_matches(dir).is_err() {
            return Ok(());
        }
        let s = Self::open_paths(std::slice::from_ref(&cls))?;
        let (_, st) = &s.files[0];
        for i in 0..cfg.num_hidden_layers {
            for (name, shape) in [(super::names::classifier_weight(i), vec![1, cfg.hidden_size]), (super::names::classifier_bias(i), vec![1])] {
                let Ok(view) = st.get(&name) else {
                    return Err(Error::file(&cls, None, format!("tensor `{name}` is missing (every layer needs a weight and a bias)")));
                };
                super::st_header::check_float(&cls, &name, view.dtype())?;
                if view.shape() != shape.as_slice() {
                    return Err(Error::file(&cls, None, format!("tensor `{name}` has shape {:?}, the config needs {shape:?}", view.shape())));
                }
            }
        }
        Ok(())
    }

    /// Paths of the opened files.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|(p, _)| p.clone()).collect()
    }
}

/// The decoder's weight files: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists.
pub fn decoder_weight_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() {
        Ok(vec![single])
    } else if index.is_file() {
        shard_paths(dir, &index)
    } else {
        Err(Error::BadModel {
            dir: dir.to_path_buf(),
            message: "no weights: neither model.safetensors nor model.safetensors.index.json exists \
                      (use --random-weights SEED to build random weights from config.json)"
                .into(),
        })
    }
}

fn shard_paths(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::file(index, Some(e.line()), format!("malformed JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::file(index, None, "field `weight_map` missing or not an object"))?;
    let mut files: Vec<String> = map
        .values()
        .map(|f| f.as_str().map(str::to_string).ok_or_else(|| Error::file(index, None, "`weight_map` values must be file names")))
        .collect::<Result<_>>()?;
    files.sort();
    files.dedup();
    // A shard is a file of the model directory: never an absolute path or one leaving it.
    if let Some(bad) = files.iter().find(|f| Path::new(f).components().any(|c| !matches!(c, std::path::Component::Normal(_)))) {
        return Err(Error::file(index, None, format!("`weight_map` names `{bad}`, outside the model directory (shards must be plain file names in it)")));
    }
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    for p in &paths {
        if !p.is_file() {
            return Err(Error::file(index, None, format!("shard {} listed in weight_map does not exist", p.display())));
        }
    }
    Ok(paths)
}

/// Loads tensors by name with a target dtype and device.
pub struct TensorLoader {
    source: WeightSource,
    dtype: DType,
    device: Device,
    label: PathBuf,
}

/// How a randomly initialised tensor is filled.
#[derive(Debug, Clone, Copy)]
enum Init {
    Normal(f32),
    Ones,
    Zeros,
}

impl TensorLoader {
    /// A loader over `source`; `label` names the model in error messages.
    pub fn new(source: WeightSource, dtype: DType, device: Device, label: &Path) -> Self {
        Self { source, dtype, device, label: label.to_path_buf() }
    }

    /// The dtype tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors are placed on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// True when the source has a tensor of that name (random sources have every required one).
    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            WeightSource::Files(f) => f.routing.contains_key(name),
            WeightSource::Random { .. } => false,
            WeightSource::Memory(m) => m.contains_key(name),
        }
    }

    /// A required tensor of the given shape, in the loader's dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_as(name, shape, self.dtype)
    }

    /// A required tensor of the given shape, converted to `dtype`.
    pub fn get_as(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = match &self.source {
            WeightSource::Files(f) => self.read_from_files(f, name, shape)?,
            WeightSource::Memory(m) => {
                let t = m.get(name).ok_or_else(|| self.missing(name))?;
                self.check_shape(name, t.dims(), shape, None)?;
                t.clone()
            }
            WeightSource::Random { seed } => random_tensor(*seed, name, shape, init_for(name), &self.device)?,
        };
        let t = if t.dtype() == dtype { t } else { t.to_dtype(dtype)? };
        Ok(if t.device().same_device(&self.device) { t } else { t.to_device(&self.device)? })
    }

    /// An optional tensor: `None` when absent (a present tensor of the wrong shape is an error).
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        match &self.source {
            WeightSource::Random { .. } => Ok(None),
            _ if !self.contains(name) => Ok(None),
            _ => self.get(name, shape).map(Some),
        }
    }

    fn read_from_files(&self, f: &SafetensorFiles, name: &str, shape: &[usize]) -> Result<Tensor> {
        let idx = *f.routing.get(name).ok_or_else(|| self.missing(name))?;
        let (path, st) = &f.files[idx];
        let view = st.get(name).map_err(|e| Error::file(path, None, format!("tensor `{name}`: {e}")))?;
        super::st_header::check_float(path, name, view.dtype())?;
        self.check_shape(name, view.shape(), shape, Some(path))?;
        st.load(name, &Device::Cpu)
            .map_err(|e| Error::file(path, None, format!("tensor `{name}` cannot be read: {e}")))
    }

    /// An error naming tensor `name` of this model and what is wrong with it.
    pub fn bad_tensor(&self, name: &str, what: impl std::fmt::Display) -> Error {
        Error::BadModel { dir: self.label.clone(), message: format!("tensor `{name}` {what}") }
    }

    /// Refuses layer counts other than the weights' own (see [`SafetensorFiles::check_layers`]).
    pub fn check_layers(&self, cfg: &super::LlamaConfig) -> Result<()> {
        match &self.source {
            WeightSource::Files(f) => f.check_layers(&self.label, cfg),
            _ => Ok(()),
        }
    }

    fn missing(&self, name: &str) -> Error {
        Error::BadModel { dir: self.label.clone(), message: format!("missing tensor `{name}`") }
    }

    fn check_shape(&self, name: &str, got: &[usize], want: &[usize], file: Option<&Path>) -> Result<()> {
        if got == want {
            return Ok(());
        }
        let place = file.map(|p| format!(" in {}", p.display())).unwrap_or_default();
        Err(Error::BadModel {
            dir: self.label.clone(),
            message: format!("tensor `{name}`{place} has shape {got:?}, config.json implies {want:?}"),
        })
    }
}

fn init_for(name: &str) -> Init {
    if name.ends_with("norm.weight") {
        Init::Ones
    } else if name.ends_with(".bias") {
        Init::Zeros
    } else {
        Init::Normal(0.02)
    }
}

/// A tensor whose values depend only on (seed, name): independent of load order.
fn random_tensor(seed: u64, name: &str, shape: &[usize], init: Init, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = match init {
        Init::Ones => vec![1.0; n],
        Init::Zeros => vec![0.0; n],
        Init::Normal(std) => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ fnv1a(name.as_bytes()));
            (0..n)
                .map(|_| {
                    // Box-Muller from two uniforms: deterministic and dependency-free.
                    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
                    let u2: f32 = rng.random::<f32>();
                    std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
                })
                .collect()
        }
    };
    Ok(Tensor::from_vec(data, shape, device)?)
}

/// FNV-1a 64-bit hash (stable across Rust versions, unlike `DefaultHasher`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
