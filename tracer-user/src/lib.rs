//! flagtrace's user space: loads and attaches the kernel programs, pins their maps, and reads them.
//! The `flagtrace` binary is a thin wrapper around [`run`].

mod attach;
pub mod capture;
pub mod cli;
pub mod clock;
mod detach;
pub mod error;
pub mod flow;
pub mod mac;
mod maps;
mod metrics;
pub mod neighbour;
pub mod netns;
mod offline;
pub mod oui;
mod output;
mod pcap;
mod pins;
mod privileges;
mod query;
pub mod report;
mod signals;
pub mod verdict;
mod watch;

use cli::{Cli, Command};
use netns::Netns;
use pins::PinRoot;

/// The kernel programs (tracer-ebpf), built by build.rs and embedded aligned for aya's ELF parser.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// The clock probe (tracer-ebpf/src/bin/clock.rs), run before the kernel programs load to learn
/// how jiffies map onto CLOCK_MONOTONIC_COARSE (clock.rs).
pub static CLOCK_PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-clock"));

/// The benchmark's reference programs (empty, parse, lookup), built from the same parser. Only
/// `cargo xtask bench` loads them; the `flagtrace` binary does not refer to them, so the linker
/// leaves them out of it.
pub static REFERENCE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-reference"));

/// Runs one command line. Expected failures come back as [`error::Failure`] somewhere in the chain.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let root = PinRoot::new(&cli.pin_root);
    let netns = Netns::from_name(cli.netns.as_deref());
    // flows, resets and stats read every namespace's pins unless one is named.
    let netns_filter = cli.netns.is_some().then_some(&netns);
    let oui_db = cli.oui_db.as_deref();
    match &cli.command {
        Command::Attach(args) => attach::run(&root, &netns, oui_db, args),
        Command::Detach(args) => detach::run(&root, &netns, args),
        Command::Flows(args) => query::flows(&root, netns_filter, oui_db, args),
        Command::Resets(args) => query::resets(&root, netns_filter, oui_db, args),
        Command::Stats(args) => query::stats(&root, netns_filter, args),
        Command::Watch(args) => watch::run(&root, netns_filter, oui_db, args),
        Command::Pcap(args) => pcap::run(oui_db, args),
    }
}
