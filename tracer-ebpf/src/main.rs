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
    helpers::bpf_ktime_get_coarse_ns,
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use tracer_common::{
    Baseline, FlagCounts, FlowKey, FlowValue, GlobalCounters, Hook, ResetEvidence, RstEvidence,
    BACK_TO_BACK_NS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_RESETS, FIRST_SYN_HI, FIRST_SYN_LO,
    FIRST_SYN_NONE, HOOK_COUNT, RESET_GATE_BUDGET, RESET_GATE_SLOTS, SEEN_EGRESS, SEEN_INGRESS,
    SEEN_NONE, SENDER_LO, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};
use tracer_ebpf::{parse, NoSegment, Packet, TcpSegment};

/// The flow table. One table shared by all CPUs with atomic adds, rather than a per-CPU table:
/// a per-CPU LRU hash multiplies its memory by the CPU count, and a busy appliance has many CPUs.
/// User space sets the real capacity at load time (`--max-flows`).
#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(DEFAULT_MAX_FLOWS, 0);

/// Evidence of the flows that carried a RST; kept apart so that the flow table stays small.
#[map(name = "RESETS")]
static RESETS: LruHashMap<FlowKey, ResetEvidence> = LruHashMap::pinned(DEFAULT_MAX_RESETS, 0);

/// Packets still to examine after a RST, per [`gate_slot`]: a cheap array read decides
/// whether a plain data packet needs the RESETS lookup at all.
#[map(name = "RESET_GATE")]
static RESET_GATE: Array<u32> = Array::pinned(RESET_GATE_SLOTS, 0);

/// Where a new table entry is built before it is inserted: the entries are too large for the
/// 512-byte BPF stack next to everything else. One per CPU, private to this load (not pinned).
#[repr(C)]
struct Scratch {
    flow: FlowValue,
    reset: ResetEvidence,
}

#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<GlobalCounters> = PerCpuArray::pinned(HOOK_COUNT, 0);

const TCP_FLAGS_OF_INTEREST: u8 = TCP_SYN | TCP_FIN | TCP_RST;

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

/// Element `sender` of a two-element array behind `base`, written as a branch: an indexed access
/// would carry a bounds check (and a panic path) that the verifier refuses.
#[inline(always)]
fn by_sender<T>(pair: *mut [T; 2], sender: usize) -> *mut T {
    unsafe {
        if sender == SENDER_LO {
            &raw mut (*pair)[0]
        } else {
            &raw mut (*pair)[1]
        }
    }
}

/// One packet, with where and when it was seen.
struct Observation<'a> {
    segment: TcpSegment<'a>,
    key: FlowKey,
    sender: usize,
    hook: Hook,
    now: u64,
}

impl Observation<'_> {
    /// The L2 neighbour on this flow's path: the source of what arrives, the destination of what
    /// leaves.
    #[inline(always)]
    fn neighbour_mac(&self) -> &[u8; 6] {
        match self.hook {
            Hook::Ingress => &self.segment.eth.src,
            Hook::Egress => &self.segment.eth.dst,
        }
    }

    #[inline(always)]
    fn seen_on(&self) -> u8 {
        match self.hook {
            Hook::Ingress => SEEN_INGRESS,
            Hook::Egress => SEEN_EGRESS,
        }
    }

    /// Sequence number just past this segment (SYN and FIN take one each).
    #[inline(always)]
    fn seq_end(&self) -> u32 {
        let flags = self.segment.flags;
        let control = (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
        self.segment
            .seq
            .wrapping_add(self.segment.payload_len)
            .wrapping_add(control)
    }

    #[inline(always)]
    fn is_rst(&self) -> bool {
        self.segment.flags & TCP_RST != 0
    }
}

/// Zeroes a map value in place with 8-byte stores. `write_bytes` would compile to a call to
/// compiler_builtins' memset, a byte-at-a-time loop (this toolchain's BPF backend does not inline
/// memset): 104 iterations cost a new flow about 35 ns (see BENCHMARKS.md).
#[inline(always)]
unsafe fn zero<T>(value: *mut T) {
    const {
        assert!(mem::size_of::<T>() % 8 == 0 && mem::align_of::<T>() >= 8);
    }
    let words = value as *mut u64;
    for i in 0..mem::size_of::<T>() / 8 {
        // Volatile, so that LLVM cannot fold the stores back into a memset.
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// Copies a MAC address out of the packet. A plain `[u8; 6]` assignment from packet memory
/// compiles to a call to memmove's byte loop; a non-overlapping copy is inlined.
#[inline(always)]
fn copy_mac(dst: &mut [u8; 6], src: &[u8; 6]) {
    unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), 6) }
}

/// `a` is at or after `b` in sequence space.
#[inline(always)]
fn seq_at_or_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// Records a segment that carries SYN, FIN or RST in its flow's entry, and a RST's evidence.
/// Returns whether the flow entry was created by this packet.
#[inline(always)]
fn record_flags(obs: &Observation) -> bool {
    let (created, max_seq_before) = match FLOWS.get_ptr_mut(&obs.key) {
        Some(value) => (false, update_flow(value, obs)),
        None => insert_flow(obs),
    };
    if obs.is_rst() {
        record_reset(obs, max_seq_before);
    }
    created
}

/// Creates the flow's entry from this packet. Returns whether it did (false when another CPU
/// created it first: the packet then updates theirs), and what [`update_flow`] returns.
#[inline(always)]
fn insert_flow(obs: &Observation) -> (bool, u32) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return (false, 0);
    };
    let value = unsafe { &raw mut (*scratch).flow };
    unsafe {
        zero(value);
        (*value).first_seen_ns = obs.now;
    }
    let max_seq_end = update_flow(value, obs);
    if FLOWS
        .insert(&obs.key, unsafe { &*value }, BPF_NOEXIST as u64)
        .is_ok()
    {
        return (true, max_seq_end);
    }
    match FLOWS.get_ptr_mut(&obs.key) {
        Some(theirs) => (false, update_flow(theirs, obs)),
        None => (false, max_seq_end),
    }
}

/// Adds one packet to a flow entry: counts, times, and the sender's baseline unless it is a RST.
/// Returns the sender's highest sequence end before this packet's RST, if it is one.
#[inline(always)]
fn update_flow(value: *mut FlowValue, obs: &Observation) -> u32 {
    let flags = obs.segment.flags;
    add_flags(
        by_sender(unsafe { &raw mut (*value).sent_by }, obs.sender),
        flags,
    );
    let baseline = by_sender(unsafe { &raw mut (*value).baseline }, obs.sender);
    let value = unsafe { &mut *value };
    value.last_seen_ns = obs.now;
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        if value.syn_ns == 0 {
            value.syn_ns = obs.now;
        }
        // Benign race: only a simultaneous open has two first SYNs, and either answer is right.
        if value.first_syn_from == FIRST_SYN_NONE {
            value.first_syn_from = if obs.sender == SENDER_LO {
                FIRST_SYN_LO
            } else {
                FIRST_SYN_HI
            };
        }
    }
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK && value.syn_ack_ns == 0 {
        value.syn_ack_ns = obs.now;
    }
    let baseline = unsafe { &mut *baseline };
    if !obs.is_rst() {
        record_baseline(baseline, obs);
    }
    baseline.max_seq_end
}

#[inline(always)]
fn record_baseline(baseline: &mut Baseline, obs: &Observation) {
    let seq_end = obs.seq_end();
    if baseline.seen_on == SEEN_NONE || seq_at_or_after(seq_end, baseline.max_seq_end) {
        baseline.max_seq_end = seq_end;
    }
    copy_mac(&mut baseline.mac, obs.neighbour_mac());
    baseline.ip_id = obs.segment.ip_id;
    baseline.ttl = obs.segment.ttl;
    baseline.seen_on = obs.seen_on();
}

/// Keeps what a RST says about who sent it, and opens the gate so that the packets after it are
/// examined too.
#[inline(always)]
fn record_reset(obs: &Observation, max_seq_before: u32) {
    if let Some(evidence) = RESETS.get_ptr_mut(&obs.key) {
        update_reset(
            by_sender(unsafe { &raw mut (*evidence).by_sender }, obs.sender),
            obs,
            max_seq_before,
        );
    } else if let Some(scratch) = SCRATCH.get_ptr_mut(0) {
        let evidence = unsafe { &raw mut (*scratch).reset };
        unsafe { zero(evidence) };
        update_reset(
            by_sender(unsafe { &raw mut (*evidence).by_sender }, obs.sender),
            obs,
            max_seq_before,
        );
        // On a lost race the other CPU's RST is the first one; ours is a repeat, not worth a retry.
        let _ = RESETS.insert(&obs.key, unsafe { &*evidence }, BPF_NOEXIST as u64);
    }
    if let Some(budget) = RESET_GATE.get_ptr_mut(obs.segment.gate_slot()) {
        unsafe { *budget = RESET_GATE_BUDGET };
    }
}

#[inline(always)]
fn update_reset(rst: *mut RstEvidence, obs: &Observation, max_seq_before: u32) {
    let rst = unsafe { &mut *rst };
    let seq = obs.segment.seq;
    if rst.first_rst_ns == 0 {
        rst.first_rst_ns = obs.now;
        copy_mac(&mut rst.mac, obs.neighbour_mac());
        rst.ip_id = obs.segment.ip_id;
        rst.ttl = obs.segment.ttl;
        rst.seen_on = obs.seen_on();
        rst.seq = seq;
        rst.ack = if obs.segment.flags & TCP_ACK != 0 {
            obs.segment.ack
        } else {
            0
        };
        rst.max_seq_before = max_seq_before;
    } else {
        if seq == rst.seq {
            rst.same_seq_rsts = rst.same_seq_rsts.saturating_add(1);
        }
        if obs.now.wrapping_sub(rst.last_rst_ns) < BACK_TO_BACK_NS {
            let jump = seq
                .wrapping_sub(rst.last_seq)
                .min(rst.last_seq.wrapping_sub(seq));
            if jump > rst.max_seq_jump {
                rst.max_seq_jump = jump;
            }
        }
    }
    rst.last_rst_ns = obs.now;
    rst.last_seq = seq;
}

/// Spends one packet of the reset gate's budget at `slot`; false when the gate is closed, which
/// is the answer for nearly every packet.
#[inline(always)]
fn take_gate_budget(slot: u32) -> bool {
    let Some(budget) = RESET_GATE.get_ptr_mut(slot) else {
        return false;
    };
    let budget = unsafe { &mut *budget };
    if *budget == 0 {
        return false;
    }
    // Racy on purpose: a lost decrement only examines one packet more.
    *budget -= 1;
    true
}

/// For a packet other than a RST whose flow recently carried one: counts what the RST's sender
/// went on sending.
#[inline(always)]
fn note_after_reset(obs: &Observation) {
    let Some(evidence) = RESETS.get_ptr_mut(&obs.key) else {
        return;
    };
    let rst = by_sender(unsafe { &raw mut (*evidence).by_sender }, obs.sender);
    if unsafe { (*rst).first_rst_ns } == 0 {
        return;
    }
    let beyond =
        obs.segment.payload_len > 0 && seq_at_or_after(obs.segment.seq, unsafe { (*rst).seq });
    let bytes = if beyond {
        obs.segment.payload_len as u64
    } else {
        0
    };
    // packets_after and bytes_beyond are adjacent u32s on an 8-byte boundary: one 64-bit add.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*rst).packets_after as *mut u64,
            1 | bytes << 32,
        );
    }
}

/// Parses and accounts one packet. Never fails: whatever happens, the caller passes the packet.
#[inline(always)]
fn account(packet: Packet<'_>, ifindex: u32, hook: Hook) {
    let Some(counters) = COUNTERS.get_ptr_mut(hook as u32) else {
        return;
    };
    // Per-CPU counters: plain increments are safe.
    let counters = unsafe { &mut *counters };
    let segment = match parse(packet) {
        Ok(segment) => segment,
        Err(NoSegment::NotTcp) => {
            counters.non_tcp += 1;
            return;
        }
        Err(NoSegment::Malformed) => {
            counters.parse_errors += 1;
            return;
        }
    };
    counters.tcp += 1;
    let interesting = segment.flags & TCP_FLAGS_OF_INTEREST != 0;
    let after_reset = segment.flags & TCP_RST == 0 && take_gate_budget(segment.gate_slot());
    // Most packets carry none of these flags and find the gate closed: parsing and one array
    // read, no table lookup, no clock.
    if !interesting && !after_reset {
        return;
    }
    let (key, sender) = segment.flow_key(ifindex);
    // Built before the clock is read: the helper call clobbers the argument registers, and what
    // is already in the struct need not be spilled around the call and copied in after it.
    let mut obs = Observation {
        segment,
        key,
        sender,
        hook,
        now: 0,
    };
    obs.now = unsafe { bpf_ktime_get_coarse_ns() };
    if interesting && record_flags(&obs) {
        counters.flows_created += 1;
    }
    if after_reset {
        note_after_reset(&obs);
    }
}

#[xdp]
pub fn flagtrace_ingress(ctx: XdpContext) -> u32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    account(packet, ifindex, Hook::Ingress);
    XDP_PASS
}

/// Returns TC_ACT_UNSPEC: "no verdict", so the packet continues to the next filter (TCX_NEXT on
/// TCX links) exactly as if flagtrace were not there.
#[classifier]
pub fn flagtrace_egress(ctx: TcContext) -> i32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    account(packet, ifindex, Hook::Egress);
    TC_ACT_UNSPEC
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
