//! In which phase of the connection a RST came: before any SYN/ACK, during the handshake, after
//! the client's first payload, after payload both ways, or after a FIN.
//!
//! Learnt without looking at data packets, which the kernel programs never look up (a table
//! lookup on every plain packet is what they avoid): the handshake packets give each side's
//! initial sequence number (the sequence end the kernel keeps for a side's baseline is one past
//! it while that baseline is its SYN or SYN/ACK), and a RST carries its sender's next sequence
//! number and, with the ACK flag, the next one it expects from the other side. A sequence
//! number beyond the first one after the handshake means payload was sent.

use serde::Serialize;

use crate::analysis::{
    flow::{Baseline, FlowRecord, PacketRole, RstSeen},
    verdict::Role,
};

/// The phase of a connection when its RST came.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The RST answered a SYN: no SYN/ACK was seen.
    Syn,
    /// After the SYN/ACK, before any payload.
    Handshake,
    /// After the client's first payload, before any payload from the server.
    Request,
    /// After payload from the server (and, usually, the client).
    Transfer,
    /// After a FIN.
    Closing,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Syn => "syn",
            Phase::Handshake => "handshake",
            Phase::Request => "request",
            Phase::Transfer => "transfer",
            Phase::Closing => "closing",
        }
    }
}

/// The phase when the RST of `rst_from` came; `None` without a RST, for a flow seen only after
/// its handshake, or when the sequence numbers do not tell.
pub fn phase(flow: &FlowRecord, rst_from: Role) -> Option<Phase> {
    let (sender, other) = match rst_from {
        Role::Client => (&flow.client_evidence, &flow.server_evidence),
        Role::Server => (&flow.server_evidence, &flow.client_evidence),
    };
    if flow.totals().rst == 0 {
        return None;
    }
    if flow.syn_ack_ns.is_none() {
        return flow.syn_ns.map(|_| Phase::Syn);
    }
    if flow.totals().fin > 0 {
        return Some(Phase::Closing);
    }
    let rst = sender.rst.as_ref()?;
    // Each side's first sequence number after its handshake: the baselines are still the
    // handshake packets, as neither side sent a FIN.
    let first_after_handshake = |side: Option<Baseline>| {
        side.filter(|b| b.role == PacketRole::Handshake)
            .map(|b| b.seq_end)
    };
    let sender_start = first_after_handshake(sender.baseline);
    let other_start = first_after_handshake(other.baseline);
    let sender_sent = sender_start.map(|start| sent_beyond(rst.seq, start));
    let other_sent = other_start
        .filter(|_| acknowledges(rst))
        .map(|start| sent_beyond(rst.ack, start));
    let (client_sent, server_sent) = match rst_from {
        Role::Client => (sender_sent, other_sent),
        Role::Server => (other_sent, sender_sent),
    };
    match (client_sent, server_sent) {
        (_, Some(true)) => Some(Phase::Transfer),
        (Some(true), Some(false)) => Some(Phase::Request),
        (Some(false), Some(false)) => Some(Phase::Handshake),
        _ => None,
    }
}

/// Whether a RST's acknowledgement number says something: a RST without the ACK flag carries 0.
fn acknowledges(rst: &RstSeen) -> bool {
    rst.ack != 0
}

/// Whether `next`, a side's next sequence number, lies beyond `start`, its first one after the
/// handshake: it sent payload. Compared the short way round the sequence space.
fn sent_beyond(next: u32, start: u32) -> bool {
    (next.wrapping_sub(start) as i32) > 0
}

#[cfg(test)]
mod tests {
    use tracer_common::Hook;

    use super::*;
    use crate::analysis::fixtures::*;

    const CLIENT_ISN: u32 = 1_000;
    const SERVER_ISN: u32 = u32::MAX - 10; // wraps during the connection

    /// A connection whose handshake both sides completed (their baselines still the SYN and the
    /// SYN/ACK), reset by `from` with `seq` and `ack`.
    fn reset(from: Role, seq: u32, ack: u32) -> FlowRecord {
        let mut flow = flow(40001, "10.0.2.1:443");
        flow.syn_ack_ns = Some(2);
        flow.server_to_client.syn_ack = 1;
        flow.client_evidence.baseline = Some(Baseline {
            seq_end: CLIENT_ISN + 1,
            ..handshake(64, SERVER_MAC, Hook::Egress)
        });
        flow.server_evidence.baseline = Some(Baseline {
            seq_end: SERVER_ISN.wrapping_add(1),
            ..handshake(127, SERVER_MAC, Hook::Ingress)
        });
        let rst = RstSeen {
            seq,
            ack,
            ..rst(127, SERVER_MAC)
        };
        match from {
            Role::Server => reset_by_server(flow, rst),
            Role::Client => {
                flow.client_to_server.rst = 1;
                flow.client_evidence.rst = Some(Box::new(rst));
                flow
            }
        }
    }

    const SERVER_NEXT: u32 = SERVER_ISN.wrapping_add(1);

    #[test]
    fn a_servers_rst_tells_what_each_side_sent() {
        let cases = [
            (SERVER_NEXT, CLIENT_ISN + 1, Phase::Handshake),
            // The client's 517-byte ClientHello was acknowledged; the server sent nothing.
            (SERVER_NEXT, CLIENT_ISN + 518, Phase::Request),
            (
                SERVER_NEXT.wrapping_add(1400),
                CLIENT_ISN + 518,
                Phase::Transfer,
            ),
            // A server that speaks first (SMTP's banner).
            (
                SERVER_NEXT.wrapping_add(40),
                CLIENT_ISN + 1,
                Phase::Transfer,
            ),
        ];
        for (seq, ack, expected) in cases {
            assert_eq!(
                phase(&reset(Role::Server, seq, ack), Role::Server),
                Some(expected),
                "seq {seq} ack {ack}"
            );
        }
    }

    #[test]
    fn a_clients_rst_tells_it_the_other_way_round() {
        let request = reset(Role::Client, CLIENT_ISN + 300, SERVER_NEXT);
        assert_eq!(phase(&request, Role::Client), Some(Phase::Request));
        let transfer = reset(Role::Client, CLIENT_ISN + 300, SERVER_NEXT.wrapping_add(9));
        assert_eq!(phase(&transfer, Role::Client), Some(Phase::Transfer));
    }

    #[test]
    fn a_rst_without_ack_tells_only_its_senders_side() {
        // The server sent nothing, and what the client sent is unknown.
        assert_eq!(
            phase(&reset(Role::Server, SERVER_NEXT, 0), Role::Server),
            None
        );
        assert_eq!(
            phase(
                &reset(Role::Server, SERVER_NEXT.wrapping_add(5), 0),
                Role::Server
            ),
            Some(Phase::Transfer)
        );
    }

    #[test]
    fn refusals_closings_and_flows_without_a_rst() {
        let refused = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
        assert_eq!(phase(&refused, Role::Server), Some(Phase::Syn));
        let mut closing = reset(Role::Server, SERVER_NEXT, CLIENT_ISN + 1);
        closing.client_to_server.fin = 1;
        assert_eq!(phase(&closing, Role::Server), Some(Phase::Closing));
        let quiet = flow(40002, "10.0.2.1:80");
        assert_eq!(phase(&quiet, Role::Server), None);
        // Seen only after its handshake: no SYN, no SYN/ACK.
        let mut midstream = refused;
        midstream.syn_ns = None;
        assert_eq!(phase(&midstream, Role::Server), None);
    }
}
