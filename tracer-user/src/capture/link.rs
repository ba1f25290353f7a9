//! Link layers to Ethernet: every packet leaves the reader as an Ethernet frame, the input of the
//! parser the kernel programs use, whatever link layer the file recorded. Ethernet records stay
//! as they are; Linux cooked (SLL, SLL2) and raw IP records get a synthesised Ethernet header,
//! and cooked headers also tell the packet's direction.

use std::fmt;

use super::Direction;

const SLL_HEADER_LEN: usize = 16;
const SLL2_HEADER_LEN: usize = 20;
pub(super) const ETH_P_IPV4: u16 = 0x0800;
pub(super) const ETH_P_IPV6: u16 = 0x86dd;
/// Linux `sll_pkttype` values 0-3 (to us, broadcast, multicast, to another host) were received.
const PACKET_OTHERHOST: u8 = 3;
const PACKET_OUTGOING: u8 = 4;

/// The link types the reader turns into Ethernet frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// LINKTYPE_ETHERNET (1).
    Ethernet,
    /// LINKTYPE_LINUX_SLL (113): Linux cooked capture, as from `tcpdump -i any` before libpcap 1.10.
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276): Linux cooked capture v2, with the interface index.
    LinuxSll2,
    /// LINKTYPE_RAW (101): IPv4 or IPv6, by the version nibble.
    RawIp,
    /// LINKTYPE_IPV4 (228).
    Ipv4,
    /// LINKTYPE_IPV6 (229).
    Ipv6,
}

impl LinkType {
    /// The link type a capture file's header or interface block names, if we read it.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => LinkType::Ethernet,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            101 => LinkType::RawIp,
            228 => LinkType::Ipv4,
            229 => LinkType::Ipv6,
            _ => return None,
        })
    }

    /// Its number in capture files (the tcpdump.org LINKTYPE_ registry).
    pub fn code(self) -> u32 {
        match self {
            LinkType::Ethernet => 1,
            LinkType::LinuxSll => 113,
            LinkType::LinuxSll2 => 276,
            LinkType::RawIp => 101,
            LinkType::Ipv4 => 228,
            LinkType::Ipv6 => 229,
        }
    }
}

impl fmt::Display for LinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            LinkType::Ethernet => "ETHERNET",
            LinkType::LinuxSll => "LINUX_SLL",
            LinkType::LinuxSll2 => "LINUX_SLL2",
            LinkType::RawIp => "RAW",
            LinkType::Ipv4 => "IPV4",
            LinkType::Ipv6 => "IPV6",
        };
        write!(f, "{name} ({})", self.code())
    }
}

/// The packet as an Ethernet frame, and the direction its link-layer header tells. Ethernet
/// records are returned as they are; others get a synthesised 14-byte header in `scratch`.
pub(super) fn ethernet_frame<'a>(
    link_type: LinkType,
    record: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> (&'a [u8], Option<Direction>) {
    // (source MAC, EtherType, header length, direction)
    let (src, ether_type, header_len, direction) = match link_type {
        LinkType::Ethernet => return (record, None),
        LinkType::LinuxSll => {
            let Some(header) = record.first_chunk::<SLL_HEADER_LEN>() else {
                return (&[], None);
            };
            let packet_type = u16::from_be_bytes([header[0], header[1]]);
            let addr_len = u16::from_be_bytes([header[4], header[5]]);
            (
                mac_from_link_address(&header[6..14], addr_len.into()),
                u16::from_be_bytes([header[14], header[15]]),
                SLL_HEADER_LEN,
                u8::try_from(packet_type).ok().and_then(direction_of),
            )
        }
        LinkType::LinuxSll2 => {
            let Some(header) = record.first_chunk::<SLL2_HEADER_LEN>() else {
                return (&[], None);
            };
            (
                mac_from_link_address(&header[12..20], header[11].into()),
                u16::from_be_bytes([header[0], header[1]]),
                SLL2_HEADER_LEN,
                direction_of(header[10]),
            )
        }
        LinkType::RawIp => {
            let ether_type = match record.first().map(|byte| byte >> 4) {
                Some(4) => ETH_P_IPV4,
                Some(6) => ETH_P_IPV6,
                // Not IP: the parser will say so.
                _ => 0,
            };
            ([0; 6], ether_type, 0, None)
        }
        LinkType::Ipv4 => ([0; 6], ETH_P_IPV4, 0, None),
        LinkType::Ipv6 => ([0; 6], ETH_P_IPV6, 0, None),
    };
    scratch.clear();
    scratch.extend_from_slice(&[0; 6]);
    scratch.extend_from_slice(&src);
    // VLAN tags, if any, follow the cooked header's protocol field as they follow an Ethernet
    // header's EtherType: the rest of the record is copied as it is.
    scratch.extend_from_slice(&ether_type.to_be_bytes());
    scratch.extend_from_slice(&record[header_len..]);
    (scratch, direction)
}

/// A cooked header's link-layer address as a source MAC, when it is one (6 bytes).
fn mac_from_link_address(address: &[u8], len: usize) -> [u8; 6] {
    match address.first_chunk::<6>() {
        Some(mac) if len == 6 => *mac,
        _ => [0; 6],
    }
}

fn direction_of(packet_type: u8) -> Option<Direction> {
    match packet_type {
        0..=PACKET_OTHERHOST => Some(Direction::Inbound),
        PACKET_OUTGOING => Some(Direction::Outbound),
        _ => None,
    }
}
