//! One cell's samples in one round: the block generated inside one energy window (repeated
//! until the window lasts the meter's minimum), each sample kept compactly as a [`SampleRun`].

use super::energy::window_joules;
use super::fingerprint::CellMode;
use super::plan::Plan;
use super::rounds::{BatchTally, Round, RoundRecord, SampleRun};
use crate::backend::{DeviceKind, Speculate};
use crate::decode::batch::{generate_batch, BatchStep};
use crate::decode::speculative_batch::generate_speculative_batch;
use crate::decode::speculative::{generate_speculative, SpeculationStats};
use crate::decode::{generate, GenerateOptions, Generation, Sampling};
use crate::error::Result;
use crate::meter::EnergyWindow;
use super::exit_trace::ExitTrace;
use std::time::Instant;

/// The energy window and the idle baseline shared by every cell.
pub struct MeterCtx<'a> {
    /// The run's meters.
    pub window: &'a mut EnergyWindow,
    /// Idle power per meter (empty when not measured).
    pub idle: &'a [(String, f64)],
}

/// Tokens of the untimed re-warm that opens every cell's round.
pub const REWARM_TOKENS: usize = 4;

/// Generates one sample of `cell`: plain decoding, or self-speculative decoding in a speculative
/// cell (with its drafting statistics).
pub fn generate_cell<B: Speculate>(backend: &mut B, prompt: &[u32], opts: &GenerateOptions, cell: &CellMode) -> Result<(Generation, Option<SpeculationStats>)> {
    match &cell.speculation {
        None => Ok((generate(backend, prompt, opts)?, None)),
        Some(s) => {
            let g = generate_speculative(backend, prompt, opts, s)?;
            Ok((g.generation, Some(g.stats)))
        }
    }
}

/// One sample generated as part of a block: its generation, drafting statistics (speculative
/// cells) and, in a batched cell, its share of the batch's steps.
pub struct Generated {
    /// Index of the example.
    pub sample: usize,
    /// The generation.
    pub generation: Generation,
    /// Drafts and acceptances (speculative cells).
    pub speculation: Option<SpeculationStats>,
    /// The row's share of its batch's time (batched cells).
    pub share: Option<RowShare>,
}

/// A batch row's share of the batch's decode steps: each step's seconds divided among the rows
/// it decoded, so that the shares of a batch sum to its decode time (tokens/s over all rows),
/// and the row's latency (the whole steps it waited for).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowShare {
    /// Decode seconds attributed to the row.
    pub decode_s: f64,
    /// Its layers / exit checks / propagation seconds.
    pub split: [f64; 3],
    /// Its gather seconds.
    pub gather_s: f64,
    /// Seconds of the steps that decoded its tokens (its latency).
    pub latency_s: f64,
}

/// Shares of every row of a batch: row r took part in the first `took_part[r]` steps (its
/// decoded tokens in a decode loop, its passes in a speculative one).
fn shares(steps: &[BatchStep], took_part: impl IntoIterator<Item = usize>) -> Vec<RowShare> {
    took_part
        .into_iter()
        .map(|n| {
            let mut s = RowShare::default();
            for st in steps.iter().take(n) {
                let n = st.rows.max(1) as f64;
                s.decode_s += st.total_s() / n;
                s.split[0] += st.layers_s / n;
                s.split[1] += st.exit_checks_s / n;
                s.split[2] += st.propagation_s / n;
                s.gather_s += st.gather_s / n;
                s.latency_s += st.total_s();
            }
            s
        })
        .collect()
}

/// Generates `samples` of `cell` in order: one at a time at batch size 1, else in batches of the
/// cell's size (consecutive samples; the last batch may be smaller). `opts_of(i)` gives sample
/// i's options; a batch uses its first sample's (row r samples with that seed + r, which is
/// sample i + r's own seed). Returns the samples and the batches' steps.
pub fn generate_samples<B: Speculate + crate::backend::SpeculateRows>(backend: &mut B, prompts: &[Vec<u32>], samples: &[usize], cell: &CellMode, trace: Option<&ExitTrace>, opts_of: impl Fn(usize) -> GenerateOptions) -> Result<(Vec<Generated>, Vec<crate::decode::batch::BatchStep>, bool)> {
    // An early-exit cell replaying a trace: each batch (of one row at batch size 1) exits where
    // its samples exited in the trace.
    let layers = backend.num_layers();
    let replay = |rows: &[usize]| match (&cell.mode, trace) {
        (crate::exit::ExitMode::Dynamic(p), Some(t)) => t.replay(p, rows, layers).map(Some).ok_or_else(|| crate::error::Error::Internal(format!("--exit-trace: samples {rows:?} of {}@{} not in the checked trace", p.measure, p.threshold))),
        _ => Ok(None),
    };
    let batch = match cell.batch {
        Some(b) => b,
        None if trace.is_some() && matches!(cell.mode, crate::exit::ExitMode::Dynamic(_)) => super::fingerprint::CellBatch { size: 1, policy: None },
        None => {
        let mut out = Vec::with_capacity(samples.len());
        for &i in samples {
            crate::interrupt::check()?;
            let (generation, speculation) = generate_cell(backend, &prompts[i], &opts_of(i), cell)?;
            out.push(Generated { sample: i, generation, speculation, share: None });
        }
        return Ok((out, Vec::new(), false));
        }
    };
    let policy = batch.policy.unwrap_or(crate::decode::batch::BatchPolicy::PerRow);
    let (mut out, mut steps, mut shared) = (Vec::with_capacity(samples.len()), Vec::new(), false);
    for chunk in samples.chunks(batch.size) {
        crate::interrupt::check()?;
        let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        if let Some(spec) = &cell.speculation {
            // A speculative batch: each pass is one step, in which a row emits its tokens.
            let g = generate_speculative_batch(backend, &rows, &opts_of(chunk[0]), spec)?;
            shared = g.shares_weight_reads;
            let passes: Vec<BatchStep> = g.passes.iter().map(|p| p.as_step(layers, spec.draft_layer)).collect();
            let took_part: Vec<usize> = g.rows.iter().map(|r| r.stats.passes.len()).collect();
            for ((&i, share), row) in chunk.iter().zip(shares(&passes, took_part)).zip(g.rows) {
                out.push(Generated { sample: i, generation: row.generation, speculation: Some(row.stats), share: Some(share) });
            }
            steps.extend(passes);
            continue;
        }
        let r = replay(chunk)?;
        let g = generate_batch(backend, &rows, &opts_of(chunk[0]), policy, r.as_ref())?;
        shared = g.shares_weight_reads;
        let took_part: Vec<usize> = g.rows.iter().map(|r| r.tokens.len().saturating_sub(1)).collect();
        for ((&i, share), generation) in chunk.iter().zip(shares(&g.steps, took_part)).zip(g.rows) {
            out.push(Generated { sample: i, generation, speculation: None, share: Some(share) });
        }
        steps.extend(g.steps);
    }
    Ok((out, steps, shared))
}

/// What a cell generates with: its mode, the plan's limits, and the sample's seed.
pub fn options(plan: &Plan, cell: &CellMode, sample: usize, eos_ids: &[u32], profile_layers: bool) -> GenerateOptions {
    GenerateOptions {
        mode: cell.mode,
        max_new_tokens: plan.max_new_tokens,
        sampling: Sampling { temperature: 0.0, top_p: 1.0, seed: plan.seed.wrapping_add(sample as u64) },
        eos_ids: eos_ids.to_vec(),
        profile_layers,
        time_split: cell.time_split,
    }
}

/// Runs `cell` over the first `n` prompts, measuring nothing (caches and clocks warm up).
pub fn warm_up<B: Speculate + crate::backend::SpeculateRows>(backend: &mut B, plan: &Plan, cell: &CellMode, prompts: &[Vec<u32>], eos_ids: &[u32], mut tick: impl FnMut()) -> Result<f64> {
    let mut generate_s = 0.0;
    // A batched cell warms up on whole batches of its size.
    let n = if plan.warmup == 0 { 0 } else { plan.warmup.div_ceil(cell.batch_size()) * cell.batch_size() };
    let samples: Vec<usize> = (0..n.min(prompts.len())).collect();
    for chunk in samples.chunks(cell.batch_size()) {
        let t = Instant::now();
        generate_samples(backend, prompts, chunk, cell, plan.exit_trace.as_ref(), |i| options(plan, cell, i, eos_ids, false))?;
        generate_s += t.elapsed().as_secs_f64();
        chunk.iter().filter(|&&i| i < plan.warmup).for_each(|_| tick());
    }
    Ok(generate_s)
}

/// Per-layer seconds and runs of an untimed pass over `samples` that synchronizes after every
/// layer (GPUs, where the timed rounds must not).
pub fn profile_pass<B: Speculate + crate::backend::SpeculateRows>(backend: &mut B, plan: &Plan, cell: &CellMode, prompts: &[Vec<u32>], samples: std::ops::Range<usize>, eos_ids: &[u32]) -> Result<(Vec<f64>, Vec<u64>)> {
    let layers = backend.num_layers();
    let (mut s, mut n) = (vec![0.0; layers], vec![0u64; layers]);
    for i in samples {
        crate::interrupt::check()?;
        let (g, _) = generate_cell(backend, &prompts[i], &options(plan, cell, i, eos_ids, true), cell)?;
        add_profile(&mut s, &mut n, &g);
    }
    Ok((s, n))
}

fn add_profile(s: &mut [f64], n: &mut [u64], g: &Generation) {
    for (i, (x, k)) in g.layer_s.iter().zip(&g.layer_runs).enumerate() {
        s[i] += x;
        n[i] += k;
    }
}

/// Runs one cell's block of `round` inside one energy window (the block repeated until the
/// window lasts --min-window for meters that need it). Layers are profiled in the timed passes
/// only where synchronizing is free (the CPU).
#[allow(clippy::too_many_arguments)]
pub fn run_round<B: Speculate + crate::backend::SpeculateRows>(backend: &mut B, plan: &Plan, cell: &CellMode, cell_id: &str, round: &Round, prompts: &[Vec<u32>], eos_ids: &[u32], device: DeviceKind, meter: &mut MeterCtx, mut tick: impl FnMut()) -> Result<RoundRecord> {
    let start = Instant::now();
    let layers = backend.num_layers();
    let profile = device == DeviceKind::Cpu;
    reset_peak_rss();
    let mut gpu_mem = GpuMemory::for_device(device);
    let min_window = if meter.window.needs_min_window() { plan.energy.min_window } else { 0.0 };
    let mut samples: Vec<SampleRun> = Vec::with_capacity(round.samples.len());
    let (mut layer_s, mut layer_runs) = (vec![0.0; if profile { layers } else { 0 }], vec![0u64; if profile { layers } else { 0 }]);
    let (mut generate_s, mut passes) = (0.0, 0usize);
    // The cell before this one in the round left its own weights in the caches: a few untimed
    // tokens of the block's first sample bring this cell's back (every token runs the cell's
    // layers and heads), so that a cell's figures depend less on which cell ran before it.
    let listed: Vec<usize> = round.samples.clone().collect();
    if let Some(&first) = listed.first() {
        let t = Instant::now();
        let rewarm = |i| GenerateOptions { max_new_tokens: plan.max_new_tokens.min(REWARM_TOKENS), ..options(plan, cell, i, eos_ids, false) };
        // A batched cell re-warms on its first batch.
        let head = &listed[..cell.batch_size().min(listed.len())];
        if cell.batch.is_some() {
            generate_samples(backend, prompts, head, cell, plan.exit_trace.as_ref(), rewarm)?;
        } else {
            generate_cell(backend, &prompts[first], &rewarm(first), cell)?;
        }
        generate_s += t.elapsed().as_secs_f64();
    }
    let mut batch = BatchTally::default();
    backend.sync()?;
    meter.window.begin()?;
    let window_start = Instant::now();
    let work = (|| -> Result<()> {
        loop {
            let first_pass = passes == 0;
            let t = Instant::now();
            let (runs, steps, shared) = generate_samples(backend, prompts, &listed, cell, plan.exit_trace.as_ref(), |i| options(plan, cell, i, eos_ids, profile && first_pass))?;
            generate_s += t.elapsed().as_secs_f64();
            gpu_mem.sample();
            if first_pass && cell.batch.is_some() {
                batch.add(&steps, shared);
            }
            for (k, g) in runs.into_iter().enumerate() {
                if first_pass {
                    if profile {
                        add_profile(&mut layer_s, &mut layer_runs, &g.generation);
                    }
                    let mut run = sample_run(g.sample, &g.generation, round.repetition == 0 && g.sample < plan.trace_samples);
                    run.speculation = g.speculation;
                    if let Some(share) = g.share {
                        run.decode_s = share.decode_s;
                        run.split = share.split;
                        run.gather_s = share.gather_s;
                        run.latency_s = Some(share.latency_s);
                    }
                    samples.push(run);
                    tick();
                } else {
                    samples[k].decode_s += g.share.map_or_else(|| g.generation.decode_s(), |s| s.decode_s);
                }
            }
            passes += 1;
            if window_start.elapsed().as_secs_f64() >= min_window {
                return Ok(());
            }
        }
    })();
    let synced = backend.sync();
    let reading = meter.window.end()?;
    work?;
    synced?;
    Ok(RoundRecord {
        cell_id: cell_id.to_string(),
        round: round.index,
        repetition: round.repetition,
        samples,
        passes,
        generate_s,
        wall_s: start.elapsed().as_secs_f64(),
        energy: window_joules(&reading, meter.idle),
        layer_s,
        layer_runs,
        peak_mem_mb: peak_rss_mb(),
        peak_device_mem: gpu_mem.peak,
        batch: cell.batch.is_some().then_some(batch),
    })
}

/// A generation kept compactly (confidences only for traced samples).
pub fn sample_run(sample: usize, g: &Generation, traced: bool) -> SampleRun {
    let decoded = g.tokens.iter().skip(1);
    SampleRun {
        sample,
        prompt_tokens: g.prompt_tokens,
        ids: g.ids(),
        exits: g.tokens.iter().map(|t| t.exit_layer).collect(),
        confidences: if traced { g.tokens.iter().map(|t| t.confidence).collect() } else { Vec::new() },
        stop: g.stop,
        prefill_s: g.prefill_s,
        decode_s: g.decode_s(),
        decode_tokens: g.tokens.len().saturating_sub(1),
        split: decoded.fold([0.0; 3], |a, t| [a[0] + t.layers_s, a[1] + t.exit_checks_s, a[2] + t.propagation_s]),
        speculation: None,
        gather_s: 0.0,
        latency_s: None,
    }
}

/// Peak GPU memory over a round, sampled through NVML after every sample of a CUDA cell.
struct GpuMemory {
    nvml: Option<(std::sync::Arc<nvml_wrapper::Nvml>, u32)>,
    peak: Option<(f64, String)>,
}

impl GpuMemory {
    fn for_device(device: DeviceKind) -> Self {
        let nvml = match device {
            DeviceKind::Cuda(ordinal) => crate::meter::nvml::load().ok().and_then(|n| crate::meter::nvml::index_of_cuda_ordinal(&n, ordinal).ok().map(|i| (n, i))),
            _ => None,
        };
        GpuMemory { nvml, peak: None }
    }

    fn sample(&mut self) {
        let Some((nvml, index)) = &self.nvml else { return };
        let Some(now) = nvml.device_by_index(*index).ok().and_then(|d| crate::meter::nvml::gpu_memory_mib(&d)) else { return };
        if self.peak.as_ref().is_none_or(|(mib, _)| now.0 > *mib) {
            self.peak = Some((now.0, now.1.to_string()));
        }
    }
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
