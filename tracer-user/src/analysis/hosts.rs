//! What the flows of one source say about each host: how its normal packets look on each hook
//! (the usual TTL and MAC), all of them and those after the handshake apart, and how many
//! connections a server answered promptly. Built in one
//! pass over a snapshot's flows, and kept up to date one flow at a time by `watch`; every
//! question the verdict asks of it is answered in constant time, whatever the number of flows.
//! Answers leave out the flow being judged, which is no baseline for itself.

use std::{
    hash::Hash,
    net::{IpAddr, SocketAddr},
};

use foldhash::{HashMap, HashMapExt as _, HashSet};
use tracer_common::Hook;

use crate::analysis::{
    flow::{Baseline, FlowRecord, PacketRole},
    mac::MacAddr,
};

/// A SYN answered this long after it was sent (or sooner) was answered promptly.
pub const PROMPT_ANSWER_NS: u64 = 1_000_000_000;

/// One flow, as a key among the flows of a source.
type FlowId = (SocketAddr, SocketAddr);

/// One side's sample of one flow (the flag says which side: the client's).
type SampleId = (FlowId, bool);

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
                (count - left_out, latest, *value)
            })
            .filter(|(count, _, _)| *count > 0)
            .max()
            .map(|(_, _, value)| value)
    }
}

/// A host's normal packets on one hook: the latest of each flow's side, and their tallies.
#[derive(Debug, Default)]
struct HostSamples {
    by_side: HashMap<SampleId, Baseline>,
    ttls: Tally<u8>,
    macs: Tally<MacAddr>,
}

impl HostSamples {
    fn insert(&mut self, side: SampleId, baseline: Baseline, seen_ns: u64, update: Update) {
        if update == Update::Replace {
            self.remove(&side);
        }
        self.ttls.add(baseline.ttl, seen_ns);
        if let Some(mac) = baseline.mac {
            self.macs.add(mac, seen_ns);
        }
        self.by_side.insert(side, baseline);
    }

    fn remove(&mut self, side: &SampleId) {
        if let Some(old) = self.by_side.remove(side) {
            self.ttls.remove(old.ttl);
            if let Some(mac) = old.mac {
                self.macs.remove(mac);
            }
        }
    }

    /// The profile of every flow but `flow` (both its sides are left out: only a flow whose
    /// ends share an address has two here).
    fn profile_without(&self, flow: FlowId) -> Option<Profile> {
        let own: Vec<&Baseline> = [true, false]
            .iter()
            .filter_map(|client| self.by_side.get(&(flow, *client)))
            .collect();
        let flows = self.by_side.len() - own.len();
        if flows == 0 {
            return None;
        }
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

/// Whether a flow may already be in the index.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Update {
    /// A flow seen before: what its earlier record said is taken away first.
    Replace,
    /// A flow of a snapshot, whose flows are all different: nothing to take away, which halves
    /// the work of indexing a quarter million flows.
    New,
}

/// Puts `side`'s sample at `key`, or takes it away (`None`).
fn place(
    map: &mut SamplesByHost,
    key: (IpAddr, Hook),
    side: SampleId,
    sample: Option<(Baseline, u64)>,
    update: Update,
) {
    match sample {
        Some((baseline, seen_ns)) => map
            .entry(key)
            .or_default()
            .insert(side, baseline, seen_ns, update),
        None if update == Update::Replace => {
            if let Some(samples) = map.get_mut(&key) {
                samples.remove(&side);
            }
        }
        None => {}
    }
}

/// The index of one source's hosts.
#[derive(Debug, Default)]
pub struct HostIndex {
    /// Every flow's baseline of each host.
    samples: SamplesByHost,
    /// Only the baselines from packets after the handshake (FINs): the host's own, where a SYN
    /// proxy or a full proxy may have answered the handshakes.
    after_handshake: SamplesByHost,
    /// The connections answered within [`PROMPT_ANSWER_NS`], by server address.
    prompt_answers: HashMap<IpAddr, HashSet<FlowId>>,
}

impl HostIndex {
    /// The index of `flows`, in one pass: a snapshot's flows, each once.
    pub fn new<'a>(flows: impl IntoIterator<Item = &'a FlowRecord>) -> HostIndex {
        let mut index = HostIndex::default();
        for flow in flows {
            index.add(flow, Update::New);
        }
        index
    }

    /// Adds a flow, or replaces what an earlier record of it said.
    pub fn insert(&mut self, flow: &FlowRecord) {
        self.add(flow, Update::Replace);
    }

    fn add(&mut self, flow: &FlowRecord, update: Update) {
        let id = flow_id(flow);
        let sides = [
            (true, flow.client, &flow.client_evidence),
            (false, flow.server, &flow.server_evidence),
        ];
        for (is_client, addr, side) in sides {
            let sample = (id, is_client);
            // A side's latest packet is on one hook: its sample there, none on the other.
            for hook in [Hook::Ingress, Hook::Egress] {
                let key = (addr.ip(), hook);
                let here = side
                    .baseline
                    .filter(|b| b.hook == hook)
                    .map(|b| (b, flow.last_seen_ns));
                place(&mut self.samples, key, sample, here, update);
                let after = here.filter(|(b, _)| b.role == PacketRole::AfterHandshake);
                place(&mut self.after_handshake, key, sample, after, update);
            }
        }
        if answered_promptly(flow) {
            self.prompt_answers
                .entry(flow.server.ip())
                .or_default()
                .insert(id);
        } else if update == Update::Replace {
            if let Some(answers) = self.prompt_answers.get_mut(&flow.server.ip()) {
                answers.remove(&id);
            }
        }
    }

    /// How `host`'s normal packets look on `hook` on flows other than `flow`.
    pub fn profile(&self, flow: &FlowRecord, host: IpAddr, hook: Hook) -> Option<Profile> {
        self.samples
            .get(&(host, hook))?
            .profile_without(flow_id(flow))
    }

    /// How `host`'s packets after the handshake (its FINs) look on `hook` on flows other than
    /// `flow`: the host's own, even where a proxy answered its handshakes.
    pub fn profile_after_handshake(
        &self,
        flow: &FlowRecord,
        host: IpAddr,
        hook: Hook,
    ) -> Option<Profile> {
        self.after_handshake
            .get(&(host, hook))?
            .profile_without(flow_id(flow))
    }

    /// How many connections other than `flow` its server answered within [`PROMPT_ANSWER_NS`].
    pub fn prompt_answers(&self, flow: &FlowRecord) -> usize {
        self.prompt_answers
            .get(&flow.server.ip())
            .map_or(0, |answers| {
                answers.len() - usize::from(answers.contains(&flow_id(flow)))
            })
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
        let index = HostIndex::new(&flows);
        let judged = flow(9, "10.0.2.1:443", baseline(1, None, 0), 1);
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
        let mut index = HostIndex::new([&first]);
        // The same flow, its server's latest packet now with another TTL and MAC.
        let again = flow(1, "10.0.2.1:80", baseline(127, Some(MAC_B), 2), 9);
        index.insert(&again);
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
        index.insert(&egress);
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
        let index = HostIndex::new(&flows);
        let judged = flow(9, "10.0.2.1:443", baseline(1, None, 0), 1);
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
        let mut index = index;
        index.insert(&again);
        assert_eq!(
            ttl(index.profile_after_handshake(&judged, server_ip(), Hook::Ingress)),
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
