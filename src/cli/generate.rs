//! `exitbench generate`: one prompt through the early-exit decoder; prints the text, each token's
//! exit layer and the average, or one JSON document with `--json`.

use crate::backend::{default_threads, BackendKind, DeviceKind, OpenBackend};
use crate::decode::{generate, GenerateOptions, Generation, Sampling};
use crate::error::{Error, Result};
use crate::exit::schedule::DEFAULT_TAU;
use crate::exit::{ExitMode, ExitPolicy, Measure, Schedule};
use crate::model::{ModelFiles, Precision};
use serde::Serialize;
use std::path::PathBuf;

/// Flags naming a model and how to run it.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model directory (Hugging Face layout).
    #[arg(long, default_value_os_t = PathBuf::from(crate::default_model()))]
    pub model: PathBuf,
    /// Runtime.
    #[arg(long, value_enum, ignore_case = true, default_value = "candle")]
    pub backend: BackendKind,
    /// cpu, cuda or cuda:N.
    #[arg(long, value_parser = |s: &str| DeviceKind::parse(s).map_err(|e| e.to_string()), default_value = "cpu")]
    pub device: DeviceKind,
    /// Precision of weights and activations (fp32, float32, fp16, float16 and bfloat16 work too).
    #[arg(long, value_enum, ignore_case = true, default_value = "f32")]
    pub dtype: Precision,
    /// CPU threads (default: 1 below hidden size 1024, else all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Build random weights of config.json's shape with this seed (quality is meaningless).
    #[arg(long)]
    pub random_weights: Option<u64>,
    /// ONNX export cache directory for the `ort` backend (sets EXITBENCH_ONNX_CACHE for this
    /// process and its children; default: $EXITBENCH_ONNX_CACHE, else
    /// $XDG_CACHE_HOME/exitbench/onnx, else ~/.cache/exitbench/onnx).
    #[arg(long, value_name = "DIR")]
    pub onnx_cache: Option<PathBuf>,
}

/// The threshold `generate` uses when --measure is given without --threshold.
pub const DEFAULT_THRESHOLD: f64 = 0.9;

/// Flags choosing the exit mode.
#[derive(Debug, Clone, clap::Args)]
pub struct ExitArgs {
    /// Confidence measure (none: full depth).
    #[arg(long, value_enum, ignore_case = true)]
    pub measure: Option<Measure>,
    /// Threshold λ in [0, 1] (with --measure; default 0.9).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Threshold schedule.
    #[arg(long, value_parser = ["fixed", "decaying"], default_value = "fixed")]
    pub schedule: String,
    /// τ of the decaying schedule.
    #[arg(long, default_value_t = DEFAULT_TAU)]
    pub tau: f64,
    /// First layer (1-based) a token may exit at.
    #[arg(long, default_value_t = 1)]
    pub min_exit_layer: usize,
    /// Check every k-th layer.
    #[arg(long, default_value_t = 1)]
    pub exit_interval: usize,
    /// Exit every token at this layer (LayerSkip-style static exit).
    #[arg(long, conflicts_with_all = ["measure", "oracle"])]
    pub static_exit: Option<usize>,
    /// Oracle analysis: all layers run, tokens credited to the lowest agreeing layer.
    #[arg(long, conflicts_with = "measure")]
    pub oracle: bool,
}

impl ExitArgs {
    /// The exit mode these flags describe (validated against the model later).
    pub fn mode(&self) -> Result<ExitMode> {
        let schedule = Schedule::parse(&self.schedule, self.tau)?;
        if self.threshold.is_some() && self.measure.is_none() {
            return Err(Error::setting("--threshold", "needs --measure (softmax-diff, softmax-max, saturation or classifier); without a measure every token runs at full depth"));
        }
        if let Some(layer) = self.static_exit {
            return Ok(ExitMode::Static { layer });
        }
        if self.oracle {
            return Ok(ExitMode::Oracle { min_exit_layer: self.min_exit_layer, exit_interval: self.exit_interval });
        }
        match &self.measure {
            None => Ok(ExitMode::Full),
            Some(m) => Ok(ExitMode::Dynamic(ExitPolicy {
                measure: *m,
                threshold: self.threshold.unwrap_or(DEFAULT_THRESHOLD),
                schedule,
                min_exit_layer: self.min_exit_layer,
                exit_interval: self.exit_interval,
            })),
        }
    }
}

/// Flags of `exitbench generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model and runtime.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Exit mode.
    #[command(flatten)]
    pub exit: ExitArgs,
    /// The prompt text (repeat for several prompts, decoded in batches of --batch-size).
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    /// Rows decoded together: the prompts form batches of this size in order.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// How a batch serves rows that want different exit layers (early exit at --batch-size
    /// above 1).
    #[arg(long, value_enum, ignore_case = true, default_value = "per-row")]
    pub batch_policy: crate::decode::batch::BatchPolicy,
    /// Maximum new tokens.
    #[arg(long, default_value_t = crate::sweep::plan::DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Generate --max-new-tokens tokens even past an end-of-sequence token (as llama-bench
    /// does, for decode timings of a fixed length).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Self-speculative decoding: draft with the first E layers and verify with all (the output
    /// is full depth's: token for token when greedy, in distribution when sampling). Marks each
    /// token drafted-and-accepted or not. At --batch-size above 1 each row drafts, accepts and
    /// rolls back its own.
    #[arg(long, value_name = "E")]
    pub draft_layer: Option<usize>,
    /// Most tokens drafted per verification (with --draft-layer).
    #[arg(long, default_value_t = 4, value_name = "K")]
    pub draft_tokens: usize,
    /// Where the draft's cache entries live (with --draft-layer).
    #[arg(long, value_enum, ignore_case = true, default_value = "shared")]
    pub draft_cache: crate::decode::speculative::DraftCache,
    /// Stop drafting when the draft's confidence falls below a threshold: MEASURE@THRESHOLD
    /// (with --draft-layer).
    #[arg(long, value_name = "MEASURE@THRESHOLD")]
    pub draft_stop: Option<String>,
}

/// A model ready to run, with the settings it was opened with.
pub struct Prepared {
    /// Config, tokenizer and weight files.
    pub files: ModelFiles,
    /// The runtime built from them.
    pub backend: OpenBackend,
    /// CPU threads in use.
    pub threads: usize,
    /// Precision.
    pub precision: Precision,
    /// Device.
    pub device: DeviceKind,
    /// The computing threads as their pool measured them (`generate`; None where the caller
    /// did not run inside one).
    pub compute: Option<crate::backend::threads::ComputeThreads>,
}

/// Validates model flags and opens the model on the chosen runtime.
pub fn prepare(a: &ModelArgs) -> Result<Prepared> {
    if let Some(t) = a.threads {
        crate::backend::check_threads(t, "--threads")?;
    }
    prepare_files(a, ModelFiles::open(&a.model, a.random_weights)?)
}

/// [`prepare`] with the model's files already opened.
fn prepare_files(a: &ModelArgs, files: ModelFiles) -> Result<Prepared> {
    let (kind, device, precision) = (a.backend, a.device, a.dtype);
    let threads = a.threads.unwrap_or_else(|| default_threads(files.config.hidden_size));
    let backend = crate::backend::open(kind, &files, device, precision, threads)?;
    Ok(Prepared { files, backend, threads, precision, device, compute: None })
}

#[derive(Serialize)]
struct TokenOut {
    id: u32,
    text: String,
    exit_layer: usize,
    confidence: Option<f32>,
    layers_ms: f64,
    exit_checks_ms: f64,
    propagation_ms: f64,
}

#[derive(Serialize)]
struct GenerateOut {
    text: String,
    /// The prompt as the model's tokenizer encoded it.
    prompt_token_ids: Vec<u32>,
    token_ids: Vec<u32>,
    tokens: Vec<TokenOut>,
    avg_layers: f64,
    num_layers: usize,
    prompt_tokens: usize,
    prefill_ms: f64,
    stop: crate::decode::StopReason,
    mode: ExitMode,
    threads: usize,
    /// The computing OS threads measured inside the pool (N for `--threads N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    compute_threads: Option<crate::backend::threads::ComputeThreads>,
    /// candle on the CPU: how much of the weights sits on 2 MiB pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    huge_pages: Option<crate::runtime_info::HugePageShare>,
    dtype: &'static str,
    quality_meaningless: bool,
}

/// Runs `exitbench generate`.
pub fn run(a: GenerateArgs) -> Result<()> {
    // `--threads N` means N computing OS threads here as in `run` (backend::threads): the model
    // opens and decodes on worker 0 of a pool of exactly N.
    if let Some(t) = a.model.threads {
        crate::backend::check_threads(t, "--threads")?;
    }
    // Opened once: its config gives the default thread count, and the backend opens from it.
    let files = ModelFiles::open(&a.model.model, a.model.random_weights)?;
    let threads = a.model.threads.unwrap_or_else(|| default_threads(files.config.hidden_size));
    crate::backend::threads::with_compute_threads(threads, None, move |compute| run_on(a, files, compute.clone()))?
}

/// [`run`] on its computing threads (`compute`: what the pool measured).
fn run_on(a: GenerateArgs, files: ModelFiles, compute: crate::backend::threads::ComputeThreads) -> Result<()> {
    let mode = a.exit.mode()?;
    if a.max_new_tokens == 0 {
        return Err(Error::setting("--max-new-tokens", "must be at least 1"));
    }
    let sampling = Sampling { temperature: a.temperature, top_p: a.top_p, seed: a.seed };
    sampling.validate()?;
    let mut p = prepare_files(&a.model, files)?;
    p.compute = Some(compute);
    let m = &p.files;
    mode.validate(m.config.num_hidden_layers)?;
    if a.batch_size == 0 || a.batch_size > crate::sweep::plan::MAX_BATCH_SIZE {
        return Err(Error::setting("--batch-size", format!("{} is outside 1..={}", a.batch_size, crate::sweep::plan::MAX_BATCH_SIZE)));
    }
    let prompts = a.prompt.iter().map(|t| m.tokenizer.encode(t)).collect::<Result<Vec<_>>>()?;
    let opts = GenerateOptions { mode, max_new_tokens: a.max_new_tokens, sampling, eos_ids: if a.ignore_eos { Vec::new() } else { m.config.eos_ids() }, profile_layers: false, time_split: true };
    // With --json every generation (and batch) is gathered into one document.
    let mut docs = a.json.then(JsonDocs::default);
    if let Some(draft_layer) = a.draft_layer {
        let stop = a.draft_stop.as_deref().map(|x| crate::decode::speculative::DraftStop::parse("--draft-stop", x)).transpose()?;
        let spec = crate::decode::speculative::Speculation { draft_layer, draft_tokens: a.draft_tokens, cache: a.draft_cache, stop };
        if a.batch_size == 1 {
            for prompt in &prompts {
                let s = crate::with_backend!(&mut p.backend, b => crate::decode::speculative::generate_speculative(b, prompt, &opts, &spec))?;
                print_speculative(&p, prompt, &s, docs.as_mut())?;
            }
        } else {
            for chunk in prompts.chunks(a.batch_size) {
                let g = crate::with_backend!(&mut p.backend, b => crate::decode::speculative_batch::generate_speculative_batch(b, chunk, &opts, &spec))?;
                for (prompt, row) in chunk.iter().zip(&g.rows) {
                    print_speculative(&p, prompt, row, docs.as_mut())?;
                }
                print_speculative_batch(&g, docs.as_mut())?;
            }
        }
    } else if a.batch_size == 1 {
        for prompt in &prompts {
            let g = crate::with_backend!(&mut p.backend, b => generate(b, prompt, &opts))?;
            print_generation(&p, prompt, &g, &opts, docs.as_mut())?;
        }
    } else {
        for chunk in prompts.chunks(a.batch_size) {
            let g = crate::with_backend!(&mut p.backend, b => crate::decode::batch::generate_batch(b, chunk, &opts, a.batch_policy, None))?;
            for (prompt, row) in chunk.iter().zip(&g.rows) {
                print_generation(&p, prompt, row, &opts, docs.as_mut())?;
            }
            print_batch(&g, a.batch_policy, docs.as_mut())?;
        }
    }
    if let Some(d) = docs {
        println!("{}", serde_json::to_string_pretty(&d.document()).map_err(|e| Error::Internal(e.to_string()))?);
    }
    Ok(())
}

/// The `--json` output of a `generate` run.
#[derive(Default)]
struct JsonDocs {
    generations: Vec<serde_json::Value>,
    batches: Vec<serde_json::Value>,
}

impl JsonDocs {
    /// One generation alone as itself (the single-prompt document); several, or batches, as
    /// `{"generations": [...], "batches": [...]}` in prompt order.
    fn document(self) -> serde_json::Value {
        if self.generations.len() == 1 && self.batches.is_empty() {
            return self.generations.into_iter().next().unwrap_or_default();
        }
        serde_json::json!({ "generations": self.generations, "batches": self.batches })
    }
}

/// A batch's figures after its rows: steps, tokens/s over all rows, each row's latency, and
/// the policy's waste.
fn print_batch(g: &crate::decode::batch::BatchGeneration, policy: crate::decode::batch::BatchPolicy, json: Option<&mut JsonDocs>) -> Result<()> {
    let decode_s = g.decode_s();
    let tokens = g.decoded_tokens();
    let tok_s = if decode_s > 0.0 { tokens as f64 / decode_s } else { 0.0 };
    let wasted: usize = g.steps.iter().map(|s| s.wasted_row_layers).sum();
    let held: usize = g.steps.iter().map(|s| s.held_row_tokens).sum();
    let gather: f64 = g.steps.iter().map(|s| s.gather_s).sum();
    if let Some(docs) = json {
        docs.batches.push(serde_json::json!({
            "batch": g.rows.len(), "policy": policy, "steps": g.steps.len(), "decoded_tokens": tokens, "decode_ms": decode_s * 1e3,
            "tokens_per_s": tok_s, "prefill_ms": g.prefill_s * 1e3, "wasted_row_layers": wasted, "held_row_tokens": held,
            "gather_ms": gather * 1e3, "shares_weight_reads": g.shares_weight_reads,
        }));
        return Ok(());
    }
    println!("batch of {} ({policy}): {} steps, {tokens} decoded tokens in {:.1} ms ({tok_s:.1} tokens/s over all rows), prefill {:.1} ms, wasted row layers {wasted}, held tokens {held}, gather {:.2} ms{}",
        g.rows.len(), g.steps.len(), decode_s * 1e3, g.prefill_s * 1e3, gather * 1e3,
        if g.shares_weight_reads { "" } else { " (this runtime runs rows one by one: no weight reads shared)" });
    Ok(())
}

/// A speculative batch's figures after its rows: passes, tokens/s over all rows, each row's
/// acceptance rate, and what padding the rows' segments would have needed.
fn print_speculative_batch(g: &crate::decode::speculative_batch::SpeculativeBatch, json: Option<&mut JsonDocs>) -> Result<()> {
    let decode_s = g.decode_s();
    let tokens = g.decoded_tokens();
    let tok_s = if decode_s > 0.0 { tokens as f64 / decode_s } else { 0.0 };
    let rates: Vec<Option<f64>> = g.rows.iter().map(|r| r.stats.acceptance_rate()).collect();
    if let Some(docs) = json {
        docs.batches.push(serde_json::json!({
            "batch": g.rows.len(), "passes": g.passes.len(), "decoded_tokens": tokens, "decode_ms": decode_s * 1e3, "tokens_per_s": tok_s,
            "prefill_ms": g.prefill_s * 1e3, "row_acceptance_rates": rates, "padding_waste": g.padding_waste(),
            "pass_records": g.passes, "shares_weight_reads": g.shares_weight_reads,
        }));
        return Ok(());
    }
    let rates: Vec<String> = rates.iter().map(|r| r.map(|x| format!("{:.0}%", x * 100.0)).unwrap_or_else(|| "n/a".into())).collect();
    println!("speculative batch of {}: {} passes, {tokens} decoded tokens in {:.1} ms ({tok_s:.1} tokens/s over all rows), prefill {:.1} ms; acceptance per row {}; a padded verification would run {:.0}% more positions{}",
        g.rows.len(), g.passes.len(), decode_s * 1e3, g.prefill_s * 1e3, rates.join(", "), g.padding_waste() * 100.0,
        if g.shares_weight_reads { "" } else { " (this runtime runs rows one by one: no weight reads shared)" });
    Ok(())
}

/// A speculative generation: the text with each accepted draft in brackets (text) or flagged
/// (JSON), then the acceptance rate, tokens per verification and the time split.
fn print_speculative(p: &Prepared, prompt: &[u32], s: &crate::decode::speculative::SpeculativeGeneration, json: Option<&mut JsonDocs>) -> Result<()> {
    let g = &s.generation;
    let ids = g.ids();
    let pieces = p.files.tokenizer.pieces(&ids)?;
    let st = &s.stats;
    if let Some(docs) = json {
        let out = serde_json::json!({
            "text": p.files.tokenizer.decode(&ids)?,
            "prompt_token_ids": prompt,
            "token_ids": ids,
            "tokens": pieces.iter().zip(&s.accepted_draft).zip(&ids).map(|((t, a), id)| serde_json::json!({"id": id, "text": t, "accepted_draft": a})).collect::<Vec<_>>(),
            "acceptance_rate": st.acceptance_rate(),
            "tokens_per_verify": s.tokens_per_verify(),
            "stats": st,
            "prefill_ms": g.prefill_s * 1e3,
            "decode_ms": g.decode_s() * 1e3,
            "stop": g.stop,
        });
        docs.generations.push(out);
        return Ok(());
    }
    let marked: String = pieces.iter().zip(&s.accepted_draft).map(|(t, &a)| if a { format!("[{t}]") } else { t.clone() }).collect();
    println!("{marked}");
    println!();
    let rate = st.acceptance_rate().map(|r| format!("{:.1}%", r * 100.0)).unwrap_or_else(|| "n/a".into());
    let per = s.tokens_per_verify().map(|x| format!("{x:.2}")).unwrap_or_else(|| "n/a".into());
    let decoded = g.tokens.len().saturating_sub(1);
    let ms = if decoded > 0 { format!("{:.3} ms/token", g.decode_s() * 1e3 / decoded as f64) } else { "n/a".into() };
    println!("[bracketed] tokens were drafted and accepted. {} drafted, {} accepted ({rate}), {} verification passes ({per} tokens each); {ms} over the decoded tokens (draft {:.1} ms, verify {:.1} ms, rollback {:.2} ms); stop: {}",
        st.drafted, st.accepted, st.verifies, st.draft_s * 1e3, st.verify_s * 1e3, st.rollback_s * 1e3, g.stop.name());
    Ok(())
}

fn print_generation(p: &Prepared, prompt: &[u32], g: &Generation, opts: &GenerateOptions, json: Option<&mut JsonDocs>) -> Result<()> {
    let m = &p.files;
    let ids = g.ids();
    let pieces = m.tokenizer.pieces(&ids)?;
    let text = m.tokenizer.decode(&ids)?;
    if let Some(docs) = json {
        let ms = |s: f64| s * 1e3;
        let out = GenerateOut {
            text,
            prompt_token_ids: prompt.to_vec(),
            token_ids: ids.clone(),
            tokens: g.tokens.iter().zip(pieces).map(|(t, text)| TokenOut {
                id: t.id,
                text,
                exit_layer: t.exit_layer,
                confidence: t.confidence,
                layers_ms: ms(t.layers_s),
                exit_checks_ms: ms(t.exit_checks_s),
                propagation_ms: ms(t.propagation_s),
            }).collect(),
            avg_layers: g.avg_layers(),
            num_layers: m.config.num_hidden_layers,
            prompt_tokens: g.prompt_tokens,
            prefill_ms: ms(g.prefill_s),
            stop: g.stop,
            mode: opts.mode,
            threads: p.threads,
            compute_threads: p.compute.clone(),
            huge_pages: match &p.backend {
                crate::backend::OpenBackend::Candle(b) => b.model().huge_pages(),
                crate::backend::OpenBackend::Ort(_) => None,
            },
            dtype: p.precision.name(),
            quality_meaningless: m.random_weights.is_some(),
        };
        docs.generations.push(serde_json::to_value(&out).map_err(|e| Error::Internal(e.to_string()))?);
        return Ok(());
    }
    println!("{text}");
    println!();
    let layers: Vec<String> = g.tokens.iter().map(|t| t.exit_layer.to_string()).collect();
    println!("exit layers: {}", layers.join(" "));
    let l = m.config.num_hidden_layers;
    let avg = g.avg_layers();
    let figures = if avg > 0.0 {
        format!("{avg:.2} of {l} over the decoded tokens (theoretical speedup {:.2}x)", l as f64 / avg)
    } else {
        format!("n/a of {l} (no token after the prefill's)")
    };
    let decoded = g.tokens.len().saturating_sub(1);
    let speed = if decoded > 0 { format!(", {:.3} ms/token over the decoded tokens", g.decode_s() * 1e3 / decoded as f64) } else { String::new() };
    println!("average layers: {figures}, {}{speed}, prefill {:.3} ms, stop: {}", crate::report::plural(g.tokens.len(), "token"), g.prefill_s * 1e3, g.stop.name());
    if m.random_weights.is_some() {
        eprintln!("warning: random weights: the text and quality figures are meaningless");
    }
    Ok(())
}
