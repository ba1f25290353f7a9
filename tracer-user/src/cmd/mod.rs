//! The commands, one module each: they read a source, run the analysis and print an output.
//! No command imports another.

pub mod attach;
pub mod detach;
pub mod flows;
pub mod pcap;
pub mod resets;
pub mod stats;
pub mod watch;

use std::{cmp::Reverse, io::Write as _};

use crate::{
    analysis::{flow::FlowRecord, report::FlowReport},
    cli::SortKey,
    output::{OutputFormat, Printer},
};

/// Prints the flows of `reports` that have a verdict, in the order of their first RST (`resets`
/// and `pcap`); `none` is the note for when there are none.
pub fn print_resets(
    mut reports: Vec<FlowReport>,
    format: OutputFormat,
    none: &str,
) -> anyhow::Result<()> {
    reports.retain(|report| report.verdict.is_some());
    reports.sort_by_cached_key(|report| report.flow.first_rst_ns());
    let mut printer = Printer::stdout(format);
    if reports.is_empty() {
        if format == OutputFormat::Table {
            writeln!(printer.out(), "{none}")?;
            printer.out().flush()?;
            return Ok(());
        }
        // JSON lines and CSV stay parseable: the note goes to stderr, and CSV still gets its
        // header below.
        log::info!("{none}");
    }
    printer.resets(&reports)?;
    Ok(())
}

/// Most recent first; by RST or SYN total, the largest first and then the most recent.
/// Sorted by cached keys: a report is large (over 600 bytes), and this moves each once, where a
/// merge sort would copy it at every level.
pub fn sort_flows(reports: &mut [FlowReport], key: SortKey) {
    let last_seen = |flow: &FlowRecord| Reverse(flow.last_seen_ns);
    match key {
        SortKey::Last => reports.sort_by_cached_key(|report| last_seen(&report.flow)),
        SortKey::Rst => reports.sort_by_cached_key(|report| {
            (Reverse(report.flow.totals().rst), last_seen(&report.flow))
        }),
        SortKey::Syn => reports.sort_by_cached_key(|report| {
            (Reverse(report.flow.totals().syn), last_seen(&report.flow))
        }),
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::{FlowKey, FlowValue, FAMILY_IPV4};

    use super::*;
    use crate::{
        analysis::report::Origin,
        sys::{clock::ClockSnapshot, netns::Netns, pins::Attachment},
    };

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
            origin: Origin::Live(attachment),
            flow: FlowRecord::decode(&key, &value, None, None, &ClockSnapshot::unix()).unwrap(),
            verdict: None,
            phase: None,
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
}
