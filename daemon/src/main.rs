//! `reconix`: the daemon and its CLI. Wiring only; the logic lives in the library crates.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

/// Exit code of a command-line usage error (sysexits' `EX_USAGE`). Not clap's default 2, which
/// `reconix webhook inspect` uses for a signature mismatch.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(err) => {
            // `--help` and `--version` also arrive here, on stdout and with success.
            let code = if err.use_stderr() { EX_USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    cli::logging::init(args.log_format, args.verbose);
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
