//! Training checkpoints, saved as a small journal so that a kill at any moment leaves either the
//! previous checkpoint or the new one, never a mix: the weights (`model.safetensors`), the Adam
//! moments (`checkpoint/optim.safetensors`) and `checkpoint/state.json` are first written under
//! `.tmp` names and synced; the state is written as `state.json.part` and renamed to
//! `state.json.tmp`, which commits the save (directories synced around it); the renames follow.
//! A run that finds a readable `state.json.tmp` finishes the renames, one that finds anything
//! less drops the temporary files (that save never committed). Saving also marks exit classifiers
//! that carry no fingerprint as stale, since the weights under them change.

use super::adamw::AdamW;
use crate::data::synth;
use crate::error::{Error, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `checkpoint/state.json`: where training stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps done.
    pub step: usize,
    /// Synthetic generator version the weights were trained on.
    pub generator_version: String,
}

/// The journal's files: (temporary, final) for weights, moments and state, in rename order.
fn files(out: &Path) -> [(PathBuf, PathBuf); 3] {
    let ckpt = out.join("checkpoint");
    [
        (out.join("model.safetensors.tmp"), out.join("model.safetensors")),
        (ckpt.join("optim.safetensors.tmp"), ckpt.join("optim.safetensors")),
        (ckpt.join("state.json.tmp"), ckpt.join("state.json")),
    ]
}

/// Reads `checkpoint/state.json` of model directory `out`, if there is one.
pub fn read_state(out: &Path) -> Result<Option<CheckpointState>> {
    let path = out.join("checkpoint/state.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::file(&path, None, e.to_string()))
}

/// Completes or discards a save that a kill interrupted (see the module header); says so on
/// stderr when there was one.
pub fn recover(out: &Path) -> Result<()> {
    let had_tmp = files(out).iter().any(|(tmp, _)| tmp.is_file());
    let finished = finish(out)?;
    match (had_tmp, finished) {
        (true, true) => eprintln!("finished the checkpoint save that was interrupted in {}", out.display()),
        (true, false) => eprintln!("dropped the uncommitted files of a checkpoint save that was interrupted in {}", out.display()),
        _ => {}
    }
    Ok(())
}

/// Renames a committed save into place (true) or drops an uncommitted one's files (false).
fn finish(out: &Path) -> Result<bool> {
    let files = files(out);
    let committed = std::fs::read_to_string(&files[2].0).ok().is_some_and(|t| serde_json::from_str::<CheckpointState>(&t).is_ok());
    let part = out.join("checkpoint/state.json.part");
    if part.is_file() {
        std::fs::remove_file(&part).map_err(|e| Error::io(&part, e))?;
    }
    for (tmp, fin) in &files {
        if !tmp.is_file() {
            continue;
        }
        if committed {
            std::fs::rename(tmp, fin).map_err(|e| Error::io(fin, e))?;
        } else {
            std::fs::remove_file(tmp).map_err(|e| Error::io(tmp, e))?;
        }
    }
    if committed {
        sync_dir(out)?;
        sync_dir(&out.join("checkpoint"))?;
    }
    Ok(committed)
}

/// Saves weights, moments and the step of a run whose model directory is `out`.
pub fn save(out: &Path, vars: &[(String, Var)], opt: &AdamW, step: usize) -> Result<()> {
    let [(tmp_params, _), (tmp_optim, _), (tmp_state, _)] = files(out);
    let params: HashMap<String, Tensor> = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
    candle_core::safetensors::save(&params, &tmp_params)?;
    sync(&tmp_params)?;
    // Moments stay f32 so that a resumed run continues exactly as an uninterrupted one.
    candle_core::safetensors::save(&opt.state_tensors(), &tmp_optim)?;
    sync(&tmp_optim)?;
    let state = CheckpointState { step, generator_version: synth::GENERATOR_VERSION.to_string() };
    let text = serde_json::to_string_pretty(&state).map_err(|e| Error::Internal(e.to_string()))? + "\n";
    let part = out.join("checkpoint/state.json.part");
    std::fs::write(&part, text).map_err(|e| Error::io(&part, e))?;
    sync(&part)?;
    sync_dir(out)?;
    std::fs::rename(&part, &tmp_state).map_err(|e| Error::io(&tmp_state, e))?;
    sync_dir(&out.join("checkpoint"))?;
    finish(out)?;
    mark_unfingerprinted_classifiers_stale(out)
}

/// Exit classifiers without `exit_classifier.json` (made before fingerprints) would keep loading
/// over weights that have just changed: record that they belong to earlier weights.
fn mark_unfingerprinted_classifiers_stale(out: &Path) -> Result<()> {
    use crate::model::weights::{CLASSIFIER_FILE, CLASSIFIER_INFO_FILE};
    let info = out.join(CLASSIFIER_INFO_FILE);
    if out.join(CLASSIFIER_FILE).is_file() && !info.is_file() {
        let text = "{\n  \"decoder_fingerprint\": \"earlier weights (no fingerprint recorded)\"\n}\n";
        std::fs::write(&info, text).map_err(|e| Error::io(&info, e))?;
    }
    Ok(())
}

fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    // Directory fsync makes the renames durable; not every platform allows opening a directory.
    match std::fs::File::open(dir) {
        Ok(f) => f.sync_all().or_else(|e| if cfg!(unix) { Err(e) } else { Ok(()) }).map_err(|e| Error::io(dir, e)),
        Err(_) if !cfg!(unix) => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Cuts `train_log.jsonl` back to the lines of steps ≤ `step` (a run killed between checkpoints
/// logged steps its resumption repeats). A torn last line goes too.
pub fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let Ok(bytes) = std::fs::read(path) else { return Ok(()) };
    let mut keep = 0usize;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if line.ends_with(b"\n") && line.iter().all(u8::is_ascii_whitespace) {
            keep += line.len();
            continue;
        }
        let parsed = std::str::from_utf8(line).ok().and_then(|l| serde_json::from_str::<super::LogLine>(l).ok());
        match parsed {
            Some(l) if l.step <= step && line.ends_with(b"\n") => keep += line.len(),
            _ => break,
        }
    }
    if keep < bytes.len() {
        let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| Error::io(path, e))?;
        f.set_len(keep as u64).map_err(|e| Error::io(path, e))?;
        eprintln!("dropped {} bytes of {} logged after step {step}, the checkpoint this run resumes from", bytes.len() - keep, path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_cut_after_the_resumed_step_and_at_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train_log.jsonl");
        let line = |s: usize| format!("{{\"step\":{s},\"lr\":0.001,\"loss\":1.0,\"layer_losses\":[1.0],\"elapsed_s\":0.0,\"target_tokens\":3}}\n");
        std::fs::write(&p, [line(10), line(20), line(30), "{\"step\":4".into()].concat()).unwrap();
        truncate_log(&p, 20).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), [line(10), line(20)].concat());
        std::fs::write(&p, [line(10), "{\"step\":2".into()].concat()).unwrap();
        truncate_log(&p, 50).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), line(10));
    }

    #[test]
    fn an_uncommitted_save_is_dropped_and_a_committed_one_finished() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        std::fs::create_dir_all(out.join("checkpoint")).unwrap();
        std::fs::write(out.join("model.safetensors"), "old").unwrap();
        std::fs::write(out.join("checkpoint/state.json"), "old").unwrap();
        std::fs::write(out.join("model.safetensors.tmp"), "new").unwrap();
        recover(out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("model.safetensors")).unwrap(), "old");
        assert!(!out.join("model.safetensors.tmp").exists());
        // Killed while the state was being written: not committed either.
        std::fs::write(out.join("model.safetensors.tmp"), "new").unwrap();
        std::fs::write(out.join("checkpoint/state.json.tmp"), "").unwrap();
        std::fs::write(out.join("checkpoint/state.json.part"), "{\"st").unwrap();
        recover(out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("model.safetensors")).unwrap(), "old");
        assert_eq!(std::fs::read_to_string(out.join("checkpoint/state.json")).unwrap(), "old");
        for f in ["model.safetensors.tmp", "checkpoint/state.json.tmp", "checkpoint/state.json.part"] {
            assert!(!out.join(f).exists(), "{f}");
        }
        // Killed after the commit and the first rename: the rest is renamed.
        std::fs::write(out.join("model.safetensors"), "new").unwrap();
        std::fs::write(out.join("checkpoint/optim.safetensors.tmp"), "new").unwrap();
        let state = "{\"step\": 8, \"generator_version\": \"v\"}";
        std::fs::write(out.join("checkpoint/state.json.tmp"), state).unwrap();
        recover(out).unwrap();
        for (f, want) in [("model.safetensors", "new"), ("checkpoint/optim.safetensors", "new"), ("checkpoint/state.json", state)] {
            assert_eq!(std::fs::read_to_string(out.join(f)).unwrap(), want, "{f}");
        }
        assert!(!out.join("checkpoint/state.json.tmp").exists());
    }
}
