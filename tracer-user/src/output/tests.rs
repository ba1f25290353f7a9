use serde_json::json;
use std::collections::BTreeMap;

use tracer_common::{
    FlowKey, FlowValue, GlobalCounters, Hook, FAMILY_IPV4, FIRST_SYN_HI, FIRST_SYN_LO,
};

use super::{
    records::{csv_header, flat_fields},
    rows::StatsRow,
    text::{flows_table, resets_text, stats_text},
    *,
};
use crate::{
    analysis::{
        flow::{FlowRecord, KeptPayload, RstSeen},
        neighbours::NeighbourIp,
        oui::Vendor,
        phase::Phase,
        report::{Gateway, Origin},
        verdict::{
            BaselineOf, MiddleboxRole, ResetBy, Role, Signal, SignalKind, TtlRelation, Verdict,
            Weight,
        },
    },
    source::Stats,
    sys::{clock::ClockSnapshot, maps::Counters, netns::Netns, pins::Attachment},
};

const SECOND: i128 = 1_000_000_000;
const JSON: OutputFormat = OutputFormat::Records(RecordFormat::Json);
const CSV: OutputFormat = OutputFormat::Records(RecordFormat::Csv);

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
    FlowRecord::decode(&key, &value, None, None, &clock()).unwrap()
}

fn lab(iface: &str) -> Origin {
    Origin::Live(Attachment {
        netns: Netns::Named("lab".into()),
        iface: iface.into(),
    })
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

/// RST TTL 64 against the server's 127 on another connection: a middlebox.
fn middlebox_signal() -> Signal {
    Signal {
        from: Role::Server,
        weight: Weight::Strong,
        kind: SignalKind::TtlComparison {
            hook: Hook::Ingress,
            rst_ttl: 64,
            rst_hops: 0,
            usual_ttl: 127,
            usual_hops: 1,
            baseline: BaselineOf::OtherConnections { count: 1 },
            relation: TtlRelation::OtherDistance,
        },
    }
}

fn middlebox() -> Verdict {
    Verdict {
        reset_by: ResetBy::Middlebox,
        middlebox_role: Some(MiddleboxRole::OnPath),
        rst_from: Role::Server,
        signals: vec![middlebox_signal()],
    }
}

/// The refused flow, reset by a middlebox behind the F5 gateway 10.0.0.254.
fn refused_report(iface: &str) -> FlowReport {
    FlowReport {
        origin: lab(iface),
        flow: refused_flow(),
        verdict: Some(middlebox()),
        phase: Some(Phase::Syn),
        gateway: Some(f5_gateway(Some("10.0.0.254"))),
    }
}

/// What `print` prints through a printer for `format` and `width`.
fn printed(
    format: OutputFormat,
    width: Option<usize>,
    print: impl FnOnce(&mut Printer<Vec<u8>>) -> io::Result<()>,
) -> String {
    let mut printer = Printer::new(Vec::new(), format, width);
    print(&mut printer).unwrap();
    String::from_utf8(printer.out).unwrap()
}

/// The JSON line of one flow, without its newline.
fn flow_json(report: &FlowReport) -> String {
    let reports = std::slice::from_ref(report);
    let text = printed(JSON, None, |p| p.flows(reports));
    text.strip_suffix('\n').unwrap().to_owned()
}

#[test]
fn flow_json_has_the_documented_shape() {
    let line = flow_json(&refused_report("veth0"));
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
            "middlebox_role": "on_path",
            "reset_phase": "syn",
            "reset_delay_ms": null,
            "idle_before_ms": null,
            "tls_sni": null,
            "rst_payload": null,
            "evidence": ["RST arrived with TTL 64 (0 hops); the server's packets arrive with TTL 127 (1 hop) on 1 other connection"],
            "signals": [{
                "from": "server", "weight": "strong", "signal": "ttl_comparison",
                "hook": "ingress", "rst_ttl": 64, "rst_hops": 0, "usual_ttl": 127,
                "usual_hops": 1, "baseline": {"of": "other_connections", "count": 1},
                "relation": "other_distance"
            }],
            "gateway_mac": "00:01:d7:3c:5e:01",
            "gateway_vendor": "F5 Networks, Inc.",
            "gateway_ip": "10.0.0.254",
            "gateway_is_default": true,
            "flow_evicted": false,
        })
    );
    assert!(!line.contains('\n'));
}

#[test]
fn flow_json_without_reset_or_gateway() {
    let host = FlowReport {
        origin: Origin::Live(Attachment {
            netns: Netns::Host,
            iface: "eth0".into(),
        }),
        flow: refused_flow(),
        verdict: None,
        phase: None,
        gateway: None,
    };
    let value: serde_json::Value = serde_json::from_str(&flow_json(&host)).unwrap();
    assert_eq!(value["netns"], serde_json::Value::Null);
    assert_eq!(value["reset_by"], serde_json::Value::Null);
    assert_eq!(value["evidence"], json!([]));
    assert_eq!(value["signals"], json!([]));
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
    let value: serde_json::Value = serde_json::from_str(&flow_json(&local)).unwrap();
    assert_eq!(value["gateway_mac"], json!("02:00:00:00:00:01"));
    assert_eq!(value["gateway_vendor"], serde_json::Value::Null);
}

#[test]
fn flows_table_aligns_columns() {
    let mut quiet = refused_report("veth-long");
    quiet.verdict = None;
    let reports = [refused_report("veth0"), quiet];
    let text = flows_table(&reports).render(None);
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
    let at = |port: u16, server: &str, rst_s: u64, verdict: Verdict, gateway: Option<Gateway>| {
        let mut flow = refused_flow();
        flow.client.set_port(port);
        flow.server = server.parse().unwrap();
        flow.server_evidence.rst = Some(Box::new(RstSeen::at(
            Hook::Ingress,
            clock().unix_ns_u64(rst_s * SECOND as u64),
        )));
        FlowReport {
            origin: lab("veth0"),
            flow,
            verdict: Some(verdict),
            phase: Some(Phase::Syn),
            gateway,
        }
    };
    let agreeing = Signal {
        weight: Weight::Comparison,
        kind: SignalKind::TtlComparison {
            hook: Hook::Ingress,
            rst_ttl: 64,
            rst_hops: 0,
            usual_ttl: 64,
            usual_hops: 0,
            baseline: BaselineOf::ThisConnection,
            relation: TtlRelation::Agrees,
        },
        ..middlebox_signal()
    };
    let endpoint = Verdict {
        reset_by: ResetBy::Endpoint,
        middlebox_role: None,
        signals: vec![agreeing],
        ..middlebox()
    };
    let no_baseline = Signal {
        weight: Weight::Comparison,
        kind: SignalKind::NoBaseline {
            hook: Hook::Ingress,
        },
        ..middlebox_signal()
    };
    let unknown = Verdict {
        reset_by: ResetBy::Unknown,
        middlebox_role: None,
        signals: vec![no_baseline],
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
    // The second: a full proxy's reset after the client's request.
    let mut reports = reports;
    let proxied = &mut reports[0];
    proxied.phase = Some(Phase::Request);
    proxied.verdict = Some(Verdict {
        middlebox_role: Some(MiddleboxRole::Proxy),
        signals: vec![Signal {
            kind: SignalKind::ProxyAnswered {
                hook: Hook::Ingress,
                proxy_ttl: 64,
                proxy_hops: 0,
                host_ttl: 127,
                host_hops: 1,
                connections: 1,
            },
            ..middlebox_signal()
        }],
        ..middlebox()
    });
    assert_eq!(
        resets_text(&reports),
        "server 10.0.2.1 via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), gateway 10.0.1.254 (default route) on veth0 (netns lab): 3 resets: 2 by a middlebox, 1 by the endpoint
  10.0.2.1:443 <- reset by a middlebox via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), gateway 10.0.1.254: RST TTL 64 (0 hops) vs server TTL 127 (1 hop) [client 10.0.0.1:40001, at the SYN, 2023-11-14T22:13:10.000000Z]
  10.0.2.1:443 <- reset by a proxy (a middlebox that answered the handshake) via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), gateway 10.0.1.254: port 443 is answered from 0 hops (TTL 64), the server's other connections from 1 hop (TTL 127) [client 10.0.0.1:40002, after the client's request, 2023-11-14T22:13:15.000000Z]
  10.0.2.1:8443 <- reset by the server itself via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), gateway 10.0.1.254: RST TTL 64 (0 hops) agrees with server TTL 64 (0 hops) [client 10.0.0.1:40003, at the SYN, 2023-11-14T22:13:16.000000Z]

server 10.0.0.2 via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), directly connected on veth0 (netns lab): 1 reset: 1 unknown
  10.0.0.2:25 <- reset by the server or a middlebox (unknown) via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), directly connected: no baseline for the server [client 10.0.0.1:40004, at the SYN, 2023-11-14T22:13:17.000000Z]

server 10.0.0.3, no gateway MAC seen on veth0 (netns lab): 1 reset: 1 by a middlebox
  10.0.0.3:25 <- reset by a middlebox: RST TTL 64 (0 hops) vs server TTL 127 (1 hop) [client 10.0.0.1:40005, at the SYN, 2023-11-14T22:13:18.000000Z]
"
    );
    assert_eq!(resets_text(&[]), "");
}

fn plain_acks(packets: u64, mut counters: GlobalCounters) -> GlobalCounters {
    counters.count_tcp(tracer_common::TCP_ACK, packets);
    counters
}

fn lab_stats(iface: &str) -> Stats {
    Stats {
        origin: lab(iface),
        counters: Counters {
            ingress: plain_acks(
                4,
                GlobalCounters {
                    non_tcp: 1,
                    parse_errors: 0,
                    flows_created: 1,
                    ..GlobalCounters::default()
                },
            ),
            egress: plain_acks(3, GlobalCounters::default()),
        },
        flows: 1,
        max_flows: Some(1024),
    }
}

#[test]
fn stats_json_csv_and_text() {
    let stats = [lab_stats("veth0"), lab_stats("veth1")];
    let json_lines = printed(JSON, None, |p| p.stats(&stats));
    let lines: Vec<&str> = json_lines.lines().collect();
    assert_eq!(lines.len(), 2);
    let value: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(
        value,
        json!({
            "iface": "veth0",
            "netns": "lab",
            "ingress": {"packets": 5, "tcp": 4, "non_tcp": 1, "parse_errors": 0, "flows_created": 1, "syn": 0, "syn_ack": 0, "fin": 0, "rst": 0, "resets_unrecorded": 0, "events": 0, "events_dropped": 0},
            "egress": {"packets": 3, "tcp": 3, "non_tcp": 0, "parse_errors": 0, "flows_created": 0, "syn": 0, "syn_ack": 0, "fin": 0, "rst": 0, "resets_unrecorded": 0, "events": 0, "events_dropped": 0},
            "total": {"packets": 8, "tcp": 7, "non_tcp": 1, "parse_errors": 0, "flows_created": 1, "syn": 0, "syn_ack": 0, "fin": 0, "rst": 0, "resets_unrecorded": 0, "events": 0, "events_dropped": 0},
            "flows": 1,
            "max_flows": 1024,
        })
    );
    assert_eq!(
        printed(CSV, None, |p| p.stats(&stats[..1])),
        format!(
            "{}\nveth0,lab,5,4,1,0,1,0,0,0,0,0,0,0,3,3,0,0,0,0,0,0,0,0,0,0,8,7,1,0,1,0,0,0,0,0,0,0,1,1024\n",
            STATS_COLUMNS.join(",")
        )
    );
    let block = |iface: &str| {
        format!(
            "{iface} (netns lab): 1 of 1024 flow-table entries in use\n\
             HOOK     PACKETS  TCP  NON_TCP  PARSE_ERRORS  FLOWS_CREATED\n\
             ingress  5        4    1        0             1\n\
             egress   3        3    0        0             0\n\
             total    8        7    1        0             1\n"
        )
    };
    assert_eq!(
        printed(OutputFormat::Table, None, |p| p.stats(&stats)),
        block("veth0") + "\n" + &block("veth1")
    );
    // Narrow: the least telling columns go, and the heading is cut.
    assert_eq!(
        stats_text(&stats[..1], Some(40)),
        "veth0 (netns lab): 1 of 1024 flow-table…\n\
         HOOK     PACKETS  TCP  PARSE_ERRORS\n\
         ingress  5        4    0\n\
         egress   3        3    0\n\
         total    8        7    0\n"
    );
}

/// The CSV columns of `flows` and `resets`, as documented in the README: stable.
const FLOW_COLUMNS: [&str; 33] = [
    "iface",
    "netns",
    "client",
    "server",
    "syn",
    "syn_ack",
    "fin",
    "rst",
    "client_to_server_syn",
    "client_to_server_syn_ack",
    "client_to_server_fin",
    "client_to_server_rst",
    "server_to_client_syn",
    "server_to_client_syn_ack",
    "server_to_client_fin",
    "server_to_client_rst",
    "state",
    "first_seen",
    "last_seen",
    "reset_by",
    "middlebox_role",
    "reset_phase",
    "reset_delay_ms",
    "idle_before_ms",
    "tls_sni",
    "rst_payload",
    "evidence",
    "signals",
    "gateway_mac",
    "gateway_vendor",
    "gateway_ip",
    "gateway_is_default",
    "flow_evicted",
];

/// The CSV columns of `stats`, as documented in the README: stable.
const STATS_COLUMNS: [&str; 40] = [
    "iface",
    "netns",
    "ingress_packets",
    "ingress_tcp",
    "ingress_non_tcp",
    "ingress_parse_errors",
    "ingress_flows_created",
    "ingress_syn",
    "ingress_syn_ack",
    "ingress_fin",
    "ingress_rst",
    "ingress_resets_unrecorded",
    "ingress_events",
    "ingress_events_dropped",
    "egress_packets",
    "egress_tcp",
    "egress_non_tcp",
    "egress_parse_errors",
    "egress_flows_created",
    "egress_syn",
    "egress_syn_ack",
    "egress_fin",
    "egress_rst",
    "egress_resets_unrecorded",
    "egress_events",
    "egress_events_dropped",
    "total_packets",
    "total_tcp",
    "total_non_tcp",
    "total_parse_errors",
    "total_flows_created",
    "total_syn",
    "total_syn_ack",
    "total_fin",
    "total_rst",
    "total_resets_unrecorded",
    "total_events",
    "total_events_dropped",
    "flows",
    "max_flows",
];

#[test]
fn csv_headers_are_stable() {
    assert_eq!(csv_header::<FlowRow>(), FLOW_COLUMNS);
    assert_eq!(csv_header::<StatsRow>(), STATS_COLUMNS);
    // With or without the optional values, a row has exactly the header's columns.
    let quiet = FlowReport {
        verdict: None,
        gateway: None,
        ..refused_report("veth0")
    };
    for report in [refused_report("veth0"), quiet] {
        let columns: Vec<String> = flat_fields(&FlowRow::new(&report))
            .into_iter()
            .map(|(column, _)| column)
            .collect();
        assert_eq!(columns, FLOW_COLUMNS);
    }
    let stats = lab_stats("veth0");
    let columns: Vec<String> = flat_fields(&StatsRow::new(&stats))
        .into_iter()
        .map(|(column, _)| column)
        .collect();
    assert_eq!(columns, STATS_COLUMNS);
}

#[test]
fn csv_quotes_commas_and_quotes_and_matches_the_json() {
    let mut report = refused_report("veth0");
    report.verdict.as_mut().unwrap().signals.push(Signal {
        weight: Weight::Supporting,
        kind: SignalKind::PacketsAfterRst {
            rst_seq: 7,
            packets_after: 2,
        },
        ..middlebox_signal()
    });
    report.gateway.as_mut().unwrap().vendor = Vendor::Organization("ACME \"Best\", Inc.".into());
    let reports = [report];
    let csv_text = printed(CSV, None, |p| p.flows(&reports));
    let lines: Vec<&str> = csv_text.lines().collect();
    assert_eq!(lines.len(), 2, "{csv_text}");
    assert_eq!(lines[0], FLOW_COLUMNS.join(","));
    assert_eq!(
        lines[1],
        concat!(
            "veth0,lab,10.0.0.1:40000,10.0.0.2:80,1,0,0,1,1,0,0,0,0,0,0,1,refused,",
            "2023-11-14T22:13:10.000000Z,2023-11-14T22:13:10.001500Z,middlebox,on_path,syn,,,,,",
            r#""[""RST arrived with TTL 64 (0 hops); the server's packets arrive with TTL 127 (1 hop) on 1 other connection"","#,
            r#"""the server sent 2 packets after its RST (sequence 7), none with data at or beyond the RST's sequence""]","#,
            r#""[{""from"":""server"",""weight"":""strong"",""signal"":""ttl_comparison"",""hook"":""ingress"","#,
            r#"""rst_ttl"":64,""rst_hops"":0,""usual_ttl"":127,""usual_hops"":1,""baseline"":{""of"":""other_connections"",""count"":1},"#,
            r#"""relation"":""other_distance""},"#,
            r#"{""from"":""server"",""weight"":""supporting"",""signal"":""packets_after_rst"",""rst_seq"":7,""packets_after"":2}]","#,
            r#"00:01:d7:3c:5e:01,"ACME ""Best"", Inc.",10.0.0.254,true,false"#
        )
    );

    // Read back by a CSV reader, each cell is the JSON value: text as it is, null empty.
    let json_text = printed(JSON, None, |p| p.flows(&reports));
    let json: serde_json::Value = serde_json::from_str(json_text.trim_end()).unwrap();
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header = reader.headers().unwrap().clone();
    let record = reader.records().next().unwrap().unwrap();
    assert_eq!(record.len(), header.len());
    let cells: BTreeMap<&str, &str> = header.iter().zip(record.iter()).collect();
    assert_eq!(cells["gateway_vendor"], "ACME \"Best\", Inc.");
    assert_eq!(cells["client_to_server_syn"], "1");
    assert_eq!(cells["server_to_client_rst"], "1");
    let evidence: serde_json::Value = serde_json::from_str(cells["evidence"]).unwrap();
    assert_eq!(evidence, json["evidence"]);
    let signals: serde_json::Value = serde_json::from_str(cells["signals"]).unwrap();
    assert_eq!(signals, json["signals"]);
    assert_eq!(cells["first_seen"], json["first_seen"]);
}

#[test]
fn csv_of_nothing_is_its_header() {
    let csv_text = printed(CSV, None, |p| p.resets(&[]));
    assert_eq!(csv_text, FLOW_COLUMNS.join(",") + "\n");
    assert_eq!(
        printed(CSV, None, |p| p.stats(&[])),
        STATS_COLUMNS.join(",") + "\n"
    );
    assert_eq!(printed(JSON, None, |p| p.flows(&[])), "");
}

/// A few flows whose full table is wider than 120 columns.
fn several_flows() -> Vec<FlowReport> {
    let mut quiet = refused_report("veth-long");
    quiet.verdict = None;
    let mut v6 = refused_report("veth0");
    v6.flow.client = "[fd00::1]:40000".parse().unwrap();
    v6.flow.server = "[fd00::2]:443".parse().unwrap();
    vec![refused_report("veth0"), quiet, v6]
}

fn flows_at(width: Option<usize>) -> String {
    let reports = several_flows();
    printed(OutputFormat::Table, width, |p| p.flows(&reports))
}

fn max_line(text: &str) -> usize {
    text.lines().map(|line| line.chars().count()).max().unwrap()
}

#[test]
fn flows_table_at_full_width_and_200_columns() {
    let full = flows_at(None);
    assert!(max_line(&full) > 120 && max_line(&full) <= 200, "{full}");
    assert_eq!(flows_at(Some(200)), full);
    let header = full.lines().next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
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
            "LAST_SEEN"
        ]
    );
    assert!(full.contains("2023-11-14T22:13:10.001500Z"));
}

#[test]
fn flows_table_fits_120_columns_with_the_time_of_day() {
    let text = flows_at(Some(120));
    assert!(max_line(&text) <= 120, "{text}");
    // Both times as the time of day would take 124 columns: FIRST_SEEN goes.
    assert_eq!(
        text,
        "IFACE      NETNS  CLIENT           SERVER         STATE    RESET_BY   SYN  SYN_ACK  FIN  RST(C>S/S>C)  LAST_SEEN\n\
         veth0      lab    10.0.0.1:40000   10.0.0.2:80    refused  middlebox  1    0        0    0/1           22:13:10\n\
         veth-long  lab    10.0.0.1:40000   10.0.0.2:80    refused  -          1    0        0    0/1           22:13:10\n\
         veth0      lab    [fd00::1]:40000  [fd00::2]:443  refused  middlebox  1    0        0    0/1           22:13:10\n"
    );
    // A little wider, both stay as the time of day.
    let text = flows_at(Some(124));
    assert!(
        text.lines()
            .next()
            .unwrap()
            .ends_with("FIRST_SEEN  LAST_SEEN"),
        "{text}"
    );
    assert!(!text.contains("2023-"), "{text}");
}

#[test]
fn flows_table_fits_80_columns_keeping_addresses_state_and_counts() {
    let text = flows_at(Some(80));
    assert!(max_line(&text) <= 80, "{text}");
    assert_eq!(
        text,
        "CLIENT           SERVER         STATE    RESET_BY   SYN  SYN_ACK  FIN  RST\n\
         10.0.0.1:40000   10.0.0.2:80    refused  middlebox  1    0        0    0/1\n\
         10.0.0.1:40000   10.0.0.2:80    refused  -          1    0        0    0/1\n\
         [fd00::1]:40000  [fd00::2]:443  refused  middlebox  1    0        0    0/1\n"
    );
}

#[test]
fn flows_table_too_narrow_even_for_the_essentials_is_cut() {
    let text = flows_at(Some(40));
    for line in text.lines() {
        assert_eq!(line.chars().count(), 40, "{text}");
        assert!(line.ends_with('…'), "{text}");
    }
    assert_eq!(
        text,
        "CLIENT           SERVER         STATE  …\n\
         10.0.0.1:40000   10.0.0.2:80    refused…\n\
         10.0.0.1:40000   10.0.0.2:80    refused…\n\
         [fd00::1]:40000  [fd00::2]:443  refused…\n"
    );
}

#[test]
fn tables_fit_the_terminal_only() {
    let no_window = || None;
    let window = || Some(132);
    // Not a terminal: full width, whatever $COLUMNS says.
    assert_eq!(table_width(false, None, window), None);
    assert_eq!(table_width(false, Some("80"), window), None);
    // A terminal: $COLUMNS first, then the window size.
    assert_eq!(table_width(true, Some("80"), window), Some(80));
    assert_eq!(table_width(true, Some(" 100 "), no_window), Some(100));
    assert_eq!(table_width(true, None, window), Some(132));
    for unusable in ["", "0", "wide", "-1"] {
        assert_eq!(table_width(true, Some(unusable), window), Some(132));
    }
    assert_eq!(table_width(true, None, no_window), None);
}

/// The seed story's reset: a proxy's, 3 s after the client's ClientHello for customerweb, with
/// an F5's reset cause in its payload; and, apart, a firewall's idle timeout.
fn proxy_report() -> FlowReport {
    let mut report = refused_report("veth0");
    report.flow.tls_sni = Some("customerweb".into());
    report.flow.server_evidence.rst = Some(Box::new(RstSeen {
        reset_delay_ms: Some(3_000),
        idle_before_ms: Some(40),
        payload: Some(KeptPayload::new(b"No pool member available")),
        ..RstSeen::at(Hook::Ingress, report.flow.last_seen_ns)
    }));
    report.phase = Some(Phase::Request);
    report.verdict.as_mut().unwrap().middlebox_role = Some(MiddleboxRole::Proxy);
    report
}

#[test]
fn a_reset_says_how_long_after_what_it_came_and_what_it_carried() {
    let proxy = proxy_report();
    let value: serde_json::Value = serde_json::from_str(&flow_json(&proxy)).unwrap();
    assert_eq!(value["reset_delay_ms"], 3_000);
    assert_eq!(value["idle_before_ms"], 40);
    assert_eq!(value["tls_sni"], "customerweb");
    assert_eq!(
        value["rst_payload"],
        json!({"bytes": 24, "code": null, "pen": null, "reason": null, "enterprise": null,
               "text": "No pool member available",
               "hex": "4e6f20706f6f6c206d656d62657220617661696c61626c65"})
    );
    // In CSV the payload is one cell of JSON text, like the lists.
    let reports = [proxy.clone()];
    let csv_text = printed(CSV, None, |p| p.flows(&reports));
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header = reader.headers().unwrap().clone();
    let record = reader.records().next().unwrap().unwrap();
    let cells: BTreeMap<&str, &str> = header.iter().zip(record.iter()).collect();
    let payload: serde_json::Value = serde_json::from_str(cells["rst_payload"]).unwrap();
    assert_eq!(payload, value["rst_payload"]);
    assert_eq!(cells["tls_sni"], "customerweb");

    let text = resets_text(&reports);
    assert!(
        text.contains(
            "reset by a proxy (a middlebox that answered the handshake) via 00:01:d7:3c:5e:01 \
             (F5 Networks, Inc.), gateway 10.0.0.254, 3.0 s after the client's TLS ClientHello \
             for customerweb: "
        ),
        "{text}"
    );
    assert!(
        text.contains("; the RST says \"No pool member available\" [client"),
        "{text}"
    );

    // A firewall's idle timeout: the RST answers at once data that came after a silence.
    let mut idle = proxy_report();
    idle.flow.tls_sni = None;
    idle.phase = Some(Phase::Transfer);
    idle.verdict.as_mut().unwrap().middlebox_role = Some(MiddleboxRole::OnPath);
    let rst = idle.flow.server_evidence.rst.as_mut().unwrap();
    (rst.reset_delay_ms, rst.idle_before_ms, rst.payload) = (Some(4), Some(6_000), None);
    let text = resets_text(&[idle]);
    assert!(
        text.contains(
            ", at once after the client's data, which came after 6.0 s of silence (an idle \
             timeout on a stateful box?): "
        ),
        "{text}"
    );
}
