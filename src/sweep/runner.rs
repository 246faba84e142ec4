//! Runs the cells of a plan: per configuration group one model load, a warm-up of every cell,
//! then the cells interleaved in rounds (see [`super::rounds`]), each cell's round appended to
//! `rounds.jsonl` as it ends, and each cell's record appended to `results.jsonl` once its last
//! round is in.

use crate::backend::threads::ComputeThreads;
use crate::backend::RuntimeInfo;
use crate::results::store;
use crate::results::record::{CellRecord, CellStatus};
use super::assemble::{assemble, CellRounds};
use super::cell::{profile_pass, run_round, warm_up, MeterCtx};
use super::fingerprint::{hash_examples, CellBatch, CellMode, GroupCtx};
use crate::decode::batch::BatchPolicy;
use super::grid::{groups, Group, Shard};
use super::plan::Plan;
use super::planfile::check_and_record_plan;
use super::rounds::{self, RoundOrder, RoundRecord, ROUNDS_FILE};
use crate::backend::DeviceKind;
use crate::error::{Error, Result};
use crate::exit::{ExitMode, Measure};
use crate::hardware::Hardware;
use crate::model::ModelFiles;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Receives progress events (a terminal bar, or nothing).
pub trait Progress: Send {
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
    /// A round of a configuration group (or, in sequential order, a cell) finished: `what` says
    /// which. Logs print a line; a progress bar already shows it.
    fn round_done(&mut self, _what: &str) {}
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

/// The round records already in the results directory, by (cell, round).
type RoundsDone = HashMap<(String, usize), RoundRecord>;

/// Runs the plan, appending to `plan.out/results.jsonl`. Returns the records of this run.
pub fn run(plan: &Plan, opts: RunOptions, progress: &mut dyn Progress) -> Result<Vec<CellRecord>> {
    refuse_if_nothing_runs(plan)?;
    std::fs::create_dir_all(&plan.out).map_err(|e| Error::io(&plan.out, e))?;
    let path = plan.out.join(store::RESULTS_FILE);
    let mut done = HashSet::new();
    if holds_results(&plan.out) {
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
    let mut rounds_done = rounds::read(&plan.out)?;
    // Measured once per run, before any cell: the ceiling a batch-1 decode step is held to.
    // At every CPU thread count of the grid, so each cell is held to the limit of its own count.
    let threads: Vec<usize> = super::grid::groups(plan).iter().filter(|g| g.device == DeviceKind::Cpu).map(|g| g.threads).collect();
    let hardware = Hardware::probe().with_bandwidth_at(&threads, std::time::Duration::from_secs(1));
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
    drop(window);
    // Per group, the meters of its own device only: a CUDA group's GPU (its ordinal mapped to
    // NVML through CUDA_VISIBLE_DEVICES), no GPU for a CPU group; other boards' joules stay out.
    let mut windows: HashMap<Option<u32>, crate::meter::EnergyWindow> = HashMap::new();
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
    let per_cell = plan.warmup.min(plan.examples.len()) + plan.examples.len() * plan.repetitions;
    let steps: usize = todo.iter().map(|g| cells_of(plan, g).len() * per_cell).sum();
    let cells: usize = todo.iter().map(|g| cells_of(plan, g).len()).sum();
    progress.start(steps as u64);
    let mut tally = Tally::default();
    let files = Files { results: path.clone(), rounds: plan.out.join(ROUNDS_FILE) };
    for g in &todo {
        let ctx = GroupCtx { plan, group: g, hardware: &hardware, dataset_hash: &dataset_hash };
        let gpu = match g.device {
            DeviceKind::Cuda(ordinal) => match crate::meter::nvml::load().and_then(|n| crate::meter::nvml::index_of_cuda_ordinal(&n, ordinal)) {
                Ok(i) => Some(i),
                Err(why) => {
                    progress.warn(&format!("{}: no NVML meter for this GPU ({why}); its energy is not measured", g.device.name()));
                    None
                }
            },
            _ => None,
        };
        let window = windows.entry(gpu).or_insert_with(|| {
            let opts = crate::meter::MeterOptions { gpus: Some(gpu.into_iter().collect()), ..plan.energy.meters.clone() };
            crate::meter::detect(&opts).into_window()
        });
        let mut meter = MeterCtx { window, idle: &idle };
        // The group's kernels run on a pool of exactly its thread count, the decode loop's thread
        // among them (backend/threads.rs).
        let ran = crate::backend::threads::with_compute_threads(g.threads, plan.pin_cpus.as_deref(), |compute| {
            run_group(&ctx, &mut meter, &files, &mut done, &mut rounds_done, &mut *progress, &mut tally, compute)
        });
        match ran.and_then(|r| r) {
            Err(Error::Interrupted) => {
                progress.finish();
                let finished: HashSet<&String> = done.iter().collect();
                let rounds = rounds_done.keys().filter(|(id, _)| !finished.contains(id)).count();
                return Err(Error::Stopped { done: tally.written.len() + tally.skipped, total: cells, rounds });
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

/// True when `dir` holds results of a sweep: a record in `results.jsonl` or a finished round in
/// `rounds.jsonl`. A plan.json beside empty files (a run refused or stopped before any cell) is not.
fn holds_results(dir: &Path) -> bool {
    let has_data = |p: PathBuf| std::fs::metadata(&p).is_ok_and(|m| m.len() > 0) && std::fs::read(&p).is_ok_and(|b| b.iter().any(|c| !c.is_ascii_whitespace()));
    has_data(dir.join(store::RESULTS_FILE)) || has_data(dir.join(ROUNDS_FILE))
}

/// Refuses, before anything is written, a plan none of whose runtime/device pairs can run here
/// (e.g. only `--device cuda` in a build without CUDA): exit 2 with every reason, not a results
/// file of `unsupported` rows.
fn refuse_if_nothing_runs(plan: &Plan) -> Result<()> {
    let mut reasons = Vec::new();
    for &b in &plan.backends {
        for &d in &plan.devices {
            match crate::backend::known_unsupported(b, d) {
                None => return Ok(()),
                Some(why) => reasons.push(format!("{} on {}: {why}", b.name(), d.name())),
            }
        }
    }
    Err(Error::Unsupported(format!("nothing this run asks for can run here ({})", reasons.join("; "))))
}

/// Runs the plan's first configuration group on `backend` instead of the runtime the plan names
/// (a scripted backend in tests, or a runtime exitbench does not build), into a fresh `plan.out`,
/// with the meters found here. Returns the records written.
pub fn run_on<B: crate::backend::Speculate + crate::backend::SpeculateRows>(plan: &Plan, backend: &mut B, progress: &mut dyn Progress) -> Result<Vec<CellRecord>> {
    std::fs::create_dir_all(&plan.out).map_err(|e| Error::io(&plan.out, e))?;
    let files = Files { results: plan.out.join(store::RESULTS_FILE), rounds: plan.out.join(ROUNDS_FILE) };
    if files.results.exists() {
        return Err(Error::setting("--out", format!("{} already holds results", files.results.display())));
    }
    check_and_record_plan(plan, &plan.out, false, true)?;
    let hardware = Hardware::probe();
    let mut window = crate::meter::detect(&crate::meter::MeterOptions { gpus: Some(vec![]), ..plan.energy.meters.clone() }).into_window();
    let mut meter = MeterCtx { window: &mut window, idle: &[] };
    let dataset_hash = hash_examples(plan);
    let g = groups(plan).into_iter().next().ok_or_else(|| Error::Internal("the plan has no configuration group".into()))?;
    let ctx = GroupCtx { plan, group: &g, hardware: &hardware, dataset_hash: &dataset_hash };
    let model = ModelFiles::open(&g.model_dir, plan.random_weights)?;
    let wh = model.weights_hash()?;
    let prompts = encode_prompts(plan, &model)?;
    let per_cell = (plan.warmup.min(plan.examples.len()) + plan.examples.len() * plan.repetitions) as u64;
    let group = GroupRun { ctx: &ctx, model: &model, weights_hash: &wh, prompts: &prompts, files: &files, per_cell, cells: cells_of(plan, &g), compute: None };
    let mut tally = Tally::default();
    group.run(backend, &mut meter, &mut HashSet::new(), &mut HashMap::new(), progress, &mut tally)?;
    Ok(tally.written)
}

/// The cells of a group: its exit modes, plus on a GPU (or when asked) full depth timed without
/// the time split, which shows what the split's synchronization costs; at every batch size above
/// 1, full depth, the batched early-exit settings under every policy and the self-speculative
/// settings.
pub fn cells_of(plan: &Plan, g: &Group) -> Vec<CellMode> {
    let mut out = Vec::new();
    if plan.batch_sizes.contains(&1) {
        out.extend(g.modes.iter().map(|&mode| CellMode { mode, time_split: true, speculation: None, batch: None }));
        if plan.split_cost_row.unwrap_or(matches!(g.device, DeviceKind::Cuda(_))) {
            out.insert(1, CellMode { mode: ExitMode::Full, time_split: false, speculation: None, batch: None });
        }
        out.extend(plan.speculations.iter().map(|&s| CellMode { mode: ExitMode::Full, time_split: true, speculation: Some(s), batch: None }));
    }
    // Batched cells at every batch size above 1: full depth, the chosen early-exit settings under
    // every policy (every mode with `--batch-settings all`).
    let batched = |mode: &ExitMode| match (&plan.batch_settings, mode) {
        (None, _) | (_, ExitMode::Full) => true,
        (Some(list), ExitMode::Dynamic(p)) => list.iter().any(|&(m, t)| m == p.measure && t == p.threshold),
        _ => false,
    };
    for &size in plan.batch_sizes.iter().filter(|&&b| b > 1) {
        for &mode in g.modes.iter().filter(|m| batched(m)) {
            let policies: Vec<Option<BatchPolicy>> = match mode {
                ExitMode::Dynamic(_) => plan.batch_policies.iter().map(|&p| Some(p)).collect(),
                _ => vec![None],
            };
            out.extend(policies.into_iter().map(|policy| CellMode { mode, time_split: true, speculation: None, batch: Some(CellBatch { size, policy }) }));
        }
        // Self-speculative settings at this batch size: each row drafts and accepts its own.
        out.extend(plan.speculations.iter().map(|&s| CellMode { mode: ExitMode::Full, time_split: true, speculation: Some(s), batch: Some(CellBatch { size, policy: None }) }));
    }
    out
}

/// The files a run appends to.
struct Files {
    results: PathBuf,
    rounds: PathBuf,
}

/// What the run did so far: records written, cells skipped as already done.
#[derive(Default)]
struct Tally {
    written: Vec<CellRecord>,
    skipped: usize,
}

impl Tally {
    fn write(&mut self, path: &Path, rec: CellRecord) -> Result<()> {
        store::append(path, &rec)?;
        self.written.push(rec);
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn run_group(ctx: &GroupCtx, meter: &mut MeterCtx, files: &Files, done: &mut HashSet<String>, rounds_done: &mut RoundsDone, progress: &mut dyn Progress, tally: &mut Tally, compute: &ComputeThreads) -> Result<()> {
    crate::interrupt::check()?;
    let g = ctx.group;
    let plan = ctx.plan;
    let layers = plan.models[g.model].config.num_hidden_layers;
    let per_cell = (plan.warmup.min(plan.examples.len()) + plan.examples.len() * plan.repetitions) as u64;
    let model = ModelFiles::open(&g.model_dir, plan.random_weights)?;
    let wh = model.weights_hash()?;
    let cells = cells_of(plan, g);
    if cells.iter().all(|c| done.contains(&ctx.key(c, &wh).id())) {
        tally.skipped += cells.len();
        (0..per_cell * cells.len() as u64).for_each(|_| progress.tick());
        return Ok(());
    }
    let mut backend = match crate::backend::open(g.backend, &model, g.device, g.dtype, g.threads) {
        Ok(b) => b,
        Err(e @ (Error::Unsupported(_) | Error::Backend { .. })) => {
            // The whole group cannot run here: one row per cell, never a crash; `unsupported`
            // when the runtime cannot serve it (no provider, no kernel), `error` when it failed.
            let status = if matches!(e, Error::Unsupported(_)) { CellStatus::Unsupported } else { CellStatus::Error };
            for c in &cells {
                let key = ctx.key(c, &wh);
                if done.insert(key.id()) {
                    tally.write(&files.results, ctx.base_record(key, layers, status, Some(e.report())))?;
                } else {
                    tally.skipped += 1;
                }
                (0..per_cell).for_each(|_| progress.tick());
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if let DeviceKind::Cuda(ordinal) = g.device {
        warn_if_gpu_shared(ordinal, progress);
    }
    let prompts = encode_prompts(plan, &model)?;
    let compute = (g.backend == crate::backend::BackendKind::Candle && g.device == DeviceKind::Cpu).then(|| compute.clone());
    let group = GroupRun { ctx, model: &model, weights_hash: &wh, prompts: &prompts, files, per_cell, cells, compute };
    crate::with_backend!(&mut backend, b => group.run(b, meter, done, rounds_done, progress, tally))
}

/// One configuration group's shared state while its cells run on one backend.
struct GroupRun<'a> {
    ctx: &'a GroupCtx<'a>,
    model: &'a ModelFiles,
    weights_hash: &'a str,
    prompts: &'a [Vec<u32>],
    files: &'a Files,
    per_cell: u64,
    cells: Vec<CellMode>,
    /// The computing threads measured in the group's pool (candle on the CPU).
    compute: Option<ComputeThreads>,
}

/// A cell of the group being measured in this run.
struct Running {
    cell: CellMode,
    key: crate::results::CellKey,
    /// Measured only as full depth's partner in the rounds (its record is already written).
    partner_only: bool,
    warmup_s: f64,
    failed: bool,
}

impl GroupRun<'_> {
    #[allow(clippy::too_many_arguments)]
    fn run<B: crate::backend::Speculate + crate::backend::SpeculateRows>(&self, backend: &mut B, meter: &mut MeterCtx, done: &mut HashSet<String>, rounds_done: &mut RoundsDone, progress: &mut dyn Progress, tally: &mut Tally) -> Result<()> {
        let (ctx, plan) = (self.ctx, self.ctx.plan);
        let layers = backend.num_layers();
        let info = RuntimeInfo { compute: self.compute.clone(), ..backend.runtime_info() };
        let eos = self.model.config.eos_ids();
        let finish = |mut rec: CellRecord| {
            rec.compute_dtype = Some(info.compute_dtype.clone());
            if ctx.group.backend == crate::backend::BackendKind::Ort {
                rec.hardware.onnxruntime_version = Some(info.version.clone());
                rec.hardware.onnxruntime_library = info.library.clone();
            }
            rec.runtime = Some(info.clone());
            rec
        };
        let mut running: Vec<Running> = Vec::new();
        for cell in &self.cells {
            let key = ctx.key(cell, self.weights_hash);
            if done.contains(&key.id()) {
                tally.skipped += 1;
                (0..self.per_cell).for_each(|_| progress.tick());
                if cell.mode == ExitMode::Full && cell.time_split {
                    running.push(Running { cell: *cell, key, partner_only: true, warmup_s: 0.0, failed: false });
                }
                continue;
            }
            let classifier_stop = cell.speculation.is_some_and(|s| s.stop.is_some_and(|st| st.measure == Measure::Classifier));
            if (classifier_stop || matches!(cell.mode, ExitMode::Dynamic(p) if p.measure == Measure::Classifier)) && !backend.has_classifier() {
                (0..self.per_cell).for_each(|_| progress.tick());
                done.insert(key.id());
                tally.write(&self.files.results, finish(ctx.base_record(key, layers, CellStatus::Unsupported, Some(Error::no_classifiers().to_string()))))?;
                continue;
            }
            running.push(Running { cell: *cell, key, partner_only: false, warmup_s: 0.0, failed: false });
        }
        if running.iter().all(|r| r.partner_only) {
            return Ok(());
        }
        // Warm-up, then the prefill-only energy windows (one per prefill depth).
        for r in running.iter_mut() {
            progress.cell(&format!("{} (warm-up)", r.key.label()));
            match warm_up(backend, plan, &r.cell, self.prompts, &eos, || progress.tick()) {
                Ok(s) => r.warmup_s = s,
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                Err(e) => self.fail(r, &e, layers, &finish, done, progress, tally)?,
            }
        }
        let mut prefill: HashMap<usize, f64> = HashMap::new();
        if !meter.window.meters().is_empty() {
            let min_window = if meter.window.needs_min_window() { plan.energy.min_window } else { 0.0 };
            for r in running.iter().filter(|r| !r.failed) {
                let depth = r.cell.mode.depth(layers);
                if let std::collections::hash_map::Entry::Vacant(v) = prefill.entry(depth) {
                    progress.cell(&format!("prefill energy at depth {depth}"));
                    let mode = if depth == layers { ExitMode::Full } else { ExitMode::Static { layer: depth } };
                    match super::energy::prefill_j_per_query(backend, self.prompts, mode, &eos, meter.window, min_window) {
                        Ok(j) => {
                            v.insert(j);
                        }
                        Err(Error::Interrupted) => return Err(Error::Interrupted),
                        Err(e) => progress.warn(&format!("the prefill-only energy window at depth {depth} failed ({e}); prefill joules are split by time share")),
                    }
                }
            }
        }
        let block = plan.round_samples.unwrap_or(if meter.window.needs_min_window() { plan.examples.len() } else { rounds::DEFAULT_ROUND_SAMPLES });
        // A round's samples form whole batches of every batch size (its rows in dataset order).
        let block = rounds::whole_batches(block, self.cells.iter().map(CellMode::batch_size));
        let list = rounds::rounds(self.prompts.len(), block, plan.repetitions);
        let valid = |rec: &RoundRecord, round: &rounds::Round| rec.repetition == round.repetition && rec.samples.iter().map(|s| s.sample).eq(round.samples.clone());
        let have = |rounds_done: &RoundsDone, r: &Running, round: &rounds::Round| rounds_done.get(&(r.key.id(), round.index)).is_some_and(|rec| valid(rec, round));
        // Interleaved: a round is redone whole from the first one some cell lacks, so that every
        // cell's figures of a round come from the same stretch of time.
        let first_unfinished = list.iter().position(|round| running.iter().any(|r| !have(rounds_done, r, round))).unwrap_or(list.len());
        let seed = plan.seed ^ fnv1a(ctx.group.key().as_bytes());
        let steps = rounds::steps(list.len(), running.len(), seed, plan.order);
        let group = format!("{} {} {} {} {}t", ctx.group.model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), ctx.group.backend.name(), ctx.group.device.name(), ctx.group.dtype.name(), ctx.group.threads);
        for (i, &(ri, ci)) in steps.iter().enumerate() {
            let round = &list[ri];
            // The line a log prints when this step ends a round (or a cell, in sequential order).
            let ends = match plan.order {
                RoundOrder::Interleaved => steps.get(i + 1).is_none_or(|n| n.0 != ri),
                RoundOrder::Sequential => steps.get(i + 1).is_none_or(|n| n.1 != ci),
            };
            let done_msg = ends.then(|| match plan.order {
                RoundOrder::Interleaved => format!("{group}: round {}/{} done", ri + 1, list.len()),
                RoundOrder::Sequential => format!("{group}: {} done", running[ci].key.label()),
            });
            let r = &running[ci];
            if r.failed {
                if let Some(m) = &done_msg {
                    progress.round_done(m);
                }
                continue;
            }
            let skip = match plan.order {
                RoundOrder::Interleaved => ri < first_unfinished,
                RoundOrder::Sequential => have(rounds_done, r, round),
            };
            if skip {
                (0..round.samples.len()).for_each(|_| progress.tick());
                if let Some(m) = &done_msg {
                    progress.round_done(&format!("{m} (kept from before)"));
                }
                continue;
            }
            crate::interrupt::check()?;
            progress.cell(&format!("{} (round {}/{})", r.key.label(), ri + 1, list.len()));
            match run_round(backend, plan, &r.cell, &r.key.id(), round, self.prompts, &eos, ctx.group.device, meter, || progress.tick()) {
                Ok(rec) => {
                    store::append(&self.files.rounds, &rec)?;
                    rounds_done.insert((rec.cell_id.clone(), rec.round), rec);
                }
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                Err(e) => {
                    let r = &mut running[ci];
                    self.fail(r, &e, layers, &finish, done, progress, tally)?;
                }
            }
            if let Some(m) = &done_msg {
                progress.round_done(m);
            }
            if plan.cooldown_s > 0.0 {
                std::thread::sleep(std::time::Duration::from_secs_f64(plan.cooldown_s));
            }
        }
        // Each cell's partner: full depth at the same batch size.
        let full_id = |size: usize| running.iter().find(|r| r.cell.mode == ExitMode::Full && r.cell.time_split && r.cell.speculation.is_none() && r.cell.batch_size() == size && !r.failed).map(|r| r.key.id());
        let of = |id: &str| -> Vec<&RoundRecord> { list.iter().filter_map(|round| rounds_done.get(&(id.to_string(), round.index))).collect() };
        let mut records = Vec::new();
        for r in running.iter().filter(|r| !r.partner_only && !r.failed) {
            let profile = match ctx.group.device {
                DeviceKind::Cpu => None,
                // Per-layer times on a GPU come from an untimed pass that synchronizes after every layer.
                _ => Some(profile_pass(backend, plan, &r.cell, self.prompts, list[0].samples.clone(), &eos)?),
            };
            let full_id = full_id(r.cell.batch_size());
            let is_full = Some(r.key.id()) == full_id;
            let c = CellRounds {
                cell: r.cell,
                key: r.key.clone(),
                rounds: of(&r.key.id()),
                full: full_id.as_deref().filter(|_| !is_full).map(of),
                // The prefill-only windows run one prompt at a time: a batched cell's prefill
                // joules are split by time share instead.
                prefill_j_per_query: if r.cell.batch.is_some() { None } else { prefill.get(&r.cell.mode.depth(layers)).copied() },
                profile,
                warmup_s: r.warmup_s,
                round_samples: block.min(self.prompts.len()),
            };
            let (rec, warnings) = assemble(ctx, self.model, layers, c)?;
            for w in warnings {
                progress.warn(&format!("{}: {w}", rec.key.label()));
            }
            records.push(finish(rec));
        }
        for rec in records {
            done.insert(rec.cell_id.clone());
            tally.write(&self.files.results, rec)?;
        }
        Ok(())
    }

    /// Writes the `error` record of a cell that failed and takes it out of the rounds.
    #[allow(clippy::too_many_arguments)]
    fn fail(&self, r: &mut Running, e: &Error, layers: usize, finish: &dyn Fn(CellRecord) -> CellRecord, done: &mut HashSet<String>, progress: &mut dyn Progress, tally: &mut Tally) -> Result<()> {
        r.failed = true;
        if r.partner_only {
            return Ok(());
        }
        progress.warn(&format!("{}: failed: {e}", r.key.label()));
        done.insert(r.key.id());
        tally.write(&self.files.results, finish(self.ctx.base_record(r.key.clone(), layers, CellStatus::Error, Some(e.report()))))
    }
}

/// Warns when other processes use the GPU: their work would pollute the energy reading.
fn warn_if_gpu_shared(ordinal: usize, progress: &mut dyn Progress) {
    let Ok(nvml) = crate::meter::nvml::load() else { return };
    let Ok(index) = crate::meter::nvml::index_of_cuda_ordinal(&nvml, ordinal) else { return };
    let Ok(dev) = nvml.device_by_index(index) else { return };
    let others = crate::meter::nvml::other_processes(&dev, index);
    if !others.is_empty() {
        progress.warn(&format!("GPU {index} is also used by {}: its energy figures include their work", others.join(", ")));
    }
}

/// The plan's prompts as token ids of `m`; an error names the first prompt beyond the model's
/// positions.
pub(crate) fn encode_prompts(plan: &Plan, m: &ModelFiles) -> Result<Vec<Vec<u32>>> {
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

/// FNV-1a of `bytes` (a stable seed per group).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
