//! Command-line interface: raw flags (clap) are turned into validated settings before any model
//! is loaded; each subcommand lives in its own file.

pub mod ab;
pub mod calibrate;
pub mod check;
pub mod data;
pub mod export_onnx;
pub mod generate;
pub mod info;
pub mod merge;
pub mod random_model;
pub mod meter;
pub mod report;
pub mod run;
pub mod rouge;
pub mod train;

use crate::error::Result;
use clap::{Parser, Subcommand};

/// exitbench: what early exit buys a transformer decoder (speed, energy per token, quality).
#[derive(Debug, Parser)]
#[command(name = "exitbench", version, about, long_about = None)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate from one prompt, printing the text and each token's exit layer.
    Generate(generate::GenerateArgs),
    /// Score prediction/reference pairs with ROUGE (identical to rouge-score).
    Rouge(rouge::RougeArgs),
    /// Datasets: write the built-in synthetic task as JSONL.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Sweep the grid of settings over a dataset and write the trade-off reports.
    Run(Box<run::RunArgs>),
    /// Choose thresholds on validation (D ≤ --max-d), report them on test, write the model card.
    Calibrate(calibrate::CalibrateArgs),
    /// CI gate: compare a current sweep with a baseline (exit 1 on regression).
    Check(check::CheckArgs),
    /// A/B in one job: two binaries or two models, alternating over N pairs (exit 1 on regression).
    Ab(ab::AbArgs),
    /// Merge results from several runs or machines into one directory, with reports.
    Merge(merge::MergeArgs),
    /// Write reports from results directories or files.
    Report(report::ReportArgs),
    /// Train the embedded early-exit model, or exit classifiers for any model.
    Train(train::TrainArgs),
    /// Every energy meter (available or not, and why) and the hardware fingerprint.
    Info(info::InfoArgs),
    /// Energy of a command (or of S seconds), per meter, like `perf stat` for joules.
    Meter(meter::MeterArgs),
    /// Write the model's ONNX graphs (for the `ort` backend) with a manifest.
    ExportOnnx(export_onnx::ExportArgs),
    /// Write the random-weight model of a config as real files (safetensors, byte tokenizer).
    RandomModel(random_model::RandomModelArgs),
}

/// The command line definition, with `run`'s defaults (from [`crate::sweep::RawSettings::defaults`],
/// their one home) appended to each flag's help.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let defaults = crate::sweep::RawSettings::help_defaults();
    Cli::command().mut_subcommand("run", |mut c| {
        for (id, value) in defaults {
            if c.get_arguments().any(|a| a.get_id() == id.as_str()) {
                c = c.mut_arg(id.as_str(), |a| {
                    let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                    let shown = if value.is_empty() { "none".to_string() } else { value.clone() };
                    a.help(format!("{help} [default: {shown}]"))
                });
            }
        }
        c
    })
}

/// Parses the process's arguments with [`command`] (clap errors exit with code 2).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Runs a parsed command line; returns the process exit code for a completed command (1 when
/// `check` finds a regression, the command's own code for `meter -- COMMAND`, else 0).
pub fn run(cli: Cli) -> Result<i32> {
    let done = |r: Result<()>| r.map(|()| 0);
    let onnx_cache = match &cli.command {
        Command::Generate(a) => a.model.onnx_cache.as_deref(),
        Command::Calibrate(a) => a.model.onnx_cache.as_deref(),
        Command::Run(a) => a.onnx_cache.as_deref(),
        Command::ExportOnnx(a) => a.onnx_cache.as_deref(),
        _ => None,
    };
    if let Some(dir) = onnx_cache {
        crate::backend::ort::export::set_cache_root(dir);
    }
    match cli.command {
        Command::Generate(a) => done(generate::run(a)),
        Command::Rouge(a) => done(rouge::run(a)),
        Command::Data(c) => done(data::run(c)),
        Command::Train(a) => done(train::run(a)),
        Command::Run(a) => run::run(*a),
        Command::Report(a) => done(report::run(a)),
        Command::Merge(a) => done(merge::run(a)),
        Command::Calibrate(a) => done(calibrate::run(a)),
        Command::Check(a) => check::run(a).map(|passed| if passed { 0 } else { 1 }),
        Command::Ab(a) => ab::run(a),
        Command::Info(a) => done(info::run(a)),
        Command::Meter(a) => meter::run(a),
        Command::ExportOnnx(a) => done(export_onnx::run(a)),
        Command::RandomModel(a) => done(random_model::run(a)),
    }
}
