//! The map contents the kernel must have after a sequence of packets, built from oracle
//! verdicts, and its comparison with what the kernel actually has.

use std::collections::HashMap;

use tracer_common::{
    FlagCounts, FlowKey, FlowValue, GlobalCounters, Hook, FIRST_SYN_HI, FIRST_SYN_LO,
    FIRST_SYN_NONE, HOOK_COUNT, SENDER_LO, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

use crate::{boottime_ns, oracle::Verdict, tracer::LoadedTracer};

/// A CLOCK_BOOTTIME interval around one program run: a timestamp the run took lies inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

impl Window {
    /// Measures the window around `run`.
    pub fn around<T>(run: impl FnOnce() -> T) -> (T, Window) {
        let start = boottime_ns();
        let result = run();
        (
            result,
            Window {
                start,
                end: boottime_ns(),
            },
        )
    }

    fn contains(&self, ns: u64) -> bool {
        (self.start..=self.end).contains(&ns)
    }
}

/// What one flow-table entry must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedFlow {
    pub sent_by: [FlagCounts; 2],
    pub first_syn_from: u8,
    /// The run that created the entry: `first_seen_ns` is inside it.
    pub created: Window,
    /// The latest run that counted into the entry: `last_seen_ns` is inside it.
    pub updated: Window,
}

/// Expected flow table and global counters of one loaded tracer.
#[derive(Debug, Default)]
pub struct FlowModel {
    flows: HashMap<FlowKey, ExpectedFlow>,
    counters: [GlobalCounters; HOOK_COUNT as usize],
}

impl FlowModel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Accounts one packet the `hook` program ran on during `window`, as the contract says:
    /// every packet counts once in `packets` and once in its class; only segments with SYN, FIN
    /// or RST touch the flow table.
    pub fn apply(&mut self, hook: Hook, ifindex: u32, verdict: &Verdict, window: Window) {
        let counters = &mut self.counters[hook as usize];
        counters.packets += 1;
        let segment = match verdict {
            Verdict::ParseError => {
                counters.parse_errors += 1;
                return;
            }
            Verdict::NotTcp => {
                counters.non_tcp += 1;
                return;
            }
            Verdict::Tcp(segment) => segment,
        };
        counters.tcp += 1;
        if segment.flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 {
            return;
        }
        let (key, sender) = FlowKey::from_packet(
            segment.family,
            ifindex,
            segment.src,
            segment.src_port,
            segment.dst,
            segment.dst_port,
        );
        let flow = self.flows.entry(key).or_insert_with(|| {
            counters.flows_created += 1;
            ExpectedFlow {
                sent_by: [FlagCounts::default(); 2],
                first_syn_from: FIRST_SYN_NONE,
                created: window,
                updated: window,
            }
        });
        flow.updated = window;
        let counts = &mut flow.sent_by[sender];
        let flags = segment.flags;
        if flags & TCP_SYN != 0 {
            if flags & TCP_ACK != 0 {
                counts.syn_ack += 1;
            } else {
                counts.syn += 1;
                if flow.first_syn_from == FIRST_SYN_NONE {
                    flow.first_syn_from = if sender == SENDER_LO {
                        FIRST_SYN_LO
                    } else {
                        FIRST_SYN_HI
                    };
                }
            }
        }
        if flags & TCP_FIN != 0 {
            counts.fin += 1;
        }
        if flags & TCP_RST != 0 {
            counts.rst += 1;
        }
    }

    /// Forgets the flows, as [`LoadedTracer::clear_flows`] does in the kernel.
    pub fn clear_flows(&mut self) {
        self.flows.clear();
    }

    pub fn flows(&self) -> &HashMap<FlowKey, ExpectedFlow> {
        &self.flows
    }

    /// Every difference between this model and the tracer's maps, one line each; empty when
    /// they match exactly.
    pub fn mismatches(&self, tracer: &LoadedTracer) -> anyhow::Result<Vec<String>> {
        let mut found = Vec::new();
        for hook in [Hook::Ingress, Hook::Egress] {
            let got = tracer.counters(hook)?;
            let expected = self.counters[hook as usize];
            if got != expected {
                found.push(format!(
                    "{hook:?} counters: expected {expected:?}, got {got:?}"
                ));
            }
        }
        let kernel = tracer.flows()?;
        for (key, value) in &kernel {
            match self.flows.get(key) {
                None => found.push(format!("unexpected flow {key:?} = {value:?}")),
                Some(expected) => found.extend(flow_mismatch(key, expected, value)),
            }
        }
        for (key, expected) in &self.flows {
            if !kernel.contains_key(key) {
                found.push(format!("missing flow {key:?}, expected {expected:?}"));
            }
        }
        Ok(found)
    }
}

fn flow_mismatch(key: &FlowKey, expected: &ExpectedFlow, got: &FlowValue) -> Option<String> {
    let matches = got.sent_by == expected.sent_by
        && got.first_syn_from == expected.first_syn_from
        && got._pad == [0; 7]
        && expected.created.contains(got.first_seen_ns)
        && expected.updated.contains(got.last_seen_ns)
        && got.first_seen_ns <= got.last_seen_ns;
    (!matches).then(|| format!("flow {key:?}: expected {expected:?}, got {got:?}"))
}
