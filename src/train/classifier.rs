//! Per-layer exit classifiers (CALM's "meta" measure) trained on a frozen model: for every
//! summary position of a teacher-forced pass, the feature is the layer's hidden state after the
//! shared final RMSNorm and the label is 1 when the layer's argmax equals the final layer's.
//! One logistic regression per layer, full-batch Adam. Works on any model directory with a
//! JSONL dataset (`exitbench train --classifier-only --model DIR --dataset FILE`).

use super::all_layer_states;
use crate::data::Example;
use crate::error::{Error, Result};
use crate::model::names;
use crate::model::weights::{decoder_fingerprint, CLASSIFIER_FILE, CLASSIFIER_INFO_FILE};
use crate::model::{LoadedModel, TextTokenizer};
use candle_core::{DType, Device, Tensor, Var, D};
use std::collections::HashMap;
use std::path::PathBuf;

/// What one layer's classifier achieved on its training data.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerFit {
    /// Layer (1-based).
    pub layer: usize,
    /// Share of positions whose label is 1 (the layer already agrees with the final layer).
    pub positive_rate: f64,
    /// Training accuracy at probability 0.5.
    pub accuracy: f64,
    /// Final binary cross-entropy.
    pub loss: f64,
}

/// Trains classifiers for `model` on `examples` and writes `exit_classifier.safetensors` into
/// the model directory, with `exit_classifier.json` naming `fingerprint`, the
/// [`decoder_fingerprint`] of the weights taken before `m` was loaded (refused if the weights
/// changed meanwhile). Returns per-layer fits.
pub fn train_classifiers(m: &LoadedModel, fingerprint: &str, examples: &[Example], epochs: usize, lr: f64) -> Result<(PathBuf, Vec<LayerFit>)> {
    let TextTokenizer::Hf(tok) = &m.tokenizer else {
        return Err(Error::Unsupported("training classifiers needs the model's tokenizer.json".into()));
    };
    let model = &m.model;
    let layers = model.num_layers();
    let Some(&eos) = m.config.eos_ids().first() else {
        return Err(Error::file(m.dir.join("config.json"), None, "names no eos_token_id: the classifiers' training targets end with it"));
    };
    let mut feats: Vec<Vec<Tensor>> = vec![Vec::new(); layers];
    let mut labels: Vec<Vec<f32>> = vec![Vec::new(); layers];
    let mut too_long = Vec::new();
    for ex in examples {
        let enc = super::encode_example(tok, &ex.prompt, &ex.reference, eos)?;
        let n = enc.ids.len() - 1;
        if n + 1 > m.config.max_position_embeddings {
            too_long.push(ex.id.as_str());
            continue;
        }
        let inputs = Tensor::new(&enc.ids[..n], model.device())?.unsqueeze(0)?;
        let states = all_layer_states(model, &inputs)?;
        let start = enc.target_start.saturating_sub(1);
        let rows = |h: &Tensor| -> Result<Tensor> { Ok(h.squeeze(0)?.narrow(0, start, n - start)?) };
        let final_arg = model.head(&rows(&states[layers - 1])?)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        for (l, h) in states.iter().enumerate() {
            let r = rows(h)?;
            let arg = model.head(&r)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            labels[l].extend(arg.iter().zip(&final_arg).map(|(a, b)| if a == b { 1.0 } else { 0.0 }));
            feats[l].push(model.final_norm_f32(&r)?.to_device(&Device::Cpu)?);
        }
    }
    if !too_long.is_empty() {
        eprintln!(
            "warning: skipped {} of {} examples longer than max_position_embeddings = {} (first: {})",
            too_long.len(),
            examples.len(),
            m.config.max_position_embeddings,
            too_long[0]
        );
    }
    if labels[0].is_empty() {
        return Err(Error::Unsupported("no usable examples to train classifiers on (each was too long or had an empty summary)".into()));
    }
    let mut tensors = HashMap::new();
    let mut fits = Vec::new();
    let mut cls = Vec::new();
    for l in 0..layers {
        let x = Tensor::cat(&feats[l], 0)?;
        let y = Tensor::new(labels[l].as_slice(), &Device::Cpu)?;
        let (w, b, fit) = fit_logistic(&x, &y, epochs, lr, l + 1)?;
        tensors.insert(names::classifier_weight(l), w.clone());
        tensors.insert(names::classifier_bias(l), b.clone());
        cls.push((w, b));
        fits.push(fit);
    }
    let now = decoder_fingerprint(&m.dir)?;
    if now != fingerprint {
        return Err(Error::BadModel {
            dir: m.dir.clone(),
            message: format!("the weights changed while the classifiers trained (fingerprint {fingerprint}, now {now}); nothing was written"),
        });
    }
    let out = m.dir.join(CLASSIFIER_FILE);
    candle_core::safetensors::save(&tensors, &out)?;
    let info = serde_json::json!({
        "decoder_fingerprint": fingerprint,
        "examples": examples.len() - too_long.len(),
        "epochs": epochs,
        "fits": fits,
    });
    let info_path = m.dir.join(CLASSIFIER_INFO_FILE);
    std::fs::write(&info_path, serde_json::to_string_pretty(&info).map_err(|e| Error::Internal(e.to_string()))? + "\n").map_err(|e| Error::io(&info_path, e))?;
    Ok((out, fits))
}

/// Logistic regression by full-batch Adam on binary cross-entropy. Features are standardised by
/// nothing: the final RMSNorm already puts them on a common scale.
fn fit_logistic(x: &Tensor, y: &Tensor, epochs: usize, lr: f64, layer: usize) -> Result<(Tensor, Tensor, LayerFit)> {
    let d = x.dim(1)?;
    let w = Var::zeros((1, d), DType::F32, &Device::Cpu)?;
    let b = Var::zeros(1, DType::F32, &Device::Cpu)?;
    let mut opt = super::adamw::AdamW::new(
        vec![("w".into(), w.clone()), ("b".into(), b.clone())],
        super::adamw::AdamWParams { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
    )?;
    let bce = |z: &Tensor| -> Result<Tensor> {
        // log(1 + e^z) - y z, computed stably.
        let sp = (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
        Ok((sp - (z * y)?)?.mean_all()?)
    };
    let logits = |w: &Var, b: &Var| -> Result<Tensor> { Ok(x.matmul(&w.as_tensor().t()?)?.squeeze(1)?.broadcast_add(b.as_tensor())?) };
    for _ in 0..epochs {
        let loss = bce(&logits(&w, &b)?)?;
        opt.step(&loss.backward()?)?;
    }
    let z = logits(&w, &b)?;
    let loss = bce(&z)?.to_scalar::<f32>()? as f64;
    let pred = z.ge(0.0)?.to_dtype(DType::F32)?;
    let accuracy = pred.eq(y)?.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()? as f64;
    let positive_rate = y.mean_all()?.to_scalar::<f32>()? as f64;
    Ok((w.as_tensor().detach(), b.as_tensor().detach(), LayerFit { layer, positive_rate, accuracy, loss }))
}
