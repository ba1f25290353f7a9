//! flagtrace's kernel side: an XDP program on ingress and a TC program on egress that count SYN,
//! SYN/ACK, FIN and RST per flow. Both only read the packet and always let it through. What they
//! record is in src/account.rs, shared with the host; this file is the maps and the hooks.
#![no_std]
#![no_main]

use core::ptr;

use aya_ebpf::{
    bindings::{xdp_action::XDP_PASS, BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::generated::{bpf_jiffies64, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use tracer_common::{
    activity_capacity, activity_slot, reset_set_mask, Activity, EventBudget, FlowKey, FlowValue,
    GlobalCounters, Hook, PacketEvent, ResetEntry, TlsName, WatchConfig, DEFAULT_MAX_FLOWS,
    DEFAULT_MAX_RESETS, EVENTS_RING_BYTES, EVENT_SNAP_LEN, HOOK_COUNT, MS_UNKNOWN,
    RESET_GATE_SLOTS,
};
use tracer_ebpf::{
    account::{account, read_client_hello, Tables},
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

/// The server name of each connection whose client's first payload was a TLS ClientHello: one
/// insert per such connection, none for any other packet. User space gives it the reset
/// table's capacity.
#[map(name = "HELLOS")]
static HELLOS: LruHashMap<FlowKey, TlsName> = LruHashMap::pinned(DEFAULT_MAX_RESETS, 0);

/// The program that reads a client's first payload for a ClientHello, one array per hook (an
/// array holds programs of one type): the accounting tail-calls it, so that the verifier walks
/// the TLS parser once per program instead of in every copy of the accounting. User space puts
/// the readers in at load time (`tracer_common::HELLO_READERS`).
#[map(name = "HELLO_READER_INGRESS")]
static HELLO_READER_INGRESS: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map(name = "HELLO_READER_EGRESS")]
static HELLO_READER_EGRESS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Where a ClientHello's server name is read into. One per CPU, private to this load.
#[map(name = "HELLO_SCRATCH")]
static HELLO_SCRATCH: PerCpuArray<TlsName> = PerCpuArray::with_max_entries(1, 0);

/// [`tracer_common::reset_set_mask`] of RESETS' capacity; read-only data, set at load time.
#[unsafe(no_mangle)]
static RESET_SET_MASK: u32 = reset_set_mask(DEFAULT_MAX_RESETS);

/// The kernel clock, `jiffies × CLOCK_TICK_NS + CLOCK_OFFSET_NS`: CLOCK_MONOTONIC_COARSE, from
/// `bpf_jiffies64`, which the verifier inlines into one load where `bpf_ktime_get_coarse_ns` is a
/// helper call. Read-only data, set at load time from `flagtrace`'s calibration (clock.rs).
#[unsafe(no_mangle)]
static CLOCK_TICK_NS: u64 = 0;
#[unsafe(no_mangle)]
static CLOCK_OFFSET_NS: u64 = 0;

/// Plain packets still to examine after a RST, per [`tracer_common::gate_slot`]: a cheap read
/// decides whether a plain data packet needs the reset table at all. A global rather than a map:
/// the program gets its address directly, so a slot costs one load, not an inlined map lookup.
/// Private to this load, like SCRATCH: after a restart the gate starts closed.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.reset_gate")]
static mut RESET_GATE: [u32; RESET_GATE_SLOTS as usize] = [0; RESET_GATE_SLOTS as usize];

/// What each flow's latest packets looked like, direct-mapped on
/// [`tracer_common::activity_tag`]: every TCP packet writes its slot, so that a RST can say how
/// long after what it came. An array, not a hash: a plain packet must not pay for a hash lookup.
/// User space sizes it with the flow table ([`tracer_common::activity_capacity`]) and sets
/// [`ACTIVITY_SLOTS`] to match. Private to this load, like SCRATCH.
#[map(name = "ACTIVITY")]
static ACTIVITY: Array<Activity> = Array::with_max_entries(activity_capacity(DEFAULT_MAX_FLOWS), 0);

/// The capacity of ACTIVITY; read-only data, set at load time.
#[unsafe(no_mangle)]
static ACTIVITY_SLOTS: u32 = activity_capacity(DEFAULT_MAX_FLOWS);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<GlobalCounters> = PerCpuArray::pinned(HOOK_COUNT, 0);

/// Where a new flow entry is built. One per CPU, private to this load (not pinned).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<FlowValue> = PerCpuArray::with_max_entries(1, 0);

/// `flagtrace watch`'s switch: written by the watcher, read here on every SYN and RST. A global
/// alone in its section, which aya makes a one-entry array map that user space pins as WATCH: the
/// program gets its address directly, one load where a map lookup costs a dozen instructions.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.watch")]
static mut WATCH: WatchConfig = WatchConfig {
    lease_until_ns: 0,
    rate_per_sec: 0,
    burst: 0,
};

/// Each CPU's event budget; private to this load, like SCRATCH.
#[map(name = "EVENT_BUDGET")]
static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

/// What the accounting needs of a hook's context besides the packet.
trait HookContext {
    fn ifindex(&self) -> u32;
    fn len(&self) -> u32;
    /// Copies `len` bytes at `offset` to `dst`; the caller bounds `len` for the verifier.
    fn copy_to(&self, offset: u32, dst: *mut u8, len: u32) -> bool;
}

impl HookContext for XdpContext {
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn copy_to(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        unsafe { bpf_xdp_load_bytes(self.ctx, offset, dst as *mut _, len) == 0 }
    }
}

impl HookContext for TcContext {
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn copy_to(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // The helper directly: TcContext::load_bytes recomputes the length and loses the bounds
        // the verifier was shown.
        unsafe { bpf_skb_load_bytes(self.skb.skb as *const _, offset, dst as *mut _, len) == 0 }
    }
}

/// The pinned maps, seen from one hook's program.
struct Maps<'a, C> {
    ctx: &'a C,
}

impl<C: HookContext + EbpfContext> Tables for Maps<'_, C> {
    #[inline(always)]
    fn warn_unrecorded(&self, hook: Hook, count: u64) {
        warn!(
            self.ctx,
            "reset table full: {} RSTs on {} of this CPU kept no evidence (more --max-resets?)",
            count,
            hook.name()
        );
    }

    #[inline(always)]
    fn counters(&self, hook: Hook) -> Option<*mut GlobalCounters> {
        COUNTERS.get_ptr_mut(hook as u32)
    }

    #[inline(always)]
    fn gate(&self, slot: u32) -> Option<*mut u32> {
        let slot = (slot & (RESET_GATE_SLOTS - 1)) as usize;
        Some(unsafe { (&raw mut RESET_GATE as *mut u32).add(slot) })
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
        // Volatile: the values are set at load time, after compilation.
        let (tick_ns, offset_ns) = unsafe {
            (
                ptr::read_volatile(&CLOCK_TICK_NS),
                ptr::read_volatile(&CLOCK_OFFSET_NS),
            )
        };
        let jiffies = unsafe { bpf_jiffies64() };
        // Wrapping: the offset is "negative" (jiffies start just below 2^32, see clock.rs).
        jiffies.wrapping_mul(tick_ns).wrapping_add(offset_ns)
    }

    #[inline(always)]
    fn activity(&self, tag: u32) -> Option<*mut Activity> {
        // Volatile: the value is set at load time, after compilation.
        let slots = unsafe { ptr::read_volatile(&ACTIVITY_SLOTS) };
        ACTIVITY.get_ptr_mut(activity_slot(tag, slots))
    }

    #[inline(always)]
    fn ticks(&self) -> u32 {
        unsafe { bpf_jiffies64() as u32 }
    }

    #[inline(always)]
    fn ticks_to_ms(&self, ticks: u32) -> u32 {
        let tick_ns = unsafe { ptr::read_volatile(&CLOCK_TICK_NS) };
        (ticks as u64 * tick_ns / 1_000_000).min(MS_UNKNOWN as u64 - 1) as u32
    }

    #[inline(always)]
    unsafe fn copy_packet(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        self.ctx.copy_to(offset, dst, len)
    }

    #[inline(always)]
    fn read_client_hello_next(&self, hook: Hook) {
        let readers = match hook {
            Hook::Ingress => &HELLO_READER_INGRESS,
            Hook::Egress => &HELLO_READER_EGRESS,
        };
        // On success this does not return; on failure (no reader loaded) the name is not kept.
        unsafe { readers.tail_call(self.ctx, 0) };
    }

    #[inline(always)]
    fn hello_scratch(&self) -> Option<*mut TlsName> {
        HELLO_SCRATCH.get_ptr_mut(0)
    }

    #[inline(always)]
    fn insert_hello(&self, key: &FlowKey, name: &TlsName) {
        // Best effort: a full LRU table evicts, and a failed insert only loses the name.
        let _ = HELLOS.insert(key, name, 0);
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ctx.ifindex()
    }

    #[inline(always)]
    fn watch(&self) -> Option<*const WatchConfig> {
        Some(&raw const WATCH)
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
            (*event).ifindex = self.ctx.ifindex();
            (*event).packet_len = packet_len;
            (*event).captured_len = captured_len;
            (*event).seen_on = hook.seen_on();
            (*event)._pad0 = 0;
            (*event)._pad1 = 0;
        }
        let data = unsafe { &raw mut (*event).data as *mut u8 };
        if !self.ctx.copy_to(0, data, captured_len) {
            entry.discard(0);
            return false;
        }
        entry.submit(0);
        true
    }
}

#[xdp]
// Inlined into the entry point the macro makes: a bpf-to-bpf call would cost a frame, and
// tests/tools/xlated_paths.py follows no calls.
#[inline(always)]
pub fn flagtrace_ingress(ctx: XdpContext) -> u32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    account(&Maps { ctx: &ctx }, packet, Hook::Ingress);
    XDP_PASS
}

/// Returns TC_ACT_UNSPEC: "no verdict", so the packet continues to the next filter (TCX_NEXT on
/// TCX links) exactly as if flagtrace were not there.
#[classifier]
#[inline(always)]
pub fn flagtrace_egress(ctx: TcContext) -> i32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    account(&Maps { ctx: &ctx }, packet, Hook::Egress);
    TC_ACT_UNSPEC
}

/// [`HELLO_READER_INGRESS`]' reader.
#[xdp]
pub fn flagtrace_hello_ingress(ctx: XdpContext) -> u32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    read_client_hello(&Maps { ctx: &ctx }, packet);
    XDP_PASS
}

/// [`HELLO_READER_EGRESS`]' reader.
#[classifier]
pub fn flagtrace_hello_egress(ctx: TcContext) -> i32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    read_client_hello(&Maps { ctx: &ctx }, packet);
    TC_ACT_UNSPEC
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
