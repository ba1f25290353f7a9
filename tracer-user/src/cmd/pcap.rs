//! `flagtrace pcap FILE`: the live reports from a capture file: its resets (or `--flows`,
//! `--stats`), read by [`crate::source::capture`] and printed as `resets`, `flows` and `stats`
//! print an attachment's.

use std::path::Path;

use crate::{
    analysis::{oui::Vendors, report::Scope},
    cli::{PcapArgs, SortKey},
    cmd::{print_resets, sort_flows},
    error::Failure,
    output::Printer,
    source::capture::Capture,
};

pub fn run(oui_db: Option<&Path>, args: &PcapArgs) -> anyhow::Result<()> {
    let mut capture = Capture::read(&args.file, args.local_mac, args.iface.as_deref())?;
    let damage = capture.damage.take();
    let format = args.output.format();
    if args.stats {
        Printer::stdout(format).stats(&capture.stats())?;
    } else {
        let scope = if args.flows {
            Scope::AllFlows
        } else {
            Scope::ResetFlows
        };
        let mut reports = capture.into_reports(&Vendors::new(oui_db), scope)?;
        if args.flows {
            sort_flows(&mut reports, SortKey::Last);
            Printer::stdout(format).flows(&reports)?;
        } else {
            print_resets(reports, format, "no resets in the capture")?;
        }
    }
    match damage {
        Some(damage) => Err(Failure::CaptureDamaged(damage.to_string()).into()),
        None => Ok(()),
    }
}
