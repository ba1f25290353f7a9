//! Hand-built flow records for the unit tests of the analysis and of its renderers: a client
//! 10.0.1.2 (or fd00:1::2) whose SYN left at time 1 through a gateway with an F5 MAC.

use tracer_common::{FlagCounts, Hook};

use crate::analysis::{
    flow::{Baseline, FlowRecord, PacketRole, RstSeen, SideEvidence, State},
    hosts::HostIndex,
    mac::MacAddr,
    verdict::{judge, Verdict},
};

pub const SECOND: u64 = 1_000_000_000;
pub const SERVER_MAC: MacAddr = MacAddr([0x00, 0x01, 0xd7, 0x3c, 0x5e, 0x01]);
pub const OTHER_MAC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0x00, 0x99]);

pub fn counts(syn: u32, syn_ack: u32, rst: u32) -> FlagCounts {
    FlagCounts {
        syn,
        syn_ack,
        fin: 0,
        rst,
    }
}

/// A baseline from a packet after the handshake (a FIN), seen on `hook`.
pub fn baseline(ttl: u8, mac: MacAddr, hook: Hook) -> Baseline {
    Baseline {
        hook,
        mac: Some(mac),
        ttl,
        ip_id: 0,
        role: PacketRole::AfterHandshake,
        seq_end: 0,
    }
}

/// A baseline from the side's handshake packet (its SYN/ACK), seen on `hook`.
pub fn handshake(ttl: u8, mac: MacAddr, hook: Hook) -> Baseline {
    Baseline {
        role: PacketRole::Handshake,
        ..baseline(ttl, mac, hook)
    }
}

/// A RST that arrived (ingress) with `ttl` from `mac`, one second into the flow, sequence 1000.
pub fn rst(ttl: u8, mac: MacAddr) -> RstSeen {
    RstSeen {
        mac: Some(mac),
        ttl,
        seq: 1000,
        ..RstSeen::at(Hook::Ingress, SECOND)
    }
}

/// A flow from the client's `client_port` to `server` (IPv6 when `server` is bracketed), the
/// client's SYN at time 1, the client's packets seen leaving. The caller fills in the rest.
pub fn flow(client_port: u16, server: &str) -> FlowRecord {
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
        syn_ns: Some(1),
        syn_ack_ns: None,
        client_evidence: SideEvidence {
            baseline: Some(baseline(64, SERVER_MAC, Hook::Egress)),
            rst: None,
        },
        server_evidence: SideEvidence::default(),
        tls_sni: None,
        flow_evicted: false,
    }
}

/// A connection the server answered: its SYN/ACK arrived with `ttl` 1 ms after the SYN.
pub fn answered(client_port: u16, server: &str, ttl: u8, last_seen_ns: u64) -> FlowRecord {
    let mut answered = flow(client_port, server);
    answered.server_to_client = counts(0, 1, 0);
    answered.syn_ack_ns = Some(1 + 1_000_000);
    answered.last_seen_ns = last_seen_ns;
    answered.server_evidence.baseline = Some(baseline(ttl, SERVER_MAC, Hook::Ingress));
    answered
}

/// `flow` with a RST from the server.
pub fn reset_by_server(mut flow: FlowRecord, rst: RstSeen) -> FlowRecord {
    flow.server_to_client.rst = 1;
    flow.server_evidence.rst = Some(Box::new(rst));
    flow
}

/// The verdict on the first flow, with all of them as the source's flows.
pub fn judge_first(flows: &[FlowRecord]) -> Verdict {
    judge(&flows[0], &HostIndex::new(flows)).expect("a flow with a RST")
}
