//! Finding and loading ONNX Runtime (`load-dynamic`): `ORT_DYLIB_PATH` (an error if it fails, no
//! fallback), else the `onnxruntime` package in the repository's `.venv/`, else the user's
//! Python. The library is checked (symbol, version) before `ort` sees it, so a bad library is an
//! error, never a panic. One environment per process.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Oldest minor version this build accepts (`ort`'s `api-30`).
pub const MIN_MINOR: u32 = 30;
/// The one command that installs it.
pub const INSTALL: &str = "bash scripts/setup-venv.sh (installs onnxruntime==1.30.0 into .venv/), or set ORT_DYLIB_PATH to a libonnxruntime.so of version 1.30 or newer";

/// A loaded ONNX Runtime.
pub struct Runtime {
    /// The environment sessions are created in.
    pub env: ort::environment::Environment,
    /// Its version string, e.g. `1.30.0`.
    pub version: String,
    /// The library file loaded.
    pub path: PathBuf,
}

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();

/// The process's ONNX Runtime, loaded on first use; `Error::Unsupported` with the reason and the
/// install command when it cannot be.
pub fn runtime() -> Result<&'static Runtime> {
    RUNTIME.get_or_init(load).as_ref().map_err(|e| Error::Unsupported(e.clone()))
}

fn load() -> std::result::Result<Runtime, String> {
    let path = find_library()?;
    let version = check_library(&path)?;
    let env = ort::init_from(&path)
        .map_err(|e| format!("ONNX Runtime at {}: {e}", path.display()))?
        .with_name("exitbench")
        .with_telemetry(false)
        // Failures come back as errors with ONNX Runtime's message; its own log would repeat
        // them on stderr (and over a progress bar).
        .with_logger(std::sync::Arc::new(|_, _, _, _, _| {}))
        .build()
        .map_err(|e| format!("ONNX Runtime at {}: could not create an environment: {e}", path.display()))?;
    Ok(Runtime { env, version, path })
}

/// Where the library is, by the documented order.
pub fn find_library() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(format!("ORT_DYLIB_PATH={} does not exist (it is used as given, with no fallback)", p.display()));
        }
        return Ok(p);
    }
    let mut roots = vec![PathBuf::from(".venv"), Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv")];
    roots.dedup();
    for root in roots {
        if let Some(p) = find_in_venv(&root) {
            return Ok(p);
        }
    }
    if let Some(p) = python_package_dir().and_then(|d| library_in(&d.join("capi"))) {
        return Ok(p);
    }
    Err(format!("ONNX Runtime was not found (no ORT_DYLIB_PATH, no onnxruntime in .venv/ or in python3). Install it: {INSTALL}"))
}

fn find_in_venv(root: &Path) -> Option<PathBuf> {
    let lib = root.join("lib");
    for entry in std::fs::read_dir(&lib).ok()?.flatten() {
        let capi = entry.path().join("site-packages").join("onnxruntime").join("capi");
        if let Some(p) = library_in(&capi) {
            return Some(p);
        }
    }
    None
}

fn library_in(capi: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(capi)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    found.sort();
    found.pop()
}

fn python_package_dir() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import importlib.util as u, os; s = u.find_spec('onnxruntime'); print(os.path.dirname(s.origin) if s and s.origin else '')"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// Opens the library, finds `OrtGetApiBase`, reads and checks its version.
pub fn check_library(path: &Path) -> std::result::Result<String, String> {
    // SAFETY: loading a shared library runs its initialisers; this is the library the user (or
    // the documented search) chose to run, as `ort` would load it.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| format!("{}: not a loadable ONNX Runtime library: {e}. {INSTALL}", path.display()))?;
    type ApiBaseFn = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: the symbol's type is the ONNX Runtime C API's.
    let get: libloading::Symbol<ApiBaseFn> = unsafe { lib.get(b"OrtGetApiBase") }.map_err(|_| format!("{}: not an ONNX Runtime library (no OrtGetApiBase). {INSTALL}", path.display()))?;
    // SAFETY: OrtGetApiBase takes no arguments and returns a static pointer or null.
    let base = unsafe { get() };
    if base.is_null() {
        return Err(format!("{}: OrtGetApiBase returned nothing. {INSTALL}", path.display()));
    }
    // SAFETY: a non-null OrtApiBase points at a static struct whose GetVersionString returns a
    // static NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(((*base).GetVersionString)()) }.to_string_lossy().into_owned();
    let minor = v.split('.').nth(1).and_then(|m| m.parse::<u32>().ok());
    match (v.split('.').next(), minor) {
        (Some("1"), Some(m)) if m >= MIN_MINOR => Ok(v),
        _ => Err(format!("{}: ONNX Runtime {v} is not supported (this build needs 1.{MIN_MINOR} or newer). {INSTALL}", path.display())),
    }
}
