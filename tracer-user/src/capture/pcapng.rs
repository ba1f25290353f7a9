//! pcapng: sections of blocks, each section in its own byte order. A section's interface
//! description blocks give each interface its link type, timestamp resolution and name; its
//! packet blocks name their interface by its index in the section.

use std::collections::BTreeMap;

use pcap_parser::{
    pcapng::{Block, OptionCode, PcapNGOption},
    traits::PcapNGPacketBlock as _,
};

use super::{address_range, u32_at, Direction, Found, LinkType, NANOS_PER_SEC};

pub(super) const SHB_TYPE: u32 = 0x0a0d_0d0a;
pub(super) const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
/// Block type and block length: what tells how long a pcapng block is.
pub(super) const BLOCK_HEADER_LEN: usize = 8;
/// Block type, block length and byte-order magic: what tells how long a section header is.
pub(super) const SHB_PREFIX_LEN: usize = 12;
/// Block type, block length, byte-order magic, version, section length, trailing length.
pub(super) const MIN_SHB_LEN: usize = 28;
pub(super) const EPB_TYPE: u32 = 6;
pub(super) const IDB_TYPE: u32 = 1;
/// `epb_flags`: bits 0-1 are the direction (1 inbound, 2 outbound).
pub(super) const EPB_FLAGS: OptionCode = OptionCode(2);

/// The section being read: what its packet blocks mean.
pub(super) struct Section {
    big_endian: bool,
    /// By interface id.
    interfaces: Vec<Interface>,
}

/// A pcapng interface description, as much as reading its packets needs.
struct Interface {
    /// The link type, or its number when we do not read it.
    link_type: Result<LinkType, u32>,
    snaplen: u32,
    /// Timestamp units per second (`if_tsresol`).
    units_per_sec: u64,
    /// Seconds added to every timestamp (`if_tsoffset`).
    offset_secs: i64,
    /// `if_name`, e.g. `eth0`.
    name: Option<String>,
}

impl Section {
    /// A section in this byte order (true: big-endian) whose interfaces are still to come.
    pub(super) fn new(big_endian: bool) -> Section {
        Section {
            big_endian,
            interfaces: Vec::new(),
        }
    }

    /// Turns the block at `offset` into a packet, or takes in a section header or interface
    /// description and returns `None`. A packet of a link type we do not read is counted in
    /// `skipped`, and `None` too.
    pub(super) fn read_block(
        &mut self,
        skipped: &mut BTreeMap<u32, u64>,
        offset: u64,
        block: Block<'_>,
    ) -> Result<Option<Found>, String> {
        match block {
            Block::SectionHeader(shb) => {
                // Interface ids are per section.
                *self = Section::new(shb.big_endian());
                Ok(None)
            }
            Block::InterfaceDescription(idb) => {
                let code = u32::from(idb.linktype.0 as u16);
                let units_per_sec = units_per_sec(idb.if_tsresol).ok_or_else(|| {
                    format!(
                        "interface description block at byte {offset} has an invalid \
                         if_tsresol {:#04x}",
                        idb.if_tsresol
                    )
                })?;
                // pcap-parser reads if_tsoffset as little-endian whatever the section's order.
                let offset_secs = option(&idb.options, OptionCode::IfTsoffset)
                    .and_then(|value| value.first_chunk::<8>())
                    .map_or(0, |bytes| {
                        if self.big_endian {
                            i64::from_be_bytes(*bytes)
                        } else {
                            i64::from_le_bytes(*bytes)
                        }
                    });
                let name = option(&idb.options, OptionCode::IfName).map(|name| {
                    String::from_utf8_lossy(name)
                        .trim_end_matches('\0')
                        .to_owned()
                });
                self.interfaces.push(Interface {
                    link_type: LinkType::from_code(code).ok_or(code),
                    snaplen: idb.snaplen,
                    units_per_sec,
                    offset_secs,
                    name,
                });
                Ok(None)
            }
            Block::EnhancedPacket(epb) => {
                let Some((interface, link_type)) =
                    self.packet_interface(epb.if_id, offset, skipped)?
                else {
                    return Ok(None);
                };
                let ticks = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                let direction = option(&epb.options, EPB_FLAGS)
                    .and_then(|value| u32_at(value, 0, self.big_endian))
                    .and_then(|flags| match flags & 0b11 {
                        1 => Some(Direction::Inbound),
                        2 => Some(Direction::Outbound),
                        _ => None,
                    });
                let data = epb.packet_data();
                Ok(Some(Found {
                    offset,
                    ts_unix_ns: interface.unix_ns(ticks),
                    original_len: epb.origlen,
                    captured_len: data.len() as u32,
                    link_type,
                    direction,
                    interface: Some(epb.if_id),
                    bytes: address_range(data),
                }))
            }
            Block::SimplePacket(spb) => {
                let Some((interface, link_type)) = self.packet_interface(0, offset, skipped)?
                else {
                    return Ok(None);
                };
                // The block holds min(original length, snap length) bytes, then padding.
                let mut captured = spb.origlen.min(spb.data.len() as u32);
                if interface.snaplen != 0 {
                    captured = captured.min(interface.snaplen);
                }
                Ok(Some(Found {
                    offset,
                    ts_unix_ns: 0,
                    original_len: spb.origlen,
                    captured_len: captured,
                    link_type,
                    direction: None,
                    interface: Some(0),
                    bytes: address_range(&spb.data[..captured as usize]),
                }))
            }
            // Name resolution, statistics, secrets, custom blocks: nothing about packets.
            _ => Ok(None),
        }
    }

    /// The interface a packet block at `offset` names, with its link type; `None` for a link
    /// type we do not read, whose packet is counted in `skipped`.
    fn packet_interface(
        &self,
        id: u32,
        offset: u64,
        skipped: &mut BTreeMap<u32, u64>,
    ) -> Result<Option<(&Interface, LinkType)>, String> {
        let interface = self.interfaces.get(id as usize).ok_or_else(|| {
            format!(
                "packet block at byte {offset} names interface {id}, but its section describes {}",
                self.interfaces.len()
            )
        })?;
        match interface.link_type {
            Ok(link_type) => Ok(Some((interface, link_type))),
            Err(code) => {
                *skipped.entry(code).or_default() += 1;
                Ok(None)
            }
        }
    }

    /// The `if_name` of interface `id`, when it has one.
    pub(super) fn interface_name(&self, id: u32) -> Option<&str> {
        self.interfaces
            .get(id as usize)
            .and_then(|interface| interface.name.as_deref())
    }

    /// The whole length of the block starting `data`, from its header, if all of the header is
    /// there.
    pub(super) fn block_len(&self, data: &[u8]) -> Option<usize> {
        // A new section header has its own byte order.
        if u32_at(data, 0, false)? == SHB_TYPE {
            return shb_len(data).map(|(len, _)| len);
        }
        Some(u32_at(data, 4, self.big_endian)? as usize)
    }

    /// What is wrong with the block starting `data`, which pcap-parser rejected in its `check`:
    /// its two lengths disagree, most often.
    pub(super) fn corruption(&self, data: &[u8], check: &str) -> String {
        let lengths = self.block_len(data).and_then(|len| {
            let trailing = u32_at(data, len.checked_sub(4)?, self.big_endian)?;
            Some((len, trailing as usize))
        });
        match lengths {
            Some((len, trailing)) if len != trailing => {
                format!("its length is {len} at its start and {trailing} at its end")
            }
            Some((len, _)) => format!("length {len}, failed the parser's {check} check"),
            None => format!("failed the parser's {check} check"),
        }
    }
}

impl Interface {
    /// A timestamp in this interface's units, in nanoseconds since the Unix epoch.
    fn unix_ns(&self, ticks: u64) -> u64 {
        let ns = i128::from(ticks) * i128::from(NANOS_PER_SEC) / i128::from(self.units_per_sec)
            + i128::from(self.offset_secs) * i128::from(NANOS_PER_SEC);
        ns.clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// Timestamp units per second for an `if_tsresol` value: 10^-n seconds, or 2^-n with the high
/// bit set. (pcap-parser's own `ts_resolution` refuses every power of two: it checks the exponent
/// with the flag bit still on.)
fn units_per_sec(tsresol: u8) -> Option<u64> {
    let exponent = u32::from(tsresol & 0x7f);
    if tsresol & 0x80 == 0 {
        10u64.checked_pow(exponent)
    } else {
        1u64.checked_shl(exponent)
    }
}

/// The value of the first option with this code, without its padding.
fn option<'a>(options: &'a [PcapNGOption<'_>], code: OptionCode) -> Option<&'a [u8]> {
    options
        .iter()
        .find(|option| option.code == code)
        .and_then(|option| option.as_bytes().ok())
}

/// A section header block's length and byte order (true: big-endian), from its first
/// [`SHB_PREFIX_LEN`] bytes.
pub(super) fn shb_len(data: &[u8]) -> Option<(usize, bool)> {
    let big_endian = match u32_at(data, 8, false)? {
        BYTE_ORDER_MAGIC => false,
        magic if magic.swap_bytes() == BYTE_ORDER_MAGIC => true,
        _ => return None,
    };
    Some((u32_at(data, 4, big_endian)? as usize, big_endian))
}

/// What the block starting `block` is, for messages.
pub(super) fn block_name(block: &[u8]) -> &'static str {
    let block_type = u32_at(block, 0, false);
    match block_type.map(|t| (t, t.swap_bytes())) {
        Some((EPB_TYPE, _) | (_, EPB_TYPE)) => "enhanced packet block",
        Some((IDB_TYPE, _) | (_, IDB_TYPE)) => "interface description block",
        Some((SHB_TYPE, _)) => "section header block",
        _ => "block",
    }
}
