//! `exitbench export-onnx`: writes the model's ONNX graphs (embedding, each layer, each
//! propagation step, the exit head with its reductions, the exit classifier, cosine, full depth)
//! with a manifest, to the export cache `run` and `generate` use (`--onnx-cache`), or to `--out`.

use crate::backend::ort::{export, graphs::CacheForm};
use crate::error::Result;
use crate::model::{ModelFiles, Precision};
use std::path::PathBuf;

/// Flags of `exitbench export-onnx`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Model directory (Hugging Face layout).
    #[arg(long, default_value_os_t = PathBuf::from(crate::default_model()))]
    pub model: PathBuf,
    /// Precision of the graphs: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// How the layer graphs hold their KV caches: `in-place` (one buffer per layer that ONNX
    /// Runtime's GroupQueryAttention extends; what CPU runs in f32 and f16 use) or `concat` (the
    /// cache returned with the new positions appended; what CUDA and bf16 runs use). Default:
    /// what a CPU run in --dtype uses.
    #[arg(long, value_name = "FORM")]
    pub cache_form: Option<String>,
    /// Build random weights of config.json's shape with this seed.
    #[arg(long)]
    pub random_weights: Option<u64>,
    /// Output directory (default: a folder of the export cache, named by the weights, config,
    /// dtype and exporter version).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// ONNX export cache directory (sets EXITBENCH_ONNX_CACHE for this
    /// process and its children; default: $EXITBENCH_ONNX_CACHE, else
    /// $XDG_CACHE_HOME/exitbench/onnx, else ~/.cache/exitbench/onnx).
    #[arg(long, value_name = "DIR")]
    pub onnx_cache: Option<PathBuf>,
}

/// Runs `exitbench export-onnx`.
pub fn run(a: ExportArgs) -> Result<()> {
    let p = Precision::parse(&a.dtype)?;
    let form = match a.cache_form.as_deref() {
        None => CacheForm::for_run(true, p),
        Some("in-place") if p == Precision::Bf16 => return Err(crate::Error::setting("--cache-form", "in-place caches need f32 or f16 (ONNX Runtime's CPU provider has no bf16 GroupQueryAttention); use concat")),
        Some("in-place") => CacheForm::InPlace,
        Some("concat") => CacheForm::Concat,
        Some(other) => return Err(crate::Error::setting("--cache-form", format!("`{other}` is not a cache form: use in-place or concat"))),
    };
    let files = ModelFiles::open(&a.model, a.random_weights)?;
    let (dir, m) = match a.out {
        Some(out) => {
            if out.exists() {
                return Err(crate::Error::setting("--out", format!("{} already exists; choose a new directory", out.display())));
            }
            let wh = files.weights_hash()?;
            let m = export::write_export(&files, &wh, p, form, &out, false)?;
            (out, m)
        }
        None => {
            let e = export::ensure(&files, p, form, &mut |w| eprintln!("warning: {w}"))?;
            if !e.fresh {
                eprintln!("the export in {} is up to date (manifest verified)", e.dir.display());
            }
            (e.dir, e.manifest)
        }
    };
    let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
    println!("{}: {} files, {:.1} MB, {} layers, dtype {}, {} caches, export hash {} ({:.2} s)", dir.display(), m.files.len(), bytes as f64 / 1e6, m.num_layers, m.dtype, m.cache_form.name(), m.export_hash, m.export_s);
    Ok(())
}
