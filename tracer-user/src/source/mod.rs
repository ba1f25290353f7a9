//! Where flows come from: an attachment's pinned maps (live) or a capture accounted by the kernel
//! programs' own code (offline), read into the same records for the analysis.

pub mod capture;
pub mod live;
pub mod neighbour;
pub mod offline;

use crate::{analysis::report::Origin, sys::maps::Counters};

/// A source's counters and flow-table fill: what `stats` reports.
pub struct Stats {
    pub origin: Origin,
    pub counters: Counters,
    /// Entries in the flow table now.
    pub flows: usize,
    /// Capacity of the flow table; `None` for a capture's, which has no limit.
    pub max_flows: Option<u32>,
}
