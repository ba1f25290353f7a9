//! `flagtrace detach`: remove the hooks a killed `attach` left on an interface, and with `--purge`
//! its pins.
//!
//! Links die with the process that holds them, so leftovers are links someone pinned, or
//! netlink attachments (XDP when bpf links are refused, tc filters before TCX). A link that a
//! running process holds is a live `attach`'s: detaching it would blind that process, so it is
//! refused without `--force`. Only programs carrying our names are touched, and only on this
//! interface in this namespace: programs are found through the interface (netlink for XDP, a
//! TCX query for TC), never by name alone, since interface indexes repeat across namespaces.

use std::{
    collections::HashSet,
    fmt,
    io::{self, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{bail, Context as _};
use aya::{
    programs::{
        links::{LinkError, LinkType},
        loaded_links,
        tc::{qdisc_detach_program, TcError},
        SchedClassifier, TcAttachType,
    },
    sys::SyscallError,
};
use serde::Deserialize;
use tracer_common::{TC_PROGRAM, XDP_PROGRAM};

use crate::{
    cli::DetachArgs,
    error::Failure,
    sys::bpf::{bpf_u32, BPF_LINK_DETACH, BPF_LINK_GET_FD_BY_ID},
    sys::netns::{run_ip, Netns},
    sys::pins::{Attachment, PinRoot},
    sys::privileges::{self, CAP_BPF, CAP_NET_ADMIN},
};

pub fn run(root: &PinRoot, netns: &Netns, args: &DetachArgs) -> anyhow::Result<()> {
    privileges::require(
        "detach",
        &privileges::entering(netns, &[CAP_BPF, CAP_NET_ADMIN]),
    )?;
    let attachment = Attachment {
        netns: netns.clone(),
        iface: args.iface.clone(),
    };
    let removed = match remove_hooks(&attachment, args.force) {
        Ok(removed) => removed,
        // Hooks go away with their interface or namespace; the pins outlive both.
        Err(error) if args.purge && interface_is_gone(&error) => {
            log::warn!("{error:#}; removing only the pins");
            Vec::new()
        }
        Err(error) => return Err(error),
    };
    let mut stdout = io::stdout().lock();
    for hook in &removed {
        writeln!(stdout, "flagtrace: removed {hook} from {attachment}")?;
    }
    let purged = if args.purge {
        root.purge(&attachment)?
    } else {
        None
    };
    if let Some(dir) = &purged {
        writeln!(stdout, "flagtrace: removed the pins in {}", dir.display())?;
    }
    if removed.is_empty() && purged.is_none() {
        let mut what = format!("no flagtrace hooks on {attachment}");
        if args.purge {
            what += &format!(" and no pins in {}", root.dir(&attachment).display());
        }
        return Err(Failure::NothingAttached(what).into());
    }
    Ok(())
}

fn interface_is_gone(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<Failure>(),
            Some(Failure::NoSuchInterface { .. } | Failure::NoSuchNamespace(_))
        )
    })
}

/// A hook that was removed.
enum RemovedHook {
    Link {
        kind: &'static str,
        link_id: u32,
        program_id: u32,
    },
    NetlinkXdp {
        program_id: u32,
    },
    NetlinkTcFilter,
}

impl fmt::Display for RemovedHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemovedHook::Link {
                kind,
                link_id,
                program_id,
            } => write!(f, "{kind} link {link_id} (program id {program_id})"),
            RemovedHook::NetlinkXdp { program_id } => {
                write!(f, "netlink XDP {XDP_PROGRAM} (program id {program_id})")
            }
            RemovedHook::NetlinkTcFilter => write!(f, "tc egress filter {TC_PROGRAM}"),
        }
    }
}

/// Enters the namespace and removes our hooks from the interface; without `force`, refuses
/// (before removing any) when a running process holds one of the links.
fn remove_hooks(attachment: &Attachment, force: bool) -> anyhow::Result<Vec<RemovedHook>> {
    attachment.netns.enter()?;
    let iface = attachment.iface.as_str();
    attachment.netns.ifindex(iface)?;

    let xdp_ids = our_xdp(iface)?.iter().map(|program| program.id).collect();
    let (_, tcx) = SchedClassifier::query_tcx(iface, TcAttachType::Egress)
        .with_context(|| format!("querying TCX egress programs of {attachment}"))?;
    let tcx_ids = tcx
        .iter()
        .filter(|program| program.name_as_str() == Some(kernel_name(TC_PROGRAM)))
        .map(|program| program.id())
        .collect();

    let mut ours_linked = Vec::new();
    for link in loaded_links() {
        let link = match link {
            Ok(link) => link,
            // Other loaders come and go while we list: a link that vanished is not ours.
            Err(LinkError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(error) => return Err(error).context("listing bpf links"),
        };
        let (kind, ours): (_, &HashSet<u32>) = match link.link_type() {
            Ok(LinkType::Xdp) => ("XDP", &xdp_ids),
            Ok(LinkType::Tcx) => ("TCX", &tcx_ids),
            _ => continue,
        };
        if ours.contains(&link.program_id()) {
            ours_linked.push((kind, link.id(), link.program_id()));
        }
    }
    if !force {
        let ids: HashSet<u32> = ours_linked.iter().map(|(_, id, _)| *id).collect();
        let pids = link_holders(&ids);
        if !pids.is_empty() {
            return Err(Failure::HooksInUse {
                what: format!("the flagtrace hooks on {attachment}"),
                pids,
            }
            .into());
        }
    }
    let mut removed = Vec::new();
    for (kind, link_id, program_id) in ours_linked {
        detach_link(link_id)
            .with_context(|| format!("detaching {kind} link {link_id} from {attachment}"))?;
        removed.push(RemovedHook::Link {
            kind,
            link_id,
            program_id,
        });
    }

    // What is still attached after the links are gone was attached through netlink.
    for program in our_xdp(iface)? {
        detach_netlink_xdp(iface, program.mode)
            .with_context(|| format!("removing XDP program {} from {attachment}", program.id))?;
        removed.push(RemovedHook::NetlinkXdp {
            program_id: program.id,
        });
    }

    match qdisc_detach_program(iface, TcAttachType::Egress, TC_PROGRAM) {
        Ok(()) => removed.push(RemovedHook::NetlinkTcFilter),
        Err(error) if no_tc_filter(&error) => {}
        Err(error) => {
            return Err(error).with_context(|| format!("removing tc filters from {attachment}"))
        }
    }
    Ok(removed)
}

/// Our XDP programs on `iface` in the current namespace.
fn our_xdp(iface: &str) -> anyhow::Result<Vec<AttachedXdp>> {
    let mut attached = attached_xdp(iface)?;
    attached.retain(|program| program.name == kernel_name(XDP_PROGRAM));
    Ok(attached)
}

/// The kernel keeps the first 15 bytes of a program name (BPF_OBJ_NAME_LEN is 16 with the NUL).
fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

/// Whether a tc filter lookup failed only because there was nothing to find: no filter with our
/// name, or no clsact qdisc at all.
fn no_tc_filter(error: &TcError) -> bool {
    match error {
        TcError::IoError(error) => error.kind() == io::ErrorKind::NotFound,
        TcError::NetlinkError(error) => {
            matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOENT))
        }
        _ => false,
    }
}

/// An XDP program attached to an interface, as netlink reports it.
struct AttachedXdp {
    id: u32,
    name: String,
    /// XDP_ATTACHED_DRV (1), _SKB (2) or _HW (3).
    mode: u8,
}

#[derive(Deserialize)]
struct IpLink {
    xdp: Option<IpXdp>,
}

#[derive(Deserialize)]
struct IpXdp {
    mode: u8,
    prog: Option<IpProg>,
    /// One entry per mode; iproute2 prints it with `-d`, and only it in multi-attach mode.
    attached: Option<Vec<IpXdpAttached>>,
}

#[derive(Deserialize)]
struct IpXdpAttached {
    mode: u8,
    prog: IpProg,
}

#[derive(Deserialize)]
struct IpProg {
    id: u32,
    /// Missing when iproute2 could not read the program's info: then it is not known to be ours.
    #[serde(default)]
    name: String,
}

/// XDP programs on `iface` in the current namespace, from `ip -j -d link show` (netlink
/// RTM_GETLINK, which aya does not expose). `ip` inherits the namespace this thread entered.
fn attached_xdp(iface: &str) -> anyhow::Result<Vec<AttachedXdp>> {
    let stdout = run_ip(&["-j", "-d", "link", "show", "dev", iface])?;
    parse_attached_xdp(&stdout).with_context(|| format!("parsing `ip -j -d link show dev {iface}`"))
}

fn parse_attached_xdp(json: &[u8]) -> anyhow::Result<Vec<AttachedXdp>> {
    let links: Vec<IpLink> = serde_json::from_slice(json)?;
    let mut attached = Vec::new();
    for xdp in links.into_iter().filter_map(|link| link.xdp) {
        let per_mode = match (xdp.attached, xdp.prog) {
            (Some(list), _) => list,
            (None, Some(prog)) => vec![IpXdpAttached {
                mode: xdp.mode,
                prog,
            }],
            (None, None) => Vec::new(),
        };
        attached.extend(per_mode.into_iter().map(|entry| AttachedXdp {
            id: entry.prog.id,
            name: entry.prog.name,
            mode: entry.mode,
        }));
    }
    Ok(attached)
}

/// Removes a netlink-attached XDP program in the given mode.
fn detach_netlink_xdp(iface: &str, mode: u8) -> anyhow::Result<()> {
    let keyword = match mode {
        1 => "xdpdrv",
        2 => "xdpgeneric",
        3 => "xdpoffload",
        other => bail!("unknown XDP attach mode {other}"),
    };
    run_ip(&["link", "set", "dev", iface, keyword, "off"]).map(drop)
}

/// The processes other than this one that hold a file descriptor of one of the bpf links
/// `ids`: their fdinfo names the link (`link_id:`). A process that goes while we look is not
/// counted; one we may not read (another user's, without privileges) is not either.
fn link_holders(ids: &HashSet<u32>) -> Vec<u32> {
    if ids.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut holders: Vec<u32> = processes
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && holds_link(pid, ids))
        .collect();
    holders.sort_unstable();
    holders
}

fn holds_link(pid: u32, ids: &HashSet<u32>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_to_string(fd.path()).is_ok_and(|info| {
            info.lines()
                .filter_map(|line| line.strip_prefix("link_id:"))
                .any(|id| id.trim().parse().is_ok_and(|id: u32| ids.contains(&id)))
        })
    })
}

/// Detaches a link by id, whoever holds it: the link object lives on (pinned or held open) but no
/// longer hooks anything.
fn detach_link(link_id: u32) -> io::Result<()> {
    let fd = bpf_u32(BPF_LINK_GET_FD_BY_ID, link_id)?;
    // SAFETY: BPF_LINK_GET_FD_BY_ID returned a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    bpf_u32(BPF_LINK_DETACH, fd.as_raw_fd() as u32)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_are_truncated_to_15_bytes() {
        assert_eq!(kernel_name(XDP_PROGRAM), "flagtrace_ingre");
        assert_eq!(kernel_name(TC_PROGRAM), "flagtrace_egres");
        assert_eq!(kernel_name("short"), "short");
    }

    #[test]
    fn parses_xdp_from_ip_json() {
        // iproute2 6.1 `ip -j -d link show dev a0` with a generic-mode program (trimmed).
        let detailed = br#"[{"ifindex":3,"ifname":"a0","xdp":{"mode":2,
            "prog":{"id":463,"name":"flagtrace_ingre","tag":"0d0606be530cb625","jited":1},
            "attached":[{"mode":2,"prog":{"id":463,"name":"flagtrace_ingre","jited":1}}]}}]"#;
        let attached = parse_attached_xdp(detailed).unwrap();
        assert_eq!(attached.len(), 1);
        assert_eq!(
            (attached[0].id, attached[0].name.as_str(), attached[0].mode),
            (463, "flagtrace_ingre", 2)
        );

        let without_list = br#"[{"ifname":"a0","xdp":{"mode":1,"prog":{"id":7,"name":"x"}}}]"#;
        let attached = parse_attached_xdp(without_list).unwrap();
        assert_eq!((attached[0].id, attached[0].mode), (7, 1));

        let multi = br#"[{"ifname":"a0","xdp":{"mode":4,"attached":[
            {"mode":1,"prog":{"id":7,"name":"a"}},{"mode":3,"prog":{"id":8,"name":"b"}}]}}]"#;
        let modes: Vec<u8> = parse_attached_xdp(multi)
            .unwrap()
            .iter()
            .map(|p| p.mode)
            .collect();
        assert_eq!(modes, [1, 3]);

        assert!(parse_attached_xdp(br#"[{"ifname":"a0"}]"#)
            .unwrap()
            .is_empty());
    }
}
