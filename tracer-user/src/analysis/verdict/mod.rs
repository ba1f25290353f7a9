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

mod signals;

use std::net::SocketAddr;

use tracer_common::BACK_TO_BACK_NS;

pub use signals::{
    BaselineOf, MiddleboxRole, ResetBy, Role, Signal, SignalKind, TtlRelation, Verdict, Weight,
};

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
    .filter_map(|(role, side)| side.rst.as_deref().map(|rst| (role, rst)))
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
    } else if rst.ack_beyond > 0 {
        add(
            Weight::Strong,
            SignalKind::AckAfterRst {
                rst_ack: rst.ack,
                packets_after: rst.packets_after,
                ack_beyond: rst.ack_beyond,
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
            // A SYN proxy sits between us and the host, never beyond it: a RST from nearer
            // than the handshake's answer is no host's behind any SYN proxy (a firewall's
            // idle timeout, an injector).
            TtlRelation::OtherDistance if hops(rst.ttl) < hops(handshake.ttl) => (
                Weight::Strong,
                comparison(handshake.ttl, BaselineOf::ThisConnection, with_handshake),
                false,
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
mod tests;
