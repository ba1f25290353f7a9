//! Types shared by the kernel programs (`tracer-ebpf`) and user space (`tracer-user`).
//!
//! Every map key and value is `#[repr(C)]` with explicit, zeroed padding: the kernel hashes keys
//! byte for byte, so a stray padding byte would split one flow into many.
#![cfg_attr(not(test), no_std)]

/// Name of the flow table (LRU hash, [`FlowKey`] -> [`FlowValue`]).
pub const FLOWS_MAP: &str = "FLOWS";
/// Name of the per-CPU global counters (array of [`GlobalCounters`], indexed by [`Hook`]).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the reset evidence table: an array of [`ResetEntry`], set-associative on
/// [`reset_set`], with an entry for each flow that has carried a RST (while it has room).
pub const RESETS_MAP: &str = "RESETS";
/// Entries of the reset table a flow may occupy: a set of four adjacent entries. When all are
/// taken, a new reset flow takes the newest entry of an unanswered flow ([`RESET_OF_UNANSWERED`]),
/// else a connection's entry that has seen no RST for [`RESET_ENTRY_IDLE_NS`], else it finds no
/// room (counted in [`GlobalCounters::resets_unrecorded`]).
pub const RESET_WAYS: u32 = 4;
/// A connection's entry ([`RESET_OF_CONNECTION`]) gives way to a new reset flow only once it has
/// seen no RST for this long: a burst of resets cannot wipe the evidence of the ones before.
pub const RESET_ENTRY_IDLE_NS: u64 = 60_000_000_000;
/// [`ResetEntry::class`]: the flow's RST came before any sign of a connection: a refusal of a
/// SYN, an answer to a stray packet, a RST out of nowhere. A flood of SYNs or RSTs with made-up
/// sources makes these in bulk, so they protect nothing: each gives way to any newer reset flow.
/// (0, from a build before classes, counts as this.)
pub const RESET_OF_UNANSWERED: u8 = 1;
/// [`ResetEntry::class`]: the flow was a connection when its RST came: payload had passed, or
/// the RST came from the endpoint that had answered the SYN. Its entry is kept for
/// [`RESET_ENTRY_IDLE_NS`] after its latest RST.
pub const RESET_OF_CONNECTION: u8 = 2;
/// Name of the global (read-only data, set at load time) that holds [`reset_set_mask`] for the
/// reset table's capacity.
pub const RESET_SET_MASK_GLOBAL: &str = "RESET_SET_MASK";
/// Names of the globals (read-only data, set at load time) of the kernel clock: nanoseconds are
/// `jiffies × tick + offset`, CLOCK_MONOTONIC_COARSE (see [`ClockSample`]).
pub const CLOCK_TICK_NS_GLOBAL: &str = "CLOCK_TICK_NS";
pub const CLOCK_OFFSET_NS_GLOBAL: &str = "CLOCK_OFFSET_NS";
/// Section of the reset gate, a global array of u32 ([`RESET_GATE_SLOTS`] of them, indexed by
/// [`gate_slot`]): how many more plain packets of flows hashing there to examine after a RST.
/// Not pinned: it is private to each load. aya names a data section's map after the section.
pub const RESET_GATE_SECTION: &str = ".bss.reset_gate";
/// Capacity of the reset evidence table when the operator does not choose one (a power of two).
pub const DEFAULT_MAX_RESETS: u32 = 65_536;
/// Slots in the reset gate; a power of two.
pub const RESET_GATE_SLOTS: u32 = 4096;
/// How many packets of a flow (both directions) are examined after each of its RSTs. The
/// endpoint that an injector spoofed goes on sending at once, so a few dozen packets are enough
/// to catch it, and the gate closes by itself afterwards.
pub const RESET_GATE_BUDGET: u32 = 64;
/// Two RSTs from one sender count as back to back when they are this close in time.
pub const BACK_TO_BACK_NS: u64 = 2_000_000_000;
/// Name of the activity table: an array of [`Activity`], one slot per [`activity_slot`] of an
/// [`activity_tag`], written by every TCP packet other than a RST. Private to each load (not
/// pinned): it only has to remember the seconds before a RST.
pub const ACTIVITY_MAP: &str = "ACTIVITY";
/// Name of the global (read-only data, set at load time) that holds the activity table's
/// capacity, for [`activity_slot`].
pub const ACTIVITY_SLOTS_GLOBAL: &str = "ACTIVITY_SLOTS";
/// Name of the table of TLS server names (LRU hash, [`FlowKey`] -> [`TlsName`]): the
/// server_name of each connection whose client's first payload was a TLS ClientHello. It has as
/// many entries as the reset table.
pub const HELLOS_MAP: &str = "HELLOS";
/// The ClientHello readers the accounting tail-calls to read a client's first payload, by
/// [`Hook`]: (program, program array holding it alone). A program array holds programs of one
/// type, so XDP's and TC's have one each.
pub const HELLO_READERS: [(&str, &str); 2] = [
    ("flagtrace_hello_ingress", "HELLO_READER_INGRESS"),
    ("flagtrace_hello_egress", "HELLO_READER_EGRESS"),
];
/// Bytes of a server name the [`HELLOS_MAP`] keeps.
pub const TLS_NAME_MAX: usize = 64;
/// Bytes of a RST's payload the reset table keeps ([`RstPayload`]).
pub const RST_PAYLOAD_BYTES: usize = 48;
/// [`RstEvidence::reset_delay_ms`] and [`RstEvidence::idle_before_ms`] when not measured.
pub const MS_UNKNOWN: u32 = u32::MAX;
/// Name of the ring buffer that carries [`PacketEvent`]s to `flagtrace watch`.
pub const EVENTS_MAP: &str = "EVENTS";
/// Size of the [`EVENTS_MAP`] ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 1 << 20;
/// Pin name of the `flagtrace watch` switch: an array of one [`WatchConfig`]. In the object it is
/// the global [`WATCH_GLOBAL`], alone in section [`WATCH_SECTION`], so that the programs read it
/// with one load; aya names that section's map after the section.
pub const WATCH_MAP: &str = "WATCH";
pub const WATCH_GLOBAL: &str = "WATCH";
pub const WATCH_SECTION: &str = ".bss.watch";
/// Bytes of each watched packet copied into its event: Ethernet, IP and TCP headers with options.
pub const EVENT_SNAP_LEN: usize = 128;
/// The maps each attachment pins, as (name in the object, pin name): all of them, or its pins are
/// from another version.
pub const PINNED_MAPS: [(&str, &str); 6] = [
    (FLOWS_MAP, FLOWS_MAP),
    (RESETS_MAP, RESETS_MAP),
    (HELLOS_MAP, HELLOS_MAP),
    (COUNTERS_MAP, COUNTERS_MAP),
    (WATCH_SECTION, WATCH_MAP),
    (EVENTS_MAP, EVENTS_MAP),
];
/// Name of the clock probe (an XDP program in its own object, only ever test-run): it writes a
/// [`ClockSample`] at the start of its packet.
pub const CLOCK_PROBE_PROGRAM: &str = "flagtrace_clock_probe";
/// Name of the XDP program attached on ingress.
pub const XDP_PROGRAM: &str = "flagtrace_ingress";
/// Name of the TC (clsact egress) program.
pub const TC_PROGRAM: &str = "flagtrace_egress";
/// Flow-table capacity when the operator does not choose one.
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;

/// Address family of a flow key (the values are not AF_INET/AF_INET6 on purpose: they name the
/// IP version, which is what the packet carries).
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// [`FlowValue::first_syn_from`]: no SYN (without ACK) seen yet.
pub const FIRST_SYN_NONE: u8 = 0;
/// [`FlowValue::first_syn_from`]: the low endpoint sent the first SYN, so it is the client.
pub const FIRST_SYN_LO: u8 = 1;
/// [`FlowValue::first_syn_from`]: the high endpoint sent the first SYN, so it is the client.
pub const FIRST_SYN_HI: u8 = 2;

/// Index into [`FlowValue::sent_by`]: packets sent by the low endpoint of the key.
pub const SENDER_LO: usize = 0;
/// Index into [`FlowValue::sent_by`]: packets sent by the high endpoint of the key.
pub const SENDER_HI: usize = 1;

/// [`Baseline::seen_on`] / [`RstEvidence::seen_on`]: nothing recorded yet.
pub const SEEN_NONE: u8 = 0;
/// Recorded from a packet that arrived (XDP, ingress): the MAC is the packet's L2 source.
pub const SEEN_INGRESS: u8 = 1;
/// Recorded from a packet that left (TC, egress): the MAC is the packet's L2 destination.
pub const SEEN_EGRESS: u8 = 2;

/// Which hook saw a packet; index into the [`COUNTERS_MAP`] array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Ingress = 0,
    Egress = 1,
}

impl Hook {
    /// How a record of the maps names this hook (`seen_on`).
    #[inline(always)]
    pub const fn seen_on(self) -> u8 {
        match self {
            Hook::Ingress => SEEN_INGRESS,
            Hook::Egress => SEEN_EGRESS,
        }
    }

    /// The hook a record's `seen_on` names; `None` for [`SEEN_NONE`] (never recorded) or a
    /// value no build writes.
    pub const fn from_seen_on(seen_on: u8) -> Option<Hook> {
        match seen_on {
            SEEN_INGRESS => Some(Hook::Ingress),
            SEEN_EGRESS => Some(Hook::Egress),
            _ => None,
        }
    }

    /// `ingress` or `egress`, as flagtrace prints it.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// The activity table's capacity for a flow table of `max_flows`: one slot per flow, so that at a
/// full flow table a flow keeps its slot for as long as no other flow of the same slot speaks.
pub const fn activity_capacity(max_flows: u32) -> u32 {
    if max_flows == 0 {
        1
    } else {
        max_flows
    }
}

/// The tag of a flow's activity slot: its [`flow_hash`] mixed with the interface, because a
/// router sees one connection on two interfaces, each with its own direction per hook. Never 0,
/// which marks an empty slot.
#[inline(always)]
pub fn activity_tag(flow_hash: u32, ifindex: u32) -> u32 {
    (flow_hash ^ ifindex).wrapping_mul(0x9e37_79b1) | 1
}

/// The slot of `tag` in an activity table of `capacity` slots: multiply and shift (the tag's high
/// bits, scaled), which needs no power of two and no division.
#[inline(always)]
pub fn activity_slot(tag: u32, capacity: u32) -> u32 {
    ((tag as u64 * capacity as u64) >> 32) as u32
}

/// Number of entries in the [`COUNTERS_MAP`] array.
pub const HOOK_COUNT: u32 = 2;

/// TCP flag bits as they stand in byte 13 of the TCP header.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// One connection seen on one interface, the same for both directions.
///
/// The two endpoints are stored in canonical order (the "low" one first, see
/// [`FlowKey::from_packet`]), so that a packet and its reply map to one entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Address of the low endpoint, network byte order as it stands in the packet. IPv4 uses the
    /// first word and leaves the other three zero.
    pub addr_lo: [u32; 4],
    /// Address of the high endpoint, same encoding as `addr_lo`.
    pub addr_hi: [u32; 4],
    /// Port of the low endpoint, host byte order.
    pub port_lo: u16,
    /// Port of the high endpoint, host byte order.
    pub port_hi: u16,
    /// Interface the packet was seen on.
    pub ifindex: u32,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    // Padding as scalars, not `[u8; 3]`: the BPF backend zeroes a byte array with a call to a
    // byte-at-a-time memset loop, and every flag packet builds a key (BENCHMARKS.md).
    pub _pad0: u8,
    pub _pad1: u16,
}

impl FlowKey {
    /// Builds the canonical key for a packet from `src` to `dst`, and says which endpoint of the
    /// key sent it ([`SENDER_LO`] or [`SENDER_HI`]).
    ///
    /// The order is lexicographic over the address words as loaded (native integers of network
    /// byte order data), then the port. It is not numeric address order, and does not need to be:
    /// it only has to be the same for both directions of a flow, and both sides of the project use
    /// this one function.
    #[inline(always)]
    pub fn from_packet(
        family: u8,
        ifindex: u32,
        src: [u32; 4],
        src_port: u16,
        dst: [u32; 4],
        dst_port: u16,
    ) -> (FlowKey, usize) {
        let src_is_lo = endpoint_le(&src, src_port, &dst, dst_port);
        let (addr_lo, port_lo, addr_hi, port_hi, sender) = if src_is_lo {
            (src, src_port, dst, dst_port, SENDER_LO)
        } else {
            (dst, dst_port, src, src_port, SENDER_HI)
        };
        (
            FlowKey {
                addr_lo,
                addr_hi,
                port_lo,
                port_hi,
                ifindex,
                family,
                _pad0: 0,
                _pad1: 0,
            },
            sender,
        )
    }
}

impl FlowKey {
    /// The [`flow_hash`] of this key's flow: the packets' of either direction, as it is symmetric.
    pub fn flow_hash(&self) -> u32 {
        flow_hash(&self.addr_lo, self.port_lo, &self.addr_hi, self.port_hi)
    }
}

/// Hash of a packet's flow. Symmetric by construction (xor and sum do not care which endpoint is
/// which), so a packet needs no canonical key to find its flow's slots: a plain data packet pays
/// only for this hash and one array read. Multiplicative, so the high bits are the good ones.
#[inline(always)]
pub fn flow_hash(src: &[u32; 4], src_port: u16, dst: &[u32; 4], dst_port: u16) -> u32 {
    let addrs = src[0] ^ src[1] ^ src[2] ^ src[3] ^ dst[0] ^ dst[1] ^ dst[2] ^ dst[3];
    let (a, b) = (src_port as u32, dst_port as u32);
    let ports = (a ^ b) | (a + b) << 16;
    (addrs ^ ports).wrapping_mul(0x9e37_79b1)
}

/// Slot of a flow in the reset gate, from [`flow_hash`]. Collisions only cost an extra look at
/// the reset table.
#[inline(always)]
pub fn gate_slot(hash: u32) -> u32 {
    (hash >> 20) & (RESET_GATE_SLOTS - 1)
}

/// First of the [`RESET_WAYS`] adjacent entries of the reset table a flow may occupy, from
/// [`flow_hash`]; `set_mask` is the table's capacity minus [`RESET_WAYS`].
#[inline(always)]
pub fn reset_set(hash: u32, set_mask: u32) -> u32 {
    hash.rotate_right(16) & set_mask
}

/// The reset table's capacity for a requested one: a power of two, at least [`RESET_WAYS`], so
/// that [`reset_set`] can mask instead of divide.
pub fn reset_capacity(requested: u32) -> u32 {
    requested
        .max(RESET_WAYS)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

/// The mask [`reset_set`] takes for a table of `capacity` entries (a [`reset_capacity`]).
pub const fn reset_set_mask(capacity: u32) -> u32 {
    (capacity - 1) & !(RESET_WAYS - 1)
}

/// `(a, a_port) <= (b, b_port)` in the key's canonical order. Written out word by word because
/// core's slice comparison does not reliably inline into verifier-friendly code.
#[inline(always)]
fn endpoint_le(a: &[u32; 4], a_port: u16, b: &[u32; 4], b_port: u16) -> bool {
    if a[0] != b[0] {
        return a[0] < b[0];
    }
    if a[1] != b[1] {
        return a[1] < b[1];
    }
    if a[2] != b[2] {
        return a[2] < b[2];
    }
    if a[3] != b[3] {
        return a[3] < b[3];
    }
    a_port <= b_port
}

/// Flag counts for the packets one endpoint sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlagCounts {
    /// Packets with SYN and without ACK (connection attempts, retransmissions included).
    pub syn: u32,
    /// Packets with SYN and ACK.
    pub syn_ack: u32,
    /// Packets with FIN, whatever else they carry.
    pub fin: u32,
    /// Packets with RST, whatever else they carry.
    pub rst: u32,
}

/// What one sender's normal (non-RST) packets looked like: the baseline a RST from that sender
/// is compared with. Recorded from the SYN, SYN/ACK and FIN packets only: plain data packets
/// cost no flow-table lookup (the ones after a RST update [`RstEvidence`], not this).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    /// L2 neighbour of the latest such packet: its source MAC on ingress, its destination MAC on
    /// egress. Either way, the device next to us on this flow's path.
    pub mac: [u8; 6],
    /// IPv4 identification of the latest such packet (0 for IPv6).
    pub ip_id: u16,
    /// TTL (IPv4) or hop limit (IPv6) of the latest such packet.
    pub ttl: u8,
    /// [`SEEN_NONE`], [`SEEN_INGRESS`] or [`SEEN_EGRESS`]: the hook of the latest such packet.
    pub seen_on: u8,
    pub _pad: [u8; 2],
    /// Highest sequence end (seq + payload + SYN + FIN) among the examined packets.
    pub max_seq_end: u32,
}

/// What the kernel knows about one flow. Counters are updated with atomic adds (the table is
/// shared by all CPUs); the rest are plain stores, last writer wins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Counts by sender: [`SENDER_LO`] and [`SENDER_HI`].
    pub sent_by: [FlagCounts; 2],
    /// Normal packets by sender, the same indexes.
    pub baseline: [Baseline; 2],
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE, one-tick resolution) of the packet
    /// that created the entry. All times in the maps are on this clock.
    pub first_seen_ns: u64,
    /// Time of the latest counted packet.
    pub last_seen_ns: u64,
    /// Time of the first SYN without ACK; 0 when none was seen.
    pub syn_ns: u64,
    /// Time of the first SYN/ACK; 0 when none was seen.
    pub syn_ack_ns: u64,
    /// Which endpoint sent the first SYN without ACK: one of the `FIRST_SYN_*` constants.
    pub first_syn_from: u8,
    pub _pad: [u8; 3],
    /// [`flow_hash`] of the flow, stored when the entry is created, so that a RST finds its gate
    /// slot and reset set with one load instead of hashing the packet again.
    pub flow_hash: u32,
}

/// The evidence RSTs from one sender leave. All fields describe the first RST unless they say
/// otherwise; `first_rst_ns == 0` means this sender sent no RST.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RstEvidence {
    /// Time of the first RST.
    pub first_rst_ns: u64,
    /// Time of the latest RST.
    pub last_rst_ns: u64,
    /// L2 neighbour of the first RST (source MAC on ingress, destination MAC on egress).
    pub mac: [u8; 6],
    /// IPv4 identification of the first RST (0 for IPv6).
    pub ip_id: u16,
    /// TTL or hop limit of the first RST.
    pub ttl: u8,
    /// Hook of the first RST: [`SEEN_INGRESS`] or [`SEEN_EGRESS`].
    pub seen_on: u8,
    /// Later RSTs carrying the first RST's sequence number.
    pub same_seq_rsts: u16,
    /// Sequence number of the first RST.
    pub seq: u32,
    /// Acknowledgement number of the first RST (0 when it has no ACK flag).
    pub ack: u32,
    /// The sender's highest sequence end seen before its first RST ([`Baseline::max_seq_end`]).
    pub max_seq_before: u32,
    /// Sequence number of the latest RST.
    pub last_seq: u32,
    /// Largest distance between the sequence numbers of two back-to-back RSTs (within
    /// [`BACK_TO_BACK_NS`]), measured the short way round the sequence space.
    pub max_seq_jump: u32,
    /// Packets other than RSTs this sender sent after its first RST, among the
    /// [`RESET_GATE_BUDGET`] packets examined after each RST (both directions, and other flows
    /// sharing the gate slot, spend that budget).
    pub packets_after: u32,
    /// Payload bytes of those packets whose sequence number is at or beyond the first RST's:
    /// data a really reset endpoint could not have sent. A packet that starts before the RST's
    /// sequence counts no bytes, even when it runs past it: we prefer missing a forgery to a
    /// false alarm.
    pub bytes_beyond: u32,
    /// The furthest those packets acknowledged beyond the first RST's acknowledgement number, in
    /// bytes of sequence space (0 when none did, or the RST had no ACK): a really reset endpoint
    /// acknowledges nothing more.
    pub ack_beyond: u32,
    /// Milliseconds from the other side's latest segment with new sequence space (data, SYN or
    /// FIN; retransmissions do not count) to the first RST, at the clock's resolution;
    /// [`MS_UNKNOWN`] when the activity table had no history of the flow.
    pub reset_delay_ms: u32,
    /// Milliseconds of silence (either direction) before the latest packet that preceded the
    /// first RST; [`MS_UNKNOWN`] as above.
    pub idle_before_ms: u32,
    pub _pad: u32,
}

/// The first bytes of the first RST of a flow that carried a payload (RFC 9293 allows one; some
/// middleboxes say there why they reset).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RstPayload {
    /// The payload's full length (saturated); 0: no RST of the flow carried one.
    pub len: u16,
    /// Which endpoint of the key sent it: [`SENDER_LO`] or [`SENDER_HI`].
    pub sender: u8,
    pub _pad0: u8,
    pub _pad1: u32,
    /// Its first `min(len, RST_PAYLOAD_BYTES)` bytes.
    pub bytes: [u8; RST_PAYLOAD_BYTES],
}

impl Default for RstPayload {
    // By hand: `Default` stops at arrays of 32.
    fn default() -> Self {
        RstPayload {
            len: 0,
            sender: 0,
            _pad0: 0,
            _pad1: 0,
            bytes: [0; RST_PAYLOAD_BYTES],
        }
    }
}

/// The server_name of a TLS ClientHello (RFC 6066), as its first bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsName {
    /// The name's full length: more than [`TLS_NAME_MAX`] when it was cut.
    pub len: u16,
    pub _pad: [u16; 3],
    /// Its first `min(len, TLS_NAME_MAX)` bytes.
    pub name: [u8; TLS_NAME_MAX],
}

impl Default for TlsName {
    // By hand: `Default` stops at arrays of 32.
    fn default() -> Self {
        TlsName {
            len: 0,
            _pad: [0; 3],
            name: [0; TLS_NAME_MAX],
        }
    }
}

/// One slot of the activity table: what the latest packets of the flow tagged [`Activity::tag`]
/// looked like, in clock ticks (the low 32 bits of jiffies in the kernel, milliseconds on the
/// host; differences wrap correctly). Per hook rather than per endpoint: on one interface each
/// direction of a connection passes one hook, and the hook is a constant in each program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// The [`activity_tag`] of the flow that last wrote the slot; 0: empty.
    pub tag: u32,
    /// Tick of the latest packet other than a RST, either direction.
    pub last_tick: u32,
    /// Ticks of silence before that packet; [`MS_UNKNOWN`] when it was the first the slot saw.
    pub gap_ticks: u32,
    /// `ACTIVITY_*` bits, by hook.
    pub state: u32,
    /// By [`Hook`]: tick of the latest segment that carried new sequence space.
    pub new_tick: [u32; 2],
    /// By [`Hook`]: the highest sequence end seen.
    pub seq_end: [u32; 2],
}

/// [`Activity::state`]: `seq_end[hook]` holds a sequence end (shifted left by the hook).
pub const ACTIVITY_SEQ_KNOWN: u32 = 1;
/// [`Activity::state`]: the direction of the hook sent its SYN (shifted left by the hook).
pub const ACTIVITY_SYN_SEEN: u32 = 4;
/// [`Activity::state`]: the direction of the hook sent payload (shifted left by the hook).
pub const ACTIVITY_PAYLOAD_SEEN: u32 = 16;

/// An entry of the reset evidence table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetEvidence {
    /// By sender: [`SENDER_LO`] and [`SENDER_HI`].
    pub by_sender: [RstEvidence; 2],
    pub payload: RstPayload,
}

/// An entry of the reset table: the flow and the evidence of its RSTs. Empty while `key` is all
/// zero (no flow has a zero family).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetEntry {
    pub key: FlowKey,
    /// [`RESET_OF_UNANSWERED`] or [`RESET_OF_CONNECTION`], set when the flow took the entry.
    pub class: u8,
    pub _pad0: u8,
    pub _pad1: u16,
    pub evidence: ResetEvidence,
    /// The flow's entry of the flow table as it stood at each sender's first RST: the reset is
    /// listed and judged from it once the flow table has evicted the flow (a flood of new flows
    /// does that within seconds).
    pub flow: FlowValue,
}

impl ResetEntry {
    pub fn is_empty(&self) -> bool {
        self.key.family == 0
    }

    /// Time of the latest RST in this entry, by either sender: the older entry of a full set
    /// gives way to a new reset flow.
    #[inline(always)]
    pub fn last_rst_ns(&self) -> u64 {
        let [lo, hi] = &self.evidence.by_sender;
        if lo.last_rst_ns > hi.last_rst_ns {
            lo.last_rst_ns
        } else {
            hi.last_rst_ns
        }
    }
}

/// What `flagtrace watch` asks of the kernel. Events flow only while the watcher keeps renewing
/// its lease, so a killed watcher stops them by itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchConfig {
    /// Kernel clock time (as in [`FlowValue`]) until which events are sent; 0: not watched.
    pub lease_until_ns: u64,
    /// Events each CPU may send per second, on average.
    pub rate_per_sec: u32,
    /// Events each CPU may send at once after a quiet spell.
    pub burst: u32,
}

/// One reading of the two kernel clocks at once, by the clock probe. The kernel programs stamp
/// with `bpf_jiffies64`, which the verifier inlines into a load, instead of
/// `bpf_ktime_get_coarse_ns`, a helper call; user space learns from these readings how jiffies
/// map onto CLOCK_MONOTONIC_COARSE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSample {
    pub jiffies: u64,
    pub coarse_ns: u64,
}

/// A packet `flagtrace watch` asked for (SYN, SYN/ACK and RST), with its first bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketEvent {
    /// Kernel clock time of the packet.
    pub time_ns: u64,
    pub ifindex: u32,
    /// Length of the packet on the wire.
    pub packet_len: u32,
    /// Bytes of it in `data`: at most [`EVENT_SNAP_LEN`].
    pub captured_len: u32,
    /// [`SEEN_INGRESS`] or [`SEEN_EGRESS`].
    pub seen_on: u8,
    // Scalars, not an array: see [`FlowKey`]'s padding.
    pub _pad0: u8,
    pub _pad1: u16,
    pub data: [u8; EVENT_SNAP_LEN],
}

/// Where each CPU keeps the events it may still send (its token bucket).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    /// Credit in nanosecond-events: one event costs a second's worth (10^9).
    pub credit: u64,
    /// When the credit was last topped up.
    pub updated_ns: u64,
}

/// Classes of TCP packets by the flags flagtrace counts: [`flag_class`].
pub const FLAG_CLASSES: usize = 16;

/// The class of a TCP packet with `flags`, for [`GlobalCounters::tcp_by_flags`]: FIN, SYN and
/// RST keep their bits (1, 2, 4) and ACK takes bit 3, so one indexed increment counts the packet
/// and its flags at once.
#[inline(always)]
pub fn flag_class(flags: u8) -> usize {
    ((flags & (TCP_FIN | TCP_SYN | TCP_RST)) | (flags & TCP_ACK) >> 1) as usize & (FLAG_CLASSES - 1)
}

/// Global counters for one hook, one copy per CPU (no atomics needed); user space sums them.
/// Every packet lands in exactly one of the TCP classes, `non_tcp` and `parse_errors`, so the
/// packet count and the per-flag counts are sums ([`GlobalCounters::packets`],
/// [`GlobalCounters::syn`], ...) rather than more per-packet increments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalCounters {
    /// Packets whose TCP header was read, by [`flag_class`]. Monotonic, unlike the flow table's
    /// counts, which leave with an evicted flow.
    pub tcp_by_flags: [u64; FLAG_CLASSES],
    /// Well-formed packets that carry no TCP header to read: other protocols, other EtherTypes,
    /// and non-first IP fragments.
    pub non_tcp: u64,
    /// Packets truncated or malformed before the TCP flags could be read.
    pub parse_errors: u64,
    /// Flow-table entries this hook created.
    pub flows_created: u64,
    /// RSTs of flows that found their set of the reset table full: counted, without evidence.
    pub resets_unrecorded: u64,
    /// Packets sent to `flagtrace watch` through the event ring buffer.
    pub events: u64,
    /// Packets for `flagtrace watch` that were not sent: over the rate limit, or the ring
    /// buffer was full.
    pub events_dropped: u64,
}

impl GlobalCounters {
    /// Counts `packets` TCP packets with `flags`.
    #[inline(always)]
    pub fn count_tcp(&mut self, flags: u8, packets: u64) {
        self.tcp_by_flags[flag_class(flags)] += packets;
    }

    /// Every packet the program ran on.
    pub fn packets(&self) -> u64 {
        self.tcp() + self.non_tcp + self.parse_errors
    }

    /// TCP packets whose flags satisfy `wanted`.
    fn tcp_where(&self, wanted: impl Fn(u8) -> bool) -> u64 {
        (0..FLAG_CLASSES)
            .filter(|&class| {
                // The flags of a class: its bits, with ACK back in place.
                let class = class as u8;
                wanted((class & (TCP_FIN | TCP_SYN | TCP_RST)) | (class & 8) << 1)
            })
            .map(|class| self.tcp_by_flags[class])
            .sum()
    }

    /// Packets whose TCP header was read.
    pub fn tcp(&self) -> u64 {
        self.tcp_where(|_| true)
    }

    /// Packets with SYN and without ACK, as in [`FlagCounts::syn`].
    pub fn syn(&self) -> u64 {
        self.tcp_where(|flags| flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
    }

    /// Packets with SYN and ACK.
    pub fn syn_ack(&self) -> u64 {
        self.tcp_where(|flags| flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK)
    }

    /// Packets with FIN.
    pub fn fin(&self) -> u64 {
        self.tcp_where(|flags| flags & TCP_FIN != 0)
    }

    /// Packets with RST.
    pub fn rst(&self) -> u64 {
        self.tcp_where(|flags| flags & TCP_RST != 0)
    }
}

impl core::ops::Add for GlobalCounters {
    type Output = GlobalCounters;

    /// Field by field: sums CPUs, or hooks.
    fn add(self, other: GlobalCounters) -> GlobalCounters {
        GlobalCounters {
            tcp_by_flags: core::array::from_fn(|class| {
                self.tcp_by_flags[class] + other.tcp_by_flags[class]
            }),
            non_tcp: self.non_tcp + other.non_tcp,
            parse_errors: self.parse_errors + other.parse_errors,
            flows_created: self.flows_created + other.flows_created,
            resets_unrecorded: self.resets_unrecorded + other.resets_unrecorded,
            events: self.events + other.events,
            events_dropped: self.events_dropped + other.events_dropped,
        }
    }
}

impl core::iter::Sum for GlobalCounters {
    fn sum<I: Iterator<Item = GlobalCounters>>(counters: I) -> GlobalCounters {
        counters.fold(GlobalCounters::default(), core::ops::Add::add)
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made only of integers, with explicit padding fields, so
    // every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::GlobalCounters {}
    unsafe impl aya::Pod for super::ResetEvidence {}
    unsafe impl aya::Pod for super::ResetEntry {}
    unsafe impl aya::Pod for super::Activity {}
    unsafe impl aya::Pod for super::TlsName {}
    unsafe impl aya::Pod for super::WatchConfig {}
    unsafe impl aya::Pod for super::PacketEvent {}
}

// Layout is part of the pinned-map format: a change here must be a deliberate one, because pins
// from an older build would no longer match (user space checks key and value sizes on attach).
const _: () = assert!(core::mem::size_of::<FlowKey>() == 44);
const _: () = assert!(core::mem::size_of::<Baseline>() == 16);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 104);
const _: () = assert!(core::mem::size_of::<RstEvidence>() == 72);
const _: () = assert!(core::mem::size_of::<RstPayload>() == 8 + RST_PAYLOAD_BYTES);
const _: () = assert!(core::mem::size_of::<ResetEvidence>() == 200);
const _: () = assert!(core::mem::size_of::<ResetEntry>() == 352);
const _: () = assert!(core::mem::size_of::<Activity>() == 32);
const _: () = assert!(core::mem::size_of::<TlsName>() == 8 + TLS_NAME_MAX);
const _: () = assert!(core::mem::size_of::<GlobalCounters>() == 176);
const _: () = assert!(core::mem::size_of::<WatchConfig>() == 16);
const _: () = assert!(core::mem::size_of::<PacketEvent>() == 24 + EVENT_SNAP_LEN);
// The kernel adds to (syn, syn_ack) and (fin, rst) as 64-bit words, so each pair must be 8-aligned.
const _: () = assert!(core::mem::align_of::<FlowValue>() == 8);
const _: () = assert!(core::mem::offset_of!(FlowValue, sent_by).is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<FlagCounts>().is_multiple_of(8));
const _: () = assert!(
    core::mem::offset_of!(FlagCounts, syn) + 4 == core::mem::offset_of!(FlagCounts, syn_ack)
);
const _: () =
    assert!(core::mem::offset_of!(FlagCounts, fin) + 4 == core::mem::offset_of!(FlagCounts, rst));

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u32; 4] = [0x0100_000a, 0, 0, 0];
    const B: [u32; 4] = [0x0200_000a, 0, 0, 0];

    #[test]
    fn both_directions_give_one_key() {
        let (forward, fwd_sender) = FlowKey::from_packet(FAMILY_IPV4, 3, A, 40000, B, 443);
        let (reverse, rev_sender) = FlowKey::from_packet(FAMILY_IPV4, 3, B, 443, A, 40000);
        assert_eq!(forward, reverse);
        assert_ne!(fwd_sender, rev_sender);
    }

    #[test]
    fn a_key_hashes_like_its_packets_in_both_directions() {
        let (key, _) = FlowKey::from_packet(FAMILY_IPV4, 3, A, 40000, B, 443);
        assert_eq!(key.flow_hash(), flow_hash(&A, 40000, &B, 443));
        assert_eq!(key.flow_hash(), flow_hash(&B, 443, &A, 40000));
    }

    #[test]
    fn same_address_orders_by_port() {
        let (key, sender) = FlowKey::from_packet(FAMILY_IPV4, 1, A, 9000, A, 80);
        assert_eq!((key.port_lo, key.port_hi), (80, 9000));
        assert_eq!(sender, SENDER_HI);
        let (_, sender) = FlowKey::from_packet(FAMILY_IPV4, 1, A, 80, A, 9000);
        assert_eq!(sender, SENDER_LO);
    }

    #[test]
    fn later_words_decide_when_earlier_ones_tie() {
        let low = [1, 2, 3, 4];
        let high = [1, 2, 3, 5];
        let (key, sender) = FlowKey::from_packet(FAMILY_IPV6, 1, high, 1, low, 2);
        assert_eq!(key.addr_lo, low);
        assert_eq!(sender, SENDER_HI);
    }

    #[test]
    fn gate_slot_is_in_range_and_direction_free() {
        assert_eq!(flow_hash(&A, 40000, &B, 443), flow_hash(&B, 443, &A, 40000));
        let v6 = [1, 2, 3, 4];
        assert_eq!(flow_hash(&v6, 1, &A, 2), flow_hash(&A, 2, &v6, 1));
        let slots: std::collections::HashSet<u32> = (0..1000u16)
            .map(|port| gate_slot(flow_hash(&A, 40000 + port, &B, 443)))
            .collect();
        assert!(slots.iter().all(|slot| *slot < RESET_GATE_SLOTS));
        // Neighbouring client ports must spread over the gate, or one reset opens it for many.
        assert!(slots.len() > 700, "only {} distinct slots", slots.len());
    }

    #[test]
    fn reset_sets_cover_the_table_and_spread() {
        for requested in [1, 2, 3, 1000, 65_536] {
            let capacity = reset_capacity(requested);
            assert!(capacity.is_power_of_two() && capacity >= requested.max(RESET_WAYS));
            let mask = reset_set_mask(capacity);
            assert_eq!(mask + RESET_WAYS, capacity);
            assert_eq!(mask % RESET_WAYS, 0);
        }
        let mask = reset_set_mask(65_536);
        let sets: std::collections::HashSet<u32> = (0..1000u16)
            .map(|port| reset_set(flow_hash(&A, 40000 + port, &B, 443), mask))
            .collect();
        assert!(sets.iter().all(|&set| set % RESET_WAYS == 0 && set <= mask));
        assert!(sets.len() > 980, "only {} distinct sets", sets.len());
    }

    #[test]
    fn flag_classes_count_each_flag_once() {
        let mut counters = GlobalCounters::default();
        // SYN, SYN/ACK, ACK, FIN+ACK, RST, RST+ACK, and a packet with every flag (and PSH).
        for flags in [0x02, 0x12, 0x10, 0x11, 0x04, 0x14, 0x1f] {
            counters.count_tcp(flags, 1);
        }
        let classes: std::collections::HashSet<usize> = (0..=u8::MAX).map(flag_class).collect();
        assert_eq!(classes.len(), FLAG_CLASSES);
        assert_eq!(counters.tcp(), 7);
        assert_eq!(counters.syn(), 1);
        assert_eq!(counters.syn_ack(), 2);
        assert_eq!(counters.fin(), 2);
        assert_eq!(counters.rst(), 3);
        assert_eq!(counters.packets(), 7);
    }

    #[test]
    fn padding_is_zero() {
        let (key, _) = FlowKey::from_packet(FAMILY_IPV6, 7, A, 1, B, 2);
        assert_eq!((key._pad0, key._pad1), (0, 0));
    }
}
