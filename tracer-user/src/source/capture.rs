//! A capture file as a source (`flagtrace pcap FILE`): each packet goes through the kernel
//! programs' own accounting ([`HostTables`]), one set of tables per interface, and the flows
//! then go through the same analysis as an attachment's: a capture taken with tcpdump on an
//! interface reads exactly as flagtrace attached to it would have counted.
//!
//! Which hook saw a packet (ingress or egress) decides which MAC is the neighbour and which
//! counters count it. The capture says so for pcapng packets with `epb_flags` and for Linux
//! cooked captures; for the others, the capturing host is the MAC seen in the most frames (or
//! `--local-mac`), and the frames it sent are egress, all others ingress.
//!
//! A file is streamed, twice at most: a second, earlier read finds the local MAC, only when
//! some packet does not tell its direction and `--local-mac` is not given. A stream (`-`, a
//! pipe, a FIFO) is read once: its first [`GUESS_PREFIX_LEN`] bytes are kept for that guess.
//! Memory follows what the capture holds: tables are created per interface as packets come, and
//! their large arrays take memory only where packets touch them ([`HostTables`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::Cursor,
    net::IpAddr,
    path::Path,
    sync::Arc,
};

use anyhow::Context as _;

use etherparse::{Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};
use tracer_common::Hook;

use crate::{
    analysis::{
        mac::MacAddr,
        neighbours::Neighbours,
        oui::Vendors,
        report::{self, FlowReport, Origin, Scope},
    },
    capture::{CaptureError, CaptureErrorKind, CaptureReader, CapturedPacket, Direction, Input},
    error::Failure,
    source::{offline::HostTables, Stats},
};

/// One interface of the capture: its tables, as one attachment's maps.
struct Interface {
    /// The pcapng `if_name`.
    name: Option<String>,
    tables: HostTables,
}

/// What was read of a capture: one source per interface.
pub struct Capture {
    /// By pcapng interface id; 0 for a pcap file.
    interfaces: BTreeMap<u32, Interface>,
    /// The name each interface is shown under ([`interface_names`]).
    names: HashMap<u32, String>,
    /// (address, MAC) pairs that ARP and NDP packets announced: the offline neighbour table.
    neighbours: BTreeSet<(IpAddr, MacAddr)>,
    /// The error that ended the reading early.
    pub damage: Option<CaptureError>,
}

impl Capture {
    /// Reads and accounts the whole file. `local_mac` is the capturing host's MAC, when the
    /// user knows it; `iface` names the interfaces instead of the file.
    pub fn read(
        path: &Path,
        local_mac: Option<MacAddr>,
        iface: Option<&str>,
    ) -> anyhow::Result<Capture> {
        let input = Input::open(path).map_err(failure)?;
        let (input, guess_from) = match (local_mac, input.file_len) {
            (None, None) => {
                let (prefix, input) = input
                    .with_prefix(GUESS_PREFIX_LEN)
                    .with_context(|| format!("reading {}", path.display()))?;
                (input, GuessFrom::Prefix(prefix))
            }
            _ => (input, GuessFrom::File),
        };
        let mut reader = open(path, input)?;
        let mut hooks = HookOf {
            path,
            local_mac: local_mac.map(Some),
            guess_from,
        };
        let mut analysis = Capture {
            interfaces: BTreeMap::new(),
            names: HashMap::new(),
            neighbours: BTreeSet::new(),
            damage: None,
        };
        while let Some(packet) = reader.next() {
            let packet = match packet {
                Ok(packet) => packet,
                Err(damage) => {
                    analysis.damage = Some(damage);
                    break;
                }
            };
            let hook = hooks.of(&packet)?;
            let id = packet.interface.unwrap_or(0);
            let interface = analysis.interfaces.entry(id).or_insert_with(|| Interface {
                name: packet.interface_name.map(str::to_owned),
                tables: HostTables::new(),
            });
            // The interface id stands for the kernel's ifindex in the flow keys.
            interface
                .tables
                .account(packet.frame, id, hook, packet.ts_unix_ns);
            analysis
                .neighbours
                .extend(announced_neighbour(packet.frame));
        }
        report_skipped(&reader);
        if analysis.interfaces.is_empty() && !reader.skipped().is_empty() {
            let link_types: Vec<String> = reader.skipped().keys().map(u32::to_string).collect();
            return Err(Failure::NotACapture(format!(
                "{}: every packet is of a link type flagtrace does not read ({})",
                path.display(),
                link_types.join(", ")
            ))
            .into());
        }
        analysis.names = interface_names(&analysis.interfaces, iface, path);
        Ok(analysis)
    }

    /// Each interface's counters and flow count.
    pub fn stats(&self) -> Vec<Stats> {
        self.interfaces
            .iter()
            .map(|(id, interface)| Stats {
                origin: origin(&self.names, *id),
                counters: interface.tables.counters(),
                flows: interface.tables.flow_count(),
                max_flows: None,
            })
            .collect()
    }

    /// Reports on the flows in `scope` of every interface; each interface's flows are judged
    /// together. Each interface's tables are freed once its records are made, before its
    /// reports.
    pub fn into_reports(self, vendors: &Vendors, scope: Scope) -> anyhow::Result<Vec<FlowReport>> {
        let mut reports = Vec::new();
        for (id, interface) in self.interfaces {
            let records = interface.tables.flow_records()?;
            drop(interface);
            let neighbours = || Some(Neighbours::from_entries(self.neighbours.iter().copied()));
            reports.extend(report::analyse(
                &origin(&self.names, id),
                records,
                vendors,
                neighbours,
                scope,
            )?);
        }
        Ok(reports)
    }
}

/// The source an interface's flows are shown under.
fn origin(names: &HashMap<u32, String>, id: u32) -> Origin {
    Origin::Capture {
        iface: names[&id].clone(),
    }
}

/// How much of a stream is kept to guess the capturing host's MAC from: a stream is read once.
const GUESS_PREFIX_LEN: usize = 32 << 20;

fn open(path: &Path, input: Input) -> anyhow::Result<CaptureReader> {
    CaptureReader::from_input(path, input)
        .map(CaptureReader::with_progress)
        .map_err(failure)
}

fn failure(error: CaptureError) -> anyhow::Error {
    match error.kind {
        // A header cut short is damage like any other: nothing to analyse before it.
        CaptureErrorKind::Truncated | CaptureErrorKind::Corrupt => {
            Failure::CaptureDamaged(error.to_string()).into()
        }
        _ => Failure::NotACapture(error.to_string()).into(),
    }
}

/// What the capturing host's MAC is guessed from.
enum GuessFrom {
    /// The file, read again from its start.
    File,
    /// A stream's first bytes.
    Prefix(Arc<[u8]>),
}

impl GuessFrom {
    fn reader(&self, path: &Path) -> anyhow::Result<CaptureReader> {
        let input = match self {
            GuessFrom::File => Input::open(path).map_err(failure)?,
            GuessFrom::Prefix(prefix) => Input {
                reader: Box::new(Cursor::new(Arc::clone(prefix))),
                file_len: None,
            },
        };
        open(path, input)
    }

    /// How the guess's warning names what it read.
    fn scope(&self) -> String {
        match self {
            GuessFrom::File => String::new(),
            GuessFrom::Prefix(_) => format!(" (in its first {} MiB)", GUESS_PREFIX_LEN >> 20),
        }
    }
}

fn report_skipped(reader: &CaptureReader) {
    for (link_type, count) in reader.skipped() {
        log::warn!(
            "skipped {count} packets of {}: link type {link_type} is not supported",
            reader.path().display()
        );
    }
}

/// The hook that saw each packet: the capture's direction, else the local MAC's.
struct HookOf<'a> {
    path: &'a Path,
    /// `None` until a packet without a direction needs it.
    local_mac: Option<Option<MacAddr>>,
    guess_from: GuessFrom,
}

impl HookOf<'_> {
    fn of(&mut self, packet: &CapturedPacket) -> anyhow::Result<Hook> {
        Ok(match packet.direction {
            Some(Direction::Inbound) => Hook::Ingress,
            Some(Direction::Outbound) => Hook::Egress,
            None => {
                let local = match self.local_mac {
                    Some(local) => local,
                    None => *self
                        .local_mac
                        .insert(infer_local_mac(self.path, &self.guess_from)?),
                };
                let sent_by_local =
                    local.is_some_and(|local| source_mac(packet.frame) == Some(local));
                if sent_by_local {
                    Hook::Egress
                } else {
                    Hook::Ingress
                }
            }
        })
    }
}

fn source_mac(frame: &[u8]) -> Option<MacAddr> {
    frame.get(6..12)?.try_into().ok().map(MacAddr)
}

fn destination_mac(frame: &[u8]) -> Option<MacAddr> {
    frame.get(..6)?.try_into().ok().map(MacAddr)
}

/// The capturing host's MAC: the unicast MAC found (as source or destination) in the most
/// frames. A frame the host sent or received names it, while its neighbours each share only
/// part of its traffic. Two hosts that only talk to each other tie; the host that sent the
/// broadcasts (its ARP requests) then wins, then the lower address, with a warning.
fn infer_local_mac(path: &Path, guess_from: &GuessFrom) -> anyhow::Result<Option<MacAddr>> {
    let mut reader = guess_from.reader(path)?;
    // (frames naming it, broadcast and multicast frames it sent)
    let mut seen: HashMap<MacAddr, (u64, u64)> = HashMap::new();
    // Damage ends the count early; the analysis reports it.
    while let Some(Ok(packet)) = reader.next() {
        let (Some(src), Some(dst)) = (source_mac(packet.frame), destination_mac(packet.frame))
        else {
            continue;
        };
        let group = dst.0[0] & 1 != 0;
        for (mac, sent_group) in [(src, group), (dst, false)] {
            if mac.0[0] & 1 == 0 && MacAddr::known(mac.0).is_some() {
                let entry = seen.entry(mac).or_default();
                entry.0 += 1;
                entry.1 += u64::from(sent_group);
            }
        }
    }
    let mut ranked: Vec<(MacAddr, (u64, u64))> = seen.into_iter().collect();
    ranked.sort_by_key(|&(mac, counts)| (std::cmp::Reverse(counts), mac));
    let Some(&(local, counts)) = ranked.first() else {
        return Ok(None);
    };
    let tied_with = ranked.get(1).filter(|(_, other)| *other == counts);
    match tied_with {
        Some((other, _)) => log::warn!(
            "{} does not say which way packets went, and {local} and {other} are in \
             as many frames{}: taking {local} as the capturing host's MAC (--local-mac chooses)",
            path.display(),
            guess_from.scope()
        ),
        None => log::warn!(
            "{} does not say which way packets went: taking {local}, in {} frames{}, as \
             the capturing host's MAC (--local-mac chooses)",
            path.display(),
            counts.0,
            guess_from.scope()
        ),
    }
    Ok(Some(local))
}

/// The (address, MAC) pair an ARP packet or an IPv6 neighbour solicitation or advertisement
/// announces for its sender.
fn announced_neighbour(frame: &[u8]) -> Option<(IpAddr, MacAddr)> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    match (packet.net?, packet.transport) {
        (NetSlice::Arp(arp), _) => {
            let ip: [u8; 4] = arp.sender_protocol_addr().try_into().ok()?;
            let mac: [u8; 6] = arp.sender_hw_addr().try_into().ok()?;
            let ip = IpAddr::from(ip);
            (!ip.is_unspecified()).then_some((ip, MacAddr::known(mac)?))
        }
        (NetSlice::Ipv6(ipv6), Some(TransportSlice::Icmpv6(icmp))) => {
            let ndp = matches!(
                icmp.icmp_type(),
                Icmpv6Type::NeighborSolicitation | Icmpv6Type::NeighborAdvertisement(_)
            );
            let ip = IpAddr::from(ipv6.header().source_addr());
            (ndp && !ip.is_unspecified())
                .then_some((ip, source_mac(frame)?))
                .filter(|(_, mac)| MacAddr::known(mac.0).is_some())
        }
        _ => None,
    }
}

/// The name each interface is shown under: `--iface`, else its pcapng `if_name`, else the
/// file's name; with the interface id after it when the capture has several interfaces and the
/// name would not tell them apart.
fn interface_names(
    interfaces: &BTreeMap<u32, Interface>,
    iface: Option<&str>,
    path: &Path,
) -> HashMap<u32, String> {
    let file_name = if path == Path::new("-") {
        "stdin".to_owned()
    } else {
        path.file_name()
            .unwrap_or(path.as_os_str())
            .to_string_lossy()
            .into_owned()
    };
    let several = interfaces.len() > 1;
    interfaces
        .iter()
        .map(|(id, interface)| {
            let name = match (iface, &interface.name) {
                (Some(iface), _) if several => format!("{iface}#{id}"),
                (Some(iface), _) => iface.to_owned(),
                (None, Some(name)) => name.clone(),
                (None, None) if several => format!("{file_name}#{id}"),
                (None, None) => file_name.clone(),
            };
            (*id, name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;

    fn interfaces(names: &[Option<&str>]) -> BTreeMap<u32, Interface> {
        names
            .iter()
            .enumerate()
            .map(|(id, name)| {
                (
                    id as u32,
                    Interface {
                        name: name.map(str::to_owned),
                        tables: HostTables::new(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn interface_names_prefer_the_option_then_if_name_then_the_file() {
        let path = Path::new("/tmp/trace.pcapng");
        let one = interfaces(&[Some("eth0")]);
        assert_eq!(interface_names(&one, Some("uplink"), path)[&0], "uplink");
        assert_eq!(interface_names(&one, None, path)[&0], "eth0");
        let unnamed = interfaces(&[None]);
        assert_eq!(interface_names(&unnamed, None, path)[&0], "trace.pcapng");
        let two = interfaces(&[Some("eth0"), None]);
        let names = interface_names(&two, None, path);
        assert_eq!((&*names[&0], &*names[&1]), ("eth0", "trace.pcapng#1"));
        let names = interface_names(&two, Some("x"), path);
        assert_eq!((&*names[&0], &*names[&1]), ("x#0", "x#1"));
    }

    #[test]
    fn arp_and_ndp_announce_their_senders() {
        let mac = [0x00, 0x01, 0xd7, 1, 2, 3];
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&mac);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&mac);
        arp.extend_from_slice(&[10, 0, 1, 254]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&[10, 0, 1, 1]);
        assert_eq!(
            announced_neighbour(&arp),
            Some(("10.0.1.254".parse().unwrap(), MacAddr(mac)))
        );

        let source: [u8; 16] = "fd00:1::fe".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let mut advertisement = Vec::new();
        PacketBuilder::ethernet2(mac, [2, 0, 0, 0, 0, 1])
            .ipv6(source, [0xfd; 16], 255)
            .icmpv6(Icmpv6Type::NeighborAdvertisement(
                etherparse::icmpv6::NeighborAdvertisementHeader {
                    router: true,
                    solicited: true,
                    r#override: true,
                },
            ))
            .write(&mut advertisement, &source)
            .unwrap();
        assert_eq!(
            announced_neighbour(&advertisement),
            Some(("fd00:1::fe".parse().unwrap(), MacAddr(mac)))
        );

        let mut tcp = Vec::new();
        PacketBuilder::ethernet2(mac, [2, 0, 0, 0, 0, 1])
            .ipv4([10, 0, 1, 254], [10, 0, 1, 1], 64)
            .tcp(1, 2, 3, 4)
            .write(&mut tcp, &[])
            .unwrap();
        assert_eq!(announced_neighbour(&tcp), None);
    }
}
