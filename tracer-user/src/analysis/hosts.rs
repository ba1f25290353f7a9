//! What the flows of one source say about each host, built once per snapshot in one pass over
//! its flows, so that every question the verdict asks of it is answered in constant time: how a
//! host's normal packets look on each hook (the usual TTL, MAC and IP ID), and how many
//! connections a server answered promptly. Answers leave out the flow being judged, which is no
//! baseline for itself.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use tracer_common::Hook;

use crate::analysis::{
    flow::{Baseline, FlowRecord},
    mac::MacAddr,
};

/// A SYN answered this long after it was sent (or sooner) was answered promptly.
pub const PROMPT_ANSWER_NS: u64 = 1_000_000_000;

/// One flow, as a key among the flows of a source.
type FlowId = (SocketAddr, SocketAddr);

fn flow_id(flow: &FlowRecord) -> FlowId {
    (flow.client, flow.server)
}

/// A host's normal packets on one flow.
#[derive(Clone, Copy, Debug)]
struct Sample {
    flow: FlowId,
    baseline: Baseline,
    last_seen_ns: u64,
}

/// How a host's normal packets look on one hook, over the flows that carried them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    /// The most common TTL (hop limit); a tie goes to the one seen most recently.
    pub ttl: u8,
    /// The most common known MAC, likewise; `None` when no flow had one.
    pub mac: Option<MacAddr>,
    /// The IP ID of the flow seen most recently.
    pub ip_id: u16,
    /// How many flows it comes from.
    pub flows: usize,
}

impl Profile {
    /// `None` for no samples.
    fn of<'a>(samples: impl Iterator<Item = &'a Sample> + Clone) -> Option<Profile> {
        let latest = samples.clone().max_by_key(|sample| sample.last_seen_ns)?;
        Some(Profile {
            ttl: most_common(samples.clone().map(|s| (s.baseline.ttl, s.last_seen_ns)))?,
            mac: most_common(
                samples
                    .clone()
                    .filter_map(|s| s.baseline.mac.map(|mac| (mac, s.last_seen_ns))),
            ),
            ip_id: latest.baseline.ip_id,
            flows: samples.count(),
        })
    }
}

/// The most frequent value; a tie goes to the value seen most recently, then to the larger value
/// (so that the answer never depends on a hash order).
fn most_common<T: Copy + Ord>(values: impl Iterator<Item = (T, u64)>) -> Option<T> {
    let mut tally: BTreeMap<T, (usize, u64)> = BTreeMap::new();
    for (value, seen_ns) in values {
        let entry = tally.entry(value).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(seen_ns);
    }
    tally
        .into_iter()
        .max_by_key(|(_, count_and_latest)| *count_and_latest)
        .map(|(value, _)| value)
}

/// The index of one source's hosts.
#[derive(Debug, Default)]
pub struct HostIndex {
    /// Every sample by host and hook, kept for the rare flow whose both ends are one address
    /// (it is then in its own host's samples and must be left out of them).
    samples: HashMap<(IpAddr, Hook), Vec<Sample>>,
    profiles: HashMap<(IpAddr, Hook), Profile>,
    /// Connections answered within [`PROMPT_ANSWER_NS`], by server address.
    prompt_answers: HashMap<IpAddr, usize>,
}

impl HostIndex {
    /// One pass over the flows, then one over the samples.
    pub fn new<'a>(flows: impl IntoIterator<Item = &'a FlowRecord>) -> HostIndex {
        let mut index = HostIndex::default();
        for flow in flows {
            let sides = [
                (flow.client, &flow.client_evidence),
                (flow.server, &flow.server_evidence),
            ];
            for (addr, side) in sides {
                if let Some(baseline) = side.baseline {
                    index
                        .samples
                        .entry((addr.ip(), baseline.hook))
                        .or_default()
                        .push(Sample {
                            flow: flow_id(flow),
                            baseline,
                            last_seen_ns: flow.last_seen_ns,
                        });
                }
            }
            if answered_promptly(flow) {
                *index.prompt_answers.entry(flow.server.ip()).or_default() += 1;
            }
        }
        index.profiles = index
            .samples
            .iter()
            .filter_map(|(key, samples)| Some((*key, Profile::of(samples.iter())?)))
            .collect();
        index
    }

    /// How `host`'s normal packets look on `hook` on flows other than `flow`.
    pub fn profile(&self, flow: &FlowRecord, host: IpAddr, hook: Hook) -> Option<Profile> {
        let key = (host, hook);
        let is_member = |side_addr: SocketAddr, baseline: Option<Baseline>| {
            side_addr.ip() == host && baseline.is_some_and(|b| b.hook == hook)
        };
        let flow_is_a_sample = is_member(flow.client, flow.client_evidence.baseline)
            || is_member(flow.server, flow.server_evidence.baseline);
        if !flow_is_a_sample {
            return self.profiles.get(&key).copied();
        }
        let id = flow_id(flow);
        let others = self.samples.get(&key)?.iter().filter(|s| s.flow != id);
        Profile::of(others)
    }

    /// How many connections other than `flow` its server answered within [`PROMPT_ANSWER_NS`].
    pub fn prompt_answers(&self, flow: &FlowRecord) -> usize {
        let all = self
            .prompt_answers
            .get(&flow.server.ip())
            .copied()
            .unwrap_or(0);
        all - usize::from(answered_promptly(flow))
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
        }
    }

    fn server_ip() -> IpAddr {
        "10.0.2.1".parse().unwrap()
    }

    #[test]
    fn profile_is_the_most_common_ttl_and_mac_and_the_latest_ip_id() {
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
                ip_id: 20,
                flows: 3
            })
        );
        assert_eq!(index.profile(&judged, server_ip(), Hook::Egress), None);
    }

    #[test]
    fn ties_go_to_the_most_recent_then_the_larger_value() {
        assert_eq!(
            most_common([(1, 10), (2, 30), (1, 5), (2, 1)].into_iter()),
            Some(2)
        );
        assert_eq!(most_common([(1, 10), (2, 5)].into_iter()), Some(1));
        assert_eq!(most_common([(1, 10), (2, 10)].into_iter()), Some(2));
        assert_eq!(most_common(std::iter::empty::<(u8, u64)>()), None);
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
