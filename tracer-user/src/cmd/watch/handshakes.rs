//! The handshake packets `watch --pcap` writes before a RST: the SYN and SYN/ACK of recent
//! flows, kept from their events until their flow is reset, in bounds that a flood of new flows
//! cannot push.

use std::{collections::HashMap, time::Duration};

use super::{events::Captured, FlowId, MAX_FLOWS};

/// Handshake packets older than this are forgotten: a RST that late gets written alone.
const HANDSHAKE_MAX_AGE: Duration = Duration::from_secs(60);
/// Handshake packets kept per flow: the SYN, the SYN/ACK and a few retransmissions.
const MAX_PACKETS_PER_FLOW: usize = 8;

/// The handshake packets (SYN, SYN/ACK) of recent flows, kept until their flow is reset: at
/// most [`MAX_FLOWS`] flows of [`MAX_PACKETS_PER_FLOW`] packets, none older than
/// [`HANDSHAKE_MAX_AGE`] (see [`Handshakes::expire`]).
#[derive(Debug, Default)]
pub struct Handshakes {
    flows: HashMap<FlowId, Vec<Captured>>,
}

impl Handshakes {
    pub fn keep(&mut self, flow: FlowId, packet: Captured) {
        if !self.flows.contains_key(&flow) && self.flows.len() >= MAX_FLOWS {
            // The flow that has been quiet longest makes room.
            let quietest = self
                .flows
                .iter()
                .min_by_key(|(_, packets)| latest(packets))
                .map(|(flow, _)| *flow);
            if let Some(quietest) = quietest {
                self.flows.remove(&quietest);
            }
        }
        let packets = self.flows.entry(flow).or_default();
        if packets.len() < MAX_PACKETS_PER_FLOW {
            packets.push(packet);
        }
    }

    /// The flow's packets in time order; they are forgotten.
    pub fn take(&mut self, flow: &FlowId) -> Vec<Captured> {
        let mut packets = self.flows.remove(flow).unwrap_or_default();
        // Stable: packets of one instant stay in the order they arrived.
        packets.sort_by_key(|packet| packet.time_ns);
        packets
    }

    /// Forgets the flows with no packet in the last [`HANDSHAKE_MAX_AGE`] before `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        let max_age = HANDSHAKE_MAX_AGE.as_nanos() as u64;
        self.flows
            .retain(|_, packets| now_ns.saturating_sub(latest(packets)) < max_age);
    }
}

fn latest(packets: &[Captured]) -> u64 {
    packets
        .iter()
        .map(|packet| packet.time_ns)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn packet(time_ns: u64) -> Captured {
        Captured {
            time_ns,
            packet_len: 60,
            frame: vec![0; 60],
        }
    }

    fn flow(port: u16) -> FlowId {
        FlowId::new(
            0,
            SocketAddr::from(([10, 0, 1, 1], port)),
            "10.0.2.1:443".parse().unwrap(),
        )
    }

    #[test]
    fn handshakes_come_out_in_time_order_once() {
        let mut kept = Handshakes::default();
        // A SYN/ACK whose event came first from another CPU.
        kept.keep(flow(1), packet(20));
        kept.keep(flow(1), packet(10));
        kept.keep(flow(2), packet(15));
        let times: Vec<u64> = kept.take(&flow(1)).iter().map(|p| p.time_ns).collect();
        assert_eq!(times, [10, 20]);
        assert!(kept.take(&flow(1)).is_empty());
        assert_eq!(kept.take(&flow(2)).len(), 1);
    }

    #[test]
    fn handshakes_are_bounded_in_flows_packets_and_age() {
        let mut kept = Handshakes::default();
        for port in 0..MAX_FLOWS as u16 {
            kept.keep(flow(port), packet(1_000 + u64::from(port)));
        }
        // Full: the quietest flow (port 0) makes room.
        kept.keep(flow(60_000), packet(5_000));
        assert_eq!(kept.flows.len(), MAX_FLOWS);
        assert!(kept.take(&flow(0)).is_empty());
        assert_eq!(kept.take(&flow(1)).len(), 1);

        for time in 0..2 * MAX_PACKETS_PER_FLOW as u64 {
            kept.keep(flow(7), packet(time));
        }
        assert_eq!(kept.take(&flow(7)).len(), MAX_PACKETS_PER_FLOW);

        let age = HANDSHAKE_MAX_AGE.as_nanos() as u64;
        let mut kept = Handshakes::default();
        kept.keep(flow(1), packet(1));
        kept.keep(flow(2), packet(age));
        kept.expire(age + 1);
        assert!(kept.flows.contains_key(&flow(2)));
        assert!(!kept.flows.contains_key(&flow(1)));
    }
}
