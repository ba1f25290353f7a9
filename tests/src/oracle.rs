//! What a frame should do to flagtrace's maps, decided with etherparse.
//!
//! etherparse reads every header (its `*HeaderSlice::from_slice` checks lengths, versions, IHL
//! and data offset and extracts the fields); this module only walks the header chain the way the
//! contract says the kernel walks it. etherparse's whole-packet parsers (`SlicedPacket`,
//! `LaxSlicedPacket`) are not used as the oracle because they answer a different question in
//! ways that would make the comparison wrong, not stricter:
//! - they follow 0x9100 and MACsec tags and up to three link extensions; the kernel follows at
//!   most two tags, 802.1Q (0x8100) or 802.1ad (0x88a8), and counts anything else as non-TCP;
//! - they cut the IP payload at the IPv4 total length / IPv6 payload length; the kernel walks the
//!   headers without them (GSO and BIG TCP packets carry 0 there), so the TCP header is read from
//!   the captured bytes wherever the IP header chain says it starts. The kernel uses the length
//!   fields only for the TCP payload length (sequence ends and bytes after a RST), and so does
//!   [`Segment::payload_len`], whatever the captured length;
//! - they give up on TCP for any fragment; the kernel reads the TCP header of a first fragment
//!   (offset 0, more-fragments set) and skips only non-first ones;
//! - they parse IPsec AH as an IP extension and stop on repeated or misplaced IPv6 extension
//!   headers; the kernel follows hop-by-hop, routing, destination options and fragment headers in
//!   any order, up to [`MAX_IPV6_EXT_HEADERS`], and counts anything else as non-TCP;
//! - they pick the IP version from the version nibble; the kernel from the EtherType, so a
//!   version nibble that disagrees with the EtherType is a parse error.
//!
//! Where the contract leaves a choice, the rule here is: every header the tracer walks (Ethernet,
//! the tags it follows, the IPv4 header with all options by IHL, the IPv6 header and each
//! extension header it follows, in full by its length field) must be entirely present, or the
//! frame is a parse error, whatever protocol comes next. Headers the tracer does not walk (UDP,
//! ICMP, ARP, payloads after a non-first fragment header) are not its business: such frames are
//! non-TCP however short they are.

// A walk step's `Err` is the frame's verdict, a plain value: its size costs a test nothing.
#![allow(clippy::result_large_err)]

use etherparse::{
    ip_number, EtherType, Ethernet2HeaderSlice, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice,
    Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice,
};
use tracer_common::{FlowKey, FAMILY_IPV4, FAMILY_IPV6, RST_PAYLOAD_BYTES};

/// VLAN tags the kernel follows (802.1ad outer + 802.1Q inner is as deep as QinQ goes).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers the kernel follows before giving up (counted as non-TCP).
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// The parts of a TCP segment the kernel keys, counts and keeps as reset evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub family: u8,
    /// Address words as the kernel loads them: native integers of network-order bytes; IPv4
    /// fills word 0 only.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 identification; 0 for IPv6.
    pub ip_id: u16,
    pub src_port: u16,
    pub dst_port: u16,
    /// Byte 13 of the TCP header (CWR ECE URG ACK PSH RST SYN FIN).
    pub flags: u8,
    pub seq: u32,
    /// The acknowledgement number field, whether or not the ACK flag is set.
    pub ack: u32,
    /// TCP payload length by the IP length fields: IPv4 total length, or IPv6 payload length
    /// less the extension headers, less the IP and TCP headers; 0 when they do not add up.
    pub payload_len: u32,
    /// The first bytes captured after the TCP header, as many as a RST's kept payload holds,
    /// zero beyond `captured_payload`.
    pub payload_head: [u8; RST_PAYLOAD_BYTES],
    /// Bytes captured after the TCP header, whatever the length fields say.
    pub captured_payload: usize,
}

impl Segment {
    /// The kernel's key for this segment's flow on `ifindex`, and the index of its sender.
    pub fn flow_key(&self, ifindex: u32) -> (FlowKey, usize) {
        FlowKey::from_packet(
            self.family,
            ifindex,
            self.src,
            self.src_port,
            self.dst,
            self.dst_port,
        )
    }
}

/// What the IP layer hands to the TCP header: addresses and the fields the evidence keeps.
struct IpLayer {
    family: u8,
    src: [u32; 4],
    dst: [u32; 4],
    ttl: u8,
    ip_id: u16,
    /// Bytes the IP length fields leave for TCP header and payload.
    l4_len: usize,
}

/// How the kernel must classify one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The TCP header was read: counted as `tcp`, and in the flow table if it has SYN/FIN/RST.
    Tcp(Segment),
    /// Well formed up to where the tracer looks, but no TCP header to read: `non_tcp`.
    NotTcp,
    /// Truncated or malformed before the TCP flags could be read: `parse_errors`.
    ParseError,
}

/// Address words of an IPv4 address as the kernel loads them.
pub fn ipv4_words(octets: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(octets), 0, 0, 0]
}

/// Address words of an IPv6 address as the kernel loads them.
pub fn ipv6_words(octets: [u8; 16]) -> [u32; 4] {
    std::array::from_fn(|i| {
        u32::from_ne_bytes(octets[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
    })
}

/// The verdict for a frame that starts with an Ethernet II header.
pub fn classify(frame: &[u8]) -> Verdict {
    match walk(frame) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

/// `Err` carries an early verdict, so `?` ends the walk.
type Step<T> = Result<T, Verdict>;

fn walk(frame: &[u8]) -> Step<Verdict> {
    let ethernet = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Verdict::ParseError)?;
    let mut ether_type = ethernet.ether_type();
    let mut rest = &frame[ethernet.slice().len()..];
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != EtherType::VLAN_TAGGED_FRAME && ether_type != EtherType::PROVIDER_BRIDGING
        {
            break;
        }
        let tag = SingleVlanHeaderSlice::from_slice(rest).map_err(|_| Verdict::ParseError)?;
        ether_type = tag.ether_type();
        rest = &rest[tag.slice().len()..];
    }
    let macs = (ethernet.source(), ethernet.destination());
    match ether_type {
        EtherType::IPV4 => ipv4(rest, macs),
        EtherType::IPV6 => ipv6(rest, macs),
        // ARP, other EtherTypes, and a tag deeper than the kernel follows.
        _ => Ok(Verdict::NotTcp),
    }
}

/// The Ethernet source and destination.
type Macs = ([u8; 6], [u8; 6]);

fn ipv4(packet: &[u8], macs: Macs) -> Step<Verdict> {
    // Checks version 4, IHL >= 5 and that the whole header with its options is present; it
    // does not look at the total length or the checksum, and neither does the kernel's walk.
    let header = Ipv4HeaderSlice::from_slice(packet).map_err(|_| Verdict::ParseError)?;
    if header.fragments_offset().value() != 0 || header.protocol() != ip_number::TCP {
        return Ok(Verdict::NotTcp);
    }
    let ip = IpLayer {
        family: FAMILY_IPV4,
        src: ipv4_words(header.source()),
        dst: ipv4_words(header.destination()),
        ttl: header.ttl(),
        ip_id: header.identification(),
        l4_len: usize::from(header.total_len()).saturating_sub(usize::from(header.ihl()) * 4),
    };
    tcp(&packet[header.slice().len()..], macs, ip)
}

fn ipv6(packet: &[u8], macs: Macs) -> Step<Verdict> {
    let header = Ipv6HeaderSlice::from_slice(packet).map_err(|_| Verdict::ParseError)?;
    let mut next_header = header.next_header();
    let mut rest = &packet[header.slice().len()..];
    let mut ext_len = 0;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next_header {
            ip_number::IPV6_HOP_BY_HOP | ip_number::IPV6_ROUTE | ip_number::IPV6_DEST_OPTIONS => {
                let ext =
                    Ipv6RawExtHeaderSlice::from_slice(rest).map_err(|_| Verdict::ParseError)?;
                next_header = ext.next_header();
                ext_len += ext.slice().len();
                rest = &rest[ext.slice().len()..];
            }
            ip_number::IPV6_FRAG => {
                let fragment =
                    Ipv6FragmentHeaderSlice::from_slice(rest).map_err(|_| Verdict::ParseError)?;
                if fragment.fragment_offset().value() != 0 {
                    return Ok(Verdict::NotTcp);
                }
                next_header = fragment.next_header();
                ext_len += fragment.slice().len();
                rest = &rest[fragment.slice().len()..];
            }
            _ => break,
        }
    }
    // Another protocol, or more extension headers than the kernel follows.
    if next_header != ip_number::TCP {
        return Ok(Verdict::NotTcp);
    }
    let ip = IpLayer {
        family: FAMILY_IPV6,
        src: ipv6_words(header.source()),
        dst: ipv6_words(header.destination()),
        ttl: header.hop_limit(),
        ip_id: 0,
        l4_len: usize::from(header.payload_length()).saturating_sub(ext_len),
    };
    tcp(rest, macs, ip)
}

fn tcp(segment: &[u8], (eth_src, eth_dst): Macs, ip: IpLayer) -> Step<Verdict> {
    // Checks data offset >= 5 and that the whole header with its options is present.
    let header = TcpHeaderSlice::from_slice(segment).map_err(|_| Verdict::ParseError)?;
    // Byte 13 of the header, rebuilt from etherparse's flag accessors.
    let flags = [
        header.fin(),
        header.syn(),
        header.rst(),
        header.psh(),
        header.ack(),
        header.urg(),
        header.ece(),
        header.cwr(),
    ]
    .iter()
    .enumerate()
    .fold(0u8, |byte, (bit, &set)| byte | (u8::from(set) << bit));
    let captured = &segment[header.slice().len()..];
    let mut payload_head = [0; RST_PAYLOAD_BYTES];
    let head = captured.len().min(RST_PAYLOAD_BYTES);
    payload_head[..head].copy_from_slice(&captured[..head]);
    Ok(Verdict::Tcp(Segment {
        eth_src,
        eth_dst,
        family: ip.family,
        src: ip.src,
        dst: ip.dst,
        ttl: ip.ttl,
        ip_id: ip.ip_id,
        src_port: header.source_port(),
        dst_port: header.destination_port(),
        flags,
        seq: header.sequence_number(),
        ack: header.acknowledgment_number(),
        payload_len: ip
            .l4_len
            .saturating_sub(usize::from(header.data_offset()) * 4)
            .try_into()
            .expect("an IP length field is 16 bits"),
        payload_head,
        captured_payload: captured.len(),
    }))
}
