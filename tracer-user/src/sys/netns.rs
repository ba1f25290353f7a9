//! Network namespaces named the way `ip netns` names them (/run/netns/NAME), and interfaces in them.

use std::{ffi::CString, fmt, fs::File, io, os::fd::AsRawFd, path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::error::Failure;

/// Where `ip netns add` puts its namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// The network namespace an interface lives in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Netns {
    /// The namespace flagtrace was started in.
    Host,
    /// A namespace under /run/netns.
    Named(String),
}

impl Netns {
    pub fn from_name(name: Option<&str>) -> Netns {
        name.map_or(Netns::Host, |name| Netns::Named(name.to_owned()))
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            Netns::Host => None,
            Netns::Named(name) => Some(name),
        }
    }

    /// Moves the calling thread into this namespace (a no-op for the host's), the way `ip -n` does.
    /// Only the network namespace changes: the mount namespace, and with it bpffs, stays the same.
    pub fn enter(&self) -> anyhow::Result<()> {
        let Netns::Named(name) = self else {
            return Ok(());
        };
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let file = File::open(&path).map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => anyhow::Error::new(Failure::NoSuchNamespace(name.clone())),
            _ => anyhow::Error::new(error).context(format!("opening {}", path.display())),
        })?;
        // SAFETY: setns on an open namespace file descriptor; it only changes this thread's
        // network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).with_context(|| {
                format!("entering network namespace {name} ({})", path.display())
            });
        }
        Ok(())
    }

    /// The arguments that make `ip` act in this namespace without our entering it: `-n NAME`, or
    /// none for the host's.
    pub fn ip_args(&self) -> Vec<&str> {
        match self {
            Netns::Host => Vec::new(),
            Netns::Named(name) => vec!["-n", name],
        }
    }

    /// The index of `iface` in the namespace the calling thread is in, which must be this one.
    pub fn ifindex(&self, iface: &str) -> anyhow::Result<u32> {
        let no_such_interface = || Failure::NoSuchInterface {
            iface: iface.to_owned(),
            netns: self.to_string(),
        };
        let c_iface = CString::new(iface).map_err(|_| no_such_interface())?;
        // SAFETY: c_iface is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(c_iface.as_ptr()) };
        if index != 0 {
            return Ok(index);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ENODEV) {
            return Err(no_such_interface().into());
        }
        Err(error).with_context(|| format!("looking up interface {iface} in {self}"))
    }
}

/// Runs iproute2's `ip` with `args` and returns its stdout. It runs in the calling thread's
/// namespace unless `args` says otherwise (`-n NAME`; see [`Netns::ip_args`]).
pub fn run_ip(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netns::Host => f.write_str("host netns"),
            Netns::Named(name) => write!(f, "netns {name}"),
        }
    }
}
