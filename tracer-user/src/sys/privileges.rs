//! Checks the effective capabilities up front, so a missing one gives one clear message instead
//! of an EPERM from deep inside a bpf() call.

use std::fs;

use anyhow::Context as _;

use super::netns::Netns;
use crate::error::Failure;

/// A Linux capability, with the capabilities that imply it for BPF purposes.
#[derive(Clone, Copy, Debug)]
pub struct Capability {
    name: &'static str,
    /// Bits in the effective set that each grant it.
    granted_by: &'static [u32],
}

const CAP_NET_ADMIN_BIT: u32 = 12;
const CAP_SYS_ADMIN_BIT: u32 = 21;
const CAP_PERFMON_BIT: u32 = 38;
const CAP_BPF_BIT: u32 = 39;

/// Loading programs and maps, and reading maps. The kernel accepts CAP_SYS_ADMIN in its place.
pub const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    granted_by: &[CAP_BPF_BIT, CAP_SYS_ADMIN_BIT],
};

/// What the verifier asks of the programs beyond CAP_BPF: pointer arithmetic on packet
/// pointers and reading kernel memory through helpers (`bpf_capable` is not enough: it checks
/// `perfmon_capable`). The kernel accepts CAP_SYS_ADMIN in its place.
pub const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    granted_by: &[CAP_PERFMON_BIT, CAP_SYS_ADMIN_BIT],
};

/// Entering another network namespace (setns(2)), for `--netns`.
pub const CAP_SYS_ADMIN: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    granted_by: &[CAP_SYS_ADMIN_BIT],
};

/// Attaching to and detaching from network interfaces.
pub const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    granted_by: &[CAP_NET_ADMIN_BIT],
};

/// `needed`, and CAP_SYS_ADMIN when the command enters `netns`.
pub fn entering(netns: &Netns, needed: &[Capability]) -> Vec<Capability> {
    let mut needed = needed.to_vec();
    if netns.name().is_some() {
        needed.push(CAP_SYS_ADMIN);
    }
    needed
}

/// Fails with [`Failure::MissingCapabilities`] unless the process has all of `needed`.
pub fn require(command: &'static str, needed: &[Capability]) -> anyhow::Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = effective_set(&status).context("no CapEff line in /proc/self/status")?;
    if needed.iter().all(|cap| has(effective, cap)) {
        return Ok(());
    }
    Err(Failure::MissingCapabilities {
        command,
        needed: needed.iter().map(|cap| cap.name).collect(),
    }
    .into())
}

fn has(effective: u64, cap: &Capability) -> bool {
    cap.granted_by.iter().any(|bit| effective & (1 << bit) != 0)
}

/// The effective capability set from the text of /proc/self/status.
fn effective_set(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_effective_set() {
        let status = "Name:\tflagtrace\nCapPrm:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_set(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_set("Name:\tx\n"), None);
    }

    #[test]
    fn perfmon_for_attach_and_sys_admin_for_a_namespace() {
        assert!(has(1 << CAP_PERFMON_BIT, &CAP_PERFMON));
        assert!(has(1 << CAP_SYS_ADMIN_BIT, &CAP_PERFMON));
        assert!(!has(1 << CAP_BPF_BIT, &CAP_PERFMON));
        let names = |netns: &Netns| -> Vec<&str> {
            entering(netns, &[CAP_BPF])
                .iter()
                .map(|cap| cap.name)
                .collect()
        };
        assert_eq!(names(&Netns::Host), ["CAP_BPF"]);
        assert_eq!(
            names(&Netns::Named("lab".into())),
            ["CAP_BPF", "CAP_SYS_ADMIN"]
        );
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_but_not_for_net_admin() {
        let sys_admin_only = 1 << CAP_SYS_ADMIN_BIT;
        assert!(has(sys_admin_only, &CAP_BPF));
        assert!(!has(sys_admin_only, &CAP_NET_ADMIN));
        assert!(has(1 << CAP_BPF_BIT, &CAP_BPF));
        assert!(!has(0, &CAP_BPF));
    }

    #[test]
    fn missing_capabilities_name_all_that_are_needed() {
        let failure = Failure::MissingCapabilities {
            command: "attach",
            needed: vec![CAP_BPF.name, CAP_NET_ADMIN.name],
        };
        assert_eq!(
            failure.to_string(),
            "`flagtrace attach` needs CAP_BPF and CAP_NET_ADMIN, or root"
        );
        assert_eq!(failure.exit_code(), 3);
    }
}
