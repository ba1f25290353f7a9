//! What the flows of one source say about each host: how its normal packets look on each hook
//! (the usual TTL and MAC), all of them and those after the handshake apart, and how many
//! connections a server answered promptly. Built in one
//! pass over a snapshot's flows, and kept up to date one flow at a time by `watch`; every
//! question the verdict asks of it is answered in constant time, whatever the number of flows.
//! Answers leave out the flow being judged, which is no baseline for itself. A snapshot's index
//! holds counts only, no key per flow: a quarter million flows index in a few megabytes.

use std::{
    hash::Hash,
    net::{IpAddr, SocketAddr},
};

use foldhash::{HashMap, HashMapExt as _};
use tracer_common::Hook;

use crate::analysis::{
    flow::{Baseline, FlowRecord, PacketRole, SideEvidence},
    mac::MacAddr,
};

/// A SYN answered this long after it was sent (or sooner) was answered promptly.
pub const PROMPT_ANSWER_NS: u64 = 1_000_000_000;

/// One flow, as a key among the flows of a source.
type FlowId = (SocketAddr, SocketAddr);

fn flow_id(flow: &FlowRecord) -> FlowId {
    (flow.client, flow.server)
}

/// How a host's normal packets look on one hook, over the other flows that carried them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    /// The most common TTL (hop limit); a tie goes to the one seen most recently.
    pub ttl: u8,
    /// The most common known MAC, likewise; `None` when no flow had one.
    pub mac: Option<MacAddr>,
    /// How many flows it comes from.
    pub flows: usize,
}

/// How often each value was seen, and when last.
#[derive(Debug)]
struct Tally<T>(HashMap<T, (usize, u64)>);

impl<T> Default for Tally<T> {
    fn default() -> Self {
        Tally(HashMap::new())
    }
}

impl<T: Copy + Eq + Hash + Ord> Tally<T> {
    fn add(&mut self, value: T, seen_ns: u64) {
        let entry = self.0.entry(value).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(seen_ns);
    }

    /// Takes one sighting of `value` back. When it was the latest, the latest stays: only a
    /// tie between equally common values can tell, and the flow that left was seen then.
    fn remove(&mut self, value: T) {
        if let Some(entry) = self.0.get_mut(&value) {
            entry.0 -= 1;
            if entry.0 == 0 {
                self.0.remove(&value);
            }
        }
    }

    /// The most frequent value, leaving out one sighting of each of `except`; a tie goes to the
    /// value seen most recently, then to the larger value (so that no hash order decides).
    fn most_common(&self, except: &[T]) -> Option<T> {
        self.0
            .iter()
            .map(|(value, &(count, latest))| {
                let left_out = except.iter().filter(|e| *e == value).count();
                (count.saturating_sub(left_out), latest, *value)
            })
            .filter(|(count, _, _)| *count > 0)
            .max()
            .map(|(_, _, value)| value)
    }
}

/// A host's normal packets on one hook: how many flow sides carried them, and their tallies.
#[derive(Debug, Default)]
struct HostSamples {
    sides: usize,
    ttls: Tally<u8>,
    macs: Tally<MacAddr>,
}

impl HostSamples {
    fn add(&mut self, baseline: &Baseline, seen_ns: u64) {
        self.sides += 1;
        self.ttls.add(baseline.ttl, seen_ns);
        if let Some(mac) = baseline.mac {
            self.macs.add(mac, seen_ns);
        }
    }

    fn remove(&mut self, baseline: &Baseline) {
        self.sides -= 1;
        self.ttls.remove(baseline.ttl);
        if let Some(mac) = baseline.mac {
            self.macs.remove(mac);
        }
    }

    /// The profile of every flow side but `own` (a judged flow's sides here: only a flow whose
    /// ends share an address has two).
    fn profile_without(&self, own: &[&Baseline]) -> Option<Profile> {
        let flows = self.sides.checked_sub(own.len()).filter(|n| *n > 0)?;
        let own_ttls: Vec<u8> = own.iter().map(|b| b.ttl).collect();
        let own_macs: Vec<MacAddr> = own.iter().filter_map(|b| b.mac).collect();
        Some(Profile {
            ttl: self.ttls.most_common(&own_ttls)?,
            mac: self.macs.most_common(&own_macs),
            flows,
        })
    }
}

/// Samples by host and hook.
type SamplesByHost = HashMap<(IpAddr, Hook), HostSamples>;

/// What one record of a flow adds to the index: its sides' latest packets, each a sample of its
/// host on the hook that saw it, and whether its server answered promptly.
#[derive(Clone, Copy, Debug)]
struct Contribution {
    samples: [Option<(IpAddr, Baseline)>; 2],
    seen_ns: u64,
    prompt_answer: Option<IpAddr>,
}

impl Contribution {
    fn of(flow: &FlowRecord) -> Contribution {
        let sample = |addr: SocketAddr, side: &SideEvidence| side.baseline.map(|b| (addr.ip(), b));
        Contribution {
            samples: [
                sample(flow.client, &flow.client_evidence),
                sample(flow.server, &flow.server_evidence),
            ],
            seen_ns: flow.last_seen_ns,
            prompt_answer: answered_promptly(flow).then(|| flow.server.ip()),
        }
    }

    fn samples(&self) -> impl Iterator<Item = (IpAddr, &Baseline)> {
        self.samples.iter().flatten().map(|(ip, b)| (*ip, b))
    }

    /// The samples of `host` on `hook`, and only those after the handshake if so asked.
    fn samples_of(&self, host: IpAddr, hook: Hook, after_handshake: bool) -> Vec<&Baseline> {
        self.samples()
            .filter(|(ip, b)| *ip == host && b.hook == hook)
            .filter(|(_, b)| !after_handshake || b.role == PacketRole::AfterHandshake)
            .map(|(_, b)| b)
            .collect()
    }
}

/// The index of one source's hosts, from a snapshot of its flows. Its answers leave the judged
/// flow out as the index holds it, which is the record judged: every caller indexes a flow
/// before judging it (a snapshot all its flows, [`LiveHostIndex`] each flow as it changes).
#[derive(Debug, Default)]
pub struct HostIndex {
    /// Every flow's baseline of each host.
    samples: SamplesByHost,
    /// Only the baselines from packets after the handshake (FINs): the host's own, where a SYN
    /// proxy or a full proxy may have answered the handshakes.
    after_handshake: SamplesByHost,
    /// How many connections each server answered within [`PROMPT_ANSWER_NS`].
    prompt_answers: HashMap<IpAddr, usize>,
}

impl HostIndex {
    /// The index of `flows`, in one pass: a snapshot's flows, each once.
    pub fn new<'a>(flows: impl IntoIterator<Item = &'a FlowRecord>) -> HostIndex {
        let mut index = HostIndex::default();
        for flow in flows {
            index.add(&Contribution::of(flow));
        }
        index
    }

    fn add(&mut self, flow: &Contribution) {
        for (ip, baseline) in flow.samples() {
            let key = (ip, baseline.hook);
            self.samples
                .entry(key)
                .or_default()
                .add(baseline, flow.seen_ns);
            if baseline.role == PacketRole::AfterHandshake {
                self.after_handshake
                    .entry(key)
                    .or_default()
                    .add(baseline, flow.seen_ns);
            }
        }
        if let Some(server) = flow.prompt_answer {
            *self.prompt_answers.entry(server).or_default() += 1;
        }
    }

    /// Takes back what [`HostIndex::add`] added.
    fn remove(&mut self, flow: &Contribution) {
        for (ip, baseline) in flow.samples() {
            let key = (ip, baseline.hook);
            if let Some(samples) = self.samples.get_mut(&key) {
                samples.remove(baseline);
            }
            if baseline.role == PacketRole::AfterHandshake {
                if let Some(samples) = self.after_handshake.get_mut(&key) {
                    samples.remove(baseline);
                }
            }
        }
        if let Some(server) = flow.prompt_answer {
            if let Some(count) = self.prompt_answers.get_mut(&server) {
                *count -= 1;
            }
        }
    }

    /// How `host`'s normal packets look on `hook` on flows other than `flow`.
    pub fn profile(&self, flow: &FlowRecord, host: IpAddr, hook: Hook) -> Option<Profile> {
        let own = Contribution::of(flow);
        self.samples
            .get(&(host, hook))?
            .profile_without(&own.samples_of(host, hook, false))
    }

    /// How `host`'s packets after the handshake (its FINs) look on `hook` on flows other than
    /// `flow`: the host's own, even where a proxy answered its handshakes.
    pub fn profile_after_handshake(
        &self,
        flow: &FlowRecord,
        host: IpAddr,
        hook: Hook,
    ) -> Option<Profile> {
        let own = Contribution::of(flow);
        self.after_handshake
            .get(&(host, hook))?
            .profile_without(&own.samples_of(host, hook, true))
    }

    /// How many connections other than `flow` its server answered within [`PROMPT_ANSWER_NS`].
    pub fn prompt_answers(&self, flow: &FlowRecord) -> usize {
        let answers = self
            .prompt_answers
            .get(&flow.server.ip())
            .copied()
            .unwrap_or(0);
        answers.saturating_sub(usize::from(answered_promptly(flow)))
    }
}

/// A [`HostIndex`] kept up to date one flow at a time (`watch`): it remembers what each flow
/// added, to take it back when a newer record of the flow comes.
#[derive(Debug, Default)]
pub struct LiveHostIndex {
    index: HostIndex,
    added: HashMap<FlowId, Contribution>,
}

impl LiveHostIndex {
    /// The index of a snapshot's `flows`, each once.
    pub fn new<'a>(flows: impl IntoIterator<Item = &'a FlowRecord>) -> LiveHostIndex {
        let mut live = LiveHostIndex::default();
        for flow in flows {
            live.insert(flow);
        }
        live
    }

    /// Adds a flow, or replaces what an earlier record of it said.
    pub fn insert(&mut self, flow: &FlowRecord) {
        let contribution = Contribution::of(flow);
        if let Some(earlier) = self.added.insert(flow_id(flow), contribution) {
            self.index.remove(&earlier);
        }
        self.index.add(&contribution);
    }

    pub fn index(&self) -> &HostIndex {
        &self.index
    }
}

fn answered_promptly(flow: &FlowRecord) -> bool {
    match (flow.syn_ns, flow.syn_ack_ns) {
        (Some(syn), Some(syn_ack)) => syn_ack >= syn && syn_ack - syn < PROMPT_ANSWER_NS,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::FlagCounts;

    use super::*;
    use crate::analysis::flow::{SideEvidence, State};

    const MAC_A: MacAddr = MacAddr([0, 1, 0xd7, 0, 0, 1]);
    const MAC_B: MacAddr = MacAddr([0, 1, 0xd7, 0, 0, 2]);

    fn baseline(ttl: u8, mac: Option<MacAddr>, ip_id: u16) -> Baseline {
        Baseline {
            hook: Hook::Ingress,
            mac,
            ttl,
            ip_id,
            role: PacketRole::AfterHandshake,
            seq_end: 0,
        }
    }

    /// A flow from 10.0.1.2:`port` to `server` whose server's packets arrived as `server_baseline`.
    fn flow(port: u16, server: &str, server_baseline: Baseline, last_seen_ns: u64) -> FlowRecord {
        FlowRecord {
            client: format!("10.0.1.2:{port}").parse().unwrap(),
            server: server.parse().unwrap(),
            client_to_server: FlagCounts::default(),
            server_to_client: FlagCounts::default(),
            state: State::Established,
            first_seen_ns: 1,
            last_seen_ns,
            syn_ns: Some(1),
            syn_ack_ns: None,
            client_evidence: SideEvidence::default(),
            server_evidence: SideEvidence {
                baseline: Some(server_baseline),
                rst: None,
            },
            tls_sni: None,
            flow_evicted: false,
        }
    }

    fn server_ip() -> IpAddr {
        "10.0.2.1".parse().unwrap()
    }

    #[test]
    fn profile_is_the_most_common_ttl_and_mac() {
        let flows = [
            flow(1, "10.0.2.1:80", baseline(127, Some(MAC_A), 10), 5),
            flow(2, "10.0.2.1:81", baseline(127, Some(MAC_B), 20), 9),
            flow(3, "10.0.2.1:82", baseline(64, Some(MAC_A), 30), 7),
            flow(4, "10.0.2.9:80", baseline(1, None, 40), 99),
        ];
        let judged = flow(9, "10.0.2.1:443", baseline(1, None, 0), 1);
        let index = HostIndex::new(flows.iter().chain([&judged]));
        assert_eq!(
            index.profile(&judged, server_ip(), Hook::Ingress),
            Some(Profile {
                ttl: 127,
                mac: Some(MAC_A),
                flows: 3
            })
        );
        assert_eq!(index.profile(&judged, server_ip(), Hook::Egress), None);
    }

    fn tally(values: &[(u8, u64)]) -> Tally<u8> {
        let mut tally = Tally::default();
        for (value, seen_ns) in values {
            tally.add(*value, *seen_ns);
        }
        tally
    }

    #[test]
    fn ties_go_to_the_most_recent_then_the_larger_value() {
        assert_eq!(
            tally(&[(1, 10), (2, 30), (1, 5), (2, 1)]).most_common(&[]),
            Some(2)
        );
        assert_eq!(tally(&[(1, 10), (2, 5)]).most_common(&[]), Some(1));
        assert_eq!(tally(&[(1, 10), (2, 10)]).most_common(&[]), Some(2));
        assert_eq!(tally(&[]).most_common(&[]), None);
        // Leaving one sighting out can turn the answer.
        assert_eq!(
            tally(&[(1, 10), (1, 11), (2, 5), (2, 6)]).most_common(&[]),
            Some(1)
        );
        assert_eq!(
            tally(&[(1, 10), (1, 11), (2, 5), (2, 6)]).most_common(&[1]),
            Some(2)
        );
        assert_eq!(tally(&[(1, 10)]).most_common(&[1]), None);
    }

    #[test]
    fn a_flow_inserted_again_replaces_its_samples() {
        let first = flow(1, "10.0.2.1:80", baseline(64, Some(MAC_A), 1), 5);
        let judged = flow(9, "10.0.2.1:443", baseline(1, None, 0), 1);
        let mut live = LiveHostIndex::new([&first, &judged]);
        // The same flow, its server's latest packet now with another TTL and MAC.
        let again = flow(1, "10.0.2.1:80", baseline(127, Some(MAC_B), 2), 9);
        live.insert(&again);
        let index = live.index();
        assert_eq!(
            index.profile(&judged, server_ip(), Hook::Ingress),
            Some(Profile {
                ttl: 127,
                mac: Some(MAC_B),
                flows: 1
            })
        );
        // Now seen leaving: nothing is left on ingress.
        let mut egress = again.clone();
        egress.server_evidence.baseline.as_mut().unwrap().hook = Hook::Egress;
        live.insert(&egress);
        let index = live.index();
        assert_eq!(index.profile(&judged, server_ip(), Hook::Ingress), None);
        assert_eq!(
            index
                .profile(&judged, server_ip(), Hook::Egress)
                .map(|p| p.flows),
            Some(1)
        );
    }

    #[test]
    fn a_flow_is_no_baseline_for_itself() {
        // Both ends one address: the client's own packets are in the host's samples.
        let mut own = flow(1, "10.0.2.1:80", baseline(64, None, 1), 5);
        own.client = "10.0.2.1:40000".parse().unwrap();
        own.client_evidence.baseline = Some(baseline(64, None, 1));
        own.server_evidence.baseline = None;
        let other = flow(2, "10.0.2.1:81", baseline(127, None, 2), 3);
        let index = HostIndex::new([&own, &other]);
        let profile = index.profile(&own, server_ip(), Hook::Ingress).unwrap();
        assert_eq!((profile.ttl, profile.flows), (127, 1));
        let alone = HostIndex::new([&own]);
        assert_eq!(alone.profile(&own, server_ip(), Hook::Ingress), None);
    }

    #[test]
    fn packets_after_the_handshake_have_a_profile_of_their_own() {
        let mut handshake_only = baseline(64, Some(MAC_A), 1);
        handshake_only.role = crate::analysis::flow::PacketRole::Handshake;
        let flows = [
            flow(1, "10.0.2.1:443", handshake_only, 5),
            flow(2, "10.0.2.1:443", handshake_only, 6),
            flow(3, "10.0.2.1:80", baseline(127, Some(MAC_A), 2), 7),
        ];
        let judged = flow(9, "10.0.2.1:443", baseline(1, None, 0), 1);
        let mut live = LiveHostIndex::new(flows.iter().chain([&judged]));
        let index = live.index();
        let ttl = |profile: Option<Profile>| profile.map(|p| (p.ttl, p.flows));
        assert_eq!(
            ttl(index.profile(&judged, server_ip(), Hook::Ingress)),
            Some((64, 3))
        );
        assert_eq!(
            ttl(index.profile_after_handshake(&judged, server_ip(), Hook::Ingress)),
            Some((127, 1))
        );
        // The flow's FIN leaves with a new record: the handshake-only sample goes away.
        let mut again = flows[0].clone();
        again.server_evidence.baseline = Some(baseline(127, Some(MAC_A), 3));
        live.insert(&again);
        assert_eq!(
            ttl(live
                .index()
                .profile_after_handshake(&judged, server_ip(), Hook::Ingress)),
            Some((127, 2))
        );
    }

    #[test]
    fn prompt_answers_leave_out_the_flow_itself() {
        let answered = |port, delay_ns: u64| {
            let mut flow = flow(port, "10.0.2.1:80", baseline(64, None, 0), 1);
            flow.syn_ack_ns = Some(1 + delay_ns);
            flow
        };
        let flows = [
            answered(1, 1_000),
            answered(2, PROMPT_ANSWER_NS - 1),
            answered(3, PROMPT_ANSWER_NS),
        ];
        let index = HostIndex::new(&flows);
        assert_eq!(index.prompt_answers(&flows[0]), 1);
        assert_eq!(index.prompt_answers(&flows[2]), 2);
        let unanswered = flow(4, "10.0.2.1:443", baseline(64, None, 0), 1);
        assert_eq!(index.prompt_answers(&unanswered), 2);
    }
}
