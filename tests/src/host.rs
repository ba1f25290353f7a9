//! The kernel programs' accounting on the host: `flagtrace pcap`'s tables
//! (`tracer_user::source::offline::HostTables`, the same `tracer_ebpf::account` code on plain
//! memory) as a [`Tracer`], so that the model's checks run without root or a kernel. The clock
//! is the test's: every frame comes `gap_ns` after the one before, so timestamps are exact.

use std::{cell::Cell, collections::HashMap};

use tracer_common::{FlowKey, FlowValue, GlobalCounters, Hook, ResetEntry};
use tracer_user::{source::offline::HostTables, sys::maps::Counters};

use crate::model::{Tracer, Window};

/// The interface the host tracer accounts packets on.
const IFINDEX: u32 = 1;

/// When the host tracer's clock starts: 0 means "never" in the tables.
const START_NS: u64 = 1_000_000_000;

pub struct HostTracer {
    tables: HostTables,
    /// The time of the latest frame.
    now: Cell<u64>,
    /// What the counters of earlier tables held: the tables cannot forget flows, so
    /// [`Tracer::clear_flows`] gives way to fresh ones, and the counters carry over as the
    /// kernel's do.
    earlier: Counters,
}

impl Default for HostTracer {
    fn default() -> Self {
        HostTracer {
            tables: HostTables::new(),
            now: Cell::new(START_NS),
            earlier: Counters::default(),
        }
    }
}

impl Tracer for HostTracer {
    fn ifindex(&self) -> u32 {
        IFINDEX
    }

    fn account(&self, hook: Hook, frame: &[u8], gap_ns: u64) -> Result<Option<Window>, String> {
        let now = self.now.get() + gap_ns;
        self.now.set(now);
        self.tables.account(frame, IFINDEX, hook, now);
        Ok(Some(Window {
            start: now,
            end: now,
        }))
    }

    fn counters(&self, hook: Hook) -> anyhow::Result<GlobalCounters> {
        let (earlier, now) = (self.earlier, self.tables.counters());
        Ok(match hook {
            Hook::Ingress => earlier.ingress + now.ingress,
            Hook::Egress => earlier.egress + now.egress,
        })
    }

    fn flows(&self) -> anyhow::Result<HashMap<FlowKey, FlowValue>> {
        Ok(self.tables.flows())
    }

    fn resets(&self) -> anyhow::Result<HashMap<FlowKey, ResetEntry>> {
        Ok(self.tables.resets())
    }

    fn reset_gate(&self) -> anyhow::Result<Vec<u32>> {
        Ok(self.tables.reset_gate())
    }

    fn reset_capacity(&self) -> u32 {
        self.tables.reset_capacity()
    }

    fn activity_slots(&self) -> u32 {
        self.tables.activity_slots()
    }

    fn clear_flows(&mut self) -> anyhow::Result<()> {
        let counters = self.tables.counters();
        self.earlier = Counters {
            ingress: self.earlier.ingress + counters.ingress,
            egress: self.earlier.egress + counters.egress,
        };
        self.tables = HostTables::new();
        Ok(())
    }
}
