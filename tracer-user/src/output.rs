//! How `flows`, `resets` and `stats` print: aligned tables and plain lines for people, JSON lines
//! for programs.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;
use tracer_common::{FlagCounts, GlobalCounters};

use crate::{
    clock::ClockSnapshot,
    flow::State,
    mac::MacAddr,
    maps::Counters,
    pins::Attachment,
    report::{FlowReport, Gateway},
    verdict::{ResetBy, Verdict},
};

/// Left-aligned columns separated by two spaces.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|title| title.to_string()).collect()],
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                let cells = self.rows.iter().filter_map(|row| row.get(column));
                cells.map(|cell| cell.chars().count()).max().unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let cells = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:width$}"));
            out += cells.collect::<Vec<_>>().join("  ").trim_end();
            out.push('\n');
        }
        out
    }
}

/// The four flag counts, as JSON.
#[derive(Debug, Serialize)]
struct FlagCountsJson {
    syn: u32,
    syn_ack: u32,
    fin: u32,
    rst: u32,
}

impl From<FlagCounts> for FlagCountsJson {
    fn from(counts: FlagCounts) -> Self {
        FlagCountsJson {
            syn: counts.syn,
            syn_ack: counts.syn_ack,
            fin: counts.fin,
            rst: counts.rst,
        }
    }
}

/// One line of `flows --json` and `resets --json`.
#[derive(Debug, Serialize)]
struct FlowJson<'a> {
    iface: &'a str,
    netns: Option<&'a str>,
    client: String,
    server: String,
    /// Totals over both directions, as top-level keys.
    #[serde(flatten)]
    totals: FlagCountsJson,
    client_to_server: FlagCountsJson,
    server_to_client: FlagCountsJson,
    state: State,
    first_seen: String,
    last_seen: String,
    reset_by: Option<ResetBy>,
    evidence: &'a [String],
    gateway_mac: Option<String>,
    gateway_vendor: Option<&'a str>,
    gateway_ip: Option<IpAddr>,
    gateway_is_default: bool,
}

/// One flow as a JSON line (without the newline).
pub fn flow_json(report: &FlowReport, clock: &ClockSnapshot) -> String {
    let (attachment, flow) = (&report.attachment, &report.flow);
    let gateway = report.gateway.as_ref();
    let neighbour = gateway.and_then(|gateway| gateway.neighbour);
    let line = FlowJson {
        iface: &attachment.iface,
        netns: attachment.netns.name(),
        client: flow.client.to_string(),
        server: flow.server.to_string(),
        totals: flow.totals().into(),
        client_to_server: flow.client_to_server.into(),
        server_to_client: flow.server_to_client.into(),
        state: flow.state,
        first_seen: clock.rfc3339(flow.first_seen_ns),
        last_seen: clock.rfc3339(flow.last_seen_ns),
        reset_by: report.verdict.as_ref().map(|verdict| verdict.reset_by),
        evidence: report
            .verdict
            .as_ref()
            .map_or(&[], |verdict| verdict.evidence.as_slice()),
        gateway_mac: gateway.map(|gateway| gateway.mac.to_string()),
        gateway_vendor: gateway.and_then(|gateway| gateway.vendor.organization()),
        gateway_ip: neighbour.map(|neighbour| neighbour.ip),
        gateway_is_default: neighbour.is_some_and(|neighbour| neighbour.is_default),
    };
    serde_json::to_string(&line).expect("a flow always serializes")
}

/// Flows as a table: flag totals, RST split by direction, and who sent the RST.
pub fn flows_table(reports: &[FlowReport], clock: &ClockSnapshot) -> String {
    let mut table = Table::new(&[
        "IFACE",
        "NETNS",
        "CLIENT",
        "SERVER",
        "STATE",
        "RESET_BY",
        "SYN",
        "SYN_ACK",
        "FIN",
        "RST(C>S/S>C)",
        "FIRST_SEEN",
        "LAST_SEEN",
    ]);
    for report in reports {
        let (attachment, flow) = (&report.attachment, &report.flow);
        let totals = flow.totals();
        table.push(vec![
            attachment.iface.clone(),
            netns_cell(attachment),
            flow.client.to_string(),
            flow.server.to_string(),
            flow.state.to_string(),
            report
                .verdict
                .as_ref()
                .map_or("-", |verdict| verdict.reset_by.as_str())
                .to_owned(),
            totals.syn.to_string(),
            totals.syn_ack.to_string(),
            totals.fin.to_string(),
            format!(
                "{}/{}",
                flow.client_to_server.rst, flow.server_to_client.rst
            ),
            clock.rfc3339(flow.first_seen_ns),
            clock.rfc3339(flow.last_seen_ns),
        ]);
    }
    table.render()
}

/// The flows of `reports` that carry a verdict, for people: one group per interface, gateway
/// and server address, led by a header line, then one line per flow; both in the order of their
/// first RST. A flow's line reads e.g. `10.0.2.1:443 <- reset by a middlebox via 00:01:d7:3c:5e:01 (F5 Networks, Inc.),
/// gateway 10.0.1.254: RST TTL 64 (0 hops) vs server TTL 127 (1 hop) [client ..., time]`.
pub fn resets_text(reports: &[FlowReport], clock: &ClockSnapshot) -> String {
    type GroupKey<'a> = (&'a Attachment, Option<MacAddr>, IpAddr);
    let mut groups: BTreeMap<GroupKey, Vec<(&FlowReport, &Verdict)>> = BTreeMap::new();
    for report in reports {
        if let Some(verdict) = &report.verdict {
            let gateway = report.gateway.as_ref().map(|gateway| gateway.mac);
            groups
                .entry((&report.attachment, gateway, report.flow.server.ip()))
                .or_default()
                .push((report, verdict));
        }
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    for (_, members) in &mut groups {
        members.sort_by_key(|(report, _)| report.flow.first_rst_ns());
    }
    // Groups in the order of their first reset, like the lines within them.
    groups.sort_by_key(|(_, members)| members[0].0.flow.first_rst_ns());
    let mut blocks = Vec::new();
    for ((attachment, _, server), members) in groups {
        let gateway = members[0].0.gateway.as_ref();
        let mut block = format!(
            "server {server}{} on {attachment}: {}\n",
            gateway.map_or(", no gateway MAC seen".to_owned(), |g| via(g, server, true)),
            verdict_counts(members.iter().map(|(_, verdict)| verdict.reset_by))
        );
        for (report, verdict) in members {
            let flow = &report.flow;
            block += &format!(
                "  {} <- {}{}: {} [client {}, {}]\n",
                flow.server,
                reset_by_phrase(verdict),
                report
                    .gateway
                    .as_ref()
                    .map_or(String::new(), |g| via(g, server, false)),
                verdict.summary,
                flow.client,
                clock.rfc3339(flow.first_rst_ns().unwrap_or(flow.last_seen_ns)),
            );
        }
        blocks.push(block);
    }
    blocks.join("\n")
}

/// ` via MAC (vendor), gateway IP`, saying when the gateway is the default route's, or when
/// the MAC is the server's own (a flat segment).
fn via(gateway: &Gateway, server: IpAddr, say_default: bool) -> String {
    let mut text = format!(" via {} ({})", gateway.mac, gateway.vendor.describe());
    match gateway.neighbour {
        Some(neighbour) if neighbour.ip == server => text += ", directly connected",
        Some(neighbour) => {
            text += &format!(", gateway {}", neighbour.ip);
            if say_default && neighbour.is_default {
                text += " (default route)";
            }
        }
        None => {}
    }
    text
}

fn reset_by_phrase(verdict: &Verdict) -> String {
    let side = verdict.rst_from;
    match verdict.reset_by {
        ResetBy::Middlebox => "reset by a middlebox".to_owned(),
        ResetBy::Endpoint => format!("reset by the {side} itself"),
        ResetBy::Unknown => format!("reset by the {side} or a middlebox (unknown)"),
    }
}

/// `3 resets: 2 by a middlebox, 1 by the endpoint`.
fn verdict_counts(verdicts: impl Iterator<Item = ResetBy>) -> String {
    let mut counts = [0usize; 3];
    for reset_by in verdicts {
        counts[reset_by as usize] += 1;
    }
    let total: usize = counts.iter().sum();
    let parts: Vec<String> = [
        (ResetBy::Middlebox, "by a middlebox"),
        (ResetBy::Endpoint, "by the endpoint"),
        (ResetBy::Unknown, "unknown"),
    ]
    .into_iter()
    .filter(|(reset_by, _)| counts[*reset_by as usize] > 0)
    .map(|(reset_by, what)| format!("{} {what}", counts[reset_by as usize]))
    .collect();
    let resets = if total == 1 { "reset" } else { "resets" };
    format!("{total} {resets}: {}", parts.join(", "))
}

fn netns_cell(attachment: &Attachment) -> String {
    attachment.netns.name().unwrap_or("host").to_owned()
}

/// Global counters of one hook, as JSON.
#[derive(Debug, Serialize)]
struct CountersJson {
    packets: u64,
    tcp: u64,
    non_tcp: u64,
    parse_errors: u64,
    flows_created: u64,
}

impl From<GlobalCounters> for CountersJson {
    fn from(c: GlobalCounters) -> Self {
        CountersJson {
            packets: c.packets(),
            tcp: c.tcp,
            non_tcp: c.non_tcp,
            parse_errors: c.parse_errors,
            flows_created: c.flows_created,
        }
    }
}

/// One line of `stats --json`.
#[derive(Debug, Serialize)]
struct StatsJson<'a> {
    iface: &'a str,
    netns: Option<&'a str>,
    ingress: CountersJson,
    egress: CountersJson,
    total: CountersJson,
    flows: usize,
    max_flows: u32,
}

/// What `stats` reports for one attachment.
pub struct AttachmentStats {
    pub attachment: Attachment,
    pub counters: Counters,
    /// Entries in the flow table now.
    pub flows: usize,
    /// Capacity of the flow table.
    pub max_flows: u32,
}

/// One attachment's stats as a JSON line (without the newline).
pub fn stats_json(stats: &AttachmentStats) -> String {
    let line = StatsJson {
        iface: &stats.attachment.iface,
        netns: stats.attachment.netns.name(),
        ingress: stats.counters.ingress.into(),
        egress: stats.counters.egress.into(),
        total: stats.counters.total().into(),
        flows: stats.flows,
        max_flows: stats.max_flows,
    };
    serde_json::to_string(&line).expect("stats always serialize")
}

/// One attachment's stats for people: a heading with the flow-table fill, then one row per hook
/// and the total.
pub fn stats_text(stats: &AttachmentStats) -> String {
    let mut table = Table::new(&[
        "HOOK",
        "PACKETS",
        "TCP",
        "NON_TCP",
        "PARSE_ERRORS",
        "FLOWS_CREATED",
    ]);
    let hooks = [
        ("ingress", stats.counters.ingress),
        ("egress", stats.counters.egress),
        ("total", stats.counters.total()),
    ];
    for (hook, c) in hooks {
        table.push(vec![
            hook.to_owned(),
            c.packets().to_string(),
            c.tcp.to_string(),
            c.non_tcp.to_string(),
            c.parse_errors.to_string(),
            c.flows_created.to_string(),
        ]);
    }
    format!(
        "{}: {} of {} flow-table entries in use\n{}",
        stats.attachment,
        stats.flows,
        stats.max_flows,
        table.render()
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tracer_common::{FlowKey, FlowValue, FAMILY_IPV4, FIRST_SYN_HI, FIRST_SYN_LO};

    use super::*;
    use crate::{
        flow::FlowRecord, neighbour::NeighbourIp, netns::Netns, oui::Vendor, verdict::Role,
    };

    const SECOND: i128 = 1_000_000_000;

    fn clock() -> ClockSnapshot {
        // Boot time 1000 s corresponds to 2023-11-14T22:13:20Z.
        ClockSnapshot::new(1_700_000_000 * SECOND, 1_000 * SECOND)
    }

    fn refused_flow() -> FlowRecord {
        let client = [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0];
        let server = [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0];
        let (key, client_side) = FlowKey::from_packet(FAMILY_IPV4, 2, client, 40000, server, 80);
        let mut value = FlowValue {
            first_seen_ns: 990 * SECOND as u64,
            last_seen_ns: 990 * SECOND as u64 + 1_500_000,
            first_syn_from: if client_side == 0 {
                FIRST_SYN_LO
            } else {
                FIRST_SYN_HI
            },
            ..FlowValue::default()
        };
        value.sent_by[client_side].syn = 1;
        value.sent_by[1 - client_side].rst = 1;
        FlowRecord::new(&key, &value, None).unwrap()
    }

    fn lab(iface: &str) -> Attachment {
        Attachment {
            netns: Netns::Named("lab".into()),
            iface: iface.into(),
        }
    }

    fn f5_gateway(neighbour: Option<&str>) -> Gateway {
        Gateway {
            mac: "00:01:d7:3c:5e:01".parse().unwrap(),
            vendor: Vendor::Organization("F5 Networks, Inc.".into()),
            neighbour: neighbour.map(|ip| NeighbourIp {
                ip: ip.parse().unwrap(),
                is_default: true,
            }),
        }
    }

    fn middlebox() -> Verdict {
        Verdict {
            reset_by: ResetBy::Middlebox,
            rst_from: Role::Server,
            evidence: vec![
                "RST arrived with TTL 64 (0 hops); the server's packets arrive with TTL 127 (1 hop) on 1 other connection".into(),
            ],
            summary: "RST TTL 64 (0 hops) vs server TTL 127 (1 hop)".into(),
        }
    }

    /// The refused flow, reset by a middlebox behind the F5 gateway 10.0.0.254.
    fn refused_report(iface: &str) -> FlowReport {
        FlowReport {
            attachment: lab(iface),
            flow: refused_flow(),
            verdict: Some(middlebox()),
            gateway: Some(f5_gateway(Some("10.0.0.254"))),
        }
    }

    #[test]
    fn flow_json_has_the_documented_shape() {
        let line = flow_json(&refused_report("veth0"), &clock());
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            json!({
                "iface": "veth0",
                "netns": "lab",
                "client": "10.0.0.1:40000",
                "server": "10.0.0.2:80",
                "syn": 1, "syn_ack": 0, "fin": 0, "rst": 1,
                "client_to_server": {"syn": 1, "syn_ack": 0, "fin": 0, "rst": 0},
                "server_to_client": {"syn": 0, "syn_ack": 0, "fin": 0, "rst": 1},
                "state": "refused",
                "first_seen": "2023-11-14T22:13:10.000000Z",
                "last_seen": "2023-11-14T22:13:10.001500Z",
                "reset_by": "middlebox",
                "evidence": ["RST arrived with TTL 64 (0 hops); the server's packets arrive with TTL 127 (1 hop) on 1 other connection"],
                "gateway_mac": "00:01:d7:3c:5e:01",
                "gateway_vendor": "F5 Networks, Inc.",
                "gateway_ip": "10.0.0.254",
                "gateway_is_default": true,
            })
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn flow_json_without_reset_or_gateway() {
        let host = FlowReport {
            attachment: Attachment {
                netns: Netns::Host,
                iface: "eth0".into(),
            },
            flow: refused_flow(),
            verdict: None,
            gateway: None,
        };
        let value: serde_json::Value = serde_json::from_str(&flow_json(&host, &clock())).unwrap();
        assert_eq!(value["netns"], serde_json::Value::Null);
        assert_eq!(value["reset_by"], serde_json::Value::Null);
        assert_eq!(value["evidence"], json!([]));
        assert_eq!(value["gateway_mac"], serde_json::Value::Null);
        assert_eq!(value["gateway_vendor"], serde_json::Value::Null);
        assert_eq!(value["gateway_ip"], serde_json::Value::Null);
        assert_eq!(value["gateway_is_default"], json!(false));

        // A locally administered MAC has no vendor.
        let local = FlowReport {
            gateway: Some(Gateway {
                mac: "02:00:00:00:00:01".parse().unwrap(),
                vendor: Vendor::LocallyAdministered,
                neighbour: None,
            }),
            ..host
        };
        let value: serde_json::Value = serde_json::from_str(&flow_json(&local, &clock())).unwrap();
        assert_eq!(value["gateway_mac"], json!("02:00:00:00:00:01"));
        assert_eq!(value["gateway_vendor"], serde_json::Value::Null);
    }

    #[test]
    fn flows_table_aligns_columns() {
        let mut quiet = refused_report("veth-long");
        quiet.verdict = None;
        let reports = [refused_report("veth0"), quiet];
        let text = flows_table(&reports, &clock());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0]
            .starts_with("IFACE      NETNS  CLIENT          SERVER       STATE    RESET_BY   SYN"));
        assert!(lines[1].starts_with(
            "veth0      lab    10.0.0.1:40000  10.0.0.2:80  refused  middlebox  1    0        0    0/1           2023-11-14T22:13:10.000000Z"
        ));
        assert!(lines[2]
            .starts_with("veth-long  lab    10.0.0.1:40000  10.0.0.2:80  refused  -          1"));
    }

    #[test]
    fn resets_group_by_gateway_and_server() {
        let at =
            |port: u16, server: &str, rst_s: u64, verdict: Verdict, gateway: Option<Gateway>| {
                let mut flow = refused_flow();
                flow.client.set_port(port);
                flow.server = server.parse().unwrap();
                flow.server_evidence.rst = Some(tracer_common::RstEvidence {
                    first_rst_ns: rst_s * SECOND as u64,
                    ..Default::default()
                });
                FlowReport {
                    attachment: lab("veth0"),
                    flow,
                    verdict: Some(verdict),
                    gateway,
                }
            };
        let endpoint = Verdict {
            reset_by: ResetBy::Endpoint,
            summary: "RST TTL 64 (0 hops) agrees with server TTL 64 (0 hops)".into(),
            ..middlebox()
        };
        let unknown = Verdict {
            reset_by: ResetBy::Unknown,
            summary: "no baseline for the server".into(),
            ..middlebox()
        };
        let mut quiet = refused_report("veth0");
        quiet.verdict = None;
        let reports = [
            at(
                40002,
                "10.0.2.1:443",
                995,
                middlebox(),
                Some(f5_gateway(Some("10.0.1.254"))),
            ),
            quiet,
            at(
                40001,
                "10.0.2.1:443",
                990,
                middlebox(),
                Some(f5_gateway(Some("10.0.1.254"))),
            ),
            at(
                40003,
                "10.0.2.1:8443",
                996,
                endpoint,
                Some(f5_gateway(Some("10.0.1.254"))),
            ),
            at(
                40004,
                "10.0.0.2:25",
                997,
                unknown,
                Some(f5_gateway(Some("10.0.0.2"))),
            ),
            at(40005, "10.0.0.3:25", 998, middlebox(), None),
        ];
        assert_eq!(
            resets_text(&reports, &clock()),
            "server 10.0.2.1 via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), gateway 10.0.1.254 (default route) on veth0 (netns lab): 3 resets: 2 by a middlebox, 1 by the endpoint
  10.0.2.1:443 <- reset by a middlebox via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), gateway 10.0.1.254: RST TTL 64 (0 hops) vs server TTL 127 (1 hop) [client 10.0.0.1:40001, 2023-11-14T22:13:10.000000Z]
  10.0.2.1:443 <- reset by a middlebox via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), gateway 10.0.1.254: RST TTL 64 (0 hops) vs server TTL 127 (1 hop) [client 10.0.0.1:40002, 2023-11-14T22:13:15.000000Z]
  10.0.2.1:8443 <- reset by the server itself via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), gateway 10.0.1.254: RST TTL 64 (0 hops) agrees with server TTL 64 (0 hops) [client 10.0.0.1:40003, 2023-11-14T22:13:16.000000Z]

server 10.0.0.2 via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), directly connected on veth0 (netns lab): 1 reset: 1 unknown
  10.0.0.2:25 <- reset by the server or a middlebox (unknown) via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), directly connected: no baseline for the server [client 10.0.0.1:40004, 2023-11-14T22:13:17.000000Z]

server 10.0.0.3, no gateway MAC seen on veth0 (netns lab): 1 reset: 1 by a middlebox
  10.0.0.3:25 <- reset by a middlebox: RST TTL 64 (0 hops) vs server TTL 127 (1 hop) [client 10.0.0.1:40005, 2023-11-14T22:13:18.000000Z]
"
        );
        assert_eq!(resets_text(&[], &clock()), "");
    }

    #[test]
    fn stats_json_and_text() {
        let stats = AttachmentStats {
            attachment: lab("veth0"),
            counters: Counters {
                ingress: GlobalCounters {
                    tcp: 4,
                    non_tcp: 1,
                    parse_errors: 0,
                    flows_created: 1,
                },
                egress: GlobalCounters {
                    tcp: 3,
                    ..GlobalCounters::default()
                },
            },
            flows: 1,
            max_flows: 1024,
        };
        let value: serde_json::Value = serde_json::from_str(&stats_json(&stats)).unwrap();
        assert_eq!(
            value,
            json!({
                "iface": "veth0",
                "netns": "lab",
                "ingress": {"packets": 5, "tcp": 4, "non_tcp": 1, "parse_errors": 0, "flows_created": 1},
                "egress": {"packets": 3, "tcp": 3, "non_tcp": 0, "parse_errors": 0, "flows_created": 0},
                "total": {"packets": 8, "tcp": 7, "non_tcp": 1, "parse_errors": 0, "flows_created": 1},
                "flows": 1,
                "max_flows": 1024,
            })
        );
        assert_eq!(
            stats_text(&stats),
            "veth0 (netns lab): 1 of 1024 flow-table entries in use\n\
             HOOK     PACKETS  TCP  NON_TCP  PARSE_ERRORS  FLOWS_CREATED\n\
             ingress  5        4    1        0             1\n\
             egress   3        3    0        0             0\n\
             total    8        7    1        0             1\n"
        );
    }
}
