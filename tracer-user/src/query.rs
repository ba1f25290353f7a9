//! `flagtrace flows`, `resets` and `stats`: read the pinned maps of every attachment (or the
//! ones asked for) and print them. Only map reads: nothing here touches packets or hooks.

use std::{cmp::Reverse, io::Write as _, path::Path};

use anyhow::Context as _;

use crate::{
    cli::{format_duration, FlowsArgs, ResetsArgs, SortKey, StatsArgs},
    clock::ClockSnapshot,
    error::Failure,
    flow::FlowRecord,
    maps::PinnedMaps,
    neighbour::Neighbours,
    netns::Netns,
    oui::Vendors,
    output::{AttachmentStats, OutputFormat, Printer},
    pins::{Attachment, PinRoot},
    privileges::{self, CAP_BPF},
    report::{self, FlowReport},
};

pub fn flows(
    root: &PinRoot,
    netns: Option<&Netns>,
    oui_db: Option<&Path>,
    args: &FlowsArgs,
) -> anyhow::Result<()> {
    privileges::require("flows", &[CAP_BPF])?;
    let mut reports = reports(root, netns, args.iface.as_deref(), oui_db)?;
    let clock = ClockSnapshot::now().context("reading the clocks")?;
    sort_flows(&mut reports, args.sort);
    reports.truncate(args.limit.unwrap_or(usize::MAX));
    Printer::stdout(args.output.format()).flows(&reports, &clock)?;
    Ok(())
}

pub fn resets(
    root: &PinRoot,
    netns: Option<&Netns>,
    oui_db: Option<&Path>,
    args: &ResetsArgs,
) -> anyhow::Result<()> {
    privileges::require("resets", &[CAP_BPF])?;
    let mut reports = reports(root, netns, None, oui_db)?;
    let clock = ClockSnapshot::now().context("reading the clocks")?;
    let cutoff = args.since.map_or(0, |since| clock.monotonic_before(since));
    reports.retain(|report| report.flow.first_rst_ns().is_some_and(|at| at >= cutoff));
    let mut none = String::from("no resets");
    if let Some(since) = args.since {
        none += &format!(" in the last {}", format_duration(since));
    }
    print_resets(reports, args.output.format(), &clock, &none)
}

/// Prints the flows of `reports` that have a verdict, in the order of their first RST (`resets`
/// and `pcap`); `none` is the note for when there are none.
pub(crate) fn print_resets(
    mut reports: Vec<FlowReport>,
    format: OutputFormat,
    clock: &ClockSnapshot,
    none: &str,
) -> anyhow::Result<()> {
    reports.retain(|report| report.verdict.is_some());
    reports.sort_by_key(|report| report.flow.first_rst_ns());
    let mut printer = Printer::stdout(format);
    if reports.is_empty() {
        if format == OutputFormat::Table {
            writeln!(printer.out(), "{none}")?;
            return Ok(());
        }
        // JSON lines and CSV stay parseable: the note goes to stderr, and CSV still gets its
        // header below.
        eprintln!("flagtrace: {none}");
    }
    printer.resets(&reports, clock)?;
    Ok(())
}

/// Reports on every flow of the attachments that match the filters. Each attachment's flows are
/// judged together, since they are each other's baselines.
fn reports(
    root: &PinRoot,
    netns: Option<&Netns>,
    iface: Option<&str>,
    oui_db: Option<&Path>,
) -> anyhow::Result<Vec<FlowReport>> {
    let vendors = Vendors::new(oui_db);
    let mut reports = Vec::new();
    for (attachment, maps) in open_attachments(root, netns, iface)? {
        reports.extend(attachment_reports(&attachment, &maps, &vendors)?);
    }
    Ok(reports)
}

/// Reports on every flow of one attachment, judged together (`resets`, `flows`, and `watch`
/// once a RST's evidence is in).
pub(crate) fn attachment_reports(
    attachment: &Attachment,
    maps: &PinnedMaps,
    vendors: &Vendors,
) -> anyhow::Result<Vec<FlowReport>> {
    let flows = maps
        .flow_records()
        .with_context(|| format!("reading the flow table of {attachment}"))?;
    let neighbours = || match Neighbours::read(&attachment.netns, &attachment.iface) {
        Ok(table) => Some(table),
        Err(error) => {
            eprintln!("flagtrace: {error:#}; gateway IP addresses left out");
            None
        }
    };
    report::analyse(attachment, flows, vendors, neighbours)
}

pub fn stats(root: &PinRoot, netns: Option<&Netns>, args: &StatsArgs) -> anyhow::Result<()> {
    privileges::require("stats", &[CAP_BPF])?;
    let stats = open_attachments(root, netns, None)?
        .into_iter()
        .map(|(attachment, maps)| {
            Ok(AttachmentStats {
                counters: maps.counters()?,
                flows: maps.flows()?.len(),
                max_flows: Some(maps.capacity()),
                attachment,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Printer::stdout(args.output.format()).stats(&stats)?;
    Ok(())
}

/// The pinned maps of the attachments that match the filters; none is a [`Failure`].
pub(crate) fn open_attachments(
    root: &PinRoot,
    netns: Option<&Netns>,
    iface: Option<&str>,
) -> anyhow::Result<Vec<(Attachment, PinnedMaps)>> {
    let attachments = root.discover(netns, iface)?;
    if attachments.is_empty() {
        let mut what = format!("no pinned maps under {}", root.path().display());
        if let Some(netns) = netns {
            what += &format!(" for {netns}");
        }
        if let Some(iface) = iface {
            what += &format!(" for interface {iface}");
        }
        return Err(Failure::NothingAttached(what).into());
    }
    attachments
        .into_iter()
        .map(|attachment| {
            let dir = root.dir(&attachment);
            let maps = PinnedMaps::open(&dir, &root.purge_command(&attachment))
                .with_context(|| format!("opening the pinned maps of {attachment}"))?;
            Ok((attachment, maps))
        })
        .collect()
}

/// Most recent first; by RST or SYN total, the largest first and then the most recent.
pub(crate) fn sort_flows(reports: &mut [FlowReport], key: SortKey) {
    let last_seen = |flow: &FlowRecord| Reverse(flow.last_seen_ns);
    match key {
        SortKey::Last => reports.sort_by_key(|report| last_seen(&report.flow)),
        SortKey::Rst => reports
            .sort_by_key(|report| (Reverse(report.flow.totals().rst), last_seen(&report.flow))),
        SortKey::Syn => reports
            .sort_by_key(|report| (Reverse(report.flow.totals().syn), last_seen(&report.flow))),
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::{FlowKey, FlowValue, FAMILY_IPV4};

    use super::*;

    /// A flow from 10.0.0.1:`port` whose client sent `syn` SYNs and `rst` RSTs, last seen at `last`.
    fn flow(port: u16, syn: u32, rst: u32, last: u64) -> FlowReport {
        let a = [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0];
        let b = [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0];
        let (key, sender) = FlowKey::from_packet(FAMILY_IPV4, 2, a, port, b, 80);
        let mut value = FlowValue {
            last_seen_ns: last,
            ..FlowValue::default()
        };
        value.sent_by[sender].syn = syn;
        value.sent_by[sender].rst = rst;
        let attachment = Attachment {
            netns: Netns::Host,
            iface: "eth0".into(),
        };
        FlowReport {
            attachment,
            flow: FlowRecord::new(&key, &value, None).unwrap(),
            verdict: None,
            gateway: None,
        }
    }

    fn ports(reports: &[FlowReport]) -> Vec<u16> {
        reports
            .iter()
            .map(|report| report.flow.client.port())
            .collect()
    }

    #[test]
    fn sorts_by_recency_rst_and_syn() {
        let mut flows = [
            flow(40001, 1, 0, 10),
            flow(40002, 3, 1, 30),
            flow(40003, 2, 2, 20),
            flow(40004, 3, 0, 40),
        ];
        sort_flows(&mut flows, SortKey::Last);
        assert_eq!(ports(&flows), [40004, 40002, 40003, 40001]);
        sort_flows(&mut flows, SortKey::Rst);
        assert_eq!(ports(&flows), [40003, 40002, 40004, 40001]);
        sort_flows(&mut flows, SortKey::Syn);
        assert_eq!(ports(&flows), [40004, 40002, 40003, 40001]);
    }

    #[test]
    fn no_pins_is_nothing_attached() {
        let root = PinRoot::new("/nonexistent/flagtrace-pin-root");
        let error = open_attachments(&root, None, Some("veth0"))
            .err()
            .expect("no attachments without a pin root");
        assert_eq!(crate::error::exit_code(&error), 6);
        assert_eq!(
            error.to_string(),
            "nothing attached: no pinned maps under /nonexistent/flagtrace-pin-root for interface veth0"
        );
    }
}
