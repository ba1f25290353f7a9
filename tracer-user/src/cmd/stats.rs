//! `flagtrace stats`: each attachment's counters and flow-table fill.

use crate::{
    analysis::report::Origin,
    cli::StatsArgs,
    output::Printer,
    source::{live, Stats},
    sys::{
        netns::Netns,
        pins::PinRoot,
        privileges::{self, CAP_BPF},
    },
};

pub fn run(root: &PinRoot, netns: Option<&Netns>, args: &StatsArgs) -> anyhow::Result<()> {
    privileges::require("stats", &[CAP_BPF])?;
    let stats = live::open_attachments(root, netns, None)?
        .into_iter()
        .map(|(attachment, maps)| {
            Ok(Stats {
                counters: maps.counters()?,
                flows: maps.flow_count()?,
                max_flows: Some(maps.capacity()),
                origin: Origin::Live(attachment),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Printer::stdout(args.output.format()).stats(&stats)?;
    Ok(())
}
