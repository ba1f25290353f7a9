//! `cargo xtask bench`: sets up and builds like `cargo xtask build`, then runs the kernel
//! benchmark (tests/benches/kernel.rs) as root. It prints the table and writes
//! target/bench/report.json; BENCHMARKS.md says what the figures mean.

use std::{ffi::OsString, path::Path};

use anyhow::{bail, Context as _, Result};

use crate::{build, cargo, system, target_dir};

/// `args` go to the benchmark, e.g. `--rounds 9` or `--fill 100000`.
pub fn bench(root: &Path, args: &[OsString]) -> Result<()> {
    if !system::is_root()? {
        bail!("cargo xtask bench must run as root: it loads BPF programs");
    }
    build(root)?;
    let report = target_dir(root).join("bench/report.json");
    cargo(&["bench", "-p", "flagtrace-tests", "--bench", "kernel", "--"])
        .args([OsString::from("--report"), report.into_os_string()])
        .args(args)
        .run(root)
        .context("step `bench` failed")
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::{Cli, Task};

    #[test]
    fn bench_passes_every_argument_after_the_separator() {
        let cli = Cli::try_parse_from(["xtask", "bench", "--", "--rounds", "9"]).unwrap();
        let Task::Bench { args } = cli.task else {
            panic!("not bench")
        };
        assert_eq!(args, ["--rounds", "9"]);
    }
}
