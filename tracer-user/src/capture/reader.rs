//! The reader: a capture file through pcap-parser's streaming readers, one packet at a time, and
//! the errors that say where and why a file cannot be read.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, Cursor, IsTerminal, Read},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use pcap_parser::{
    traits::PcapReaderIterator, LegacyPcapReader, PcapBlockOwned, PcapError, PcapNGReader,
};

use super::{
    link::ethernet_frame,
    pcap, pcapng,
    progress::{shows_progress, Progress},
    CaptureError, CaptureErrorKind, CapturedPacket, Found,
};

/// The first read fills this much; larger records grow the buffer (up to [`MAX_RECORD_LEN`]).
/// 1 MiB holds several records of the usual 262144-byte snap length.
pub(super) const INITIAL_BUFFER_LEN: usize = 1 << 20;
/// The largest record or block accepted. Real captures stay far below (Wireshark's largest snap
/// length is 256 KiB for most link types); a larger length field is corruption, and must not
/// make the reader allocate gigabytes.
const MAX_RECORD_LEN: usize = 16 << 20;

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
    Pcap(pcap::FileHeader),
    PcapNg(pcapng::Section),
}

impl Layout {
    /// Turns one parsed block into a packet, or takes in what it says about the packets to come
    /// and returns `None`. `found.bytes` holds the packet's address range in memory.
    fn read_block(
        &mut self,
        skipped: &mut BTreeMap<u32, u64>,
        offset: u64,
        block: PcapBlockOwned<'_>,
    ) -> Result<Option<Found>, String> {
        match (self, block) {
            (Layout::Pcap(header), PcapBlockOwned::Legacy(record)) => {
                Ok(Some(header.packet(offset, &record)))
            }
            (Layout::PcapNg(section), PcapBlockOwned::NG(block)) => {
                section.read_block(skipped, offset, block)
            }
            // The pcap file header, read at open.
            _ => Ok(None),
        }
    }

    /// The whole length of the record or block starting `data`, from its header, if all of the
    /// header is there.
    fn record_len(&self, data: &[u8]) -> Option<usize> {
        match self {
            Layout::Pcap(header) => header.record_len(data),
            Layout::PcapNg(section) => section.block_len(data),
        }
    }

    fn record_name(&self) -> &'static str {
        match self {
            Layout::Pcap(_) => "record",
            Layout::PcapNg(_) => "block",
        }
    }
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
    /// Opens a capture file (`-`: standard input) and reads its header. Packets come from
    /// [`CaptureReader::next`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CaptureError> {
        let path = path.as_ref();
        CaptureReader::from_input(path, Input::open(path)?)
    }

    /// Reads a capture from `input`, opened from `path` (which names it in messages).
    pub fn from_input(path: &Path, input: Input) -> Result<Self, CaptureError> {
        let path = path.to_owned();
        let fail = |kind, offset, message: String| CaptureError {
            path: path.clone(),
            kind,
            offset,
            message,
        };
        let Input {
            reader: mut file,
            file_len,
        } = input;
        let file_len = file_len.unwrap_or(0);
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
            Layout::Pcap(_) => {
                Box::new(LegacyPcapReader::new(INITIAL_BUFFER_LEN, source).map_err(parser_error)?)
            }
            Layout::PcapNg(_) => {
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
            (Layout::PcapNg(section), Some(id)) => section.interface_name(id),
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
            progress.finish();
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
                    let found = self
                        .layout
                        .read_block(&mut self.skipped, offset, block)
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
                    let needed = self.layout.record_len(self.blocks.data()).ok_or_else(|| {
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
                            format!("unreadable {} at byte {offset}", self.layout.record_name()),
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
            Layout::Pcap(_) => pcap::RECORD_HEADER_LEN,
            Layout::PcapNg(_) => pcapng::BLOCK_HEADER_LEN,
        };
        let Some(needs) = self.layout.record_len(left) else {
            return error(
                &self.path,
                CaptureErrorKind::Truncated,
                offset,
                format!(
                    "truncated {} header at byte {offset} (needs {header_len} bytes, {} left)",
                    self.layout.record_name(),
                    left.len()
                ),
            );
        };
        if let Err(corrupt) = self.check_record_len(offset, needs) {
            return corrupt;
        }
        let what = match self.layout {
            Layout::Pcap(_) => "packet record",
            Layout::PcapNg(_) => pcapng::block_name(left),
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
        let (what, detail) = match &self.layout {
            Layout::Pcap(_) => ("record", format!("failed the parser's {check} check")),
            Layout::PcapNg(section) => (pcapng::block_name(data), section.corruption(data, check)),
        };
        error(
            &self.path,
            CaptureErrorKind::Corrupt,
            offset,
            format!("corrupt {what} at byte {offset}: {detail}"),
        )
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
                    self.layout.record_name(),
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
fn read_file_header(file: &mut impl Read) -> Result<(Layout, Vec<u8>), (CaptureErrorKind, String)> {
    let read_error = |e: io::Error| (CaptureErrorKind::Io, format!("read error: {e}"));
    let mut header = read_up_to(file, pcap::FILE_HEADER_LEN).map_err(read_error)?;
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
        (pcapng::SHB_TYPE, _) => {
            if header.len() < pcapng::SHB_PREFIX_LEN {
                return Err(truncated_header(
                    "section header block",
                    pcapng::MIN_SHB_LEN,
                    header.len(),
                ));
            }
            let (shb_len, big_endian) = pcapng::shb_len(&header).ok_or_else(|| {
                (
                    CaptureErrorKind::Corrupt,
                    "pcapng section header block at byte 0 has no valid byte-order magic".into(),
                )
            })?;
            if !(pcapng::MIN_SHB_LEN..=MAX_RECORD_LEN).contains(&shb_len) || shb_len % 4 != 0 {
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
            Layout::PcapNg(pcapng::Section::new(big_endian))
        }
        (pcap::MAGIC_MICROS | pcap::MAGIC_NANOS, _)
        | (_, pcap::MAGIC_MICROS | pcap::MAGIC_NANOS) => {
            if header.len() < pcap::FILE_HEADER_LEN {
                return Err(truncated_header(
                    "file header",
                    pcap::FILE_HEADER_LEN,
                    header.len(),
                ));
            }
            Layout::Pcap(pcap::FileHeader::parse(&header)?)
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

/// Where a capture's bytes come from: a file, which can be read again, or a stream (standard
/// input, a pipe, a FIFO, a device), which must be read once.
pub struct Input {
    pub reader: Box<dyn Read + Send>,
    /// The size of a regular file; `None` for a stream.
    pub file_len: Option<u64>,
}

impl Input {
    /// Opens `path`; `-` is standard input. A FIFO's open waits for its writer, as
    /// `tcpdump -r` does; it is opened once.
    pub fn open(path: &Path) -> Result<Input, CaptureError> {
        if path == Path::new("-") {
            return Ok(Input {
                reader: Box::new(io::stdin()),
                file_len: None,
            });
        }
        let fail = |what: &str, e: io::Error| {
            error(path, CaptureErrorKind::Io, 0, format!("cannot {what}: {e}"))
        };
        let file = File::open(path).map_err(|e| fail("open", e))?;
        let metadata = file.metadata().map_err(|e| fail("read metadata", e))?;
        Ok(Input {
            file_len: metadata.is_file().then_some(metadata.len()),
            reader: Box::new(file),
        })
    }

    /// Reads the first `len` bytes (fewer if the input ends sooner): returns them, and the input
    /// from its start again, so that a stream can be looked at before it is read once.
    pub fn with_prefix(mut self, len: usize) -> io::Result<(Arc<[u8]>, Input)> {
        let prefix: Arc<[u8]> = read_up_to(&mut self.reader, len)?.into();
        let replayed = Input {
            reader: Box::new(Cursor::new(Arc::clone(&prefix)).chain(self.reader)),
            file_len: self.file_len,
        };
        Ok((prefix, replayed))
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
