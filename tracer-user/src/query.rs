//! `flagtrace flows` and `flagtrace stats`: read the pinned maps of every attachment (or the ones
//! asked for) and print them. Only map reads: nothing here touches packets or hooks.

use std::{
    cmp::Reverse,
    io::{self, Write as _},
};

use anyhow::Context as _;

use crate::{
    cli::{FlowsArgs, SortKey, StatsArgs},
    clock::ClockSnapshot,
    error::Failure,
    flow::FlowRecord,
    maps::PinnedMaps,
    netns::Netns,
    output::{self, AttachmentStats},
    pins::{Attachment, PinRoot},
    privileges::{self, CAP_BPF},
};

pub fn flows(root: &PinRoot, netns: Option<&Netns>, args: &FlowsArgs) -> anyhow::Result<()> {
    privileges::require("flows", &[CAP_BPF])?;
    let mut flows = Vec::new();
    for (attachment, maps) in open_attachments(root, netns, args.iface.as_deref())? {
        for (key, value) in maps.flows()? {
            let flow = FlowRecord::new(&key, &value)
                .with_context(|| format!("reading the flow table of {attachment}"))?;
            flows.push((attachment.clone(), flow));
        }
    }
    let clock = ClockSnapshot::now().context("reading the clocks")?;
    sort_flows(&mut flows, args.sort);
    flows.truncate(args.limit.unwrap_or(usize::MAX));

    let mut out = io::stdout().lock();
    if args.json {
        for (attachment, flow) in &flows {
            writeln!(out, "{}", output::flow_json(attachment, flow, &clock))?;
        }
    } else {
        write!(out, "{}", output::flows_table(&flows, &clock))?;
    }
    Ok(())
}

pub fn stats(root: &PinRoot, netns: Option<&Netns>, args: &StatsArgs) -> anyhow::Result<()> {
    privileges::require("stats", &[CAP_BPF])?;
    let mut blocks = Vec::new();
    for (attachment, maps) in open_attachments(root, netns, None)? {
        let stats = AttachmentStats {
            counters: maps.counters()?,
            flows: maps.flows()?.len(),
            max_flows: maps.capacity(),
            attachment,
        };
        blocks.push(if args.json {
            output::stats_json(&stats) + "\n"
        } else {
            output::stats_text(&stats)
        });
    }
    let separator = if args.json { "" } else { "\n" };
    write!(io::stdout().lock(), "{}", blocks.join(separator))?;
    Ok(())
}

/// The pinned maps of the attachments that match the filters; none is a [`Failure`].
fn open_attachments(
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
fn sort_flows(flows: &mut [(Attachment, FlowRecord)], key: SortKey) {
    let last_seen = |flow: &FlowRecord| Reverse(flow.last_seen_ns);
    match key {
        SortKey::Last => flows.sort_by_key(|(_, flow)| last_seen(flow)),
        SortKey::Rst => {
            flows.sort_by_key(|(_, flow)| (Reverse(flow.totals().rst), last_seen(flow)))
        }
        SortKey::Syn => {
            flows.sort_by_key(|(_, flow)| (Reverse(flow.totals().syn), last_seen(flow)))
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::{FlowKey, FlowValue, FAMILY_IPV4};

    use super::*;

    /// A flow from 10.0.0.1:`port` whose client sent `syn` SYNs and `rst` RSTs, last seen at `last`.
    fn flow(port: u16, syn: u32, rst: u32, last: u64) -> (Attachment, FlowRecord) {
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
        (attachment, FlowRecord::new(&key, &value).unwrap())
    }

    fn ports(flows: &[(Attachment, FlowRecord)]) -> Vec<u16> {
        flows.iter().map(|(_, flow)| flow.client.port()).collect()
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
