//! The clock probe: reads `bpf_jiffies64` and `bpf_ktime_get_coarse_ns` together and writes them
//! at the start of its packet, as a [`ClockSample`]. User space runs it with BPF_PROG_TEST_RUN to
//! learn how jiffies map onto CLOCK_MONOTONIC_COARSE (tracer-user/src/sys/clock.rs), which the real
//! programs need before they load; so it is an object of its own. Never attached.
#![no_std]
#![no_main]

use core::mem;

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_PASS},
    helpers::{bpf_ktime_get_coarse_ns, generated::bpf_jiffies64},
    macros::xdp,
    programs::XdpContext,
};
use tracer_common::ClockSample;
// The panic handler.
use tracer_ebpf as _;

#[xdp]
pub fn flagtrace_clock_probe(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + mem::size_of::<ClockSample>() > ctx.data_end() {
        return XDP_ABORTED;
    }
    let sample = ClockSample {
        jiffies: unsafe { bpf_jiffies64() },
        coarse_ns: unsafe { bpf_ktime_get_coarse_ns() },
    };
    unsafe { (start as *mut ClockSample).write_unaligned(sample) };
    XDP_PASS
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
