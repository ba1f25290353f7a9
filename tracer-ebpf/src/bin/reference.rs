//! Reference programs for `cargo xtask bench`: the floors flagtrace's per-packet cost is measured
//! against, built from the same parser. Never attached; only run through BPF_PROG_TEST_RUN.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{xdp_action::XDP_PASS, BPF_NOEXIST},
    macros::{map, xdp},
    maps::LruHashMap,
    programs::XdpContext,
};
use tracer_common::{FlowKey, FlowValue, DEFAULT_MAX_FLOWS};
use tracer_ebpf::{parse, OnSegment, Packet, TcpSegment};

/// Same key and value sizes as flagtrace's flow table; the bench sets the capacity.
#[map(name = "REFERENCE_FLOWS")]
static REFERENCE_FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Returns at once: the cost of running any XDP program at all.
#[xdp]
pub fn reference_empty(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Parses like flagtrace and touches no map.
#[xdp]
pub fn reference_parse(ctx: XdpContext) -> u32 {
    let _ = parse(Packet::new(ctx.data(), ctx.data_end()), |segment| {
        keep(&segment)
    });
    XDP_PASS
}

/// Parses, then one lookup-or-insert with an atomic add: the floor for per-flow counting.
#[xdp]
pub fn reference_lookup(ctx: XdpContext) -> u32 {
    let _ = parse(Packet::new(ctx.data(), ctx.data_end()), CountFlow);
    XDP_PASS
}

/// Built like flagtrace's accounting, so that each IP version gets its own copy.
struct CountFlow;

impl OnSegment<'_> for CountFlow {
    type Output = ();

    #[inline(always)]
    fn on_segment(self, segment: TcpSegment) {
        count_flow(&segment)
    }
}

#[inline(always)]
fn count_flow(segment: &TcpSegment) {
    let (key, _) = segment.flow_key(0);
    match REFERENCE_FLOWS.get_ptr_mut(&key) {
        Some(value) => unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                &raw mut (*value).sent_by[0] as *mut u64,
                1,
            );
        },
        None => {
            let _ = REFERENCE_FLOWS.insert(&key, &FlowValue::default(), BPF_NOEXIST as u64);
        }
    }
}

/// Makes the parse observable, so the compiler cannot drop it: a volatile write of what was
/// parsed to a stack slot.
#[inline(always)]
fn keep(segment: &TcpSegment) {
    let mut sink = 0u32;
    let folded = segment.src()[0]
        ^ segment.dst()[0]
        ^ segment.seq()
        ^ segment.ack()
        ^ segment.payload_len()
        ^ ((segment.src_port() as u32) << 16 | segment.dst_port() as u32)
        ^ ((segment.flags() as u32) << 8 | segment.ttl() as u32)
        ^ segment.ip_id() as u32;
    unsafe { core::ptr::write_volatile(&mut sink, folded) };
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
