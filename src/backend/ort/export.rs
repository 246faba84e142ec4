//! Exporting a model directory's weights to ONNX graphs (see `graphs.rs`), cached by content in
//! the user's cache directory ([`cache_root`]: `$EXITBENCH_ONNX_CACHE`, else
//! `$XDG_CACHE_HOME/exitbench/onnx`, else `~/.cache/exitbench/onnx`), one folder per weights
//! hash, config hash, dtype and exporter version, so two copies of a model share one export.
//! An export is written to a temporary folder and renamed, so concurrent shards share one; a
//! manifest records each file's size and SHA-256 (computed while writing), and a cache that does
//! not match it is re-exported with a warning. Files are streamed: each tensor's bytes are
//! produced from the model's own tensor when written and dropped after, so an export needs
//! little memory beyond the model.

use super::graphs::{self, CacheForm, Weights};
use crate::error::{Error, Result};
use crate::model::{LoadOptions, LoadedModel, ModelFiles, Precision};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Environment variable naming the export cache directory (`--onnx-cache` sets it).
pub const CACHE_ENV: &str = "EXITBENCH_ONNX_CACHE";

/// Version of the exporter: bump it whenever a graph changes, so old caches are not reused.
/// (2: in-place caches, whose export folders a development build before this version filled
/// with a concatenating full-depth graph. 3: a batch axis in the in-place layer and
/// propagation graphs and in the head.)
pub const EXPORTER_VERSION: u32 = 3;
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

fn concat() -> CacheForm {
    CacheForm::Concat
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
    /// How the layer graphs hold their caches (manifests written before the in-place form
    /// existed are `concat`).
    #[serde(default = "concat")]
    pub cache_form: CacheForm,
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

/// The directory holding every cached export: `$EXITBENCH_ONNX_CACHE`, else
/// `$XDG_CACHE_HOME/exitbench/onnx`, else `$HOME/.cache/exitbench/onnx`, else the temporary
/// directory's `exitbench/onnx`.
pub fn cache_root() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = var(CACHE_ENV) {
        return d;
    }
    var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache"))).unwrap_or_else(std::env::temp_dir).join("exitbench").join("onnx")
}

/// Makes `dir` the cache directory of this process and of the processes it starts (Slurm shards,
/// `ab`'s sides): sets [`CACHE_ENV`] to its absolute path. Call it before any thread starts.
pub fn set_cache_root(dir: &Path) {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::env::set_var(CACHE_ENV, abs);
}

/// Where the export of `files` in `p` with caches in `form` lives: a folder of [`cache_root`]
/// named by content only (weights hash, config hash, dtype, exporter version, and `-in-place`
/// for that form), never by the model's path.
pub fn cache_dir(files: &ModelFiles, weights_hash: &str, p: Precision, form: CacheForm) -> PathBuf {
    let suffix = if form == CacheForm::InPlace { "-in-place" } else { "" };
    cache_root().join(format!("{}-c{}-{}-v{EXPORTER_VERSION}{suffix}", weights_hash.replace(':', "-"), config_hash(files), p.name()))
}

/// What the export cache holds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CacheUsage {
    /// [`cache_root`].
    pub dir: PathBuf,
    /// Number of exports (folders with a manifest).
    pub exports: usize,
    /// Bytes of everything in it (temporaries of unfinished exports included).
    pub bytes: u64,
}

/// The size of the export cache (zero when it does not exist).
pub fn cache_usage() -> CacheUsage {
    let dir = cache_root();
    let entries: Vec<PathBuf> = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    let exports = entries.iter().filter(|p| p.join(MANIFEST).is_file()).count();
    let bytes = entries.iter().map(|p| tree_bytes(p)).sum();
    CacheUsage { dir, exports, bytes }
}

/// Removes every export (and leftover temporary) from the cache, nothing else; returns what
/// was there.
pub fn clear_cache() -> Result<CacheUsage> {
    let before = cache_usage();
    for e in std::fs::read_dir(&before.dir).into_iter().flatten().flatten() {
        let (path, name) = (e.path(), e.file_name().to_string_lossy().into_owned());
        if path.join(MANIFEST).is_file() || name.starts_with(".tmp-") || name.contains(".trash-") {
            std::fs::remove_dir_all(&path).map_err(|err| Error::io(&path, err))?;
        }
    }
    Ok(before)
}

fn tree_bytes(p: &Path) -> u64 {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p).into_iter().flatten().flatten().map(|e| tree_bytes(&e.path())).sum(),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// A hash of the parsed config (shape, RoPE, norms): the graphs depend on it as much as on the
/// weights, and random weights share one weights hash across shapes.
pub fn config_hash(files: &ModelFiles) -> String {
    let json = serde_json::to_string(&files.config).unwrap_or_default();
    crate::hex::encode(&Sha256::digest(json.as_bytes())[..4])
}

/// The export of `files` in precision `p` with caches in `form`, written if absent and rewritten
/// (with a warning through `warn`) when its files do not match the manifest.
pub fn ensure(files: &ModelFiles, p: Precision, form: CacheForm, warn: &mut dyn FnMut(&str)) -> Result<Export> {
    let wh = files.weights_hash()?;
    let dir = cache_dir(files, &wh, p, form);
    if dir.is_dir() {
        match verify(&dir) {
            Ok(manifest) if manifest.weights_hash == wh && manifest.cache_form == form => return Ok(Export { dir, manifest, export_s: 0.0, fresh: false }),
            Ok(m) if m.weights_hash == wh => warn(&format!("{}: the ONNX export holds {} caches, not {}; exporting again", dir.display(), m.cache_form.name(), form.name())),
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
        if let Ok(manifest) = verify(&dir).map_err(|_| ()).and_then(|m| if m.weights_hash == wh && m.cache_form == form { Ok(m) } else { Err(()) }) {
            // Another process exported it meanwhile.
            return Ok(Export { dir, manifest, export_s: 0.0, fresh: false });
        }
    }
    remove_stale_temporaries(dir.parent());
    let t = Instant::now();
    let manifest = write_export(files, &wh, p, form, &dir, false)?;
    Ok(Export { dir, manifest, export_s: t.elapsed().as_secs_f64(), fresh: true })
}

/// The file in an export directory that records, after a full check, each file's size and
/// modification time: a later check whose files all still show those reads no file again.
pub const VERIFIED: &str = "verified.json";

/// What [`VERIFIED`] holds.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Stamp {
    /// When the check that wrote it began, ns since the Unix epoch.
    checked_ns: u128,
    /// (name, bytes, modification time in ns) of every file of the manifest, in its order.
    files: Vec<(String, u64, u128)>,
}

/// Files' modification times closer than this to a stamp's check are not trusted (a file system
/// with coarse times could show a file rewritten just after the check with the time it had).
const RACY_NS: u128 = 2_000_000_000;

/// Checks every file of the manifest in `dir`: sizes, then SHA-256, unless [`VERIFIED`] shows
/// that a full check already passed and no file's size or modification time changed since (the
/// 1B shape's 12 GB export hashed on every open took 7.7 s). A file changed with its old
/// modification time put back is not noticed; `exitbench info --clear-onnx-cache` starts over.
pub fn verify(dir: &Path) -> std::result::Result<Manifest, String> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if m.exporter_version != EXPORTER_VERSION {
        return Err(format!("exporter version {} (this build writes {EXPORTER_VERSION})", m.exporter_version));
    }
    let checked_ns = now_ns();
    let mut seen = Vec::with_capacity(m.files.len());
    for f in &m.files {
        let meta = std::fs::metadata(dir.join(&f.name)).map_err(|e| format!("{}: {e}", f.name))?;
        if meta.len() != f.bytes {
            return Err(format!("{} has {} bytes, the manifest says {}", f.name, meta.len(), f.bytes));
        }
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        seen.push((f.name.clone(), f.bytes, mtime));
    }
    let stamp: Option<Stamp> = std::fs::read_to_string(dir.join(VERIFIED)).ok().and_then(|t| serde_json::from_str(&t).ok());
    if stamp.is_some_and(|s| s.files == seen && seen.iter().all(|f| f.2 != 0 && f.2 + RACY_NS < s.checked_ns)) {
        return Ok(m);
    }
    for f in &m.files {
        if sha256_file(&dir.join(&f.name)).map_err(|e| e.to_string())? != f.sha256 {
            return Err(format!("{} does not have the manifest's SHA-256", f.name));
        }
    }
    // Best effort: without the stamp the next check hashes again. Written to a unique name and
    // renamed, so concurrent checks never read half of one.
    if let Ok(json) = serde_json::to_string(&Stamp { checked_ns, files: seen }) {
        let tmp = dir.join(format!(".{VERIFIED}.{}-{}", std::process::id(), unique()));
        if std::fs::write(&tmp, json).is_ok() && std::fs::rename(&tmp, dir.join(VERIFIED)).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(m)
}

fn now_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
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

/// A file written through a buffer while its SHA-256 and length are computed.
struct HashingFile {
    path: PathBuf,
    name: String,
    w: std::io::BufWriter<std::fs::File>,
    h: Sha256,
    n: u64,
}

impl HashingFile {
    fn create(dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(name);
        let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(HashingFile { path, name: name.into(), w: std::io::BufWriter::with_capacity(1 << 20, f), h: Sha256::new(), n: 0 })
    }

    /// Flushes it and describes it, or gives the error `written` (what wrote it) returned.
    fn finish(mut self, written: std::io::Result<()>) -> Result<ExportedFile> {
        written.and_then(|()| self.w.flush()).map_err(|e| Error::io(&self.path, e))?;
        Ok(ExportedFile { name: self.name, bytes: self.n, sha256: crate::hex::encode(&self.h.finalize()) })
    }
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.w.write(buf)?;
        self.h.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// Writes every graph of `files` in `p` (layer and propagation graphs with caches in `form`)
/// into `dest` (through a temporary sibling folder renamed into place; when another process got
/// there first, its export is kept). `force_external` forces the full-depth graph's weights into
/// external data (tests).
pub fn write_export(files: &ModelFiles, weights_hash: &str, p: Precision, form: CacheForm, dest: &Path, force_external: bool) -> Result<Manifest> {
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
        // A graph whose weights pass 1 GiB keeps them in `<name>.data` (protobufs stop at 2 GiB:
        // the full-depth graph of any real model, the embedding and head of a large vocabulary).
        // Each file is streamed and hashed as it is written.
        let mut put_graph = |name: &str, mut g: super::onnx::Graph, force: bool| -> Result<()> {
            if force || g.initializer_bytes() > EXTERNAL_ABOVE {
                let file = format!("{name}.data");
                let mut data = HashingFile::create(&tmp, &file)?;
                let r = g.externalize(&file, &mut data);
                out.push(data.finish(r)?);
            }
            let mut proto = HashingFile::create(&tmp, name)?;
            let r = g.write_model(&mut proto);
            out.push(proto.finish(r)?);
            Ok(())
        };
        put_graph("embed.onnx", graphs::embed_graph(&w)?, false)?;
        for i in 0..files.config.num_hidden_layers {
            put_graph(&format!("layer_{}.onnx", i + 1), graphs::layer_graph(&w, i, form)?, false)?;
            put_graph(&format!("propagate_{}.onnx", i + 1), graphs::propagate_graph(&w, i, form)?, false)?;
        }
        put_graph("head.onnx", graphs::head_graph(&w)?, false)?;
        put_graph("cosine.onnx", graphs::cosine_graph(&w)?, false)?;
        let cls = graphs::classifier_graph(&w)?;
        let has_classifier = cls.is_some();
        if let Some(c) = cls {
            put_graph("classifier.onnx", c, false)?;
        }
        put_graph("full.onnx", graphs::full_graph(&w, form)?, force_external)?;
        let mut h = Sha256::new();
        for f in &out {
            h.update(f.name.as_bytes());
            h.update(f.sha256.as_bytes());
        }
        let manifest = Manifest {
            exporter_version: EXPORTER_VERSION,
            weights_hash: weights_hash.to_string(),
            dtype: p.name().into(),
            cache_form: form,
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
