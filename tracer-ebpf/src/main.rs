//! flagtrace's kernel side: an XDP program on ingress and a TC program on egress that count SYN,
//! SYN/ACK, FIN and RST per flow. Both only read the packet and always let it through.
#![no_std]
#![no_main]
// bpfel-unknown-none has no atomic read-modify-write in core::sync::atomic; the intrinsic lowers to
// the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::{
    intrinsics::{atomic_xadd, AtomicOrdering},
    mem,
};

use aya_ebpf::{
    bindings::{xdp_action::XDP_PASS, BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_boot_ns,
    macros::{classifier, map, xdp},
    maps::{LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use tracer_common::{
    FlagCounts, FlowKey, FlowValue, GlobalCounters, Hook, DEFAULT_MAX_FLOWS, FAMILY_IPV4,
    FAMILY_IPV6, FIRST_SYN_HI, FIRST_SYN_LO, FIRST_SYN_NONE, HOOK_COUNT, SENDER_LO, TCP_ACK,
    TCP_FIN, TCP_RST, TCP_SYN,
};

/// The flow table. One table shared by all CPUs with atomic adds, rather than a per-CPU table:
/// a per-CPU LRU hash multiplies its memory by the CPU count, and a busy appliance has many CPUs.
/// User space sets the real capacity at load time (`--max-flows`).
#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(DEFAULT_MAX_FLOWS, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<GlobalCounters> = PerCpuArray::pinned(HOOK_COUNT, 0);

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
const TCP_FLAGS_OF_INTEREST: u8 = TCP_SYN | TCP_FIN | TCP_RST;

/// The parts of a TCP packet the counters need.
struct TcpSegment {
    family: u8,
    src: [u32; 4],
    dst: [u32; 4],
    src_port: u16,
    dst_port: u16,
    flags: u8,
}

/// Why a packet yielded no TCP segment.
enum NoSegment {
    /// Well formed, but not TCP we can read: another protocol, or a non-first fragment.
    NotTcp,
    /// Truncated or malformed before the TCP flags.
    Malformed,
}

/// The packet bytes a program may read: `[start, end)`.
#[derive(Clone, Copy)]
struct Packet {
    start: usize,
    end: usize,
}

impl Packet {
    /// The one bounds-checked accessor: the header of type `H` at `offset`, if all of it is inside
    /// the packet. Fields are then read relative to this one pointer, which is what the verifier
    /// can follow; reading through pointers re-derived from a variable offset is what it refuses.
    #[inline(always)]
    fn header<H>(&self, offset: usize) -> Result<&H, NoSegment> {
        if self.start + offset + mem::size_of::<H>() > self.end {
            return Err(NoSegment::Malformed);
        }
        Ok(unsafe { &*((self.start + offset) as *const H) })
    }
}

// Wire headers, as byte arrays so that no field needs alignment (packet data has none to offer).
#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    ether_type: [u8; 2],
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
    src: [u8; 16],
    dst: [u8; 16],
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

#[inline(always)]
fn words<const N: usize>(bytes: &[u8]) -> [u32; N] {
    let mut out = [0u32; N];
    let mut i = 0;
    while i < N {
        out[i] = u32::from_ne_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ]);
        i += 1;
    }
    out
}

#[inline(always)]
fn parse(packet: Packet) -> Result<TcpSegment, NoSegment> {
    let eth = packet.header::<EthHdr>(0)?;
    let mut ether_type = u16::from_be_bytes(eth.ether_type);
    let mut l3 = mem::size_of::<EthHdr>();
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        ether_type = u16::from_be_bytes(packet.header::<VlanHdr>(l3)?.ether_type);
        l3 += mem::size_of::<VlanHdr>();
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(packet, l3),
        ETH_P_IPV6 => parse_ipv6(packet, l3),
        _ => Err(NoSegment::NotTcp),
    }
}

#[inline(always)]
fn parse_ipv4(packet: Packet, l3: usize) -> Result<TcpSegment, NoSegment> {
    let ip = packet.header::<Ipv4Hdr>(l3)?;
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ip.version_ihl >> 4 != 4 || header_len < mem::size_of::<Ipv4Hdr>() {
        return Err(NoSegment::Malformed);
    }
    // A header we walk must be whole, whatever follows it: a truncated one is malformed.
    packet.header::<u8>(l3 + header_len - 1)?;
    if u16::from_be_bytes(ip.frag) & IPV4_FRAG_OFFSET_MASK != 0 || ip.protocol != IPPROTO_TCP {
        return Err(NoSegment::NotTcp);
    }
    let src = [words::<1>(&ip.src)[0], 0, 0, 0];
    let dst = [words::<1>(&ip.dst)[0], 0, 0, 0];
    parse_tcp(packet, l3 + header_len, FAMILY_IPV4, src, dst)
}

#[inline(always)]
fn parse_ipv6(packet: Packet, l3: usize) -> Result<TcpSegment, NoSegment> {
    let ip = packet.header::<Ipv6Hdr>(l3)?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Err(NoSegment::Malformed);
    }
    let src = words::<4>(&ip.src);
    let dst = words::<4>(&ip.dst);
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
                if u16::from_be_bytes(frag.offset_flags) >> 3 != 0 {
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
    parse_tcp(packet, offset, FAMILY_IPV6, src, dst)
}

#[inline(always)]
fn parse_tcp(
    packet: Packet,
    l4: usize,
    family: u8,
    src: [u32; 4],
    dst: [u32; 4],
) -> Result<TcpSegment, NoSegment> {
    let tcp = packet.header::<TcpHdr>(l4)?;
    let header_len = ((tcp.data_offset >> 4) as usize) * 4;
    if header_len < mem::size_of::<TcpHdr>() {
        return Err(NoSegment::Malformed);
    }
    let segment = TcpSegment {
        family,
        src,
        dst,
        src_port: u16::from_be_bytes(tcp.src_port),
        dst_port: u16::from_be_bytes(tcp.dst_port),
        flags: tcp.flags,
    };
    // The whole header, options included, must be present.
    packet.header::<u8>(l4 + header_len - 1)?;
    Ok(segment)
}

/// Adds one packet's flags to the counts of its sender, atomically: the table is shared by all
/// CPUs. The BPF target has 64-bit atomics only, so each add covers two adjacent u32 counters,
/// `(syn, syn_ack)` and `(fin, rst)`; on little-endian BPF the second counter is the high half.
/// A low counter would need 2^32 packets on one flow to carry into its neighbour.
#[inline(always)]
fn add_flags(counts: *mut FlagCounts, flags: u8) {
    let one = |set: bool, high: bool| (set as u64) << if high { 32 } else { 0 };
    let syn = flags & TCP_SYN != 0;
    let ack = flags & TCP_ACK != 0;
    let handshake = one(syn && !ack, false) | one(syn && ack, true);
    let teardown = one(flags & TCP_FIN != 0, false) | one(flags & TCP_RST != 0, true);
    let words = counts as *mut u64;
    unsafe {
        if handshake != 0 {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(words, handshake);
        }
        if teardown != 0 {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(words.add(1), teardown);
        }
    }
}

#[inline(always)]
fn sender_counts(value: *mut FlowValue, sender: usize) -> *mut FlagCounts {
    unsafe {
        if sender == SENDER_LO {
            &raw mut (*value).sent_by[0]
        } else {
            &raw mut (*value).sent_by[1]
        }
    }
}

/// Records a segment that carries SYN, FIN or RST in its flow's entry. Returns whether the entry
/// was created by this packet.
#[inline(always)]
fn record_flags(segment: &TcpSegment, ifindex: u32) -> bool {
    let (key, sender) = FlowKey::from_packet(
        segment.family,
        ifindex,
        segment.src,
        segment.src_port,
        segment.dst,
        segment.dst_port,
    );
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let syn_without_ack = segment.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let first_syn_from = if sender == SENDER_LO {
        FIRST_SYN_LO
    } else {
        FIRST_SYN_HI
    };

    if let Some(value) = FLOWS.get_ptr_mut(&key) {
        update_entry(
            value,
            sender,
            segment.flags,
            now,
            syn_without_ack,
            first_syn_from,
        );
        return false;
    }
    let mut value = FlowValue {
        first_seen_ns: now,
        last_seen_ns: now,
        first_syn_from: if syn_without_ack {
            first_syn_from
        } else {
            FIRST_SYN_NONE
        },
        ..FlowValue::default()
    };
    add_flags(sender_counts(&mut value, sender), segment.flags);
    if FLOWS.insert(&key, &value, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    // Another CPU created the entry between our lookup and insert: add to theirs.
    if let Some(value) = FLOWS.get_ptr_mut(&key) {
        update_entry(
            value,
            sender,
            segment.flags,
            now,
            syn_without_ack,
            first_syn_from,
        );
    }
    false
}

#[inline(always)]
fn update_entry(
    value: *mut FlowValue,
    sender: usize,
    flags: u8,
    now: u64,
    syn_without_ack: bool,
    first_syn_from: u8,
) {
    add_flags(sender_counts(value, sender), flags);
    unsafe {
        (*value).last_seen_ns = now;
        // Benign race: only a simultaneous open has two first SYNs, and either answer is right.
        if syn_without_ack && (*value).first_syn_from == FIRST_SYN_NONE {
            (*value).first_syn_from = first_syn_from;
        }
    }
}

/// Parses and accounts one packet. Never fails: whatever happens, the caller passes the packet.
#[inline(always)]
fn account(packet: Packet, ifindex: u32, hook: Hook) {
    let Some(counters) = COUNTERS.get_ptr_mut(hook as u32) else {
        return;
    };
    // Per-CPU counters: plain increments are safe.
    let counters = unsafe { &mut *counters };
    counters.packets += 1;
    match parse(packet) {
        Ok(segment) => {
            counters.tcp += 1;
            // Most packets carry none of these flags; they cost parsing only, no table lookup.
            if segment.flags & TCP_FLAGS_OF_INTEREST != 0 && record_flags(&segment, ifindex) {
                counters.flows_created += 1;
            }
        }
        Err(NoSegment::NotTcp) => counters.non_tcp += 1,
        Err(NoSegment::Malformed) => counters.parse_errors += 1,
    }
}

#[xdp]
pub fn flagtrace_ingress(ctx: XdpContext) -> u32 {
    let packet = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    account(packet, ifindex, Hook::Ingress);
    XDP_PASS
}

/// Returns TC_ACT_UNSPEC: "no verdict", so the packet continues to the next filter (TCX_NEXT on
/// TCX links) exactly as if flagtrace were not there.
#[classifier]
pub fn flagtrace_egress(ctx: TcContext) -> i32 {
    let packet = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    account(packet, ifindex, Hook::Egress);
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a loaded program: the verifier rejects any path that could panic.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
