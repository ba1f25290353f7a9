//! An attachment's pinned maps, read into flow records and judged: what `flows`, `resets`,
//! `stats`, `watch` and the metrics endpoint read. Only map reads: nothing here touches packets
//! or hooks.

use std::path::Path;

use anyhow::Context as _;

use crate::{
    analysis::{
        flow::FlowRecord,
        oui::Vendors,
        report::{self, FlowReport, Origin},
    },
    error::Failure,
    source::neighbour,
    sys::{
        clock::ClockSnapshot,
        maps::PinnedMaps,
        netns::Netns,
        pins::{Attachment, PinRoot},
    },
};

/// Reports on every flow of the attachments that match the filters. Each attachment's flows are
/// judged together, since they are each other's baselines.
pub fn reports(
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

/// Every flow of an attachment's flow table as a record, with its reset evidence when it has
/// some, its stamps turned into Unix time with a clock read now.
pub fn flow_records(attachment: &Attachment, maps: &PinnedMaps) -> anyhow::Result<Vec<FlowRecord>> {
    let context = || format!("reading the flow table of {attachment}");
    let resets = maps.resets().with_context(context)?;
    let flows = maps.flows().with_context(context)?;
    let clock = ClockSnapshot::now().context("reading the clocks")?;
    flows
        .iter()
        .map(|(key, value)| FlowRecord::decode(key, value, resets.get(key), &clock))
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(context)
}

/// Reports on every flow of one attachment, judged together (`resets`, `flows`, and `watch`
/// once a RST's evidence is in).
pub fn attachment_reports(
    attachment: &Attachment,
    maps: &PinnedMaps,
    vendors: &Vendors,
) -> anyhow::Result<Vec<FlowReport>> {
    let flows = flow_records(attachment, maps)?;
    let neighbours = || match neighbour::read(&attachment.netns, &attachment.iface) {
        Ok(table) => Some(table),
        Err(error) => {
            log::warn!("{error:#}; gateway IP addresses left out");
            None
        }
    };
    report::analyse(
        &Origin::Live(attachment.clone()),
        flows,
        vendors,
        neighbours,
    )
}

/// The pinned maps of the attachments that match the filters; none is a [`Failure`].
pub fn open_attachments(
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

#[cfg(test)]
mod tests {
    use super::*;

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
