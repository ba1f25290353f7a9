//! What tests of capture files share: temporary files, TCP frames, and every packet the reader
//! makes of a file, owned. The writer of `watch --pcap` is tested through this reader too.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use etherparse::PacketBuilder;
use tracer_ebpf::{Packet, TcpSegment};

use super::{CaptureError, CaptureReader, Direction, LinkType};

pub(crate) const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub(crate) const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A file in the temporary directory, removed on drop.
pub(crate) struct TempFile(pub(crate) PathBuf);

impl TempFile {
    pub(crate) fn with(bytes: &[u8]) -> Self {
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
pub(crate) struct Seen {
    pub(crate) ts_unix_ns: u64,
    pub(crate) offset: u64,
    pub(crate) original_len: u32,
    pub(crate) captured_len: u32,
    pub(crate) link_type: LinkType,
    pub(crate) direction: Option<Direction>,
    pub(crate) frame: Vec<u8>,
}

/// Every packet of `bytes` read as a capture file, and the error that ended it, if any.
pub(crate) fn read_all(bytes: &[u8]) -> (Vec<Seen>, Option<CaptureError>, BTreeMap<u32, u64>) {
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

pub(crate) fn read_ok(bytes: &[u8]) -> Vec<Seen> {
    let (seen, error, _) = read_all(bytes);
    if let Some(error) = error {
        panic!("after {} packets: {error}", seen.len());
    }
    seen
}

/// The error a capture file ends with, after the packets before it.
pub(crate) fn read_err(bytes: &[u8]) -> (Vec<Seen>, CaptureError) {
    let (seen, error, _) = read_all(bytes);
    (seen, error.expect("an error"))
}

/// Ports, flags and source MAC, as the kernel programs' parser reads the frame.
pub(crate) fn parsed(frame: &[u8]) -> Option<(u16, u16, u8, [u8; 6])> {
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

pub(crate) fn ethernet_v4(flags: impl FnOnce(TcpStep) -> TcpStep, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 443, 1000, 64240);
    let mut frame = Vec::new();
    flags(builder).write(&mut frame, payload).unwrap();
    frame
}

pub(crate) fn ethernet_v6(flags: impl FnOnce(TcpStep) -> TcpStep) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .tcp(443, 40001, 7, 64240);
    let mut frame = Vec::new();
    flags(builder).write(&mut frame, &[]).unwrap();
    frame
}
