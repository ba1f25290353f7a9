//! flagtrace's kernel side: an XDP program on ingress and a TC program on egress that count SYN,
//! SYN/ACK, FIN and RST per flow. Both only read the packet and always let it through. What they
//! record is in src/account.rs, shared with the host; this file is the maps and the hooks.
#![no_std]
#![no_main]

use core::ptr;

use aya_ebpf::{
    bindings::{xdp_action::XDP_PASS, BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::{
        bpf_ktime_get_coarse_ns,
        generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    },
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use tracer_common::{
    reset_set_mask, EventBudget, FlowKey, FlowValue, GlobalCounters, Hook, PacketEvent, ResetEntry,
    WatchConfig, DEFAULT_MAX_FLOWS, DEFAULT_MAX_RESETS, EVENTS_RING_BYTES, EVENT_SNAP_LEN,
    HOOK_COUNT, RESET_GATE_SLOTS, SEEN_EGRESS, SEEN_INGRESS,
};
use tracer_ebpf::{
    account::{account, Tables},
    Packet,
};

/// The flow table. One table shared by all CPUs with atomic adds, rather than a per-CPU table:
/// a per-CPU LRU hash multiplies its memory by the CPU count, and a busy appliance has many CPUs.
/// User space sets the real capacity at load time (`--max-flows`).
#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(DEFAULT_MAX_FLOWS, 0);

/// Evidence of the flows that carried a RST, set-associative on the flow hash: a RST finds its
/// entry with an array access instead of a second hash lookup. User space sets the capacity
/// (`--max-resets`, a power of two) and [`RESET_SET_MASK`] to match.
#[map(name = "RESETS")]
static RESETS: Array<ResetEntry> = Array::pinned(DEFAULT_MAX_RESETS, 0);

/// [`tracer_common::reset_set_mask`] of RESETS' capacity; read-only data, set at load time.
#[unsafe(no_mangle)]
static RESET_SET_MASK: u32 = reset_set_mask(DEFAULT_MAX_RESETS);

/// Plain packets still to examine after a RST, per [`tracer_common::gate_slot`]: a cheap array
/// read decides whether a plain data packet needs the reset table at all.
#[map(name = "RESET_GATE")]
static RESET_GATE: Array<u32> = Array::pinned(RESET_GATE_SLOTS, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<GlobalCounters> = PerCpuArray::pinned(HOOK_COUNT, 0);

/// Where a new flow entry is built. One per CPU, private to this load (not pinned).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<FlowValue> = PerCpuArray::with_max_entries(1, 0);

/// `flagtrace watch`'s switch: written by the watcher, read here.
#[map(name = "WATCH")]
static WATCH: Array<WatchConfig> = Array::pinned(1, 0);

/// Each CPU's event budget; private to this load, like SCRATCH.
#[map(name = "EVENT_BUDGET")]
static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

/// How a hook copies its packet's first bytes into an event.
trait PacketBytes {
    fn len(&self) -> u32;
    /// Copies the first `len` bytes (1 to [`EVENT_SNAP_LEN`]) to `dst`.
    fn copy_to(&self, dst: *mut u8, len: u32) -> bool;
}

impl PacketBytes for XdpContext {
    #[inline(always)]
    fn len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn copy_to(&self, dst: *mut u8, len: u32) -> bool {
        unsafe { bpf_xdp_load_bytes(self.ctx, 0, dst as *mut _, len) == 0 }
    }
}

impl PacketBytes for TcContext {
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn copy_to(&self, dst: *mut u8, len: u32) -> bool {
        // The helper directly: TcContext::load_bytes recomputes the length and loses the bounds
        // the verifier was shown.
        unsafe { bpf_skb_load_bytes(self.skb.skb as *const _, 0, dst as *mut _, len) == 0 }
    }
}

/// The pinned maps, seen from one hook's program.
struct Maps<'a, C> {
    ctx: &'a C,
    ifindex: u32,
}

impl<C: PacketBytes> Tables for Maps<'_, C> {
    #[inline(always)]
    fn counters(&self, hook: Hook) -> Option<*mut GlobalCounters> {
        COUNTERS.get_ptr_mut(hook as u32)
    }

    #[inline(always)]
    fn gate(&self, slot: u32) -> Option<*mut u32> {
        RESET_GATE.get_ptr_mut(slot)
    }

    #[inline(always)]
    fn flow(&self, key: &FlowKey) -> Option<*mut FlowValue> {
        FLOWS.get_ptr_mut(key)
    }

    #[inline(always)]
    fn insert_flow(&self, key: &FlowKey, value: &FlowValue) -> bool {
        FLOWS.insert(key, value, BPF_NOEXIST as u64).is_ok()
    }

    #[inline(always)]
    fn reset_entry(&self, index: u32) -> Option<*mut ResetEntry> {
        RESETS.get_ptr_mut(index)
    }

    #[inline(always)]
    fn reset_set_mask(&self) -> u32 {
        // Volatile: the value is set at load time, after compilation.
        unsafe { ptr::read_volatile(&RESET_SET_MASK) }
    }

    #[inline(always)]
    fn scratch(&self) -> Option<*mut FlowValue> {
        SCRATCH.get_ptr_mut(0)
    }

    #[inline(always)]
    fn now(&self) -> u64 {
        unsafe { bpf_ktime_get_coarse_ns() }
    }

    #[inline(always)]
    fn watch(&self) -> Option<*const WatchConfig> {
        WATCH.get_ptr(0)
    }

    #[inline(always)]
    fn event_budget(&self) -> Option<*mut EventBudget> {
        EVENT_BUDGET.get_ptr_mut(0)
    }

    #[inline(always)]
    fn send_event(&self, hook: Hook, now: u64) -> bool {
        let packet_len = self.ctx.len();
        // Checked after an optimisation barrier: LLVM would otherwise prove the lower bound from
        // an earlier test on other registers, and drop the check the verifier needs to see.
        let captured_len = core::hint::black_box(packet_len.min(EVENT_SNAP_LEN as u32));
        if captured_len == 0 || captured_len > EVENT_SNAP_LEN as u32 {
            return false;
        }
        let Some(mut entry) = EVENTS.reserve::<PacketEvent>(0) else {
            return false;
        };
        let event = entry.as_mut_ptr();
        unsafe {
            (*event).time_ns = now;
            (*event).ifindex = self.ifindex;
            (*event).packet_len = packet_len;
            (*event).captured_len = captured_len;
            (*event).seen_on = match hook {
                Hook::Ingress => SEEN_INGRESS,
                Hook::Egress => SEEN_EGRESS,
            };
            (*event)._pad0 = 0;
            (*event)._pad1 = 0;
        }
        let data = unsafe { &raw mut (*event).data as *mut u8 };
        if !self.ctx.copy_to(data, captured_len) {
            entry.discard(0);
            return false;
        }
        entry.submit(0);
        true
    }
}

#[xdp]
pub fn flagtrace_ingress(ctx: XdpContext) -> u32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let maps = Maps { ctx: &ctx, ifindex };
    account(&maps, packet, ifindex, Hook::Ingress);
    XDP_PASS
}

/// Returns TC_ACT_UNSPEC: "no verdict", so the packet continues to the next filter (TCX_NEXT on
/// TCX links) exactly as if flagtrace were not there.
#[classifier]
pub fn flagtrace_egress(ctx: TcContext) -> i32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let maps = Maps { ctx: &ctx, ifindex };
    account(&maps, packet, ifindex, Hook::Egress);
    TC_ACT_UNSPEC
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
