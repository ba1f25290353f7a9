//! The host-side view of one flow-table entry: which endpoint is the client, what each side sent,
//! what happened to the connection, and the evidence its RSTs left. The kernel's records are
//! decoded here, at the boundary, into addresses, enums and `Option`s on the Unix clock; nothing
//! after this module sees a wire type or a zero sentinel. Pure functions of the kernel's key and
//! values, so the live maps and an offline capture share them.

use std::{
    collections::HashMap,
    fmt,
    hash::BuildHasher,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::bail;
use foldhash::{HashSet, HashSetExt as _};
use serde::Serialize;
use tracer_common::{
    Baseline as WireBaseline, FlagCounts, FlowKey, FlowValue, Hook, ResetEntry, ResetEvidence,
    RstEvidence, RstPayload, TlsName, FAMILY_IPV4, FAMILY_IPV6, FIRST_SYN_HI, FIRST_SYN_LO,
    MS_UNKNOWN, RST_PAYLOAD_BYTES, SENDER_HI, SENDER_LO, TLS_NAME_MAX,
};

use crate::{analysis::mac::MacAddr, sys::clock::ClockSnapshot};

/// What happened to a connection, in the spirit of Zeek's `conn_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Neither side sent a SYN or a SYN/ACK: the capture started after the handshake.
    Midstream,
    /// The server answered with RST and never with SYN/ACK (typically: port closed).
    Refused,
    /// A RST after the handshake (or from the client during it).
    Reset,
    /// SYN without any SYN/ACK (no answer, or filtered).
    Attempted,
    /// FIN in both directions.
    Closed,
    /// FIN in one direction only.
    HalfClosed,
    /// Handshake seen, no FIN and no RST yet.
    Established,
}

impl State {
    /// Classifies a flow from the counts each side sent. The first matching rule wins.
    pub fn classify(client_to_server: &FlagCounts, server_to_client: &FlagCounts) -> State {
        let total = add(client_to_server, server_to_client);
        if total.syn == 0 && total.syn_ack == 0 {
            State::Midstream
        } else if server_to_client.rst > 0 && total.syn_ack == 0 {
            State::Refused
        } else if total.rst > 0 {
            State::Reset
        } else if total.syn_ack == 0 {
            State::Attempted
        } else if client_to_server.fin > 0 && server_to_client.fin > 0 {
            State::Closed
        } else if total.fin > 0 {
            State::HalfClosed
        } else {
            State::Established
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Midstream => "midstream",
            State::Refused => "refused",
            State::Reset => "reset",
            State::Attempted => "attempted",
            State::Closed => "closed",
            State::HalfClosed => "half_closed",
            State::Established => "established",
        }
    }
}

impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of a side's packets its baseline comes from. The kernel examines only SYN, SYN/ACK and
/// FIN packets for a baseline (plain packets touch no table), so a side's baseline is its
/// handshake packet until the side sends a FIN, and its FIN after that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PacketRole {
    /// Its SYN or SYN/ACK: what a SYN proxy or a full proxy may send in the host's name.
    Handshake,
    /// Its FIN: the host's own packet, after the handshake.
    AfterHandshake,
}

/// A host's latest normal (non-RST) packet on a flow, as the kernel recorded it: what its RSTs
/// are compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Baseline {
    /// The hook that saw it: the MAC below is its L2 source on ingress, its destination on egress.
    pub hook: Hook,
    /// The L2 neighbour; `None` when the kernel saw none (all zeros).
    pub mac: Option<MacAddr>,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// IPv4 identification (0 for IPv6).
    pub ip_id: u16,
    pub role: PacketRole,
    /// The highest sequence end (sequence number + payload + SYN + FIN) of the side's examined
    /// packets: one past its initial sequence number while its baseline is its handshake.
    pub seq_end: u32,
}

impl Baseline {
    /// `None` for a baseline the kernel never wrote. `sent` is what the side sent.
    fn decode(wire: &WireBaseline, sent: &FlagCounts) -> Option<Baseline> {
        Some(Baseline {
            role: if sent.fin > 0 {
                PacketRole::AfterHandshake
            } else {
                PacketRole::Handshake
            },
            hook: Hook::from_seen_on(wire.seen_on)?,
            mac: MacAddr::known(wire.mac),
            ttl: wire.ttl,
            ip_id: wire.ip_id,
            seq_end: wire.max_seq_end,
        })
    }
}

/// The RSTs one side sent, as the kernel recorded them: the first one's headers, and what
/// followed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RstSeen {
    /// The hook that saw the first RST.
    pub hook: Hook,
    /// Unix time of the first RST, and of the latest.
    pub first_ns: u64,
    pub last_ns: u64,
    /// The first RST's L2 neighbour; `None` when unknown.
    pub mac: Option<MacAddr>,
    pub ttl: u8,
    pub ip_id: u16,
    /// The first RST's sequence and acknowledgement numbers (ack 0 without the ACK flag).
    pub seq: u32,
    pub ack: u32,
    /// The side's highest sequence end before its first RST.
    pub max_seq_before: u32,
    /// Later RSTs that carried the first one's sequence number.
    pub same_seq_rsts: u16,
    /// Largest sequence distance between back-to-back RSTs.
    pub max_seq_jump: u32,
    /// Packets other than RSTs the side sent after its first RST.
    pub packets_after: u32,
    /// Payload bytes of those packets at or beyond the first RST's sequence.
    pub bytes_beyond: u32,
    /// How far those packets acknowledged beyond the first RST's acknowledgement.
    pub ack_beyond: u32,
    /// Milliseconds from the other side's latest new segment to the first RST.
    pub reset_delay_ms: Option<u32>,
    /// Milliseconds of silence before the packet that preceded the first RST.
    pub idle_before_ms: Option<u32>,
    /// The payload of the flow's first RST that carried one, when this side sent it.
    pub payload: Option<KeptPayload>,
}

/// The first bytes of a RST's payload, as the kernel kept them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeptPayload {
    /// The payload's full length.
    pub len: u16,
    bytes: [u8; RST_PAYLOAD_BYTES],
}

impl KeptPayload {
    /// The kept bytes: the payload, or its first [`RST_PAYLOAD_BYTES`].
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(RST_PAYLOAD_BYTES)]
    }

    #[cfg(test)]
    pub fn new(payload: &[u8]) -> KeptPayload {
        let mut bytes = [0; RST_PAYLOAD_BYTES];
        let kept = payload.len().min(RST_PAYLOAD_BYTES);
        bytes[..kept].copy_from_slice(&payload[..kept]);
        KeptPayload {
            len: u16::try_from(payload.len()).unwrap_or(u16::MAX),
            bytes,
        }
    }
}

impl RstSeen {
    /// `None` for a side without a recorded RST. `payload` is the entry's kept payload when
    /// this side sent it.
    fn decode(
        wire: &RstEvidence,
        payload: Option<&RstPayload>,
        clock: &ClockSnapshot,
    ) -> Option<RstSeen> {
        let known = |ms: u32| (ms != MS_UNKNOWN).then_some(ms);
        if wire.first_rst_ns == 0 {
            return None;
        }
        Some(RstSeen {
            hook: Hook::from_seen_on(wire.seen_on)?,
            first_ns: clock.unix_ns_u64(wire.first_rst_ns),
            last_ns: clock.unix_ns_u64(wire.last_rst_ns),
            mac: MacAddr::known(wire.mac),
            ttl: wire.ttl,
            ip_id: wire.ip_id,
            seq: wire.seq,
            ack: wire.ack,
            max_seq_before: wire.max_seq_before,
            same_seq_rsts: wire.same_seq_rsts,
            max_seq_jump: wire.max_seq_jump,
            packets_after: wire.packets_after,
            bytes_beyond: wire.bytes_beyond,
            ack_beyond: wire.ack_beyond,
            reset_delay_ms: known(wire.reset_delay_ms),
            idle_before_ms: known(wire.idle_before_ms),
            payload: payload.map(|payload| KeptPayload {
                len: payload.len,
                bytes: payload.bytes,
            }),
        })
    }
}

#[cfg(test)]
impl RstSeen {
    /// A RST seen on `hook` at `first_ns`, with every other field zero or unknown.
    pub fn at(hook: Hook, first_ns: u64) -> RstSeen {
        RstSeen {
            hook,
            first_ns,
            last_ns: first_ns,
            mac: None,
            ttl: 0,
            ip_id: 0,
            seq: 0,
            ack: 0,
            max_seq_before: 0,
            same_seq_rsts: 0,
            max_seq_jump: 0,
            packets_after: 0,
            bytes_beyond: 0,
            ack_beyond: 0,
            reset_delay_ms: None,
            idle_before_ms: None,
            payload: None,
        }
    }
}

/// What the kernel recorded about one side's packets: the baseline its RSTs are compared with,
/// and the RSTs, boxed: most flows have none, and a record is kept for every flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SideEvidence {
    /// Its latest examined non-RST packet; `None` when there was none.
    pub baseline: Option<Baseline>,
    /// Its RSTs; `None` when it sent none, or the reset evidence table no longer holds the flow.
    pub rst: Option<Box<RstSeen>>,
}

/// One flow, oriented from client to server, decoded from the kernel's records: addresses,
/// enums and `Option`s instead of words and zero sentinels. Every time is Unix nanoseconds,
/// whatever clock the source stamped with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub client_to_server: FlagCounts,
    pub server_to_client: FlagCounts,
    pub state: State,
    /// The first counted packet.
    pub first_seen_ns: u64,
    /// The latest counted packet.
    pub last_seen_ns: u64,
    /// The first SYN without ACK.
    pub syn_ns: Option<u64>,
    /// The first SYN/ACK.
    pub syn_ack_ns: Option<u64>,
    pub client_evidence: SideEvidence,
    pub server_evidence: SideEvidence,
    /// The server name of the client's TLS ClientHello, when its first payload was one.
    pub tls_sni: Option<String>,
    /// The flow table had evicted the flow: what it says comes from the reset table's copy of
    /// the flow's entry, made at the first RST of each sender.
    pub flow_evicted: bool,
}

/// Every flow as a record: the flow table's, each with its reset evidence and ClientHello's
/// server name when the kernel kept them, and the reset table's flows that the flow table has
/// evicted, from the copy of their entry in the reset table. Linear in the tables' sizes.
pub fn flow_records<'t>(
    flows: impl ExactSizeIterator<Item = (&'t FlowKey, &'t FlowValue)>,
    resets: &HashMap<FlowKey, ResetEntry, impl BuildHasher>,
    hellos: &HashMap<FlowKey, TlsName, impl BuildHasher>,
    clock: &ClockSnapshot,
) -> anyhow::Result<Vec<FlowRecord>> {
    // Sized once: a record is large, and growing the vector copies them all each time.
    let mut records = Vec::with_capacity(flows.len() + resets.len());
    let mut listed = HashSet::with_capacity(resets.len());
    for (key, value) in flows {
        let reset = resets.get_key_value(key);
        if let Some((key, _)) = reset {
            listed.insert(key);
        }
        let evidence = reset.map(|(_, entry)| &entry.evidence);
        records.push(FlowRecord::decode(
            key,
            value,
            evidence,
            hellos.get(key),
            clock,
        )?);
    }
    for (key, entry) in resets {
        if !listed.contains(key) {
            records.push(FlowRecord::from_reset_entry(entry, hellos.get(key), clock)?);
        }
    }
    Ok(records)
}

impl FlowRecord {
    /// Decodes and orients a flow-table entry, its reset evidence and its ClientHello's server
    /// name, if the kernel kept them. `clock` turns the source's stamps into Unix time. Fails
    /// only on an address family the kernel never writes.
    pub fn decode(
        key: &FlowKey,
        value: &FlowValue,
        resets: Option<&ResetEvidence>,
        hello: Option<&TlsName>,
        clock: &ClockSnapshot,
    ) -> anyhow::Result<FlowRecord> {
        let endpoint = |sender: usize| -> anyhow::Result<(SocketAddr, FlagCounts, SideEvidence)> {
            let (addr, port) = if sender == SENDER_LO {
                (&key.addr_lo, key.port_lo)
            } else {
                (&key.addr_hi, key.port_hi)
            };
            Ok((
                SocketAddr::new(ip_addr(key.family, addr)?, port),
                value.sent_by[sender],
                SideEvidence {
                    baseline: Baseline::decode(&value.baseline[sender], &value.sent_by[sender]),
                    rst: resets.and_then(|resets| {
                        let payload = &resets.payload;
                        let sent_it = payload.len > 0 && usize::from(payload.sender) == sender;
                        RstSeen::decode(
                            &resets.by_sender[sender],
                            sent_it.then_some(payload),
                            clock,
                        )
                        .map(Box::new)
                    }),
                },
            ))
        };
        let stamp = |ns: u64| (ns != 0).then(|| clock.unix_ns_u64(ns));
        let client_side = client_side(key, value);
        let (client, client_to_server, client_evidence) = endpoint(client_side)?;
        let (server, server_to_client, server_evidence) = endpoint(1 - client_side)?;
        Ok(FlowRecord {
            client,
            server,
            client_to_server,
            server_to_client,
            state: State::classify(&client_to_server, &server_to_client),
            first_seen_ns: clock.unix_ns_u64(value.first_seen_ns),
            last_seen_ns: clock.unix_ns_u64(value.last_seen_ns),
            syn_ns: stamp(value.syn_ns),
            syn_ack_ns: stamp(value.syn_ack_ns),
            client_evidence,
            server_evidence,
            tls_sni: hello.and_then(server_name),
            flow_evicted: false,
        })
    }

    /// A flow that only the reset table still holds, from its copy of the flow's entry. The copy
    /// is completed from the evidence where it falls short: it is empty when no flow entry could
    /// be made for the RST (a full flow table), and the RSTs after each sender's first are not
    /// in it.
    pub fn from_reset_entry(
        entry: &ResetEntry,
        hello: Option<&TlsName>,
        clock: &ClockSnapshot,
    ) -> anyhow::Result<FlowRecord> {
        let mut value = entry.flow;
        for (counts, rst) in value.sent_by.iter_mut().zip(&entry.evidence.by_sender) {
            if rst.first_rst_ns != 0 {
                counts.rst = counts.rst.max(1);
                if value.first_seen_ns == 0 || rst.first_rst_ns < value.first_seen_ns {
                    value.first_seen_ns = rst.first_rst_ns;
                }
                value.last_seen_ns = value.last_seen_ns.max(rst.last_rst_ns);
            }
        }
        let record = FlowRecord::decode(&entry.key, &value, Some(&entry.evidence), hello, clock)?;
        Ok(FlowRecord {
            flow_evicted: true,
            ..record
        })
    }

    /// Counts over both directions.
    pub fn totals(&self) -> FlagCounts {
        add(&self.client_to_server, &self.server_to_client)
    }

    /// When the flow's first RST was seen: the earliest first RST of either side, or the last
    /// packet's time when the kernel kept no evidence. `None` without a RST.
    pub fn first_rst_ns(&self) -> Option<u64> {
        if self.totals().rst == 0 {
            return None;
        }
        let sides = [&self.client_evidence, &self.server_evidence];
        let first = sides
            .iter()
            .filter_map(|side| side.rst.as_ref().map(|rst| rst.first_ns))
            .min();
        Some(first.unwrap_or(self.last_seen_ns))
    }
}

/// A ClientHello's server name as text: a DNS name is ASCII, so anything else (a name the
/// kernel read wrong, or a hostile one) is escaped rather than printed; a name cut at
/// [`TLS_NAME_MAX`] bytes ends in `...`.
fn server_name(hello: &TlsName) -> Option<String> {
    let kept = &hello.name[..usize::from(hello.len).min(TLS_NAME_MAX)];
    if kept.is_empty() {
        return None;
    }
    let mut name: String = kept
        .iter()
        .flat_map(|&byte| std::ascii::escape_default(byte).map(char::from))
        .collect();
    if usize::from(hello.len) > TLS_NAME_MAX {
        name += "...";
    }
    Some(name)
}

fn add(a: &FlagCounts, b: &FlagCounts) -> FlagCounts {
    FlagCounts {
        syn: a.syn.saturating_add(b.syn),
        syn_ack: a.syn_ack.saturating_add(b.syn_ack),
        fin: a.fin.saturating_add(b.fin),
        rst: a.rst.saturating_add(b.rst),
    }
}

/// Which endpoint of the key ([`SENDER_LO`] or [`SENDER_HI`]) is the client: the one the kernel saw
/// send the first SYN; else the only one that sent a SYN; else the one that did not send the
/// SYN/ACK when only one did; else the one with the higher port (ephemeral ports are high).
fn client_side(key: &FlowKey, value: &FlowValue) -> usize {
    match value.first_syn_from {
        FIRST_SYN_LO => return SENDER_LO,
        FIRST_SYN_HI => return SENDER_HI,
        _ => {}
    }
    let [lo, hi] = &value.sent_by;
    if let Some(side) = only_one(lo.syn > 0, hi.syn > 0) {
        return side;
    }
    if let Some(side) = only_one(lo.syn_ack > 0, hi.syn_ack > 0) {
        return if side == SENDER_LO {
            SENDER_HI
        } else {
            SENDER_LO
        };
    }
    if key.port_lo > key.port_hi {
        SENDER_LO
    } else {
        SENDER_HI
    }
}

/// The endpoint for which `lo_did`/`hi_did` holds, if exactly one does.
fn only_one(lo_did: bool, hi_did: bool) -> Option<usize> {
    match (lo_did, hi_did) {
        (true, false) => Some(SENDER_LO),
        (false, true) => Some(SENDER_HI),
        _ => None,
    }
}

/// Decodes a key address: words of network-byte-order data loaded as native integers, so each
/// word's native bytes are the address octets in wire order.
pub(crate) fn ip_addr(family: u8, words: &[u32; 4]) -> anyhow::Result<IpAddr> {
    match family {
        FAMILY_IPV4 => Ok(Ipv4Addr::from(words[0].to_ne_bytes()).into()),
        FAMILY_IPV6 => {
            let mut octets = [0u8; 16];
            for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            Ok(Ipv6Addr::from(octets).into())
        }
        other => bail!("flow key with unknown address family {other}"),
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::FIRST_SYN_NONE;

    use super::*;

    fn v4(octets: [u8; 4]) -> [u32; 4] {
        [u32::from_ne_bytes(octets), 0, 0, 0]
    }

    fn v6(addr: Ipv6Addr) -> [u32; 4] {
        let octets = addr.octets();
        let mut words = [0u32; 4];
        for (word, chunk) in words.iter_mut().zip(octets.chunks_exact(4)) {
            *word = u32::from_ne_bytes(chunk.try_into().unwrap());
        }
        words
    }

    fn counts(syn: u32, syn_ack: u32, fin: u32, rst: u32) -> FlagCounts {
        FlagCounts {
            syn,
            syn_ack,
            fin,
            rst,
        }
    }

    const NONE: FlagCounts = FlagCounts {
        syn: 0,
        syn_ack: 0,
        fin: 0,
        rst: 0,
    };

    /// A flow between 10.0.0.1:40000 and 10.0.0.2:80 where the first endpoint sent `a_sent` and
    /// the second `b_sent`, keyed the way the kernel keys it.
    fn flow(a_sent: FlagCounts, b_sent: FlagCounts, first_syn_from_a: bool) -> FlowRecord {
        let a = v4([10, 0, 0, 1]);
        let b = v4([10, 0, 0, 2]);
        let (key, a_side) = FlowKey::from_packet(FAMILY_IPV4, 3, a, 40000, b, 80);
        let b_side = 1 - a_side;
        let mut value = FlowValue {
            first_seen_ns: 100,
            last_seen_ns: 200,
            ..FlowValue::default()
        };
        value.sent_by[a_side] = a_sent;
        value.sent_by[b_side] = b_sent;
        if first_syn_from_a {
            value.first_syn_from = if a_side == SENDER_LO {
                FIRST_SYN_LO
            } else {
                FIRST_SYN_HI
            };
        }
        FlowRecord::decode(&key, &value, None, None, &ClockSnapshot::unix()).unwrap()
    }

    fn endpoints(record: &FlowRecord) -> (String, String) {
        (record.client.to_string(), record.server.to_string())
    }

    const A: &str = "10.0.0.1:40000";
    const B: &str = "10.0.0.2:80";

    #[test]
    fn ipv4_addresses_come_from_the_first_word_in_wire_order() {
        let record = flow(counts(1, 0, 0, 0), NONE, true);
        assert_eq!(endpoints(&record), (A.into(), B.into()));
    }

    #[test]
    fn ipv6_addresses_use_all_four_words_and_brackets() {
        let client: Ipv6Addr = "fd00::1".parse().unwrap();
        let server: Ipv6Addr = "fd00::2:0:0:abcd".parse().unwrap();
        let (key, sender) =
            FlowKey::from_packet(FAMILY_IPV6, 1, v6(client), 51000, v6(server), 443);
        let mut value = FlowValue::default();
        value.sent_by[sender].syn = 1;
        let record = FlowRecord::decode(&key, &value, None, None, &ClockSnapshot::unix()).unwrap();
        assert_eq!(record.client.to_string(), "[fd00::1]:51000");
        assert_eq!(record.server.to_string(), "[fd00::2:0:0:abcd]:443");
    }

    #[test]
    fn unknown_family_is_an_error() {
        let key = FlowKey {
            family: 5,
            ..FlowKey::default()
        };
        assert!(FlowRecord::decode(
            &key,
            &FlowValue::default(),
            None,
            None,
            &ClockSnapshot::unix()
        )
        .is_err());
    }

    #[test]
    fn first_syn_from_decides_the_client_even_against_other_evidence() {
        // B sent a SYN too (simultaneous open), but the kernel saw A's first.
        let record = flow(counts(1, 0, 0, 0), counts(1, 1, 0, 0), true);
        assert_eq!(endpoints(&record), (A.into(), B.into()));
    }

    #[test]
    fn without_first_syn_from_the_only_syn_sender_is_the_client() {
        let record = flow(NONE, counts(2, 0, 0, 0), false);
        assert_eq!(endpoints(&record), (B.into(), A.into()));
        assert_eq!(record.client_to_server, counts(2, 0, 0, 0));
    }

    #[test]
    fn without_syn_the_side_that_did_not_send_the_syn_ack_is_the_client() {
        let record = flow(counts(0, 1, 0, 0), NONE, false);
        assert_eq!(endpoints(&record), (B.into(), A.into()));
        assert_eq!(record.server_to_client, counts(0, 1, 0, 0));
    }

    #[test]
    fn without_handshake_the_higher_port_is_the_client() {
        let record = flow(NONE, counts(0, 0, 1, 0), false);
        assert_eq!(endpoints(&record), (A.into(), B.into()));
        // Same when the higher port sits on the low end of the key.
        let addr = v4([10, 0, 0, 9]);
        let (key, _) = FlowKey::from_packet(FAMILY_IPV4, 1, addr, 80, addr, 9000);
        let value = FlowValue {
            first_syn_from: FIRST_SYN_NONE,
            ..FlowValue::default()
        };
        let record = FlowRecord::decode(&key, &value, None, None, &ClockSnapshot::unix()).unwrap();
        assert_eq!(record.client.port(), 9000);
    }

    #[test]
    fn states_follow_the_first_matching_rule() {
        let cases = [
            (NONE, counts(0, 0, 1, 1), State::Midstream),
            (counts(1, 0, 0, 0), counts(0, 0, 0, 1), State::Refused),
            (counts(1, 0, 0, 0), NONE, State::Attempted),
            (counts(1, 0, 0, 1), NONE, State::Reset),
            (counts(1, 0, 1, 0), counts(0, 1, 0, 1), State::Reset),
            (counts(1, 0, 0, 0), counts(0, 1, 0, 1), State::Reset),
            (counts(1, 0, 1, 0), counts(0, 1, 1, 0), State::Closed),
            (counts(1, 0, 1, 0), counts(0, 1, 0, 0), State::HalfClosed),
            (counts(1, 0, 0, 0), counts(0, 1, 1, 0), State::HalfClosed),
            (counts(1, 0, 0, 0), counts(0, 1, 0, 0), State::Established),
            // SYN/ACK seen but the SYN was missed: still a handshake.
            (NONE, counts(0, 1, 0, 0), State::Established),
        ];
        for (c2s, s2c, expected) in cases {
            assert_eq!(
                State::classify(&c2s, &s2c),
                expected,
                "client sent {c2s:?}, server sent {s2c:?}"
            );
        }
    }

    #[test]
    fn record_state_and_totals_are_oriented() {
        let record = flow(counts(1, 0, 1, 0), counts(0, 1, 0, 1), true);
        assert_eq!(record.state, State::Reset);
        assert_eq!(record.totals(), counts(1, 1, 1, 1));
        assert_eq!((record.first_seen_ns, record.last_seen_ns), (100, 200));
    }

    #[test]
    fn evidence_follows_the_client_and_server() {
        let client = v4([10, 0, 0, 9]);
        let server = v4([10, 0, 0, 2]);
        // The client is the high endpoint of the key here, so a mix-up would show.
        let (key, client_side) = FlowKey::from_packet(FAMILY_IPV4, 1, client, 40000, server, 443);
        assert_eq!(client_side, SENDER_HI);
        let mut value = FlowValue {
            first_syn_from: FIRST_SYN_HI,
            syn_ns: 10,
            syn_ack_ns: 0,
            last_seen_ns: 70,
            ..FlowValue::default()
        };
        value.sent_by[SENDER_HI].syn = 1;
        value.sent_by[SENDER_LO].rst = 1;
        value.baseline[SENDER_HI] = WireBaseline {
            ttl: 64,
            seen_on: tracer_common::SEEN_EGRESS,
            ..WireBaseline::default()
        };
        let mut resets = ResetEvidence::default();
        resets.by_sender[SENDER_LO] = RstEvidence {
            first_rst_ns: 50,
            ttl: 61,
            seen_on: tracer_common::SEEN_INGRESS,
            ..RstEvidence::default()
        };
        let record =
            FlowRecord::decode(&key, &value, Some(&resets), None, &ClockSnapshot::unix()).unwrap();
        assert_eq!(record.client.to_string(), "10.0.0.9:40000");
        assert_eq!(record.client_evidence.baseline.map(|b| b.ttl), Some(64));
        assert_eq!(record.client_evidence.rst, None);
        assert_eq!(
            record
                .client_evidence
                .baseline
                .map(|b| (b.hook, b.mac, b.role)),
            Some((Hook::Egress, None, PacketRole::Handshake))
        );
        // Once the side sent a FIN, its baseline is that FIN: after the handshake.
        let mut closed = value;
        closed.sent_by[SENDER_HI].fin = 1;
        let closed = FlowRecord::decode(&key, &closed, None, None, &ClockSnapshot::unix()).unwrap();
        assert_eq!(
            closed.client_evidence.baseline.map(|b| b.role),
            Some(PacketRole::AfterHandshake)
        );
        // A baseline the kernel never wrote (seen_on NONE) is no baseline.
        assert_eq!(record.server_evidence.baseline, None);
        assert_eq!(record.server_evidence.rst.as_ref().map(|r| r.ttl), Some(61));
        assert_eq!((record.syn_ns, record.syn_ack_ns), (Some(10), None));
        assert_eq!(record.first_rst_ns(), Some(50));

        // Evicted evidence: the RST time falls back to the last packet's.
        let record = FlowRecord::decode(&key, &value, None, None, &ClockSnapshot::unix()).unwrap();
        assert_eq!(record.first_rst_ns(), Some(70));
        value.sent_by[SENDER_LO].rst = 0;
        assert_eq!(
            FlowRecord::decode(&key, &value, None, None, &ClockSnapshot::unix())
                .unwrap()
                .first_rst_ns(),
            None
        );
    }

    #[test]
    fn stamps_become_unix_time_and_zeros_become_none() {
        let (key, client) = FlowKey::from_packet(
            FAMILY_IPV4,
            1,
            v4([10, 0, 0, 1]),
            40000,
            v4([10, 0, 0, 2]),
            80,
        );
        let mut value = FlowValue {
            first_seen_ns: 5_000,
            last_seen_ns: 7_000,
            syn_ns: 5_000,
            syn_ack_ns: 0,
            ..FlowValue::default()
        };
        value.sent_by[client].syn = 1;
        let mut resets = ResetEvidence::default();
        resets.by_sender[1 - client] = RstEvidence {
            first_rst_ns: 6_000,
            last_rst_ns: 6_500,
            seen_on: tracer_common::SEEN_INGRESS,
            ..RstEvidence::default()
        };
        // Monotonic 1_000 is Unix 1_000_000_000_000.
        let clock = ClockSnapshot::new(1_000_000_000_000, 1_000);
        let record = FlowRecord::decode(&key, &value, Some(&resets), None, &clock).unwrap();
        let unix = |mono: u64| 1_000_000_000_000 - 1_000 + mono;
        assert_eq!(
            (record.first_seen_ns, record.last_seen_ns),
            (unix(5_000), unix(7_000))
        );
        assert_eq!(
            (record.syn_ns, record.syn_ack_ns),
            (Some(unix(5_000)), None)
        );
        let rst = record.server_evidence.rst.unwrap();
        assert_eq!((rst.first_ns, rst.last_ns), (unix(6_000), unix(6_500)));
    }

    #[test]
    fn state_names_are_snake_case_everywhere() {
        assert_eq!(State::HalfClosed.to_string(), "half_closed");
        assert_eq!(
            serde_json::to_value(State::HalfClosed).unwrap(),
            serde_json::json!("half_closed")
        );
    }
}
