//! The exitbench binary: parse, run, map errors to exit codes (2 for bad input, 1 otherwise).

use clap::Parser;

fn main() {
    let cli = exitbench::cli::Cli::parse();
    match exitbench::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let code = if e.is_bad_input() { 2 } else { 1 };
            let err = anyhow::Error::new(e);
            eprintln!("Error: {err:#}");
            std::process::exit(code);
        }
    }
}
