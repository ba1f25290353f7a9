//! Capture files: reading pcap and pcapng for offline analysis (`flagtrace pcap`).
//!
//! [`CaptureReader`] streams a file one packet at a time through a bounded buffer (pcap-parser's
//! streaming readers), so a capture of any size is read in constant memory. Each packet comes
//! out as an Ethernet frame, the input of the parser the kernel programs use
//! (`tracer_ebpf::parse`): Ethernet records as they are, Linux cooked (SLL, SLL2) and raw IP
//! records behind a synthesised Ethernet header.
//!
//! Link types: a pcap file has one for all its packets, so an unsupported one fails at
//! [`CaptureReader::open`]. A pcapng file has one per interface, and an interface we cannot read
//! (say, a USB bus captured alongside eth0) must not stop the analysis of the others: its packets
//! are skipped and counted per link type ([`CaptureReader::skipped`]), for the caller to report.
//!
//! A truncated or corrupt file yields every packet before the damage, then one
//! [`CaptureError`] naming the byte offset and why; after that, nothing.
//!
//! The stages, a module each: `reader` (the file, its buffer and its errors), [`pcap`] and
//! `pcapng` (each format's headers and records), `link` (link layers to Ethernet) and
//! `progress` (the progress bar of a long read).

mod link;
pub mod pcap;
mod pcapng;
mod progress;
mod reader;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::{fmt, ops::Range, path::PathBuf};

pub use link::LinkType;
pub use reader::{CaptureReader, Input};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Which way a packet went, relative to the capturing host's interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// One packet of a capture file, valid until the reader's next call.
#[derive(Debug)]
pub struct CapturedPacket<'a> {
    /// Nanoseconds since the Unix epoch; 0 for pcapng simple packet blocks, which have no time.
    pub ts_unix_ns: u64,
    /// Where its record (pcap) or block (pcapng) starts in the file.
    pub offset: u64,
    /// Length on the wire, as the file records it (of the link layer the file has).
    pub original_len: u32,
    /// Bytes the file holds of it (at most `original_len`; less under a snap length).
    pub captured_len: u32,
    pub link_type: LinkType,
    /// From the pcapng `epb_flags` option, else from the Linux cooked header's packet type.
    pub direction: Option<Direction>,
    /// The pcapng interface id of the packet (its interface description block's index in the
    /// section); `None` in a pcap file, which has one interface and no ids.
    pub interface: Option<u32>,
    /// That interface's `if_name` option, when the file gives one.
    pub interface_name: Option<&'a str>,
    /// The packet as an Ethernet frame from the MAC header on: the file's bytes for Ethernet,
    /// a synthesised header and the file's payload otherwise. Empty when the record is too short
    /// to hold its own link-layer header, so the parser counts it as malformed.
    pub frame: &'a [u8],
}

/// What went wrong reading a capture file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureErrorKind {
    /// The file could not be opened or read.
    Io,
    /// Neither pcap nor pcapng.
    NotACapture,
    /// The file ends inside a header, record or block.
    Truncated,
    /// A header, record or block that cannot be right.
    Corrupt,
    /// A pcap file of a link type we cannot turn into Ethernet.
    UnsupportedLinkType,
}

/// A capture file that could not be read, from `offset` on. Its message names the file, the
/// offset and the reason, e.g. `capture.pcap: truncated packet record at byte 123456 (needs
/// 1530 bytes, 200 left)`.
#[derive(Debug)]
pub struct CaptureError {
    pub path: PathBuf,
    pub kind: CaptureErrorKind,
    /// The byte where reading failed: the start of the damaged header, record or block.
    pub offset: u64,
    message: String,
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for CaptureError {}

/// A packet found in the buffer, described without borrowing it.
struct Found {
    offset: u64,
    ts_unix_ns: u64,
    original_len: u32,
    captured_len: u32,
    link_type: LinkType,
    direction: Option<Direction>,
    /// The pcapng interface id.
    interface: Option<u32>,
    /// The record's captured bytes: their addresses ([`address_range`]) as the format modules
    /// find them, then their positions in the reader's buffer.
    bytes: Range<usize>,
}

/// Where `data` lies in memory.
fn address_range(data: &[u8]) -> Range<usize> {
    let start = data.as_ptr() as usize;
    start..start + data.len()
}

fn u32_at(data: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let bytes = *data.get(at..)?.first_chunk::<4>()?;
    Some(if big_endian {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    })
}
