//! The exitbench binary: parse, run, map errors to exit codes (2 for bad input, 130 when
//! interrupted, 1 otherwise).

fn main() {
    let cli = exitbench::cli::parse();
    match exitbench::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let code = e.exit_code();
            let err = anyhow::Error::new(e);
            eprintln!("Error: {err:#}");
            std::process::exit(code);
        }
    }
}
