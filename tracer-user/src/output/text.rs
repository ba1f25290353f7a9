//! What people read: the `flows` and `stats` tables, and the `resets` report grouped by gateway
//! and server.

use std::{collections::BTreeMap, net::IpAddr};

use crate::{
    analysis::{
        mac::MacAddr,
        phase::Phase,
        report::{FlowReport, Gateway, Origin},
        rst_payload,
        verdict::{MiddleboxRole, ResetBy, Verdict},
    },
    output::{
        evidence,
        table::{cut, Cell, Narrowing, Table},
    },
    source::Stats,
    sys::{clock::format_rfc3339_utc, maps::Counters},
};

/// What a narrow terminal takes from `flows` first: the times (shortened to the time of day,
/// then dropped), the namespace, the RST column's legend, the interface, and last the verdict.
/// The addresses, the state and the flag counts always stay.
const FLOWS_NARROWING: &[Narrowing] = &[
    Narrowing::Compact(&["FIRST_SEEN", "LAST_SEEN"]),
    Narrowing::Drop("FIRST_SEEN"),
    Narrowing::Drop("LAST_SEEN"),
    Narrowing::Drop("NETNS"),
    Narrowing::Compact(&["RST(C>S/S>C)"]),
    Narrowing::Drop("IFACE"),
    Narrowing::Drop("RESET_BY"),
];

/// Flows as a table: flag totals, RST split by direction, and who sent the RST.
pub fn flows_table(reports: &[FlowReport]) -> Table {
    let mut table = Table::new(
        vec![
            "IFACE".into(),
            "NETNS".into(),
            "CLIENT".into(),
            "SERVER".into(),
            "STATE".into(),
            "RESET_BY".into(),
            "SYN".into(),
            "SYN_ACK".into(),
            "FIN".into(),
            Cell::compact("RST(C>S/S>C)", "RST"),
            "FIRST_SEEN".into(),
            "LAST_SEEN".into(),
        ],
        FLOWS_NARROWING,
    );
    let time = |ns: u64| {
        let stamp = format_rfc3339_utc(ns.into());
        // `2023-11-14T22:13:10.000000Z` -> `22:13:10`.
        let time_of_day = stamp.get(11..19).unwrap_or(&stamp).to_owned();
        Cell::compact(stamp, time_of_day)
    };
    for report in reports {
        let (origin, flow) = (&report.origin, &report.flow);
        let totals = flow.totals();
        table.push(vec![
            origin.iface().into(),
            netns_cell(origin).into(),
            flow.client.to_string().into(),
            flow.server.to_string().into(),
            flow.state.as_str().into(),
            report
                .verdict
                .as_ref()
                .map_or("-", |verdict| verdict.reset_by.as_str())
                .into(),
            totals.syn.to_string().into(),
            totals.syn_ack.to_string().into(),
            totals.fin.to_string().into(),
            format!(
                "{}/{}",
                flow.client_to_server.rst, flow.server_to_client.rst
            )
            .into(),
            time(flow.first_seen_ns),
            time(flow.last_seen_ns),
        ]);
    }
    table
}

/// The flows of `reports` that carry a verdict, for people: one group per interface, gateway
/// and server address, led by a header line, then one line per flow; both in the order of their
/// first RST. A flow's line reads e.g. `10.0.2.1:443 <- reset by a middlebox via 00:01:d7:3c:5e:01 (F5 Networks, Inc.),
/// gateway 10.0.1.254: RST TTL 64 (0 hops) vs server TTL 127 (1 hop) [client ..., time]`.
pub fn resets_text(reports: &[FlowReport]) -> String {
    type GroupKey<'a> = (&'a Origin, Option<MacAddr>, IpAddr);
    let mut groups: BTreeMap<GroupKey, Vec<(&FlowReport, &Verdict)>> = BTreeMap::new();
    for report in reports {
        if let Some(verdict) = &report.verdict {
            let gateway = report.gateway.as_ref().map(|gateway| gateway.mac);
            groups
                .entry((&report.origin, gateway, report.flow.server.ip()))
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
    for ((origin, _, server), members) in groups {
        let gateway = members[0].0.gateway.as_ref();
        let mut block = format!(
            "server {server}{} on {origin}: {}\n",
            gateway.map_or(", no gateway MAC seen".to_owned(), |g| via(g, server, true)),
            verdict_counts(members.iter().map(|(_, verdict)| verdict.reset_by))
        );
        for (report, verdict) in members {
            let flow = &report.flow;
            let phase = report
                .phase
                .map_or(String::new(), |phase| format!("{}, ", phase_phrase(phase)));
            let via = report
                .gateway
                .as_ref()
                .map_or(String::new(), |g| via(g, server, false));
            let when = match evidence::timing(report) {
                Some(when) if via.is_empty() => format!(" {when}"),
                Some(when) => format!(", {when}"),
                None => String::new(),
            };
            let said = report.rst_payload().map_or(String::new(), |payload| {
                format!("; {}", rst_payload::describe(&payload))
            });
            let evicted = if flow.flow_evicted {
                ", from the reset table's copy: the flow table evicted it"
            } else {
                ""
            };
            block += &format!(
                "  {} <- {}{via}{when}: {}{said} [client {}, {phase}{}{evicted}]\n",
                flow.server,
                reset_by_phrase(verdict),
                evidence::summary(flow, verdict),
                flow.client,
                format_rfc3339_utc(flow.first_rst_ns().unwrap_or(flow.last_seen_ns).into()),
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
        ResetBy::Middlebox if verdict.middlebox_role == Some(MiddleboxRole::Proxy) => {
            "reset by a proxy (a middlebox that answered the handshake)".to_owned()
        }
        ResetBy::Middlebox => "reset by a middlebox".to_owned(),
        ResetBy::Endpoint => format!("reset by the {side} itself"),
        ResetBy::Unknown => format!("reset by the {side} or a middlebox (unknown)"),
    }
}

/// When in the connection the RST came, in a few words.
fn phase_phrase(phase: Phase) -> &'static str {
    match phase {
        Phase::Syn => "at the SYN",
        Phase::Handshake => "after the handshake",
        Phase::Request => "after the client's request",
        Phase::Transfer => "during the transfer",
        Phase::Closing => "while closing",
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

/// The namespace column: its name, `host` for the host's, `-` for a capture (which has none).
fn netns_cell(origin: &Origin) -> &str {
    match origin {
        Origin::Live(attachment) => attachment.netns.name().unwrap_or("host"),
        Origin::Capture { .. } => "-",
    }
}

/// What a narrow terminal takes from `stats` first; packets, TCP and parse errors stay.
const STATS_NARROWING: &[Narrowing] =
    &[Narrowing::Drop("FLOWS_CREATED"), Narrowing::Drop("NON_TCP")];

/// Each source's stats for people: a heading with the flow-table fill, then one row per
/// hook and the total; a blank line between attachments.
pub fn stats_text(stats: &[Stats], width: Option<usize>) -> String {
    let blocks: Vec<String> = stats
        .iter()
        .map(|stats| {
            let heading = match stats.max_flows {
                Some(max_flows) => format!(
                    "{}: {} of {max_flows} flow-table entries in use",
                    stats.origin, stats.flows
                ),
                None => format!("{}: {} flows", stats.origin, stats.flows),
            };
            let table = stats_table(&stats.counters).render(width);
            format!("{}\n{table}", cut(&heading, width))
        })
        .collect();
    blocks.join("\n")
}

fn stats_table(counters: &Counters) -> Table {
    let mut table = Table::new(
        [
            "HOOK",
            "PACKETS",
            "TCP",
            "NON_TCP",
            "PARSE_ERRORS",
            "FLOWS_CREATED",
        ]
        .map(Cell::from)
        .into(),
        STATS_NARROWING,
    );
    let hooks = [
        ("ingress", counters.ingress),
        ("egress", counters.egress),
        ("total", counters.total()),
    ];
    for (hook, c) in hooks {
        let counts = [
            c.packets(),
            c.tcp(),
            c.non_tcp,
            c.parse_errors,
            c.flows_created,
        ];
        let mut row = vec![Cell::from(hook)];
        row.extend(counts.map(|count| Cell::from(count.to_string())));
        table.push(row);
    }
    table
}
