//! `cargo xtask bench` runs this (as root): flagtrace's XDP program against the reference
//! programs, per packet; see flagtrace_tests::bench and BENCHMARKS.md.
//!
//! Options: `--report PATH` (write the JSON report there), `--repeat N`, `--rounds N`,
//! `--fill N`, `--admission-flows N`. `cargo bench` adds `--bench`, which is ignored.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context as _};
use flagtrace_tests::bench::{self, Options};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let (options, report_path) = parse_args(std::env::args().skip(1))?;
    eprintln!(
        "measuring: {} rounds of {} runs per case, tables of {} entries",
        options.rounds, options.repeat, options.fill
    );
    let report = bench::run(&options)?;
    print!("{}", report.table());
    if let Some(path) = report_path {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(&report.to_json())?;
        std::fs::write(&path, json + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nreport: {}", path.display());
    }
    Ok(())
}

fn parse_args(
    mut args: impl Iterator<Item = String>,
) -> anyhow::Result<(Options, Option<PathBuf>)> {
    let mut options = Options::default();
    let mut report = None;
    while let Some(arg) = args.next() {
        if arg == "--bench" {
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        let number = || {
            value
                .parse::<u32>()
                .with_context(|| format!("{arg} {value}: not a number"))
        };
        match arg.as_str() {
            "--report" => report = Some(PathBuf::from(&value)),
            "--repeat" => options.repeat = number()?,
            "--rounds" => options.rounds = number()? as usize,
            "--fill" => options.fill = number()?,
            "--admission-flows" => options.admission_flows = number()?,
            _ => bail!("unknown option {arg}"),
        }
    }
    Ok((options, report))
}
