//! Classic pcap (libpcap's format): a file header that fixes the byte order, the timestamp
//! resolution (micro- or nanoseconds) and the link type of every record, then records of a
//! 16-byte header and the packet's captured bytes. The format's constants are public, for what
//! writes the format.

use pcap_parser::LegacyPcapBlock;

use super::{address_range, u32_at, CaptureErrorKind, Found, LinkType, NANOS_PER_SEC};

pub const FILE_HEADER_LEN: usize = 24;
/// Seconds, fraction of a second, captured length, original length.
pub const RECORD_HEADER_LEN: usize = 16;
/// The first four bytes, in the file's byte order, of a file with microsecond timestamps.
pub const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// The first four bytes, in the file's byte order, of a file with nanosecond timestamps.
pub const MAGIC_NANOS: u32 = 0xa1b2_3c4d;

/// What a pcap file's header fixes for all its records.
pub(super) struct FileHeader {
    link_type: LinkType,
    nanos: bool,
    big_endian: bool,
}

impl FileHeader {
    /// Parses a file header of [`FILE_HEADER_LEN`] bytes. A link type we cannot turn into
    /// Ethernet fails here, since it would be every packet's.
    pub(super) fn parse(header: &[u8]) -> Result<FileHeader, (CaptureErrorKind, String)> {
        let (_, pcap_header) = pcap_parser::parse_pcap_header(header)
            .map_err(|e| (CaptureErrorKind::Corrupt, format!("bad pcap header: {e}")))?;
        let code = pcap_header.network.0 as u32;
        let link_type = LinkType::from_code(code).ok_or_else(|| {
            (
                CaptureErrorKind::UnsupportedLinkType,
                format!(
                    "link type {code} is not supported (supported: Ethernet, Linux cooked SLL \
                     and SLL2, raw IP)"
                ),
            )
        })?;
        Ok(FileHeader {
            link_type,
            nanos: pcap_header.is_nanosecond_precision(),
            big_endian: pcap_header.is_bigendian(),
        })
    }

    /// The packet of the record at `offset`.
    pub(super) fn packet(&self, offset: u64, record: &LegacyPcapBlock<'_>) -> Found {
        let fraction_ns = if self.nanos {
            u64::from(record.ts_usec)
        } else {
            u64::from(record.ts_usec) * 1000
        };
        Found {
            offset,
            ts_unix_ns: u64::from(record.ts_sec) * NANOS_PER_SEC + fraction_ns,
            original_len: record.origlen,
            captured_len: record.caplen,
            link_type: self.link_type,
            direction: None,
            interface: None,
            bytes: address_range(record.data),
        }
    }

    /// The whole length of the record starting `data`, from its header, if all of the header is
    /// there.
    pub(super) fn record_len(&self, data: &[u8]) -> Option<usize> {
        let header = data.get(..RECORD_HEADER_LEN)?;
        let captured = u32_at(header, 8, self.big_endian)?;
        Some(RECORD_HEADER_LEN + captured as usize)
    }
}
