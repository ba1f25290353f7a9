//! What the kernel sends through an attachment's ring buffer: a SYN, SYN/ACK or RST packet's
//! first bytes ([`PacketEvent`]), read with the kernel programs' own parser.

use std::{mem, net::SocketAddr, ptr};

use tracer_common::{FlowKey, Hook, PacketEvent, EVENT_SNAP_LEN, TCP_RST, TCP_SYN};
use tracer_ebpf::{Packet, TcpSegment};

use crate::analysis::{flow::ip_addr, mac::MacAddr};

/// A packet as the kernel captured it: what goes into the pcap file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    /// Kernel clock.
    pub time_ns: u64,
    /// Length on the wire.
    pub packet_len: u32,
    /// Its first bytes, from the Ethernet header on.
    pub frame: Vec<u8>,
}

/// One event from the ring buffer, parsed.
#[derive(Debug)]
pub struct Event {
    pub packet: Captured,
    /// Its flow's key in the flow table.
    pub key: FlowKey,
    /// The hook that saw it; `None` for a value no build writes.
    pub hook: Option<Hook>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub ttl: u8,
    pub ip_id: u16,
    /// The L2 neighbour, as in the maps: the source MAC of what arrived, the destination MAC of
    /// what left.
    pub mac: MacAddr,
}

impl Event {
    /// A [`PacketEvent`]'s bytes, parsed by the kernel programs' own parser; `None` if they
    /// are not one, or hold no TCP packet.
    pub fn parse(bytes: &[u8]) -> Option<Event> {
        if bytes.len() < mem::size_of::<PacketEvent>() {
            return None;
        }
        // SAFETY: at least size_of::<PacketEvent>() bytes, and PacketEvent is plain data for
        // which any bytes are a value; the ring buffer gives no alignment guarantee beyond 8.
        let event: PacketEvent = unsafe { ptr::read_unaligned(bytes.as_ptr().cast()) };
        let captured = (event.captured_len as usize).min(EVENT_SNAP_LEN);
        let frame = &event.data[..captured];
        let start = frame.as_ptr() as usize;
        let packet = Packet::new(start, start + frame.len());
        tracer_ebpf::parse(packet, |segment: TcpSegment| {
            let ip = |words| ip_addr(segment.family(), words).ok();
            let hook = Hook::from_seen_on(event.seen_on);
            let mac = if hook == Some(Hook::Egress) {
                segment.eth.dst
            } else {
                segment.eth.src
            };
            let (key, _) = FlowKey::from_packet(
                segment.family(),
                event.ifindex,
                segment.src(),
                segment.src_port(),
                segment.dst(),
                segment.dst_port(),
            );
            Some(Event {
                key,
                src: SocketAddr::new(ip(&segment.src())?, segment.src_port()),
                dst: SocketAddr::new(ip(&segment.dst())?, segment.dst_port()),
                flags: segment.flags(),
                seq: segment.seq(),
                ack: segment.ack(),
                ttl: segment.ttl(),
                ip_id: segment.ip_id(),
                mac: MacAddr(mac),
                hook,
                packet: Captured {
                    time_ns: event.time_ns,
                    packet_len: event.packet_len,
                    frame: frame.to_vec(),
                },
            })
        })
        .ok()?
    }
}

/// The TCP flags of `flags` by name, joined with `+`, e.g. `RST+ACK`.
pub fn flag_names(flags: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (TCP_SYN, "SYN"),
        (TCP_RST, "RST"),
        (0x01, "FIN"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    names.join("+")
}

/// The hook that saw the packet, by name.
pub fn hook_name(hook: Option<Hook>) -> &'static str {
    hook.map_or("unknown", Hook::name)
}

#[cfg(test)]
pub mod tests {
    //! Its `event_bytes` and `rst_v4` also make the events of the other modules' tests.

    use std::slice;

    use etherparse::PacketBuilder;
    use tracer_common::{SEEN_EGRESS, SEEN_INGRESS, TCP_ACK};

    use super::*;

    const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const GATEWAY_MAC: [u8; 6] = [0x00, 0x01, 0xd7, 0x3c, 0x5e, 0x01];

    /// The bytes of a ring buffer entry for `frame` as the kernel writes them.
    pub fn event_bytes(frame: &[u8], time_ns: u64, seen_on: u8) -> Vec<u8> {
        let captured = frame.len().min(EVENT_SNAP_LEN);
        let mut event = PacketEvent {
            time_ns,
            ifindex: 7,
            packet_len: frame.len() as u32,
            captured_len: captured as u32,
            seen_on,
            _pad0: 0,
            _pad1: 0,
            data: [0; EVENT_SNAP_LEN],
        };
        event.data[..captured].copy_from_slice(&frame[..captured]);
        // SAFETY: PacketEvent is plain data with explicit padding: all its bytes are initialised.
        unsafe {
            slice::from_raw_parts(
                (&raw const event).cast::<u8>(),
                mem::size_of::<PacketEvent>(),
            )
        }
        .to_vec()
    }

    pub fn rst_v4(payload_len: usize) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(GATEWAY_MAC, CLIENT_MAC)
            .ipv4([10, 0, 2, 1], [10, 0, 1, 1], 63)
            .tcp(443, 40000, 0, 0)
            .rst()
            .ack(1_000_001);
        let mut frame = Vec::new();
        builder.write(&mut frame, &vec![b'x'; payload_len]).unwrap();
        frame
    }

    #[test]
    fn parses_an_event_with_the_kernels_parser() {
        // A long packet: only its first bytes are in the event, but its length is known.
        let frame = rst_v4(400);
        let event = Event::parse(&event_bytes(&frame, 5_000, SEEN_INGRESS)).unwrap();
        assert_eq!(event.src, "10.0.2.1:443".parse().unwrap());
        assert_eq!(event.dst, "10.0.1.1:40000".parse().unwrap());
        assert_eq!(event.flags, TCP_RST | TCP_ACK);
        assert_eq!((event.seq, event.ack, event.ttl), (0, 1_000_001, 63));
        assert_eq!(event.mac, MacAddr(GATEWAY_MAC));
        assert_eq!(event.hook, Some(Hook::Ingress));
        assert_eq!(event.packet.packet_len, frame.len() as u32);
        assert_eq!(event.packet.frame, frame[..EVENT_SNAP_LEN]);
        assert_eq!(event.packet.time_ns, 5_000);
        let (key, _) = FlowKey::from_packet(
            tracer_common::FAMILY_IPV4,
            7,
            [u32::from_ne_bytes([10, 0, 2, 1]), 0, 0, 0],
            443,
            [u32::from_ne_bytes([10, 0, 1, 1]), 0, 0, 0],
            40000,
        );
        assert_eq!(event.key, key);

        // Leaving: the neighbour is the destination.
        let event = Event::parse(&event_bytes(&frame, 5_000, SEEN_EGRESS)).unwrap();
        assert_eq!(event.mac, MacAddr(CLIENT_MAC));
        assert_eq!(event.hook, Some(Hook::Egress));

        let v6 = PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC)
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(40000, 8443, 7, 64240)
            .syn();
        let mut frame = Vec::new();
        v6.write(&mut frame, &[]).unwrap();
        let event = Event::parse(&event_bytes(&frame, 1, SEEN_EGRESS)).unwrap();
        assert_eq!(event.src, SocketAddr::new([0xfd; 16].into(), 40000));
        assert_eq!(event.flags, TCP_SYN);
        assert_eq!(event.packet.frame, frame);
    }

    #[test]
    fn rejects_what_is_not_an_event_of_a_tcp_packet() {
        assert!(Event::parse(&[0u8; 16]).is_none());
        let udp = PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC)
            .ipv4([10, 0, 1, 1], [10, 0, 2, 1], 64)
            .udp(53, 53);
        let mut frame = Vec::new();
        udp.write(&mut frame, b"dns").unwrap();
        assert!(Event::parse(&event_bytes(&frame, 1, SEEN_EGRESS)).is_none());
    }

    #[test]
    fn flags_by_name() {
        assert_eq!(flag_names(TCP_RST), "RST");
        assert_eq!(flag_names(TCP_RST | TCP_ACK), "RST+ACK");
        assert_eq!(flag_names(TCP_SYN | TCP_ACK), "SYN+ACK");
    }
}
