//! The file of `watch --pcap`: classic pcap, which tcpdump, tshark and Wireshark all read, written
//! a packet at a time as the RSTs come.

use std::{
    fs::File,
    io::{self, Write},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;

use crate::capture::{pcap, LinkType};

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
        let mut header = Vec::with_capacity(pcap::FILE_HEADER_LEN);
        header.extend_from_slice(&pcap::MAGIC_NANOS.to_le_bytes());
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
        let time = Duration::from_nanos(ts_unix_ns);
        let seconds = u32::try_from(time.as_secs()).unwrap_or(u32::MAX);
        let nanos = time.subsec_nanos();
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
}

#[cfg(test)]
mod tests {
    use tracer_common::{TCP_ACK, TCP_RST, TCP_SYN};

    use super::*;
    use crate::capture::testing::*;

    #[test]
    fn reads_back_what_the_writer_wrote() {
        let syn = ethernet_v4(|b| b.syn(), &[]);
        let syn_ack = ethernet_v6(|b| b.syn().ack(1001));
        let rst = ethernet_v4(|b| b.rst().ack(8), b"payload");
        let mut file = Vec::new();
        let mut writer = PcapWriter::new(&mut file).unwrap();
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
        let mut file = Vec::new();
        let mut writer = PcapWriter::new(&mut file).unwrap();
        writer.write_packet(5, 70_000, &jumbo).unwrap();
        assert_eq!(file[..4], pcap::MAGIC_NANOS.to_le_bytes());
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
}
