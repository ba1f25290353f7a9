//! The map contents the accounting must leave after a sequence of packets, built from oracle
//! verdicts, and its comparison with what a [`Tracer`] actually has: the flow table (counts,
//! first SYN sender, per-sender baselines, handshake times), the reset evidence table, the reset
//! gate and the global counters. The tracer is the kernel programs
//! ([`crate::tracer::LoadedTracer`], as root) or the same accounting on the host
//! ([`crate::host::HostTracer`]).

use std::collections::HashMap;

use tracer_common::{
    activity_slot, activity_tag, flow_hash, gate_slot, reset_set, reset_set_mask, FlowKey,
    FlowValue, GlobalCounters, Hook, ResetEntry, ResetEvidence, RstEvidence, RstPayload,
    BACK_TO_BACK_NS, FIRST_SYN_HI, FIRST_SYN_LO, FIRST_SYN_NONE, HOOK_COUNT, MS_UNKNOWN,
    RESET_GATE_BUDGET, RESET_GATE_SLOTS, RESET_OF_CONNECTION, RESET_OF_UNANSWERED, RESET_WAYS,
    RST_PAYLOAD_BYTES, SEEN_EGRESS, SEEN_INGRESS, SEEN_NONE, SENDER_LO, TCP_ACK, TCP_FIN, TCP_RST,
    TCP_SYN,
};

use crate::{
    kernel_clock_ns, kernel_clock_slack_ns,
    oracle::{Segment, Verdict},
};

/// The accounting under test, and what the model reads back from it: its tables and the clock
/// windows its timestamps lie in.
pub trait Tracer {
    /// The interface the accounting sees packets on.
    fn ifindex(&self) -> u32;

    /// Accounts `frame` as the `hook` program does, `gap_ns` after the previous frame (on a
    /// clock the test sets; the kernel's runs on its own). Returns the window of the tracer's
    /// clock that the frame's timestamps lie in, or `None` when the frame was refused before the
    /// program ran; an error says what was wrong with the run.
    fn account(&self, hook: Hook, frame: &[u8], gap_ns: u64) -> Result<Option<Window>, String>;

    /// The hook's global counters, summed over CPUs.
    fn counters(&self, hook: Hook) -> anyhow::Result<GlobalCounters>;

    /// Every entry of the flow table.
    fn flows(&self) -> anyhow::Result<HashMap<FlowKey, FlowValue>>;

    /// Every flow of the reset evidence table, with its entry.
    fn resets(&self) -> anyhow::Result<HashMap<FlowKey, ResetEntry>>;

    /// Every slot of the reset gate, in slot order.
    fn reset_gate(&self) -> anyhow::Result<Vec<u32>>;

    /// Capacity of the reset table, which decides the set a flow's evidence goes to.
    fn reset_capacity(&self) -> u32;

    /// Capacity of the activity table, which decides the slot a flow's activity goes to.
    fn activity_slots(&self) -> u32;

    /// Forgets every flow: empties the flow, reset evidence and activity tables and closes the
    /// reset gate (the global counters keep counting).
    fn clear_flows(&mut self) -> anyhow::Result<()>;
}

/// A kernel-clock interval around one program run, widened by [`kernel_clock_slack_ns`] on each
/// side: a timestamp the run took lies inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

impl Window {
    /// Measures the window around `run`.
    pub fn around<T>(run: impl FnOnce() -> T) -> (T, Window) {
        let start = kernel_clock_ns();
        let result = run();
        let end = kernel_clock_ns();
        let slack = kernel_clock_slack_ns();
        (
            result,
            Window {
                start: start.saturating_sub(slack),
                end: end + slack,
            },
        )
    }

    pub fn contains(&self, ns: u64) -> bool {
        (self.start..=self.end).contains(&ns)
    }

    /// The milliseconds a table may count from a stamp taken in `self` to one taken in `later`:
    /// every duration the windows allow, floored and ceiled (a tick count floors, and two
    /// floored stamps differ by up to one more).
    fn ms_until(&self, later: &Window) -> (u32, u32) {
        let ms = |ns: u64| u32::try_from(ns / 1_000_000).unwrap_or(u32::MAX);
        let shortest = later.start.saturating_sub(self.end);
        let longest = later.end.saturating_sub(self.start);
        (ms(shortest), ms(longest + 999_999))
    }
}

/// A timestamp that is 0 when its event never happened, and inside the event's window otherwise.
fn stamped(window: Option<Window>, ns: u64) -> bool {
    window.map_or(ns == 0, |window| window.contains(ns))
}

/// What one flow-table entry must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedFlow {
    /// Every field but the four timestamps, which are 0 here; the windows below bound them.
    pub value: FlowValue,
    /// The run that created the entry: `first_seen_ns` is inside it.
    pub created: Window,
    /// The latest run that counted into the entry: `last_seen_ns` is inside it.
    pub updated: Window,
    /// The run of the first SYN without ACK, which `syn_ns` lies in (0 without one).
    pub syn: Option<Window>,
    /// The run of the first SYN/ACK, which `syn_ack_ns` lies in (0 without one).
    pub syn_ack: Option<Window>,
}

/// What one sender's half of a reset evidence entry must hold once it sent a RST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedRst {
    /// Every field but the two timestamps and `max_seq_jump`, which are 0 here.
    pub evidence: RstEvidence,
    /// The run of the first RST: `first_rst_ns` is inside it.
    pub first: Window,
    /// The run of the latest RST: `last_rst_ns` is inside it.
    pub last: Window,
    /// The values `max_seq_jump` may have: exactly one, unless two RSTs ran so close to
    /// [`BACK_TO_BACK_NS`] apart that their windows cannot tell whether the kernel saw them back
    /// to back.
    pub max_seq_jump: Vec<u32>,
    /// The bounds of `reset_delay_ms`.
    pub reset_delay_ms: MsBounds,
    /// The bounds of `idle_before_ms`.
    pub idle_before_ms: MsBounds,
}

/// The milliseconds a duration may count, or `None` for [`MS_UNKNOWN`].
pub type MsBounds = Option<(u32, u32)>;

/// What one slot of the activity table holds, with windows for its ticks.
#[derive(Clone, Copy, Debug, Default)]
struct ExpectedActivity {
    tag: u32,
    /// The run of the latest packet other than a RST.
    last: Option<Window>,
    /// The run of the packet before it, while the slot was this flow's: the silence before
    /// the latest packet lies between the two.
    before_last: Option<Window>,
    /// By hook: the highest sequence end, and the run of the segment that set it.
    seq_end: [Option<(u32, Window)>; 2],
    /// By hook: a segment without SYN brought new payload.
    payload_seen: [bool; 2],
}

/// Expected maps and global counters of one tracer.
#[derive(Debug)]
pub struct FlowModel {
    flows: HashMap<FlowKey, ExpectedFlow>,
    resets: HashMap<FlowKey, [Option<ExpectedRst>; 2]>,
    /// Mask of the reset table's sets, from the tracer's capacity.
    reset_set_mask: u32,
    /// The flows holding each set of the reset table, by way.
    reset_sets: HashMap<u32, [Option<FlowKey>; RESET_WAYS as usize]>,
    /// Each reset flow's class ([`RESET_OF_UNANSWERED`] or [`RESET_OF_CONNECTION`]).
    reset_classes: HashMap<FlowKey, u8>,
    /// Each reset flow's copy of its flow entry, timestamps zero.
    reset_flows: HashMap<FlowKey, FlowValue>,
    /// Budget left in every slot of the reset gate.
    gate: Vec<u32>,
    /// The kept payload of each reset flow's first RST that carried one.
    payloads: HashMap<FlowKey, RstPayload>,
    /// The activity table, by slot.
    activity: HashMap<u32, ExpectedActivity>,
    activity_slots: u32,
    counters: [GlobalCounters; HOOK_COUNT as usize],
}

/// One TCP segment as a hook saw it.
struct Seen<'a> {
    segment: &'a Segment,
    hook: Hook,
    window: Window,
    key: FlowKey,
    sender: usize,
}

impl Seen<'_> {
    fn has(&self, flag: u8) -> bool {
        self.segment.flags & flag != 0
    }

    /// The L2 neighbour on the flow's path: who handed the packet to us on ingress, who it is
    /// handed to on egress.
    fn neighbour_mac(&self) -> [u8; 6] {
        match self.hook {
            Hook::Ingress => self.segment.eth_src,
            Hook::Egress => self.segment.eth_dst,
        }
    }

    fn seen_on(&self) -> u8 {
        match self.hook {
            Hook::Ingress => SEEN_INGRESS,
            Hook::Egress => SEEN_EGRESS,
        }
    }

    /// The sequence number after this segment: SYN and FIN occupy one each.
    fn seq_end(&self) -> u32 {
        let control = u32::from(self.has(TCP_SYN)) + u32::from(self.has(TCP_FIN));
        self.segment
            .seq
            .wrapping_add(self.segment.payload_len)
            .wrapping_add(control)
    }
}

/// `a` comes at or after `b` in TCP sequence space (RFC 1982 serial number arithmetic).
fn seq_at_or_after(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) < 1 << 31
}

/// `a` comes after `b` in TCP sequence space.
fn seq_after(a: u32, b: u32) -> bool {
    a != b && seq_at_or_after(a, b)
}

/// How far beyond a RST's acknowledgement a later ACK of its sender counts (the contract's
/// window: farther is taken for another connection's numbers).
const ACK_BEYOND_WINDOW: u32 = 1 << 24;

/// Distance between two sequence numbers, the short way round.
fn seq_distance(a: u32, b: u32) -> u32 {
    a.wrapping_sub(b).min(b.wrapping_sub(a))
}

impl FlowModel {
    /// The model of `tracer`'s tables, empty.
    pub fn new(tracer: &impl Tracer) -> Self {
        Self {
            flows: HashMap::new(),
            resets: HashMap::new(),
            reset_set_mask: reset_set_mask(tracer.reset_capacity()),
            reset_sets: HashMap::new(),
            reset_classes: HashMap::new(),
            reset_flows: HashMap::new(),
            gate: vec![0; RESET_GATE_SLOTS as usize],
            payloads: HashMap::new(),
            activity: HashMap::new(),
            activity_slots: tracer.activity_slots(),
            counters: Default::default(),
        }
    }

    /// Accounts one packet the `hook` program ran on during `window`, as the contract says:
    /// every packet counts once in `packets` and once in its class, and a flag packet in its
    /// flag counter; segments with SYN, FIN or RST update the flow table (a RST its reset
    /// evidence instead of the baseline, and opens the reset gate), and a SYN or FIN of a flow
    /// that had a RST counts in the reset evidence of its sender; any other segment spends the
    /// gate's budget when it is open, and then counts in the reset evidence of its sender only.
    pub fn apply(&mut self, hook: Hook, ifindex: u32, verdict: &Verdict, window: Window) {
        let counters = &mut self.counters[hook as usize];
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
        counters.count_tcp(segment.flags, 1);
        let rst = segment.flags & TCP_RST != 0;
        let hash = flow_hash(
            &segment.src,
            segment.src_port,
            &segment.dst,
            segment.dst_port,
        );
        let slot = gate_slot(hash) as usize;
        let (key, sender) = segment.flow_key(ifindex);
        let seen = Seen {
            segment,
            hook,
            window,
            key,
            sender,
        };
        let flagged = segment.flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0;
        if !rst {
            self.note_activity(&seen, hash);
        }
        if !flagged {
            // A plain segment is looked at only while the gate is open, and spends its budget.
            if self.gate[slot] > 0 {
                self.gate[slot] -= 1;
                self.note_after_reset(&seen);
            }
            return;
        }
        let reset_before = self
            .flows
            .get(&key)
            .is_some_and(|flow| flow.value.sent_by.iter().any(|counts| counts.rst > 0));
        self.record_flags(&seen, hash);
        if rst {
            self.gate[slot] = RESET_GATE_BUDGET;
        } else if reset_before {
            self.note_after_reset(&seen);
        }
    }

    fn record_flags(&mut self, seen: &Seen, hash: u32) {
        let counters = &mut self.counters[seen.hook as usize];
        let flow = self.flows.entry(seen.key).or_insert_with(|| {
            counters.flows_created += 1;
            ExpectedFlow {
                value: FlowValue {
                    flow_hash: hash,
                    ..FlowValue::default()
                },
                created: seen.window,
                updated: seen.window,
                syn: None,
                syn_ack: None,
            }
        });
        flow.updated = seen.window;
        let value = &mut flow.value;
        let counts = &mut value.sent_by[seen.sender];
        if seen.has(TCP_SYN) && seen.has(TCP_ACK) {
            counts.syn_ack += 1;
            flow.syn_ack.get_or_insert(seen.window);
        } else if seen.has(TCP_SYN) {
            counts.syn += 1;
            flow.syn.get_or_insert(seen.window);
            if value.first_syn_from == FIRST_SYN_NONE {
                value.first_syn_from = if seen.sender == SENDER_LO {
                    FIRST_SYN_LO
                } else {
                    FIRST_SYN_HI
                };
            }
        }
        counts.fin += u32::from(seen.has(TCP_FIN));
        counts.rst += u32::from(seen.has(TCP_RST));
        let baseline = &mut value.baseline[seen.sender];
        if seen.has(TCP_RST) {
            self.record_reset(seen, hash);
            return;
        }
        let seq_end = seen.seq_end();
        if baseline.seen_on == SEEN_NONE || seq_at_or_after(seq_end, baseline.max_seq_end) {
            baseline.max_seq_end = seq_end;
        }
        baseline.mac = seen.neighbour_mac();
        baseline.ip_id = seen.segment.ip_id;
        baseline.ttl = seen.segment.ttl;
        baseline.seen_on = seen.seen_on();
    }

    fn record_reset(&mut self, seen: &Seen, hash: u32) {
        let flow = self.flows[&seen.key].value;
        let max_seq_before = flow.baseline[seen.sender].max_seq_end;
        if !self.resets.contains_key(&seen.key) {
            let class = if self.was_connection(seen, hash, &flow) {
                RESET_OF_CONNECTION
            } else {
                RESET_OF_UNANSWERED
            };
            // The frames between two clears span far less than RESET_ENTRY_IDLE_NS, so only
            // an empty entry or an unanswered flow's gives way: the first empty one, else the
            // last unanswered one.
            let ways = self
                .reset_sets
                .entry(reset_set(hash, self.reset_set_mask))
                .or_default();
            let classes = &self.reset_classes;
            let victim = ways.iter().position(Option::is_none).or_else(|| {
                ways.iter()
                    .rposition(|key| key.is_some_and(|key| classes[&key] != RESET_OF_CONNECTION))
            });
            let Some(victim) = victim else {
                self.counters[seen.hook as usize].resets_unrecorded += 1;
                return;
            };
            if let Some(evicted) = ways[victim].replace(seen.key) {
                self.resets.remove(&evicted);
                self.payloads.remove(&evicted);
                self.reset_classes.remove(&evicted);
                self.reset_flows.remove(&evicted);
            }
            self.reset_classes.insert(seen.key, class);
            self.reset_flows.insert(seen.key, FlowValue::default());
        }
        if self
            .resets
            .get(&seen.key)
            .is_none_or(|rsts| rsts[seen.sender].is_none())
        {
            self.reset_flows.insert(seen.key, untimed(&flow));
        }
        let seq = seen.segment.seq;
        let timing = self.reset_timing(seen, hash);
        let first_payload = self.first_payload(seen);
        let rst = &mut self.resets.entry(seen.key).or_default()[seen.sender];
        let Some(rst) = rst else {
            if let Some(payload) = first_payload {
                self.payloads.insert(seen.key, payload);
            }
            let (reset_delay_ms, idle_before_ms) = timing;
            *rst = Some(ExpectedRst {
                evidence: RstEvidence {
                    mac: seen.neighbour_mac(),
                    ip_id: seen.segment.ip_id,
                    ttl: seen.segment.ttl,
                    seen_on: seen.seen_on(),
                    seq,
                    ack: if seen.has(TCP_ACK) {
                        seen.segment.ack
                    } else {
                        0
                    },
                    max_seq_before,
                    last_seq: seq,
                    ..RstEvidence::default()
                },
                first: seen.window,
                last: seen.window,
                max_seq_jump: vec![0],
                reset_delay_ms,
                idle_before_ms,
            });
            return;
        };
        let evidence = &mut rst.evidence;
        if seq == evidence.seq {
            evidence.same_seq_rsts = evidence.same_seq_rsts.saturating_add(1);
        }
        // The kernel compares its two timestamps; the windows bound them from both sides.
        let surely_back_to_back = seen.window.end - rst.last.start < BACK_TO_BACK_NS;
        let maybe_back_to_back = seen.window.start.saturating_sub(rst.last.end) < BACK_TO_BACK_NS;
        let jump = seq_distance(seq, evidence.last_seq);
        let mut choices = Vec::new();
        for &before in &rst.max_seq_jump {
            if !surely_back_to_back {
                choices.push(before);
            }
            if maybe_back_to_back {
                choices.push(before.max(jump));
            }
        }
        choices.sort_unstable();
        choices.dedup();
        rst.max_seq_jump = choices;
        evidence.last_seq = seq;
        rst.last = seen.window;
    }

    /// Whether a flow's RST finds it a connection: its activity slot saw payload, or the RST's
    /// sender answered the other's SYN.
    fn was_connection(&self, seen: &Seen, hash: u32, flow: &FlowValue) -> bool {
        let payload = self
            .activity_slot(seen, hash)
            .is_some_and(|slot| slot.payload_seen.contains(&true));
        let syn_from_other = if seen.sender == SENDER_LO {
            FIRST_SYN_HI
        } else {
            FIRST_SYN_LO
        };
        let answered = self.flows[&seen.key].syn_ack.is_some();
        payload || (answered && flow.first_syn_from == syn_from_other)
    }

    /// The flow's activity slot, while the flow holds it.
    fn activity_slot(&self, seen: &Seen, hash: u32) -> Option<&ExpectedActivity> {
        let tag = activity_tag(hash, seen.key.ifindex);
        self.activity
            .get(&activity_slot(tag, self.activity_slots))
            .filter(|slot| slot.tag == tag)
    }

    /// A segment other than a RST after its flow's RST (a plain one through the open gate, or a
    /// SYN or FIN of a flow that has had a RST): counts for its sender, if that sender sent a
    /// RST on this flow.
    fn note_after_reset(&mut self, seen: &Seen) {
        let Some(Some(rst)) = self
            .resets
            .get_mut(&seen.key)
            .map(|senders| &mut senders[seen.sender])
        else {
            return;
        };
        let evidence = &mut rst.evidence;
        evidence.packets_after = evidence.packets_after.wrapping_add(1);
        let payload = seen.segment.payload_len;
        if payload > 0 && seq_at_or_after(seen.segment.seq, evidence.seq) {
            evidence.bytes_beyond = evidence.bytes_beyond.wrapping_add(payload);
        }
        if seen.has(TCP_ACK) && !seen.has(TCP_SYN) && evidence.ack != 0 {
            let acked = seen.segment.ack.wrapping_sub(evidence.ack);
            if acked > evidence.ack_beyond && acked < ACK_BEYOND_WINDOW {
                evidence.ack_beyond = acked;
            }
        }
    }

    /// Any segment but a RST: its flow's activity slot (taken over from another flow, if it
    /// held it) learns when it came and whether it carried new sequence space.
    fn note_activity(&mut self, seen: &Seen, hash: u32) {
        let tag = activity_tag(hash, seen.key.ifindex);
        let slot = self
            .activity
            .entry(activity_slot(tag, self.activity_slots))
            .or_default();
        if slot.tag == tag {
            slot.before_last = slot.last;
        } else {
            *slot = ExpectedActivity {
                tag,
                ..ExpectedActivity::default()
            };
        }
        slot.last = Some(seen.window);
        let space =
            seen.segment.payload_len + u32::from(seen.has(TCP_SYN)) + u32::from(seen.has(TCP_FIN));
        if space == 0 {
            return;
        }
        let end = seen.segment.seq.wrapping_add(space);
        let seq_end = &mut slot.seq_end[seen.hook as usize];
        if seq_end.is_none_or(|(before, _)| seq_after(end, before)) {
            *seq_end = Some((end, seen.window));
            if !seen.has(TCP_SYN) && seen.segment.payload_len > 0 {
                slot.payload_seen[seen.hook as usize] = true;
            }
        }
    }

    /// The bounds of a first RST's delay since the other direction's latest new segment and
    /// of the silence before the packet that preceded it, when its flow still holds its slot.
    fn reset_timing(&self, seen: &Seen, hash: u32) -> (MsBounds, MsBounds) {
        let Some(slot) = self.activity_slot(seen, hash) else {
            return (None, None);
        };
        let other = match seen.hook {
            Hook::Ingress => Hook::Egress,
            Hook::Egress => Hook::Ingress,
        };
        let delay = slot.seq_end[other as usize].map(|(_, new)| new.ms_until(&seen.window));
        let idle = slot
            .before_last
            .zip(slot.last)
            .map(|(before, last)| before.ms_until(&last));
        (delay, idle)
    }

    /// The payload a RST leaves when it is the first of its flow to carry one that the packet
    /// holds.
    fn first_payload(&self, seen: &Seen) -> Option<RstPayload> {
        let len = seen.segment.payload_len;
        let kept = (len as usize).min(RST_PAYLOAD_BYTES);
        let first = self
            .payloads
            .get(&seen.key)
            .is_none_or(|payload| payload.len == 0);
        if len == 0 || !first || seen.segment.captured_payload < kept {
            return None;
        }
        let mut bytes = [0; RST_PAYLOAD_BYTES];
        bytes[..kept].copy_from_slice(&seen.segment.payload_head[..kept]);
        Some(RstPayload {
            len: u16::try_from(len).unwrap_or(u16::MAX),
            sender: u8::try_from(seen.sender).expect("0 or 1"),
            bytes,
            ..RstPayload::default()
        })
    }

    /// Forgets the flows, their reset evidence and the reset gate, as [`Tracer::clear_flows`]
    /// does.
    pub fn clear_flows(&mut self) {
        self.flows.clear();
        self.resets.clear();
        self.reset_sets.clear();
        self.reset_classes.clear();
        self.reset_flows.clear();
        self.gate.fill(0);
        self.payloads.clear();
        self.activity.clear();
    }

    pub fn flows(&self) -> &HashMap<FlowKey, ExpectedFlow> {
        &self.flows
    }

    pub fn resets(&self) -> &HashMap<FlowKey, [Option<ExpectedRst>; 2]> {
        &self.resets
    }

    /// Every difference between this model and the tracer's maps, one line each; empty when
    /// they match exactly.
    pub fn mismatches(&self, tracer: &impl Tracer) -> anyhow::Result<Vec<String>> {
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
        compare_tables(
            &self.flows,
            &tracer.flows()?,
            "flow",
            flow_mismatch,
            &mut found,
        );
        let resets = tracer.resets()?;
        compare_tables(
            &self.resets,
            &resets,
            "reset evidence",
            |expected, got| reset_mismatch(expected, &got.evidence),
            &mut found,
        );
        for (key, got) in &resets {
            let expected = self.payloads.get(key).copied().unwrap_or_default();
            if got.evidence.payload != expected {
                found.push(format!(
                    "RST payload {key:?}:\n  expected {expected:?}\n  got      {:?}",
                    got.evidence.payload
                ));
            }
            let class = self.reset_classes.get(key);
            if class != Some(&got.class) {
                found.push(format!(
                    "reset class {key:?}: expected {class:?}, got {}",
                    got.class
                ));
            }
            let flow = self.reset_flows.get(key);
            if flow != Some(&untimed(&got.flow)) {
                found.push(format!(
                    "reset entry's flow {key:?}:\n  expected {flow:?}\n  got      {:?}",
                    got.flow
                ));
            }
        }
        for (slot, (expected, got)) in self.gate.iter().zip(tracer.reset_gate()?).enumerate() {
            if *expected != got {
                found.push(format!(
                    "reset gate slot {slot}: expected {expected}, got {got}"
                ));
            }
        }
        Ok(found)
    }
}

/// Adds a line to `found` for each entry missing from, unexpected in, or different in `kernel`.
fn compare_tables<E: std::fmt::Debug, V: std::fmt::Debug>(
    expected: &HashMap<FlowKey, E>,
    kernel: &HashMap<FlowKey, V>,
    table: &str,
    mismatch: impl Fn(&E, &V) -> bool,
    found: &mut Vec<String>,
) {
    for (key, got) in kernel {
        match expected.get(key) {
            None => found.push(format!("unexpected {table} {key:?} = {got:?}")),
            Some(expected) if mismatch(expected, got) => found.push(format!(
                "{table} {key:?}:\n  expected {expected:?}\n  got      {got:?}"
            )),
            Some(_) => {}
        }
    }
    for (key, expected) in expected {
        if !kernel.contains_key(key) {
            found.push(format!("missing {table} {key:?}, expected {expected:?}"));
        }
    }
}

/// A flow entry with its four timestamps zero, which the model bounds by windows instead.
fn untimed(value: &FlowValue) -> FlowValue {
    FlowValue {
        first_seen_ns: 0,
        last_seen_ns: 0,
        syn_ns: 0,
        syn_ack_ns: 0,
        ..*value
    }
}

fn flow_mismatch(expected: &ExpectedFlow, got: &FlowValue) -> bool {
    let matches = untimed(got) == expected.value
        && expected.created.contains(got.first_seen_ns)
        && expected.updated.contains(got.last_seen_ns)
        && got.first_seen_ns <= got.last_seen_ns
        && stamped(expected.syn, got.syn_ns)
        && stamped(expected.syn_ack, got.syn_ack_ns);
    !matches
}

fn reset_mismatch(expected: &[Option<ExpectedRst>; 2], got: &ResetEvidence) -> bool {
    expected
        .iter()
        .zip(&got.by_sender)
        .any(|(expected, got)| match expected {
            None => *got != RstEvidence::default(),
            Some(expected) => {
                let untimed = RstEvidence {
                    first_rst_ns: 0,
                    last_rst_ns: 0,
                    max_seq_jump: 0,
                    reset_delay_ms: 0,
                    idle_before_ms: 0,
                    ..*got
                };
                let within = |bounds: MsBounds, ms: u32| match bounds {
                    None => ms == MS_UNKNOWN,
                    Some((shortest, longest)) => (shortest..=longest).contains(&ms),
                };
                let matches = untimed == expected.evidence
                    && within(expected.reset_delay_ms, got.reset_delay_ms)
                    && within(expected.idle_before_ms, got.idle_before_ms)
                    && expected.first.contains(got.first_rst_ns)
                    && expected.last.contains(got.last_rst_ns)
                    && got.first_rst_ns <= got.last_rst_ns
                    && expected.max_seq_jump.contains(&got.max_seq_jump);
                !matches
            }
        })
}
