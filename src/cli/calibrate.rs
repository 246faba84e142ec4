//! `exitbench calibrate`: choose each measure's threshold on the validation split (cheapest with
//! D ≤ --max-d) and, with --draft-layer, the fastest self-speculative setting; report them on
//! the test split, and optionally write the model card.

use crate::calibrate::{self, CalibrateOptions};
use crate::error::{Error, Result};
use crate::model::{LoadOptions, LoadedModel, Precision};
use crate::sweep::runner::Quiet;
use crate::sweep::RawSettings;
use std::path::PathBuf;

/// Flags of `exitbench calibrate`.
#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    /// The model and the runtime the figures are measured on.
    #[command(flatten)]
    pub model: crate::cli::generate::ModelArgs,
    /// Measures.
    #[arg(long, visible_alias = "measures", value_delimiter = ',', value_enum, ignore_case = true, default_value = "softmax-diff,softmax-max,saturation,classifier")]
    pub measure: Vec<crate::exit::Measure>,
    /// Thresholds tried on validation.
    #[arg(long, value_delimiter = ',', default_value = "0.99,0.98,0.95,0.9,0.85,0.8,0.7,0.6,0.5,0.4,0.3")]
    pub thresholds: Vec<String>,
    /// Largest D(Y_early, Y_full) accepted on validation.
    #[arg(long, default_value_t = 0.05)]
    pub max_d: f64,
    /// Samples per split.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Maximum new tokens.
    #[arg(long, default_value_t = crate::sweep::plan::DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Measured repetitions per cell.
    #[arg(long, default_value_t = 1)]
    pub repetitions: usize,
    /// Choose thresholds with Learn-then-Test's guarantee on this risk (textual: D against full
    /// depth, no references needed; reference: the ROUGE-L lost against the references) instead
    /// of mean D ≤ --max-d.
    #[arg(long, value_enum, ignore_case = true)]
    pub risk: Option<calibrate::Risk>,
    /// Learn-then-Test's risk level δ (with --risk).
    #[arg(long, default_value_t = 0.05, requires = "risk")]
    pub delta: f64,
    /// Learn-then-Test's error level ε: the guarantee holds with probability ≥ 1 − ε (with --risk).
    #[arg(long, default_value_t = 0.05, requires = "risk")]
    pub epsilon: f64,
    /// Check the guarantee: run every threshold on test too, and over 100 random calibration/test
    /// splits of the pooled samples count how often the chosen threshold's test risk exceeds δ.
    #[arg(long, requires = "risk")]
    pub check_validity: bool,
    /// Self-speculative settings to choose from on validation: draft layers E (the fastest
    /// setting of every --draft-layer × --draft-tokens × --draft-cache × --draft-stop is
    /// reported on test; none unless given).
    #[arg(long, value_delimiter = ',')]
    pub draft_layer: Option<Vec<usize>>,
    /// Most tokens drafted per verification to choose from (with --draft-layer; default 4).
    #[arg(long, value_delimiter = ',')]
    pub draft_tokens: Option<Vec<usize>>,
    /// Draft cache modes to choose from (with --draft-layer; default shared).
    #[arg(long, value_delimiter = ',', value_enum, ignore_case = true)]
    pub draft_cache: Option<Vec<crate::decode::speculative::DraftCache>>,
    /// Draft stops to choose from, MEASURE@THRESHOLD or none (with --draft-layer; default none).
    #[arg(long, value_delimiter = ',')]
    pub draft_stop: Option<Vec<String>>,
    /// Calibrate for batched decoding: every cell (full depth and each measure's thresholds, on
    /// both splits) decodes in batches of this size, and each threshold is judged on its D and
    /// cost at this batch size.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// How the batch serves rows that want different exit layers (with --batch-size above 1;
    /// `batch-min` changes the outputs, so it changes which thresholds keep D under the bar).
    #[arg(long, value_enum, ignore_case = true, default_value = "per-row")]
    pub batch_policy: crate::decode::batch::BatchPolicy,
    /// Output directory.
    #[arg(long, default_value = "results/calibration")]
    pub out: PathBuf,
    /// Also write card.json and README.md into the model directory.
    #[arg(long)]
    pub write_card: bool,
    /// How energy is measured (the same flags as `run`).
    #[command(flatten)]
    pub energy: crate::sweep::plan::EnergyArgs,
}

/// Runs `exitbench calibrate`.
pub fn run(a: CalibrateArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.max_d) {
        return Err(Error::setting("--max-d", format!("{} is outside [0, 1]", a.max_d)));
    }
    for (flag, v) in [("--delta", a.delta), ("--epsilon", a.epsilon)] {
        if !(v > 0.0 && v < 1.0) {
            return Err(Error::setting(flag, format!("{v} is outside (0, 1)")));
        }
    }
    let m = &a.model;
    RawSettings { energy: a.energy.clone(), ..RawSettings::default() }.check_finite()?;
    if a.batch_size == 0 || a.batch_size > crate::sweep::plan::MAX_BATCH_SIZE {
        return Err(Error::setting("--batch-size", format!("{} is outside 1..={}", a.batch_size, crate::sweep::plan::MAX_BATCH_SIZE)));
    }
    let base = RawSettings::defaults().overridden_by(RawSettings {
        model: Some(vec![m.model.display().to_string()]),
        backend: Some(vec![m.backend]),
        device: Some(vec![m.device]),
        dtype: Some(vec![m.dtype]),
        threads: m.threads.map(|t| vec![t]),
        random_weights: m.random_weights,
        measure: Some(a.measure.clone()),
        thresholds: Some(a.thresholds.clone()),
        samples: Some(a.samples),
        max_new_tokens: Some(a.max_new_tokens),
        repetitions: Some(a.repetitions),
        energy: a.energy.clone(),
        // One batch size for every cell (the default grid's batch 8 is left out), every
        // measure@threshold batched under the one policy.
        batch_size: Some(vec![a.batch_size]),
        batch_policy: Some(vec![a.batch_policy]),
        batch_settings: Some(vec!["all".into()]),
        draft_layer: a.draft_layer.clone(),
        draft_tokens: a.draft_tokens.clone(),
        draft_cache: a.draft_cache.clone(),
        draft_stop: a.draft_stop.clone(),
        ..RawSettings::default()
    });
    let o = CalibrateOptions { base, max_d: a.max_d, validation: "synth:validation".into(), test: "synth:test".into(), out: a.out.clone(),
        ltt: a.risk.map(|risk| calibrate::LttOptions { risk, delta: a.delta, epsilon: a.epsilon, check_validity: a.check_validity, splits: 100 }),
    };
    let mut cal = calibrate::calibrate(&o, &mut Quiet)?;
    cal.command = std::iter::once("exitbench".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
    calibrate::write(&cal, &a.out)?;
    println!("{}", calibrate::markdown(&cal));
    if a.write_card {
        crate::backend::candle::set_cpu_threads(cal.threads);
        let m = LoadedModel::load(&a.model.model, &LoadOptions { precision: Precision::F32, device: candle_core::Device::Cpu, random_weights: None })?;
        let card = crate::card::build(&m, Some(&cal))?;
        crate::card::write(&card, &m.dir)?;
        eprintln!("wrote {}/card.json and README.md", m.dir.display());
    }
    Ok(())
}
