use std::process::ExitCode;

use clap::Parser as _;
use tracer_user::{cli::Cli, error};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match tracer_user::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("flagtrace: {err:#}");
            ExitCode::from(error::exit_code(&err))
        }
    }
}
