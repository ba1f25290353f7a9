//! `flagtrace attach`: load the programs with their maps pinned, attach XDP on ingress and TC on
//! egress, and stay until SIGINT or SIGTERM.

mod metrics_endpoint;

use std::{
    future::Future,
    io::{self, Write as _},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use aya::{
    programs::{
        loaded_links,
        tc::SchedClassifierLinkId,
        tc::{qdisc_add_clsact, TcError},
        xdp::XdpLinkId,
        SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf,
};
use aya_log::EbpfLogger;
use tokio::io::{unix::AsyncFd, Interest};
use tracer_common::{
    reset_capacity, DEFAULT_MAX_FLOWS, DEFAULT_MAX_RESETS, TC_PROGRAM, XDP_PROGRAM,
};

use crate::{
    analysis::oui::Vendors,
    cli::{AttachArgs, XdpModeArg},
    error::{has_errno, Failure},
    sys::bpf,
    sys::loader::{program_mut, TracerLoader},
    sys::maps::{self, PinnedMaps},
    sys::netns::Netns,
    sys::pins::{Attachment, PinRoot},
    sys::privileges::{self, CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON},
    sys::signals::{AsyncSignals, SignalFd},
};

pub fn run(
    root: &PinRoot,
    netns: &Netns,
    oui_db: Option<&Path>,
    args: &AttachArgs,
) -> anyhow::Result<()> {
    privileges::require(
        "attach",
        &privileges::entering(netns, &[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]),
    )?;
    // Blocked before anything is attached, so a signal that arrives during setup waits for
    // the loop below and still ends in a clean detach.
    let signals = SignalFd::block().context("blocking SIGINT and SIGTERM")?;
    // Bound before entering the namespace: the socket stays in the namespace flagtrace was
    // started from, so one Prometheus reaches attachments in any namespace.
    let metrics = args
        .metrics
        .map(metrics_endpoint::Endpoint::bind)
        .transpose()?;
    netns.enter()?;
    netns.ifindex(&args.iface)?;
    let attachment = Attachment {
        netns: netns.clone(),
        iface: args.iface.clone(),
    };

    let dir = root.create_dir(&attachment)?;
    let fix = root.purge_command(&attachment);
    let pinned = maps::pinned_state(&dir, &fix)?;
    let max_flows = table_capacity(
        &attachment,
        &fix,
        "--max-flows",
        pinned.flows,
        args.max_flows,
        DEFAULT_MAX_FLOWS,
    );
    let max_resets = table_capacity(
        &attachment,
        &fix,
        "--max-resets",
        pinned.resets,
        // The reset table is set-associative over a power-of-two capacity.
        args.max_resets.map(reset_capacity),
        DEFAULT_MAX_RESETS,
    );
    let mut ebpf = TracerLoader {
        max_flows,
        max_resets,
        watch: pinned.watch,
        ..TracerLoader::new(&dir)
    }
    .load()
    .with_context(|| format!("loading the eBPF object for {attachment}"))?;
    let kernel_log = EbpfLogger::init(&mut ebpf)
        .with_context(|| format!("opening the kernel programs' log for {attachment}"))?;

    // On any error from here on, dropping `ebpf` detaches whatever was attached.
    let (xdp_link, xdp_mode) = attach_xdp(
        program_mut(&mut ebpf, XDP_PROGRAM)?,
        &attachment,
        args.xdp_mode,
    )?;
    let tc_link = attach_tc(program_mut(&mut ebpf, TC_PROGRAM)?, &attachment)?;
    let ready = format!(
        "flagtrace: attached to {attachment} xdp={} tc=egress, pins in {}",
        xdp_mode_name(xdp_mode),
        dir.display()
    );
    let (server, metrics_line) = match metrics {
        Some(endpoint) => {
            let addr = endpoint.addr();
            let maps = PinnedMaps::open(&dir, &fix)?;
            let source =
                metrics_endpoint::Source::new(attachment.clone(), maps, Vendors::new(oui_db));
            (
                Some(endpoint.serve(source)),
                format!("flagtrace: metrics of {attachment} at http://{addr}/metrics\n"),
            )
        }
        None => (None, String::new()),
    };
    // One thread: the hooks, the signals and the endpoint's connections are all waiting; a
    // scrape's work goes to the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // Flushed at once: whoever started us waits for the ready line before sending traffic.
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{metrics_line}{ready}")
        .and_then(|()| stdout.flush())
        .context("writing to stdout")?;
    drop(stdout);

    let our_links = links_of(&mut ebpf)?;
    let signal = runtime.block_on(async {
        let signals = signals
            .into_async()
            .context("waiting for SIGINT and SIGTERM")?;
        // SAFETY: the logger owns its ring buffer's fd, open and the same until the AsyncFd,
        // which owns the logger, is dropped.
        let kernel_log = unsafe { AsyncFd::register_with_interest(kernel_log, Interest::READABLE) }
            .context("waiting for the kernel programs' log")?;
        tokio::spawn(relay_kernel_log(kernel_log));
        until_stopped(&signals, &our_links, server, &attachment).await
    })?;
    program_mut::<Xdp>(&mut ebpf, XDP_PROGRAM)?
        .detach(xdp_link)
        .with_context(|| format!("detaching XDP from {attachment}"))?;
    program_mut::<SchedClassifier>(&mut ebpf, TC_PROGRAM)?
        .detach(tc_link)
        .with_context(|| format!("detaching TC egress from {attachment}"))?;
    log::info!(
        "{signal}: detached from {attachment}, pins stay in {}",
        dir.display()
    );
    Ok(())
}

/// Runs until SIGINT or SIGTERM, whose name it returns; or until the hooks vanish, or the
/// metrics endpoint fails: each is an error that ends `attach`, which detaches what is left.
async fn until_stopped(
    signals: &AsyncSignals,
    links: &[u32],
    server: Option<impl Future<Output = anyhow::Error>>,
    attachment: &Attachment,
) -> anyhow::Result<&'static str> {
    let server = async move {
        match server {
            Some(server) => server.await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(server);
    let mut hook_check = tokio::time::interval(HOOK_CHECK_INTERVAL);
    loop {
        tokio::select! {
            signal = signals.recv() => return signal.context("reading SIGINT or SIGTERM"),
            error = &mut server => {
                return Err(Failure::MetricsFailed(format!("{error:#}")).into());
            }
            _ = hook_check.tick() => {
                if let Some(link_id) = detached_link(links) {
                    return Err(Failure::HooksGone(format!(
                        "the hooks of {attachment} were removed (bpf link {link_id} detached: \
                         `detach --force`, another tool, or the interface went away)"
                    ))
                    .into());
                }
            }
        }
    }
}

/// Passes the kernel programs' warnings (a reset table out of room) to our log, hence to
/// stderr, as they come: rare by design, so one wakeup each.
async fn relay_kernel_log(mut kernel_log: AsyncFd<EbpfLogger<&'static dyn log::Log>>) {
    while let Ok(mut ready) = kernel_log.readable_mut().await {
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

/// How often a running `attach` checks that its hooks are still in place.
const HOOK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The bpf links of our programs: XDP and TCX links (netlink attachments have none, and are
/// not checked).
fn links_of(ebpf: &mut Ebpf) -> anyhow::Result<Vec<u32>> {
    let xdp = program_mut::<Xdp>(ebpf, XDP_PROGRAM)?.info()?.id();
    let tc = program_mut::<SchedClassifier>(ebpf, TC_PROGRAM)?
        .info()?
        .id();
    Ok(loaded_links()
        .flatten()
        .filter(|link| link.program_id() == xdp || link.program_id() == tc)
        .map(|link| link.id())
        .collect())
}

/// The first of `links` that is no longer attached to an interface.
fn detached_link(links: &[u32]) -> Option<u32> {
    links
        .iter()
        .copied()
        .find(|&link| bpf::link_ifindex(link).is_ok_and(|ifindex| ifindex == 0))
}

/// The capacity to load a table with: a pinned table keeps the one it was created with, and
/// says so when `option` asks for another; `fix` is the command that removes the pins.
fn table_capacity(
    attachment: &Attachment,
    fix: &str,
    option: &str,
    pinned: Option<u32>,
    asked: Option<u32>,
    default: u32,
) -> u32 {
    match (pinned, asked) {
        (Some(pinned), Some(asked)) if pinned != asked => {
            log::warn!(
                "{attachment} keeps its pinned table of {pinned} entries; \
                 {option} {asked} applies after `{fix}` (which deletes the counts)"
            );
            pinned
        }
        (Some(pinned), _) => pinned,
        (None, asked) => asked.unwrap_or(default),
    }
}

/// Loads and attaches the XDP program; `auto` falls back from native to skb mode.
fn attach_xdp(
    program: &mut Xdp,
    attachment: &Attachment,
    mode: XdpModeArg,
) -> anyhow::Result<(XdpLinkId, XdpMode)> {
    program
        .load()
        .with_context(|| format!("loading {XDP_PROGRAM}"))?;
    let mut attach = |mode| {
        let attached = program
            .attach(&attachment.iface, mode)
            .map_err(anyhow::Error::new);
        attached
            .map_err(|error| {
                if has_errno(&error, libc::EBUSY) {
                    return error.context(format!(
                        "{attachment} already has an XDP program: another `flagtrace attach` \
                         (`flagtrace stats` lists the attachments), or another tool's"
                    ));
                }
                error
            })
            .with_context(|| {
                format!(
                    "attaching XDP in {} mode to {attachment}",
                    xdp_mode_name(mode)
                )
            })
    };
    let mode = match mode {
        XdpModeArg::Native => XdpMode::Driver,
        XdpModeArg::Skb => XdpMode::Skb,
        XdpModeArg::Auto => match attach(XdpMode::Driver) {
            Ok(link) => return Ok((link, XdpMode::Driver)),
            Err(error) if lacks_native_xdp(&error) => {
                log::warn!("{error:#}; falling back to skb mode");
                XdpMode::Skb
            }
            Err(error) => return Err(error),
        },
    };
    Ok((attach(mode)?, mode))
}

/// Whether attaching failed because the driver has no native XDP (EOPNOTSUPP), rather than for
/// a reason skb mode would share, such as a program already attached (EBUSY).
fn lacks_native_xdp(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|error| error.raw_os_error() == Some(libc::EOPNOTSUPP))
    })
}

/// The name of an XDP mode as `--xdp-mode` spells it.
fn xdp_mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Driver => "native",
        XdpMode::Skb => "skb",
        XdpMode::Hardware => "offload",
        XdpMode::Default => "default",
    }
}

/// Loads and attaches the TC program on egress. aya uses TCX from Linux 6.6 on; before that it
/// adds a netlink tc filter, which needs a clsact qdisc.
fn attach_tc(
    program: &mut SchedClassifier,
    attachment: &Attachment,
) -> anyhow::Result<SchedClassifierLinkId> {
    program
        .load()
        .with_context(|| format!("loading {TC_PROGRAM}"))?;
    let has_tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    if !has_tcx {
        match qdisc_add_clsact(&attachment.iface) {
            Err(TcError::NetlinkError(error)) if error.raw_os_error() == Some(libc::EEXIST) => {}
            result => result.with_context(|| format!("adding a clsact qdisc to {attachment}"))?,
        }
    }
    program
        .attach(&attachment.iface, TcAttachType::Egress)
        .with_context(|| format!("attaching TC egress to {attachment}"))
}
