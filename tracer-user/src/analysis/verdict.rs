//! Who reset a connection: the endpoint, or a middlebox on the path. A pure function of the
//! flow's record and of what the other flows of the same source say about each host (the
//! [`HostIndex`]), so that the live maps and an offline capture reach the same verdict from the
//! same evidence.
//!
//! The verdict is data: the decision and the typed [`Signal`]s it rests on, the deciding ones
//! first. Sentences are rendered from them in one place (`crate::output::evidence`).
//!
//! Strong signals (any one makes it a middlebox): the RST's TTL differs from the sender's usual
//! TTL by more than [`TTL_TOLERANCE`]; its MAC differs from the sender's usual one; the sender
//! went on sending data at or beyond the RST's sequence (Weaver, Sommer, Paxson, NDSS 2009);
//! back-to-back RSTs whose sequence numbers jump. Supporting signals are reported and never
//! decide alone. `endpoint` needs a baseline the RST agrees with; without one the answer is
//! `unknown`.

use std::{fmt, net::SocketAddr};

use serde::{Serialize, Serializer};
use tracer_common::{Hook, BACK_TO_BACK_NS};

use crate::analysis::{
    flow::{FlowRecord, PacketRole, RstSeen},
    hosts::{HostIndex, Profile, PROMPT_ANSWER_NS},
    mac::MacAddr,
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
pub const SLOW_REFUSAL_NS: u64 = PROMPT_ANSWER_NS;
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
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What the middlebox that sent a RST had to do with the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MiddleboxRole {
    /// It had terminated the connection: it answered the handshake, and reset.
    Proxy,
    /// The endpoints had the connection (or no handshake was answered), and a box on the path
    /// sent the RST in an endpoint's name: a firewall's reject, an idle timeout, an injector.
    OnPath,
}

impl MiddleboxRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MiddleboxRole::Proxy => "proxy",
            MiddleboxRole::OnPath => "on_path",
        }
    }
}

/// A side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
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
    /// For a middlebox's RST, what the box had to do with the connection.
    pub middlebox_role: Option<MiddleboxRole>,
    /// The side the deciding RST claims to come from.
    pub rst_from: Role,
    /// What the verdict rests on, the deciding signals first: the first one sums it up.
    pub signals: Vec<Signal>,
}

/// How much a signal weighs, in the order signals are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Weight {
    /// Enough alone to call the RST forged.
    Strong,
    /// The RST set against its baseline, when they agree; or the absence of a baseline.
    Comparison,
    /// Reported, never enough alone.
    Supporting,
}

/// One fact about a side's RSTs, with its numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Signal {
    /// The side whose RSTs it is about.
    pub from: Role,
    pub weight: Weight,
    #[serde(flatten)]
    pub kind: SignalKind,
}

/// What a RST was compared with: the sender's packets on this connection, or on others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "of", rename_all = "snake_case")]
pub enum BaselineOf {
    ThisConnection,
    OtherConnections { count: usize },
}

/// The kinds of [`Signal`]. TTLs are TTLs for IPv4, hop limits for IPv6; hops are counted down
/// from the next common initial TTL ([`hops`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum SignalKind {
    /// The RST's TTL against the sender's usual one (strong at another hop distance).
    TtlComparison {
        #[serde(serialize_with = "hook_name")]
        hook: Hook,
        rst_ttl: u8,
        rst_hops: u8,
        usual_ttl: u8,
        usual_hops: u8,
        baseline: BaselineOf,
        relation: TtlRelation,
    },
    /// The RST differs from this connection's SYN/ACK, and agrees with the host's packets after
    /// a handshake on other connections: a SYN proxy answered the handshake, the host reset.
    SynProxyHandshake {
        #[serde(serialize_with = "hook_name")]
        hook: Hook,
        handshake_ttl: u8,
        handshake_hops: u8,
        rst_ttl: u8,
        rst_hops: u8,
        connections: usize,
    },
    /// The RST agrees with this connection's SYN/ACK, and the host's packets after a handshake
    /// on other connections come from another distance: a proxy answered this connection (its
    /// handshake and its RST) in the host's name.
    ProxyAnswered {
        #[serde(serialize_with = "hook_name")]
        hook: Hook,
        proxy_ttl: u8,
        proxy_hops: u8,
        host_ttl: u8,
        host_hops: u8,
        connections: usize,
    },
    /// The RST differs from this connection's SYN/ACK, and no packet of the host after a
    /// handshake was seen to tell a SYN proxy's handshake from a forged RST.
    HandshakeOnlyDiffers {
        #[serde(serialize_with = "hook_name")]
        hook: Hook,
        rst_ttl: u8,
        rst_hops: u8,
        handshake_ttl: u8,
        handshake_hops: u8,
    },
    /// The RST came from (or went to) another L2 neighbour than the sender's packets.
    MacDifference {
        #[serde(serialize_with = "hook_name")]
        hook: Hook,
        rst_mac: MacAddr,
        usual_mac: MacAddr,
        baseline: BaselineOf,
    },
    /// The RST's IPv4 ID is 0 (`distance` null) or far from the sender's.
    IpIdOutOfLine {
        rst_ip_id: u16,
        usual_ip_id: u16,
        distance: Option<u16>,
        baseline: BaselineOf,
    },
    /// No normal packet of the sender was seen on the RST's hook, on any connection.
    NoBaseline {
        #[serde(serialize_with = "hook_name")]
        hook: Hook,
    },
    /// After its RST the sender sent data at or beyond the RST's sequence (a race).
    DataAfterRst {
        rst_seq: u32,
        packets_after: u32,
        bytes_beyond: u32,
    },
    /// After its RST the sender sent packets, none with data beyond its sequence.
    PacketsAfterRst { rst_seq: u32, packets_after: u32 },
    /// Back-to-back RSTs (within `window_ns`) whose sequence numbers jump.
    SequenceJump { jump: u32, window_ns: u64 },
    /// Several RSTs carried one sequence number.
    RepeatedSequence { rsts: u32, seq: u32 },
    /// A refusal long after the SYN, while the server answered others promptly.
    SlowRefusal {
        delay_ns: u64,
        prompt_answers: usize,
    },
    /// The kernel kept no evidence of the flow's RSTs.
    EvidenceLost,
}

fn hook_name<S: Serializer>(hook: &Hook, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(hook.name())
}

impl Signal {
    fn new(from: Role, weight: Weight, kind: SignalKind) -> Signal {
        Signal { from, weight, kind }
    }
}

/// The verdict on `flow`; `None` when it carried no RST.
pub fn judge(flow: &FlowRecord, hosts: &HostIndex) -> Option<Verdict> {
    if flow.totals().rst == 0 {
        return None;
    }
    let mut senders: Vec<(Role, &RstSeen)> = [
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
            middlebox_role: None,
            rst_from,
            signals: vec![Signal::new(
                rst_from,
                Weight::Comparison,
                SignalKind::EvidenceLost,
            )],
        });
    }
    senders.sort_by_key(|(_, rst)| rst.first_ns);
    let mut judged: Vec<SenderVerdict> = senders
        .into_iter()
        .map(|(role, rst)| judge_sender(flow, role, rst, hosts))
        .collect();
    // A forged RST from either side condemns the flow; otherwise the first RST is the one that
    // reset it, and later ones are reactions to it. (A stable sort keeps the time order.)
    judged.sort_by_key(|sender| sender.reset_by != ResetBy::Middlebox);
    let (reset_by, rst_from) = (judged[0].reset_by, judged[0].role);
    let middlebox_role =
        (reset_by == ResetBy::Middlebox).then(|| match judged[0].signals[0].kind {
            SignalKind::ProxyAnswered { .. } => MiddleboxRole::Proxy,
            _ => MiddleboxRole::OnPath,
        });
    Some(Verdict {
        reset_by,
        middlebox_role,
        rst_from,
        signals: judged
            .into_iter()
            .flat_map(|sender| sender.signals)
            .collect(),
    })
}

/// The verdict on the RSTs of one side; `signals` is never empty, and its first signal is a
/// strong one or the comparison with the baseline (or its absence).
struct SenderVerdict {
    role: Role,
    reset_by: ResetBy,
    signals: Vec<Signal>,
}

/// What the RST is compared with.
#[derive(Clone, Copy, Debug)]
struct Reference {
    ttl: u8,
    mac: Option<MacAddr>,
    /// The IP ID, on this connection only: Linux numbers each connection's packets from its
    /// own random start, so other connections' IDs are no sequence to be out of line with.
    ip_id: Option<u16>,
    of: BaselineOf,
    /// This connection's baseline is its handshake packet, which a SYN proxy or a full proxy may
    /// have sent in the host's name.
    handshake_only: bool,
}

/// The sender's normal packets seen on the RST's hook: this flow's when there are any, else the
/// most common TTL and MAC among the host's other flows.
fn reference(
    flow: &FlowRecord,
    sender: SocketAddr,
    role: Role,
    rst: &RstSeen,
    hosts: &HostIndex,
) -> Option<Reference> {
    let side = match role {
        Role::Client => &flow.client_evidence,
        Role::Server => &flow.server_evidence,
    };
    if let Some(own) = side.baseline.filter(|b| b.hook == rst.hook) {
        return Some(Reference {
            ttl: own.ttl,
            mac: own.mac,
            ip_id: Some(own.ip_id),
            of: BaselineOf::ThisConnection,
            handshake_only: own.role == PacketRole::Handshake,
        });
    }
    let others = hosts.profile(flow, sender.ip(), rst.hook)?;
    Some(Reference {
        ttl: others.ttl,
        mac: others.mac,
        ip_id: None,
        of: BaselineOf::OtherConnections {
            count: others.flows,
        },
        handshake_only: false,
    })
}

/// How a RST's TTL stands to another packet's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TtlRelation {
    /// Within [`TTL_TOLERANCE`]: one sender, or a route change.
    Agrees,
    /// Another hop distance: another box.
    OtherDistance,
    /// The same distance from another initial TTL: another host there (a load balancer's
    /// backend) or a transparent box; never a middlebox on that alone.
    OtherInitialTtl,
}

impl TtlRelation {
    fn of(rst_ttl: u8, usual_ttl: u8) -> TtlRelation {
        if rst_ttl.abs_diff(usual_ttl) <= TTL_TOLERANCE {
            TtlRelation::Agrees
        } else if hops(rst_ttl) == hops(usual_ttl) {
            TtlRelation::OtherInitialTtl
        } else {
            TtlRelation::OtherDistance
        }
    }

    /// A comparison that finds another distance is enough to call the RST a middlebox's.
    fn weight(self) -> Weight {
        match self {
            TtlRelation::OtherDistance => Weight::Strong,
            TtlRelation::Agrees | TtlRelation::OtherInitialTtl => Weight::Comparison,
        }
    }
}

/// Hops from the sender, counted down from the next common initial TTL at or above `ttl`.
pub fn hops(ttl: u8) -> u8 {
    let initial = INITIAL_TTLS.into_iter().find(|initial| *initial >= ttl);
    initial.unwrap_or(u8::MAX) - ttl
}

fn judge_sender(flow: &FlowRecord, role: Role, rst: &RstSeen, hosts: &HostIndex) -> SenderVerdict {
    let sender = match role {
        Role::Client => flow.client,
        Role::Server => flow.server,
    };
    let reference = reference(flow, sender, role, rst, hosts);
    let mut signals = Vec::new();
    let mut add = |weight: Weight, kind: SignalKind| signals.push(Signal::new(role, weight, kind));
    // Whether the RST agrees with what it was compared with: `endpoint` needs that, when no
    // strong signal calls it a middlebox's.
    let mut agrees = false;
    match &reference {
        Some(reference) if reference.handshake_only => {
            let later = hosts.profile_after_handshake(flow, sender.ip(), rst.hook);
            let (weight, kind, agreeing) = against_handshake(rst, reference, later);
            agrees = agreeing;
            add(weight, kind);
            if let Some(kind) = mac_difference(rst, reference.mac, reference.of) {
                // Like the TTL: the host's own packets after a handshake decide; the SYN/ACK
                // alone may be a SYN proxy's.
                match later.and_then(|later| Some((later.mac?, later.flows))) {
                    Some((usual_mac, count)) => {
                        let host = BaselineOf::OtherConnections { count };
                        if let Some(kind) = mac_difference(rst, Some(usual_mac), host) {
                            add(Weight::Strong, kind);
                        }
                    }
                    None => add(Weight::Supporting, kind),
                }
            }
        }
        Some(reference) => {
            let relation = TtlRelation::of(rst.ttl, reference.ttl);
            agrees = relation == TtlRelation::Agrees;
            add(
                relation.weight(),
                SignalKind::TtlComparison {
                    hook: rst.hook,
                    rst_ttl: rst.ttl,
                    rst_hops: hops(rst.ttl),
                    usual_ttl: reference.ttl,
                    usual_hops: hops(reference.ttl),
                    baseline: reference.of,
                    relation,
                },
            );
            if let Some(kind) = mac_difference(rst, reference.mac, reference.of) {
                add(Weight::Strong, kind);
            }
            if sender.is_ipv4() {
                if let Some(kind) = ip_id_out_of_line(rst, reference) {
                    add(Weight::Supporting, kind);
                }
            }
        }
        None => add(
            Weight::Comparison,
            SignalKind::NoBaseline { hook: rst.hook },
        ),
    }
    if rst.bytes_beyond > 0 {
        add(
            Weight::Strong,
            SignalKind::DataAfterRst {
                rst_seq: rst.seq,
                packets_after: rst.packets_after,
                bytes_beyond: rst.bytes_beyond,
            },
        );
    } else if rst.packets_after > 0 {
        add(
            Weight::Supporting,
            SignalKind::PacketsAfterRst {
                rst_seq: rst.seq,
                packets_after: rst.packets_after,
            },
        );
    }
    if rst.max_seq_jump > SEQ_JUMP_LIMIT {
        add(
            Weight::Strong,
            SignalKind::SequenceJump {
                jump: rst.max_seq_jump,
                window_ns: BACK_TO_BACK_NS,
            },
        );
    }
    if rst.same_seq_rsts >= 2 {
        add(
            Weight::Supporting,
            SignalKind::RepeatedSequence {
                rsts: u32::from(rst.same_seq_rsts) + 1,
                seq: rst.seq,
            },
        );
    }
    if role == Role::Server {
        if let Some(kind) = slow_refusal(flow, rst, hosts) {
            add(Weight::Supporting, kind);
        }
    }
    // Stable: within a weight, signals keep the order above.
    signals.sort_by_key(|signal| signal.weight);
    let reset_by = if signals[0].weight == Weight::Strong {
        ResetBy::Middlebox
    } else if agrees {
        ResetBy::Endpoint
    } else {
        ResetBy::Unknown
    };
    SenderVerdict {
        role,
        reset_by,
        signals,
    }
}

/// A RST set against this connection's handshake answer (its SYN/ACK), which a SYN proxy or a
/// full proxy may have sent, and against the host's own packets after a handshake on other
/// connections (`later`), which no such proxy sends. Returns the signal, its weight, and whether
/// the RST agrees with the host.
fn against_handshake(
    rst: &RstSeen,
    handshake: &Reference,
    later: Option<Profile>,
) -> (Weight, SignalKind, bool) {
    let with_handshake = TtlRelation::of(rst.ttl, handshake.ttl);
    let comparison =
        |usual_ttl: u8, baseline: BaselineOf, relation: TtlRelation| SignalKind::TtlComparison {
            hook: rst.hook,
            rst_ttl: rst.ttl,
            rst_hops: hops(rst.ttl),
            usual_ttl,
            usual_hops: hops(usual_ttl),
            baseline,
            relation,
        };
    let Some(later) = later else {
        return match with_handshake {
            // Nothing tells the handshake's sender from the host: as with any baseline.
            TtlRelation::Agrees => (
                Weight::Comparison,
                comparison(handshake.ttl, BaselineOf::ThisConnection, with_handshake),
                true,
            ),
            _ => (
                Weight::Comparison,
                SignalKind::HandshakeOnlyDiffers {
                    hook: rst.hook,
                    rst_ttl: rst.ttl,
                    rst_hops: hops(rst.ttl),
                    handshake_ttl: handshake.ttl,
                    handshake_hops: hops(handshake.ttl),
                },
                false,
            ),
        };
    };
    let host = BaselineOf::OtherConnections { count: later.flows };
    let with_host = TtlRelation::of(rst.ttl, later.ttl);
    match (with_handshake, with_host) {
        (TtlRelation::Agrees, TtlRelation::Agrees) => (
            Weight::Comparison,
            comparison(handshake.ttl, BaselineOf::ThisConnection, with_handshake),
            true,
        ),
        (TtlRelation::Agrees, TtlRelation::OtherDistance) => (
            Weight::Strong,
            SignalKind::ProxyAnswered {
                hook: rst.hook,
                proxy_ttl: rst.ttl,
                proxy_hops: hops(rst.ttl),
                host_ttl: later.ttl,
                host_hops: hops(later.ttl),
                connections: later.flows,
            },
            false,
        ),
        (_, TtlRelation::Agrees) => (
            Weight::Comparison,
            SignalKind::SynProxyHandshake {
                hook: rst.hook,
                handshake_ttl: handshake.ttl,
                handshake_hops: hops(handshake.ttl),
                rst_ttl: rst.ttl,
                rst_hops: hops(rst.ttl),
                connections: later.flows,
            },
            true,
        ),
        // Another host at the host's distance; or a RST that agrees with neither.
        (_, relation) => (
            relation.weight(),
            comparison(later.ttl, host, relation),
            false,
        ),
    }
}

/// The RST's MAC against `usual`, when both are known and differ.
fn mac_difference(
    rst: &RstSeen,
    usual: Option<MacAddr>,
    baseline: BaselineOf,
) -> Option<SignalKind> {
    let (rst_mac, usual_mac) = (rst.mac?, usual?);
    (rst_mac != usual_mac).then_some(SignalKind::MacDifference {
        hook: rst.hook,
        rst_mac,
        usual_mac,
        baseline,
    })
}

/// A RST with IP ID 0 from a sender whose packets carry IDs, or one far from the sender's. A
/// baseline ID of 0 gives nothing to compare with: Linux, for one, zeroes the ID of DF packets
/// it sends without a connected socket (SYN/ACKs among them).
fn ip_id_out_of_line(rst: &RstSeen, reference: &Reference) -> Option<SignalKind> {
    let usual = reference.ip_id.filter(|id| *id != 0)?;
    let distance = if rst.ip_id == 0 {
        None
    } else {
        let distance = rst
            .ip_id
            .wrapping_sub(usual)
            .min(usual.wrapping_sub(rst.ip_id));
        if distance <= IP_ID_DISTANCE {
            return None;
        }
        Some(distance)
    };
    Some(SignalKind::IpIdOutOfLine {
        rst_ip_id: rst.ip_id,
        usual_ip_id: usual,
        distance,
        baseline: reference.of,
    })
}

/// A refusal (no SYN/ACK) that came a second or more after the SYN, while the server answered
/// other connections within a second.
fn slow_refusal(flow: &FlowRecord, rst: &RstSeen, hosts: &HostIndex) -> Option<SignalKind> {
    let syn = flow.syn_ns?;
    if flow.syn_ack_ns.is_some() || rst.first_ns < syn {
        return None;
    }
    let delay_ns = rst.first_ns - syn;
    let prompt_answers = hosts.prompt_answers(flow);
    (delay_ns >= SLOW_REFUSAL_NS && prompt_answers > 0).then_some(SignalKind::SlowRefusal {
        delay_ns,
        prompt_answers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::fixtures::*;

    /// The kinds of the verdict's signals, in order.
    fn kinds(verdict: &Verdict) -> Vec<&SignalKind> {
        verdict.signals.iter().map(|signal| &signal.kind).collect()
    }

    fn ttl_comparison(rst_ttl: u8, usual_ttl: u8, baseline: BaselineOf) -> SignalKind {
        SignalKind::TtlComparison {
            hook: Hook::Ingress,
            rst_ttl,
            rst_hops: hops(rst_ttl),
            usual_ttl,
            usual_hops: hops(usual_ttl),
            baseline,
            relation: TtlRelation::of(rst_ttl, usual_ttl),
        }
    }

    const THIS: BaselineOf = BaselineOf::ThisConnection;

    fn others(count: usize) -> BaselineOf {
        BaselineOf::OtherConnections { count }
    }

    fn verdict_of(flow: FlowRecord) -> ResetBy {
        judge_first(&[flow]).reset_by
    }

    fn has(verdict: &Verdict, wanted: impl Fn(&SignalKind) -> bool) -> bool {
        verdict.signals.iter().any(|signal| wanted(&signal.kind))
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
    }

    #[test]
    fn seed_story_gateway_reset_against_the_port_80_baseline() {
        // Port 443 refused with TTL 64 from the gateway's MAC; port 80 answered by the server,
        // 1 hop behind that gateway, with initial TTL 128.
        let reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
        let port_80 = answered(40002, "10.0.2.1:80", 127, 5);
        let verdict = judge_first(&[reset, port_80]);
        assert_eq!(
            (verdict.reset_by, verdict.rst_from),
            (ResetBy::Middlebox, Role::Server)
        );
        assert_eq!(
            verdict.signals,
            [Signal {
                from: Role::Server,
                weight: Weight::Strong,
                kind: ttl_comparison(64, 127, others(1)),
            }]
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
            // The same distance from another initial TTL: another host there, or a
            // transparent box; never a middlebox on that alone.
            (64, 128, ResetBy::Unknown),
            (127, 63, ResetBy::Unknown),
        ] {
            let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), rst(rst_ttl, SERVER_MAC));
            flow.server_evidence.baseline = Some(baseline(usual, SERVER_MAC, Hook::Ingress));
            let verdict = judge_first(&[flow]);
            assert_eq!(verdict.reset_by, expected, "RST TTL {rst_ttl} vs {usual}");
            assert_eq!(
                verdict.signals[0].kind,
                ttl_comparison(rst_ttl, usual, THIS)
            );
            let weight = if expected == ResetBy::Middlebox {
                Weight::Strong
            } else {
                Weight::Comparison
            };
            assert_eq!(verdict.signals[0].weight, weight);
        }
    }

    #[test]
    fn ipv6_hop_limits_are_compared_alike() {
        let reset = reset_by_server(flow(40001, "[fd00:2::1]:443"), rst(64, SERVER_MAC));
        let port_80 = answered(40002, "[fd00:2::1]:80", 61, 5);
        let verdict = judge_first(&[reset, port_80]);
        assert_eq!(verdict.reset_by, ResetBy::Middlebox);
        assert_eq!(kinds(&verdict), [&ttl_comparison(64, 61, others(1))]);

        let mut near = reset_by_server(flow(40003, "[fd00:2::1]:443"), rst(63, SERVER_MAC));
        near.server_evidence.baseline = Some(baseline(61, SERVER_MAC, Hook::Ingress));
        assert_eq!(verdict_of(near), ResetBy::Endpoint);
    }

    #[test]
    fn a_different_mac_on_the_same_hook_is_a_middlebox() {
        let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, OTHER_MAC));
        flow.server_evidence.baseline = Some(baseline(64, SERVER_MAC, Hook::Ingress));
        let verdict = judge_first(&[flow.clone()]);
        assert_eq!(verdict.reset_by, ResetBy::Middlebox);
        // The strong signal leads; the agreeing TTL is still reported.
        assert_eq!(
            kinds(&verdict),
            [
                &SignalKind::MacDifference {
                    hook: Hook::Ingress,
                    rst_mac: OTHER_MAC,
                    usual_mac: SERVER_MAC,
                    baseline: THIS,
                },
                &ttl_comparison(64, 64, THIS),
            ]
        );

        // An unknown MAC on either side compares nothing.
        flow.server_evidence.rst.as_mut().unwrap().mac = None;
        assert_eq!(verdict_of(flow.clone()), ResetBy::Endpoint);
        flow.server_evidence.rst.as_mut().unwrap().mac = Some(OTHER_MAC);
        flow.server_evidence.baseline.as_mut().unwrap().mac = None;
        assert_eq!(verdict_of(flow), ResetBy::Endpoint);
    }

    #[test]
    fn a_baseline_seen_on_the_other_hook_is_not_compared() {
        let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
        flow.server_evidence.baseline = Some(baseline(128, OTHER_MAC, Hook::Egress));
        let verdict = judge_first(&[flow]);
        assert_eq!(verdict.reset_by, ResetBy::Unknown);
        assert_eq!(
            kinds(&verdict),
            [&SignalKind::NoBaseline {
                hook: Hook::Ingress
            }]
        );
    }

    #[test]
    fn race_is_strong_even_without_a_baseline() {
        let mut evidence = rst(64, SERVER_MAC);
        evidence.packets_after = 4;
        evidence.bytes_beyond = 3000;
        let verdict = judge_first(&[reset_by_server(flow(40001, "10.0.2.1:443"), evidence)]);
        assert_eq!(verdict.reset_by, ResetBy::Middlebox);
        assert_eq!(
            kinds(&verdict),
            [
                &SignalKind::DataAfterRst {
                    rst_seq: 1000,
                    packets_after: 4,
                    bytes_beyond: 3000
                },
                &SignalKind::NoBaseline {
                    hook: Hook::Ingress
                },
            ]
        );
    }

    #[test]
    fn packets_after_without_data_beyond_only_support() {
        let mut evidence = rst(64, SERVER_MAC);
        evidence.packets_after = 2;
        let no_baseline = reset_by_server(flow(40001, "10.0.2.1:443"), evidence);
        let verdict = judge_first(std::slice::from_ref(&no_baseline));
        assert_eq!(verdict.reset_by, ResetBy::Unknown);
        let after = SignalKind::PacketsAfterRst {
            rst_seq: 1000,
            packets_after: 2,
        };
        assert_eq!(verdict.signals[1].kind, after);
        assert_eq!(verdict.signals[1].weight, Weight::Supporting);

        let mut with_baseline = no_baseline;
        with_baseline.server_evidence.baseline = Some(baseline(64, SERVER_MAC, Hook::Ingress));
        assert_eq!(verdict_of(with_baseline), ResetBy::Endpoint);
    }

    #[test]
    fn back_to_back_rsts_that_jump() {
        let mut evidence = rst(64, SERVER_MAC);
        evidence.max_seq_jump = SEQ_JUMP_LIMIT + 1;
        let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), evidence);
        flow.server_evidence.baseline = Some(baseline(64, SERVER_MAC, Hook::Ingress));
        let verdict = judge_first(&[flow.clone()]);
        assert_eq!(verdict.reset_by, ResetBy::Middlebox);
        assert_eq!(
            verdict.signals[0].kind,
            SignalKind::SequenceJump {
                jump: SEQ_JUMP_LIMIT + 1,
                window_ns: 2 * SECOND
            }
        );
        flow.server_evidence.rst.as_mut().unwrap().max_seq_jump = SEQ_JUMP_LIMIT;
        assert_eq!(verdict_of(flow), ResetBy::Endpoint);
    }

    /// A refusal 3 s after the SYN, five RSTs with one sequence number, a packet after the RST:
    /// all supporting, none decides. The IP ID 0 against port 80's 4321 is not even compared:
    /// IDs are numbered per connection.
    fn everything_supporting() -> (FlowRecord, FlowRecord) {
        let mut evidence = rst(64, SERVER_MAC);
        evidence.first_ns = 3 * SECOND + 1;
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
            kinds(&verdict),
            [
                &ttl_comparison(64, 64, others(1)),
                &SignalKind::PacketsAfterRst {
                    rst_seq: 1000,
                    packets_after: 1
                },
                &SignalKind::RepeatedSequence { rsts: 5, seq: 1000 },
                &SignalKind::SlowRefusal {
                    delay_ns: 3 * SECOND,
                    prompt_answers: 1
                },
            ]
        );
        let weights: Vec<Weight> = verdict.signals.iter().map(|s| s.weight).collect();
        assert_eq!(
            weights,
            [
                Weight::Comparison,
                Weight::Supporting,
                Weight::Supporting,
                Weight::Supporting
            ]
        );

        // Without the port-80 baseline the same signals leave it unknown.
        let alone = judge_first(&[refused]);
        assert_eq!(alone.reset_by, ResetBy::Unknown);
        assert_eq!(
            alone.signals[0].kind,
            SignalKind::NoBaseline {
                hook: Hook::Ingress
            }
        );
    }

    #[test]
    fn a_slow_refusal_needs_prompt_answers_to_compare_with() {
        let (refused, mut port_80) = everything_supporting();
        port_80.syn_ack_ns = Some(1 + 2 * SECOND);
        let verdict = judge_first(&[refused, port_80]);
        assert!(!has(&verdict, |kind| matches!(
            kind,
            SignalKind::SlowRefusal { .. }
        )));
    }

    #[test]
    fn ip_ids_close_or_unnumbered_are_in_line() {
        let cases = [
            (5000, 1000, Some(Some(4000))),
            (1999, 1000, None),
            (10, 65000, None), // 546 apart, around the wrap
            (40000, 1000, Some(Some(26536))),
            (1234, 0, None), // the host does not number its packets
            (0, 0, None),
            (0, 1000, Some(None)),
        ];
        for (rst_id, usual, out_of_line) in cases {
            let mut evidence = rst(64, SERVER_MAC);
            evidence.ip_id = rst_id;
            let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), evidence);
            let mut usual_baseline = baseline(64, SERVER_MAC, Hook::Ingress);
            usual_baseline.ip_id = usual;
            flow.server_evidence.baseline = Some(usual_baseline);
            let verdict = judge_first(&[flow]);
            assert_eq!(verdict.reset_by, ResetBy::Endpoint);
            let found = verdict.signals.iter().find_map(|signal| match signal.kind {
                SignalKind::IpIdOutOfLine { distance, .. } => {
                    assert_eq!(signal.weight, Weight::Supporting);
                    Some(distance)
                }
                _ => None,
            });
            assert_eq!(found, out_of_line, "{rst_id} vs {usual}");
        }
    }

    #[test]
    fn no_baseline_is_unknown_never_a_guess() {
        let verdict = judge_first(&[reset_by_server(
            flow(40001, "10.0.2.1:443"),
            rst(64, SERVER_MAC),
        )]);
        assert_eq!(verdict.reset_by, ResetBy::Unknown);
        assert_eq!(
            kinds(&verdict),
            [&SignalKind::NoBaseline {
                hook: Hook::Ingress
            }]
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
        odd_one.server_evidence.baseline.as_mut().unwrap().mac = Some(OTHER_MAC);
        let flows = [
            reset,
            answered(40002, "10.0.2.1:80", 127, 5),
            answered(40003, "10.0.2.1:8080", 127, 6),
            odd_one,
        ];
        let verdict = judge_first(&flows);
        assert_eq!(verdict.reset_by, ResetBy::Middlebox);
        assert_eq!(kinds(&verdict), [&ttl_comparison(64, 127, others(3))]);
    }

    #[test]
    fn this_flows_baseline_comes_before_other_flows() {
        let mut reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
        reset.server_evidence.baseline = Some(baseline(64, SERVER_MAC, Hook::Ingress));
        let port_80 = answered(40002, "10.0.2.1:80", 127, 5);
        let verdict = judge_first(&[reset, port_80]);
        assert_eq!(verdict.reset_by, ResetBy::Endpoint);
        assert_eq!(kinds(&verdict), [&ttl_comparison(64, 64, THIS)]);
    }

    #[test]
    fn the_clients_own_reset_leaves_on_egress() {
        let mut flow = flow(40001, "10.0.2.1:443");
        flow.client_to_server.rst = 1;
        flow.client_evidence.rst = Some(RstSeen {
            hook: Hook::Egress,
            ..rst(64, SERVER_MAC)
        });
        let verdict = judge_first(&[flow]);
        assert_eq!(
            (verdict.reset_by, verdict.rst_from),
            (ResetBy::Endpoint, Role::Client)
        );
        assert_eq!(
            verdict.signals,
            [Signal {
                from: Role::Client,
                weight: Weight::Comparison,
                kind: SignalKind::TtlComparison {
                    hook: Hook::Egress,
                    rst_ttl: 64,
                    rst_hops: 0,
                    usual_ttl: 64,
                    usual_hops: 0,
                    baseline: THIS,
                    relation: TtlRelation::Agrees,
                },
            }]
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
        flow.server_evidence.baseline = Some(baseline(64, SERVER_MAC, Hook::Ingress));
        flow.client_to_server.rst = 2;
        flow.client_evidence.rst = Some(RstSeen {
            first_ns: 2 * SECOND,
            hook: Hook::Egress,
            ..rst(64, SERVER_MAC)
        });
        let verdict = judge_first(&[flow.clone()]);
        assert_eq!(
            (verdict.reset_by, verdict.rst_from),
            (ResetBy::Middlebox, Role::Server)
        );
        let from: Vec<Role> = verdict.signals.iter().map(|s| s.from).collect();
        assert_eq!(
            from,
            [Role::Server, Role::Server, Role::Server, Role::Client]
        );
        assert!(matches!(
            kinds(&verdict)[..2],
            [
                SignalKind::MacDifference { .. },
                SignalKind::DataAfterRst { .. }
            ]
        ));

        // Without a middlebox signal, the earliest RST decides.
        let mut honest = flow;
        honest.server_evidence.rst = Some(RstSeen {
            first_ns: 3 * SECOND,
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
        assert_eq!(judge(&quiet, &HostIndex::new([&quiet])), None);

        let mut evicted = flow(40001, "10.0.2.1:443");
        evicted.server_to_client.rst = 1;
        let verdict = judge_first(&[evicted]);
        assert_eq!(
            (verdict.reset_by, verdict.rst_from),
            (ResetBy::Unknown, Role::Server)
        );
        assert_eq!(kinds(&verdict), [&SignalKind::EvidenceLost]);
    }

    /// A connection whose handshake answer arrived with `handshake_ttl` (no FIN from the server
    /// yet), reset by a RST with `rst_ttl`; and `closed` connections to the server's port 80
    /// whose FINs arrived with `host_ttl`.
    fn behind_a_handshake(handshake_ttl: u8, rst_ttl: u8, host_ttl: u8, closed: u16) -> Verdict {
        let mut reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(rst_ttl, SERVER_MAC));
        reset.server_evidence.baseline = Some(handshake(handshake_ttl, SERVER_MAC, Hook::Ingress));
        let mut flows = vec![reset];
        flows.extend((0..closed).map(|i| answered(40100 + i, "10.0.2.1:80", host_ttl, 5)));
        judge_first(&flows)
    }

    #[test]
    fn a_syn_proxys_handshake_is_no_baseline_for_the_servers_reset() {
        // The proxy answered at 0 hops; the server's RST and its FINs elsewhere at 1 hop.
        let verdict = behind_a_handshake(64, 127, 127, 2);
        assert_eq!(
            (verdict.reset_by, verdict.middlebox_role),
            (ResetBy::Endpoint, None)
        );
        assert_eq!(
            verdict.signals[0].kind,
            SignalKind::SynProxyHandshake {
                hook: Hook::Ingress,
                handshake_ttl: 64,
                handshake_hops: 0,
                rst_ttl: 127,
                rst_hops: 1,
                connections: 2
            }
        );
        // Nothing of the server after a handshake: it cannot be told, never a middlebox.
        let alone = behind_a_handshake(64, 127, 127, 0);
        assert_eq!(alone.reset_by, ResetBy::Unknown);
        assert!(matches!(
            alone.signals[0].kind,
            SignalKind::HandshakeOnlyDiffers { .. }
        ));
    }

    #[test]
    fn a_proxy_that_answered_the_handshake_and_reset_is_a_middlebox() {
        // The seed story: the gateway answered port 443 itself (0 hops) and reset; the server's
        // port 80 is 1 hop away.
        let verdict = behind_a_handshake(64, 64, 127, 1);
        assert_eq!(
            (verdict.reset_by, verdict.middlebox_role),
            (ResetBy::Middlebox, Some(MiddleboxRole::Proxy))
        );
        assert_eq!(
            verdict.signals[0],
            Signal {
                from: Role::Server,
                weight: Weight::Strong,
                kind: SignalKind::ProxyAnswered {
                    hook: Hook::Ingress,
                    proxy_ttl: 64,
                    proxy_hops: 0,
                    host_ttl: 127,
                    host_hops: 1,
                    connections: 1
                }
            }
        );
    }

    #[test]
    fn a_handshake_and_reset_that_agree_with_the_host_are_the_hosts() {
        let verdict = behind_a_handshake(127, 127, 127, 3);
        assert_eq!(verdict.reset_by, ResetBy::Endpoint);
        assert_eq!(kinds(&verdict), [&ttl_comparison(127, 127, THIS)]);
        // Without other connections, as with any baseline.
        assert_eq!(
            behind_a_handshake(127, 127, 127, 0).reset_by,
            ResetBy::Endpoint
        );
    }

    #[test]
    fn another_host_at_the_same_distance_is_unknown() {
        // A load balancer's backend answered this port from initial TTL 128, the host's other
        // ports come from initial TTL 64, both 1 hop away.
        let verdict = behind_a_handshake(127, 127, 63, 2);
        assert_eq!(verdict.reset_by, ResetBy::Unknown);
        assert_eq!(kinds(&verdict), [&ttl_comparison(127, 63, others(2))]);
    }

    #[test]
    fn a_rst_unlike_both_the_handshake_and_the_host_is_a_middlebox_on_the_path() {
        let verdict = behind_a_handshake(127, 250, 127, 2);
        assert_eq!(
            (verdict.reset_by, verdict.middlebox_role),
            (ResetBy::Middlebox, Some(MiddleboxRole::OnPath))
        );
        assert_eq!(kinds(&verdict), [&ttl_comparison(250, 127, others(2))]);
    }

    #[test]
    fn a_middlebox_that_answered_no_handshake_is_on_the_path() {
        let reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
        let verdict = judge_first(&[reset, answered(40002, "10.0.2.1:80", 127, 5)]);
        assert_eq!(verdict.middlebox_role, Some(MiddleboxRole::OnPath));
    }

    #[test]
    fn a_mac_unlike_only_the_handshakes_needs_the_hosts_later_packets() {
        // On a flat segment: the SYN/ACK came from OTHER_MAC (a SYN proxy's, or the server's),
        // the RST from SERVER_MAC.
        let with_later = |later: Option<MacAddr>| {
            let mut reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
            reset.server_evidence.baseline = Some(handshake(64, OTHER_MAC, Hook::Ingress));
            let mut flows = vec![reset];
            if let Some(mac) = later {
                let mut closed = answered(40002, "10.0.2.1:80", 64, 5);
                closed.server_evidence.baseline.as_mut().unwrap().mac = Some(mac);
                flows.push(closed);
            }
            judge_first(&flows)
        };
        let macs = |verdict: &Verdict| -> Vec<Weight> {
            verdict
                .signals
                .iter()
                .filter(|s| matches!(s.kind, SignalKind::MacDifference { .. }))
                .map(|s| s.weight)
                .collect()
        };
        // Nothing else to go by: reported, never decisive.
        let alone = with_later(None);
        assert_eq!(
            (alone.reset_by, macs(&alone)),
            (ResetBy::Endpoint, vec![Weight::Supporting])
        );
        // The host's later packets come from the RST's MAC: a SYN proxy answered.
        let proxied = with_later(Some(SERVER_MAC));
        assert_eq!(
            (proxied.reset_by, macs(&proxied)),
            (ResetBy::Endpoint, vec![])
        );
        // From neither: another box sent the RST.
        let forged = with_later(Some(MacAddr([0x02, 0, 0, 0, 0, 0x77])));
        assert_eq!(
            (forged.reset_by, macs(&forged)),
            (ResetBy::Middlebox, vec![Weight::Strong])
        );
    }

    #[test]
    fn signals_serialize_with_their_kind_and_numbers() {
        let signal = Signal {
            from: Role::Server,
            weight: Weight::Strong,
            kind: ttl_comparison(64, 127, others(2)),
        };
        assert_eq!(
            serde_json::to_value(&signal).unwrap(),
            serde_json::json!({
                "from": "server", "weight": "strong", "signal": "ttl_comparison",
                "hook": "ingress", "rst_ttl": 64, "rst_hops": 0, "usual_ttl": 127,
                "usual_hops": 1, "baseline": {"of": "other_connections", "count": 2},
                "relation": "other_distance"
            })
        );
        let mac = Signal {
            from: Role::Client,
            weight: Weight::Strong,
            kind: SignalKind::MacDifference {
                hook: Hook::Egress,
                rst_mac: OTHER_MAC,
                usual_mac: SERVER_MAC,
                baseline: THIS,
            },
        };
        assert_eq!(
            serde_json::to_value(&mac).unwrap()["rst_mac"],
            "02:00:00:00:00:99"
        );
        assert_eq!(
            serde_json::to_value(Signal {
                from: Role::Server,
                weight: Weight::Comparison,
                kind: SignalKind::EvidenceLost,
            })
            .unwrap(),
            serde_json::json!({"from": "server", "weight": "comparison", "signal": "evidence_lost"})
        );
    }
}
