//! Shared helpers for flagtrace's integration tests (tests/*.rs), which load the real kernel
//! programs (as root, with the `root-tests` feature) or run their accounting on the host:
//! - [`tracer`]: the eBPF object loaded for BPF_PROG_TEST_RUN, with its maps read back;
//! - [`host`]: the same accounting on `flagtrace pcap`'s host tables, read back alike;
//! - [`oracle`]: what a packet should do to the maps, computed with etherparse;
//! - [`model`]: the expected map contents, built from oracle verdicts and compared with either;
//! - [`differential`]: random and mutated frames through either, checked against the model;
//! - [`frame`]: a layer-by-layer frame builder for shapes etherparse's `PacketBuilder` cannot make;
//! - [`lab`]: network namespaces (a veth pair, a routed path through a gateway, a flat segment
//!   with a third box), background processes, and the `flagtrace` binary run in them;
//! - [`forge`]: the forged resets of the lab tool `ft-lab` (src/bin/ft-lab.rs), on raw sockets;
//! - [`seed_story`]: the lab that `ft-lab demo` (`cargo xtask demo`) and the reset tests share;
//! - [`tcpdump`]: a lab's traffic captured beside the live attachment, and read back with
//!   `flagtrace pcap`;
//! - [`verdicts`]: the assertions on flagtrace's verdicts that the middlebox labs share;
//! - [`bench`]: `cargo xtask bench`, the per-packet cost against reference programs;
//! - [`soak`]: `cargo xtask soak`, the user side's commands on large tables and captures.
//!
//! Everything that creates a kernel object (namespace, pin directory, loader process) is a RAII
//! guard that removes it in `Drop`, so a failing test leaves nothing behind.

pub mod bench;
pub mod differential;
pub mod forge;
pub mod frame;
pub mod host;
pub mod lab;
pub mod model;
pub mod oracle;
pub mod scrape;
pub mod seed_story;
pub mod soak;
pub mod tcpdump;
pub mod tracer;
pub mod verdicts;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

/// A name no other test (in this or a concurrent test process) uses: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A file of its own in the temporary directory, `<prefix>-<pid>-<n>.<extension>`, removed on
/// drop.
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn new(prefix: &str, extension: &str) -> Self {
        Self(std::env::temp_dir().join(format!("{}.{extension}", unique_name(prefix))))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("UTF-8 temporary path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the clock of the kernel programs' timestamps, to within
/// [`kernel_clock_slack_ns`].
pub fn kernel_clock_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// How far a kernel timestamp may be from [`kernel_clock_ns`] read at the same moment. The
/// programs compute their timestamps from jiffies with an offset measured at load
/// (`tracer_user::sys::clock::KernelClock`). Jiffies and the coarse clock step at the same ticks, but
/// not always in the same order: a reading can find one of them a tick ahead (about 1 % of
/// readings on the development machine). Two ticks bound that.
pub fn kernel_clock_slack_ns() -> u64 {
    let tick_ns = tracer_user::sys::clock::KernelClock::calibrated()
        .expect("calibrating the kernel clock")
        .tick_ns;
    2 * tick_ns
}

/// A clock's reading in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, which outlives the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut now) };
    assert_eq!(rc, 0, "clock_gettime({clock}) failed");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Lower-case hex of a packet, for failure messages that let someone replay it.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
