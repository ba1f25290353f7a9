//! `cargo xtask soak`: sets up and builds like `cargo xtask build`, then runs the soak
//! (tests/benches/soak.rs) as root: flagtrace's commands on large pinned tables and captures.
//! It prints a table; BENCHMARKS.md says what the figures mean.

use std::{ffi::OsString, path::Path};

use anyhow::{bail, Context as _, Result};

use crate::{build, cargo, system};

/// `args` go to the soak, e.g. `--flows 250000 --runs 3`.
pub fn soak(root: &Path, args: &[OsString]) -> Result<()> {
    if !system::is_root()? {
        bail!("cargo xtask soak must run as root: it loads BPF programs and pins their maps");
    }
    let flagtrace = build(root)?;
    cargo(&["bench", "-p", "flagtrace-tests", "--bench", "soak", "--"])
        .args(args)
        .env("FLAGTRACE_BIN", &flagtrace)
        .run(root)
        .context("step `soak` failed")
}
