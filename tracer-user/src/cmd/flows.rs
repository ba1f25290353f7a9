//! `flagtrace flows`: every flow of the attachments asked for, most recent first.

use std::path::Path;

use crate::{
    analysis::report::Scope,
    cli::FlowsArgs,
    cmd::sort_flows,
    output::Printer,
    source::live,
    sys::{
        netns::Netns,
        pins::PinRoot,
        privileges::{self, CAP_BPF},
    },
};

pub fn run(
    root: &PinRoot,
    netns: Option<&Netns>,
    oui_db: Option<&Path>,
    args: &FlowsArgs,
) -> anyhow::Result<()> {
    privileges::require("flows", &[CAP_BPF])?;
    let mut reports = live::reports(
        root,
        (netns, args.iface.as_deref()),
        oui_db,
        Scope::AllFlows,
    )?;
    sort_flows(&mut reports, args.sort);
    reports.truncate(args.limit.unwrap_or(usize::MAX));
    Printer::stdout(args.output.format()).flows(&reports)?;
    Ok(())
}
