//! Which IP address a gateway MAC answers for, from a neighbour table: the attachment
//! namespace's (read by [`crate::source::neighbour`]) or the one a capture's ARP and NDP packets
//! announce.

use std::net::IpAddr;

use crate::analysis::mac::MacAddr;

/// The gateway's address as the neighbour table knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighbourIp {
    pub ip: IpAddr,
    /// Whether it is the gateway of a default route through the interface.
    pub is_default: bool,
}

/// One interface's neighbours and default gateways.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Neighbours {
    pub entries: Vec<(IpAddr, MacAddr)>,
    pub default_gateways: Vec<IpAddr>,
}

impl Neighbours {
    /// A table of known (address, MAC) pairs without routes, as a capture file shows them
    /// (`flagtrace pcap`): no address is a default gateway.
    pub fn from_entries(entries: impl IntoIterator<Item = (IpAddr, MacAddr)>) -> Neighbours {
        Neighbours {
            entries: entries.into_iter().collect(),
            default_gateways: Vec::new(),
        }
    }

    /// The address `mac` answers for. Several may: prefer the family of `like` (the flow's),
    /// then a default gateway, then an address that is not IPv6 link-local.
    pub fn ip_of(&self, mac: MacAddr, like: IpAddr) -> Option<NeighbourIp> {
        self.entries
            .iter()
            .filter(|(_, entry_mac)| *entry_mac == mac)
            .map(|(ip, _)| NeighbourIp {
                ip: *ip,
                is_default: self.default_gateways.contains(ip),
            })
            .max_by_key(|candidate| {
                let link_local = match candidate.ip {
                    IpAddr::V6(v6) => v6.is_unicast_link_local(),
                    IpAddr::V4(_) => false,
                };
                (
                    candidate.ip.is_ipv4() == like.is_ipv4(),
                    candidate.is_default,
                    !link_local,
                )
            })
    }
}
