//! Validation: from layered settings to a [`Plan`], checked before any model is loaded (datasets
//! loaded, weight files checked from their headers, every prompt encoded for every model).

use super::dedup::{dedup_by_key, dedup_keep_order};
use super::thresholds::parse_thresholds;
use super::{local_timestamp, EnergyArgs, EnergySettings, Plan, PlannedModel, RawSettings, MAX_BATCH_SIZE, MAX_SAMPLES};
use crate::data::DatasetSpec;
use crate::error::{Error, Result};
use crate::exit::{policy, Schedule};
use crate::model::Precision;
use std::path::{Path, PathBuf};

fn energy_settings(e: &EnergyArgs) -> Result<EnergySettings> {
    let nonneg = |v: Option<f64>, f: &str| -> Result<f64> {
        let v = need(v, f)?;
        if v.is_finite() && v >= 0.0 { Ok(v) } else { Err(Error::setting(f, format!("{v} must be a number ≥ 0"))) }
    };
    let meters = e.meter.options()?;
    Ok(EnergySettings {
        meters,
        idle_seconds: nonneg(e.idle_seconds, "--idle-seconds")?,
        min_window: nonneg(e.min_window, "--min-window")?,
        carbon: crate::meter::carbon::resolve(e.carbon_intensity.as_deref())?,
        pue: crate::meter::carbon::check_pue(need(e.pue, "--pue")?)?,
    })
}

/// A setting that [`RawSettings::defaults`] always fills (missing only if a caller bypassed it).
fn need<T>(v: Option<T>, flag: &str) -> Result<T> {
    v.ok_or_else(|| Error::setting(flag, "missing (no default)"))
}

/// A non-empty list.
fn nonempty<T: Clone>(v: &Option<Vec<T>>, flag: &str) -> Result<Vec<T>> {
    match v {
        Some(v) if !v.is_empty() => Ok(v.clone()),
        _ => Err(Error::setting(flag, "the list is empty")),
    }
}

fn list<T>(field: &str, v: &[String], parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    if v.is_empty() {
        return Err(Error::setting(field, "the list is empty"));
    }
    v.iter().map(|s| parse(s.trim())).collect()
}

impl Plan {
    /// Validates resolved settings (defaults ← file ← flags).
    pub fn from_settings(s: RawSettings) -> Result<Plan> {
        // Whatever the caller layered, the defaults fill the rest: each lives in one place.
        s.check_finite()?;
        let s = RawSettings::defaults().overridden_by(s);
        let backends = nonempty(&s.backend, "--backend")?;
        let devices = nonempty(&s.device, "--device")?;
        let dtypes = nonempty(&s.dtype, "--dtype")?;
        let measures = s.measure.clone().unwrap_or_default();
        let thresholds = parse_thresholds(s.thresholds.as_deref().unwrap_or(&[]))?;
        let tau = need(s.tau, "--tau")?;
        let schedules = list("--schedule", &nonempty(&s.schedule, "--schedule")?, |x| Schedule::parse(x, tau))?;
        let min_exit_layers = nonempty(&s.min_exit_layer, "--min-exit-layer")?;
        let exit_intervals = nonempty(&s.exit_interval, "--exit-interval")?;
        exit_intervals.iter().try_for_each(|&k| policy::check_exit_interval(k))?;
        if !measures.is_empty() && thresholds.is_empty() {
            return Err(Error::setting("--thresholds", "measures are given but no thresholds: the grid is empty"));
        }
        if let Some(t) = &s.threads {
            if t.is_empty() || t.contains(&0) {
                return Err(Error::setting("--threads", "must be a non-empty list of positive numbers"));
            }
            t.iter().try_for_each(|&n| crate::backend::check_threads(n, "--threads"))?;
        }
        let out = match s.out.as_deref() {
            Some(o) if o.trim().is_empty() => return Err(Error::setting("--out", "is empty: name the results directory")),
            Some(o) if Path::new(o).exists() && !Path::new(o).is_dir() => {
                return Err(Error::setting("--out", format!("{o} is a file; --out names a results directory")))
            }
            Some(o) => PathBuf::from(o),
            None => PathBuf::from(format!("results/run-{}", local_timestamp())),
        };
        let static_exits = s.static_exit.clone().unwrap_or_default();
        let speculations = speculations(&s)?;
        let batch_sizes = dedup_keep_order(s.batch_size.clone().unwrap_or_else(|| vec![1]));
        if batch_sizes.is_empty() {
            return Err(Error::setting("--batch-size", "the list is empty"));
        }
        if let Some(&b) = batch_sizes.iter().find(|&&b| b == 0 || b > MAX_BATCH_SIZE) {
            return Err(Error::setting("--batch-size", format!("{b} is outside 1..={MAX_BATCH_SIZE}")));
        }
        let batch_settings = batch_settings(s.batch_settings.as_deref())?;
        let batch_policies = dedup_keep_order(s.batch_policy.clone().unwrap_or_else(|| crate::decode::batch::BatchPolicy::ALL.to_vec()));
        if batch_policies.is_empty() {
            return Err(Error::setting("--batch-policy", "the list is empty"));
        }
        let oracle = need(s.oracle, "--oracle")?;
        let smallest = dtypes.iter().copied().min_by_key(|p| p.dtype().size_in_bytes()).unwrap_or(Precision::F32);
        let models = list("--model", &nonempty(&s.model, "--model")?, |m| plan_model(Path::new(m), s.random_weights, smallest))?;
        for m in &models {
            let l = m.config.num_hidden_layers;
            for &k in &min_exit_layers {
                policy::check_exit_layer("--min-exit-layer", k, l, Some(&m.dir))?;
            }
            for &k in &static_exits {
                policy::check_exit_layer("--static-exit", k, l, Some(&m.dir))?;
            }
            for sp in &speculations {
                // Whether a classifier draft stop finds classifiers is the runner's to say (an
                // `unsupported` cell, as for the classifier measure).
                sp.validate(l, true).map_err(|e| Error::setting("--draft-layer", format!("{e} (model {})", m.dir.display())))?;
            }
        }
        let dataset = DatasetSpec::parse(&need(s.dataset.clone(), "--dataset")?)?;
        let samples = need(s.samples, "--samples")?;
        if samples == 0 || samples > MAX_SAMPLES {
            return Err(Error::setting("--samples", format!("{samples} is outside 1..={MAX_SAMPLES}")));
        }
        let examples = dataset.load(Some(samples))?;
        let mut warnings = Vec::new();
        // A batched setting outside the grid runs nowhere: say so rather than drop it silently
        // (only where some batch size is above 1: at batch size 1 alone nothing is batched).
        let batched = batch_sizes.iter().any(|&b| b > 1);
        for (m, t) in batch_settings.iter().flatten().filter(|_| batched) {
            if !measures.contains(m) || !thresholds.contains(t) {
                warnings.push(format!("--batch-settings {m}@{t}: not in the grid's measures × thresholds, so no cell runs it batched"));
            }
        }
        if examples.len() < samples {
            warnings.push(format!("--samples {samples}: {} has only {} examples; running {}", dataset.name(), examples.len(), examples.len()));
        }
        let exit_trace = s.exit_trace.as_ref().map(|dir| crate::sweep::exit_trace::ExitTrace::read(Path::new(dir))).transpose()?;
        let max_new_tokens = need(s.max_new_tokens, "--max-new-tokens")?;
        if max_new_tokens == 0 {
            return Err(Error::setting("--max-new-tokens", "must be at least 1"));
        }
        let energy = energy_settings(&s.energy)?;
        let repetitions = need(s.repetitions, "--repetitions")?;
        if repetitions == 0 {
            return Err(Error::setting("--repetitions", "must be at least 1"));
        }
        // Repeated values (`--threads 1,1`, `--device cuda,cuda:0`) would run one cell twice.
        let models = dedup_by_key(models, |m| m.dir.canonicalize().unwrap_or_else(|_| m.dir.clone()));
        let mut plan = Plan {
            models,
            backends: dedup_keep_order(backends),
            devices: dedup_keep_order(devices),
            dtypes: dedup_keep_order(dtypes),
            threads: s.threads.clone().map(dedup_keep_order),
            measures: dedup_keep_order(measures),
            thresholds,
            schedules: dedup_keep_order(schedules),
            min_exit_layers: dedup_keep_order(min_exit_layers),
            exit_intervals: dedup_keep_order(exit_intervals),
            static_exits: dedup_keep_order(static_exits),
            oracle,
            speculations,
            batch_sizes,
            batch_policies,
            batch_settings,
            exit_trace: None,
            dataset,
            examples,
            max_new_tokens,
            warmup: need(s.warmup, "--warmup")?,
            repetitions,
            round_samples: match s.round_samples {
                Some(0) => return Err(Error::setting("--round-samples", "must be at least 1")),
                other => other,
            },
            order: need(s.order, "--order")?,
            split_cost_row: s.split_cost_row,
            pin_cpus: s.pin_cpus.as_deref().map(crate::backend::threads::parse_cpu_list).transpose()?,
            seed: need(s.seed, "--seed")?,
            out,
            trace_samples: need(s.trace_samples, "--trace-samples")?,
            random_weights: s.random_weights,
            energy,
            cooldown_s: match need(s.energy.cooldown, "--cooldown")? {
                c if c.is_finite() && c >= 0.0 => c,
                c => return Err(Error::setting("--cooldown", format!("{c} must be a number ≥ 0"))),
            },
            warnings,
            resolved: s,
        };
        // A trace to replay must hold every early-exit setting of the grid for every sample.
        if let Some(t) = exit_trace {
            t.check_covers(&plan.policies(), plan.examples.len())?;
            plan.exit_trace = Some(t);
        }
        // Every prompt must fit every model before anything is written.
        for m in &plan.models {
            let files = crate::model::ModelFiles::open(&m.dir, plan.random_weights)?;
            crate::sweep::runner::encode_prompts(&plan, &files)?;
        }
        Ok(plan)
    }
}

/// A model directory's config, and (unless the weights are random) its weight files checked from
/// their headers: a damaged model is refused before anything is written.
fn plan_model(dir: &Path, random_weights: Option<u64>, precision: Precision) -> Result<PlannedModel> {
    // Config, tokenizer and weight file names, in the order `generate` checks them.
    let config = crate::model::ModelFiles::open(dir, random_weights)?.config;
    let cfg = dir.join("config.json");
    match random_weights {
        Some(_) => crate::model::check_random_fits(&config, &cfg, precision)?,
        None => {
            crate::model::weights::SafetensorFiles::check_headers(dir, &config)?;
            crate::model::weights::SafetensorFiles::check_classifier(dir, &config)?;
        }
    }
    Ok(PlannedModel { dir: dir.to_path_buf(), config })
}

/// `--batch-settings`: `all` (None), or measure@threshold pairs.
fn batch_settings(v: Option<&[String]>) -> Result<Option<Vec<(crate::exit::Measure, f64)>>> {
    let v = v.unwrap_or(&[]);
    if v.iter().any(|x| x.trim().eq_ignore_ascii_case("all")) {
        return Ok(None);
    }
    let mut out = Vec::new();
    for x in v {
        let bad = |why: &str| Error::setting("--batch-settings", format!("`{x}`: {why} (expected measure@threshold such as softmax-diff@0.9, or all)"));
        let (m, t) = x.trim().split_once('@').ok_or_else(|| bad("no @"))?;
        let measure = crate::exit::Measure::parse(m).map_err(|e| bad(&e.to_string()))?;
        let threshold: f64 = t.trim().parse().map_err(|_| bad("the threshold is not a number"))?;
        policy::check_threshold("--batch-settings", threshold)?;
        out.push((measure, threshold));
    }
    Ok(Some(out))
}

/// Every (draft layer, draft tokens, draft cache) combination the settings ask for; none without
/// `--draft-layer`. The layer is checked per model by the caller.
fn speculations(s: &RawSettings) -> Result<Vec<crate::decode::speculative::Speculation>> {
    use crate::decode::speculative::{DraftCache, DraftStop, Speculation, MAX_DRAFT_TOKENS};
    let Some(layers) = s.draft_layer.clone() else {
        let given = [("--draft-tokens", s.draft_tokens.is_some()), ("--draft-cache", s.draft_cache.is_some()), ("--draft-stop", s.draft_stop.is_some())];
        if let Some((flag, _)) = given.iter().find(|g| g.1) {
            return Err(Error::setting(*flag, "speculative cells need --draft-layer (the layers the draft runs)"));
        }
        return Ok(vec![]);
    };
    let tokens = s.draft_tokens.clone().unwrap_or_else(|| vec![4]);
    let caches = s.draft_cache.clone().unwrap_or_else(|| vec![DraftCache::Shared]);
    // `none` drafts k tokens every pass; each MEASURE@THRESHOLD stops early on low confidence.
    let stops: Vec<Option<DraftStop>> = match &s.draft_stop {
        None => vec![None],
        Some(v) if v.is_empty() => return Err(Error::setting("--draft-stop", "is empty")),
        Some(v) => {
            let mut out: Vec<Option<DraftStop>> = Vec::new();
            for x in v {
                let stop = if x.trim().eq_ignore_ascii_case("none") { None } else { Some(DraftStop::parse("--draft-stop", x)?) };
                if !out.contains(&stop) {
                    out.push(stop);
                }
            }
            out
        }
    };
    for (flag, empty) in [("--draft-layer", layers.is_empty()), ("--draft-tokens", tokens.is_empty()), ("--draft-cache", caches.is_empty())] {
        if empty {
            return Err(Error::setting(flag, "is empty"));
        }
    }
    if let Some(&k) = tokens.iter().find(|&&k| k == 0 || k > MAX_DRAFT_TOKENS) {
        return Err(Error::setting("--draft-tokens", format!("{k} is outside 1..={MAX_DRAFT_TOKENS}")));
    }
    let mut out = Vec::new();
    for &draft_layer in &dedup_keep_order(layers) {
        for &draft_tokens in &dedup_keep_order(tokens.clone()) {
            for &cache in &dedup_keep_order(caches.clone()) {
                for &stop in &stops {
                    out.push(Speculation { draft_layer, draft_tokens, cache, stop });
                }
            }
        }
    }
    Ok(out)
}
