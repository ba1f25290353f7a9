//! The Prometheus text format of one attachment's counters and judged resets, as
//! `attach --metrics` serves it at `/metrics`: the numbers `flagtrace stats` and `resets` print.
//!
//! Counters come from the per-CPU counters of each hook, which only grow (until the pins are
//! purged), never from the flow table, whose entries leave it. Label sets are bounded: no series
//! is ever per flow, and the per-gateway series keep the [`TOP_GATEWAYS`] gateways with the most
//! resets and sum the rest under `gateway_mac="other"`.

use std::collections::HashMap;

use anyhow::Context as _;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tracer_common::GlobalCounters;

use crate::{
    analysis::mac::MacAddr,
    analysis::oui::Vendor,
    analysis::verdict::{MiddleboxRole, ResetBy},
    sys::maps::Counters,
    sys::pins::Attachment,
};

/// Gateways that get series of their own in `flagtrace_reset_flows_by_gateway`.
pub const TOP_GATEWAYS: usize = 10;
/// `gateway_mac` of the resets through the gateways beyond the top [`TOP_GATEWAYS`].
const OTHER_GATEWAYS: &str = "other";
/// `gateway_mac` of the resets of flows with no gateway MAC seen.
const NO_GATEWAY: &str = "none";
/// Every verdict, so that each has a series from the first scrape on (0 until it happens).
const VERDICTS: [ResetBy; 3] = [ResetBy::Endpoint, ResetBy::Middlebox, ResetBy::Unknown];
/// The `role` of the resets that no middlebox sent.
const NO_ROLE: &str = "none";
/// Every verdict with each role it can have: the series of `flagtrace_reset_flows`.
const VERDICT_ROLES: [(ResetBy, Option<MiddleboxRole>); 4] = [
    (ResetBy::Endpoint, None),
    (ResetBy::Middlebox, Some(MiddleboxRole::Proxy)),
    (ResetBy::Middlebox, Some(MiddleboxRole::OnPath)),
    (ResetBy::Unknown, None),
];

/// What one scrape reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub counters: Counters,
    /// Entries in the flow table.
    pub flows: usize,
    pub flow_capacity: u32,
    /// Every flow that carried a RST.
    pub resets: Vec<ResetFlow>,
}

/// A flow that carried a RST: who sent it, and through which gateway.
#[derive(Clone, Debug)]
pub struct ResetFlow {
    pub reset_by: ResetBy,
    /// For a middlebox's RST, what the box had to do with the connection.
    pub role: Option<MiddleboxRole>,
    pub gateway: Option<(MacAddr, Vendor)>,
}

/// The metric families of one attachment, registered once; each [`Metrics::render`] sets them
/// from a snapshot. Every series carries `iface`, and `netns` when the attachment is in a named
/// namespace.
pub struct Metrics {
    registry: Registry,
    packets: IntCounterVec,
    tcp_packets: IntCounterVec,
    tcp_flags: IntCounterVec,
    resets_unrecorded: IntCounterVec,
    parse_errors: IntCounterVec,
    flows_created: IntCounterVec,
    watch_events: IntCounterVec,
    watch_events_dropped: IntCounterVec,
    flows: IntGaugeVec,
    flow_capacity: IntGaugeVec,
    reset_flows: IntGaugeVec,
    reset_flows_by_gateway: IntGaugeVec,
}

impl Metrics {
    pub fn new(attachment: &Attachment) -> anyhow::Result<Metrics> {
        let mut attachment_labels = HashMap::from([("iface".to_owned(), attachment.iface.clone())]);
        if let Some(netns) = attachment.netns.name() {
            attachment_labels.insert("netns".to_owned(), netns.to_owned());
        }
        let families = Families {
            registry: Registry::new(),
            attachment_labels,
        };
        let direction = &["direction"];
        Ok(Metrics {
            packets: families.counters(
                "flagtrace_packets_total",
                "Packets seen by the hook: TCP, other, and those that failed to parse.",
                direction,
            )?,
            tcp_packets: families.counters(
                "flagtrace_tcp_packets_total",
                "TCP packets seen by the hook.",
                direction,
            )?,
            tcp_flags: families.counters(
                "flagtrace_tcp_flags_total",
                "TCP packets by flag: SYN without ACK, SYN with ACK, any with FIN, any with RST.",
                &["direction", "flag"],
            )?,
            resets_unrecorded: families.counters(
                "flagtrace_resets_unrecorded_total",
                "RSTs of flows that found no room in the reset evidence table: counted, never \
                 judged.",
                direction,
            )?,
            parse_errors: families.counters(
                "flagtrace_parse_errors_total",
                "Packets whose headers were cut short or malformed.",
                direction,
            )?,
            flows_created: families.counters(
                "flagtrace_flows_created_total",
                "Flow-table entries created by the hook.",
                direction,
            )?,
            watch_events: families.counters(
                "flagtrace_watch_events_total",
                "Packets sent to `flagtrace watch`.",
                direction,
            )?,
            watch_events_dropped: families.counters(
                "flagtrace_watch_events_dropped_total",
                "Packets for `flagtrace watch` not sent: over the rate limit, or the ring buffer \
                 full.",
                direction,
            )?,
            flows: families.gauges("flagtrace_flows", "Entries in the flow table.", &[])?,
            flow_capacity: families.gauges(
                "flagtrace_flow_table_capacity",
                "Capacity of the flow table; when full, the least recently used flow makes room.",
                &[],
            )?,
            reset_flows: families.gauges(
                "flagtrace_reset_flows",
                "Flows in the flow table that carried a RST, by who sent it, as `flagtrace \
                 resets` judges; a middlebox's by its role (proxy or on_path), the others' none.",
                &["verdict", "role"],
            )?,
            reset_flows_by_gateway: families.gauges(
                "flagtrace_reset_flows_by_gateway",
                "flagtrace_reset_flows by gateway MAC and vendor: the gateways with the most, the \
                 rest as gateway_mac=\"other\", flows without a MAC as gateway_mac=\"none\".",
                &["gateway_mac", "vendor", "verdict"],
            )?,
            registry: families.registry,
        })
    }

    /// The text format of `snapshot`. Every family is set anew: the counters to the kernel's
    /// totals, and the labelled series to this snapshot's only, so that a gateway that left the
    /// top list does not linger.
    pub fn render(&mut self, snapshot: &Snapshot) -> anyhow::Result<String> {
        let hooks = [
            ("ingress", snapshot.counters.ingress),
            ("egress", snapshot.counters.egress),
        ];
        let per_hook = |count: fn(&GlobalCounters) -> u64| {
            hooks.map(|(direction, counters)| (vec![direction.to_owned()], count(&counters)))
        };
        set_counters(&self.packets, per_hook(GlobalCounters::packets));
        set_counters(&self.tcp_packets, per_hook(|c| c.tcp()));
        set_counters(
            &self.tcp_flags,
            hooks.iter().flat_map(|(direction, c)| {
                [
                    ("syn", c.syn()),
                    ("syn_ack", c.syn_ack()),
                    ("fin", c.fin()),
                    ("rst", c.rst()),
                ]
                .map(|(flag, count)| (vec![direction.to_string(), flag.to_owned()], count))
            }),
        );
        set_counters(&self.resets_unrecorded, per_hook(|c| c.resets_unrecorded));
        set_counters(&self.parse_errors, per_hook(|c| c.parse_errors));
        set_counters(&self.flows_created, per_hook(|c| c.flows_created));
        set_counters(&self.watch_events, per_hook(|c| c.events));
        set_counters(&self.watch_events_dropped, per_hook(|c| c.events_dropped));
        set_gauges(&self.flows, [(vec![], snapshot.flows as u64)]);
        set_gauges(
            &self.flow_capacity,
            [(vec![], u64::from(snapshot.flow_capacity))],
        );
        set_gauges(
            &self.reset_flows,
            VERDICT_ROLES.map(|(verdict, role)| {
                let count = snapshot
                    .resets
                    .iter()
                    .filter(|reset| reset.reset_by == verdict && reset.role == role)
                    .count();
                let role = role.map_or(NO_ROLE, MiddleboxRole::as_str);
                (
                    vec![verdict.as_str().to_owned(), role.to_owned()],
                    count as u64,
                )
            }),
        );
        set_gauges(
            &self.reset_flows_by_gateway,
            gateway_samples(&snapshot.resets),
        );
        let mut text = String::new();
        TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut text)
            .context("encoding the metrics")?;
        Ok(text)
    }
}

/// Creates the metric families of one attachment, each with the attachment's labels, in one
/// registry.
struct Families {
    registry: Registry,
    attachment_labels: HashMap<String, String>,
}

/// Values of the variable labels of one series, and its value.
type Sample = (Vec<String>, u64);

impl Families {
    fn opts(&self, name: &str, help: &str) -> Opts {
        Opts::new(name, help).const_labels(self.attachment_labels.clone())
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> anyhow::Result<IntCounterVec> {
        let family = IntCounterVec::new(self.opts(name, help), labels)?;
        self.registry.register(Box::new(family.clone()))?;
        Ok(family)
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> anyhow::Result<IntGaugeVec> {
        let family = IntGaugeVec::new(self.opts(name, help), labels)?;
        self.registry.register(Box::new(family.clone()))?;
        Ok(family)
    }
}

/// Makes `samples` the series of a counter family. The kernel's counters are totals: a counter
/// can only be added to, so the series start again from nothing.
fn set_counters(family: &IntCounterVec, samples: impl IntoIterator<Item = Sample>) {
    family.reset();
    for (values, count) in samples {
        family.with_label_values(&values).inc_by(count);
    }
}

/// Makes `samples` the series of a gauge family.
fn set_gauges(family: &IntGaugeVec, samples: impl IntoIterator<Item = Sample>) {
    family.reset();
    for (values, count) in samples {
        family
            .with_label_values(&values)
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// Flows with a RST by gateway and verdict, as `[gateway_mac, vendor, verdict]` samples: the
/// [`TOP_GATEWAYS`] gateways with the most such flows (ties by MAC), the others summed under
/// [`OTHER_GATEWAYS`], and the flows without a gateway MAC under [`NO_GATEWAY`]. The vendor is
/// the registry's organization, empty when there is none.
fn gateway_samples(resets: &[ResetFlow]) -> Vec<Sample> {
    #[derive(Default)]
    struct Tally {
        vendor: String,
        total: u64,
        by_verdict: [u64; VERDICTS.len()],
    }
    impl Tally {
        fn add(&mut self, reset_by: ResetBy, count: u64) {
            let index = VERDICTS.iter().position(|v| *v == reset_by);
            self.by_verdict[index.expect("VERDICTS has every verdict")] += count;
            self.total += count;
        }
    }

    let mut gateways: HashMap<MacAddr, Tally> = HashMap::new();
    let mut no_gateway = Tally::default();
    for reset in resets {
        match &reset.gateway {
            Some((mac, vendor)) => gateways
                .entry(*mac)
                .or_insert_with(|| Tally {
                    vendor: vendor.organization().unwrap_or_default().to_owned(),
                    ..Tally::default()
                })
                .add(reset.reset_by, 1),
            None => no_gateway.add(reset.reset_by, 1),
        }
    }
    let mut ranked: Vec<(MacAddr, Tally)> = gateways.into_iter().collect();
    ranked.sort_by_key(|(mac, tally)| (std::cmp::Reverse(tally.total), *mac));
    let mut other = Tally::default();
    for (_, tally) in ranked.drain(TOP_GATEWAYS.min(ranked.len())..) {
        for (verdict, count) in VERDICTS.iter().zip(tally.by_verdict) {
            other.add(*verdict, count);
        }
    }
    let named = ranked
        .into_iter()
        .map(|(mac, tally)| (mac.to_string(), tally));
    let pooled = [(OTHER_GATEWAYS, other), (NO_GATEWAY, no_gateway)]
        .into_iter()
        .map(|(name, tally)| (name.to_owned(), tally));
    named
        .chain(pooled)
        .flat_map(|(gateway, tally)| {
            VERDICTS
                .iter()
                .zip(tally.by_verdict)
                .filter(|(_, count)| *count > 0)
                .map(move |(verdict, count)| {
                    let labels = vec![
                        gateway.clone(),
                        tally.vendor.clone(),
                        verdict.as_str().to_owned(),
                    ];
                    (labels, count)
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::sys::netns::Netns;
    use tracer_common::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

    fn lab() -> Attachment {
        Attachment {
            netns: Netns::Named("lab".into()),
            iface: "veth0".into(),
        }
    }

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x00, 0x01, 0xd7, 0, 0, last])
    }

    fn f5() -> Vendor {
        Vendor::Organization("F5 Networks, Inc.".into())
    }

    fn resets(
        gateway: Option<(MacAddr, Vendor)>,
        reset_by: ResetBy,
        count: usize,
    ) -> Vec<ResetFlow> {
        let role = (reset_by == ResetBy::Middlebox).then_some(MiddleboxRole::OnPath);
        vec![
            ResetFlow {
                reset_by,
                role,
                gateway
            };
            count
        ]
    }

    /// What a fresh endpoint serves for `snapshot`.
    fn render(attachment: &Attachment, snapshot: &Snapshot) -> String {
        Metrics::new(attachment).unwrap().render(snapshot).unwrap()
    }

    /// The samples of the text format: `name{labels} value` lines.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|line| !line.starts_with('#')).collect()
    }

    fn value_of<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        samples(text)
            .into_iter()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn counters_by_direction_and_flag_with_the_attachment_labels() {
        let mut ingress = GlobalCounters {
            non_tcp: 2,
            parse_errors: 1,
            ..GlobalCounters::default()
        };
        for (flags, packets) in [(TCP_ACK, 3), (TCP_SYN | TCP_ACK, 3), (TCP_RST, 4)] {
            ingress.count_tcp(flags, packets);
        }
        let mut egress = GlobalCounters {
            flows_created: 5,
            events: 6,
            events_dropped: 2,
            resets_unrecorded: 3,
            ..GlobalCounters::default()
        };
        for (flags, packets) in [(TCP_ACK, 1), (TCP_SYN, 5), (TCP_FIN | TCP_ACK, 1)] {
            egress.count_tcp(flags, packets);
        }
        let snapshot = Snapshot {
            counters: Counters { ingress, egress },
            flows: 5,
            flow_capacity: 262_144,
            resets: Vec::new(),
        };
        let text = render(&lab(), &snapshot);
        let expected = [
            (
                r#"flagtrace_packets_total{direction="ingress",iface="veth0",netns="lab"}"#,
                "13",
            ),
            (
                r#"flagtrace_packets_total{direction="egress",iface="veth0",netns="lab"}"#,
                "7",
            ),
            (
                r#"flagtrace_tcp_packets_total{direction="ingress",iface="veth0",netns="lab"}"#,
                "10",
            ),
            (
                r#"flagtrace_tcp_flags_total{direction="egress",flag="syn",iface="veth0",netns="lab"}"#,
                "5",
            ),
            (
                r#"flagtrace_tcp_flags_total{direction="ingress",flag="syn_ack",iface="veth0",netns="lab"}"#,
                "3",
            ),
            (
                r#"flagtrace_tcp_flags_total{direction="ingress",flag="rst",iface="veth0",netns="lab"}"#,
                "4",
            ),
            (
                r#"flagtrace_tcp_flags_total{direction="egress",flag="fin",iface="veth0",netns="lab"}"#,
                "1",
            ),
            (
                r#"flagtrace_tcp_flags_total{direction="ingress",flag="syn",iface="veth0",netns="lab"}"#,
                "0",
            ),
            (
                r#"flagtrace_parse_errors_total{direction="ingress",iface="veth0",netns="lab"}"#,
                "1",
            ),
            (
                r#"flagtrace_flows_created_total{direction="egress",iface="veth0",netns="lab"}"#,
                "5",
            ),
            (
                r#"flagtrace_watch_events_total{direction="egress",iface="veth0",netns="lab"}"#,
                "6",
            ),
            (
                r#"flagtrace_watch_events_dropped_total{direction="egress",iface="veth0",netns="lab"}"#,
                "2",
            ),
            (
                r#"flagtrace_resets_unrecorded_total{direction="egress",iface="veth0",netns="lab"}"#,
                "3",
            ),
            (r#"flagtrace_flows{iface="veth0",netns="lab"}"#, "5"),
            (
                r#"flagtrace_flow_table_capacity{iface="veth0",netns="lab"}"#,
                "262144",
            ),
            (
                r#"flagtrace_reset_flows{iface="veth0",netns="lab",role="on_path",verdict="middlebox"}"#,
                "0",
            ),
        ];
        for (series, value) in expected {
            assert_eq!(value_of(&text, series), Some(value), "{series} in\n{text}");
        }
        // Two directions times four flags, and no gateway series without resets.
        let flag_series = samples(&text)
            .into_iter()
            .filter(|line| line.starts_with("flagtrace_tcp_flags_total{"))
            .count();
        assert_eq!(flag_series, 8, "{text}");
        assert!(
            !text.contains("flagtrace_reset_flows_by_gateway{"),
            "{text}"
        );
    }

    #[test]
    fn every_family_is_flagtrace_typed_and_documented() {
        let snapshot = Snapshot {
            resets: resets(None, ResetBy::Unknown, 1),
            ..Snapshot::default()
        };
        let text = render(&lab(), &snapshot);
        let names: BTreeSet<&str> = samples(&text)
            .into_iter()
            .map(|line| line.split(['{', ' ']).next().unwrap())
            .collect();
        assert_eq!(names.len(), 12, "{names:?}");
        for name in names {
            assert!(name.starts_with("flagtrace_"), "{name}");
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
    }

    #[test]
    fn the_host_namespace_has_no_netns_label() {
        let host = Attachment {
            netns: Netns::Host,
            iface: "eth0".into(),
        };
        let text = render(&host, &Snapshot::default());
        assert_eq!(
            value_of(&text, r#"flagtrace_flows{iface="eth0"}"#),
            Some("0")
        );
        assert!(!text.contains("netns="), "{text}");
    }

    #[test]
    fn resets_by_verdict_and_by_gateway() {
        let snapshot = Snapshot {
            resets: [
                resets(Some((mac(1), f5())), ResetBy::Middlebox, 3),
                resets(Some((mac(1), f5())), ResetBy::Endpoint, 1),
                resets(
                    Some((mac(2), Vendor::LocallyAdministered)),
                    ResetBy::Unknown,
                    1,
                ),
                resets(None, ResetBy::Endpoint, 2),
            ]
            .concat(),
            ..Snapshot::default()
        };
        let text = render(&lab(), &snapshot);
        let by_gateway = |mac: &str, vendor: &str, verdict: &str| {
            let series = format!(
                "flagtrace_reset_flows_by_gateway{{gateway_mac=\"{mac}\",iface=\"veth0\",netns=\"lab\",vendor=\"{vendor}\",verdict=\"{verdict}\"}}"
            );
            value_of(&text, &series).map(str::to_owned)
        };
        let some = |value: &str| Some(value.to_owned());
        assert_eq!(
            by_gateway("00:01:d7:00:00:01", "F5 Networks, Inc.", "middlebox"),
            some("3")
        );
        assert_eq!(
            by_gateway("00:01:d7:00:00:01", "F5 Networks, Inc.", "endpoint"),
            some("1")
        );
        assert_eq!(by_gateway("00:01:d7:00:00:02", "", "unknown"), some("1"));
        assert_eq!(by_gateway("none", "", "endpoint"), some("2"));
        // Zero counts have no per-gateway series, and nothing went to "other".
        assert_eq!(
            by_gateway("00:01:d7:00:00:01", "F5 Networks, Inc.", "unknown"),
            None
        );
        let pooled = samples(&text)
            .into_iter()
            .any(|line| line.contains("gateway_mac=\"other\""));
        assert!(!pooled, "{text}");
        let by_role = [
            ("endpoint", "none", "3"),
            ("middlebox", "on_path", "3"),
            ("middlebox", "proxy", "0"),
            ("unknown", "none", "1"),
        ];
        for (verdict, role, count) in by_role {
            let series = format!(
                "flagtrace_reset_flows{{iface=\"veth0\",netns=\"lab\",role=\"{role}\",verdict=\"{verdict}\"}}"
            );
            assert_eq!(value_of(&text, &series), Some(count), "{series}");
        }
    }

    #[test]
    fn only_the_top_gateways_get_series_of_their_own() {
        // Gateway n has n + 1 middlebox resets, so the top ones are the last TOP_GATEWAYS.
        let gateways = TOP_GATEWAYS as u8 + 5;
        let snapshot: Vec<ResetFlow> = (0..gateways)
            .flat_map(|n| resets(Some((mac(n), f5())), ResetBy::Middlebox, usize::from(n) + 1))
            .collect();
        let samples = gateway_samples(&snapshot);
        assert_eq!(samples.len(), TOP_GATEWAYS + 1, "{samples:?}");
        let named: Vec<String> = samples[..TOP_GATEWAYS]
            .iter()
            .map(|(labels, _)| labels[0].clone())
            .collect();
        let expected: Vec<String> = (5..gateways).rev().map(|n| mac(n).to_string()).collect();
        assert_eq!(named, expected);
        // The five smallest, with 1 + 2 + 3 + 4 + 5 resets, summed.
        let other = (
            vec!["other".to_owned(), String::new(), "middlebox".to_owned()],
            15,
        );
        assert_eq!(samples[TOP_GATEWAYS], other);
        // Ties are broken by MAC, so the series do not flap between scrapes.
        let tied: Vec<ResetFlow> = (0..gateways)
            .rev()
            .flat_map(|n| resets(Some((mac(n), f5())), ResetBy::Endpoint, 1))
            .collect();
        let samples = gateway_samples(&tied);
        assert_eq!(samples[0].0[0], mac(0).to_string());
        assert_eq!(samples[TOP_GATEWAYS].1, 5);
    }

    #[test]
    fn each_scrape_renders_only_its_own_snapshot() {
        let mut counters = Counters::default();
        counters.ingress.count_tcp(TCP_RST, 9);
        let busy = Snapshot {
            counters,
            flows: 9,
            resets: [
                resets(Some((mac(1), f5())), ResetBy::Middlebox, 3),
                resets(Some((mac(2), f5())), ResetBy::Endpoint, 2),
            ]
            .concat(),
            ..Snapshot::default()
        };
        let mut counters = Counters::default();
        counters.egress.count_tcp(TCP_SYN, 1);
        let quiet = Snapshot {
            counters,
            flows: 1,
            resets: resets(Some((mac(2), f5())), ResetBy::Endpoint, 1),
            ..Snapshot::default()
        };
        let mut endpoint = Metrics::new(&lab()).unwrap();
        for snapshot in [&busy, &quiet, &busy, &Snapshot::default(), &quiet] {
            assert_eq!(
                endpoint.render(snapshot).unwrap(),
                render(&lab(), snapshot),
                "{snapshot:?}"
            );
        }
        // The gateway that left has no series in the quiet scrape.
        let quiet_text = endpoint.render(&quiet).unwrap();
        assert!(!quiet_text.contains("00:01:d7:00:00:01"), "{quiet_text}");
    }
}
