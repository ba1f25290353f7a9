//! How `flows` and `stats` print: aligned tables for people, JSON lines for programs.

use serde::Serialize;
use tracer_common::{FlagCounts, GlobalCounters};

use crate::{
    clock::ClockSnapshot, flow::FlowRecord, flow::State, maps::Counters, pins::Attachment,
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

/// One line of `flows --json`.
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
}

/// One flow as a JSON line (without the newline).
pub fn flow_json(attachment: &Attachment, flow: &FlowRecord, clock: &ClockSnapshot) -> String {
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
    };
    serde_json::to_string(&line).expect("a flow always serializes")
}

/// Flows as a table: flag totals, and RST split by direction since that answers "who reset it".
pub fn flows_table(flows: &[(Attachment, FlowRecord)], clock: &ClockSnapshot) -> String {
    let mut table = Table::new(&[
        "IFACE",
        "NETNS",
        "CLIENT",
        "SERVER",
        "STATE",
        "SYN",
        "SYN_ACK",
        "FIN",
        "RST(C>S/S>C)",
        "FIRST_SEEN",
        "LAST_SEEN",
    ]);
    for (attachment, flow) in flows {
        let totals = flow.totals();
        table.push(vec![
            attachment.iface.clone(),
            netns_cell(attachment),
            flow.client.to_string(),
            flow.server.to_string(),
            flow.state.to_string(),
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
            packets: c.packets,
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
            c.packets.to_string(),
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
    use crate::netns::Netns;

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
        FlowRecord::new(&key, &value).unwrap()
    }

    fn lab(iface: &str) -> Attachment {
        Attachment {
            netns: Netns::Named("lab".into()),
            iface: iface.into(),
        }
    }

    #[test]
    fn flow_json_has_the_documented_shape() {
        let line = flow_json(&lab("veth0"), &refused_flow(), &clock());
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
            })
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn host_namespace_is_null_in_json() {
        let host = Attachment {
            netns: Netns::Host,
            iface: "eth0".into(),
        };
        let value: serde_json::Value =
            serde_json::from_str(&flow_json(&host, &refused_flow(), &clock())).unwrap();
        assert_eq!(value["netns"], serde_json::Value::Null);
    }

    #[test]
    fn flows_table_aligns_columns() {
        let flows = [
            (lab("veth0"), refused_flow()),
            (lab("veth-long"), refused_flow()),
        ];
        let text = flows_table(&flows, &clock());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("IFACE      NETNS  CLIENT          SERVER       STATE"));
        assert!(lines[1].starts_with("veth0      lab    10.0.0.1:40000  10.0.0.2:80  refused"));
        assert!(lines[1].contains("  1    0        0    0/1           2023-11-14T22:13:10.000000Z"));
        let state_column = lines[0].find("STATE").unwrap();
        assert!(lines
            .iter()
            .all(|line| line[state_column..].starts_with(['S', 'r'])));
    }

    #[test]
    fn stats_json_and_text() {
        let stats = AttachmentStats {
            attachment: lab("veth0"),
            counters: Counters {
                ingress: GlobalCounters {
                    packets: 5,
                    tcp: 4,
                    non_tcp: 1,
                    parse_errors: 0,
                    flows_created: 1,
                },
                egress: GlobalCounters {
                    packets: 3,
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
