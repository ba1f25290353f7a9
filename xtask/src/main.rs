//! `cargo xtask`: sets up the toolchain, builds, runs and tests flagtrace. The README's commands
//! (`cargo xtask demo`, `cargo xtask test`) are all a fresh Debian machine needs.

mod bench;
mod command;
mod demo;
mod setup;
mod soak;
mod system;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

use command::Cmd;

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
#[command(about = "Set up, build, run and test flagtrace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build, then show who reset a connection: in network namespaces, a gateway with an F5 MAC
    /// resets connections to port 443 in the server's name, and flagtrace tells (as root).
    Demo,
    /// Check the Rust toolchains, bpf-linker and the Debian packages; install what is missing.
    Setup,
    /// Set up, then build target/release/flagtrace with the eBPF object embedded.
    Build,
    /// Build, then run target/release/flagtrace with ARGS, e.g. `cargo xtask run -- attach eth0`.
    Run {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Set up and build, then measure the kernel programs' cost per packet against reference
    /// programs (as root); prints a table and writes target/bench/report.json.
    Bench {
        /// Passed to the benchmark, e.g. `cargo xtask bench -- --rounds 9`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Set up and build, then run flagtrace's commands on large pinned tables and captures (as
    /// root); prints a table of medians.
    Soak {
        /// Passed to the soak, e.g. `cargo xtask soak -- --flows 250000 --runs 3`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Set up and build, then run the unit tests and the integration tests (as root: they load
    /// BPF programs and create network namespaces).
    Test {
        /// Passed to the integration tests, e.g. a test name filter: `cargo xtask test -- veth`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_task(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<()> {
    // `cargo install` puts bpf-linker in ~/.cargo/bin, which a CI shell's PATH may lack; rustc
    // (through aya-build) must find it there. Set before any thread or child exists.
    if let Some(bin) = system::cargo_bin_dir() {
        if let Some(path) = system::path_with_dir_first(std::env::var_os("PATH").as_ref(), &bin) {
            std::env::set_var("PATH", path);
        }
    }
    let root = workspace_root();
    match task {
        Task::Demo => demo::demo(&root),
        Task::Setup => setup::setup(&root),
        Task::Build => {
            let flagtrace = build(&root)?;
            println!("{}", flagtrace.display());
            Ok(())
        }
        Task::Run { args } => {
            let flagtrace = build(&root)?;
            Err(Cmd::new(&flagtrace.to_string_lossy()).args(args).exec())
        }
        Task::Test { args } => test(&root, &args),
        Task::Bench { args } => bench::bench(&root, &args),
        Task::Soak { args } => soak::soak(&root, &args),
    }
}

/// The workspace root, which every cargo command runs in.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// Cargo's target directory: CARGO_TARGET_DIR when set (relative to the root, where cargo runs).
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir))
}

/// Sets up, builds the release binary (its build script builds the eBPF object through
/// aya-build and the binary embeds it), and returns the binary's path.
fn build(root: &Path) -> Result<PathBuf> {
    setup::setup(root)?;
    build_release(root)
}

fn build_release(root: &Path) -> Result<PathBuf> {
    cargo(&["build", "--release", "-p", "tracer-user"])
        .run(root)
        .context("building flagtrace")?;
    let flagtrace = target_dir(root).join("release/flagtrace");
    if !flagtrace.is_file() {
        bail!("the build succeeded but left no {}", flagtrace.display());
    }
    eprintln!("built {}", flagtrace.display());
    Ok(flagtrace)
}

/// Everything builds and tests with --release: tracer-user's build script compiles the eBPF
/// object once per profile, so one profile throughout compiles it once.
fn test(root: &Path, integration_args: &[OsString]) -> Result<()> {
    setup::setup(root)?;
    if !system::is_root()? {
        bail!(
            "cargo xtask test must run as root: the tests load BPF programs, attach them to \
             interfaces and create network namespaces"
        );
    }
    if !system::bpffs_mounted()? {
        Cmd::new("mount")
            .args(["-t", "bpf", "bpf", system::BPFFS_MOUNT_POINT])
            .run(root)
            .context("mounting bpffs, where the tests pin maps")?;
    }
    let flagtrace = build_release(root).context("step `build` failed")?;

    cargo(&[
        "test",
        "--release",
        "-p",
        "tracer-common",
        "-p",
        "tracer-user",
        "-p",
        "xtask",
        "--",
        // The unit tests that need root (a network namespace) are ignored by a plain
        // `cargo test`; as root, run them too.
        "--include-ignored",
    ])
    .run(root)
    .context("step `host unit tests` failed")?;
    // The kernel crate's library (its packet parser) also runs on the host; its binary does not.
    cargo(&["test", "--release", "-p", "tracer-ebpf", "--lib"])
        .run(root)
        .context("step `parser unit tests` failed")?;

    // One test at a time: the integration tests share bpffs and the interfaces' hooks. `--tests`
    // leaves out the doc tests, so the run closes on the integration tests' own summary.
    cargo(&[
        "test",
        "--release",
        "-p",
        "flagtrace-tests",
        "--features",
        "root-tests",
        "--tests",
        "--",
        "--test-threads=1",
    ])
    .args(integration_args)
    .env("FLAGTRACE_BIN", &flagtrace)
    .run(root)
    .context("step `integration tests` failed")?;

    eprintln!("all tests passed");
    Ok(())
}

fn cargo(args: &[&str]) -> Cmd {
    Cmd::new("cargo").args(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_passes_every_argument_after_the_separator() {
        let cli = Cli::try_parse_from(["xtask", "run", "--", "--netns", "ns1", "flows", "--json"])
            .unwrap();
        let Task::Run { args } = cli.task else {
            panic!("not run")
        };
        assert_eq!(args, ["--netns", "ns1", "flows", "--json"]);
    }

    #[test]
    fn test_passes_the_filter_to_the_integration_tests() {
        let cli = Cli::try_parse_from(["xtask", "test", "--", "veth"]).unwrap();
        let Task::Test { args } = cli.task else {
            panic!("not test")
        };
        assert_eq!(args, ["veth"]);
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }
}
