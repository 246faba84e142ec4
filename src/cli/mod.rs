//! Command-line interface: raw flags (clap) are turned into validated settings before any model
//! is loaded; each subcommand lives in its own file.

pub mod data;
pub mod generate;
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
    /// Write reports from results directories or files.
    Report(report::ReportArgs),
    /// Train the embedded early-exit model, or exit classifiers for any model.
    Train(train::TrainArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Rouge(a) => rouge::run(a),
        Command::Data(c) => data::run(c),
        Command::Train(a) => train::run(a),
        Command::Run(a) => run::run(*a),
        Command::Report(a) => report::run(a),
    }
}
