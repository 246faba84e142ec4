//! Runs the cells of a plan: per configuration group one model load, then each exit mode over the
//! dataset (warm-up, then repetitions), and one record appended per cell as soon as it is done.

use super::grid::{groups, Group, Shard};
use super::plan::Plan;
use crate::backend::Backend;
use crate::decode::{generate, GenerateOptions, Generation, Sampling};
use crate::error::{Error, Result};
use crate::exit::{ExitMode, Measure};
use crate::hardware::{hex, Hardware};
use crate::metrics::rouge::{corpus, Rouge};
use crate::model::ModelFiles;
use crate::results::record::{CellKey, CellRecord, Energy, SampleOutput, Stats, TimeSplit, TraceToken};
use crate::results::{store, SCHEMA_VERSION};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Receives progress events (a terminal bar, or nothing).
pub trait Progress {
    /// The number of generation steps in the whole sweep.
    fn start(&mut self, total: u64);
    /// A cell begins.
    fn cell(&mut self, label: &str);
    /// One sample generated.
    fn tick(&mut self);
    /// A warning for the user (stderr).
    fn warn(&mut self, msg: &str);
    /// The sweep is done.
    fn finish(&mut self);
}

/// Progress that prints nothing at all (`run -q`: errors only).
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _: u64) {}
    fn cell(&mut self, _: &str) {}
    fn tick(&mut self) {}
    fn warn(&mut self, _: &str) {}
    fn finish(&mut self) {}
}

/// Progress that prints only warnings.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _: u64) {}
    fn cell(&mut self, _: &str) {}
    fn tick(&mut self) {}
    fn warn(&mut self, msg: &str) {
        eprintln!("warning: {msg}");
    }
    fn finish(&mut self) {}
}

/// Options of a run beyond the plan.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Run only this shard of the groups.
    pub shard: Option<Shard>,
    /// Skip cells already in the results file (the plan must be the one recorded there).
    pub resume: bool,
    /// Like `resume`, but the plan may differ: its new cells are added to the directory.
    pub extend: bool,
}

/// The plans run into a results directory, oldest first (`plan.json`).
pub const PLAN_FILE: &str = "plan.json";

/// The settings that define a sweep and what its cells measure, as recorded in `plan.json`
/// (`out` and the pause between cells left out: a resume may change those).
fn plan_settings(plan: &Plan) -> serde_json::Value {
    let mut v = serde_json::to_value(&plan.resolved).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("out");
        o.remove("cooldown");
    }
    v
}

/// Refuses a resume whose plan differs from the last one recorded in `dir` (naming what
/// differs); with `extend`, or without a record, records this plan.
fn check_and_record_plan(plan: &Plan, dir: &Path, resume: bool, extend: bool) -> Result<()> {
    let path = dir.join(PLAN_FILE);
    let now = plan_settings(plan);
    let mut plans: Vec<serde_json::Value> = match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str::<serde_json::Value>(&t)
            .ok()
            .and_then(|v| v.get("plans").and_then(|p| p.as_array()).cloned())
            .ok_or_else(|| Error::file(&path, None, "not a plan record (expected {\"plans\": [...]})"))?,
        Err(_) => Vec::new(),
    };
    if let Some(last) = plans.last() {
        if *last == now {
            return Ok(());
        }
        if resume && !extend {
            let (a, b) = (last.as_object(), now.as_object());
            let mut keys: Vec<String> = a.into_iter().chain(b).flat_map(|m| m.keys().cloned()).collect();
            keys.sort();
            keys.dedup();
            let diffs: Vec<String> = keys
                .iter()
                .filter(|k| last.get(k.as_str()) != now.get(k.as_str()))
                .map(|k| format!("{k}: {} → {}", last.get(k.as_str()).unwrap_or(&serde_json::Value::Null), now.get(k.as_str()).unwrap_or(&serde_json::Value::Null)))
                .collect();
            return Err(Error::setting(
                "--resume",
                format!("{} was made by another plan ({}); resume it with the same settings, or pass --extend to add this plan's cells to it", dir.display(), diffs.join("; ")),
            ));
        }
    }
    plans.push(now);
    let text = serde_json::to_string_pretty(&serde_json::json!({ "plans": plans })).map_err(|e| Error::Internal(e.to_string()))?;
    let tmp = dir.join(".plan.json.tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// Runs the plan, appending to `plan.out/results.jsonl`. Returns the records of this run.
pub fn run(plan: &Plan, opts: RunOptions, progress: &mut dyn Progress) -> Result<Vec<CellRecord>> {
    std::fs::create_dir_all(&plan.out).map_err(|e| Error::io(&plan.out, e))?;
    let path = plan.out.join(store::RESULTS_FILE);
    let mut done = HashSet::new();
    if path.exists() {
        if !opts.resume && !opts.extend {
            return Err(Error::setting(
                "--out",
                format!("{} already holds results: pass --resume to continue that sweep (or --extend to add other cells to it), or choose another --out", path.display()),
            ));
        }
        check_and_record_plan(plan, &plan.out, opts.resume, opts.extend)?;
        store::repair_tail(&path)?;
        done.extend(store::read(&path)?.into_iter().map(|r| r.cell_id));
    } else {
        check_and_record_plan(plan, &plan.out, false, true)?;
    }
    // Measured once per run, before any cell: the ceiling a batch-1 decode step is held to.
    let hardware = Hardware::probe().with_bandwidth(std::time::Duration::from_secs(1));
    let detected = crate::meter::detect(&plan.energy.meters);
    let mut window = detected.into_window();
    // The estimate is derived from CPU time: an idle baseline (≈ 0 CPU time) and minimum windows
    // would only cost time.
    let idle = if plan.energy.idle_seconds > 0.0 && window.needs_min_window() {
        progress.cell("idle baseline");
        window.idle_power(plan.energy.idle_seconds)?
    } else {
        Vec::new()
    };
    let mut meter = MeterCtx { window: &mut window, idle: &idle };
    let dataset_hash = hash_examples(plan);
    let mut todo = groups(plan);
    let all_groups = todo.len();
    if let Some(s) = opts.shard {
        todo = s.select(todo);
        if todo.is_empty() {
            progress.warn(&format!("shard {}/{} has no configuration group to run (the grid has {all_groups}); it writes an empty results file", s.index, s.count));
        }
    }
    // An empty results file even when nothing runs here, so that merge and report take it.
    std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
    let steps: usize = todo.iter().map(|g| g.modes.len() * (plan.warmup.min(plan.examples.len()) + plan.examples.len() * plan.repetitions)).sum();
    let cells: usize = todo.iter().map(|g| g.modes.len()).sum();
    progress.start(steps as u64);
    let mut tally = Tally::default();
    for g in &todo {
        let ctx = GroupCtx { plan, group: g, hardware: &hardware, dataset_hash: &dataset_hash };
        match run_group(&ctx, &mut meter, &path, &mut done, progress, &mut tally) {
            Err(Error::Interrupted) => {
                progress.finish();
                return Err(Error::Stopped { done: tally.written.len() + tally.skipped, total: cells });
            }
            other => other?,
        }
    }
    progress.finish();
    if opts.resume || opts.extend {
        progress.warn(&format!("resumed {}: {} of this plan's {cells} cells were already done and skipped", plan.out.display(), tally.skipped));
    }
    Ok(tally.written)
}

struct GroupCtx<'a> {
    plan: &'a Plan,
    group: &'a Group,
    hardware: &'a Hardware,
    dataset_hash: &'a str,
}

impl GroupCtx<'_> {
    fn key(&self, mode: &ExitMode, weights_hash: &str) -> CellKey {
        let g = self.group;
        let (measure, threshold, schedule, min, interval, static_layer) = match mode {
            ExitMode::Full => ("-".into(), None, "-".into(), None, None, None),
            ExitMode::Static { layer } => ("-".into(), None, "-".into(), None, None, Some(*layer)),
            ExitMode::Oracle { min_exit_layer, exit_interval } => ("-".into(), None, "-".into(), Some(*min_exit_layer), Some(*exit_interval), None),
            ExitMode::Dynamic(p) => (p.measure.name().to_string(), Some(p.threshold), p.schedule.key_name(), Some(p.min_exit_layer), Some(p.exit_interval), None),
        };
        CellKey {
            model: g.model_dir.display().to_string(),
            weights_hash: weights_hash.to_string(),
            dataset: self.plan.dataset.name(),
            dataset_hash: self.dataset_hash.to_string(),
            backend: g.backend.name().into(),
            device: g.device.name(),
            dtype: g.dtype.name().into(),
            threads: g.threads,
            measure,
            threshold,
            schedule,
            min_exit_layer: min,
            exit_interval: interval,
            baseline: mode.baseline().into(),
            static_layer,
            machine: self.hardware.machine_id.clone(),
            max_new_tokens: self.plan.max_new_tokens,
        }
    }

    fn base_record(&self, key: CellKey, num_layers: usize, status: &str, reason: Option<String>) -> CellRecord {
        CellRecord {
            schema_version: SCHEMA_VERSION,
            exitbench_version: env!("CARGO_PKG_VERSION").into(),
            cell_id: key.id(),
            key,
            status: status.into(),
            reason,
            num_layers,
            samples: 0,
            tokens: 0,
            avg_layers: 0.0,
            exit_histogram: vec![0; num_layers],
            prefill_s: Stats::default(),
            ms_per_token: Stats::default(),
            tokens_per_s: Stats::default(),
            duration_s: Stats::default(),
            time_split: TimeSplit::default(),
            energy: Energy { source: "none".into(), ..Default::default() },
            peak_mem_mb: 0.0,
            peak_device_mem_mb: None,
            device_mem_scope: None,
            rouge: Default::default(),
            key_facts_exact: None,
            bookkeeping_s: 0.0,
            generate_s: 0.0,
            compute_dtype: None,
            bytes_per_token: None,
            achieved_gb_s: None,
            runtime: None,
            outputs: Vec::new(),
            random_weights: self.plan.random_weights.is_some(),
            batch_size: 1,
            seed: self.plan.seed,
            config: serde_json::to_value(&self.plan.resolved).unwrap_or_default(),
            hardware: self.hardware.clone(),
            finished_at: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        }
    }
}

/// What the run did so far: records written, cells skipped as already done.
#[derive(Default)]
struct Tally {
    written: Vec<CellRecord>,
    skipped: usize,
}

/// The energy window and the idle baseline shared by every cell.
struct MeterCtx<'a> {
    window: &'a mut crate::meter::EnergyWindow,
    idle: &'a [(String, f64)],
}

fn run_group(ctx: &GroupCtx, meter: &mut MeterCtx, path: &Path, done: &mut HashSet<String>, progress: &mut dyn Progress, tally: &mut Tally) -> Result<()> {
    crate::interrupt::check()?;
    let g = ctx.group;
    let plan = ctx.plan;
    let layers = plan.models[g.model].config.num_hidden_layers;
    let per_cell = (plan.warmup.min(plan.examples.len()) + plan.examples.len() * plan.repetitions) as u64;
    let files = ModelFiles::open(&g.model_dir, plan.random_weights)?;
    let wh = files.weights_hash()?;
    let mut backend = match crate::backend::open(g.backend, &files, g.device, g.dtype, g.threads) {
        Ok(b) => b,
        Err(e @ Error::Unsupported(_)) => {
            // The whole group cannot run here: one `unsupported` row per cell, never a crash.
            for mode in &g.modes {
                let key = ctx.key(mode, &wh);
                if done.insert(key.id()) {
                    let rec = ctx.base_record(key, layers, "unsupported", Some(e.to_string()));
                    store::append(path, &rec)?;
                    tally.written.push(rec);
                } else {
                    tally.skipped += 1;
                }
                (0..per_cell).for_each(|_| progress.tick());
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if let crate::backend::DeviceKind::Cuda(index) = g.device {
        warn_if_gpu_shared(index as u32, progress);
    }
    let prompts = encode_prompts(plan, &files)?;
    let group = GroupRun { ctx, files: &files, weights_hash: &wh, prompts: &prompts, path, per_cell };
    crate::with_backend!(&mut backend, b => group.run(b, meter, done, progress, tally))
}

/// One configuration group's shared state while its cells run on one backend.
struct GroupRun<'a> {
    ctx: &'a GroupCtx<'a>,
    files: &'a ModelFiles,
    weights_hash: &'a str,
    prompts: &'a [Vec<u32>],
    path: &'a Path,
    per_cell: u64,
}

impl GroupRun<'_> {
    fn run<B: Backend>(&self, backend: &mut B, meter: &mut MeterCtx, done: &mut HashSet<String>, progress: &mut dyn Progress, tally: &mut Tally) -> Result<()> {
        let (ctx, plan) = (self.ctx, self.ctx.plan);
        let layers = backend.num_layers();
        let info = backend.runtime_info();
        for mode in &ctx.group.modes {
            let key = ctx.key(mode, self.weights_hash);
            if !done.insert(key.id()) {
                tally.skipped += 1;
                (0..self.per_cell).for_each(|_| progress.tick());
                continue;
            }
            crate::interrupt::check()?;
            progress.cell(&key.label());
            let rec = match mode {
                ExitMode::Dynamic(p) if p.measure == Measure::Classifier && !backend.has_classifier() => {
                    (0..self.per_cell).for_each(|_| progress.tick());
                    ctx.base_record(key, layers, "unsupported", Some("the classifier measure needs exit classifiers; this model has none".into()))
                }
                // A cell that fails at run time (an op or dtype the device lacks, memory) is a row
                // with status `error` and the reason; the sweep goes on.
                _ => match run_cell(ctx, meter, backend, self.files, mode, self.prompts, key.clone(), progress) {
                    Ok(rec) => rec,
                    // The cell in flight is dropped: nothing of it is written.
                    Err(Error::Interrupted) => return Err(Error::Interrupted),
                    Err(e) => {
                        progress.warn(&format!("{}: failed: {e}", key.label()));
                        ctx.base_record(key, layers, "error", Some(e.to_string()))
                    }
                },
            };
            let mut rec = rec;
            rec.compute_dtype = Some(info.compute_dtype.clone());
            if ctx.group.backend == crate::backend::BackendKind::Ort {
                rec.hardware.onnxruntime_version = Some(info.version.clone());
                rec.hardware.onnxruntime_library = info.library.clone();
            }
            rec.runtime = Some(info.clone());
            store::append(self.path, &rec)?;
            tally.written.push(rec);
            if plan.cooldown_s > 0.0 {
                std::thread::sleep(std::time::Duration::from_secs_f64(plan.cooldown_s));
            }
        }
        Ok(())
    }
}

/// Warns when other processes use the GPU: their work would pollute the energy reading.
fn warn_if_gpu_shared(index: u32, progress: &mut dyn Progress) {
    let Ok(nvml) = crate::meter::nvml::load() else { return };
    let Ok(dev) = nvml.device_by_index(index) else { return };
    let others = crate::meter::nvml::other_processes(&dev, index);
    if !others.is_empty() {
        progress.warn(&format!("GPU {index} is also used by {}: its energy figures include their work", others.join(", ")));
    }
}

fn encode_prompts(plan: &Plan, m: &ModelFiles) -> Result<Vec<Vec<u32>>> {
    let max = m.config.max_position_embeddings;
    plan.examples
        .iter()
        .map(|ex| {
            let ids = m.tokenizer.encode(&ex.prompt)?;
            if ids.len() >= max {
                return Err(Error::setting(
                    "--dataset",
                    format!("example `{}` has {} prompt tokens, beyond max_position_embeddings = {max} of {}", ex.id, ids.len(), m.dir.display()),
                ));
            }
            Ok(ids)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn run_cell<B: Backend>(ctx: &GroupCtx, meter: &mut MeterCtx, backend: &mut B, m: &ModelFiles, mode: &ExitMode, prompts: &[Vec<u32>], key: CellKey, progress: &mut dyn Progress) -> Result<CellRecord> {
    let cell_start = Instant::now();
    let mut generate_s = 0.0;
    let plan = ctx.plan;
    let layers = backend.num_layers();
    let opts = |i: usize| GenerateOptions {
        mode: *mode,
        max_new_tokens: plan.max_new_tokens,
        sampling: Sampling { temperature: 0.0, top_p: 1.0, seed: plan.seed.wrapping_add(i as u64) },
        eos_ids: m.config.eos_ids(),
    };
    for (i, p) in prompts.iter().take(plan.warmup).enumerate() {
        crate::interrupt::check()?;
        let t = Instant::now();
        generate(backend, p, &opts(i))?;
        generate_s += t.elapsed().as_secs_f64();
        progress.tick();
    }
    reset_peak_rss();
    let mut gpu_mem = GpuMemory::for_device(ctx.group.device);
    let mut first: Vec<Generation> = Vec::new();
    let (mut ms_tok, mut tok_s, mut dur) = (Vec::new(), Vec::new(), Vec::new());
    let mut energies = Vec::new();
    let min_window = if meter.window.needs_min_window() { plan.energy.min_window } else { 0.0 };
    for rep in 0..plan.repetitions {
        backend.sync()?;
        meter.window.begin()?;
        let start = Instant::now();
        let (mut decode_s, mut prefill_s, mut decode_tokens, mut tokens, mut passes) = (0.0, 0.0, 0usize, 0usize, 0usize);
        // Repeat the samples inside one window until it lasts --min-window (coarse meters).
        loop {
            for (i, p) in prompts.iter().enumerate() {
                crate::interrupt::check()?;
                let t = Instant::now();
                let g = generate(backend, p, &opts(i))?;
                generate_s += t.elapsed().as_secs_f64();
                gpu_mem.sample();
                decode_s += g.decode_s();
                prefill_s += g.prefill_s;
                decode_tokens += g.tokens.len().saturating_sub(1);
                tokens += g.tokens.len();
                if passes == 0 {
                    progress.tick();
                    if rep == 0 {
                        first.push(g);
                    }
                }
            }
            passes += 1;
            if start.elapsed().as_secs_f64() >= min_window {
                break;
            }
        }
        backend.sync()?;
        let reading = meter.window.end()?;
        let elapsed = start.elapsed().as_secs_f64();
        dur.push(elapsed / passes as f64);
        if decode_tokens > 0 && decode_s > 0.0 {
            ms_tok.push(decode_s * 1e3 / decode_tokens as f64);
            tok_s.push(decode_tokens as f64 / decode_s);
        }
        let work = PassWork { passes, queries: prompts.len(), tokens, decode_tokens, prefill_s, decode_s };
        energies.push(energy_of(&reading, meter.idle, &work, &plan.energy));
    }
    let peak = peak_rss_mb();
    if let Some(w) = slow_first_warning(&ms_tok) {
        progress.warn(&format!("{}: {w}", key.label()));
    }
    if let Some(w) = outlier_warning(&ms_tok) {
        progress.warn(&format!("{}: {w}", key.label()));
    }
    let mut rec = ctx.base_record(key, layers, "ok", None);
    let rouge = Rouge::new(false);
    let mut hist = vec![0u64; layers];
    let mut split = TimeSplit::default();
    let mut outputs = Vec::with_capacity(first.len());
    let mut scores = Vec::with_capacity(first.len());
    for (i, (g, ex)) in first.iter().zip(&plan.examples).enumerate() {
        // The prefill's token had no exit decision; the histogram, like ms/token, counts decoded tokens.
        for t in g.tokens.iter().skip(1) {
            hist[t.exit_layer - 1] += 1;
            split.layers_s += t.layers_s;
            split.exit_checks_s += t.exit_checks_s;
            split.propagation_s += t.propagation_s;
        }
        let ids = g.ids();
        let text = m.tokenizer.decode(&ids)?.trim().to_string();
        let s = rouge.score(&text, &ex.reference);
        scores.push(s);
        let key_facts = ex.facts.as_ref().map(|f| crate::data::synth::facts_in(&text, f).all());
        let trace = if i < plan.trace_samples {
            let pieces = m.tokenizer.pieces(&ids)?;
            Some(g.tokens.iter().zip(pieces).map(|(t, text)| TraceToken { id: t.id, text, exit_layer: t.exit_layer, confidence: t.confidence }).collect())
        } else {
            None
        };
        outputs.push(SampleOutput {
            id: ex.id.clone(),
            text,
            tokens: g.tokens.len(),
            avg_layers: g.avg_layers(),
            rouge_l: s.rougeL.fmeasure,
            key_facts,
            prefill_s: g.prefill_s,
            decode_s: g.decode_s(),
            trace,
            token_ids: ids.clone(),
        });
    }
    rec.samples = first.len();
    rec.tokens = first.iter().map(|g| g.tokens.len()).sum();
    rec.avg_layers = crate::results::record::mean_exit_layer(&hist);
    rec.exit_histogram = hist;
    rec.prefill_s = Stats::of(&first.iter().map(|g| g.prefill_s).collect::<Vec<_>>());
    rec.ms_per_token = Stats::of(&ms_tok);
    rec.tokens_per_s = Stats::of(&tok_s);
    rec.duration_s = Stats::of(&dur);
    rec.time_split = split;
    rec.energy = median_energy(energies);
    rec.peak_mem_mb = peak;
    (rec.peak_device_mem_mb, rec.device_mem_scope) = gpu_mem.peak();
    rec.rouge = corpus(&scores, plan.seed);
    let cfg = &m.config;
    let element = if key_dtype_is_f32(&rec.key.dtype) { 4.0 } else { 2.0 };
    rec.bytes_per_token = crate::bandwidth::bytes_per_token(mode, cfg, element, &first);
    rec.achieved_gb_s = rec.bytes_per_token.zip((rec.ms_per_token.n > 0).then_some(rec.ms_per_token.median)).filter(|(_, ms)| *ms > 0.0).map(|(b, ms)| b / (ms / 1e3) / 1e9);
    let facts: Vec<f64> = outputs.iter().filter_map(|o| o.key_facts).map(|b| if b { 1.0 } else { 0.0 }).collect();
    rec.key_facts_exact = (!facts.is_empty()).then(|| crate::metrics::stats::mean(&facts));
    rec.outputs = outputs;
    rec.generate_s = generate_s;
    rec.bookkeeping_s = cell_start.elapsed().as_secs_f64() - generate_s;
    Ok(rec)
}

fn key_dtype_is_f32(dtype: &str) -> bool {
    dtype == "f32"
}

/// Peak GPU memory over a cell, sampled through NVML after every sample of a CUDA cell.
struct GpuMemory {
    nvml: Option<(std::sync::Arc<nvml_wrapper::Nvml>, u32)>,
    peak: Option<(f64, &'static str)>,
}

impl GpuMemory {
    fn for_device(device: crate::backend::DeviceKind) -> Self {
        let nvml = match device {
            crate::backend::DeviceKind::Cuda(index) => crate::meter::nvml::load().ok().map(|n| (n, index as u32)),
            _ => None,
        };
        GpuMemory { nvml, peak: None }
    }

    fn sample(&mut self) {
        let Some((nvml, index)) = &self.nvml else { return };
        let Some(now) = nvml.device_by_index(*index).ok().and_then(|d| crate::meter::nvml::gpu_memory_mib(&d)) else { return };
        if self.peak.is_none_or(|(mib, _)| now.0 > mib) {
            self.peak = Some(now);
        }
    }

    fn peak(&self) -> (Option<f64>, Option<String>) {
        (self.peak.map(|p| p.0), self.peak.map(|p| p.1.to_string()))
    }
}

/// A hyperfine-style warning when the first repetition is much slower than the rest.
fn slow_first_warning(ms_tok: &[f64]) -> Option<String> {
    if ms_tok.len() < 3 {
        return None;
    }
    let rest = crate::metrics::stats::median(&ms_tok[1..]);
    (ms_tok[0] > 1.5 * rest).then(|| {
        format!("the first repetition took {:.3} ms/token, {:.1}× the median of the others: caches were cold, consider --warmup", ms_tok[0], ms_tok[0] / rest)
    })
}

/// A warning when some repetitions fall outside Tukey's fences (1.5 IQR), as hyperfine warns of
/// statistical outliers (another process, a frequency change).
fn outlier_warning(ms_tok: &[f64]) -> Option<String> {
    if ms_tok.len() < 4 {
        return None;
    }
    let q1 = crate::metrics::stats::quantile(ms_tok, 0.25);
    let q3 = crate::metrics::stats::quantile(ms_tok, 0.75);
    let (lo, hi) = (q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1));
    let n = ms_tok.iter().filter(|&&x| x < lo || x > hi).count();
    (n > 0).then(|| format!("{n} of {} repetitions are statistical outliers (Tukey fences); other programs may have interfered", ms_tok.len()))
}

fn hash_examples(plan: &Plan) -> String {
    let mut h = Sha256::new();
    for ex in &plan.examples {
        h.update(ex.id.as_bytes());
        h.update([0]);
        h.update(ex.prompt.as_bytes());
        h.update([0]);
        h.update(ex.reference.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Resets the kernel's peak-RSS counter of this process (Linux; elsewhere a no-op).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size since the last reset, MiB (0 where unknown).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// What one repetition did inside its energy window.
struct PassWork {
    passes: usize,
    queries: usize,
    tokens: usize,
    decode_tokens: usize,
    prefill_s: f64,
    decode_s: f64,
}

/// Energy figures of one repetition, per pass over the samples.
fn energy_of(r: &crate::meter::WindowReading, idle: &[(String, f64)], w: &PassWork, e: &super::plan::EnergySettings) -> Energy {
    use crate::meter::Scope;
    let passes = w.passes.max(1) as f64;
    let gross = r.total_j / passes;
    let net = crate::meter::net_energy(r, idle).net_j / passes;
    let busy = (w.prefill_s + w.decode_s).max(1e-12);
    let prefill_share = w.prefill_s / busy;
    let per_pass_tokens = w.tokens as f64 / passes;
    let per_pass_decode = w.decode_tokens as f64 / passes;
    let per = |x: Option<f64>| x.map(|j| j / passes);
    let mut warnings: Vec<String> = r.readings.iter().flat_map(|m| m.warnings.iter().map(|x| format!("{}: {x}", m.meter))).collect();
    warnings.dedup();
    Energy {
        source: r.source_label.clone(),
        estimate: r.is_estimate(),
        energy_j: Some(gross),
        energy_net_j: Some(net),
        idle_w: (!idle.is_empty() && r.duration_s > 0.0).then(|| (r.total_j - crate::meter::net_energy(r, idle).net_j) / r.duration_s),
        avg_watts: (r.duration_s > 0.0).then(|| r.total_j / r.duration_s),
        j_per_token: (per_pass_tokens > 0.0).then(|| gross / per_pass_tokens),
        prefill_j: (w.queries > 0).then(|| gross * prefill_share / w.queries as f64),
        decode_j_per_token: (per_pass_decode > 0.0).then(|| gross * (1.0 - prefill_share) / per_pass_decode),
        wh_per_1k_queries: (w.queries > 0).then(|| gross / 3600.0 / w.queries as f64 * 1000.0),
        gco2e: Some(crate::meter::carbon::gco2e(gross, e.carbon.g_per_kwh, e.pue)),
        carbon_g_per_kwh: Some(e.carbon.g_per_kwh),
        carbon_source: Some(e.carbon.source.clone()),
        pue: Some(e.pue),
        energy_gpu_j: per(r.scope_j(Scope::GpuBoard)),
        energy_cpu_j: per(r.scope_j(Scope::CpuPackage).or(r.scope_j(Scope::Psys))),
        energy_dram_j: per(r.scope_j(Scope::Dram)),
        min_window_repeats: Some(w.passes),
        warnings,
        energy_j_stats: None,
        j_per_token_stats: None,
    }
}

/// The repetition with the median gross energy (all its figures kept together), with statistics
/// over all repetitions attached.
fn median_energy(mut v: Vec<Energy>) -> Energy {
    if v.is_empty() {
        return Energy { source: "none".into(), ..Default::default() };
    }
    let over = |f: fn(&Energy) -> Option<f64>, v: &[Energy]| {
        let xs: Vec<f64> = v.iter().filter_map(f).collect();
        (!xs.is_empty()).then(|| Stats::of(&xs))
    };
    let (energy_j_stats, j_per_token_stats) = (over(|e| e.energy_j, &v), over(|e| e.j_per_token, &v));
    v.sort_by(|a, b| a.energy_j.unwrap_or(0.0).total_cmp(&b.energy_j.unwrap_or(0.0)));
    let mut e = v.swap_remove((v.len() - 1) / 2);
    e.energy_j_stats = energy_j_stats;
    e.j_per_token_stats = j_per_token_stats;
    e
}
