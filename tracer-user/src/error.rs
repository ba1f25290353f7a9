//! Expected failures: each has one clear message and its own exit code (see the README). Anything
//! else is exit code 1; clap's usage errors are 2.

use std::{fmt, path::PathBuf};

/// Exit code of an error that is not one of the expected [`Failure`]s.
pub const EXIT_OTHER_ERROR: u8 = 1;

/// An expected failure, carried through `anyhow` and recognised in `main` by downcasting.
#[derive(Debug)]
pub enum Failure {
    /// The process lacks capabilities the command needs.
    MissingCapabilities {
        command: &'static str,
        needed: Vec<&'static str>,
    },
    NoSuchInterface {
        iface: String,
        /// The namespace as it is printed ("host namespace", "netns lab").
        netns: String,
    },
    /// No /run/netns/NAME.
    NoSuchNamespace(String),
    /// Nothing to read or remove; the message says what was looked for.
    NothingAttached(String),
    /// A pinned map whose layout this build cannot use; `fix` is the command that removes it.
    IncompatiblePin {
        path: PathBuf,
        reason: String,
        fix: String,
    },
    /// `flagtrace pcap` on a file that is no capture it can read: missing, unreadable, neither
    /// pcap nor pcapng, or of a link type it does not read. The message names the file.
    NotACapture(String),
    /// `flagtrace pcap` on a truncated or corrupt capture, after printing what it could read.
    /// The message names the file and the byte offset of the damage.
    CaptureDamaged(String),
    /// `detach` on hooks that a running process holds (a live `attach`), without `--force`.
    HooksInUse { what: String, pids: Vec<u32> },
    /// A pin this user may not open: bpffs checks file permissions like any file system, and
    /// `attach` pins with mode 0600 for its own user.
    PinAccess { path: PathBuf, uid: u32, mode: u32 },
    /// A running `attach` found its hooks gone (`detach --force`, another tool, or the
    /// interface): it counts nothing any more.
    HooksGone(String),
    /// The metrics endpoint of a running `attach` stopped serving: `attach` ends rather than
    /// leave Prometheus without an answer. The message says why.
    MetricsFailed(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::MissingCapabilities { .. } | Failure::PinAccess { .. } => 3,
            Failure::NoSuchInterface { .. } => 4,
            Failure::NoSuchNamespace(_) => 5,
            Failure::NothingAttached(_) => 6,
            Failure::IncompatiblePin { .. } => 7,
            Failure::CaptureDamaged(_) => 8,
            Failure::NotACapture(_) => 9,
            Failure::HooksInUse { .. } => 10,
            Failure::HooksGone(_) => 11,
            Failure::MetricsFailed(_) => 12,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::MissingCapabilities { command, needed } => write!(
                f,
                "`flagtrace {command}` needs {}, or root",
                needed.join(" and ")
            ),
            Failure::NoSuchInterface { iface, netns } => {
                write!(f, "no such interface: {iface} (in {netns})")
            }
            Failure::PinAccess { path, uid, mode } => write!(
                f,
                "pin {} belongs to uid {uid} with mode {:04o}: run flagtrace as that user or as \
                 root (capabilities do not open another user's pins), or use a --pin-root of your \
                 own",
                path.display(),
                mode & 0o7777
            ),
            Failure::NoSuchNamespace(name) => write!(
                f,
                "no such network namespace: {name} (no /run/netns/{name}; see `ip netns list`)"
            ),
            Failure::HooksInUse { what, pids } => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                write!(
                    f,
                    "{what} belong to a running process (pid {}), an `attach` that is counting: \
                     stop it (SIGTERM) to detach cleanly, or use --force to blind it",
                    pids.join(", ")
                )
            }
            Failure::HooksGone(what) => write!(f, "{what}: nothing is counted any more"),
            Failure::MetricsFailed(why) => write!(f, "{why}; detached"),
            Failure::NothingAttached(what) => write!(f, "nothing attached: {what}"),
            Failure::IncompatiblePin { path, reason, fix } => write!(
                f,
                "pin {} is from an incompatible version ({reason}), run `{fix}`",
                path.display()
            ),
            Failure::NotACapture(message) => write!(f, "cannot read the capture: {message}"),
            Failure::CaptureDamaged(message) => write!(
                f,
                "the capture is damaged, the flows above are those before the damage: {message}"
            ),
        }
    }
}

impl std::error::Error for Failure {}

/// The exit code for an error: the first [`Failure`] in its chain decides.
/// Whether a system call behind `error` failed with `errno`.
pub fn has_errno(error: &anyhow::Error, errno: i32) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|error| error.raw_os_error() == Some(errno))
    })
}

/// Whether `error` is a write to a pipe whose reader has gone (EPIPE): the output's reader
/// stopped reading, which ends a command quietly, as it ends `ls | head`.
pub fn is_closed_pipe(error: &anyhow::Error) -> bool {
    has_errno(error, libc::EPIPE)
}

pub fn exit_code(error: &anyhow::Error) -> u8 {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<Failure>())
        .map_or(EXIT_OTHER_ERROR, Failure::exit_code)
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn exit_code_survives_context() {
        let error = anyhow::Error::new(Failure::NoSuchNamespace("lab".into()))
            .context("attaching to veth0");
        assert_eq!(exit_code(&error), 5);
        let error: anyhow::Error = Err::<(), _>(Failure::NothingAttached("x".into()))
            .context("reading pins")
            .unwrap_err();
        assert_eq!(exit_code(&error), 6);
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), EXIT_OTHER_ERROR);
    }

    #[test]
    fn incompatible_pin_names_the_fix() {
        let failure = Failure::IncompatiblePin {
            path: "/sys/fs/bpf/flagtrace/lab/veth0/FLOWS".into(),
            reason: "value size 48, expected 56".into(),
            fix: "flagtrace --netns lab detach veth0 --purge".into(),
        };
        assert_eq!(failure.exit_code(), 7);
        assert_eq!(
            failure.to_string(),
            "pin /sys/fs/bpf/flagtrace/lab/veth0/FLOWS is from an incompatible version \
             (value size 48, expected 56), run `flagtrace --netns lab detach veth0 --purge`"
        );
    }
}
