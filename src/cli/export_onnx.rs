//! `exitbench export-onnx`: writes the model's ONNX graphs (embedding, each layer, each
//! propagation step, the exit head with its reductions, the exit classifier, cosine, full depth)
//! with a manifest, to the export cache `run` and `generate` use (`--onnx-cache`), or to `--out`.

use crate::backend::ort::export;
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
    let files = ModelFiles::open(&a.model, a.random_weights)?;
    let (dir, m) = match a.out {
        Some(out) => {
            if out.exists() {
                return Err(crate::Error::setting("--out", format!("{} already exists; choose a new directory", out.display())));
            }
            let wh = files.weights_hash()?;
            let m = export::write_export(&files, &wh, p, &out, false)?;
            (out, m)
        }
        None => {
            let e = export::ensure(&files, p, &mut |w| eprintln!("warning: {w}"))?;
            if !e.fresh {
                eprintln!("the export in {} is up to date (manifest verified)", e.dir.display());
            }
            (e.dir, e.manifest)
        }
    };
    let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
    println!("{}: {} files, {:.1} MB, {} layers, dtype {}, export hash {} ({:.2} s)", dir.display(), m.files.len(), bytes as f64 / 1e6, m.num_layers, m.dtype, m.export_hash, m.export_s);
    Ok(())
}
