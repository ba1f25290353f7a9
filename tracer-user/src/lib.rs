//! flagtrace's user space: loads and attaches the kernel programs, pins their maps, and reads them.
//! The `flagtrace` binary is a thin wrapper around [`run`].

mod attach;
pub mod cli;
pub mod clock;
mod detach;
pub mod error;
pub mod flow;
mod maps;
pub mod netns;
mod output;
mod pins;
mod privileges;
mod query;

use cli::{Cli, Command};
use netns::Netns;
use pins::PinRoot;

/// The kernel programs (tracer-ebpf), built by build.rs and embedded aligned for aya's ELF parser.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// Runs one command line. Expected failures come back as [`error::Failure`] somewhere in the chain.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let root = PinRoot::new(&cli.pin_root);
    let netns = Netns::from_name(cli.netns.as_deref());
    // flows and stats read every namespace's pins unless one is named.
    let netns_filter = cli.netns.is_some().then_some(&netns);
    match &cli.command {
        Command::Attach(args) => attach::run(&root, &netns, args),
        Command::Detach(args) => detach::run(&root, &netns, args),
        Command::Flows(args) => query::flows(&root, netns_filter, args),
        Command::Stats(args) => query::stats(&root, netns_filter, args),
    }
}
