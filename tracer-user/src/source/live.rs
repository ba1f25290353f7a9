//! An attachment's pinned maps, read into flow records and judged: what `flows`, `resets`,
//! `stats`, `watch` and the metrics endpoint read. Only map reads: nothing here touches packets
//! or hooks.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tracer_common::FlowKey;

use crate::{
    analysis::{
        flow::{self, FlowRecord},
        hosts::LiveHostIndex,
        neighbours::Neighbours,
        oui::Vendors,
        report::{self, FlowReport, Gateways, Origin, Scope},
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

/// Reports on the flows in `scope` of the attachments that match the filters. Each
/// attachment's flows are judged together, since they are each other's baselines.
pub fn reports(
    root: &PinRoot,
    (netns, iface): (Option<&Netns>, Option<&str>),
    oui_db: Option<&Path>,
    scope: Scope,
) -> anyhow::Result<Vec<FlowReport>> {
    let vendors = Vendors::new(oui_db);
    let mut reports = Vec::new();
    for (attachment, maps) in open_attachments(root, netns, iface)? {
        let flows = flow_records(&attachment, &maps)?;
        let origin = Origin::Live(attachment.clone());
        let neighbours = || neighbours(&attachment);
        reports.extend(report::analyse(
            &origin, flows, &vendors, neighbours, scope,
        )?);
    }
    Ok(reports)
}

/// Every flow of an attachment's flow table as a record, with its reset evidence when it has
/// some, its stamps turned into Unix time with a clock read now.
pub fn flow_records(attachment: &Attachment, maps: &PinnedMaps) -> anyhow::Result<Vec<FlowRecord>> {
    let context = || format!("reading the flow table of {attachment}");
    let resets = maps.resets().with_context(context)?;
    let hellos = maps.hellos().with_context(context)?;
    let flows = maps.flows().with_context(context)?;
    let clock = ClockSnapshot::now().context("reading the clocks")?;
    flow::flow_records(flows.iter(), &resets, &hellos, &clock).with_context(context)
}

/// The attachment's neighbour table; `None`, with a warning, when it cannot be read.
fn neighbours(attachment: &Attachment) -> Option<Neighbours> {
    match neighbour::read(&attachment.netns, &attachment.iface) {
        Ok(table) => Some(table),
        Err(error) => {
            log::warn!("{error:#}; gateway IP addresses left out");
            None
        }
    }
}

/// One attachment whose flows are judged one at a time (`watch`), each with two point lookups
/// and constant work whatever the size of its tables. Its host index comes from one read of the
/// maps, is kept current with every flow looked up since, and is read anew every
/// [`INDEX_MAX_AGE`], which forgets the flows the kernel evicted and learns the baselines that
/// only the whole table holds (those that FINs and data after a RST set).
pub struct FlowJudge {
    attachment: Attachment,
    index: LiveHostIndex,
    indexed_at: Instant,
    /// The neighbour table and when it was read: at most once a [`NEIGHBOURS_MAX_AGE`], however
    /// many verdicts need it.
    neighbours: Option<(Instant, Option<Neighbours>)>,
}

/// How long a [`FlowJudge`]'s index is kept before it is read anew from the maps.
pub const INDEX_MAX_AGE: Duration = Duration::from_secs(60);
/// How long a [`FlowJudge`]'s neighbour table is kept.
const NEIGHBOURS_MAX_AGE: Duration = Duration::from_secs(1);

impl FlowJudge {
    pub fn new(attachment: &Attachment, maps: &PinnedMaps) -> anyhow::Result<FlowJudge> {
        Ok(FlowJudge {
            attachment: attachment.clone(),
            index: LiveHostIndex::new(&flow_records(attachment, maps)?),
            indexed_at: Instant::now(),
            neighbours: None,
        })
    }

    /// Reads the whole table again when the index is older than [`INDEX_MAX_AGE`].
    pub fn refresh(&mut self, maps: &PinnedMaps) -> anyhow::Result<()> {
        if self.indexed_at.elapsed() >= INDEX_MAX_AGE {
            self.index = LiveHostIndex::new(&flow_records(&self.attachment, maps)?);
            self.indexed_at = Instant::now();
        }
        Ok(())
    }

    /// The flow's record as the maps hold it now, from the reset table's copy once the flow
    /// table has evicted it; `None` once both have.
    fn lookup(&self, maps: &PinnedMaps, key: &FlowKey) -> anyhow::Result<Option<FlowRecord>> {
        let context = || format!("looking up a flow of {}", self.attachment);
        let value = maps.flow(key).with_context(context)?;
        let reset = maps.reset_entry(key).with_context(context)?;
        let hello = maps.hello(key).with_context(context)?;
        let clock = ClockSnapshot::now().context("reading the clocks")?;
        let record = match (value, reset) {
            (Some(value), reset) => {
                let evidence = reset.as_ref().map(|entry| &entry.evidence);
                FlowRecord::decode(key, &value, evidence, hello.as_ref(), &clock)
            }
            (None, Some(entry)) => FlowRecord::from_reset_entry(&entry, hello.as_ref(), &clock),
            (None, None) => return Ok(None),
        };
        record.map(Some).with_context(context)
    }

    /// Learns what the flow's entry says of its hosts (a SYN/ACK just passed).
    pub fn learn(&mut self, maps: &PinnedMaps, key: &FlowKey) -> anyhow::Result<()> {
        if let Some(flow) = self.lookup(maps, key)? {
            self.index.insert(&flow);
        }
        Ok(())
    }

    /// The report on one flow; `None` when the table no longer holds it.
    pub fn report(
        &mut self,
        maps: &PinnedMaps,
        key: &FlowKey,
        vendors: &Vendors,
    ) -> anyhow::Result<Option<FlowReport>> {
        let Some(flow) = self.lookup(maps, key)? else {
            return Ok(None);
        };
        self.index.insert(&flow);
        let table = match report::gateway_mac(&flow) {
            Some(_) => self.neighbours(),
            None => None,
        };
        let mut gateways = Gateways::new(vendors, || table);
        let origin = Origin::Live(self.attachment.clone());
        report::report(&origin, flow, self.index.index(), &mut gateways).map(Some)
    }

    /// The neighbour table, read anew when older than [`NEIGHBOURS_MAX_AGE`].
    fn neighbours(&mut self) -> Option<Neighbours> {
        let fresh = |(read_at, _): &(Instant, _)| read_at.elapsed() < NEIGHBOURS_MAX_AGE;
        if !self.neighbours.as_ref().is_some_and(fresh) {
            self.neighbours = Some((Instant::now(), neighbours(&self.attachment)));
        }
        self.neighbours
            .as_ref()
            .and_then(|(_, table)| table.clone())
    }
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
    // One broken attachment (pins of another version, a table half made) must not hide the
    // others: it is reported and skipped, and fails the command only when it is all there is.
    let alone = attachments.len() == 1;
    let mut opened = Vec::new();
    let mut first_failure = None;
    for attachment in attachments {
        let dir = root.dir(&attachment);
        match PinnedMaps::open(&dir, &root.purge_command(&attachment))
            .with_context(|| format!("opening the pinned maps of {attachment}"))
        {
            Ok(maps) => opened.push((attachment, maps)),
            Err(error) if alone => return Err(error),
            Err(error) => {
                log::warn!("{error:#}; skipped");
                first_failure.get_or_insert(error);
            }
        }
    }
    match first_failure {
        Some(error) if opened.is_empty() => Err(error),
        _ => Ok(opened),
    }
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
