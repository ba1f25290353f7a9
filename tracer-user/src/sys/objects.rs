//! The eBPF objects tracer-ebpf builds, embedded by build.rs, aligned for aya's ELF parser.

/// The kernel programs (XDP on ingress, TC on egress) and their maps.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// The clock probe (tracer-ebpf/src/bin/clock.rs), run before the kernel programs load to learn
/// how jiffies map onto CLOCK_MONOTONIC_COARSE (see [`super::clock`]).
pub static CLOCK_PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-clock"));

/// The benchmark's reference programs (empty, parse, lookup), built from the same parser. Only
/// `cargo xtask bench` loads them; the `flagtrace` binary does not refer to them, so the linker
/// leaves them out of it.
pub static REFERENCE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-reference"));
