//! The reader against files built byte by byte: both formats in both byte orders, every link
//! layer, and damage at every place a file can be cut or corrupted.

use std::collections::BTreeMap;

use etherparse::PacketBuilder;
use pcap_parser::pcapng::OptionCode;
use tracer_common::{TCP_RST, TCP_SYN};

use super::{
    link::{ETH_P_IPV4, ETH_P_IPV6},
    reader::INITIAL_BUFFER_LEN,
    testing::*,
    *,
};

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
        pcap::MAGIC_MICROS,
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
        body.extend(self.order.u32(pcapng::BYTE_ORDER_MAGIC));
        body.extend(self.order.u16(1));
        body.extend(self.order.u16(0));
        body.extend((-1i64).to_le_bytes()); // section length unknown
        self.block(pcapng::SHB_TYPE, &body)
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
        self.block(pcapng::IDB_TYPE, &body)
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
        self.block(pcapng::EPB_TYPE, &body)
    }

    fn flags(&self, value: u32) -> (u16, Vec<u8>) {
        (pcapng::EPB_FLAGS.0, self.order.u32(value).to_vec())
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
fn reads_big_endian_microsecond_pcap() {
    let syn = ethernet_v4(|b| b.syn(), &[]);
    let file = pcap_file(
        Order { big_endian: true },
        pcap::MAGIC_MICROS,
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
    let micros = pcap_file(Order { big_endian: false }, pcap::MAGIC_MICROS, 1, records);
    assert_eq!(read_ok(&micros)[0].ts_unix_ns, 10_123_456_000);
    let records: &[(u32, u32, u32, &[u8])] = &[(10, 123_456_789, 54, &syn)];
    let nanos = pcap_file(Order { big_endian: true }, pcap::MAGIC_NANOS, 1, records);
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

/// Three whole packets of 54, 61 and 74 bytes, in a little-endian nanosecond pcap.
fn three_packet_pcap() -> Vec<u8> {
    let frames = [
        ethernet_v4(|b| b.syn(), &[]),
        ethernet_v4(|b| b.ack(1), b"1234567"),
        ethernet_v6(|b| b.rst()),
    ];
    let records: Vec<_> = frames
        .iter()
        .map(|frame| (0, 1, frame.len() as u32, &frame[..]))
        .collect();
    pcap_file(Order { big_endian: false }, pcap::MAGIC_NANOS, 1, &records)
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
            pcapng::MIN_SHB_LEN + 10,
            0,
            pcapng::MIN_SHB_LEN as u64,
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
    let file = pcap_file(Order { big_endian: false }, pcap::MAGIC_MICROS, 1, &records);
    assert!(file.len() > 5 * INITIAL_BUFFER_LEN);
    let seen = read_ok(&file);
    assert_eq!(seen.len(), 3001);
    assert_eq!(seen[1500].frame.len(), big.len());
    assert!(seen[1500].frame == big);
    assert!(seen.iter().filter(|s| s.frame == frame).count() == 3000);
    assert_eq!(seen[3000].ts_unix_ns, 2999 * NANOS_PER_SEC);
}
