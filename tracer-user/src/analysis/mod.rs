//! From flow records to what flagtrace says about them: the flow's state, the verdict on its
//! RSTs, and the gateway that handed us its packets. Pure functions of the records, shared by
//! the live and offline paths.

#[cfg(test)]
pub mod fixtures;
pub mod flow;
pub mod hosts;
pub mod mac;
pub mod neighbours;
pub mod oui;
pub mod phase;
pub mod report;
pub mod rst_payload;
pub mod verdict;
