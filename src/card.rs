//! The model card of a trained model directory: `card.json` (machine-readable: generator version,
//! architecture, training command, per-layer validation losses, calibration figures and one
//! reproducible full-depth output) and `README.md` rendered from it.

use crate::calibrate::{self, Calibration};
use crate::data::synth::{self, Split};
use crate::decode::{generate, GenerateOptions, Sampling};
use crate::error::{Error, Result};
use crate::exit::ExitMode;
use crate::model::LoadedModel;
use crate::train::{batch_of, calm_loss, checkpoint, encode_example, tokenizer::EOS_ID, LogLine, RunLine, TrainOptions};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One output the shipped model must reproduce exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reproduce {
    /// Dataset (`synth:test`).
    pub dataset: String,
    /// Example id.
    pub id: String,
    /// Max new tokens.
    pub max_new_tokens: usize,
    /// Greedy full-depth output (candle, CPU, f32), decoded, special tokens skipped.
    pub output: String,
    /// Its token ids.
    pub token_ids: Vec<u32>,
}

/// The machine-readable model card.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Card {
    /// Model name (directory name).
    pub name: String,
    /// Synthetic generator version the model was trained on (from `checkpoint/state.json`, which
    /// training writes; "unknown" for a model exitbench did not train).
    pub generator_version: String,
    /// Parameter count.
    pub parameters: usize,
    /// The configuration.
    pub config: serde_json::Value,
    /// Training options.
    pub training: Option<TrainOptions>,
    /// Optimizer steps done (of `training.steps`).
    pub steps_done: Option<usize>,
    /// Last training log line.
    pub last_log: Option<LogLine>,
    /// Where the logged learning rate went up after warm-up: (step, before, after).
    #[serde(default)]
    pub lr_raises: Vec<(usize, f64, f64)>,
    /// Wall seconds of training in `train_log.jsonl`, summed over invocations (each logs its time
    /// since it started; work lost between a checkpoint and an interruption is not counted).
    #[serde(default)]
    pub training_wall_s: Option<f64>,
    /// Median wall seconds per optimizer step over the log.
    #[serde(default)]
    pub median_step_s: Option<f64>,
    /// Every training invocation recorded in `train_runs.jsonl` (kept since step 4,050 of the
    /// embedded model; earlier ones show only as `lr_raises`).
    #[serde(default)]
    pub runs: Vec<RunLine>,
    /// `exit_classifier.json`: what the exit classifiers were trained on, and their fits.
    #[serde(default)]
    pub classifier: Option<serde_json::Value>,
    /// Per-layer cross-entropy on 200 validation samples (summary tokens).
    pub validation_layer_losses: Vec<f32>,
    /// Calibration figures (validation → test), if run.
    pub calibration: Option<serde_json::Value>,
    /// One reproducible output.
    pub reproduce: Reproduce,
}

/// Builds the card of `m` (trained in `m.dir`).
pub fn build(m: &LoadedModel, calibration: Option<&Calibration>) -> Result<Card> {
    let dir = &m.dir;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let training: Option<TrainOptions> = read("train_options.json").and_then(|t| serde_json::from_str(&t).ok());
    fn jsonl<T: serde::de::DeserializeOwned>(text: Option<String>) -> Vec<T> {
        text.map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()).unwrap_or_default()
    }
    let log: Vec<LogLine> = jsonl(read("train_log.jsonl"));
    let warmup = training.as_ref().map(|t| t.warmup).unwrap_or(0);
    let lr_raises = lr_raises(&log, warmup);
    let (training_wall_s, median_step_s) = training_time(&log).unzip();
    let last_log = log.last().cloned();
    let state = checkpoint::read_state(dir)?;
    let runs: Vec<RunLine> = jsonl(read("train_runs.jsonl"));
    let classifier = crate::model::weights::read_classifier_info(dir).ok().flatten();
    Ok(Card {
        name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        generator_version: state.as_ref().map(|s| s.generator_version.clone()).unwrap_or_else(|| "unknown".into()),
        parameters: m.config.param_count(),
        config: serde_json::to_value(&m.config).map_err(|e| Error::Internal(e.to_string()))?,
        training,
        steps_done: state.map(|s| s.step),
        last_log,
        lr_raises,
        training_wall_s,
        median_step_s,
        runs,
        classifier,
        validation_layer_losses: validation_losses(m, 200)?,
        calibration: calibration.map(|c| serde_json::to_value(c).unwrap_or_default()),
        reproduce: reproduce(m, 0, crate::sweep::plan::DEFAULT_MAX_NEW_TOKENS)?,
    })
}

/// Total logged training time and the median time per step: a line whose elapsed time is below
/// its predecessor's starts a new invocation, counted from zero.
fn training_time(log: &[LogLine]) -> Option<(f64, f64)> {
    let first = log.first()?;
    let mut total = first.elapsed_s;
    let mut per_step = Vec::new();
    for w in log.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.elapsed_s >= a.elapsed_s && b.step > a.step {
            total += b.elapsed_s - a.elapsed_s;
            per_step.push((b.elapsed_s - a.elapsed_s) / (b.step - a.step) as f64);
        } else {
            total += b.elapsed_s;
        }
    }
    per_step.sort_by(f64::total_cmp);
    let median = per_step.get(per_step.len() / 2).copied().unwrap_or(f64::NAN);
    Some((total, median))
}

/// Runs of rising learning rate after warm-up in a training log, one `(first step, lr before,
/// lr at the top)` per run (a lengthened schedule jumps once; a re-warm-up climbs for a while).
fn lr_raises(log: &[LogLine], warmup: usize) -> Vec<(usize, f64, f64)> {
    let mut out: Vec<(usize, f64, f64)> = Vec::new();
    let mut rising = false;
    for w in log.windows(2) {
        let up = w[1].step > warmup && w[1].lr > w[0].lr * 1.01;
        match (up, rising, out.last_mut()) {
            (true, true, Some(last)) => last.2 = w[1].lr,
            (true, _, _) => out.push((w[1].step, w[0].lr, w[1].lr)),
            _ => {}
        }
        rising = up;
    }
    out
}

/// The greedy full-depth output for test sample `index`.
pub fn reproduce(m: &LoadedModel, index: usize, max_new_tokens: usize) -> Result<Reproduce> {
    let s = synth::sample(Split::Test, synth::DEFAULT_SEED, index);
    let prompt = m.tokenizer.encode(&s.prompt)?;
    let opts = GenerateOptions { mode: ExitMode::Full, max_new_tokens, sampling: Sampling::default(), eos_ids: m.config.eos_ids(), profile_layers: false, time_split: true };
    let g = generate(&mut crate::backend::candle::CandleBackend::new(&m.model), &prompt, &opts)?;
    let ids = g.ids();
    Ok(Reproduce { dataset: "synth:test".into(), id: s.id, max_new_tokens, output: m.tokenizer.decode(&ids)?.trim().to_string(), token_ids: ids })
}

/// Per-layer CE over the summary tokens of `n` validation samples.
pub fn validation_losses(m: &LoadedModel, n: usize) -> Result<Vec<f32>> {
    let crate::model::TextTokenizer::Hf(tok) = &m.tokenizer else { return Ok(Vec::new()) };
    let samples = synth::generate(Split::Validation, synth::DEFAULT_SEED, n);
    let mut sums = vec![0f64; m.model.num_layers()];
    let mut count = 0f64;
    for chunk in samples.chunks(16) {
        let enc = chunk.iter().map(|s| encode_example(tok, &s.prompt, &s.reference, EOS_ID)).collect::<Result<Vec<_>>>()?;
        let batch = batch_of(&enc, m.model.device())?;
        let (_, per_layer) = calm_loss(&m.model, &batch)?;
        for (acc, l) in sums.iter_mut().zip(per_layer) {
            *acc += l as f64 * batch.targets_len as f64;
        }
        count += batch.targets_len as f64;
    }
    Ok(sums.iter().map(|s| (s / count.max(1.0)) as f32).collect())
}

/// Writes `card.json` and `README.md` into the model directory.
pub fn write(card: &Card, dir: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(card).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(dir.join("card.json"), json + "\n").map_err(|e| Error::io(dir, e))?;
    std::fs::write(dir.join("README.md"), render(card)).map_err(|e| Error::io(dir, e))
}

/// The README.md of a card (everything in it comes from `card.json`, so it can be re-rendered).
pub fn render(c: &Card) -> String {
    let cfg = &c.config;
    let mut s = format!("# {}: the embedded early-exit model\n\n", c.name);
    s.push_str(&format!(
        "A Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) trained from scratch with exitbench on its synthetic \
         cricket-report summarization task (generator `{}`), every layer readable through the shared final norm + LM head (CALM's \
         layer-weighted loss).\n\n",
        c.generator_version
    ));
    s.push_str(&format!(
        "- Architecture: {} layers, hidden {}, {} query / {} key-value heads, SwiGLU {}, vocabulary {} (byte-level BPE, digits split), \
         max positions {}; **{} parameters** ({:.2} M).\n",
        cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"],
        cfg["vocab_size"], cfg["max_position_embeddings"], c.parameters, c.parameters as f64 / 1e6
    ));
    if let Ok(config) = serde_json::from_value::<crate::model::LlamaConfig>(cfg.clone()) {
        s.push_str(&vocabulary_note(&config));
    }
    if let Some(t) = &c.training {
        s.push_str(&format!(
            "- Training: {} of {} steps of {} sequences (AdamW, peak lr {}, warm-up {}, cosine decay), seed {}; final command: \
             `scripts/train-default.sh` (= `{}`), resumable from `checkpoint/`. Rerunning it from scratch follows the final \
             schedule only; the raises below are part of how this model was made.\n",
            c.steps_done.unwrap_or(0), t.steps, t.batch, t.lr, t.warmup, t.seed, t.command()
        ));
        if let (Some(wall), Some(step)) = (c.training_wall_s, c.median_step_s) {
            s.push_str(&format!(
                "- Training time logged in `train_log.jsonl`: {:.1} h of wall time over all invocations (median {step:.2} s per step; \
                 {} steps at that pace take {:.1} h), on the machine(s) that trained it; work lost to interruptions is not counted.\n",
                wall / 3600.0,
                t.steps,
                t.steps as f64 * step / 3600.0
            ));
        }
        s.push_str(&raises_line(c));
        if !c.runs.is_empty() {
            let list = c.runs.iter().map(|r| run_item(r, t)).collect::<Vec<_>>();
            s.push_str(&format!("- Invocations recorded in `train_runs.jsonl`: {}.\n", list.join("; ")));
        }
        if c.steps_done.unwrap_or(0) < t.steps {
            s.push_str("- **Status: training in progress.** The weights are an intermediate checkpoint; figures below are for it.\n");
        }
    }
    let fmt = |v: &[f32]| v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ");
    s.push_str(&format!("- Per-layer cross-entropy on 200 validation samples (summary tokens), layers 1..L: {}.\n", fmt(&c.validation_layer_losses)));
    if let Some(l) = &c.last_log {
        s.push_str(&format!("- Last training batch (step {}): per-layer loss {}.\n", l.step, fmt(&l.layer_losses)));
    }
    if let Some(info) = &c.classifier {
        let acc = info["fits"].as_array().map(|f| f.iter().filter_map(|x| x["accuracy"].as_f64()).map(|a| format!("{a:.3}")).collect::<Vec<_>>().join(", "));
        s.push_str(&format!(
            "- Exit classifiers (one logistic regression per layer on the frozen model, label: the layer's argmax equals the last layer's): \
             `exitbench train --classifier-only --model {} --samples {} --classifier-epochs {}` on the synthetic train split; \
             training accuracy per layer {}.\n",
            c.training.as_ref().map(|t| t.out.display().to_string()).unwrap_or_else(|| format!("models/{}", c.name)),
            info["examples"], info["epochs"], acc.unwrap_or_default()
        ));
    }
    s.push_str("\n## Figures measured by the harness\n\n");
    match c.calibration.as_ref().and_then(|v| serde_json::from_value::<Calibration>(v.clone()).ok()) {
        Some(cal) => {
            s.push_str(&calibrate::markdown(&cal));
            let command = if cal.command.is_empty() { format!("exitbench calibrate --samples {} --write-card", cal.samples) } else { cal.command.clone() };
            s.push_str(&format!(
                "\nReproduce: `{command}` (validation picks each measure's cheapest threshold with D ≤ {}; the test split reports it). \
                 Timings were measured on {}; they are one run's medians, and a shared or different machine gives other times.\n",
                cal.max_d,
                if cal.machine.is_empty() { "an unrecorded machine" } else { &cal.machine }
            ));
            s.push_str("\n### The bar (greedy, candle, f32; figures above)\n\n");
            for (what, ok) in calibrate::bar(&cal) {
                s.push_str(&format!("- {} {what}\n", if ok { "met:" } else { "**NOT met:**" }));
            }
        }
        None => s.push_str("Not calibrated yet (`exitbench calibrate --write-card`).\n"),
    }
    s.push_str(&format!(
        "\n## Reproduction check\n\nGreedy full-depth output for `{}` `{}` (max {} new tokens), which `tests/model_card.rs` regenerates:\n\n> {}\n",
        c.reproduce.dataset, c.reproduce.id, c.reproduce.max_new_tokens, c.reproduce.output
    ));
    s
}

/// One bullet listing where the learning rate went up after warm-up, each with its cause when a
/// recorded invocation explains it (empty when it never did).
fn raises_line(c: &Card) -> String {
    if c.lr_raises.is_empty() {
        return String::new();
    }
    let mut unexplained = false;
    let items = c.lr_raises.iter().map(|(step, from, to)| {
        match c.runs.iter().find(|r| r.from_step > 0 && r.from_step < *step && *step <= r.from_step + 20) {
            Some(r) => format!("step {step} ({from:.2e} → {to:.2e}; resumed at step {} with --steps {})", r.from_step, r.options.steps),
            None => {
                unexplained = true;
                format!("step {step} ({from:.2e} → {to:.2e})†")
            }
        }
    });
    let items = items.collect::<Vec<_>>().join(", ");
    let note = if unexplained {
        " († before `train_runs.jsonl` was kept: the schedule was lengthened with --steps on resuming, or Adam's moments \
         re-warmed after a lost optimizer file)"
    } else {
        ""
    };
    format!("- The learning rate was raised after warm-up at {items}{note}; `train_log.jsonl` has the whole curve.\n")
}

/// One recorded training invocation, naming its output directory and time limit when they differ
/// from the final command's.
fn run_item(r: &RunLine, last: &TrainOptions) -> String {
    let mut item = format!("from step {} with --steps {} --lr {}", r.from_step, r.options.steps, r.options.lr);
    if r.options.out != last.out {
        item.push_str(&format!(" into `{}`", r.options.out.display()));
    }
    if let Some(limit) = r.options.time_limit_s {
        item.push_str(&format!(" --time-limit {limit}"));
    }
    item
}

/// Why the vocabulary is as small as it is: what one softmax exit check costs next to a layer.
fn vocabulary_note(cfg: &crate::model::LlamaConfig) -> String {
    let (d, v) = (cfg.hidden_size, cfg.vocab_size);
    let (q, kv) = (cfg.num_attention_heads * cfg.head_dim(), cfg.kv_heads() * cfg.head_dim());
    let layer = 2 * d * q + 2 * d * kv + 3 * d * cfg.intermediate_size;
    format!(
        "- Vocabulary: chosen small on purpose. A softmax-based exit check runs the LM head ({d} × {v} = {} multiply-adds per token) \
         against {} in a layer's projections, so a check costs {:.2} of a layer (before attention over the cache); with a \
         32,000-token vocabulary it would cost {:.1} layers and eat the savings. {v} pieces still hold the task's common words \
         whole while names are spelled from sub-word pieces, which the model must copy.\n",
        d * v,
        layer,
        (d * v) as f64 / layer as f64,
        (d * 32_000) as f64 / layer as f64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: usize, lr: f64) -> LogLine {
        LogLine { step, lr, loss: 1.0, layer_losses: vec![1.0], elapsed_s: 0.0, target_tokens: 1 }
    }

    #[test]
    fn training_time_sums_invocations_and_takes_the_median_step() {
        // Two invocations: steps 10-30 (90 s), then 40-50 resumed (25 s).
        let log: Vec<LogLine> = [(10, 30.0), (20, 60.0), (30, 90.0), (40, 5.0), (50, 25.0)]
            .iter()
            .map(|&(s, e)| LogLine { elapsed_s: e, ..line(s, 1e-3) })
            .collect();
        let (total, median) = training_time(&log).unwrap();
        assert_eq!(total, 90.0 + 25.0);
        assert_eq!(median, 3.0); // per-step times 3, 3, 2
        assert!(training_time(&[]).is_none());
    }

    #[test]
    fn lr_raises_merges_a_climb_and_ignores_warmup_and_decay() {
        let lrs = [(10, 1e-4), (20, 2e-4), (30, 1.0e-3), (40, 0.9e-3), (50, 0.2e-3), (60, 0.5e-3), (70, 0.8e-3), (80, 0.79e-3), (90, 0.3e-3), (100, 0.6e-3)];
        let log: Vec<LogLine> = lrs.iter().map(|&(s, lr)| line(s, lr)).collect();
        assert_eq!(lr_raises(&log, 30), vec![(60, 0.2e-3, 0.8e-3), (100, 0.3e-3, 0.6e-3)]);
    }
}
