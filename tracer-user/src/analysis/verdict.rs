//! Who reset a connection: the endpoint, or a middlebox on the path. A pure function of the
//! flow's record and of what the other flows seen on the same interface say about each host, so
//! that the live maps and an offline capture reach the same verdict from the same evidence.
//!
//! Strong signals (any one makes it a middlebox): the RST's TTL differs from the sender's usual
//! TTL by more than [`TTL_TOLERANCE`]; its MAC differs from the sender's usual one; the sender
//! went on sending data at or beyond the RST's sequence (Weaver, Sommer, Paxson, NDSS 2009);
//! back-to-back RSTs whose sequence numbers jump. Supporting signals are reported and never
//! decide alone. `endpoint` needs a baseline the RST agrees with; without one the answer is
//! `unknown`.

use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;
use tracer_common::{Baseline, RstEvidence, BACK_TO_BACK_NS, SEEN_EGRESS};

use crate::{
    analysis::flow::{FlowRecord, SideEvidence},
    analysis::mac::MacAddr,
};

/// How far a RST's TTL may stray from the sender's usual TTL: a route change moves it by a hop
/// or two. A host's packets all start from one initial TTL, so a raw difference is a difference
/// in hops.
pub const TTL_TOLERANCE: u8 = 2;
/// Back-to-back RSTs whose sequence numbers are further apart than this did not come from one
/// TCP stack.
pub const SEQ_JUMP_LIMIT: u32 = 1 << 20;
/// A refusal this long after the SYN points at a device that held the SYN, when the host answers
/// other connections faster than this.
pub const SLOW_REFUSAL_NS: u64 = 1_000_000_000;
/// IPv4 IDs further apart than this are out of line with the host's.
pub const IP_ID_DISTANCE: u16 = 1000;
/// The initial TTLs (hop limits) in common use; hops are counted down from the next one up.
const INITIAL_TTLS: [u8; 3] = [64, 128, 255];

/// Who sent a RST, as far as the evidence tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetBy {
    Endpoint,
    Middlebox,
    Unknown,
}

impl ResetBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetBy::Endpoint => "endpoint",
            ResetBy::Middlebox => "middlebox",
            ResetBy::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ResetBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ResetBy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Server => "server",
        })
    }
}

/// The verdict on a flow that carried a RST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reset_by: ResetBy,
    /// The side the deciding RST claims to come from.
    pub rst_from: Role,
    /// Plain sentences with the numbers, the deciding ones first.
    pub evidence: Vec<String>,
    /// The deciding fact in a few words, for one-line output.
    pub summary: String,
}

/// One flow, as a key among the flows of an interface.
type FlowId = (SocketAddr, SocketAddr);

fn flow_id(flow: &FlowRecord) -> FlowId {
    (flow.client, flow.server)
}

/// A host's normal packets on one flow.
#[derive(Clone, Copy, Debug)]
struct Sample {
    flow: FlowId,
    baseline: Baseline,
    last_seen_ns: u64,
}

/// What the flows of one interface say about each host: how its normal packets look, by hook
/// (the MAC means the L2 source on ingress, the destination on egress), and how fast it answers
/// SYNs. All flows count, also those that arrived after a reset.
#[derive(Debug, Default)]
pub struct HostBaselines {
    samples: HashMap<(IpAddr, u8), Vec<Sample>>,
    /// SYN to SYN/ACK, by server address.
    answers: HashMap<IpAddr, Vec<(FlowId, u64)>>,
}

impl HostBaselines {
    pub fn new<'a>(flows: impl IntoIterator<Item = &'a FlowRecord>) -> HostBaselines {
        let mut hosts = HostBaselines::default();
        for flow in flows {
            let sides = [
                (flow.client, &flow.client_evidence),
                (flow.server, &flow.server_evidence),
            ];
            for (addr, side) in sides {
                if let Some(baseline) = side.baseline {
                    hosts
                        .samples
                        .entry((addr.ip(), baseline.seen_on))
                        .or_default()
                        .push(Sample {
                            flow: flow_id(flow),
                            baseline,
                            last_seen_ns: flow.last_seen_ns,
                        });
                }
            }
            if flow.syn_ns != 0 && flow.syn_ack_ns >= flow.syn_ns {
                hosts
                    .answers
                    .entry(flow.server.ip())
                    .or_default()
                    .push((flow_id(flow), flow.syn_ack_ns - flow.syn_ns));
            }
        }
        hosts
    }

    /// The host's normal packets seen on `seen_on` on flows other than `flow`.
    fn others(&self, flow: FlowId, host: IpAddr, seen_on: u8) -> Vec<&Sample> {
        self.samples
            .get(&(host, seen_on))
            .map(|samples| samples.iter().filter(|s| s.flow != flow).collect())
            .unwrap_or_default()
    }

    /// How many flows other than `flow` the server answered within [`SLOW_REFUSAL_NS`].
    fn prompt_answers(&self, flow: FlowId, server: IpAddr) -> usize {
        self.answers.get(&server).map_or(0, |answers| {
            answers
                .iter()
                .filter(|(id, delay)| *id != flow && *delay < SLOW_REFUSAL_NS)
                .count()
        })
    }
}

/// The verdict on `flow`; `None` when it carried no RST.
pub fn judge(flow: &FlowRecord, hosts: &HostBaselines) -> Option<Verdict> {
    if flow.totals().rst == 0 {
        return None;
    }
    let mut senders: Vec<(Role, &RstEvidence)> = [
        (Role::Client, &flow.client_evidence),
        (Role::Server, &flow.server_evidence),
    ]
    .into_iter()
    .filter_map(|(role, side)| side.rst.as_ref().map(|rst| (role, rst)))
    .collect();
    if senders.is_empty() {
        let rst_from = if flow.server_to_client.rst > 0 {
            Role::Server
        } else {
            Role::Client
        };
        return Some(Verdict {
            reset_by: ResetBy::Unknown,
            rst_from,
            evidence: vec![
                "the kernel kept no evidence of this flow's RSTs (the reset evidence table \
                 evicted it; see attach --max-resets)"
                    .to_owned(),
            ],
            summary: "no reset evidence kept".to_owned(),
        });
    }
    senders.sort_by_key(|(_, rst)| rst.first_rst_ns);
    let mut judged: Vec<SenderVerdict> = senders
        .into_iter()
        .map(|(role, rst)| judge_sender(flow, role, rst, hosts))
        .collect();
    // A forged RST from either side condemns the flow; otherwise the first RST is the one that
    // reset it, and later ones are reactions to it. (A stable sort keeps the time order.)
    judged.sort_by_key(|sender| sender.reset_by != ResetBy::Middlebox);
    let decider = &judged[0];
    let evidence = judged
        .iter()
        .flat_map(|sender| sender.findings.iter().map(|f| f.sentence.clone()))
        .collect();
    Some(Verdict {
        reset_by: decider.reset_by,
        rst_from: decider.role,
        evidence,
        summary: decider
            .findings
            .iter()
            .find_map(|finding| finding.summary.clone())
            .unwrap_or_default(),
    })
}

/// How much a finding weighs, in the order findings are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Weight {
    /// Enough alone to call the RST forged.
    Strong,
    /// The RST set against its baseline, when they agree; or the absence of a baseline.
    Comparison,
    /// Reported, never enough alone.
    Supporting,
}

#[derive(Clone, Debug)]
struct Finding {
    weight: Weight,
    sentence: String,
    /// The finding in a few words, for a strong finding or a comparison: one of those leads
    /// every sender's findings, and the first one summarises the verdict.
    summary: Option<String>,
}

impl Finding {
    fn new(weight: Weight, sentence: String, summary: String) -> Finding {
        Finding {
            weight,
            sentence,
            summary: Some(summary),
        }
    }

    fn supporting(sentence: String) -> Finding {
        Finding {
            weight: Weight::Supporting,
            sentence,
            summary: None,
        }
    }
}

/// The verdict on the RSTs of one side; `findings` is never empty.
struct SenderVerdict {
    role: Role,
    reset_by: ResetBy,
    findings: Vec<Finding>,
}

/// What the RST is compared with.
#[derive(Clone, Copy, Debug)]
struct Reference {
    ttl: u8,
    mac: Option<MacAddr>,
    ip_id: u16,
    /// 0 for this flow's own packets, else how many other flows it comes from.
    other_flows: usize,
}

impl Reference {
    /// Where the reference comes from, to end a sentence.
    fn source(&self) -> String {
        match self.other_flows {
            0 => " on this connection".to_owned(),
            1 => " on 1 other connection".to_owned(),
            n => format!(" on {n} other connections"),
        }
    }
}

/// The sender's normal packets seen on the RST's hook: this flow's when there are any, else the
/// most common TTL and MAC among the host's other flows.
fn reference(
    flow: &FlowRecord,
    sender: SocketAddr,
    side: &SideEvidence,
    rst: &RstEvidence,
    hosts: &HostBaselines,
) -> Option<Reference> {
    if let Some(own) = side.baseline.filter(|b| b.seen_on == rst.seen_on) {
        return Some(Reference {
            ttl: own.ttl,
            mac: MacAddr::known(own.mac),
            ip_id: own.ip_id,
            other_flows: 0,
        });
    }
    let others = hosts.others(flow_id(flow), sender.ip(), rst.seen_on);
    let latest = others.iter().max_by_key(|s| s.last_seen_ns)?;
    Some(Reference {
        ttl: most_common(others.iter().map(|s| (s.baseline.ttl, s.last_seen_ns)))?,
        mac: most_common(
            others
                .iter()
                .filter_map(|s| MacAddr::known(s.baseline.mac).map(|mac| (mac, s.last_seen_ns))),
        ),
        ip_id: latest.baseline.ip_id,
        other_flows: others.len(),
    })
}

/// The most frequent value; a tie goes to the value seen most recently.
fn most_common<T: Copy + Eq + Hash>(values: impl Iterator<Item = (T, u64)>) -> Option<T> {
    let mut tally: HashMap<T, (usize, u64)> = HashMap::new();
    for (value, seen_ns) in values {
        let entry = tally.entry(value).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(seen_ns);
    }
    tally
        .into_iter()
        .max_by_key(|(_, count_and_latest)| *count_and_latest)
        .map(|(value, _)| value)
}

/// Hops from the sender, counted down from the next common initial TTL at or above `ttl`.
pub fn hops(ttl: u8) -> u8 {
    let initial = INITIAL_TTLS.into_iter().find(|initial| *initial >= ttl);
    initial.unwrap_or(u8::MAX) - ttl
}

fn hops_text(ttl: u8) -> String {
    match hops(ttl) {
        1 => "1 hop".to_owned(),
        n => format!("{n} hops"),
    }
}

fn plural(count: u64, one: &str, many: &str) -> String {
    if count == 1 {
        format!("1 {one}")
    } else {
        format!("{count} {many}")
    }
}

/// The words for one side's RST: whether it arrived or left, and how TTLs are called.
struct Phrasing {
    role: Role,
    ttl: &'static str,
    egress: bool,
}

impl Phrasing {
    fn rst_moved(&self) -> &'static str {
        if self.egress {
            "left"
        } else {
            "arrived"
        }
    }

    fn packets_move(&self) -> &'static str {
        if self.egress {
            "leave"
        } else {
            "arrive"
        }
    }

    /// The MAC is the L2 source of what arrives and the destination of what leaves.
    fn mac_preposition(&self) -> &'static str {
        if self.egress {
            "to"
        } else {
            "from"
        }
    }
}

fn judge_sender(
    flow: &FlowRecord,
    role: Role,
    rst: &RstEvidence,
    hosts: &HostBaselines,
) -> SenderVerdict {
    let (sender, side) = match role {
        Role::Client => (flow.client, &flow.client_evidence),
        Role::Server => (flow.server, &flow.server_evidence),
    };
    let say = Phrasing {
        role,
        ttl: if sender.is_ipv6() { "hop limit" } else { "TTL" },
        egress: rst.seen_on == SEEN_EGRESS,
    };
    let reference = reference(flow, sender, side, rst, hosts);
    let mut findings = Vec::new();
    match &reference {
        Some(reference) => {
            findings.push(ttl_comparison(&say, rst, reference));
            findings.extend(mac_difference(&say, rst, reference));
            // Only against this connection: Linux numbers each connection's packets from its
            // own random start, so other connections' IDs are no sequence to be out of line with.
            if sender.is_ipv4() && reference.other_flows == 0 {
                findings.extend(ip_id_out_of_line(&say, rst, reference));
            }
        }
        None => findings.push(Finding::new(
            Weight::Comparison,
            format!(
                "no baseline: no normal packets from the {role} ({}) were seen {} on this \
                 interface, on this connection or another, to compare the RST with",
                sender.ip(),
                if say.egress { "leaving" } else { "arriving" },
            ),
            format!("no baseline for the {role}"),
        )),
    }
    findings.extend(race(&say, rst));
    findings.extend(sequence_jump(&say, rst));
    findings.extend(repeated_sequence(&say, rst));
    if role == Role::Server {
        findings.extend(slow_refusal(flow, rst, hosts));
    }
    // Stable: within a weight, findings keep the order above.
    findings.sort_by_key(|finding| finding.weight);

    let reset_by = if findings[0].weight == Weight::Strong {
        ResetBy::Middlebox
    } else if reference.is_some() {
        ResetBy::Endpoint
    } else {
        ResetBy::Unknown
    };
    SenderVerdict {
        role,
        reset_by,
        findings,
    }
}

fn ttl_comparison(say: &Phrasing, rst: &RstEvidence, reference: &Reference) -> Finding {
    let (word, role) = (say.ttl, say.role);
    let differs = rst.ttl.abs_diff(reference.ttl) > TTL_TOLERANCE;
    let sentence = format!(
        "RST {} with {word} {} ({}); the {role}'s packets {} with {word} {} ({}){}",
        say.rst_moved(),
        rst.ttl,
        hops_text(rst.ttl),
        say.packets_move(),
        reference.ttl,
        hops_text(reference.ttl),
        reference.source()
    );
    let relation = if differs { "vs" } else { "agrees with" };
    let summary = format!(
        "RST {word} {} ({}) {relation} {role} {word} {} ({})",
        rst.ttl,
        hops_text(rst.ttl),
        reference.ttl,
        hops_text(reference.ttl)
    );
    let weight = if differs {
        Weight::Strong
    } else {
        Weight::Comparison
    };
    Finding::new(weight, sentence, summary)
}

fn mac_difference(say: &Phrasing, rst: &RstEvidence, reference: &Reference) -> Option<Finding> {
    let rst_mac = MacAddr::known(rst.mac)?;
    let usual = reference.mac?;
    if rst_mac == usual {
        return None;
    }
    let (to_from, role) = (say.mac_preposition(), say.role);
    let came = if say.egress { "went" } else { "came" };
    Some(Finding::new(
        Weight::Strong,
        format!(
            "RST {came} {to_from} {rst_mac}, the {role}'s packets {to_from} {usual}{}",
            reference.source()
        ),
        format!("RST MAC {rst_mac} vs {role} MAC {usual}"),
    ))
}

/// Supporting: a RST with IP ID 0 from a sender whose packets carry IDs, or one far from the
/// sender's. A baseline ID of 0 gives nothing to compare with: Linux, for one, zeroes the ID of
/// DF packets it sends without a connected socket (SYN/ACKs among them).
fn ip_id_out_of_line(say: &Phrasing, rst: &RstEvidence, reference: &Reference) -> Option<Finding> {
    if reference.ip_id == 0 {
        return None;
    }
    let role = say.role;
    let usual = reference.ip_id;
    let sentence = if rst.ip_id == 0 {
        format!(
            "RST carries IP ID 0, the {role}'s packets IP ID {usual}{}",
            reference.source()
        )
    } else {
        let distance = rst
            .ip_id
            .wrapping_sub(usual)
            .min(usual.wrapping_sub(rst.ip_id));
        if distance <= IP_ID_DISTANCE {
            return None;
        }
        format!(
            "RST carries IP ID {}, {distance} away from the {role}'s IP ID {usual}{}",
            rst.ip_id,
            reference.source()
        )
    };
    Some(Finding::supporting(sentence))
}

/// Strong: data at or beyond the RST's sequence after the RST (a reset endpoint sends nothing
/// more). Supporting: other packets after the RST.
fn race(say: &Phrasing, rst: &RstEvidence) -> Option<Finding> {
    let role = say.role;
    let packets = plural(u64::from(rst.packets_after), "packet", "packets");
    if rst.bytes_beyond > 0 {
        return Some(Finding::new(
            Weight::Strong,
            format!(
                "after its RST (sequence {}) the {role} kept sending: {packets}, {} at or \
                 beyond the RST's sequence, which an endpoint that reset cannot do",
                rst.seq,
                plural(u64::from(rst.bytes_beyond), "byte", "bytes")
            ),
            format!(
                "{role} kept sending {} past its RST",
                plural(u64::from(rst.bytes_beyond), "byte", "bytes")
            ),
        ));
    }
    (rst.packets_after > 0).then(|| {
        Finding::supporting(format!(
            "the {role} sent {packets} after its RST (sequence {}), none with data at or \
             beyond the RST's sequence",
            rst.seq
        ))
    })
}

fn sequence_jump(say: &Phrasing, rst: &RstEvidence) -> Option<Finding> {
    (rst.max_seq_jump > SEQ_JUMP_LIMIT).then(|| {
        Finding::new(
            Weight::Strong,
            format!(
                "back-to-back RSTs from the {} (within {} s) jump {} in sequence number",
                say.role,
                BACK_TO_BACK_NS / 1_000_000_000,
                rst.max_seq_jump
            ),
            format!("back-to-back RSTs jump {} in sequence", rst.max_seq_jump),
        )
    })
}

fn repeated_sequence(say: &Phrasing, rst: &RstEvidence) -> Option<Finding> {
    (rst.same_seq_rsts >= 2).then(|| {
        let count = u32::from(rst.same_seq_rsts) + 1;
        Finding::supporting(format!(
            "{count} RSTs from the {} carried the same sequence number {}",
            say.role, rst.seq
        ))
    })
}

/// Supporting: a refusal (no SYN/ACK) that came a second or more after the SYN, while the
/// server answered other connections within a second.
fn slow_refusal(flow: &FlowRecord, rst: &RstEvidence, hosts: &HostBaselines) -> Option<Finding> {
    if flow.syn_ns == 0 || flow.syn_ack_ns != 0 || rst.first_rst_ns < flow.syn_ns {
        return None;
    }
    let delay = rst.first_rst_ns - flow.syn_ns;
    let prompt = hosts.prompt_answers(flow_id(flow), flow.server.ip());
    if delay < SLOW_REFUSAL_NS || prompt == 0 {
        return None;
    }
    let seconds = delay as f64 / 1e9;
    Some(Finding::supporting(format!(
        "the refusal came {seconds:.2} s after the SYN, while {} to {} {} answered within 1 s",
        plural(prompt as u64, "other connection", "other connections"),
        flow.server.ip(),
        if prompt == 1 { "was" } else { "were" }
    )))
}

#[cfg(test)]
mod tests {
    use tracer_common::{FlagCounts, SEEN_INGRESS};

    use super::*;
    use crate::analysis::flow::State;

    const SECOND: u64 = 1_000_000_000;
    const SERVER_MAC: [u8; 6] = [0x00, 0x01, 0xd7, 0x3c, 0x5e, 0x01];
    const OTHER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];

    fn counts(syn: u32, syn_ack: u32, rst: u32) -> FlagCounts {
        FlagCounts {
            syn,
            syn_ack,
            fin: 0,
            rst,
        }
    }

    fn baseline(ttl: u8, mac: [u8; 6], seen_on: u8) -> Baseline {
        Baseline {
            mac,
            ip_id: 0,
            ttl,
            seen_on,
            ..Baseline::default()
        }
    }

    /// A RST that arrived (ingress) with `ttl` from `mac`, one second into the flow.
    fn rst(ttl: u8, mac: [u8; 6]) -> RstEvidence {
        RstEvidence {
            first_rst_ns: SECOND,
            last_rst_ns: SECOND,
            mac,
            ttl,
            seen_on: SEEN_INGRESS,
            seq: 1000,
            ..RstEvidence::default()
        }
    }

    /// A flow from 10.0.1.2:`client_port` to `server`, the client's SYN at time 0. The caller
    /// fills in the evidence.
    fn flow(client_port: u16, server: &str) -> FlowRecord {
        let client = if server.starts_with('[') {
            format!("[fd00:1::2]:{client_port}")
        } else {
            format!("10.0.1.2:{client_port}")
        };
        FlowRecord {
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
            client_to_server: counts(1, 0, 0),
            server_to_client: counts(0, 0, 0),
            state: State::Attempted,
            first_seen_ns: 1,
            last_seen_ns: 1,
            syn_ns: 1,
            syn_ack_ns: 0,
            client_evidence: SideEvidence {
                baseline: Some(baseline(64, SERVER_MAC, SEEN_EGRESS)),
                rst: None,
            },
            server_evidence: SideEvidence::default(),
        }
    }

    /// A connection the server answered: its SYN/ACK arrived with `ttl` 1 ms after the SYN.
    fn answered(client_port: u16, server: &str, ttl: u8, last_seen_ns: u64) -> FlowRecord {
        let mut answered = flow(client_port, server);
        answered.server_to_client = counts(0, 1, 0);
        answered.syn_ack_ns = answered.syn_ns + 1_000_000;
        answered.last_seen_ns = last_seen_ns;
        answered.server_evidence.baseline = Some(baseline(ttl, SERVER_MAC, SEEN_INGRESS));
        answered
    }

    /// `flow` with a RST from the server.
    fn reset_by_server(mut flow: FlowRecord, rst: RstEvidence) -> FlowRecord {
        flow.server_to_client.rst = 1;
        flow.server_evidence.rst = Some(rst);
        flow
    }

    /// The verdict on the first flow, with all of them as the interface's flows.
    fn judge_first(flows: &[FlowRecord]) -> Verdict {
        judge(&flows[0], &HostBaselines::new(flows)).expect("a flow with a RST")
    }

    fn has_sentence(verdict: &Verdict, needle: &str) -> bool {
        verdict
            .evidence
            .iter()
            .any(|sentence| sentence.contains(needle))
    }

    #[test]
    fn hops_count_down_from_the_next_initial_ttl() {
        let cases = [
            (64, 0),
            (63, 1),
            (65, 63),
            (128, 0),
            (127, 1),
            (129, 126),
            (255, 0),
            (254, 1),
            (1, 63),
        ];
        for (ttl, expected) in cases {
            assert_eq!(hops(ttl), expected, "TTL {ttl}");
        }
        assert_eq!(hops_text(127), "1 hop");
        assert_eq!(hops_text(64), "0 hops");
    }

    #[test]
    fn seed_story_gateway_reset_against_the_port_80_baseline() {
        // Port 443 refused with TTL 64 from the gateway's MAC; port 80 answered by the server,
        // 1 hop behind that gateway, with initial TTL 128.
        let reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
        let port_80 = answered(40002, "10.0.2.1:80", 127, 5);
        let verdict = judge_first(&[reset, port_80]);
        assert_eq!(verdict.reset_by, ResetBy::Middlebox);
        assert_eq!(verdict.rst_from, Role::Server);
        assert_eq!(
            verdict.evidence[0],
            "RST arrived with TTL 64 (0 hops); the server's packets arrive with TTL 127 (1 hop) \
             on 1 other connection"
        );
        assert_eq!(
            verdict.summary,
            "RST TTL 64 (0 hops) vs server TTL 127 (1 hop)"
        );
    }

    #[test]
    fn ttl_differences_up_to_two_are_a_route_change() {
        for (rst_ttl, usual, expected) in [
            (64, 64, ResetBy::Endpoint),
            (62, 64, ResetBy::Endpoint),
            (66, 64, ResetBy::Endpoint),
            (61, 64, ResetBy::Middlebox),
            (67, 64, ResetBy::Middlebox),
            (128, 127, ResetBy::Endpoint),
            (255, 252, ResetBy::Middlebox),
            (254, 255, ResetBy::Endpoint),
            (64, 128, ResetBy::Middlebox),
        ] {
            let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), rst(rst_ttl, SERVER_MAC));
            flow.server_evidence.baseline = Some(baseline(usual, SERVER_MAC, SEEN_INGRESS));
            let verdict = judge_first(&[flow]);
            assert_eq!(verdict.reset_by, expected, "RST TTL {rst_ttl} vs {usual}");
            assert!(verdict.evidence[0].starts_with(&format!(
                "RST arrived with TTL {rst_ttl} ({}); the server's packets arrive with TTL {usual} ({}) on this connection",
                hops_text(rst_ttl),
                hops_text(usual)
            )));
        }
    }

    #[test]
    fn ipv6_says_hop_limit() {
        let reset = reset_by_server(flow(40001, "[fd00:2::1]:443"), rst(64, SERVER_MAC));
        let port_80 = answered(40002, "[fd00:2::1]:80", 61, 5);
        let verdict = judge_first(&[reset, port_80]);
        assert_eq!(verdict.reset_by, ResetBy::Middlebox);
        assert_eq!(
            verdict.evidence[0],
            "RST arrived with hop limit 64 (0 hops); the server's packets arrive with hop limit \
             61 (3 hops) on 1 other connection"
        );
        assert_eq!(
            verdict.summary,
            "RST hop limit 64 (0 hops) vs server hop limit 61 (3 hops)"
        );

        let mut near = reset_by_server(flow(40003, "[fd00:2::1]:443"), rst(63, SERVER_MAC));
        near.server_evidence.baseline = Some(baseline(61, SERVER_MAC, SEEN_INGRESS));
        assert_eq!(verdict_of(near), ResetBy::Endpoint);
    }

    fn verdict_of(flow: FlowRecord) -> ResetBy {
        judge_first(&[flow]).reset_by
    }

    #[test]
    fn a_different_mac_on_the_same_hook_is_a_middlebox() {
        let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, OTHER_MAC));
        flow.server_evidence.baseline = Some(baseline(64, SERVER_MAC, SEEN_INGRESS));
        let verdict = judge_first(&[flow.clone()]);
        assert_eq!(verdict.reset_by, ResetBy::Middlebox);
        assert_eq!(
            verdict.evidence[0],
            "RST came from 02:00:00:00:00:99, the server's packets from 00:01:d7:3c:5e:01 on \
             this connection"
        );
        assert_eq!(
            verdict.summary,
            "RST MAC 02:00:00:00:00:99 vs server MAC 00:01:d7:3c:5e:01"
        );
        // The agreeing TTL is still reported.
        assert!(has_sentence(&verdict, "RST arrived with TTL 64 (0 hops)"));

        // An unknown MAC on either side compares nothing.
        flow.server_evidence.rst.as_mut().unwrap().mac = [0; 6];
        assert_eq!(verdict_of(flow.clone()), ResetBy::Endpoint);
        flow.server_evidence.rst.as_mut().unwrap().mac = OTHER_MAC;
        flow.server_evidence.baseline.as_mut().unwrap().mac = [0; 6];
        assert_eq!(verdict_of(flow), ResetBy::Endpoint);
    }

    #[test]
    fn a_baseline_seen_on_the_other_hook_is_not_compared() {
        let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
        flow.server_evidence.baseline = Some(baseline(128, OTHER_MAC, SEEN_EGRESS));
        let verdict = judge_first(&[flow]);
        assert_eq!(verdict.reset_by, ResetBy::Unknown);
    }

    #[test]
    fn race_is_strong_even_without_a_baseline() {
        let mut evidence = rst(64, SERVER_MAC);
        evidence.packets_after = 4;
        evidence.bytes_beyond = 3000;
        let verdict = judge_first(&[reset_by_server(flow(40001, "10.0.2.1:443"), evidence)]);
        assert_eq!(verdict.reset_by, ResetBy::Middlebox);
        assert_eq!(
            verdict.evidence[0],
            "after its RST (sequence 1000) the server kept sending: 4 packets, 3000 bytes at or \
             beyond the RST's sequence, which an endpoint that reset cannot do"
        );
        assert_eq!(
            verdict.summary,
            "server kept sending 3000 bytes past its RST"
        );
        assert!(has_sentence(&verdict, "no baseline"));
    }

    #[test]
    fn packets_after_without_data_beyond_only_support() {
        let mut evidence = rst(64, SERVER_MAC);
        evidence.packets_after = 2;
        let no_baseline = reset_by_server(flow(40001, "10.0.2.1:443"), evidence);
        let verdict = judge_first(std::slice::from_ref(&no_baseline));
        assert_eq!(verdict.reset_by, ResetBy::Unknown);
        assert!(has_sentence(
            &verdict,
            "the server sent 2 packets after its RST (sequence 1000), none with data at or beyond"
        ));

        let mut with_baseline = no_baseline;
        with_baseline.server_evidence.baseline = Some(baseline(64, SERVER_MAC, SEEN_INGRESS));
        assert_eq!(verdict_of(with_baseline), ResetBy::Endpoint);
    }

    #[test]
    fn back_to_back_rsts_that_jump() {
        let mut evidence = rst(64, SERVER_MAC);
        evidence.max_seq_jump = SEQ_JUMP_LIMIT + 1;
        let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), evidence);
        flow.server_evidence.baseline = Some(baseline(64, SERVER_MAC, SEEN_INGRESS));
        let verdict = judge_first(&[flow.clone()]);
        assert_eq!(verdict.reset_by, ResetBy::Middlebox);
        assert_eq!(
            verdict.evidence[0],
            "back-to-back RSTs from the server (within 2 s) jump 1048577 in sequence number"
        );
        flow.server_evidence.rst.as_mut().unwrap().max_seq_jump = SEQ_JUMP_LIMIT;
        assert_eq!(verdict_of(flow), ResetBy::Endpoint);
    }

    /// A refusal 3 s after the SYN, five RSTs with one sequence number, a packet after the RST:
    /// all supporting, none decides. The IP ID 0 against port 80's 4321 is not even compared:
    /// IDs are numbered per connection.
    fn everything_supporting() -> (FlowRecord, FlowRecord) {
        let mut evidence = rst(64, SERVER_MAC);
        evidence.first_rst_ns = 3 * SECOND + 1;
        evidence.same_seq_rsts = 4;
        evidence.packets_after = 1;
        let refused = reset_by_server(flow(40001, "10.0.2.1:443"), evidence);
        let mut port_80 = answered(40002, "10.0.2.1:80", 64, 5);
        port_80.server_evidence.baseline.as_mut().unwrap().ip_id = 4321;
        (refused, port_80)
    }

    #[test]
    fn supporting_signals_never_decide_alone() {
        let (refused, port_80) = everything_supporting();
        let verdict = judge_first(&[refused.clone(), port_80.clone()]);
        assert_eq!(verdict.reset_by, ResetBy::Endpoint);
        assert_eq!(
            verdict.evidence,
            [
                "RST arrived with TTL 64 (0 hops); the server's packets arrive with TTL 64 \
                 (0 hops) on 1 other connection",
                "the server sent 1 packet after its RST (sequence 1000), none with data at or \
                 beyond the RST's sequence",
                "5 RSTs from the server carried the same sequence number 1000",
                "the refusal came 3.00 s after the SYN, while 1 other connection to 10.0.2.1 \
                 was answered within 1 s",
            ]
        );
        assert_eq!(
            verdict.summary,
            "RST TTL 64 (0 hops) agrees with server TTL 64 (0 hops)"
        );

        // Without the port-80 baseline the same signals leave it unknown.
        let alone = judge_first(&[refused]);
        assert_eq!(alone.reset_by, ResetBy::Unknown);
        assert_eq!(alone.summary, "no baseline for the server");
    }

    #[test]
    fn a_slow_refusal_needs_prompt_answers_to_compare_with() {
        let (refused, mut port_80) = everything_supporting();
        port_80.syn_ack_ns = port_80.syn_ns + 2 * SECOND;
        let verdict = judge_first(&[refused, port_80]);
        assert!(!has_sentence(&verdict, "the refusal came"));
    }

    #[test]
    fn ip_ids_close_or_unnumbered_are_in_line() {
        let cases = [
            (5000, 1000, true),
            (1999, 1000, false),
            (10, 65000, false), // 546 apart, around the wrap
            (40000, 1000, true),
            (1234, 0, false), // the host does not number its packets
            (0, 0, false),
            (0, 1000, true),
        ];
        for (rst_id, usual, out_of_line) in cases {
            let mut evidence = rst(64, SERVER_MAC);
            evidence.ip_id = rst_id;
            let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), evidence);
            let mut usual_baseline = baseline(64, SERVER_MAC, SEEN_INGRESS);
            usual_baseline.ip_id = usual;
            flow.server_evidence.baseline = Some(usual_baseline);
            let verdict = judge_first(&[flow]);
            assert_eq!(verdict.reset_by, ResetBy::Endpoint);
            assert_eq!(
                has_sentence(&verdict, "IP ID"),
                out_of_line,
                "{rst_id} vs {usual}: {:?}",
                verdict.evidence
            );
        }
        let mut evidence = rst(64, SERVER_MAC);
        evidence.ip_id = 5000;
        let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), evidence);
        let mut usual = baseline(64, SERVER_MAC, SEEN_INGRESS);
        usual.ip_id = 1000;
        flow.server_evidence.baseline = Some(usual);
        assert_eq!(
            judge_first(std::slice::from_ref(&flow)).evidence[1],
            "RST carries IP ID 5000, 4000 away from the server's IP ID 1000 on this connection"
        );
        flow.server_evidence.rst.as_mut().unwrap().ip_id = 0;
        assert_eq!(
            judge_first(&[flow]).evidence[1],
            "RST carries IP ID 0, the server's packets IP ID 1000 on this connection"
        );
    }

    #[test]
    fn no_baseline_is_unknown_never_a_guess() {
        let verdict = judge_first(&[reset_by_server(
            flow(40001, "10.0.2.1:443"),
            rst(64, SERVER_MAC),
        )]);
        assert_eq!(verdict.reset_by, ResetBy::Unknown);
        assert_eq!(
            verdict.evidence,
            [
                "no baseline: no normal packets from the server (10.0.2.1) were seen arriving on \
              this interface, on this connection or another, to compare the RST with"
            ]
        );
        // Another host's packets are no baseline for this one.
        let other_host = answered(40002, "10.0.2.9:80", 64, 5);
        let with_other = judge_first(&[
            reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC)),
            other_host,
        ]);
        assert_eq!(with_other.reset_by, ResetBy::Unknown);
    }

    #[test]
    fn a_baseline_that_arrived_after_the_reset_counts() {
        let reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
        // Port 80 answered 10 s after the reset.
        let later = answered(40002, "10.0.2.1:80", 64, 11 * SECOND);
        assert_eq!(judge_first(&[reset, later]).reset_by, ResetBy::Endpoint);
    }

    #[test]
    fn other_flows_give_the_most_common_ttl_and_mac() {
        let reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
        let mut odd_one = answered(40004, "10.0.2.1:22", 64, 9);
        odd_one.server_evidence.baseline.as_mut().unwrap().mac = OTHER_MAC;
        let flows = [
            reset,
            answered(40002, "10.0.2.1:80", 127, 5),
            answered(40003, "10.0.2.1:8080", 127, 6),
            odd_one,
        ];
        let verdict = judge_first(&flows);
        assert_eq!(verdict.reset_by, ResetBy::Middlebox);
        assert_eq!(
            verdict.evidence,
            [
                "RST arrived with TTL 64 (0 hops); the server's packets arrive with TTL 127 \
              (1 hop) on 3 other connections"
            ]
        );
        // A tie goes to the most recent.
        assert_eq!(
            most_common([(1, 10), (2, 30), (1, 5), (2, 1)].into_iter()),
            Some(2)
        );
        assert_eq!(most_common([(1, 10), (2, 5)].into_iter()), Some(1));
        assert_eq!(most_common(std::iter::empty::<(u8, u64)>()), None);
    }

    #[test]
    fn this_flows_baseline_comes_before_other_flows() {
        let mut reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
        reset.server_evidence.baseline = Some(baseline(64, SERVER_MAC, SEEN_INGRESS));
        let port_80 = answered(40002, "10.0.2.1:80", 127, 5);
        let verdict = judge_first(&[reset, port_80]);
        assert_eq!(verdict.reset_by, ResetBy::Endpoint);
        assert!(verdict.evidence[0].ends_with("(0 hops) on this connection"));
    }

    #[test]
    fn the_clients_own_reset_leaves_on_egress() {
        let mut flow = flow(40001, "10.0.2.1:443");
        flow.client_to_server.rst = 1;
        flow.client_evidence.rst = Some(RstEvidence {
            seen_on: SEEN_EGRESS,
            ..rst(64, SERVER_MAC)
        });
        let verdict = judge_first(&[flow]);
        assert_eq!(
            (verdict.reset_by, verdict.rst_from),
            (ResetBy::Endpoint, Role::Client)
        );
        assert_eq!(
            verdict.evidence,
            [
                "RST left with TTL 64 (0 hops); the client's packets leave with TTL 64 (0 hops) \
              on this connection"
            ]
        );
    }

    #[test]
    fn a_forged_rst_decides_over_the_clients_answer_to_it() {
        // The injector's RST arrives first; the client's stack answers the server's later data
        // with RSTs of its own.
        let mut injected = rst(64, OTHER_MAC);
        injected.packets_after = 3;
        injected.bytes_beyond = 2896;
        let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), injected);
        flow.server_evidence.baseline = Some(baseline(64, SERVER_MAC, SEEN_INGRESS));
        flow.client_to_server.rst = 2;
        flow.client_evidence.rst = Some(RstEvidence {
            first_rst_ns: 2 * SECOND,
            seen_on: SEEN_EGRESS,
            ..rst(64, SERVER_MAC)
        });
        let verdict = judge_first(&[flow.clone()]);
        assert_eq!(
            (verdict.reset_by, verdict.rst_from),
            (ResetBy::Middlebox, Role::Server)
        );
        assert!(verdict.evidence[0].starts_with("RST came from 02:00:00:00:00:99"));
        assert!(verdict.evidence[1]
            .starts_with("after its RST (sequence 1000) the server kept sending"));
        assert!(verdict
            .evidence
            .last()
            .unwrap()
            .starts_with("RST left with TTL 64"));

        // Without a middlebox signal, the earliest RST decides.
        let mut honest = flow;
        honest.server_evidence.rst = Some(RstEvidence {
            first_rst_ns: 3 * SECOND,
            ..rst(64, SERVER_MAC)
        });
        let verdict = judge_first(&[honest]);
        assert_eq!(
            (verdict.reset_by, verdict.rst_from),
            (ResetBy::Endpoint, Role::Client)
        );
    }

    #[test]
    fn no_rst_no_verdict_and_lost_evidence_is_unknown() {
        let quiet = flow(40001, "10.0.2.1:80");
        assert_eq!(judge(&quiet, &HostBaselines::new([&quiet])), None);

        let mut evicted = flow(40001, "10.0.2.1:443");
        evicted.server_to_client.rst = 1;
        let verdict = judge_first(&[evicted]);
        assert_eq!(
            (verdict.reset_by, verdict.rst_from),
            (ResetBy::Unknown, Role::Server)
        );
        assert!(verdict.evidence[0].starts_with("the kernel kept no evidence"));
    }
}
