//! Model, backend and prompts shared by the batched tests (`tests/batch.rs`,
//! `tests/speculative_batch.rs`): a tiny model in a temporary folder, a backend on it, and four
//! prompts of different lengths.

use exitbench::backend::{BackendKind, DeviceKind, OpenBackend};
use exitbench::model::{ModelFiles, Precision};
use exitbench::testkit::{tiny_config, tiny_variant_config, write_tiny_model};
use std::path::Path;

/// A tiny model of `layers` layers and a 300-token vocabulary (the variant shape when `variant`),
/// its weights drawn with `seed`, plus random exit classifiers.
pub fn model_dir(layers: usize, variant: bool, seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = if variant { tiny_variant_config(layers, 300) } else { tiny_config(layers, 300) };
    write_tiny_model(dir.path(), &cfg, seed).unwrap();
    exitbench::testkit::write_random_classifiers(dir.path(), &cfg, 5).unwrap();
    dir
}

/// The model in `dir` on `kind`, CPU, f32, one thread.
pub fn open(kind: BackendKind, dir: &Path) -> OpenBackend {
    if kind == BackendKind::Ort {
        exitbench::testkit::onnx_cache_once(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx-cache"));
    }
    let files = ModelFiles::open(dir, None).unwrap();
    // A test that cannot find ONNX Runtime fails (CI installs it with scripts/setup-venv.sh).
    exitbench::backend::open(kind, &files, DeviceKind::Cpu, Precision::F32, 1).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

/// Prompts of 3, 17, 40 and 9 tokens (different lengths, no padding).
pub fn prompts() -> Vec<Vec<u32>> {
    [3usize, 17, 40, 9].iter().enumerate().map(|(r, &n)| (0..n).map(|i| ((i * 37 + r * 101 + 11) % 300) as u32).collect()).collect()
}
