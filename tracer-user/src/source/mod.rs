//! Where flows come from: an attachment's pinned maps (live) or a capture accounted by the kernel
//! programs' own code (offline), read into the same records for the analysis.

pub mod live;
pub mod neighbour;
pub mod offline;
