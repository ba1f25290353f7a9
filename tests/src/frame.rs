//! Frames built header by header with etherparse's header types, for the shapes
//! `PacketBuilder` cannot make (any TPIDs and number of tags, IPv6 extension headers repeated or
//! in any order), and with the position of every field the tracer reads, so the differential
//! test can mutate exactly those. Every field the tracer keeps as evidence (MACs, TTL, IP ID,
//! sequence and acknowledgement numbers) is the spec's to choose.

use etherparse::{
    ip_number, EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Header, Ipv4Options,
    Ipv6FlowLabel, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader, TcpHeader,
    UdpHeader, VlanId, VlanPcp,
};
use tracer_common::{FAMILY_IPV4, FAMILY_IPV6};

use crate::oracle::{ipv4_words, ipv6_words, Segment, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// IPv4 and TCP options are filled with NOP (kind 1): valid, and content the tracer never reads.
const NOP_OPTION: u8 = 1;

/// A field the tracer reads, by what it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// 2 bytes: the EtherType of the Ethernet header or of a VLAN tag.
    EtherType,
    /// 1 byte: IPv4 version and IHL nibbles.
    Ipv4VersionIhl,
    /// 2 bytes: IPv4 total length (only the payload length depends on it).
    Ipv4TotalLength,
    /// 2 bytes: IPv4 flags and fragment offset.
    Ipv4Fragment,
    /// 1 byte: IPv6 version nibble and the top of the traffic class.
    Ipv6Version,
    /// 2 bytes: IPv6 payload length (only the TCP payload length depends on it).
    Ipv6PayloadLength,
    /// 1 byte: IPv4 protocol, IPv6 next header, or an extension header's next header.
    NextHeader,
    /// 1 byte: an IPv6 extension header's length in 8-octet units, not counting the first.
    ExtLength,
    /// 2 bytes: an IPv6 fragment header's offset and M flag.
    Ipv6FragmentOffset,
    /// 2 bytes: a TCP or UDP port.
    Port,
    /// 1 byte: TCP data offset nibble (and reserved bits).
    TcpDataOffset,
    /// 1 byte: TCP flags.
    TcpFlags,
}

impl FieldKind {
    /// Size of the field in bytes.
    pub fn width(self) -> usize {
        match self {
            FieldKind::EtherType
            | FieldKind::Ipv4TotalLength
            | FieldKind::Ipv4Fragment
            | FieldKind::Ipv6PayloadLength
            | FieldKind::Ipv6FragmentOffset
            | FieldKind::Port => 2,
            FieldKind::Ipv4VersionIhl
            | FieldKind::Ipv6Version
            | FieldKind::NextHeader
            | FieldKind::ExtLength
            | FieldKind::TcpDataOffset
            | FieldKind::TcpFlags => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: usize,
    pub kind: FieldKind,
}

/// Serialized frame with its layout.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub fields: Vec<Field>,
    /// Offset where each header ends, in order (payload excluded).
    pub header_ends: Vec<usize>,
}

impl Frame {
    fn push_header(&mut self, header: &[u8], fields: &[(usize, FieldKind)]) {
        let start = self.bytes.len();
        self.fields
            .extend(fields.iter().map(|&(offset, kind)| Field {
                offset: start + offset,
                kind,
            }));
        self.bytes.extend_from_slice(header);
        self.header_ends.push(self.bytes.len());
    }
}

#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// TPID of each VLAN tag, outermost first.
    pub tags: Vec<u16>,
    pub ip: IpSpec,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    pub l4: L4Spec,
}

#[derive(Clone, Debug)]
pub enum IpSpec {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        /// Identification.
        id: u16,
        /// Option length in 32-bit words (0..=10).
        option_words: u8,
        /// In 8-octet units; non-zero makes a non-first fragment.
        fragment_offset: u16,
        more_fragments: bool,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        exts: Vec<Ext>,
    },
}

/// An IPv6 extension header; `units` is the length field (the header is `(units + 1) * 8` bytes).
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop { units: u8 },
    Routing { units: u8 },
    DestOptions { units: u8 },
    Fragment { offset: u16, more: bool },
}

impl Ext {
    fn ip_number(self) -> IpNumber {
        match self {
            Ext::HopByHop { .. } => ip_number::IPV6_HOP_BY_HOP,
            Ext::Routing { .. } => ip_number::IPV6_ROUTE,
            Ext::DestOptions { .. } => ip_number::IPV6_DEST_OPTIONS,
            Ext::Fragment { .. } => ip_number::IPV6_FRAG,
        }
    }

    fn to_bytes(self, next_header: IpNumber) -> Vec<u8> {
        let raw = |units: u8| {
            // The raw header is the next-header and length bytes followed by this payload.
            let payload = vec![0u8; 6 + 8 * usize::from(units)];
            Ipv6RawExtHeader::new_raw(next_header, &payload)
                .expect("extension header payloads are 6 + 8k bytes")
                .to_bytes()
                .to_vec()
        };
        match self {
            Ext::HopByHop { units } | Ext::Routing { units } | Ext::DestOptions { units } => {
                raw(units)
            }
            Ext::Fragment { offset, more } => Ipv6FragmentHeader::new(
                next_header,
                IpFragOffset::try_new(offset).expect("fragment offsets fit 13 bits"),
                more,
                0x1234_5678,
            )
            .to_bytes()
            .to_vec(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum L4Spec {
    Tcp {
        src_port: u16,
        dst_port: u16,
        /// Byte 13 of the header (CWR ECE URG ACK PSH RST SYN FIN).
        flags: u8,
        seq: u32,
        /// Written whether or not `flags` has ACK.
        ack: u32,
        /// Option length in 32-bit words (0..=10).
        option_words: u8,
        payload: Vec<u8>,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
        payload: Vec<u8>,
    },
}

/// Addresses for the transport checksum.
enum PseudoHeader {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

impl L4Spec {
    fn ip_number(&self) -> IpNumber {
        match self {
            L4Spec::Tcp { .. } => ip_number::TCP,
            L4Spec::Udp { .. } => ip_number::UDP,
        }
    }

    /// Appends the header (with its fields) and the payload.
    fn push(&self, frame: &mut Frame, addresses: PseudoHeader) {
        match self {
            L4Spec::Tcp {
                src_port,
                dst_port,
                flags,
                seq,
                ack,
                option_words,
                payload,
            } => {
                let mut tcp = TcpHeader::new(*src_port, *dst_port, *seq, 64240);
                let bit = |mask: u8| flags & mask != 0;
                (tcp.fin, tcp.syn, tcp.rst, tcp.psh) = (bit(0x01), bit(0x02), bit(0x04), bit(0x08));
                (tcp.ack, tcp.urg, tcp.ece, tcp.cwr) = (bit(0x10), bit(0x20), bit(0x40), bit(0x80));
                tcp.acknowledgment_number = *ack;
                tcp.set_options_raw(&vec![NOP_OPTION; 4 * usize::from(*option_words)])
                    .expect("TCP options are at most 10 words");
                tcp.checksum = match addresses {
                    PseudoHeader::V4(src, dst) => tcp.calc_checksum_ipv4_raw(src, dst, payload),
                    PseudoHeader::V6(src, dst) => tcp.calc_checksum_ipv6_raw(src, dst, payload),
                }
                .expect("small payload");
                frame.push_header(
                    &tcp.to_bytes(),
                    &[
                        (0, FieldKind::Port),
                        (2, FieldKind::Port),
                        (12, FieldKind::TcpDataOffset),
                        (13, FieldKind::TcpFlags),
                    ],
                );
                frame.bytes.extend_from_slice(payload);
            }
            L4Spec::Udp {
                src_port,
                dst_port,
                payload,
            } => {
                let udp = match addresses {
                    PseudoHeader::V4(src, dst) => UdpHeader::with_ipv4_checksum(
                        *src_port,
                        *dst_port,
                        &ipv4(src, dst),
                        payload,
                    ),
                    PseudoHeader::V6(src, dst) => UdpHeader::with_ipv6_checksum(
                        *src_port,
                        *dst_port,
                        &ipv6(src, dst),
                        payload,
                    ),
                }
                .expect("small payload");
                frame.push_header(
                    &udp.to_bytes(),
                    &[(0, FieldKind::Port), (2, FieldKind::Port)],
                );
                frame.bytes.extend_from_slice(payload);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            L4Spec::Tcp {
                option_words,
                payload,
                ..
            } => TcpHeader::MIN_LEN + 4 * usize::from(*option_words) + payload.len(),
            L4Spec::Udp { payload, .. } => UdpHeader::LEN + payload.len(),
        }
    }
}

fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Ipv4Header {
    Ipv4Header::new(0, 64, ip_number::UDP, src, dst).expect("empty payload")
}

fn ipv6(src: [u8; 16], dst: [u8; 16]) -> Ipv6Header {
    Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: 0,
        next_header: ip_number::UDP,
        hop_limit: 64,
        source: src,
        destination: dst,
    }
}

impl FrameSpec {
    /// The segment this frame carries when the tracer can plainly read it (TCP, no non-first
    /// fragment, no more tags or extension headers than it follows): the builder's ground truth,
    /// which the oracle must reproduce from the bytes.
    pub fn segment(&self) -> Option<Segment> {
        let L4Spec::Tcp {
            src_port,
            dst_port,
            flags,
            seq,
            ack,
            ref payload,
            ..
        } = self.l4
        else {
            return None;
        };
        let (family, src, dst, ip_id) = match &self.ip {
            IpSpec::V4 {
                src,
                dst,
                id,
                fragment_offset: 0,
                ..
            } => (FAMILY_IPV4, ipv4_words(*src), ipv4_words(*dst), *id),
            IpSpec::V6 { src, dst, exts }
                if exts.len() <= MAX_IPV6_EXT_HEADERS
                    && exts.iter().all(
                        |ext| !matches!(ext, Ext::Fragment { offset, .. } if *offset != 0),
                    ) =>
            {
                (FAMILY_IPV6, ipv6_words(*src), ipv6_words(*dst), 0)
            }
            _ => return None,
        };
        (self.tags.len() <= MAX_VLAN_TAGS).then_some(Segment {
            eth_src: self.src_mac,
            eth_dst: self.dst_mac,
            family,
            src,
            dst,
            ttl: self.ttl,
            ip_id,
            src_port,
            dst_port,
            flags,
            seq,
            ack,
            payload_len: payload.len().try_into().expect("small payload"),
            payload_head: std::array::from_fn(|i| payload.get(i).copied().unwrap_or(0)),
            captured_payload: payload.len(),
        })
    }

    pub fn build(&self) -> Frame {
        let mut frame = Frame::default();
        let ip_ether_type = match self.ip {
            IpSpec::V4 { .. } => EtherType::IPV4,
            IpSpec::V6 { .. } => EtherType::IPV6,
        };
        // Each header names the type of the one after it.
        let mut ether_types = self
            .tags
            .iter()
            .map(|&tpid| EtherType(tpid))
            .collect::<Vec<_>>();
        ether_types.push(ip_ether_type);
        let ethernet = Ethernet2Header {
            source: self.src_mac,
            destination: self.dst_mac,
            ether_type: ether_types[0],
        };
        frame.push_header(&ethernet.to_bytes(), &[(12, FieldKind::EtherType)]);
        for (index, next) in ether_types[1..].iter().enumerate() {
            let tag = SingleVlanHeader {
                pcp: VlanPcp::ZERO,
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(100 + index as u16).expect("small VLAN id"),
                ether_type: *next,
            };
            frame.push_header(&tag.to_bytes(), &[(2, FieldKind::EtherType)]);
        }
        match &self.ip {
            IpSpec::V4 {
                src,
                dst,
                id,
                option_words,
                fragment_offset,
                more_fragments,
            } => {
                let mut header = ipv4(*src, *dst);
                header.protocol = self.l4.ip_number();
                header.identification = *id;
                header.time_to_live = self.ttl;
                header.options =
                    Ipv4Options::try_from(&vec![NOP_OPTION; 4 * usize::from(*option_words)][..])
                        .expect("IPv4 options are at most 10 words");
                header.fragment_offset =
                    IpFragOffset::try_new(*fragment_offset).expect("fragment offsets fit 13 bits");
                header.more_fragments = *more_fragments;
                header
                    .set_payload_len(self.l4.len())
                    .expect("small payload");
                header.header_checksum = header.calc_header_checksum();
                frame.push_header(
                    &header.to_bytes(),
                    &[
                        (0, FieldKind::Ipv4VersionIhl),
                        (2, FieldKind::Ipv4TotalLength),
                        (6, FieldKind::Ipv4Fragment),
                        (9, FieldKind::NextHeader),
                    ],
                );
                self.l4.push(&mut frame, PseudoHeader::V4(*src, *dst));
            }
            IpSpec::V6 { src, dst, exts } => {
                let exts_bytes = exts
                    .iter()
                    .enumerate()
                    .map(|(index, ext)| {
                        let next = exts
                            .get(index + 1)
                            .map_or(self.l4.ip_number(), |next| next.ip_number());
                        ext.to_bytes(next)
                    })
                    .collect::<Vec<_>>();
                let mut header = ipv6(*src, *dst);
                header.hop_limit = self.ttl;
                header.next_header = exts
                    .first()
                    .map_or(self.l4.ip_number(), |ext| ext.ip_number());
                header
                    .set_payload_length(
                        exts_bytes.iter().map(Vec::len).sum::<usize>() + self.l4.len(),
                    )
                    .expect("small payload");
                frame.push_header(
                    &header.to_bytes(),
                    &[
                        (0, FieldKind::Ipv6Version),
                        (4, FieldKind::Ipv6PayloadLength),
                        (6, FieldKind::NextHeader),
                    ],
                );
                for (ext, bytes) in exts.iter().zip(&exts_bytes) {
                    let fields: &[(usize, FieldKind)] = match ext {
                        Ext::Fragment { .. } => &[
                            (0, FieldKind::NextHeader),
                            (2, FieldKind::Ipv6FragmentOffset),
                        ],
                        _ => &[(0, FieldKind::NextHeader), (1, FieldKind::ExtLength)],
                    };
                    frame.push_header(bytes, fields);
                }
                self.l4.push(&mut frame, PseudoHeader::V6(*src, *dst));
            }
        }
        frame
    }
}
