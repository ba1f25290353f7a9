//! `cargo xtask setup`: checks each requirement, installs what is missing, and says so one line
//! per step. Where it cannot install (not root, not Debian, a Rust toolchain), it prints the
//! commands to run and fails, so a fresh machine needs nothing but what the README says.

use std::path::Path;

use anyhow::{bail, Context as _, Result};

use crate::command::Cmd;
use crate::system;

/// The rustup toolchain that builds the kernel side (aya-build's default, `rustup run nightly`).
const NIGHTLY: &str = "nightly";

/// bpf-linker links the kernel object; 0.13 is the release built against LLVM 22, which is the
/// LLVM of the installed nightly.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// What `cargo install bpf-linker` links against (through llvm-sys).
const BPF_LINKER_BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];

/// What flagtrace and the tests run: `ip` (iproute2) makes namespaces and veth pairs, and
/// `flagtrace detach` uses it; bpftool lists hooks; ieee-data, nftables and tcpdump serve the
/// middlebox and capture tests of the issues that follow; prometheus brings the Prometheus
/// server and promtool for the metrics test, which starts a server of its own; tshark reads
/// back the pcap file of `flagtrace watch --pcap`; ethtool turns GRO off for the test that
/// compares a tcpdump capture with the live counts; openssl's s_client is the demo's client,
/// as in the seed story; conntrack shows what the firewall lab's gateway remembers.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "ieee-data",
    "nftables",
    "tcpdump",
    "prometheus",
    "tshark",
    "ethtool",
    "openssl",
    "conntrack",
];

/// Debian's switch for the service starts in maintainer scripts (invoke-rc.d and
/// deb-systemd-invoke ask it): while it exits 101, installed packages start no service. The
/// prometheus package would otherwise start a server listening on port 9090.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

struct Requirement {
    /// What is needed, as named in the `missing:` and `installing:` lines.
    what: &'static str,
    check: fn(&Path) -> Status,
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        what: "rustup toolchain nightly",
        check: check_nightly,
    },
    Requirement {
        what: "rust-src for nightly",
        check: check_rust_src,
    },
    Requirement {
        what: "bpf-linker 0.13",
        check: check_bpf_linker,
    },
    Requirement {
        what: "Debian packages for the tests",
        check: check_test_packages,
    },
];

enum Status {
    /// The `ok:` line, saying what was found.
    Ok(String),
    Missing {
        why: String,
        fix: Vec<Step>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Install Debian packages: needs root and apt-get; `apt-get update` runs once first.
    Apt(Vec<&'static str>),
    /// A command setup runs itself.
    Run(Cmd),
    /// A command setup leaves to a person: it prints it and fails.
    Manual(Cmd),
}

/// Checks every requirement and installs what is missing. Fails, with the commands to run, when
/// something cannot be installed from here.
pub fn setup(root: &Path) -> Result<()> {
    let mut missing = Vec::new();
    for requirement in REQUIREMENTS {
        match (requirement.check)(root) {
            Status::Ok(found) => eprintln!("ok: {found}"),
            Status::Missing { why, fix } => {
                eprintln!("missing: {} ({why})", requirement.what);
                missing.push((requirement, fix));
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }

    let abilities = Abilities {
        root: system::is_root()?,
        apt_get: system::find_on_path("apt-get", std::env::var_os("PATH").as_ref()).is_some(),
    };
    let mut blockers: Vec<&str> = Vec::new();
    for blocker in missing
        .iter()
        .flat_map(|(_, fix)| fix)
        .filter_map(|step| abilities.blocker(step))
    {
        if !blockers.contains(&blocker) {
            blockers.push(blocker);
        }
    }

    let mut apt = AptState::default();
    if !blockers.is_empty() {
        eprintln!(
            "setup cannot install this here ({}). Run these commands, then run it again:",
            blockers.join("; ")
        );
        for step in missing.iter().flat_map(|(_, fix)| fix) {
            for cmd in apt.commands(step) {
                let sudo = if cmd.needs_root && !abilities.root {
                    "sudo "
                } else {
                    ""
                };
                eprintln!("    {sudo}{cmd}");
            }
        }
        let names: Vec<&str> = missing.iter().map(|(r, _)| r.what).collect();
        bail!("setup incomplete, missing: {}", names.join(", "));
    }

    let installs_packages = missing
        .iter()
        .flat_map(|(_, fix)| fix)
        .any(|step| matches!(step, Step::Apt(_)));
    let _no_service_starts = installs_packages
        .then(ServiceStartsDenied::new)
        .transpose()?;
    for (requirement, fix) in missing {
        for cmd in fix.iter().flat_map(|step| apt.commands(step)) {
            eprintln!("installing: {} ({cmd})", requirement.what);
            cmd.run_unattended(root)
                .with_context(|| format!("installing {}", requirement.what))?;
        }
        match (requirement.check)(root) {
            Status::Ok(found) => eprintln!("ok: {found}"),
            Status::Missing { why, .. } => {
                bail!(
                    "{} is still missing after installing it: {why}",
                    requirement.what
                )
            }
        }
    }
    Ok(())
}

/// Keeps the packages setup installs from starting services, through [`POLICY_RC_D`], until
/// dropped. A policy the machine already has is left as it is.
struct ServiceStartsDenied {
    created: bool,
}

impl ServiceStartsDenied {
    fn new() -> Result<ServiceStartsDenied> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let created = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(POLICY_RC_D)
        {
            Ok(mut file) => {
                use std::io::Write as _;
                file.write_all(b"#!/bin/sh\n# cargo xtask setup: no service starts while it installs packages\nexit 101\n")
                    .with_context(|| format!("writing {POLICY_RC_D}"))?;
                eprintln!(
                    "setup: {POLICY_RC_D} keeps the packages it installs from starting services"
                );
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e).with_context(|| format!("creating {POLICY_RC_D}")),
        };
        Ok(ServiceStartsDenied { created })
    }
}

impl Drop for ServiceStartsDenied {
    fn drop(&mut self) {
        if self.created {
            if let Err(e) = std::fs::remove_file(POLICY_RC_D) {
                eprintln!("warning: removing {POLICY_RC_D}: {e}");
            }
        }
    }
}

struct Abilities {
    root: bool,
    apt_get: bool,
}

impl Abilities {
    /// Why setup cannot carry out `step` here, if it cannot.
    fn blocker(&self, step: &Step) -> Option<&'static str> {
        match step {
            Step::Manual(_) => Some("setup does not install Rust toolchains"),
            Step::Apt(_) if !self.apt_get => Some("apt-get not found: flagtrace supports Debian"),
            Step::Apt(_) if !self.root => Some("installing Debian packages needs root"),
            Step::Apt(_) | Step::Run(_) => None,
        }
    }
}

/// Turns steps into commands, with `apt-get update` before the first install of the run only.
#[derive(Default)]
struct AptState {
    updated: bool,
}

impl AptState {
    fn commands(&mut self, step: &Step) -> Vec<Cmd> {
        let apt_get = |args: &[&str]| {
            Cmd::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .root()
        };
        match step {
            Step::Apt(packages) => {
                let mut commands = Vec::new();
                if !self.updated {
                    commands.push(apt_get(&["update"]));
                    self.updated = true;
                }
                // Recommends are not needed, and some are servers (prometheus recommends
                // prometheus-node-exporter).
                commands
                    .push(apt_get(&["install", "-y", "--no-install-recommends"]).args(packages));
                commands
            }
            Step::Run(cmd) | Step::Manual(cmd) => vec![cmd.clone()],
        }
    }
}

fn check_nightly(root: &Path) -> Status {
    let install = Step::Manual(Cmd::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--component",
        "rust-src",
    ]));
    let missing = |why: String| Status::Missing {
        why,
        fix: vec![install.clone()],
    };
    match Cmd::new("rustup").args(["toolchain", "list"]).probe(root) {
        Ok(Some(list)) if has_toolchain(&list, NIGHTLY) => {}
        Ok(Some(_)) => return missing(format!("rustup has no `{NIGHTLY}` toolchain")),
        Ok(None) => return missing("rustup not found".to_owned()),
        Err(e) => return missing(format!("{e:#}")),
    }
    match Cmd::new("rustup")
        .args(["run", NIGHTLY, "rustc", "--version"])
        .probe(root)
    {
        Ok(Some(version)) => Status::Ok(format!("{NIGHTLY} toolchain, {}", version.trim())),
        Ok(None) => missing("rustup not found".to_owned()),
        Err(e) => missing(format!("{e:#}")),
    }
}

/// Whether `rustup toolchain list` shows `name` for the host: `nightly-x86_64-unknown-linux-gnu`
/// is `nightly`, a dated `nightly-2026-05-15-...` is not.
fn has_toolchain(list: &str, name: &str) -> bool {
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|toolchain| toolchain.strip_prefix(name))
        .any(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix('-')
                    .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
        })
}

fn check_rust_src(root: &Path) -> Status {
    let component = "rust-src";
    let list =
        Cmd::new("rustup").args(["component", "list", "--toolchain", NIGHTLY, "--installed"]);
    let why = match list.probe(root) {
        Ok(Some(installed)) if has_component(&installed, component) => {
            return Status::Ok(format!("{component} for {NIGHTLY}"));
        }
        Ok(Some(_)) => format!("not among the installed components of {NIGHTLY}"),
        Ok(None) => "rustup not found".to_owned(),
        Err(e) => format!("{e:#}"),
    };
    Status::Missing {
        why,
        fix: vec![Step::Run(Cmd::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            NIGHTLY,
        ]))],
    }
}

/// Whether `rustup component list --installed` names `component` (host-independent components
/// such as rust-src have no target suffix).
fn has_component(list: &str, component: &str) -> bool {
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|name| name == component)
}

fn check_bpf_linker(root: &Path) -> Status {
    let Some(path) = system::find_on_path("bpf-linker", std::env::var_os("PATH").as_ref()) else {
        return missing_bpf_linker(root, "not on PATH or in ~/.cargo/bin".to_owned());
    };
    let output = Cmd::new(&path.to_string_lossy())
        .args(["--version"])
        .probe(root);
    let why = match output {
        Ok(Some(output)) => match parse_bpf_linker_version(&output) {
            Some(version) if is_wanted_bpf_linker(version) => {
                let (major, minor, patch) = version;
                return Status::Ok(format!(
                    "bpf-linker {major}.{minor}.{patch} ({})",
                    path.display()
                ));
            }
            Some((major, minor, patch)) => format!(
                "{} is {major}.{minor}.{patch}, flagtrace needs 0.13 (LLVM 22)",
                path.display()
            ),
            None => format!("cannot read the version of {}: {output:?}", path.display()),
        },
        Ok(None) => format!("{} vanished", path.display()),
        Err(e) => format!("{e:#}"),
    };
    missing_bpf_linker(root, why)
}

fn missing_bpf_linker(root: &Path, why: String) -> Status {
    let mut fix = Vec::new();
    let build_packages = missing_packages(root, BPF_LINKER_BUILD_PACKAGES)
        .unwrap_or_else(|| BPF_LINKER_BUILD_PACKAGES.to_vec());
    if !build_packages.is_empty() {
        fix.push(Step::Apt(build_packages));
    }
    fix.push(Step::Run(bpf_linker_install()));
    Status::Missing { why, fix }
}

fn bpf_linker_install() -> Cmd {
    Cmd::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--locked", "--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", BPF_LINKER_LLVM_PREFIX)
}

/// (major, minor, patch) from `bpf-linker --version`, which prints `bpf-linker 0.13.0`.
fn parse_bpf_linker_version(output: &str) -> Option<(u64, u64, u64)> {
    let version = output
        .split_whitespace()
        .skip_while(|w| *w != "bpf-linker")
        .nth(1)?;
    let mut numbers = version.splitn(3, '.').map(|part| {
        let digits = part.split(|c: char| !c.is_ascii_digit()).next()?;
        digits.parse().ok()
    });
    Some((numbers.next()??, numbers.next()??, numbers.next()??))
}

fn is_wanted_bpf_linker((major, minor, _patch): (u64, u64, u64)) -> bool {
    (major, minor) == (0, 13)
}

fn check_test_packages(root: &Path) -> Status {
    match missing_packages(root, TEST_PACKAGES) {
        Some(missing) if missing.is_empty() => {
            Status::Ok(format!("Debian packages {}", TEST_PACKAGES.join(" ")))
        }
        Some(missing) => Status::Missing {
            why: format!("not installed: {}", missing.join(" ")),
            fix: vec![Step::Apt(missing)],
        },
        None => Status::Missing {
            why: "dpkg-query not found, cannot tell what is installed".to_owned(),
            fix: vec![Step::Apt(TEST_PACKAGES.to_vec())],
        },
    }
}

/// Which of `packages` dpkg does not have installed; `None` without dpkg-query (not Debian).
fn missing_packages(root: &Path, packages: &[&'static str]) -> Option<Vec<&'static str>> {
    // dpkg-query exits 1 when it knows nothing of a package, and still reports the others.
    let output = Cmd::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(packages)
        .probe_any_status(root)
        .ok()??;
    Some(not_installed(&output, packages))
}

/// The `packages` not shown as installed in dpkg-query lines `NAME WANT ERROR STATUS`, e.g.
/// `tcpdump install ok installed`; a removed package keeps a `config-files` status.
fn not_installed(dpkg_query_output: &str, packages: &[&'static str]) -> Vec<&'static str> {
    let installed: Vec<&str> = dpkg_query_output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [name, _want, _error, "installed"] => Some(*name),
                _ => None,
            }
        })
        .collect();
    packages
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_nightly_toolchain_for_the_host() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n\
                    1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_toolchain(list, "nightly"));
        assert!(has_toolchain("nightly\n", "nightly"));
    }

    #[test]
    fn dated_nightlies_and_other_toolchains_are_not_nightly() {
        let list = "stable-x86_64-unknown-linux-gnu (default)\n\
                    nightly-2026-05-15-x86_64-unknown-linux-gnu\n";
        assert!(!has_toolchain(list, "nightly"));
        assert!(!has_toolchain("no installed toolchains\n", "nightly"));
        assert!(!has_toolchain("", "nightly"));
    }

    #[test]
    fn finds_rust_src_among_installed_components() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        let without = "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(!has_component(without, "rust-src"));
    }

    #[test]
    fn parses_bpf_linker_versions() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.13.0\n"),
            Some((0, 13, 0))
        );
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.9.15"),
            Some((0, 9, 15))
        );
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.13.1-rc1\n"),
            Some((0, 13, 1))
        );
        assert_eq!(parse_bpf_linker_version("bpf-linker\n"), None);
        assert_eq!(parse_bpf_linker_version("bpf-linker 0.13\n"), None);
        assert_eq!(parse_bpf_linker_version("error: unknown flag"), None);
    }

    #[test]
    fn wants_bpf_linker_0_13_only() {
        assert!(is_wanted_bpf_linker((0, 13, 0)));
        assert!(is_wanted_bpf_linker((0, 13, 4)));
        assert!(!is_wanted_bpf_linker((0, 12, 9)));
        assert!(!is_wanted_bpf_linker((0, 14, 0)));
        assert!(!is_wanted_bpf_linker((1, 13, 0)));
    }

    #[test]
    fn installs_bpf_linker_against_llvm_22() {
        assert_eq!(
            bpf_linker_install().to_string(),
            "LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --locked \
             --no-default-features --features llvm-22"
        );
    }

    #[test]
    fn reads_installed_packages_from_dpkg_query() {
        let output = "iproute2 install ok installed\n\
                      bpftool install ok installed\n\
                      nftables deinstall ok config-files\n\
                      tcpdump install ok installed\n";
        assert_eq!(
            not_installed(output, TEST_PACKAGES),
            [
                "ieee-data",
                "nftables",
                "prometheus",
                "tshark",
                "ethtool",
                "openssl",
                "conntrack"
            ]
        );
        assert_eq!(not_installed("", &["iproute2"]), ["iproute2"]);
        let all = "iproute2 install ok installed\nbpftool install ok installed\n\
                   ieee-data install ok installed\nnftables install ok installed\n\
                   tcpdump install ok installed\nprometheus install ok installed\n\
                   tshark install ok installed\nethtool install ok installed\n\
                   openssl install ok installed\nconntrack install ok installed\n";
        assert!(not_installed(all, TEST_PACKAGES).is_empty());
    }

    #[test]
    fn apt_get_update_runs_once_before_the_first_install() {
        let mut apt = AptState::default();
        let steps = [
            Step::Apt(vec!["llvm-22-dev", "zlib1g-dev"]),
            Step::Run(bpf_linker_install()),
            Step::Apt(vec!["tcpdump"]),
        ];
        let commands: Vec<String> = steps
            .iter()
            .flat_map(|s| apt.commands(s))
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            commands,
            [
                "DEBIAN_FRONTEND=noninteractive apt-get update",
                "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
                 llvm-22-dev zlib1g-dev",
                &bpf_linker_install().to_string(),
                "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tcpdump",
            ]
        );
    }

    #[test]
    fn apt_needs_root_and_apt_get_and_toolchains_are_manual() {
        let apt = Step::Apt(vec!["tcpdump"]);
        let run = Step::Run(Cmd::new("rustup"));
        let manual = Step::Manual(Cmd::new("rustup"));
        let root_debian = Abilities {
            root: true,
            apt_get: true,
        };
        assert_eq!(root_debian.blocker(&apt), None);
        assert_eq!(root_debian.blocker(&run), None);
        assert!(root_debian.blocker(&manual).is_some());
        let user = Abilities {
            root: false,
            apt_get: true,
        };
        assert!(user.blocker(&apt).unwrap().contains("root"));
        assert_eq!(user.blocker(&run), None);
        let not_debian = Abilities {
            root: true,
            apt_get: false,
        };
        assert!(not_debian.blocker(&apt).unwrap().contains("apt-get"));
    }
}
