//! The verdict's signals as sentences: the one place where flagtrace puts evidence into words.
//! A sentence says the numbers; a summary (for the signals that can lead a verdict) says the
//! deciding fact in a few words, for one-line output.

use tracer_common::Hook;

use crate::analysis::{
    flow::FlowRecord,
    phase::Phase,
    report::FlowReport,
    verdict::{BaselineOf, MiddleboxRole, ResetBy, Role, Signal, SignalKind, TtlRelation, Verdict},
};

/// A RST this soon after what it answers came "at once": within a few ticks of the kernel's
/// clock, before any timer of a proxy or an application could have run.
const AT_ONCE_MS: u32 = 50;
/// Silence at least this long before the packet a prompt RST answered points at an idle
/// timeout: a stateful box had forgotten the connection.
const IDLE_HINT_MS: u32 = 1_000;

/// When the deciding RST came and after what, e.g. `3.0 s after the client's TLS ClientHello
/// for customerweb`, or `at once after the client's data, which came after 6.0 s of silence (an
/// idle timeout on a stateful box?)`. `None` when the kernel could not measure it.
pub fn timing(report: &FlowReport) -> Option<String> {
    let verdict = report.verdict.as_ref()?;
    let rst = report.deciding_rst()?;
    let delay_ms = rst.reset_delay_ms?;
    let other = match verdict.rst_from {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    };
    // What the other side last sent that was new: the phase says which of its segments that was.
    let what = match (report.phase?, other) {
        (Phase::Syn, Role::Client) => "SYN".to_owned(),
        (Phase::Handshake, _) => "handshake".to_owned(),
        (Phase::Request, Role::Server) => "SYN/ACK".to_owned(),
        (Phase::Request, Role::Client) => match &report.flow.tls_sni {
            Some(name) => format!("TLS ClientHello for {name}"),
            None => "request".to_owned(),
        },
        (Phase::Transfer, _) => "data".to_owned(),
        (Phase::Closing, _) => "data or FIN".to_owned(),
        (Phase::Syn, Role::Server) => return None,
    };
    let when = if delay_ms < AT_ONCE_MS {
        "at once".to_owned()
    } else {
        duration_text(delay_ms)
    };
    let mut text = format!("{when} after the {other}'s {what}");
    if let Some(idle_ms) = rst.idle_before_ms.filter(|&idle| idle >= IDLE_HINT_MS) {
        if delay_ms < AT_ONCE_MS {
            text += &format!(", which came after {} of silence", duration_text(idle_ms));
            let on_path = verdict.reset_by == ResetBy::Middlebox
                && verdict.middlebox_role == Some(MiddleboxRole::OnPath);
            if on_path {
                text += " (an idle timeout on a stateful box?)";
            }
        }
    }
    Some(text)
}

/// `250 ms`, `3.0 s`: milliseconds below a second, tenths of seconds above (the kernel's clock
/// ticks every few milliseconds).
pub fn duration_text(ms: u32) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", f64::from(ms) / 1_000.0)
    }
}

/// Every signal of the verdict as a sentence, the deciding ones first.
pub fn sentences(flow: &FlowRecord, verdict: &Verdict) -> Vec<String> {
    verdict
        .signals
        .iter()
        .map(|signal| sentence(flow, signal))
        .collect()
}

/// The verdict in a few words: the summary of its first signal.
pub fn summary(flow: &FlowRecord, verdict: &Verdict) -> String {
    verdict
        .signals
        .first()
        .and_then(|signal| signal_summary(flow, signal))
        .unwrap_or_default()
}

/// The words for one side's RST: how TTLs are called, and whether it arrived or left.
struct Words {
    ttl: &'static str,
    egress: bool,
}

impl Words {
    fn new(flow: &FlowRecord, hook: Hook) -> Words {
        Words {
            ttl: if flow.server.is_ipv6() {
                "hop limit"
            } else {
                "TTL"
            },
            egress: hook == Hook::Egress,
        }
    }

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

/// Where a baseline comes from, to end a sentence.
fn baseline_source(of: BaselineOf) -> String {
    match of {
        BaselineOf::ThisConnection => " on this connection".to_owned(),
        BaselineOf::OtherConnections { count: 1 } => " on 1 other connection".to_owned(),
        BaselineOf::OtherConnections { count } => format!(" on {count} other connections"),
    }
}

pub fn hops_text(hops: u8) -> String {
    match hops {
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

/// The address of the side a signal is about.
fn address(flow: &FlowRecord, role: Role) -> std::net::IpAddr {
    match role {
        Role::Client => flow.client.ip(),
        Role::Server => flow.server.ip(),
    }
}

/// One signal as a sentence.
pub fn sentence(flow: &FlowRecord, signal: &Signal) -> String {
    let role = signal.from;
    match &signal.kind {
        SignalKind::TtlComparison {
            hook,
            rst_ttl,
            rst_hops,
            usual_ttl,
            usual_hops,
            baseline,
            relation,
        } => {
            let say = Words::new(flow, *hook);
            let word = say.ttl;
            let another_host = match relation {
                TtlRelation::OtherInitialTtl => format!(
                    ": the same distance from another initial {word}, another host (a load \
                     balancer's backend?) or a transparent box"
                ),
                TtlRelation::Agrees | TtlRelation::OtherDistance => String::new(),
            };
            format!(
                "RST {} with {word} {rst_ttl} ({}); the {role}'s packets {} with {word} \
                 {usual_ttl} ({}){}{another_host}",
                say.rst_moved(),
                hops_text(*rst_hops),
                say.packets_move(),
                hops_text(*usual_hops),
                baseline_source(*baseline)
            )
        }
        SignalKind::SynProxyHandshake {
            hook,
            handshake_ttl,
            handshake_hops,
            rst_ttl,
            rst_hops,
            connections,
        } => {
            let say = Words::new(flow, *hook);
            let word = say.ttl;
            format!(
                "this connection's handshake was answered with {word} {handshake_ttl} ({}), \
                 its RST with {word} {rst_ttl} ({}) like the {role}'s packets after a handshake \
                 on {}: a SYN proxy answered the handshake, the {role} reset",
                hops_text(*handshake_hops),
                hops_text(*rst_hops),
                plural(*connections as u64, "other connection", "other connections")
            )
        }
        SignalKind::ProxyAnswered {
            hook,
            proxy_ttl,
            proxy_hops,
            host_ttl,
            host_hops,
            connections,
        } => {
            let say = Words::new(flow, *hook);
            let word = say.ttl;
            format!(
                "this connection's handshake and its RST came with {word} {proxy_ttl} ({}), \
                 the {role}'s packets after a handshake on {} with {word} {host_ttl} ({}): a \
                 proxy answered this connection in the {role}'s name",
                hops_text(*proxy_hops),
                plural(*connections as u64, "other connection", "other connections"),
                hops_text(*host_hops)
            )
        }
        SignalKind::HandshakeOnlyDiffers {
            hook,
            rst_ttl,
            rst_hops,
            handshake_ttl,
            handshake_hops,
        } => {
            let say = Words::new(flow, *hook);
            let word = say.ttl;
            format!(
                "RST {} with {word} {rst_ttl} ({}), this connection's handshake answer with \
                 {word} {handshake_ttl} ({}); a SYN proxy answers handshakes in the {role}'s \
                 name, and no packet of the {role} after a handshake was seen to tell",
                say.rst_moved(),
                hops_text(*rst_hops),
                hops_text(*handshake_hops)
            )
        }
        SignalKind::MacDifference {
            hook,
            rst_mac,
            usual_mac,
            baseline,
        } => {
            let say = Words::new(flow, *hook);
            let to_from = say.mac_preposition();
            let came = if say.egress { "went" } else { "came" };
            format!(
                "RST {came} {to_from} {rst_mac}, the {role}'s packets {to_from} {usual_mac}{}",
                baseline_source(*baseline)
            )
        }
        SignalKind::IpIdOutOfLine {
            rst_ip_id,
            usual_ip_id,
            distance,
            baseline,
        } => match distance {
            None => format!(
                "RST carries IP ID 0, the {role}'s packets IP ID {usual_ip_id}{}",
                baseline_source(*baseline)
            ),
            Some(distance) => format!(
                "RST carries IP ID {rst_ip_id}, {distance} away from the {role}'s IP ID \
                 {usual_ip_id}{}",
                baseline_source(*baseline)
            ),
        },
        SignalKind::NoBaseline { hook } => format!(
            "no baseline: no normal packets from the {role} ({}) were seen {} on this \
             interface, on this connection or another, to compare the RST with",
            address(flow, role),
            if *hook == Hook::Egress {
                "leaving"
            } else {
                "arriving"
            },
        ),
        SignalKind::DataAfterRst {
            rst_seq,
            packets_after,
            bytes_beyond,
        } => format!(
            "after its RST (sequence {rst_seq}) the {role} kept sending: {}, {} at or beyond \
             the RST's sequence, which an endpoint that reset cannot do",
            plural(u64::from(*packets_after), "packet", "packets"),
            plural(u64::from(*bytes_beyond), "byte", "bytes")
        ),
        SignalKind::AckAfterRst {
            rst_ack,
            packets_after,
            ack_beyond,
        } => format!(
            "after its RST (acknowledging {rst_ack}) the {role} sent {} acknowledging {} more, \
             which an endpoint that reset cannot do",
            plural(u64::from(*packets_after), "packet", "packets"),
            plural(u64::from(*ack_beyond), "byte", "bytes")
        ),
        SignalKind::PacketsAfterRst {
            rst_seq,
            packets_after,
        } => format!(
            "the {role} sent {} after its RST (sequence {rst_seq}), none with data at or beyond \
             the RST's sequence",
            plural(u64::from(*packets_after), "packet", "packets")
        ),
        SignalKind::SequenceJump { jump, window_ns } => format!(
            "back-to-back RSTs from the {role} (within {} s) jump {jump} in sequence number",
            window_ns / 1_000_000_000
        ),
        SignalKind::RepeatedSequence { rsts, seq } => {
            format!("{rsts} RSTs from the {role} carried the same sequence number {seq}")
        }
        SignalKind::SlowRefusal {
            delay_ns,
            prompt_answers,
        } => format!(
            "the refusal came {:.2} s after the SYN, while {} to {} {} answered within 1 s",
            *delay_ns as f64 / 1e9,
            plural(
                *prompt_answers as u64,
                "other connection",
                "other connections"
            ),
            flow.server.ip(),
            if *prompt_answers == 1 { "was" } else { "were" }
        ),
        SignalKind::EvidenceLost => LOST_EVIDENCE.to_owned(),
    }
}

/// Why a flow with RSTs may have no evidence: both ways the reset table loses it.
const LOST_EVIDENCE: &str = "the kernel kept no evidence of this flow's RSTs: the reset table \
    had no room for the flow when they came (counted in resets_unrecorded), or gave its entry to \
    a newer reset flow since (an unanswered flow's entry gives way at once, a connection's after \
    60 s without RSTs); see attach --max-resets";

/// The signal in a few words, for the signals that can lead a verdict; `None` for the others.
fn signal_summary(flow: &FlowRecord, signal: &Signal) -> Option<String> {
    let role = signal.from;
    Some(match &signal.kind {
        SignalKind::TtlComparison {
            hook,
            rst_ttl,
            rst_hops,
            usual_ttl,
            usual_hops,
            relation,
            ..
        } => {
            let word = Words::new(flow, *hook).ttl;
            let relation = match relation {
                TtlRelation::Agrees => "agrees with",
                TtlRelation::OtherDistance | TtlRelation::OtherInitialTtl => "vs",
            };
            format!(
                "RST {word} {rst_ttl} ({}) {relation} {role} {word} {usual_ttl} ({})",
                hops_text(*rst_hops),
                hops_text(*usual_hops)
            )
        }
        SignalKind::MacDifference {
            rst_mac, usual_mac, ..
        } => format!("RST MAC {rst_mac} vs {role} MAC {usual_mac}"),
        SignalKind::SynProxyHandshake {
            hook,
            handshake_ttl,
            rst_ttl,
            ..
        } => {
            let word = Words::new(flow, *hook).ttl;
            format!(
                "a SYN proxy answered the handshake ({word} {handshake_ttl}), the {role} reset \
                 ({word} {rst_ttl})"
            )
        }
        SignalKind::ProxyAnswered {
            hook,
            proxy_ttl,
            proxy_hops,
            host_ttl,
            host_hops,
            ..
        } => {
            let word = Words::new(flow, *hook).ttl;
            format!(
                "port {} is answered from {} ({word} {proxy_ttl}), the {role}'s other \
                 connections from {} ({word} {host_ttl})",
                flow.server.port(),
                hops_text(*proxy_hops),
                hops_text(*host_hops)
            )
        }
        SignalKind::HandshakeOnlyDiffers { .. } => {
            format!("the RST differs only from the {role}'s handshake answer")
        }
        SignalKind::NoBaseline { .. } => format!("no baseline for the {role}"),
        SignalKind::DataAfterRst { bytes_beyond, .. } => format!(
            "{role} kept sending {} past its RST",
            plural(u64::from(*bytes_beyond), "byte", "bytes")
        ),
        SignalKind::AckAfterRst { .. } => {
            format!("{role} acknowledged more after its RST")
        }
        SignalKind::SequenceJump { jump, .. } => {
            format!("back-to-back RSTs jump {jump} in sequence")
        }
        SignalKind::EvidenceLost => "no reset evidence kept".to_owned(),
        SignalKind::IpIdOutOfLine { .. }
        | SignalKind::PacketsAfterRst { .. }
        | SignalKind::RepeatedSequence { .. }
        | SignalKind::SlowRefusal { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{fixtures::*, mac::MacAddr, verdict::Weight};

    fn v4() -> FlowRecord {
        flow(40001, "10.0.2.1:443")
    }

    fn v6() -> FlowRecord {
        flow(40001, "[fd00:2::1]:443")
    }

    fn signal(from: Role, weight: Weight, kind: SignalKind) -> Signal {
        Signal { from, weight, kind }
    }

    fn server(weight: Weight, kind: SignalKind) -> Signal {
        signal(Role::Server, weight, kind)
    }

    fn ttl(hook: Hook, rst_ttl: u8, usual_ttl: u8, baseline: BaselineOf) -> SignalKind {
        let hops = crate::analysis::verdict::hops;
        SignalKind::TtlComparison {
            hook,
            rst_ttl,
            rst_hops: hops(rst_ttl),
            usual_ttl,
            usual_hops: hops(usual_ttl),
            baseline,
            relation: if rst_ttl.abs_diff(usual_ttl) <= 2 {
                TtlRelation::Agrees
            } else if hops(rst_ttl) == hops(usual_ttl) {
                TtlRelation::OtherInitialTtl
            } else {
                TtlRelation::OtherDistance
            },
        }
    }

    /// The sentence and the summary of one signal.
    fn said(flow: &FlowRecord, signal: &Signal) -> (String, Option<String>) {
        (sentence(flow, signal), signal_summary(flow, signal))
    }

    #[test]
    fn hops_are_counted_in_words() {
        assert_eq!(hops_text(1), "1 hop");
        assert_eq!(hops_text(0), "0 hops");
        assert_eq!(hops_text(63), "63 hops");
    }

    #[test]
    fn a_ttl_that_differs_against_other_connections() {
        let other = BaselineOf::OtherConnections { count: 1 };
        let differs = server(Weight::Strong, ttl(Hook::Ingress, 64, 127, other));
        assert_eq!(
            said(&v4(), &differs),
            (
                "RST arrived with TTL 64 (0 hops); the server's packets arrive with TTL 127 \
                 (1 hop) on 1 other connection"
                    .to_owned(),
                Some("RST TTL 64 (0 hops) vs server TTL 127 (1 hop)".to_owned())
            )
        );
        let three = BaselineOf::OtherConnections { count: 3 };
        assert!(sentence(
            &v4(),
            &server(Weight::Strong, ttl(Hook::Ingress, 64, 127, three))
        )
        .ends_with("(1 hop) on 3 other connections"));
    }

    #[test]
    fn a_ttl_that_agrees_on_this_connection() {
        let agrees = server(
            Weight::Comparison,
            ttl(Hook::Ingress, 64, 64, BaselineOf::ThisConnection),
        );
        assert_eq!(
            said(&v4(), &agrees),
            (
                "RST arrived with TTL 64 (0 hops); the server's packets arrive with TTL 64 \
                 (0 hops) on this connection"
                    .to_owned(),
                Some("RST TTL 64 (0 hops) agrees with server TTL 64 (0 hops)".to_owned())
            )
        );
    }

    #[test]
    fn ipv6_says_hop_limit() {
        let other = BaselineOf::OtherConnections { count: 1 };
        let differs = server(Weight::Strong, ttl(Hook::Ingress, 64, 61, other));
        assert_eq!(
            said(&v6(), &differs),
            (
                "RST arrived with hop limit 64 (0 hops); the server's packets arrive with hop \
                 limit 61 (3 hops) on 1 other connection"
                    .to_owned(),
                Some("RST hop limit 64 (0 hops) vs server hop limit 61 (3 hops)".to_owned())
            )
        );
    }

    #[test]
    fn a_rst_that_left_says_left_and_leave() {
        let client = signal(
            Role::Client,
            Weight::Comparison,
            ttl(Hook::Egress, 64, 64, BaselineOf::ThisConnection),
        );
        assert_eq!(
            sentence(&v4(), &client),
            "RST left with TTL 64 (0 hops); the client's packets leave with TTL 64 (0 hops) on \
             this connection"
        );
    }

    #[test]
    fn a_mac_difference_either_way() {
        let mac = |hook| SignalKind::MacDifference {
            hook,
            rst_mac: OTHER_MAC,
            usual_mac: SERVER_MAC,
            baseline: BaselineOf::ThisConnection,
        };
        assert_eq!(
            said(&v4(), &server(Weight::Strong, mac(Hook::Ingress))),
            (
                "RST came from 02:00:00:00:00:99, the server's packets from 00:01:d7:3c:5e:01 on \
                 this connection"
                    .to_owned(),
                Some("RST MAC 02:00:00:00:00:99 vs server MAC 00:01:d7:3c:5e:01".to_owned())
            )
        );
        assert_eq!(
            sentence(
                &v4(),
                &signal(Role::Client, Weight::Strong, mac(Hook::Egress))
            ),
            "RST went to 02:00:00:00:00:99, the client's packets to 00:01:d7:3c:5e:01 on this \
             connection"
        );
    }

    #[test]
    fn an_ip_id_far_away_or_zero() {
        let ip_id = |rst_ip_id, distance| {
            server(
                Weight::Supporting,
                SignalKind::IpIdOutOfLine {
                    rst_ip_id,
                    usual_ip_id: 1000,
                    distance,
                    baseline: BaselineOf::ThisConnection,
                },
            )
        };
        assert_eq!(
            said(&v4(), &ip_id(5000, Some(4000))),
            (
                "RST carries IP ID 5000, 4000 away from the server's IP ID 1000 on this \
                 connection"
                    .to_owned(),
                None
            )
        );
        assert_eq!(
            sentence(&v4(), &ip_id(0, None)),
            "RST carries IP ID 0, the server's packets IP ID 1000 on this connection"
        );
    }

    #[test]
    fn no_baseline_names_the_host_and_the_direction() {
        let none = |hook| server(Weight::Comparison, SignalKind::NoBaseline { hook });
        assert_eq!(
            said(&v4(), &none(Hook::Ingress)),
            (
                "no baseline: no normal packets from the server (10.0.2.1) were seen arriving on \
                 this interface, on this connection or another, to compare the RST with"
                    .to_owned(),
                Some("no baseline for the server".to_owned())
            )
        );
        assert!(sentence(&v4(), &none(Hook::Egress)).contains("were seen leaving"));
    }

    #[test]
    fn data_after_a_rst() {
        let race = server(
            Weight::Strong,
            SignalKind::DataAfterRst {
                rst_seq: 1000,
                packets_after: 4,
                bytes_beyond: 3000,
            },
        );
        assert_eq!(
            said(&v4(), &race),
            (
                "after its RST (sequence 1000) the server kept sending: 4 packets, 3000 bytes at \
                 or beyond the RST's sequence, which an endpoint that reset cannot do"
                    .to_owned(),
                Some("server kept sending 3000 bytes past its RST".to_owned())
            )
        );
    }

    #[test]
    fn an_ack_after_a_rst() {
        let race = server(
            Weight::Strong,
            SignalKind::AckAfterRst {
                rst_ack: 2000,
                packets_after: 1,
                ack_beyond: 1,
            },
        );
        assert_eq!(
            said(&v4(), &race),
            (
                "after its RST (acknowledging 2000) the server sent 1 packet acknowledging 1 \
                 byte more, which an endpoint that reset cannot do"
                    .to_owned(),
                Some("server acknowledged more after its RST".to_owned())
            )
        );
    }

    #[test]
    fn packets_after_a_rst() {
        let after = |packets_after| {
            server(
                Weight::Supporting,
                SignalKind::PacketsAfterRst {
                    rst_seq: 1000,
                    packets_after,
                },
            )
        };
        assert_eq!(
            said(&v4(), &after(2)),
            (
                "the server sent 2 packets after its RST (sequence 1000), none with data at or \
                 beyond the RST's sequence"
                    .to_owned(),
                None
            )
        );
        assert!(sentence(&v4(), &after(1)).starts_with("the server sent 1 packet after"));
    }

    #[test]
    fn back_to_back_rsts_that_jump() {
        let jump = server(
            Weight::Strong,
            SignalKind::SequenceJump {
                jump: 1_048_577,
                window_ns: 2 * SECOND,
            },
        );
        assert_eq!(
            said(&v4(), &jump),
            (
                "back-to-back RSTs from the server (within 2 s) jump 1048577 in sequence number"
                    .to_owned(),
                Some("back-to-back RSTs jump 1048577 in sequence".to_owned())
            )
        );
    }

    #[test]
    fn repeated_sequence_numbers() {
        let repeated = server(
            Weight::Supporting,
            SignalKind::RepeatedSequence { rsts: 5, seq: 1000 },
        );
        assert_eq!(
            said(&v4(), &repeated),
            (
                "5 RSTs from the server carried the same sequence number 1000".to_owned(),
                None
            )
        );
    }

    #[test]
    fn a_slow_refusal() {
        let slow = |prompt_answers| {
            server(
                Weight::Supporting,
                SignalKind::SlowRefusal {
                    delay_ns: 3 * SECOND,
                    prompt_answers,
                },
            )
        };
        assert_eq!(
            said(&v4(), &slow(1)),
            (
                "the refusal came 3.00 s after the SYN, while 1 other connection to 10.0.2.1 was \
                 answered within 1 s"
                    .to_owned(),
                None
            )
        );
        assert!(sentence(&v4(), &slow(2))
            .ends_with("2 other connections to 10.0.2.1 were answered within 1 s"));
    }

    #[test]
    fn lost_evidence() {
        let lost = server(Weight::Comparison, SignalKind::EvidenceLost);
        assert_eq!(
            said(&v4(), &lost),
            (
                LOST_EVIDENCE.to_owned(),
                Some("no reset evidence kept".to_owned())
            )
        );
    }

    #[test]
    fn another_initial_ttl_at_the_same_distance() {
        let other = BaselineOf::OtherConnections { count: 2 };
        let lb = server(Weight::Comparison, ttl(Hook::Ingress, 127, 63, other));
        assert_eq!(
            said(&v4(), &lb),
            (
                "RST arrived with TTL 127 (1 hop); the server's packets arrive with TTL 63 \
                 (1 hop) on 2 other connections: the same distance from another initial TTL, \
                 another host (a load balancer's backend?) or a transparent box"
                    .to_owned(),
                Some("RST TTL 127 (1 hop) vs server TTL 63 (1 hop)".to_owned())
            )
        );
    }

    #[test]
    fn a_syn_proxy_answered_the_handshake() {
        let proxy = server(
            Weight::Comparison,
            SignalKind::SynProxyHandshake {
                hook: Hook::Ingress,
                handshake_ttl: 64,
                handshake_hops: 0,
                rst_ttl: 127,
                rst_hops: 1,
                connections: 2,
            },
        );
        assert_eq!(
            said(&v4(), &proxy),
            (
                "this connection's handshake was answered with TTL 64 (0 hops), its RST with \
                 TTL 127 (1 hop) like the server's packets after a handshake on 2 other \
                 connections: a SYN proxy answered the handshake, the server reset"
                    .to_owned(),
                Some(
                    "a SYN proxy answered the handshake (TTL 64), the server reset (TTL 127)"
                        .to_owned()
                )
            )
        );
    }

    #[test]
    fn a_proxy_answered_the_connection() {
        let proxy = server(
            Weight::Strong,
            SignalKind::ProxyAnswered {
                hook: Hook::Ingress,
                proxy_ttl: 64,
                proxy_hops: 0,
                host_ttl: 127,
                host_hops: 1,
                connections: 1,
            },
        );
        assert_eq!(
            said(&v4(), &proxy),
            (
                "this connection's handshake and its RST came with TTL 64 (0 hops), the \
                 server's packets after a handshake on 1 other connection with TTL 127 (1 hop): \
                 a proxy answered this connection in the server's name"
                    .to_owned(),
                Some(
                    "port 443 is answered from 0 hops (TTL 64), the server's other connections \
                     from 1 hop (TTL 127)"
                        .to_owned()
                )
            )
        );
    }

    #[test]
    fn a_rst_that_differs_only_from_the_handshake() {
        let only = server(
            Weight::Comparison,
            SignalKind::HandshakeOnlyDiffers {
                hook: Hook::Ingress,
                rst_ttl: 127,
                rst_hops: 1,
                handshake_ttl: 64,
                handshake_hops: 0,
            },
        );
        assert_eq!(
            said(&v6(), &only),
            (
                "RST arrived with hop limit 127 (1 hop), this connection's handshake answer \
                 with hop limit 64 (0 hops); a SYN proxy answers handshakes in the server's \
                 name, and no packet of the server after a handshake was seen to tell"
                    .to_owned(),
                Some("the RST differs only from the server's handshake answer".to_owned())
            )
        );
    }

    #[test]
    fn a_verdict_reads_in_its_signals_order_and_its_first_signal_sums_it_up() {
        let mut injected = rst(64, OTHER_MAC);
        injected.packets_after = 3;
        injected.bytes_beyond = 2896;
        let mut flow = reset_by_server(v4(), injected);
        flow.server_evidence.baseline = Some(baseline(64, SERVER_MAC, Hook::Ingress));
        let verdict = judge_first(std::slice::from_ref(&flow));
        let sentences = sentences(&flow, &verdict);
        assert_eq!(sentences.len(), 3);
        assert!(sentences[0].starts_with("RST came from 02:00:00:00:00:99"));
        assert!(sentences[1].starts_with("after its RST (sequence 1000) the server kept sending"));
        assert!(sentences[2].starts_with("RST arrived with TTL 64"));
        assert_eq!(
            summary(&flow, &verdict),
            format!(
                "RST MAC {OTHER_MAC} vs server MAC {}",
                MacAddr(SERVER_MAC.0)
            )
        );
    }
}
