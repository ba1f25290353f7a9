//! flagtrace's user space: loads and attaches the kernel programs, pins their maps, and reads them.
//! The `flagtrace` binary is a thin wrapper around [`run`].

pub mod analysis;
pub mod capture;
pub mod cli;
mod cmd;
pub mod error;
pub mod output;
pub mod source;
pub mod sys;

use cli::{Cli, Command};
use sys::{netns::Netns, pins::PinRoot};

pub use sys::objects::{CLOCK_PROBE_OBJECT, EBPF_OBJECT, REFERENCE_OBJECT};

/// Runs one command line. Expected failures come back as [`error::Failure`] somewhere in the chain.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let root = PinRoot::new(&cli.pin_root);
    let netns = Netns::from_name(cli.netns.as_deref());
    // flows, resets and stats read every namespace's pins unless one is named.
    let netns_filter = cli.netns.is_some().then_some(&netns);
    let oui_db = cli.oui_db.as_deref();
    match &cli.command {
        Command::Attach(args) => cmd::attach::run(&root, &netns, oui_db, args),
        Command::Detach(args) => cmd::detach::run(&root, &netns, args),
        Command::Flows(args) => cmd::flows::run(&root, netns_filter, oui_db, args),
        Command::Resets(args) => cmd::resets::run(&root, netns_filter, oui_db, args),
        Command::Stats(args) => cmd::stats::run(&root, netns_filter, args),
        Command::Watch(args) => cmd::watch::run(&root, netns_filter, oui_db, args),
        Command::Pcap(args) => cmd::pcap::run(oui_db, args),
    }
}
