//! The rows: one serde struct per kind of item, whose JSON object is a line of `--json` and,
//! flattened, a row of `--csv`. The keys are documented in the README and stable.

use std::net::IpAddr;

use serde::Serialize;
use tracer_common::{FlagCounts, GlobalCounters};

use crate::{
    analysis::{
        phase::Phase,
        report::FlowReport,
        rst_payload::RstPayload,
        verdict::{MiddleboxRole, ResetBy, Signal},
    },
    output::evidence,
    source::Stats,
    sys::clock::format_rfc3339_utc,
};

/// The four flag counts of a row.
#[derive(Debug, Default, Serialize)]
pub struct FlagCountsRow {
    syn: u32,
    syn_ack: u32,
    fin: u32,
    rst: u32,
}

impl From<FlagCounts> for FlagCountsRow {
    fn from(counts: FlagCounts) -> Self {
        FlagCountsRow {
            syn: counts.syn,
            syn_ack: counts.syn_ack,
            fin: counts.fin,
            rst: counts.rst,
        }
    }
}

/// One flow: a line of `flows --json` and `resets --json`, a row of their `--csv`. The keys
/// are documented in the README and stable.
#[derive(Debug, Default, Serialize)]
pub struct FlowRow<'a> {
    iface: &'a str,
    netns: Option<&'a str>,
    client: String,
    server: String,
    /// Totals over both directions, as top-level keys.
    #[serde(flatten)]
    totals: FlagCountsRow,
    client_to_server: FlagCountsRow,
    server_to_client: FlagCountsRow,
    /// A [`crate::analysis::flow::State`] by name: a string, so that the row has a default.
    state: &'static str,
    first_seen: String,
    last_seen: String,
    reset_by: Option<ResetBy>,
    middlebox_role: Option<MiddleboxRole>,
    reset_phase: Option<Phase>,
    /// From the other side's latest new segment to the deciding RST.
    reset_delay_ms: Option<u32>,
    /// Silence before the packet that preceded the deciding RST.
    idle_before_ms: Option<u32>,
    tls_sni: Option<&'a str>,
    /// What the deciding RST's payload says.
    rst_payload: Option<RstPayload>,
    /// The verdict's signals as sentences ([`evidence`]), the deciding ones first.
    evidence: Vec<String>,
    /// The same signals as data.
    signals: &'a [Signal],
    gateway_mac: Option<String>,
    gateway_vendor: Option<&'a str>,
    gateway_ip: Option<IpAddr>,
    gateway_is_default: bool,
    /// The flow table had evicted the flow; the row comes from the reset table's copy.
    flow_evicted: bool,
}

impl<'a> FlowRow<'a> {
    pub fn new(report: &'a FlowReport) -> Self {
        let (origin, flow, verdict) = (&report.origin, &report.flow, report.verdict.as_ref());
        let gateway = report.gateway.as_ref();
        let neighbour = gateway.and_then(|gateway| gateway.neighbour);
        let rst = report.deciding_rst();
        FlowRow {
            iface: origin.iface(),
            netns: origin.netns(),
            client: flow.client.to_string(),
            server: flow.server.to_string(),
            totals: flow.totals().into(),
            client_to_server: flow.client_to_server.into(),
            server_to_client: flow.server_to_client.into(),
            state: flow.state.as_str(),
            first_seen: format_rfc3339_utc(flow.first_seen_ns.into()),
            last_seen: format_rfc3339_utc(flow.last_seen_ns.into()),
            reset_by: verdict.map(|verdict| verdict.reset_by),
            middlebox_role: verdict.and_then(|verdict| verdict.middlebox_role),
            reset_phase: report.phase,
            reset_delay_ms: rst.and_then(|rst| rst.reset_delay_ms),
            idle_before_ms: rst.and_then(|rst| rst.idle_before_ms),
            tls_sni: flow.tls_sni.as_deref(),
            rst_payload: report.rst_payload(),
            evidence: verdict.map_or_else(Vec::new, |verdict| evidence::sentences(flow, verdict)),
            signals: verdict.map_or(&[], |verdict| verdict.signals.as_slice()),
            gateway_mac: gateway.map(|gateway| gateway.mac.to_string()),
            gateway_vendor: gateway.and_then(|gateway| gateway.vendor.organization()),
            gateway_ip: neighbour.map(|neighbour| neighbour.ip),
            gateway_is_default: neighbour.is_some_and(|neighbour| neighbour.is_default),
            flow_evicted: flow.flow_evicted,
        }
    }
}

/// Global counters of one hook, in a row.
#[derive(Debug, Default, Serialize)]
pub struct CountersRow {
    packets: u64,
    tcp: u64,
    non_tcp: u64,
    parse_errors: u64,
    flows_created: u64,
    syn: u64,
    syn_ack: u64,
    fin: u64,
    rst: u64,
    resets_unrecorded: u64,
    events: u64,
    events_dropped: u64,
}

impl From<GlobalCounters> for CountersRow {
    fn from(c: GlobalCounters) -> Self {
        CountersRow {
            packets: c.packets(),
            tcp: c.tcp(),
            non_tcp: c.non_tcp,
            parse_errors: c.parse_errors,
            flows_created: c.flows_created,
            syn: c.syn(),
            syn_ack: c.syn_ack(),
            fin: c.fin(),
            rst: c.rst(),
            resets_unrecorded: c.resets_unrecorded,
            events: c.events,
            events_dropped: c.events_dropped,
        }
    }
}

/// One attachment's stats: a line of `stats --json`, a row of `stats --csv`. The keys are
/// documented in the README and stable.
#[derive(Debug, Default, Serialize)]
pub struct StatsRow<'a> {
    iface: &'a str,
    netns: Option<&'a str>,
    ingress: CountersRow,
    egress: CountersRow,
    total: CountersRow,
    flows: usize,
    /// `null` for a capture (`flagtrace pcap`), whose flow table has no limit.
    max_flows: Option<u32>,
}

impl<'a> StatsRow<'a> {
    pub fn new(stats: &'a Stats) -> Self {
        StatsRow {
            iface: stats.origin.iface(),
            netns: stats.origin.netns(),
            ingress: stats.counters.ingress.into(),
            egress: stats.counters.egress.into(),
            total: stats.counters.total().into(),
            flows: stats.flows,
            max_flows: stats.max_flows,
        }
    }
}
