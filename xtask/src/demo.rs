//! `cargo xtask demo`: builds flagtrace and the lab tool `ft-lab`, then hands over to
//! `ft-lab demo`, which builds the seed story's lab in network namespaces, runs its traffic,
//! prints `flagtrace resets` and removes everything. The lab lives in one place,
//! tests/src/seed_story.rs, which the reset tests also check; xtask stays free of it.

use std::path::Path;

use anyhow::{bail, Context as _, Result};

use crate::{build, cargo, command::Cmd, system, target_dir};

pub fn demo(root: &Path) -> Result<()> {
    if !system::is_root()? {
        bail!(
            "cargo xtask demo must run as root: it creates network namespaces and loads BPF \
             programs"
        );
    }
    let flagtrace = build(root)?;
    cargo(&[
        "build",
        "--release",
        "-p",
        "flagtrace-tests",
        "--bin",
        "ft-lab",
    ])
    .run(root)
    .context("building the lab tool ft-lab")?;
    let ft_lab = target_dir(root).join("release/ft-lab");
    if !ft_lab.is_file() {
        bail!("the build succeeded but left no {}", ft_lab.display());
    }
    // Replacing this process: Ctrl-C then reaches ft-lab alone, which cleans up before it
    // exits, and its exit code is the demo's.
    Err(Cmd::new(&ft_lab.to_string_lossy())
        .args(["demo"])
        .env("FLAGTRACE_BIN", &flagtrace)
        .exec())
}
