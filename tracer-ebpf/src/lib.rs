//! Packet parsing and accounting shared by flagtrace's kernel programs (src/main.rs), the
//! benchmark's reference programs, and `flagtrace pcap` on the host. Plain `core` code over a
//! `[start, end)` byte range, so it also runs, and is unit-tested, on the host.
#![cfg_attr(not(test), no_std)]
// bpfel-unknown-none has no atomic read-modify-write in core::sync::atomic (see account.rs).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics, asm_experimental_arch))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

use core::{marker::PhantomData, mem};

use tracer_common::{FlowKey, FAMILY_IPV4, FAMILY_IPV6};

/// For the BPF programs built on this library.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a loaded program: the verifier rejects any path that could panic.
    loop {}
}

/// Loads of packet fields, which have no alignment. LLVM would split a load it cannot prove
/// aligned into single bytes (an address word: 4 loads, 3 shifts, 3 ors), and its
/// `allows-misaligned-mem-access` feature also misaligns stack slots, which the verifier refuses.
/// So on BPF the load is one instruction written in assembly. The verifier accepts it: packet
/// loads need no alignment where the CPU has efficient unaligned access, and elsewhere it checks
/// them as if the IP header were 4-aligned (NET_IP_ALIGN), which every field read here then is.
macro_rules! unaligned_load {
    ($name:ident, $int:ty, $width:literal) => {
        /// The bytes at `OFFSET` in `*base` as one integer, in their order in memory. The offset
        /// is a constant of the load instruction: a pointer to the field instead would cost two
        /// instructions and a register more (BPF has no three-operand add).
        #[inline(always)]
        pub(crate) fn $name<const OFFSET: usize, H>(base: &H) -> $int {
            const { assert!(OFFSET + mem::size_of::<$int>() <= mem::size_of::<H>()) };
            #[cfg(target_arch = "bpf")]
            {
                let value: u64;
                unsafe {
                    core::arch::asm!(
                        concat!("{0} = *(", $width, " *)({1} + {2})"),
                        lateout(reg) value,
                        in(reg) base as *const H,
                        const OFFSET,
                        options(pure, readonly, nostack, preserves_flags),
                    );
                    // The load zero-extends; told so, LLVM does not mask the value again
                    // wherever it is widened or compared.
                    core::hint::assert_unchecked(value <= <$int>::MAX as u64);
                }
                value as $int
            }
            #[cfg(not(target_arch = "bpf"))]
            unsafe {
                ((base as *const H as *const u8).add(OFFSET) as *const $int).read_unaligned()
            }
        }
    };
}

unaligned_load!(load_u16, u16, "u16");
unaligned_load!(load_u32, u32, "u32");

/// A field of a header in the packet as one load: `load!(u16, ip, Ipv4Hdr, id)` is the native
/// integer of the field's bytes; `+ N` reads N bytes further in.
macro_rules! load {
    (u16, $header:expr, $ty:ty, $field:ident $(+ $extra:literal)?) => {
        load_u16::<{ mem::offset_of!($ty, $field) $(+ $extra)? }, $ty>($header)
    };
    (u32, $header:expr, $ty:ty, $field:ident $(+ $extra:literal)?) => {
        load_u32::<{ mem::offset_of!($ty, $field) $(+ $extra)? }, $ty>($header)
    };
}

/// A big-endian 16-bit header field.
macro_rules! be16 {
    ($header:expr, $ty:ty, $field:ident) => {
        u16::from_be(load!(u16, $header, $ty, $field))
    };
}

/// An address as native words of network-order data, the [`FlowKey`] encoding.
macro_rules! address {
    ($header:expr, Ipv4Hdr, $field:ident) => {
        [load!(u32, $header, Ipv4Hdr, $field), 0, 0, 0]
    };
    ($header:expr, Ipv6Hdr, $field:ident) => {
        [
            load!(u32, $header, Ipv6Hdr, $field),
            load!(u32, $header, Ipv6Hdr, $field + 4),
            load!(u32, $header, Ipv6Hdr, $field + 8),
            load!(u32, $header, Ipv6Hdr, $field + 12),
        ]
    };
}

// Declared after the macros above, which it uses: macro_rules! scope is textual.
pub mod account;
pub mod tls;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// 802.1Q inside 802.1ad (QinQ) is as deep as provider networks go in practice.
const MAX_VLAN_TAGS: usize = 2;

const IPPROTO_TCP: u8 = 6;
const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;
/// Real packets carry one or two extension headers; the bound keeps the verifier's work small.
const MAX_IPV6_EXT_HEADERS: usize = 6;

/// A TCP segment found in a packet: where its headers are, and its payload length. Fields are
/// read from the packet where they are used, not when parsing: a plain data packet needs only
/// its addresses, ports and flags, and what a flag packet needs after the flow-table lookup is
/// cheaper to read again from the packet than to carry across the helper call on the stack.
#[derive(Clone, Copy)]
pub struct TcpSegment<'a> {
    pub eth: &'a EthHdr,
    ip: IpHeader<'a>,
    tcp: &'a TcpHdr,
    /// The IP length field's bytes beyond the TCP header: the payload length, or negative when
    /// the field is too short for the headers. Saturated where it is used, which few packets do.
    payload_bytes: isize,
}

/// The IP header of a segment. The parser gives each version its own copy of what follows
/// (see [`parse`]), so in each copy the variant is a constant and matching on it costs nothing.
#[derive(Clone, Copy)]
enum IpHeader<'a> {
    V4(&'a Ipv4Hdr),
    V6(&'a Ipv6Hdr),
}

impl TcpSegment<'_> {
    #[inline(always)]
    pub fn family(&self) -> u8 {
        match self.ip {
            IpHeader::V4(_) => FAMILY_IPV4,
            IpHeader::V6(_) => FAMILY_IPV6,
        }
    }

    /// The source address in the [`FlowKey`] encoding: IPv4 in the first word, the rest zero.
    #[inline(always)]
    pub fn src(&self) -> [u32; 4] {
        match self.ip {
            IpHeader::V4(ip) => address!(ip, Ipv4Hdr, src),
            IpHeader::V6(ip) => address!(ip, Ipv6Hdr, src),
        }
    }

    /// The destination address, encoded like [`TcpSegment::src`].
    #[inline(always)]
    pub fn dst(&self) -> [u32; 4] {
        match self.ip {
            IpHeader::V4(ip) => address!(ip, Ipv4Hdr, dst),
            IpHeader::V6(ip) => address!(ip, Ipv6Hdr, dst),
        }
    }

    /// TTL or hop limit.
    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        match self.ip {
            IpHeader::V4(ip) => ip.ttl,
            IpHeader::V6(ip) => ip.hop_limit,
        }
    }

    /// IPv4 identification; 0 for IPv6.
    #[inline(always)]
    pub fn ip_id(&self) -> u16 {
        match self.ip {
            IpHeader::V4(ip) => be16!(ip, Ipv4Hdr, id),
            IpHeader::V6(_) => 0,
        }
    }

    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        be16!(self.tcp, TcpHdr, src_port)
    }

    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        be16!(self.tcp, TcpHdr, dst_port)
    }

    #[inline(always)]
    pub fn flags(&self) -> u8 {
        self.tcp.flags
    }

    /// TCP payload length from the IP length fields (0 when they do not add up).
    #[inline(always)]
    pub fn payload_len(&self) -> u32 {
        self.payload_bytes.max(0) as u32
    }

    #[inline(always)]
    pub fn seq(&self) -> u32 {
        u32::from_be(load!(u32, self.tcp, TcpHdr, seq))
    }

    #[inline(always)]
    pub fn ack(&self) -> u32 {
        u32::from_be(load!(u32, self.tcp, TcpHdr, ack))
    }

    /// Offset of the TCP payload from the start of the packet.
    #[inline(always)]
    pub fn payload_offset(&self) -> u32 {
        let tcp_offset = self.tcp as *const TcpHdr as usize - self.eth as *const EthHdr as usize;
        (tcp_offset + ((self.tcp.data_offset >> 4) as usize) * 4) as u32
    }

    /// The canonical key of this packet's flow on `ifindex`, and which endpoint sent it.
    #[inline(always)]
    pub fn flow_key(&self, ifindex: u32) -> (FlowKey, usize) {
        FlowKey::from_packet(
            self.family(),
            ifindex,
            self.src(),
            self.src_port(),
            self.dst(),
            self.dst_port(),
        )
    }
}

/// What the IP layer tells the TCP parser.
struct IpInfo<'a> {
    eth: &'a EthHdr,
    header: IpHeader<'a>,
    /// Offset in the packet just past the IP packet, per the IP length field.
    end: usize,
}

/// Why a packet yielded no TCP segment.
pub enum NoSegment {
    /// Well formed, but not TCP we can read: another protocol, or a non-first fragment.
    NotTcp,
    /// Truncated or malformed before the TCP flags.
    Malformed,
}

/// The packet bytes a program may read: `[start, end)`, valid for `'a`, one program run.
#[derive(Clone, Copy)]
pub struct Packet<'a> {
    start: usize,
    end: usize,
    _run: PhantomData<&'a [u8]>,
}

impl<'a> Packet<'a> {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Packet {
            start,
            end,
            _run: PhantomData,
        }
    }

    /// The one bounds-checked accessor: the header of type `H` at `offset`, if all of it is inside
    /// the packet. Fields are then read relative to this one pointer, which is what the verifier
    /// can follow; reading through pointers re-derived from a variable offset is what it refuses.
    #[inline(always)]
    fn header<H>(&self, offset: usize) -> Result<&'a H, NoSegment> {
        if self.start + offset + mem::size_of::<H>() > self.end {
            return Err(NoSegment::Malformed);
        }
        Ok(unsafe { &*((self.start + offset) as *const H) })
    }
}

// Wire headers, as byte arrays so that no field needs alignment (packet data has none to offer).
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

#[repr(C)]
struct VlanHdr {
    tci: [u8; 2],
    ether_type: [u8; 2],
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    frag: [u8; 2],
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [[u8; 4]; 4],
    dst: [[u8; 4]; 4],
}

/// The first two bytes common to hop-by-hop, routing and destination options headers.
#[repr(C)]
struct Ipv6ExtHdr {
    next_header: u8,
    len_8_octets_minus_1: u8,
}

#[repr(C)]
struct Ipv6FragHdr {
    next_header: u8,
    reserved: u8,
    offset_flags: [u8; 2],
    id: [u8; 4],
}

#[repr(C)]
struct TcpHdr {
    src_port: [u8; 2],
    dst_port: [u8; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    data_offset: u8,
    flags: u8,
    window: [u8; 2],
    check: [u8; 2],
    urgent: [u8; 2],
}

/// What a caller of [`parse`] does with the TCP segment it finds.
pub trait OnSegment<'a> {
    type Output;
    fn on_segment(self, segment: TcpSegment<'a>) -> Self::Output;
}

impl<'a, R, F: FnOnce(TcpSegment<'a>) -> R> OnSegment<'a> for F {
    type Output = R;
    #[inline(always)]
    fn on_segment(self, segment: TcpSegment<'a>) -> R {
        self(segment)
    }
}

/// Parses `packet` and hands its TCP segment to `on_segment`. A continuation rather than a return
/// value, so that IPv4 and IPv6 each get their own copy of what the caller does with the segment:
/// in the IPv4 copy three of each address's four words are constant zeros, and hashing, ordering
/// and keying them costs nothing. A closure's body is not always inlined into both copies; the
/// kernel programs pass a type whose [`OnSegment::on_segment`] is `#[inline(always)]`.
#[inline(always)]
pub fn parse<'a, S: OnSegment<'a>>(
    packet: Packet<'a>,
    on_segment: S,
) -> Result<S::Output, NoSegment> {
    let eth = packet.header::<EthHdr>(0)?;
    let mut ether_type = be16!(eth, EthHdr, ether_type);
    let mut l3 = mem::size_of::<EthHdr>();
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        ether_type = be16!(packet.header::<VlanHdr>(l3)?, VlanHdr, ether_type);
        l3 += mem::size_of::<VlanHdr>();
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(packet, eth, l3, on_segment),
        ETH_P_IPV6 => parse_ipv6(packet, eth, l3, on_segment),
        _ => Err(NoSegment::NotTcp),
    }
}

#[inline(always)]
fn parse_ipv4<'a, S: OnSegment<'a>>(
    packet: Packet<'a>,
    eth: &'a EthHdr,
    l3: usize,
    on_segment: S,
) -> Result<S::Output, NoSegment> {
    let ip = packet.header::<Ipv4Hdr>(l3)?;
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ip.version_ihl >> 4 != 4 || header_len < mem::size_of::<Ipv4Hdr>() {
        return Err(NoSegment::Malformed);
    }
    // A header we walk must be whole, whatever follows it: a truncated one is malformed.
    packet.header::<u8>(l3 + header_len - 1)?;
    if be16!(ip, Ipv4Hdr, frag) & IPV4_FRAG_OFFSET_MASK != 0 || ip.protocol != IPPROTO_TCP {
        return Err(NoSegment::NotTcp);
    }
    let info = IpInfo {
        eth,
        header: IpHeader::V4(ip),
        end: l3 + be16!(ip, Ipv4Hdr, total_len) as usize,
    };
    parse_tcp(packet, l3 + header_len, info, on_segment)
}

#[inline(always)]
fn parse_ipv6<'a, S: OnSegment<'a>>(
    packet: Packet<'a>,
    eth: &'a EthHdr,
    l3: usize,
    on_segment: S,
) -> Result<S::Output, NoSegment> {
    let ip = packet.header::<Ipv6Hdr>(l3)?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Err(NoSegment::Malformed);
    }
    let mut next_header = ip.next_header;
    let mut offset = l3 + mem::size_of::<Ipv6Hdr>();
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next_header {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS => {
                let ext = packet.header::<Ipv6ExtHdr>(offset)?;
                let header_len = (ext.len_8_octets_minus_1 as usize + 1) * 8;
                next_header = ext.next_header;
                packet.header::<u8>(offset + header_len - 1)?;
                offset += header_len;
            }
            IPV6_FRAGMENT => {
                let frag = packet.header::<Ipv6FragHdr>(offset)?;
                // Only the first fragment (offset 0) carries the TCP header.
                if be16!(frag, Ipv6FragHdr, offset_flags) >> 3 != 0 {
                    return Err(NoSegment::NotTcp);
                }
                next_header = frag.next_header;
                offset += mem::size_of::<Ipv6FragHdr>();
            }
            _ => break,
        }
    }
    // Another protocol, or more extension headers than we follow.
    if next_header != IPPROTO_TCP {
        return Err(NoSegment::NotTcp);
    }
    let info = IpInfo {
        eth,
        header: IpHeader::V6(ip),
        end: l3 + mem::size_of::<Ipv6Hdr>() + be16!(ip, Ipv6Hdr, payload_len) as usize,
    };
    parse_tcp(packet, offset, info, on_segment)
}

#[inline(always)]
fn parse_tcp<'a, S: OnSegment<'a>>(
    packet: Packet<'a>,
    l4: usize,
    ip: IpInfo<'a>,
    on_segment: S,
) -> Result<S::Output, NoSegment> {
    let tcp = packet.header::<TcpHdr>(l4)?;
    let header_len = ((tcp.data_offset >> 4) as usize) * 4;
    if header_len < mem::size_of::<TcpHdr>() {
        return Err(NoSegment::Malformed);
    }
    // The whole header, options included, must be present.
    packet.header::<u8>(l4 + header_len - 1)?;
    let segment = TcpSegment {
        eth: ip.eth,
        ip: ip.header,
        tcp,
        // One subtraction for both headers: the IP length field counts them too.
        payload_bytes: ip.end as isize - (l4 + header_len) as isize,
    };
    Ok(on_segment.on_segment(segment))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn parsed<R>(frame: &[u8], check: impl FnOnce(Result<&TcpSegment<'_>, NoSegment>) -> R) -> R {
        let start = frame.as_ptr() as usize;
        let mut check = Some(check);
        match parse(
            Packet::new(start, start + frame.len()),
            |segment: TcpSegment| (check.take().unwrap())(Ok(&segment)),
        ) {
            Ok(result) => result,
            Err(no_segment) => (check.take().unwrap())(Err(no_segment)),
        }
    }

    fn tcp_v4(
        flags: impl FnOnce(
            etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        ) -> etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        payload: &[u8],
    ) -> Vec<u8> {
        let builder = flags(
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 61)
                .tcp(40000, 443, 1000, 64240),
        );
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).unwrap();
        frame
    }

    #[test]
    fn reads_what_the_evidence_needs_from_an_ipv4_segment() {
        let frame = tcp_v4(|b| b.rst().ack(77), b"abc");
        parsed(&frame, |segment| {
            let segment = segment.ok().expect("a TCP segment");
            assert_eq!(segment.family(), FAMILY_IPV4);
            assert_eq!(segment.src()[0].to_ne_bytes(), [10, 0, 0, 1]);
            assert_eq!((segment.src_port(), segment.dst_port()), (40000, 443));
            assert_eq!(segment.flags(), 0x14);
            assert_eq!(
                (segment.ttl(), segment.seq(), segment.ack()),
                (61, 1000, 77)
            );
            assert_eq!(segment.payload_len(), 3);
            assert_eq!(segment.eth.src, [2, 0, 0, 0, 0, 1]);
        });
    }

    #[test]
    fn follows_vlan_tags_and_ipv6() {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .single_vlan(7.try_into().unwrap())
            .ipv6([0xfd; 16], [0xfe; 16], 33)
            .tcp(443, 50000, 5, 100)
            .syn()
            .ack(9);
        let mut frame = Vec::new();
        builder.write(&mut frame, &[]).unwrap();
        parsed(&frame, |segment| {
            let segment = segment.ok().expect("a TCP segment");
            assert_eq!(
                (segment.family(), segment.ttl(), segment.ip_id()),
                (FAMILY_IPV6, 33, 0)
            );
            assert_eq!(segment.dst(), [u32::from_ne_bytes([0xfe; 4]); 4]);
        });
    }

    #[test]
    fn a_truncated_header_is_malformed_and_udp_is_not_tcp() {
        let frame = tcp_v4(|b| b.syn(), &[]);
        for len in 14..frame.len() {
            parsed(&frame[..len], |segment| {
                assert!(matches!(segment, Err(NoSegment::Malformed)), "length {len}")
            });
        }
        let builder = PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(53, 53);
        let mut udp = Vec::new();
        builder.write(&mut udp, &[]).unwrap();
        parsed(&udp, |segment| {
            assert!(matches!(segment, Err(NoSegment::NotTcp)))
        });
    }
}
