//! `exitbench train`: trains the embedded early-exit decoder on the synthetic task with candle
//! (CALM's loss: per-layer cross-entropies through the shared final norm + LM head, weighted by
//! layer index, on summary tokens only), checkpointing so a run can span sessions; and trains the
//! per-layer exit classifiers on a frozen model (`classifier`).

pub mod adamw;
pub mod checkpoint;
pub mod classifier;
pub mod guard;
pub mod tokenizer;

use crate::data::synth::{self, Split};
use crate::error::{Error, Result};
use crate::model::llama::LlamaModel;
use crate::model::weights::{TensorLoader, WeightSource};
use crate::model::LlamaConfig;
use adamw::{AdamW, AdamWParams};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything a training run needs; saved as `train_options.json` beside the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Model directory written (config.json, tokenizer.json, model.safetensors, checkpoint/).
    pub out: PathBuf,
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// SwiGLU width.
    pub intermediate: usize,
    /// Tokenizer vocabulary size.
    pub vocab: usize,
    /// Longest training sequence in tokens (longer samples are skipped and counted).
    pub max_len: usize,
    /// Optimizer steps in total.
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: usize,
    /// Seed of initialisation and of the synthetic data.
    pub seed: u64,
    /// Checkpoint every N steps.
    pub checkpoint_every: usize,
    /// Log every N steps.
    pub log_every: usize,
    /// Stop (after checkpointing) once this many seconds have passed; resume later.
    pub time_limit_s: Option<f64>,
    /// Synthetic train samples used to train the tokenizer.
    pub tokenizer_samples: usize,
}

impl TrainOptions {
    /// The `exitbench train` command line these options stand for (time limit left out).
    pub fn command(&self) -> String {
        format!(
            "exitbench train --model {} --layers {} --hidden {} --heads {} --kv-heads {} --intermediate {} --vocab {} --max-len {} \
             --steps {} --batch {} --lr {} --warmup {} --seed {} --tokenizer-samples {} --checkpoint-every {} --log-every {}",
            self.out.display(), self.layers, self.hidden, self.heads, self.kv_heads, self.intermediate, self.vocab, self.max_len,
            self.steps, self.batch, self.lr, self.warmup, self.seed, self.tokenizer_samples, self.checkpoint_every, self.log_every
        )
    }
}

/// Steps of learning-rate re-warm-up after resuming without optimizer moments.
pub const MOMENT_REWARMUP: usize = 50;

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    /// Optimizer step (1-based).
    pub step: usize,
    /// Learning rate at that step.
    pub lr: f64,
    /// CALM-weighted loss.
    pub loss: f32,
    /// Cross-entropy per layer (1..=L).
    pub layer_losses: Vec<f32>,
    /// Wall seconds since this process started training.
    pub elapsed_s: f64,
    /// Target (summary) tokens in the batch.
    pub target_tokens: usize,
}

/// One line of `train_runs.jsonl`: every invocation of a training run, so the model card can
/// show the schedule a resumed model actually followed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunLine {
    /// Unix seconds when the invocation started.
    pub started_unix_s: u64,
    /// Step it resumed from (0: from scratch).
    pub from_step: usize,
    /// Its options.
    pub options: TrainOptions,
}

/// A tokenized training example: ids (BOS … EOS) and where the summary starts.
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Index of the first summary token.
    pub target_start: usize,
}

/// Encodes prompt + " " + reference + EOS; the prompt's own encoding must be a prefix.
pub fn encode_example(tok: &tokenizers::Tokenizer, prompt: &str, reference: &str, eos: u32) -> Result<Encoded> {
    let err = |e: tokenizers::Error| Error::Internal(format!("tokenizer: {e}"));
    let p = tok.encode(prompt, true).map_err(err)?.get_ids().to_vec();
    let full = tok.encode(format!("{prompt} {reference}"), true).map_err(err)?.get_ids().to_vec();
    let mut ids = if full.starts_with(&p) {
        full
    } else {
        let r = tok.encode(format!(" {reference}"), false).map_err(err)?.get_ids().to_vec();
        [p.clone(), r].concat()
    };
    ids.push(eos);
    Ok(Encoded { ids, target_start: p.len() })
}

/// The model configuration a training run produces.
pub fn model_config(o: &TrainOptions) -> LlamaConfig {
    LlamaConfig {
        hidden_size: o.hidden,
        intermediate_size: o.intermediate,
        num_hidden_layers: o.layers,
        num_attention_heads: o.heads,
        num_key_value_heads: Some(o.kv_heads),
        head_dim: None,
        max_position_embeddings: o.max_len.max(512),
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        vocab_size: o.vocab,
        tie_word_embeddings: false,
        bos_token_id: Some(tokenizer::BOS_ID),
        eos_token_id: Some(crate::model::config::TokenIds::One(tokenizer::EOS_ID)),
        architectures: Some(vec!["LlamaForCausalLM".into()]),
    }
}

/// Runs (or resumes) training as described by `o`. Returns the number of steps done in total.
pub fn train(o: &TrainOptions) -> Result<usize> {
    guard::validate(o)?;
    guard::check_model_dir(o)?;
    keep_freed_memory();
    std::fs::create_dir_all(o.out.join("checkpoint")).map_err(|e| Error::io(&o.out, e))?;
    checkpoint::recover(&o.out)?;
    let cfg = model_config(o);
    let device = Device::Cpu;
    let names = param_shapes(&cfg);
    let ckpt = o.out.join("checkpoint");
    let (vars, start_step, optim_state) = init_or_resume(o, &names, &ckpt, &device)?;
    let tok = ensure_tokenizer(o)?;
    write_json(&o.out.join("config.json"), &cfg)?;
    write_json(&o.out.join("train_options.json"), o)?;
    let started_unix_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    append_line(&o.out.join("train_runs.jsonl"), &RunLine { started_unix_s, from_step: start_step, options: o.clone() })?;
    let log_path = o.out.join("train_log.jsonl");
    checkpoint::truncate_log(&log_path, start_step)?;
    let mut model = LlamaModel::load(&cfg, &TensorLoader::new(
        WeightSource::Memory(vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()),
        DType::F32,
        device.clone(),
        &o.out,
    ))?;
    model.differentiable = true;
    let mut opt = AdamW::new(vars.clone(), AdamWParams { lr: o.lr, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 })?;
    // Without saved moments (a lost optimizer file), ramp the learning rate back up so the first
    // bias-corrected Adam steps (≈ lr per parameter) do not undo the training so far.
    let rewarm_from = if start_step > 0 && optim_state.is_none() { Some(start_step) } else { None };
    if let Some(state) = optim_state {
        opt.load_state(&state, start_step)?;
    }
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let started = Instant::now();
    let mut skipped = 0usize;
    let mut step = start_step;
    while step < o.steps {
        let batch = make_batch(&tok, o, step, &mut skipped)?;
        let rewarm = rewarm_from.map(|s0| ((step - s0 + 1) as f64 / MOMENT_REWARMUP as f64).min(1.0)).unwrap_or(1.0);
        let lr = lr_at(o, step) * rewarm;
        opt.params.lr = lr;
        let (loss, layer_losses) = calm_loss(&model, &batch)?;
        if !layer_losses.iter().all(|l| l.is_finite()) {
            return Err(Error::setting(
                "--lr",
                format!("the loss is not finite at step {} ({layer_losses:?}); the last checkpoint is kept: resume with a lower --lr", step + 1),
            ));
        }
        let grads = loss.backward()?;
        opt.step(&grads)?;
        step += 1;
        if step % o.log_every == 0 || step == o.steps {
            let line = LogLine {
                step,
                lr,
                loss: loss.to_scalar::<f32>()?,
                layer_losses,
                elapsed_s: started.elapsed().as_secs_f64(),
                target_tokens: batch.targets_len,
            };
            writeln!(log, "{}", serde_json::to_string(&line).map_err(|e| Error::Internal(e.to_string()))?).map_err(|e| Error::io(&o.out, e))?;
            eprintln!("step {step}/{} loss {:.4} layers {:?} lr {lr:.2e} {:.0}s", o.steps, line.loss, round3(&line.layer_losses), line.elapsed_s);
        }
        let out_of_time = o.time_limit_s.is_some_and(|t| started.elapsed().as_secs_f64() >= t);
        if step % o.checkpoint_every == 0 || step == o.steps || out_of_time {
            checkpoint::save(&o.out, &vars, &opt, step)?;
        }
        if out_of_time {
            eprintln!("time limit reached at step {step}; resume with the same command");
            break;
        }
    }
    if skipped > 0 {
        eprintln!("skipped {skipped} samples longer than {} tokens", o.max_len);
    }
    Ok(step)
}

/// Training allocates and frees the same large activation buffers every step; glibc's default
/// returns them to the kernel each time, and the page faults cost more than the arithmetic
/// (measured: 6.5 s → 3.5 s per step). Keep freed memory in the heap instead.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 1 << 30);
    }
}

fn round3(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| (x * 1000.0).round() / 1000.0).collect()
}

fn ensure_tokenizer(o: &TrainOptions) -> Result<tokenizers::Tokenizer> {
    let path = o.out.join("tokenizer.json");
    if path.is_file() {
        return crate::model::tokenizer::load_hf(&path);
    }
    let texts: Vec<String> = synth::generate(Split::Train, o.seed, o.tokenizer_samples)
        .into_iter()
        .map(|s| format!("{} {}", s.prompt, s.reference))
        .collect();
    tokenizer::train_tokenizer(&texts, o.vocab, &path)
}

/// Names and shapes of every trainable tensor: the config's tensor table without the optional
/// biases (training builds a bias-free Llama with its own LM head).
pub fn param_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    cfg.tensors().into_iter().filter(|(name, _, required)| *required || name == crate::model::names::LM_HEAD).map(|(name, shape, _)| (name, shape)).collect()
}

type Resumed = (Vec<(String, Var)>, usize, Option<HashMap<String, Tensor>>);

fn init_or_resume(o: &TrainOptions, names: &[(String, Vec<usize>)], ckpt: &Path, device: &Device) -> Result<Resumed> {
    let state_path = ckpt.join("state.json");
    let params_path = o.out.join("model.safetensors");
    if let Some(state) = checkpoint::read_state(&o.out)? {
        if !params_path.is_file() {
            return Err(Error::file(&state_path, None, format!("records step {}, but {} is missing", state.step, params_path.display())));
        }
        if state.generator_version != synth::GENERATOR_VERSION {
            return Err(Error::file(&state_path, None, format!(
                "checkpoint was trained on generator {}, this build has {}", state.generator_version, synth::GENERATOR_VERSION)));
        }
        let params = candle_core::safetensors::load(&params_path, device).map_err(|e| Error::file(&params_path, None, format!("unreadable checkpoint weights: {e}")))?;
        let optim_path = ckpt.join("optim.safetensors");
        let optim = if optim_path.is_file() {
            Some(
                candle_core::safetensors::load(&optim_path, device)
                    .map_err(|e| Error::file(&optim_path, None, format!("unreadable optimizer state: {e}")))?
                    .into_iter()
                    .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
                    .collect::<Result<HashMap<_, _>>>()?,
            )
        } else {
            eprintln!("warning: {} is missing: resuming with fresh optimizer moments and a {MOMENT_REWARMUP}-step learning-rate re-warm-up", optim_path.display());
            None
        };
        let vars = names
            .iter()
            .map(|(n, shape)| {
                let t = params.get(n).ok_or_else(|| Error::file(&params_path, None, format!("missing tensor `{n}`")))?;
                if t.dims() != shape.as_slice() {
                    return Err(Error::file(&params_path, None, format!("tensor `{n}` has shape {:?}, expected {shape:?}", t.dims())));
                }
                Ok((n.clone(), Var::from_tensor(&t.to_dtype(DType::F32)?)?))
            })
            .collect::<Result<Vec<_>>>()?;
        eprintln!("resuming from step {}", state.step);
        return Ok((vars, state.step, optim));
    }
    let loader = TensorLoader::new(WeightSource::Random { seed: o.seed }, DType::F32, device.clone(), &o.out);
    let vars = names
        .iter()
        .map(|(n, shape)| Ok((n.clone(), Var::from_tensor(&loader.get(n, shape)?)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok((vars, 0, None))
}

fn append_line<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    writeln!(f, "{}", serde_json::to_string(v).map_err(|e| Error::Internal(e.to_string()))?).map_err(|e| Error::io(path, e))
}

/// Writes `v` as pretty JSON through a temporary file and a rename (a kill leaves the old file).
fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n").map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn lr_at(o: &TrainOptions, step: usize) -> f64 {
    if step < o.warmup {
        return o.lr * (step + 1) as f64 / o.warmup as f64;
    }
    let progress = (step - o.warmup) as f64 / (o.steps - o.warmup).max(1) as f64;
    let min = 0.1 * o.lr;
    min + 0.5 * (o.lr - min) * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// A padded batch: inputs `[b, t]`, flat indices of target positions, and their target ids.
pub struct Batch {
    /// Input ids, right-padded.
    pub inputs: Tensor,
    /// Row-major indices into `[b * t]` of positions whose next token is a target.
    pub positions: Tensor,
    /// The target ids at those positions.
    pub targets: Tensor,
    /// Number of targets.
    pub targets_len: usize,
}

fn make_batch(tok: &tokenizers::Tokenizer, o: &TrainOptions, step: usize, skipped: &mut usize) -> Result<Batch> {
    let mut seqs = Vec::with_capacity(o.batch);
    let mut idx = step * o.batch * 2;
    let mut skipped_here = 0;
    while seqs.len() < o.batch {
        let s = synth::sample(Split::Train, o.seed, idx);
        idx += 1;
        let enc = encode_example(tok, &s.prompt, &s.reference, tokenizer::EOS_ID)?;
        if enc.ids.len() > o.max_len {
            *skipped += 1;
            skipped_here += 1;
            if skipped_here > 4 * o.batch {
                return Err(Error::setting(
                    "--max-len",
                    format!("{} tokens is too short: most samples are longer (e.g. {} tokens); raise --max-len or --vocab", o.max_len, enc.ids.len()),
                ));
            }
            continue;
        }
        seqs.push(enc);
    }
    batch_of(&seqs, &Device::Cpu)
}

/// Builds a batch from encoded examples (targets: every summary token and the EOS).
pub fn batch_of(seqs: &[Encoded], device: &Device) -> Result<Batch> {
    let t = seqs.iter().map(|s| s.ids.len() - 1).max().unwrap_or(1);
    let mut inputs = vec![tokenizer::PAD_ID; seqs.len() * t];
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    for (r, s) in seqs.iter().enumerate() {
        let n = s.ids.len() - 1;
        inputs[r * t..r * t + n].copy_from_slice(&s.ids[..n]);
        for p in s.target_start.saturating_sub(1)..n {
            positions.push((r * t + p) as u32);
            targets.push(s.ids[p + 1]);
        }
    }
    let targets_len = targets.len();
    Ok(Batch {
        inputs: Tensor::from_vec(inputs, (seqs.len(), t), device)?,
        positions: Tensor::new(positions.as_slice(), device)?,
        targets: Tensor::new(targets.as_slice(), device)?,
        targets_len,
    })
}

/// Hidden states after every layer, `[b, t, d]` each (index 0 = layer 1).
pub fn all_layer_states(model: &LlamaModel, inputs: &Tensor) -> Result<Vec<Tensor>> {
    let mut h = model.embed_batch(inputs)?;
    let mut out = Vec::with_capacity(model.num_layers());
    for l in 1..=model.num_layers() {
        h = model.layer_forward(l, &h, 0, None)?;
        out.push(h.clone());
    }
    Ok(out)
}

/// CALM's training loss: Σ_l l·CE_l / Σ_l l over target positions, every layer read through the
/// shared final norm + LM head. Returns the loss and each layer's CE.
pub fn calm_loss(model: &LlamaModel, b: &Batch) -> Result<(Tensor, Vec<f32>)> {
    let states = all_layer_states(model, &b.inputs)?;
    let d = model.config().hidden_size;
    let mut total: Option<Tensor> = None;
    let mut per_layer = Vec::with_capacity(states.len());
    let norm: f64 = (1..=states.len()).map(|l| l as f64).sum();
    for (i, h) in states.iter().enumerate() {
        let rows = h.reshape(((), d))?.index_select(&b.positions, 0)?;
        let logits = model.head(&rows)?;
        let ce = candle_nn::loss::cross_entropy(&logits, &b.targets)?;
        per_layer.push(ce.to_scalar::<f32>()?);
        let w = (i + 1) as f64 / norm;
        let term = ce.affine(w, 0.0)?;
        total = Some(match total {
            None => term,
            Some(t) => (t + term)?,
        });
    }
    let total = total.ok_or_else(|| Error::Internal("model has no layers".into()))?;
    Ok((total, per_layer))
}
