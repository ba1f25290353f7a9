//! `cargo xtask soak` runs this (as root): flagtrace's commands on large tables and captures;
//! see flagtrace_tests::soak and BENCHMARKS.md.
//!
//! Options: `--flows N[,N...]` (table sizes), `--runs N`, `--reference PATH` (an older
//! flagtrace to compare with), `--no-tshark`, `--bulk-bytes N` (the bulk capture's size; 0:
//! none). The binary to measure is $FLAGTRACE_BIN.
//! `cargo bench` adds `--bench`, which is ignored.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context as _};
use flagtrace_tests::soak::{self, Options};

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
    let flagtrace = std::env::var_os("FLAGTRACE_BIN")
        .map(PathBuf::from)
        .context("FLAGTRACE_BIN names the flagtrace binary to measure")?;
    let mut options = parse_args(std::env::args().skip(1))?;
    options.ft_lab = Some(env!("CARGO_BIN_EXE_ft-lab").into());
    eprintln!(
        "soak: {:?} flows, median of {} runs per command",
        options.flows, options.runs
    );
    let rows = soak::run(&flagtrace, &options)?;
    print!("{}", soak::table(&rows));
    Ok(())
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let mut options = Options::default();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--flows" => {
                options.flows = value("--flows")?
                    .split(',')
                    .map(|n| n.parse().context("--flows takes numbers"))
                    .collect::<anyhow::Result<_>>()?
            }
            "--runs" => options.runs = value("--runs")?.parse().context("--runs takes a number")?,
            "--reference" => options.reference = Some(value("--reference")?.into()),
            "--no-tshark" => options.tshark = false,
            "--bulk-bytes" => {
                options.bulk_bytes = value("--bulk-bytes")?
                    .parse()
                    .context("--bulk-bytes takes a number")?
            }
            "--bench" => {}
            other => bail!("unknown option {other}"),
        }
    }
    if options.runs == 0 {
        bail!("--runs must be at least 1");
    }
    Ok(options)
}
