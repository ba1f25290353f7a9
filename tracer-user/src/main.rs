use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;
use tracer_user::{cli::Cli, error};

/// Prints the library's diagnostics (the `log` crate's records) on stderr, as `flagtrace: ...`
/// lines, so that they read like the errors below. Info and above: notes, warnings, errors.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            // A closed stderr leaves nobody to tell.
            let _ = writeln!(std::io::stderr().lock(), "flagtrace: {}", record.args());
        }
    }

    fn flush(&self) {}
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    match tracer_user::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `flagtrace flows | head`: whoever read the output has all they wanted.
        Err(err) if error::is_closed_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed stderr leaves nobody to tell, and must not turn into a panic.
            let _ = writeln!(std::io::stderr(), "flagtrace: {err:#}");
            ExitCode::from(error::exit_code(&err))
        }
    }
}
