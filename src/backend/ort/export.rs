//! Exporting a model directory's weights to ONNX graphs (see `graphs.rs`), cached per weights
//! hash, dtype and exporter version: `DIR/.exitbench-onnx/<weights-hash>-<dtype>-v<N>/`, or a
//! user cache directory when DIR is read-only. An export is written to a temporary folder and
//! renamed, so concurrent shards share one; a manifest records each file's size and SHA-256,
//! and a cache that does not match it is re-exported with a warning.

use super::graphs::{self, Weights};
use crate::error::{Error, Result};
use crate::model::{LoadOptions, LoadedModel, ModelFiles, Precision};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Version of the exporter: bump it whenever a graph changes, so old caches are not reused.
pub const EXPORTER_VERSION: u32 = 1;
/// The manifest's file name inside an export directory.
pub const MANIFEST: &str = "manifest.json";
/// Initializer bytes above which a graph keeps its weights in `<graph>.data`.
const EXTERNAL_ABOVE: usize = 1 << 30;

/// One exported file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExportedFile {
    /// File name inside the export directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// What an export directory holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// [`EXPORTER_VERSION`] that wrote it.
    pub exporter_version: u32,
    /// The weights hash of the source files (`ModelFiles::weights_hash`).
    pub weights_hash: String,
    /// Precision of the graphs.
    pub dtype: String,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// True when `classifier.onnx` exists.
    pub has_classifier: bool,
    /// Every file with its size and hash.
    pub files: Vec<ExportedFile>,
    /// Hash over the files' hashes: the export's own identity (records keep it apart from the
    /// weights hash).
    pub export_hash: String,
    /// Seconds the export took.
    pub export_s: f64,
}

/// An export ready to load.
#[derive(Debug, Clone)]
pub struct Export {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Seconds spent exporting in this call (0 when the cache was reused).
    pub export_s: f64,
    /// True when this call wrote it.
    pub fresh: bool,
}

/// Where the export of `files` in `p` lives (the model's folder, or the user cache directory
/// when that folder cannot be written).
pub fn cache_dir(files: &ModelFiles, weights_hash: &str, p: Precision) -> PathBuf {
    let leaf = format!("{}-c{}-{}-v{EXPORTER_VERSION}", weights_hash.replace(':', "-"), config_hash(files), p.name());
    let local = files.dir.join(".exitbench-onnx");
    if writable(&files.dir) || local.join(&leaf).is_dir() {
        return local.join(leaf);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let abs = std::fs::canonicalize(&files.dir).unwrap_or_else(|_| files.dir.clone());
    let tag = crate::hex::encode(&Sha256::digest(abs.display().to_string().as_bytes())[..6]);
    base.join("exitbench").join("onnx").join(tag).join(leaf)
}

/// A hash of the parsed config (shape, RoPE, norms): the graphs depend on it as much as on the
/// weights, and random weights share one weights hash across shapes.
pub fn config_hash(files: &ModelFiles) -> String {
    let json = serde_json::to_string(&files.config).unwrap_or_default();
    crate::hex::encode(&Sha256::digest(json.as_bytes())[..4])
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".exitbench-write-probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The export of `files` in precision `p`, written if absent and rewritten (with a warning
/// through `warn`) when its files do not match the manifest.
pub fn ensure(files: &ModelFiles, p: Precision, warn: &mut dyn FnMut(&str)) -> Result<Export> {
    let wh = files.weights_hash()?;
    let dir = cache_dir(files, &wh, p);
    if dir.is_dir() {
        match verify(&dir) {
            Ok(manifest) if manifest.weights_hash == wh => return Ok(Export { dir, manifest, export_s: 0.0, fresh: false }),
            Ok(_) => warn(&format!("{}: the ONNX export was made from other weights; exporting again", dir.display())),
            Err(why) => warn(&format!("{}: the ONNX export does not match its manifest ({why}); exporting again", dir.display())),
        }
        // Out of the way under a unique name first, so that a concurrent shard never sees a
        // half-deleted export (and another shard's removal of it is no error).
        let trash = dir.with_extension(format!("trash-{}-{}", std::process::id(), unique()));
        match std::fs::rename(&dir, &trash) {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&trash);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&dir, e)),
        }
        if let Ok(manifest) = verify(&dir) {
            // Another process exported it meanwhile.
            return Ok(Export { dir, manifest, export_s: 0.0, fresh: false });
        }
    }
    remove_stale_temporaries(dir.parent());
    let t = Instant::now();
    let manifest = write_export(files, &wh, p, &dir, false)?;
    Ok(Export { dir, manifest, export_s: t.elapsed().as_secs_f64(), fresh: true })
}

/// Checks every file of the manifest in `dir` (size, then SHA-256).
pub fn verify(dir: &Path) -> std::result::Result<Manifest, String> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if m.exporter_version != EXPORTER_VERSION {
        return Err(format!("exporter version {} (this build writes {EXPORTER_VERSION})", m.exporter_version));
    }
    for f in &m.files {
        let p = dir.join(&f.name);
        let len = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", f.name))?.len();
        if len != f.bytes {
            return Err(format!("{} has {len} bytes, the manifest says {}", f.name, f.bytes));
        }
        if sha256_file(&p).map_err(|e| e.to_string())? != f.sha256 {
            return Err(format!("{} does not have the manifest's SHA-256", f.name));
        }
    }
    Ok(m)
}

fn unique() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
}

/// Removes `.tmp-<pid>-*` folders whose process is gone (an export killed half-way).
fn remove_stale_temporaries(parent: Option<&Path>) {
    let Some(parent) = parent else { return };
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(".tmp-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn sha256_file(p: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(p, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::hex::encode(&h.finalize()))
}

/// Writes every graph of `files` in `p` into `dest` (through a temporary sibling folder renamed
/// into place; when another process got there first, its export is kept). `full` forces the
/// full-depth graph's weights into external data (tests).
pub fn write_export(files: &ModelFiles, weights_hash: &str, p: Precision, dest: &Path, force_external: bool) -> Result<Manifest> {
    let t = Instant::now();
    let parent = dest.parent().ok_or_else(|| Error::Internal(format!("{}: no parent", dest.display())))?;
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = parent.join(format!(".tmp-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = (|| -> Result<Manifest> {
        let m = LoadedModel::build(files.clone(), &LoadOptions { precision: p, device: candle_core::Device::Cpu, random_weights: files.random_weights })?;
        let mut t_map: std::collections::HashMap<String, candle_core::Tensor> = m.model.named_tensors().into_iter().collect();
        t_map.extend(m.model.classifier_tensors());
        let w = Weights { cfg: &files.config, t: t_map, p };
        let mut out = Vec::new();
        let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
            let path = tmp.join(name);
            std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
            out.push(ExportedFile { name: name.into(), bytes: bytes.len() as u64, sha256: crate::hex::encode(&Sha256::digest(bytes)) });
            Ok(())
        };
        // A graph whose weights pass 1 GiB keeps them in `<name>.data` (protobufs stop at 2 GiB:
        // the full-depth graph of any real model, the embedding and head of a large vocabulary).
        let mut put_graph = |name: &str, g: super::onnx::Graph, force: bool| -> Result<()> {
            if force || g.initializer_bytes() > EXTERNAL_ABOVE {
                let mut data = Vec::new();
                let file = format!("{name}.data");
                let proto = g.finish(Some((&file, &mut data)));
                put(&file, &data)?;
                put(name, &proto)
            } else {
                put(name, &g.finish(None))
            }
        };
        put_graph("embed.onnx", graphs::embed_graph(&w)?, false)?;
        for i in 0..files.config.num_hidden_layers {
            put_graph(&format!("layer_{}.onnx", i + 1), graphs::layer_graph(&w, i)?, false)?;
            put_graph(&format!("propagate_{}.onnx", i + 1), graphs::propagate_graph(&w, i)?, false)?;
        }
        put_graph("head.onnx", graphs::head_graph(&w)?, false)?;
        put_graph("cosine.onnx", graphs::cosine_graph(&w)?, false)?;
        let cls = graphs::classifier_graph(&w)?;
        let has_classifier = cls.is_some();
        if let Some(c) = cls {
            put_graph("classifier.onnx", c, false)?;
        }
        put_graph("full.onnx", graphs::full_graph(&w)?, force_external)?;
        let mut h = Sha256::new();
        for f in &out {
            h.update(f.name.as_bytes());
            h.update(f.sha256.as_bytes());
        }
        let manifest = Manifest {
            exporter_version: EXPORTER_VERSION,
            weights_hash: weights_hash.to_string(),
            dtype: p.name().into(),
            num_layers: files.config.num_hidden_layers,
            has_classifier,
            files: out,
            export_hash: crate::hex::encode(&h.finalize()[..8]),
            export_s: t.elapsed().as_secs_f64(),
        };
        let json = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
        let mp = tmp.join(MANIFEST);
        std::fs::write(&mp, json).map_err(|e| Error::io(&mp, e))?;
        Ok(manifest)
    })();
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, dest) {
        // Another process renamed its export into place first: keep that one if it is whole.
        let _ = std::fs::remove_dir_all(&tmp);
        return verify(dest).map_err(|why| Error::io(dest, std::io::Error::other(format!("could not move the export into place ({e}), and what is there does not verify: {why}"))));
    }
    Ok(manifest)
}
