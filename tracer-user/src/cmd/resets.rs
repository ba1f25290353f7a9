//! `flagtrace resets`: the flows that carried a RST, with the verdict on each.

use std::path::Path;

use anyhow::Context as _;

use crate::{
    analysis::report::Scope,
    cli::{format_duration, ResetsArgs},
    cmd::print_resets,
    source::live,
    sys::{
        clock::ClockSnapshot,
        netns::Netns,
        pins::PinRoot,
        privileges::{self, CAP_BPF},
    },
};

pub fn run(
    root: &PinRoot,
    netns: Option<&Netns>,
    oui_db: Option<&Path>,
    args: &ResetsArgs,
) -> anyhow::Result<()> {
    privileges::require("resets", &[CAP_BPF])?;
    let mut reports = live::reports(root, (netns, None), oui_db, Scope::ResetFlows)?;
    let clock = ClockSnapshot::now().context("reading the clocks")?;
    let cutoff = args.since.map_or(0, |since| clock.unix_before(since));
    reports.retain(|report| report.flow.first_rst_ns().is_some_and(|at| at >= cutoff));
    let mut none = String::from("no resets");
    if let Some(since) = args.since {
        none += &format!(" in the last {}", format_duration(since));
    }
    print_resets(reports, args.output.format(), &none)
}
