//! Everything flagtrace says about a flow: where it was seen, the kernel's record, the verdict on
//! its RSTs, and the device that handed us its packets (MAC, vendor, IP address).

use std::fmt;

use tracer_common::Hook;

use crate::{
    analysis::flow::{Baseline, FlowRecord, RstSeen},
    analysis::hosts::HostIndex,
    analysis::mac::MacAddr,
    analysis::neighbours::{NeighbourIp, Neighbours},
    analysis::oui::{Vendor, Vendors},
    analysis::phase::{self, Phase},
    analysis::rst_payload::{self, RstPayload},
    analysis::verdict::{self, Role, Verdict},
    sys::pins::Attachment,
};

/// Where a source's flows were seen: an attachment's maps, or one interface of a capture file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    Live(Attachment),
    /// A capture; `iface` is the interface's pcapng name, or the file's name.
    Capture {
        iface: String,
    },
}

impl Origin {
    pub fn iface(&self) -> &str {
        match self {
            Origin::Live(attachment) => &attachment.iface,
            Origin::Capture { iface } => iface,
        }
    }

    /// The named network namespace of a live attachment; `None` for the host's and a capture.
    pub fn netns(&self) -> Option<&str> {
        match self {
            Origin::Live(attachment) => attachment.netns.name(),
            Origin::Capture { .. } => None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Live(attachment) => attachment.fmt(f),
            Origin::Capture { iface } => write!(f, "{iface} (capture)"),
        }
    }
}

/// The L2 neighbour a flow's packets come through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub mac: MacAddr,
    pub vendor: Vendor,
    /// Its address in the neighbour table, when the table has the MAC.
    pub neighbour: Option<NeighbourIp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowReport {
    pub origin: Origin,
    pub flow: FlowRecord,
    /// `None` for a flow without a RST.
    pub verdict: Option<Verdict>,
    /// When the deciding RST came; `None` without a RST, or when it cannot be told.
    pub phase: Option<Phase>,
    pub gateway: Option<Gateway>,
}

impl FlowReport {
    /// What the deciding RST's payload says, when it carried one.
    pub fn rst_payload(&self) -> Option<RstPayload> {
        self.deciding_rst()?
            .payload
            .as_ref()
            .and_then(rst_payload::decode)
    }

    /// The RST the verdict is about, with what the kernel measured around it.
    pub fn deciding_rst(&self) -> Option<&RstSeen> {
        let verdict = self.verdict.as_ref()?;
        let side = match verdict.rst_from {
            Role::Client => &self.flow.client_evidence,
            Role::Server => &self.flow.server_evidence,
        };
        side.rst.as_deref()
    }
}

/// The device next to us on the path to the server: the L2 source of the server's packets that
/// arrived; else the L2 destination of the client's packets that left; else that of a RST.
pub fn gateway_mac(flow: &FlowRecord) -> Option<MacAddr> {
    let seen_on = |baseline: Option<Baseline>, hook: Hook| {
        baseline.filter(|b| b.hook == hook).and_then(|b| b.mac)
    };
    let server_in = seen_on(flow.server_evidence.baseline, Hook::Ingress);
    let client_out = seen_on(flow.client_evidence.baseline, Hook::Egress);
    let rsts = [&flow.server_evidence, &flow.client_evidence]
        .map(|side| side.rst.as_ref().and_then(|r| r.mac));
    [server_in, client_out]
        .into_iter()
        .chain(rsts)
        .flatten()
        .next()
}

/// Names the gateways of one origin's flows: the MAC's vendor, and its address in the neighbour
/// table, read at most once, and only when some flow has a gateway MAC.
pub struct Gateways<'a, F: FnOnce() -> Option<Neighbours>> {
    vendors: &'a Vendors,
    read_neighbours: Option<F>,
    neighbours: Option<Neighbours>,
}

impl<'a, F: FnOnce() -> Option<Neighbours>> Gateways<'a, F> {
    pub fn new(vendors: &'a Vendors, read_neighbours: F) -> Self {
        Gateways {
            vendors,
            read_neighbours: Some(read_neighbours),
            neighbours: None,
        }
    }

    /// The device that handed us `flow`'s packets; `None` when no MAC was seen.
    pub fn of(&mut self, flow: &FlowRecord) -> anyhow::Result<Option<Gateway>> {
        let Some(mac) = gateway_mac(flow) else {
            return Ok(None);
        };
        if let Some(read) = self.read_neighbours.take() {
            self.neighbours = read();
        }
        Ok(Some(Gateway {
            mac,
            vendor: self.vendors.vendor(mac)?,
            neighbour: self
                .neighbours
                .as_ref()
                .and_then(|table| table.ip_of(mac, flow.server.ip())),
        }))
    }
}

/// Everything said about one flow: its verdict against `hosts`, and its gateway.
pub fn report<F: FnOnce() -> Option<Neighbours>>(
    origin: &Origin,
    flow: FlowRecord,
    hosts: &HostIndex,
    gateways: &mut Gateways<F>,
) -> anyhow::Result<FlowReport> {
    let verdict = verdict::judge(&flow, hosts);
    Ok(FlowReport {
        origin: origin.clone(),
        phase: verdict
            .as_ref()
            .and_then(|verdict| phase::phase(&flow, verdict.rst_from)),
        verdict,
        gateway: gateways.of(&flow)?,
        flow,
    })
}

/// Which flows [`analyse`] reports on. Every flow is a baseline for the others either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    AllFlows,
    /// Only the flows that carried a RST: what `resets` and the metrics show. At a quarter
    /// million flows, reporting on the others cost more than judging these.
    ResetFlows,
}

impl Scope {
    fn includes(self, flow: &FlowRecord) -> bool {
        self == Scope::AllFlows || flow.totals().rst > 0
    }
}

/// Reports on the flows of one origin that `scope` asks for. The verdicts compare each flow
/// with the others, so `flows` must be all of the origin's flows: they are indexed once
/// ([`HostIndex`]), then each is judged in constant time. `neighbours` reads the origin's
/// neighbour table; it is called at most once, and only when some flow has a gateway MAC.
pub fn analyse(
    origin: &Origin,
    flows: Vec<FlowRecord>,
    vendors: &Vendors,
    neighbours: impl FnOnce() -> Option<Neighbours>,
    scope: Scope,
) -> anyhow::Result<Vec<FlowReport>> {
    let hosts = HostIndex::new(&flows);
    let mut gateways = Gateways::new(vendors, neighbours);
    flows
        .into_iter()
        .filter(|flow| scope.includes(flow))
        .map(|flow| report(origin, flow, &hosts, &mut gateways))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analysis::flow::{Baseline, PacketRole, RstSeen, SideEvidence, State},
        analysis::oui::OuiRegistry,
        analysis::verdict::ResetBy,
        sys::netns::Netns,
    };

    const GATEWAY: [u8; 6] = [0x00, 0x01, 0xd7, 0x3c, 0x5e, 0x01];
    const OTHER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];

    fn side(baseline: Option<([u8; 6], Hook)>, rst_mac: Option<[u8; 6]>) -> SideEvidence {
        SideEvidence {
            baseline: baseline.map(|(mac, hook)| Baseline {
                hook,
                mac: MacAddr::known(mac),
                ttl: 64,
                ip_id: 0,
                role: PacketRole::Handshake,
                seq_end: 0,
            }),
            rst: rst_mac.map(|mac| {
                Box::new(RstSeen {
                    mac: MacAddr::known(mac),
                    ttl: 64,
                    ..RstSeen::at(Hook::Ingress, 5)
                })
            }),
        }
    }

    fn flow(client: SideEvidence, server: SideEvidence) -> FlowRecord {
        let mut flow = FlowRecord {
            client: "10.0.1.2:40000".parse().unwrap(),
            server: "10.0.2.1:443".parse().unwrap(),
            client_to_server: Default::default(),
            server_to_client: Default::default(),
            state: State::Attempted,
            first_seen_ns: 1,
            last_seen_ns: 5,
            syn_ns: Some(1),
            syn_ack_ns: None,
            client_evidence: client,
            server_evidence: server,
            tls_sni: None,
            flow_evicted: false,
        };
        flow.client_to_server.syn = 1;
        flow.server_to_client.rst = u32::from(flow.server_evidence.rst.is_some());
        flow
    }

    #[test]
    fn gateway_mac_prefers_what_arrived_from_the_server() {
        let mac = |m: [u8; 6]| Some(MacAddr(m));
        let cases = [
            // The server's packets arrived through the gateway.
            (
                side(Some((OTHER, Hook::Egress)), None),
                side(Some((GATEWAY, Hook::Ingress)), Some(OTHER)),
                mac(GATEWAY),
            ),
            // Nothing arrived from it: where the client's packets went.
            (
                side(Some((GATEWAY, Hook::Egress)), None),
                side(None, None),
                mac(GATEWAY),
            ),
            // A server baseline seen leaving is not the gateway.
            (
                side(None, None),
                side(Some((OTHER, Hook::Egress)), Some(GATEWAY)),
                mac(GATEWAY),
            ),
            // Only the RST.
            (side(None, None), side(None, Some(GATEWAY)), mac(GATEWAY)),
            // Zeros are no MAC.
            (
                side(Some(([0; 6], Hook::Egress)), None),
                side(None, Some(GATEWAY)),
                mac(GATEWAY),
            ),
            (side(None, None), side(None, None), None),
        ];
        for (index, (client, server, expected)) in cases.into_iter().enumerate() {
            assert_eq!(gateway_mac(&flow(client, server)), expected, "case {index}");
        }
    }

    fn lab() -> Origin {
        Origin::Live(Attachment {
            netns: Netns::Named("lab".into()),
            iface: "veth0".into(),
        })
    }

    fn f5_registry() -> Vendors {
        let registry = OuiRegistry::new(
            crate::analysis::oui::parse_registry("00:01:D7\tF5\tF5 Networks, Inc.\n").unwrap(),
        );
        Vendors::with_registry(Some(registry))
    }

    #[test]
    fn analyse_judges_against_the_other_flows_and_names_the_gateway() {
        let refused = flow(
            side(Some((GATEWAY, Hook::Egress)), None),
            side(None, Some(GATEWAY)),
        );
        let mut answered = flow(
            side(Some((GATEWAY, Hook::Egress)), None),
            side(Some((GATEWAY, Hook::Ingress)), None),
        );
        answered.server = "10.0.2.1:80".parse().unwrap();
        answered.server_evidence.baseline.as_mut().unwrap().ttl = 127;
        let mut reads = 0;
        let neighbours = || {
            reads += 1;
            None
        };
        let flows = vec![refused, answered];
        let reports = analyse(
            &lab(),
            flows.clone(),
            &f5_registry(),
            neighbours,
            Scope::AllFlows,
        )
        .unwrap();
        assert_eq!(reads, 1);
        let verdict = reports[0].verdict.as_ref().unwrap();
        assert_eq!(verdict.reset_by, ResetBy::Middlebox);
        assert_eq!(reports[1].verdict, None);
        // Only the reset flow is reported on, judged against the other all the same.
        let resets = analyse(&lab(), flows, &f5_registry(), || None, Scope::ResetFlows).unwrap();
        assert_eq!(resets.len(), 1);
        assert_eq!(resets[0].verdict, reports[0].verdict);
        let gateway = reports[0].gateway.as_ref().unwrap();
        assert_eq!(gateway.mac.to_string(), "00:01:d7:3c:5e:01");
        assert_eq!(
            gateway.vendor,
            Vendor::Organization("F5 Networks, Inc.".into())
        );
        assert_eq!(gateway.neighbour, None);
    }

    #[test]
    fn no_mac_no_neighbour_lookup() {
        let reports = analyse(
            &lab(),
            vec![flow(side(None, None), side(None, None))],
            &f5_registry(),
            || panic!("the neighbour table is not needed"),
            Scope::AllFlows,
        )
        .unwrap();
        assert_eq!(reports[0].gateway, None);
    }
}
