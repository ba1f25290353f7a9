//! Capture files: reading pcap and pcapng for offline analysis (`flagtrace pcap`), and writing
//! classic pcap for the live reset stream's export (`flagtrace watch --pcap`).
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

use std::{
    collections::BTreeMap,
    fmt,
    fs::File,
    io::{self, Cursor, IsTerminal, Read, Write},
    ops::Range,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use pcap_parser::{
    pcapng::{Block, OptionCode, PcapNGOption},
    traits::{PcapNGPacketBlock as _, PcapReaderIterator},
    LegacyPcapReader, PcapBlockOwned, PcapError, PcapNGReader,
};

/// The first read fills this much; larger records grow the buffer (up to [`MAX_RECORD_LEN`]).
/// 1 MiB holds several records of the usual 262144-byte snap length.
const INITIAL_BUFFER_LEN: usize = 1 << 20;
/// The largest record or block accepted. Real captures stay far below (Wireshark's largest snap
/// length is 256 KiB for most link types); a larger length field is corruption, and must not
/// make the reader allocate gigabytes.
const MAX_RECORD_LEN: usize = 16 << 20;
/// Files smaller than this read in about a second: no progress bar.
const PROGRESS_MIN_FILE_LEN: u64 = 64 << 20;
/// Redraw the progress bar at most once per this many bytes.
const PROGRESS_STEP: u64 = 1 << 20;

const PCAP_HEADER_LEN: usize = 24;
const PCAP_RECORD_HEADER_LEN: usize = 16;
const PCAP_MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const PCAP_MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const PCAPNG_SHB_TYPE: u32 = 0x0a0d_0d0a;
const PCAPNG_BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
/// Block type and block length: what tells how long a pcapng block is.
const PCAPNG_BLOCK_HEADER_LEN: usize = 8;
/// Block type, block length and byte-order magic: what tells how long a section header is.
const PCAPNG_SHB_PREFIX_LEN: usize = 12;
/// Block type, block length, byte-order magic, version, section length, trailing length.
const PCAPNG_MIN_SHB_LEN: usize = 28;
const PCAPNG_EPB_TYPE: u32 = 6;
const PCAPNG_IDB_TYPE: u32 = 1;
/// `epb_flags`: bits 0-1 are the direction (1 inbound, 2 outbound).
const EPB_FLAGS: OptionCode = OptionCode(2);

const SLL_HEADER_LEN: usize = 16;
const SLL2_HEADER_LEN: usize = 20;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// Linux `sll_pkttype` values 0-3 (to us, broadcast, multicast, to another host) were received.
const PACKET_OTHERHOST: u8 = 3;
const PACKET_OUTGOING: u8 = 4;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The link types the reader turns into Ethernet frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// LINKTYPE_ETHERNET (1).
    Ethernet,
    /// LINKTYPE_LINUX_SLL (113): Linux cooked capture, as from `tcpdump -i any` before libpcap 1.10.
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276): Linux cooked capture v2, with the interface index.
    LinuxSll2,
    /// LINKTYPE_RAW (101): IPv4 or IPv6, by the version nibble.
    RawIp,
    /// LINKTYPE_IPV4 (228).
    Ipv4,
    /// LINKTYPE_IPV6 (229).
    Ipv6,
}

impl LinkType {
    /// The link type a capture file's header or interface block names, if we read it.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => LinkType::Ethernet,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            101 => LinkType::RawIp,
            228 => LinkType::Ipv4,
            229 => LinkType::Ipv6,
            _ => return None,
        })
    }

    /// Its number in capture files (the tcpdump.org LINKTYPE_ registry).
    pub fn code(self) -> u32 {
        match self {
            LinkType::Ethernet => 1,
            LinkType::LinuxSll => 113,
            LinkType::LinuxSll2 => 276,
            LinkType::RawIp => 101,
            LinkType::Ipv4 => 228,
            LinkType::Ipv6 => 229,
        }
    }
}

impl fmt::Display for LinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            LinkType::Ethernet => "ETHERNET",
            LinkType::LinuxSll => "LINUX_SLL",
            LinkType::LinuxSll2 => "LINUX_SLL2",
            LinkType::RawIp => "RAW",
            LinkType::Ipv4 => "IPV4",
            LinkType::Ipv6 => "IPV6",
        };
        write!(f, "{name} ({})", self.code())
    }
}

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

/// Streams the packets of a pcap or pcapng file; see the module documentation.
pub struct CaptureReader {
    path: PathBuf,
    file_len: u64,
    blocks: Box<dyn PcapReaderIterator + Send>,
    layout: Layout,
    /// The last packet's record, still in the buffer because the packet borrows it; consumed at
    /// the start of the next call.
    pending_consume: usize,
    /// Where synthesised Ethernet frames are built, reused from packet to packet.
    scratch: Vec<u8>,
    skipped: BTreeMap<u32, u64>,
    /// The error pcap-parser's `ReadError` stands for (it keeps no detail).
    read_error: Arc<Mutex<Option<io::Error>>>,
    progress: Option<Progress>,
    finished: bool,
}

/// What the records mean: fixed for a pcap file, per section and interface for pcapng.
enum Layout {
    Pcap {
        link_type: LinkType,
        nanos: bool,
        big_endian: bool,
    },
    PcapNg {
        /// The byte order of the current section.
        big_endian: bool,
        /// The interfaces of the current section, by interface id.
        interfaces: Vec<Interface>,
    },
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
    /// The record's captured bytes: their addresses from [`read_block`], then their positions
    /// in the buffer's data.
    bytes: Range<usize>,
}

/// The reason a block could not be parsed, without the borrowed input pcap-parser's errors hold.
enum Stop {
    Eof,
    NeedMoreData,
    BufferTooSmall,
    UnexpectedEof,
    ReadError,
    Invalid(String),
}

impl From<PcapError<&[u8]>> for Stop {
    fn from(error: PcapError<&[u8]>) -> Self {
        match error {
            PcapError::Eof => Stop::Eof,
            PcapError::Incomplete(_) => Stop::NeedMoreData,
            PcapError::BufferTooSmall => Stop::BufferTooSmall,
            PcapError::UnexpectedEof => Stop::UnexpectedEof,
            PcapError::ReadError => Stop::ReadError,
            PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
                Stop::Invalid(format!("{kind:?}"))
            }
            PcapError::HeaderNotRecognized => Stop::Invalid("header not recognised".into()),
        }
    }
}

impl CaptureReader {
    /// Opens a capture file and reads its header. Packets come from [`CaptureReader::next`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CaptureError> {
        let path = path.as_ref().to_owned();
        let fail = |kind, offset, message: String| CaptureError {
            path: path.clone(),
            kind,
            offset,
            message,
        };
        let mut file = File::open(&path)
            .map_err(|e| fail(CaptureErrorKind::Io, 0, format!("cannot open: {e}")))?;
        let file_len = file
            .metadata()
            .map_err(|e| {
                fail(
                    CaptureErrorKind::Io,
                    0,
                    format!("cannot read metadata: {e}"),
                )
            })?
            .len();

        let (layout, header) =
            read_file_header(&mut file).map_err(|(kind, message)| fail(kind, 0, message))?;

        // pcap-parser's readers parse the header from their first read, so that read must return
        // all of it: the chain's first read returns exactly the bytes read above.
        let read_error_slot = Arc::default();
        let source = Source {
            inner: Cursor::new(header).chain(file),
            error: Arc::clone(&read_error_slot),
        };
        let parser_error = |e: PcapError<&[u8]>| {
            fail(
                CaptureErrorKind::Corrupt,
                0,
                format!("cannot read the file header: {e}"),
            )
        };
        let blocks: Box<dyn PcapReaderIterator + Send> = match layout {
            Layout::Pcap { .. } => {
                Box::new(LegacyPcapReader::new(INITIAL_BUFFER_LEN, source).map_err(parser_error)?)
            }
            Layout::PcapNg { .. } => {
                Box::new(PcapNGReader::new(INITIAL_BUFFER_LEN, source).map_err(parser_error)?)
            }
        };
        Ok(CaptureReader {
            path,
            file_len,
            blocks,
            layout,
            pending_consume: 0,
            scratch: Vec::new(),
            skipped: BTreeMap::new(),
            read_error: read_error_slot,
            progress: None,
            finished: false,
        })
    }

    /// Shows a progress bar on stderr while reading, if stderr is a terminal and the file is
    /// large enough for it to matter; otherwise nothing changes.
    pub fn with_progress(mut self) -> Self {
        if shows_progress(io::stderr().is_terminal(), self.file_len) {
            self.progress = Some(Progress::new(&self.path, self.file_len));
        }
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size when it was opened.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Bytes read so far: where the next record starts.
    pub fn position(&self) -> u64 {
        (self.blocks.consumed() + self.pending_consume) as u64
    }

    /// Packets skipped so far because their pcapng interface has a link type we do not read:
    /// count by link type number.
    pub fn skipped(&self) -> &BTreeMap<u32, u64> {
        &self.skipped
    }

    /// The next packet; `None` at the end of the file. After an error, `None` too: a damaged
    /// file is not resynchronised, since what follows the damage cannot be trusted.
    #[allow(clippy::should_implement_trait)] // a lending iterator: each packet borrows the reader
    pub fn next(&mut self) -> Option<Result<CapturedPacket<'_>, CaptureError>> {
        if self.finished {
            return None;
        }
        let found = match self.advance() {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.finish();
                return None;
            }
            Err(error) => {
                self.finish();
                return Some(Err(error));
            }
        };
        if let Some(progress) = &mut self.progress {
            progress.update(found.offset);
        }
        let record = &self.blocks.data()[found.bytes];
        let (frame, link_direction) = ethernet_frame(found.link_type, record, &mut self.scratch);
        let interface_name = match (&self.layout, found.interface) {
            (Layout::PcapNg { interfaces, .. }, Some(id)) => interfaces
                .get(id as usize)
                .and_then(|interface| interface.name.as_deref()),
            _ => None,
        };
        Some(Ok(CapturedPacket {
            ts_unix_ns: found.ts_unix_ns,
            offset: found.offset,
            original_len: found.original_len,
            captured_len: found.captured_len,
            link_type: found.link_type,
            direction: found.direction.or(link_direction),
            interface: found.interface,
            interface_name,
            frame,
        }))
    }

    fn finish(&mut self) {
        self.finished = true;
        if let Some(progress) = self.progress.take() {
            progress.bar.finish_and_clear();
        }
    }

    /// Reads blocks up to the next packet, whose bytes stay in the buffer until the next call.
    fn advance(&mut self) -> Result<Option<Found>, CaptureError> {
        self.blocks
            .consume(std::mem::take(&mut self.pending_consume));
        loop {
            let offset = self.blocks.consumed() as u64;
            let stop = match self.blocks.next() {
                Ok((len, block)) => {
                    let found = read_block(&mut self.layout, &mut self.skipped, offset, block)
                        .map_err(|message| {
                            error(&self.path, CaptureErrorKind::Corrupt, offset, message)
                        })?;
                    match found {
                        Some(mut found) => {
                            // Buffer positions, not pointers: the block borrows the reader, and
                            // the packet must borrow it again once the block is gone.
                            let start = found.bytes.start - self.blocks.data().as_ptr() as usize;
                            found.bytes = start..start + found.bytes.len();
                            self.pending_consume = len;
                            return Ok(Some(found));
                        }
                        None => {
                            self.blocks.consume(len);
                            continue;
                        }
                    }
                }
                Err(e) => Stop::from(e),
            };
            match stop {
                Stop::Eof => return Ok(None),
                Stop::NeedMoreData => self.refill(offset)?,
                Stop::BufferTooSmall => {
                    let needed = self.record_len(self.blocks.data()).ok_or_else(|| {
                        error(
                            &self.path,
                            CaptureErrorKind::Corrupt,
                            offset,
                            "buffer too small for a record header".into(),
                        )
                    })?;
                    self.check_record_len(offset, needed)?;
                    // Room for this record, and for reading ahead of it.
                    if !self.blocks.grow(2 * needed) {
                        // It fits, yet pcap-parser wants more: refilling would loop forever.
                        return Err(error(
                            &self.path,
                            CaptureErrorKind::Corrupt,
                            offset,
                            format!("unreadable {} at byte {offset}", self.record_name()),
                        ));
                    }
                    self.refill(offset)?;
                }
                Stop::UnexpectedEof => return Err(self.truncated(offset)),
                Stop::ReadError => return Err(self.read_failed(offset)),
                Stop::Invalid(check) => return Err(self.corrupt(offset, &check)),
            }
        }
    }

    fn refill(&mut self, offset: u64) -> Result<(), CaptureError> {
        if self.blocks.refill().is_err() {
            return Err(self.read_failed(offset));
        }
        Ok(())
    }

    fn read_failed(&self, offset: u64) -> CaptureError {
        let cause = match self.read_error.lock().expect("read error lock").take() {
            Some(e) => e.to_string(),
            None => "unknown".into(),
        };
        error(
            &self.path,
            CaptureErrorKind::Io,
            offset,
            format!("read error at byte {offset}: {cause}"),
        )
    }

    /// The error for a file that ends inside the record at `offset`, whose bytes are all that is
    /// left in the buffer.
    fn truncated(&self, offset: u64) -> CaptureError {
        let left = self.blocks.data();
        let header_len = match self.layout {
            Layout::Pcap { .. } => PCAP_RECORD_HEADER_LEN,
            Layout::PcapNg { .. } => PCAPNG_BLOCK_HEADER_LEN,
        };
        let Some(needs) = self.record_len(left) else {
            return error(
                &self.path,
                CaptureErrorKind::Truncated,
                offset,
                format!(
                    "truncated {} header at byte {offset} (needs {header_len} bytes, {} left)",
                    self.record_name(),
                    left.len()
                ),
            );
        };
        if let Err(corrupt) = self.check_record_len(offset, needs) {
            return corrupt;
        }
        let what = match self.layout {
            Layout::Pcap { .. } => "packet record".to_string(),
            Layout::PcapNg { .. } => pcapng_block_name(left).to_string(),
        };
        error(
            &self.path,
            CaptureErrorKind::Truncated,
            offset,
            format!(
                "truncated {what} at byte {offset} (needs {needs} bytes, {} left)",
                left.len()
            ),
        )
    }

    /// The error for a record or block at `offset` that pcap-parser rejected in `check`.
    fn corrupt(&self, offset: u64, check: &str) -> CaptureError {
        let data = self.blocks.data();
        let (what, detail) = match self.layout {
            Layout::Pcap { .. } => ("record", format!("failed the parser's {check} check")),
            Layout::PcapNg { big_endian, .. } => {
                let lengths = self.record_len(data).and_then(|len| {
                    let trailing = u32_at(data, len.checked_sub(4)?, big_endian)?;
                    Some((len, trailing as usize))
                });
                let detail = match lengths {
                    Some((len, trailing)) if len != trailing => {
                        format!("its length is {len} at its start and {trailing} at its end")
                    }
                    Some((len, _)) => format!("length {len}, failed the parser's {check} check"),
                    None => format!("failed the parser's {check} check"),
                };
                (pcapng_block_name(data), detail)
            }
        };
        error(
            &self.path,
            CaptureErrorKind::Corrupt,
            offset,
            format!("corrupt {what} at byte {offset}: {detail}"),
        )
    }

    fn record_name(&self) -> &'static str {
        match self.layout {
            Layout::Pcap { .. } => "record",
            Layout::PcapNg { .. } => "block",
        }
    }

    /// The whole length of the record or block starting `data`, from its header, if all of the
    /// header is there.
    fn record_len(&self, data: &[u8]) -> Option<usize> {
        match self.layout {
            Layout::Pcap { big_endian, .. } => {
                let header = data.get(..PCAP_RECORD_HEADER_LEN)?;
                let captured = u32_at(header, 8, big_endian)?;
                Some(PCAP_RECORD_HEADER_LEN + captured as usize)
            }
            Layout::PcapNg { big_endian, .. } => {
                // A new section header has its own byte order.
                if u32_at(data, 0, false)? == PCAPNG_SHB_TYPE {
                    return shb_len(data).map(|(len, _)| len);
                }
                Some(u32_at(data, 4, big_endian)? as usize)
            }
        }
    }

    fn check_record_len(&self, offset: u64, len: usize) -> Result<(), CaptureError> {
        if len > MAX_RECORD_LEN {
            return Err(error(
                &self.path,
                CaptureErrorKind::Corrupt,
                offset,
                format!(
                    "corrupt {} at byte {offset}: claims {len} bytes, more than the {} MiB a \
                     record can have",
                    self.record_name(),
                    MAX_RECORD_LEN >> 20
                ),
            ));
        }
        Ok(())
    }
}

/// Reads and checks the file header (pcap) or first section header block (pcapng), and returns
/// the layout it announces with the bytes read. Done here rather than by pcap-parser, whose
/// errors say neither "empty", nor "truncated", nor what the first bytes were.
fn read_file_header(file: &mut File) -> Result<(Layout, Vec<u8>), (CaptureErrorKind, String)> {
    let read_error = |e: io::Error| (CaptureErrorKind::Io, format!("read error: {e}"));
    let mut header = read_up_to(file, PCAP_HEADER_LEN).map_err(read_error)?;
    let truncated_header = |what: &str, needs: usize, left: usize| {
        (
            CaptureErrorKind::Truncated,
            format!("truncated {what} at byte 0 (needs {needs} bytes, {left} left)"),
        )
    };
    let Some(magic) = header.first_chunk::<4>() else {
        return Err((
            CaptureErrorKind::NotACapture,
            if header.is_empty() {
                "empty file, not a pcap or pcapng capture".into()
            } else {
                format!("not a pcap or pcapng capture ({} bytes)", header.len())
            },
        ));
    };
    let layout = match (u32::from_le_bytes(*magic), u32::from_be_bytes(*magic)) {
        (PCAPNG_SHB_TYPE, _) => {
            if header.len() < PCAPNG_SHB_PREFIX_LEN {
                return Err(truncated_header(
                    "section header block",
                    PCAPNG_MIN_SHB_LEN,
                    header.len(),
                ));
            }
            let (shb_len, big_endian) = shb_len(&header).ok_or_else(|| {
                (
                    CaptureErrorKind::Corrupt,
                    "pcapng section header block at byte 0 has no valid byte-order magic".into(),
                )
            })?;
            if !(PCAPNG_MIN_SHB_LEN..=MAX_RECORD_LEN).contains(&shb_len) || shb_len % 4 != 0 {
                return Err((
                    CaptureErrorKind::Corrupt,
                    format!("pcapng section header block at byte 0 has length {shb_len}"),
                ));
            }
            let rest = read_up_to(file, shb_len - header.len()).map_err(read_error)?;
            header.extend_from_slice(&rest);
            if header.len() < shb_len {
                return Err(truncated_header(
                    "section header block",
                    shb_len,
                    header.len(),
                ));
            }
            Layout::PcapNg {
                big_endian,
                interfaces: Vec::new(),
            }
        }
        (PCAP_MAGIC_MICROS | PCAP_MAGIC_NANOS, _) | (_, PCAP_MAGIC_MICROS | PCAP_MAGIC_NANOS) => {
            if header.len() < PCAP_HEADER_LEN {
                return Err(truncated_header(
                    "file header",
                    PCAP_HEADER_LEN,
                    header.len(),
                ));
            }
            let (_, pcap_header) = pcap_parser::parse_pcap_header(&header)
                .map_err(|e| (CaptureErrorKind::Corrupt, format!("bad pcap header: {e}")))?;
            let code = pcap_header.network.0 as u32;
            let link_type = LinkType::from_code(code).ok_or_else(|| {
                (
                    CaptureErrorKind::UnsupportedLinkType,
                    format!(
                        "link type {code} is not supported (supported: Ethernet, Linux \
                         cooked SLL and SLL2, raw IP)"
                    ),
                )
            })?;
            Layout::Pcap {
                link_type,
                nanos: pcap_header.is_nanosecond_precision(),
                big_endian: pcap_header.is_bigendian(),
            }
        }
        _ => {
            return Err((
                CaptureErrorKind::NotACapture,
                format!(
                    "not a pcap or pcapng capture (starts with {:02x} {:02x} {:02x} {:02x})",
                    magic[0], magic[1], magic[2], magic[3]
                ),
            ))
        }
    };
    Ok((layout, header))
}

fn error(path: &Path, kind: CaptureErrorKind, offset: u64, message: String) -> CaptureError {
    CaptureError {
        path: path.to_owned(),
        kind,
        offset,
        message,
    }
}

/// Turns one parsed block into a packet, or updates the layout (pcapng section and interface
/// blocks) and returns `None`. `found.bytes` holds the packet's address range in memory.
fn read_block(
    layout: &mut Layout,
    skipped: &mut BTreeMap<u32, u64>,
    offset: u64,
    block: PcapBlockOwned<'_>,
) -> Result<Option<Found>, String> {
    let address_range = |data: &[u8]| {
        let start = data.as_ptr() as usize;
        start..start + data.len()
    };
    match (layout, block) {
        (
            Layout::Pcap {
                link_type, nanos, ..
            },
            PcapBlockOwned::Legacy(record),
        ) => {
            let fraction_ns = if *nanos {
                u64::from(record.ts_usec)
            } else {
                u64::from(record.ts_usec) * 1000
            };
            Ok(Some(Found {
                offset,
                ts_unix_ns: u64::from(record.ts_sec) * NANOS_PER_SEC + fraction_ns,
                original_len: record.origlen,
                captured_len: record.caplen,
                link_type: *link_type,
                direction: None,
                interface: None,
                bytes: address_range(record.data),
            }))
        }
        (Layout::Pcap { .. }, _) => Ok(None), // the file header, read at open
        (
            Layout::PcapNg {
                big_endian,
                interfaces,
            },
            PcapBlockOwned::NG(block),
        ) => match block {
            Block::SectionHeader(shb) => {
                *big_endian = shb.big_endian();
                // Interface ids are per section.
                interfaces.clear();
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
                        if *big_endian {
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
                interfaces.push(Interface {
                    link_type: LinkType::from_code(code).ok_or(code),
                    snaplen: idb.snaplen,
                    units_per_sec,
                    offset_secs,
                    name,
                });
                Ok(None)
            }
            Block::EnhancedPacket(epb) => {
                let interface = interface(interfaces, epb.if_id, offset)?;
                let Ok(link_type) = interface.link_type else {
                    *skipped.entry(interface.link_type.unwrap_err()).or_default() += 1;
                    return Ok(None);
                };
                let ticks = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                let direction = option(&epb.options, EPB_FLAGS)
                    .and_then(|value| u32_at(value, 0, *big_endian))
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
                let interface = interface(interfaces, 0, offset)?;
                let Ok(link_type) = interface.link_type else {
                    *skipped.entry(interface.link_type.unwrap_err()).or_default() += 1;
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
        },
        (Layout::PcapNg { .. }, _) => Ok(None),
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

fn interface(interfaces: &[Interface], id: u32, offset: u64) -> Result<&Interface, String> {
    interfaces.get(id as usize).ok_or_else(|| {
        format!(
            "packet block at byte {offset} names interface {id}, but its section describes {}",
            interfaces.len()
        )
    })
}

impl Interface {
    /// A timestamp in this interface's units, in nanoseconds since the Unix epoch.
    fn unix_ns(&self, ticks: u64) -> u64 {
        let ns = i128::from(ticks) * i128::from(NANOS_PER_SEC) / i128::from(self.units_per_sec)
            + i128::from(self.offset_secs) * i128::from(NANOS_PER_SEC);
        ns.clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// The value of the first option with this code, without its padding.
fn option<'a>(options: &'a [PcapNGOption<'_>], code: OptionCode) -> Option<&'a [u8]> {
    options
        .iter()
        .find(|option| option.code == code)
        .and_then(|option| option.as_bytes().ok())
}

fn u32_at(data: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let bytes = *data.get(at..)?.first_chunk::<4>()?;
    Some(if big_endian {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    })
}

/// A pcapng section header block's length and byte order (true: big-endian), from its first 12
/// bytes.
fn shb_len(data: &[u8]) -> Option<(usize, bool)> {
    let big_endian = match u32_at(data, 8, false)? {
        PCAPNG_BYTE_ORDER_MAGIC => false,
        magic if magic.swap_bytes() == PCAPNG_BYTE_ORDER_MAGIC => true,
        _ => return None,
    };
    Some((u32_at(data, 4, big_endian)? as usize, big_endian))
}

fn pcapng_block_name(block: &[u8]) -> &'static str {
    let block_type = u32_at(block, 0, false);
    match block_type.map(|t| (t, t.swap_bytes())) {
        Some((PCAPNG_EPB_TYPE, _) | (_, PCAPNG_EPB_TYPE)) => "enhanced packet block",
        Some((PCAPNG_IDB_TYPE, _) | (_, PCAPNG_IDB_TYPE)) => "interface description block",
        Some((PCAPNG_SHB_TYPE, _)) => "section header block",
        _ => "block",
    }
}

/// The packet as an Ethernet frame, and the direction its link-layer header tells. Ethernet
/// records are returned as they are; others get a synthesised 14-byte header in `scratch`.
fn ethernet_frame<'a>(
    link_type: LinkType,
    record: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> (&'a [u8], Option<Direction>) {
    // (source MAC, EtherType, header length, direction)
    let (src, ether_type, header_len, direction) = match link_type {
        LinkType::Ethernet => return (record, None),
        LinkType::LinuxSll => {
            let Some(header) = record.first_chunk::<SLL_HEADER_LEN>() else {
                return (&[], None);
            };
            let packet_type = u16::from_be_bytes([header[0], header[1]]);
            let addr_len = u16::from_be_bytes([header[4], header[5]]);
            (
                mac_from_link_address(&header[6..14], addr_len.into()),
                u16::from_be_bytes([header[14], header[15]]),
                SLL_HEADER_LEN,
                u8::try_from(packet_type).ok().and_then(direction_of),
            )
        }
        LinkType::LinuxSll2 => {
            let Some(header) = record.first_chunk::<SLL2_HEADER_LEN>() else {
                return (&[], None);
            };
            (
                mac_from_link_address(&header[12..20], header[11].into()),
                u16::from_be_bytes([header[0], header[1]]),
                SLL2_HEADER_LEN,
                direction_of(header[10]),
            )
        }
        LinkType::RawIp => {
            let ether_type = match record.first().map(|byte| byte >> 4) {
                Some(4) => ETH_P_IPV4,
                Some(6) => ETH_P_IPV6,
                // Not IP: the parser will say so.
                _ => 0,
            };
            ([0; 6], ether_type, 0, None)
        }
        LinkType::Ipv4 => ([0; 6], ETH_P_IPV4, 0, None),
        LinkType::Ipv6 => ([0; 6], ETH_P_IPV6, 0, None),
    };
    scratch.clear();
    scratch.extend_from_slice(&[0; 6]);
    scratch.extend_from_slice(&src);
    // VLAN tags, if any, follow the cooked header's protocol field as they follow an Ethernet
    // header's EtherType: the rest of the record is copied as it is.
    scratch.extend_from_slice(&ether_type.to_be_bytes());
    scratch.extend_from_slice(&record[header_len..]);
    (scratch, direction)
}

/// A cooked header's link-layer address as a source MAC, when it is one (6 bytes).
fn mac_from_link_address(address: &[u8], len: usize) -> [u8; 6] {
    match address.first_chunk::<6>() {
        Some(mac) if len == 6 => *mac,
        _ => [0; 6],
    }
}

fn direction_of(packet_type: u8) -> Option<Direction> {
    match packet_type {
        0..=PACKET_OTHERHOST => Some(Direction::Inbound),
        PACKET_OUTGOING => Some(Direction::Outbound),
        _ => None,
    }
}

/// Reads until `len` bytes or the end of the file.
fn read_up_to(file: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The file under pcap-parser, which turns any read error into a bare `ReadError`: the error
/// itself is kept here for the message.
struct Source<R> {
    inner: R,
    error: Arc<Mutex<Option<io::Error>>>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let kind = e.kind();
                    *self.error.lock().expect("read error lock") = Some(e);
                    return Err(kind.into());
                }
                ok => return ok,
            }
        }
    }
}

/// Whether reading a file of `file_len` bytes deserves a progress bar.
fn shows_progress(stderr_is_terminal: bool, file_len: u64) -> bool {
    stderr_is_terminal && file_len > PROGRESS_MIN_FILE_LEN
}

/// A progress bar of bytes read, on stderr.
struct Progress {
    bar: ProgressBar,
    drawn_at: u64,
}

impl Progress {
    fn new(path: &Path, file_len: u64) -> Self {
        let style = ProgressStyle::with_template(
            // The bar takes what the terminal's width leaves, so the line never wraps.
            "{msg} [{wide_bar}] {bytes}/{total_bytes} ({eta} left)",
        )
        .expect("a valid progress template")
        .progress_chars("=> ");
        let name = path.file_name().unwrap_or(path.as_os_str());
        let bar = ProgressBar::new(file_len)
            .with_style(style)
            .with_message(name.to_string_lossy().into_owned());
        Progress { bar, drawn_at: 0 }
    }

    fn update(&mut self, position: u64) {
        if position >= self.drawn_at + PROGRESS_STEP {
            self.bar.set_position(position);
            self.drawn_at = position;
        }
    }
}

/// The snap length the writer declares and cuts packets to: tcpdump's default.
pub const WRITER_SNAPLEN: u32 = 262_144;

/// Writes a classic pcap file (little-endian, nanosecond timestamps, Ethernet) that tcpdump,
/// tshark and Wireshark read. Each packet is written with one `write` call and nothing is
/// buffered, so a process stopped at any moment (Ctrl-C on `watch`) leaves a readable file.
pub struct PcapWriter<W: Write = File> {
    out: W,
    /// One record, built here so it goes out in one write.
    record: Vec<u8>,
}

impl PcapWriter<File> {
    /// Creates (or truncates) `path` and writes the file header.
    pub fn create(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let file =
            File::create(path).with_context(|| format!("creating pcap file {}", path.display()))?;
        PcapWriter::new(file)
            .with_context(|| format!("writing the pcap header to {}", path.display()))
    }
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header to `out`.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut header = Vec::with_capacity(PCAP_HEADER_LEN);
        header.extend_from_slice(&PCAP_MAGIC_NANOS.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&0i32.to_le_bytes()); // timestamps are UTC
        header.extend_from_slice(&0u32.to_le_bytes()); // sigfigs: always 0
        header.extend_from_slice(&WRITER_SNAPLEN.to_le_bytes());
        header.extend_from_slice(&LinkType::Ethernet.code().to_le_bytes());
        out.write_all(&header)?;
        out.flush()?;
        Ok(PcapWriter {
            out,
            record: Vec::new(),
        })
    }

    /// Appends one Ethernet frame captured at `ts_unix_ns` that was `original_len` bytes long on
    /// the wire (`bytes` may hold only its headers). Frames longer than [`WRITER_SNAPLEN`] are
    /// cut to it.
    pub fn write_packet(
        &mut self,
        ts_unix_ns: u64,
        original_len: u32,
        bytes: &[u8],
    ) -> io::Result<()> {
        let captured = &bytes[..bytes.len().min(WRITER_SNAPLEN as usize)];
        let captured_len = captured.len() as u32;
        let seconds = u32::try_from(ts_unix_ns / NANOS_PER_SEC).unwrap_or(u32::MAX);
        let nanos = (ts_unix_ns % NANOS_PER_SEC) as u32;
        self.record.clear();
        self.record.extend_from_slice(&seconds.to_le_bytes());
        self.record.extend_from_slice(&nanos.to_le_bytes());
        self.record.extend_from_slice(&captured_len.to_le_bytes());
        self.record
            .extend_from_slice(&original_len.max(captured_len).to_le_bytes());
        self.record.extend_from_slice(captured);
        self.out.write_all(&self.record)?;
        self.out.flush()
    }

    /// The underlying writer, e.g. the bytes written to a `Vec`.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use etherparse::PacketBuilder;
    use tracer_ebpf::{Packet, TcpSegment};

    use super::*;

    const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const TCP_SYN: u8 = 0x02;
    const TCP_RST: u8 = 0x04;
    const TCP_ACK: u8 = 0x10;

    /// A file in the temporary directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn with(bytes: &[u8]) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "flagtrace-capture-{}-{}.cap",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let file = TempFile(std::env::temp_dir().join(name));
            std::fs::write(&file.0, bytes).expect("writing a temporary capture");
            file
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// What the reader said about one packet, owned.
    #[derive(Debug, PartialEq)]
    struct Seen {
        ts_unix_ns: u64,
        offset: u64,
        original_len: u32,
        captured_len: u32,
        link_type: LinkType,
        direction: Option<Direction>,
        frame: Vec<u8>,
    }

    /// Every packet of `bytes` read as a capture file, and the error that ended it, if any.
    fn read_all(bytes: &[u8]) -> (Vec<Seen>, Option<CaptureError>, BTreeMap<u32, u64>) {
        let file = TempFile::with(bytes);
        let mut reader = match CaptureReader::open(&file.0) {
            Ok(reader) => reader,
            Err(e) => return (Vec::new(), Some(e), BTreeMap::new()),
        };
        let mut seen = Vec::new();
        let mut error = None;
        while let Some(packet) = reader.next() {
            match packet {
                Ok(packet) => seen.push(Seen {
                    ts_unix_ns: packet.ts_unix_ns,
                    offset: packet.offset,
                    original_len: packet.original_len,
                    captured_len: packet.captured_len,
                    link_type: packet.link_type,
                    direction: packet.direction,
                    frame: packet.frame.to_vec(),
                }),
                Err(e) => {
                    assert!(error.is_none(), "a second error after {error:?}: {e}");
                    error = Some(e);
                }
            }
        }
        assert!(reader.next().is_none(), "the reader goes on after its end");
        if error.is_none() {
            assert_eq!(reader.position(), bytes.len() as u64, "read all of it");
        }
        (seen, error, reader.skipped().clone())
    }

    fn read_ok(bytes: &[u8]) -> Vec<Seen> {
        let (seen, error, _) = read_all(bytes);
        if let Some(error) = error {
            panic!("after {} packets: {error}", seen.len());
        }
        seen
    }

    /// The error a capture file ends with, after the packets before it.
    fn read_err(bytes: &[u8]) -> (Vec<Seen>, CaptureError) {
        let (seen, error, _) = read_all(bytes);
        (seen, error.expect("an error"))
    }

    /// Ports, flags and source MAC, as the kernel programs' parser reads the frame.
    fn parsed(frame: &[u8]) -> Option<(u16, u16, u8, [u8; 6])> {
        let start = frame.as_ptr() as usize;
        tracer_ebpf::parse(
            Packet::new(start, start + frame.len()),
            |segment: TcpSegment| {
                (
                    segment.src_port(),
                    segment.dst_port(),
                    segment.flags(),
                    segment.eth.src,
                )
            },
        )
        .ok()
    }

    type TcpStep = etherparse::PacketBuilderStep<etherparse::TcpHeader>;

    fn ethernet_v4(flags: impl FnOnce(TcpStep) -> TcpStep, payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 443, 1000, 64240);
        let mut frame = Vec::new();
        flags(builder).write(&mut frame, payload).unwrap();
        frame
    }

    fn ethernet_v6(flags: impl FnOnce(TcpStep) -> TcpStep) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC)
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(443, 40001, 7, 64240);
        let mut frame = Vec::new();
        flags(builder).write(&mut frame, &[]).unwrap();
        frame
    }

    /// A TCP SYN as an IP packet, no link layer.
    fn ip_v4_syn() -> Vec<u8> {
        let mut packet = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 443, 1000, 64240)
            .syn()
            .write(&mut packet, &[])
            .unwrap();
        packet
    }

    fn ip_v6_rst() -> Vec<u8> {
        let mut packet = Vec::new();
        PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(443, 40001, 7, 0)
            .rst()
            .write(&mut packet, &[])
            .unwrap();
        packet
    }

    /// Bytes in one byte order.
    #[derive(Clone, Copy)]
    struct Order {
        big_endian: bool,
    }

    impl Order {
        fn u16(self, value: u16) -> [u8; 2] {
            if self.big_endian {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            }
        }

        fn u32(self, value: u32) -> [u8; 4] {
            if self.big_endian {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            }
        }

        fn u64(self, value: u64) -> [u8; 8] {
            if self.big_endian {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            }
        }
    }

    /// A classic pcap file, by hand: (seconds, fraction, original length, captured bytes).
    fn pcap_file(
        order: Order,
        magic: u32,
        link_type: u32,
        records: &[(u32, u32, u32, &[u8])],
    ) -> Vec<u8> {
        let mut file = Vec::new();
        file.extend(order.u32(magic));
        file.extend(order.u16(2));
        file.extend(order.u16(4));
        file.extend([0; 8]);
        file.extend(order.u32(262_144));
        file.extend(order.u32(link_type));
        for &(seconds, fraction, original_len, bytes) in records {
            file.extend(order.u32(seconds));
            file.extend(order.u32(fraction));
            file.extend(order.u32(bytes.len() as u32));
            file.extend(order.u32(original_len));
            file.extend(bytes);
        }
        file
    }

    /// pcap of one link type, little-endian, microseconds, with whole packets.
    fn simple_pcap(link_type: u32, packets: &[&[u8]]) -> Vec<u8> {
        let records: Vec<_> = packets
            .iter()
            .map(|bytes| (1, 0, bytes.len() as u32, *bytes))
            .collect();
        pcap_file(
            Order { big_endian: false },
            PCAP_MAGIC_MICROS,
            link_type,
            &records,
        )
    }

    /// A pcapng file, built block by block.
    struct PcapNg {
        order: Order,
        bytes: Vec<u8>,
    }

    impl PcapNg {
        fn new(big_endian: bool) -> Self {
            let mut file = PcapNg {
                order: Order { big_endian },
                bytes: Vec::new(),
            };
            file.section(big_endian);
            file
        }

        /// Starts a new section, in its own byte order.
        fn section(&mut self, big_endian: bool) -> &mut Self {
            self.order = Order { big_endian };
            let mut body = Vec::new();
            body.extend(self.order.u32(PCAPNG_BYTE_ORDER_MAGIC));
            body.extend(self.order.u16(1));
            body.extend(self.order.u16(0));
            body.extend((-1i64).to_le_bytes()); // section length unknown
            self.block(PCAPNG_SHB_TYPE, &body)
        }

        fn block(&mut self, block_type: u32, body: &[u8]) -> &mut Self {
            let padded = body.len().next_multiple_of(4);
            // Type, length, body, length.
            let len = (12 + padded) as u32;
            self.bytes.extend(self.order.u32(block_type));
            self.bytes.extend(self.order.u32(len));
            self.bytes.extend(body);
            self.bytes.resize(self.bytes.len() + padded - body.len(), 0);
            self.bytes.extend(self.order.u32(len));
            self
        }

        fn options(&self, options: &[(u16, Vec<u8>)]) -> Vec<u8> {
            let mut bytes = Vec::new();
            for (code, value) in options {
                bytes.extend(self.order.u16(*code));
                bytes.extend(self.order.u16(value.len() as u16));
                bytes.extend(value);
                bytes.resize(bytes.len().next_multiple_of(4), 0);
            }
            if !options.is_empty() {
                bytes.extend([0; 4]); // opt_endofopt
            }
            bytes
        }

        fn interface(&mut self, link_type: u16, options: &[(u16, Vec<u8>)]) -> &mut Self {
            let mut body = Vec::new();
            body.extend(self.order.u16(link_type));
            body.extend([0; 2]);
            body.extend(self.order.u32(262_144));
            body.extend(self.options(options));
            self.block(PCAPNG_IDB_TYPE, &body)
        }

        fn packet(
            &mut self,
            interface: u32,
            ticks: u64,
            bytes: &[u8],
            options: &[(u16, Vec<u8>)],
        ) -> &mut Self {
            let mut body = Vec::new();
            body.extend(self.order.u32(interface));
            body.extend(self.order.u32((ticks >> 32) as u32));
            body.extend(self.order.u32(ticks as u32));
            body.extend(self.order.u32(bytes.len() as u32));
            body.extend(self.order.u32(bytes.len() as u32 + 100));
            body.extend(bytes);
            body.resize(body.len().next_multiple_of(4), 0);
            body.extend(self.options(options));
            self.block(PCAPNG_EPB_TYPE, &body)
        }

        fn flags(&self, value: u32) -> (u16, Vec<u8>) {
            (EPB_FLAGS.0, self.order.u32(value).to_vec())
        }

        fn tsresol(value: u8) -> (u16, Vec<u8>) {
            (OptionCode::IfTsresol.0, vec![value])
        }

        fn tsoffset(&self, seconds: u64) -> (u16, Vec<u8>) {
            (OptionCode::IfTsoffset.0, self.order.u64(seconds).to_vec())
        }
    }

    /// The Linux cooked (v1) header: packet type, ARPHRD type, address, protocol.
    fn sll(packet_type: u16, address: &[u8], protocol: u16, payload: &[u8]) -> Vec<u8> {
        let mut record = Vec::new();
        record.extend(packet_type.to_be_bytes());
        record.extend(1u16.to_be_bytes()); // ARPHRD_ETHER
        record.extend((address.len() as u16).to_be_bytes());
        let mut address_field = [0; 8];
        address_field[..address.len()].copy_from_slice(address);
        record.extend(address_field);
        record.extend(protocol.to_be_bytes());
        record.extend(payload);
        record
    }

    /// The Linux cooked v2 header: protocol, interface index, ARPHRD type, packet type, address.
    fn sll2(packet_type: u8, address: &[u8], protocol: u16, payload: &[u8]) -> Vec<u8> {
        let mut record = Vec::new();
        record.extend(protocol.to_be_bytes());
        record.extend([0; 2]);
        record.extend(7u32.to_be_bytes()); // ifindex
        record.extend(1u16.to_be_bytes()); // ARPHRD_ETHER
        record.push(packet_type);
        record.push(address.len() as u8);
        let mut address_field = [0; 8];
        address_field[..address.len()].copy_from_slice(address);
        record.extend(address_field);
        record.extend(payload);
        record
    }

    /// The Ethernet frame the reader should synthesise: zero destination, `src`, EtherType.
    fn synthesised(src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
        [&[0; 6][..], &src, &ether_type.to_be_bytes(), payload].concat()
    }

    #[test]
    fn reads_back_what_the_writer_wrote() {
        let syn = ethernet_v4(|b| b.syn(), &[]);
        let syn_ack = ethernet_v6(|b| b.syn().ack(1001));
        let rst = ethernet_v4(|b| b.rst().ack(8), b"payload");
        let mut writer = PcapWriter::new(Vec::new()).unwrap();
        writer
            .write_packet(1_700_000_000_123_456_789, syn.len() as u32, &syn)
            .unwrap();
        writer
            .write_packet(1_700_000_001_000_000_001, syn_ack.len() as u32, &syn_ack)
            .unwrap();
        // Headers only, as `watch --pcap` writes them: the original length stays.
        writer
            .write_packet(1_700_000_002, 1500, &rst[..54])
            .unwrap();
        let file = writer.into_inner();

        let seen = read_ok(&file);
        let first = 24;
        let second = first + 16 + syn.len() as u64;
        let third = second + 16 + syn_ack.len() as u64;
        assert_eq!(
            seen,
            [
                Seen {
                    ts_unix_ns: 1_700_000_000_123_456_789,
                    offset: first,
                    original_len: syn.len() as u32,
                    captured_len: syn.len() as u32,
                    link_type: LinkType::Ethernet,
                    direction: None,
                    frame: syn.clone(),
                },
                Seen {
                    ts_unix_ns: 1_700_000_001_000_000_001,
                    offset: second,
                    original_len: syn_ack.len() as u32,
                    captured_len: syn_ack.len() as u32,
                    link_type: LinkType::Ethernet,
                    direction: None,
                    frame: syn_ack.clone(),
                },
                Seen {
                    ts_unix_ns: 1_700_000_002,
                    offset: third,
                    original_len: 1500,
                    captured_len: 54,
                    link_type: LinkType::Ethernet,
                    direction: None,
                    frame: rst[..54].to_vec(),
                },
            ]
        );
        assert_eq!(
            parsed(&seen[0].frame),
            Some((40000, 443, TCP_SYN, CLIENT_MAC))
        );
        assert_eq!(
            parsed(&seen[1].frame),
            Some((443, 40001, TCP_SYN | TCP_ACK, SERVER_MAC))
        );
        assert_eq!(
            parsed(&seen[2].frame),
            Some((40000, 443, TCP_RST | TCP_ACK, CLIENT_MAC))
        );
    }

    #[test]
    fn the_writer_declares_nanosecond_ethernet_pcap_and_cuts_to_its_snap_length() {
        let jumbo = vec![0xab; WRITER_SNAPLEN as usize + 1000];
        let mut writer = PcapWriter::new(Vec::new()).unwrap();
        writer.write_packet(5, 70_000, &jumbo).unwrap();
        let file = writer.into_inner();
        assert_eq!(file[..4], PCAP_MAGIC_NANOS.to_le_bytes());
        assert_eq!(file[16..20], WRITER_SNAPLEN.to_le_bytes());
        assert_eq!(file[20..24], 1u32.to_le_bytes());
        let seen = read_ok(&file);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].captured_len, WRITER_SNAPLEN);
        // Never less than what was captured.
        assert_eq!(seen[0].original_len, WRITER_SNAPLEN);
        assert_eq!(seen[0].frame.len(), WRITER_SNAPLEN as usize);
    }

    #[test]
    fn create_writes_a_file_readable_while_still_open() {
        let file = TempFile::with(&[]);
        let syn = ethernet_v4(|b| b.syn(), &[]);
        let mut writer = PcapWriter::create(&file.0).unwrap();
        writer.write_packet(1, syn.len() as u32, &syn).unwrap();
        // Not dropped: what a killed `watch` leaves behind.
        let bytes = std::fs::read(&file.0).unwrap();
        assert_eq!(read_ok(&bytes).len(), 1);
        drop(writer);
        let error = PcapWriter::create("/nonexistent-dir/x.pcap")
            .err()
            .expect("no such directory");
        assert!(
            format!("{error:#}").contains("/nonexistent-dir/x.pcap"),
            "{error:#}"
        );
    }

    #[test]
    fn reads_big_endian_microsecond_pcap() {
        let syn = ethernet_v4(|b| b.syn(), &[]);
        let file = pcap_file(
            Order { big_endian: true },
            PCAP_MAGIC_MICROS,
            1,
            &[(1_600_000_000, 999_999, 1514, &syn)],
        );
        assert_eq!(file[..4], [0xa1, 0xb2, 0xc3, 0xd4]);
        let seen = read_ok(&file);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].ts_unix_ns, 1_600_000_000_999_999_000);
        assert_eq!((seen[0].original_len, seen[0].captured_len), (1514, 54));
        assert_eq!(seen[0].frame, syn);
    }

    #[test]
    fn reads_big_endian_nanosecond_and_little_endian_microsecond_pcap() {
        let syn = ethernet_v4(|b| b.syn(), &[]);
        let records: &[(u32, u32, u32, &[u8])] = &[(10, 123_456_789 / 1000, 54, &syn)];
        let micros = pcap_file(Order { big_endian: false }, PCAP_MAGIC_MICROS, 1, records);
        assert_eq!(read_ok(&micros)[0].ts_unix_ns, 10_123_456_000);
        let records: &[(u32, u32, u32, &[u8])] = &[(10, 123_456_789, 54, &syn)];
        let nanos = pcap_file(Order { big_endian: true }, PCAP_MAGIC_NANOS, 1, records);
        assert_eq!(nanos[..4], [0xa1, 0xb2, 0x3c, 0x4d]);
        assert_eq!(read_ok(&nanos)[0].ts_unix_ns, 10_123_456_789);
    }

    #[test]
    fn pcapng_interfaces_have_their_own_link_type_resolution_and_direction() {
        let syn = ethernet_v4(|b| b.syn(), &[]);
        let rst = ip_v6_rst();
        let cooked = sll2(0, &SERVER_MAC, ETH_P_IPV6, &rst);
        let mut file = PcapNg::new(false);
        let tsoffset = file.tsoffset(1000);
        file.interface(1, &[]) // 0: Ethernet, microseconds (the default)
            .interface(276, &[PcapNg::tsresol(9)]) // 1: SLL2, nanoseconds
            .interface(147, &[]) // 2: LINKTYPE_USER0, not ours
            .interface(1, &[PcapNg::tsresol(0x80 | 20), tsoffset]); // 3: 2^-20 s
        let (inbound, outbound, none) = (file.flags(1), file.flags(2), file.flags(0x3c));
        let syn_at = file.bytes.len();
        file.packet(0, 1_700_000_000_000_001, &syn, &[inbound])
            .block(0x0000_0bad, b"an unknown block type"); // skipped
        let cooked_at = file.bytes.len();
        file.packet(1, 1_700_000_000_000_000_002, &cooked, &[outbound])
            .packet(2, 5, b"not for us", &[])
            .packet(3, 3 << 19, &syn, &[none]) // 1.5 s
            .block(5, &[0; 12]); // interface statistics: skipped

        let (seen, error, skipped) = read_all(&file.bytes);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(skipped, BTreeMap::from([(147, 1)]));
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].offset, syn_at as u64);
        assert_eq!(seen[0].ts_unix_ns, 1_700_000_000_000_001_000);
        assert_eq!(seen[0].link_type, LinkType::Ethernet);
        assert_eq!(seen[0].direction, Some(Direction::Inbound));
        assert_eq!((seen[0].captured_len, seen[0].original_len), (54, 154));
        assert_eq!(seen[0].frame, syn);

        assert_eq!(seen[1].offset, cooked_at as u64);
        assert_eq!(seen[1].ts_unix_ns, 1_700_000_000_000_000_002);
        assert_eq!(seen[1].link_type, LinkType::LinuxSll2);
        // epb_flags say outbound, over the cooked header's "to us".
        assert_eq!(seen[1].direction, Some(Direction::Outbound));
        assert_eq!(seen[1].frame, synthesised(SERVER_MAC, ETH_P_IPV6, &rst));
        assert_eq!(
            parsed(&seen[1].frame),
            Some((443, 40001, TCP_RST, SERVER_MAC))
        );

        assert_eq!(seen[2].ts_unix_ns, 1_001_500_000_000);
        assert_eq!(seen[2].direction, None);
    }

    #[test]
    fn pcapng_sections_restart_interfaces_and_may_change_byte_order() {
        let syn = ip_v4_syn();
        let mut file = PcapNg::new(false);
        file.interface(1, &[]);
        file.section(true);
        let tsoffset = file.tsoffset(100);
        let inbound = file.flags(1);
        file.interface(228, &[PcapNg::tsresol(3), tsoffset])
            .packet(0, 2_500, &syn, &[inbound]);
        let seen = read_ok(&file.bytes);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].link_type, LinkType::Ipv4);
        assert_eq!(seen[0].ts_unix_ns, 102_500_000_000);
        assert_eq!(seen[0].direction, Some(Direction::Inbound));
        assert_eq!(seen[0].frame, synthesised([0; 6], ETH_P_IPV4, &syn));
        assert_eq!(parsed(&seen[0].frame), Some((40000, 443, TCP_SYN, [0; 6])));
    }

    #[test]
    fn a_pcapng_packet_of_an_undescribed_interface_is_an_error_at_its_offset() {
        let syn = ethernet_v4(|b| b.syn(), &[]);
        let mut file = PcapNg::new(false);
        file.interface(1, &[]).packet(0, 1, &syn, &[]);
        let second_at = file.bytes.len();
        file.packet(1, 2, &syn, &[]);
        let (seen, error) = read_err(&file.bytes);
        assert_eq!(seen.len(), 1);
        assert_eq!(error.kind, CaptureErrorKind::Corrupt);
        assert_eq!(error.offset, second_at as u64);
        assert!(
            error.to_string().contains(&format!(
                "packet block at byte {second_at} names interface 1, but its section describes 1"
            )),
            "{error}"
        );
    }

    #[test]
    fn a_pcapng_block_whose_lengths_disagree_is_corrupt() {
        let syn = ethernet_v4(|b| b.syn(), &[]);
        let mut file = PcapNg::new(false);
        file.interface(1, &[]).packet(0, 1, &syn, &[]);
        let at = file.bytes.len();
        file.packet(0, 2, &syn, &[]);
        let last = file.bytes.len() - 4;
        file.bytes[last] ^= 4; // the trailing block length
        let (seen, error) = read_err(&file.bytes);
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (error.kind, error.offset),
            (CaptureErrorKind::Corrupt, at as u64)
        );
        assert!(
            error.to_string().ends_with(&format!(
                "corrupt enhanced packet block at byte {at}: its length is 88 at its start and \
                 92 at its end"
            )),
            "{error}"
        );
    }

    #[test]
    fn linux_cooked_records_become_ethernet_frames_the_parser_reads() {
        let syn = ip_v4_syn();
        let rst = ip_v6_rst();
        let mut vlan_tagged = vec![0x00, 0x2a]; // VLAN 42
        vlan_tagged.extend(ETH_P_IPV4.to_be_bytes());
        vlan_tagged.extend(&syn);
        let v1 = [
            sll(4, &CLIENT_MAC, ETH_P_IPV4, &syn),               // outgoing
            sll(0, &SERVER_MAC, ETH_P_IPV6, &rst),               // to us
            sll(3, &CLIENT_MAC, 0x8100, &vlan_tagged),           // to another host
            sll(0, &[10, 0, 0, 9], ETH_P_IPV4, &syn),            // an IPIP tunnel's address
            sll(4, &CLIENT_MAC, ETH_P_IPV4, &[])[..10].to_vec(), // cut in its own header
        ];
        let v1: Vec<_> = v1.iter().map(Vec::as_slice).collect();
        let seen = read_ok(&simple_pcap(113, &v1));
        let expected = [
            (
                synthesised(CLIENT_MAC, ETH_P_IPV4, &syn),
                Some(Direction::Outbound),
            ),
            (
                synthesised(SERVER_MAC, ETH_P_IPV6, &rst),
                Some(Direction::Inbound),
            ),
            (
                synthesised(CLIENT_MAC, 0x8100, &vlan_tagged),
                Some(Direction::Inbound),
            ),
            (
                synthesised([0; 6], ETH_P_IPV4, &syn),
                Some(Direction::Inbound),
            ),
            (Vec::new(), None),
        ];
        let got: Vec<_> = seen
            .iter()
            .map(|s| (s.frame.clone(), s.direction))
            .collect();
        assert_eq!(got, expected);
        assert!(seen.iter().all(|s| s.link_type == LinkType::LinuxSll));
        assert_eq!(seen[0].captured_len, v1[0].len() as u32);
        let flags: Vec<_> = seen.iter().map(|s| parsed(&s.frame)).collect();
        assert_eq!(
            flags,
            [
                Some((40000, 443, TCP_SYN, CLIENT_MAC)),
                Some((443, 40001, TCP_RST, SERVER_MAC)),
                Some((40000, 443, TCP_SYN, CLIENT_MAC)),
                Some((40000, 443, TCP_SYN, [0; 6])),
                None,
            ]
        );

        let v2 = [
            sll2(4, &CLIENT_MAC, ETH_P_IPV4, &syn),
            sll2(1, &SERVER_MAC, ETH_P_IPV6, &rst), // broadcast, to us
            sll2(5, &[], ETH_P_IPV4, &syn),         // PACKET_LOOPBACK: no direction
        ];
        let v2: Vec<_> = v2.iter().map(Vec::as_slice).collect();
        let seen = read_ok(&simple_pcap(276, &v2));
        let got: Vec<_> = seen
            .iter()
            .map(|s| (s.frame.clone(), s.direction))
            .collect();
        assert_eq!(
            got,
            [
                (
                    synthesised(CLIENT_MAC, ETH_P_IPV4, &syn),
                    Some(Direction::Outbound)
                ),
                (
                    synthesised(SERVER_MAC, ETH_P_IPV6, &rst),
                    Some(Direction::Inbound)
                ),
                (synthesised([0; 6], ETH_P_IPV4, &syn), None),
            ]
        );
        assert_eq!(
            parsed(&seen[1].frame),
            Some((443, 40001, TCP_RST, SERVER_MAC))
        );
    }

    #[test]
    fn raw_ip_records_get_an_ethertype_from_their_version() {
        let syn = ip_v4_syn();
        let rst = ip_v6_rst();
        let seen = read_ok(&simple_pcap(101, &[&syn, &rst, b"\x10junk"]));
        let frames: Vec<_> = seen.iter().map(|s| s.frame.clone()).collect();
        assert_eq!(
            frames,
            [
                synthesised([0; 6], ETH_P_IPV4, &syn),
                synthesised([0; 6], ETH_P_IPV6, &rst),
                synthesised([0; 6], 0, b"\x10junk"),
            ]
        );
        assert_eq!(parsed(&frames[1]), Some((443, 40001, TCP_RST, [0; 6])));
        let seen = read_ok(&simple_pcap(229, &[&rst]));
        assert_eq!(seen[0].link_type, LinkType::Ipv6);
        assert_eq!(seen[0].frame, synthesised([0; 6], ETH_P_IPV6, &rst));
    }

    /// Three packets of 54, 61 and 74 bytes, as the writer writes them.
    fn three_packet_pcap() -> Vec<u8> {
        let mut writer = PcapWriter::new(Vec::new()).unwrap();
        for frame in [
            ethernet_v4(|b| b.syn(), &[]),
            ethernet_v4(|b| b.ack(1), b"1234567"),
            ethernet_v6(|b| b.rst()),
        ] {
            writer.write_packet(1, frame.len() as u32, &frame).unwrap();
        }
        writer.into_inner()
    }

    #[test]
    fn a_truncated_pcap_yields_the_packets_before_the_cut_then_the_offset() {
        let file = three_packet_pcap();
        let (first, second, third) = (24, 24 + 16 + 54, 24 + 16 + 54 + 16 + 61);
        assert_eq!(file.len(), third + 16 + 74);
        let cases: &[(usize, usize, u64, &str)] = &[
            (
                10,
                0,
                0,
                "truncated file header at byte 0 (needs 24 bytes, 10 left)",
            ),
            (
                first + 5,
                0,
                first as u64,
                "truncated record header at byte 24 (needs 16 bytes, 5 left)",
            ),
            (
                second + 16 + 20,
                1,
                second as u64,
                "truncated packet record at byte 94 (needs 77 bytes, 36 left)",
            ),
            (
                third + 15,
                2,
                third as u64,
                "truncated record header at byte 171 (needs 16 bytes, 15 left)",
            ),
            (
                file.len() - 1,
                2,
                third as u64,
                "truncated packet record at byte 171 (needs 90 bytes, 89 left)",
            ),
        ];
        for &(cut, packets, offset, message) in cases {
            let (seen, error) = read_err(&file[..cut]);
            assert_eq!(seen.len(), packets, "cut at {cut}: {error}");
            assert_eq!(error.kind, CaptureErrorKind::Truncated, "cut at {cut}");
            assert_eq!(error.offset, offset, "cut at {cut}");
            let text = error.to_string();
            assert!(
                text.ends_with(&format!(": {message}")),
                "cut at {cut}: {text}"
            );
            assert!(text.starts_with(&std::env::temp_dir().display().to_string()));
        }
        // At a record boundary nothing is missing.
        assert_eq!(read_ok(&file[..third]).len(), 2);
    }

    #[test]
    fn a_truncated_pcapng_yields_the_packets_before_the_cut_then_the_offset() {
        let syn = ethernet_v4(|b| b.syn(), &[]);
        let mut file = PcapNg::new(true);
        file.interface(1, &[]).packet(0, 1, &syn, &[]);
        let packet_at = file.bytes.len();
        file.packet(0, 2, &syn, &[]);
        let cases: &[(usize, usize, u64, CaptureErrorKind, String)] = &[
            (
                3,
                0,
                0,
                CaptureErrorKind::NotACapture,
                "not a pcap or pcapng capture (3 bytes)".into(),
            ),
            (
                20,
                0,
                0,
                CaptureErrorKind::Truncated,
                "truncated section header block at byte 0 (needs 28 bytes, 20 left)".into(),
            ),
            (
                PCAPNG_MIN_SHB_LEN + 10,
                0,
                PCAPNG_MIN_SHB_LEN as u64,
                CaptureErrorKind::Truncated,
                "truncated interface description block at byte 28 (needs 20 bytes, 10 left)".into(),
            ),
            (
                packet_at + 6,
                1,
                packet_at as u64,
                CaptureErrorKind::Truncated,
                format!("truncated block header at byte {packet_at} (needs 8 bytes, 6 left)"),
            ),
            (
                packet_at + 40,
                1,
                packet_at as u64,
                CaptureErrorKind::Truncated,
                format!(
                    "truncated enhanced packet block at byte {packet_at} (needs 88 bytes, 40 \
                     left)"
                ),
            ),
        ];
        for (cut, packets, offset, kind, message) in cases {
            let (seen, error) = read_err(&file.bytes[..*cut]);
            assert_eq!(seen.len(), *packets, "cut at {cut}: {error}");
            assert_eq!((error.kind, error.offset), (*kind, *offset), "cut at {cut}");
            let text = error.to_string();
            assert!(
                text.ends_with(&format!(": {message}")),
                "cut at {cut}: {text}"
            );
        }
    }

    #[test]
    fn what_is_not_a_capture_says_so() {
        let (_, error) = read_err(b"GET / HTTP/1.1\r\n");
        assert_eq!(error.kind, CaptureErrorKind::NotACapture);
        assert!(
            error
                .to_string()
                .ends_with(": not a pcap or pcapng capture (starts with 47 45 54 20)"),
            "{error}"
        );
        let (_, error) = read_err(&[]);
        assert_eq!(error.kind, CaptureErrorKind::NotACapture);
        assert!(error.to_string().contains("empty file"), "{error}");

        let error = CaptureReader::open("/nonexistent.pcap").err().unwrap();
        assert_eq!(error.kind, CaptureErrorKind::Io);
        assert!(
            error
                .to_string()
                .starts_with("/nonexistent.pcap: cannot open: "),
            "{error}"
        );
        // A directory opens, and then cannot be read.
        let error = CaptureReader::open(std::env::temp_dir()).err().unwrap();
        assert_eq!(error.kind, CaptureErrorKind::Io);
        assert!(error.to_string().contains("read error"), "{error}");
    }

    #[test]
    fn a_pcap_of_a_link_type_we_do_not_read_fails_at_open() {
        let (_, error) = read_err(&simple_pcap(127, &[b"radiotap"]));
        assert_eq!(error.kind, CaptureErrorKind::UnsupportedLinkType);
        assert!(
            error.to_string().contains("link type 127 is not supported"),
            "{error}"
        );
    }

    #[test]
    fn an_absurd_record_length_is_corruption_not_an_allocation() {
        let syn = ethernet_v4(|b| b.syn(), &[]);
        let mut file = simple_pcap(1, &[&syn, &syn]);
        let second = 24 + 16 + syn.len();
        file[second + 8..second + 12].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        let (seen, error) = read_err(&file);
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (error.kind, error.offset),
            (CaptureErrorKind::Corrupt, second as u64)
        );
        assert!(
            error.to_string().ends_with(&format!(
                "corrupt record at byte {second}: claims {} bytes, more than the 16 MiB a \
                 record can have",
                16 + 0x7fff_0000u32
            )),
            "{error}"
        );
    }

    #[test]
    fn streams_files_larger_than_its_buffer_and_records_larger_than_it_starts_with() {
        let frame = ethernet_v4(|b| b.ack(1), &[0x5a; 1460]);
        let big = vec![0x77; 3 * INITIAL_BUFFER_LEN];
        let mut records: Vec<(u32, u32, u32, &[u8])> = (0..3000)
            .map(|i| (i, 0, frame.len() as u32, &frame[..]))
            .collect();
        records.insert(1500, (0, 0, big.len() as u32, &big));
        let file = pcap_file(Order { big_endian: false }, PCAP_MAGIC_MICROS, 1, &records);
        assert!(file.len() > 5 * INITIAL_BUFFER_LEN);
        let seen = read_ok(&file);
        assert_eq!(seen.len(), 3001);
        assert_eq!(seen[1500].frame.len(), big.len());
        assert!(seen[1500].frame == big);
        assert!(seen.iter().filter(|s| s.frame == frame).count() == 3000);
        assert_eq!(seen[3000].ts_unix_ns, 2999 * NANOS_PER_SEC);
    }

    #[test]
    fn progress_only_for_large_files_on_a_terminal() {
        assert!(shows_progress(true, PROGRESS_MIN_FILE_LEN + 1));
        assert!(!shows_progress(true, PROGRESS_MIN_FILE_LEN));
        assert!(!shows_progress(false, 1 << 40));
    }
}
