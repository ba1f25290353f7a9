//! Real tcpdump captures read back by flagtrace's capture reader (tracer-user/src/capture/):
//! TCP connections on the loopback of a fresh network namespace, captured as Ethernet (`-i lo`,
//! microsecond and nanosecond files) and as Linux cooked v1 and v2 (`-i any`). Every packet must
//! come out as an Ethernet frame that the kernel programs' parser and the etherparse oracle read
//! alike, with each handshake, close and reset of the traffic seen exactly as it happened.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    thread,
    time::{Duration, Instant, SystemTime},
};

use flagtrace_tests::{
    lab::{echo_exchange, run_ok, spawn_echo_server_for, Daemon, Netns, TIMEOUT},
    oracle::{self, Verdict},
    unique_name,
};
use tracer_user::capture::{CaptureReader, Direction, LinkType};

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;
const ACK: u8 = 0x10;
const ECHO_PORT: u16 = 8080;
const CLOSED_PORT: u16 = 9;
/// Echo connections per address family.
const CONNECTIONS: usize = 2;
/// Slack between tcpdump's timestamps and this process's clock.
const CLOCK_SLACK: Duration = Duration::from_secs(5);
const PCAP_HEADER_LEN: u64 = 24;
const PCAP_RECORD_HEADER_LEN: u64 = 16;

/// The capture file, removed on drop.
struct CaptureFile(PathBuf);

impl Drop for CaptureFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One TCP packet of a capture, as the reader and the parser saw it.
#[derive(Debug)]
struct Seen {
    ts_unix_ns: u64,
    offset: u64,
    captured_len: u32,
    link_type: LinkType,
    direction: Option<Direction>,
    src: SocketAddr,
    dst: SocketAddr,
    flags: u8,
}

/// Reads a whole capture; every frame must be TCP, read alike by the kernel's parser and the
/// oracle. `Err` is the reader's error, with the packets before it.
fn read_capture(path: &PathBuf) -> Result<Vec<Seen>, (Vec<Seen>, String)> {
    let mut reader = CaptureReader::open(path).map_err(|e| (Vec::new(), e.to_string()))?;
    let mut seen = Vec::new();
    while let Some(packet) = reader.next() {
        let packet = match packet {
            Ok(packet) => packet,
            Err(e) => return Err((seen, e.to_string())),
        };
        let Verdict::Tcp(segment) = oracle::classify(packet.frame) else {
            panic!(
                "packet at byte {} is not TCP to the oracle: {}",
                packet.offset,
                flagtrace_tests::hex(packet.frame)
            );
        };
        let start = packet.frame.as_ptr() as usize;
        let frame = tracer_ebpf::Packet::new(start, start + packet.frame.len());
        let parsed = tracer_ebpf::parse(frame, |parsed: tracer_ebpf::TcpSegment| {
            (
                (
                    parsed.src(),
                    parsed.dst(),
                    parsed.src_port(),
                    parsed.dst_port(),
                ),
                parsed.flags(),
                parsed.eth.src,
            )
        })
        .ok()
        .unwrap_or_else(|| panic!("the kernel's parser rejects byte {}", packet.offset));
        assert_eq!(
            parsed.0,
            (segment.src, segment.dst, segment.src_port, segment.dst_port),
            "addresses at byte {}",
            packet.offset
        );
        assert_eq!(parsed.1, segment.flags, "flags at byte {}", packet.offset);
        assert_eq!(parsed.2, segment.eth_src);
        seen.push(Seen {
            ts_unix_ns: packet.ts_unix_ns,
            offset: packet.offset,
            captured_len: packet.captured_len,
            link_type: packet.link_type,
            direction: packet.direction,
            src: socket_addr(segment.family, segment.src, segment.src_port),
            dst: socket_addr(segment.family, segment.dst, segment.dst_port),
            flags: segment.flags,
        });
    }
    assert!(reader.skipped().is_empty(), "{:?}", reader.skipped());
    Ok(seen)
}

fn socket_addr(family: u8, words: [u32; 4], port: u16) -> SocketAddr {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if family == tracer_common::FAMILY_IPV4 {
        SocketAddr::from((<[u8; 4]>::try_from(&bytes[..4]).unwrap(), port))
    } else {
        SocketAddr::from((<[u8; 16]>::try_from(&bytes[..]).unwrap(), port))
    }
}

/// The traffic generated in the namespace: what the capture must show.
struct Traffic {
    /// (client, server) of each echo connection, which opens and closes normally.
    echoes: Vec<(SocketAddr, SocketAddr)>,
    /// Where a connection was refused with a RST.
    closed_port: SocketAddr,
    started: SystemTime,
    ended: SystemTime,
}

/// `CONNECTIONS` echo connections over IPv4 and over IPv6 on the namespace's loopback, and one
/// connection to a closed port.
fn generate_traffic(netns: &Netns) -> Traffic {
    let started = SystemTime::now();
    let mut echoes = Vec::new();
    for server in [
        SocketAddr::from(([127, 0, 0, 1], ECHO_PORT)),
        SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], ECHO_PORT)),
    ] {
        let listener = netns
            .enter(|| TcpListener::bind(server))
            .unwrap_or_else(|e| panic!("binding {server} in {}: {e}", netns.name()));
        let echo_server = spawn_echo_server_for(listener, CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let (client, echoed) = netns
                .enter(|| {
                    let stream = TcpStream::connect_timeout(&server, TIMEOUT)?;
                    stream.set_read_timeout(Some(TIMEOUT))?;
                    echo_exchange(stream, b"who reset this connection?")
                })
                .unwrap_or_else(|e| panic!("echo with {server}: {e}"));
            assert_eq!(echoed, b"who reset this connection?");
            echoes.push((client, server));
        }
        echo_server
            .join()
            .expect("echo server thread")
            .unwrap_or_else(|e| panic!("echo server {server}: {e}"));
    }
    let closed_port = SocketAddr::from(([127, 0, 0, 1], CLOSED_PORT));
    let error = netns
        .enter(|| TcpStream::connect_timeout(&closed_port, TIMEOUT))
        .expect_err("nothing listens on the closed port");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
    Traffic {
        echoes,
        closed_port,
        started,
        ended: SystemTime::now(),
    }
}

/// Flags per (sender, receiver), by flag combination: how many times each was seen.
type FlagCounts = BTreeMap<(SocketAddr, SocketAddr), BTreeMap<u8, usize>>;

fn flag_counts(seen: &[Seen]) -> FlagCounts {
    let mut counts = FlagCounts::new();
    for packet in seen {
        let interesting = packet.flags & (SYN | FIN | RST | ACK);
        if interesting & (SYN | FIN | RST) != 0 {
            *counts
                .entry((packet.src, packet.dst))
                .or_default()
                .entry(interesting)
                .or_default() += 1;
        }
    }
    counts
}

/// Whether the capture shows all of the traffic: each handshake and both closes of each echo
/// connection, and the refusal (a SYN answered by RST/ACK).
fn shows_all_of(counts: &FlagCounts, traffic: &Traffic) -> bool {
    let has = |from: SocketAddr, to: SocketAddr, flags: u8| {
        counts
            .get(&(from, to))
            .and_then(|by_flags| by_flags.get(&flags))
            .is_some()
    };
    let refusal = counts.iter().any(|((from, to), by_flags)| {
        *to == traffic.closed_port && by_flags.contains_key(&SYN) && has(*to, *from, RST | ACK)
    });
    refusal
        && traffic.echoes.iter().all(|&(client, server)| {
            has(client, server, SYN)
                && has(server, client, SYN | ACK)
                && has(client, server, FIN | ACK)
                && has(server, client, FIN | ACK)
        })
}

/// Captures the traffic with `tcpdump ARGS` in a fresh namespace, then reads the file back.
fn capture(tcpdump_args: &[&str]) -> (Vec<Seen>, Traffic, Vec<u8>) {
    let netns = Netns::create(unique_name("ft-cap"));
    netns.ip(&["link", "set", "lo", "up"]);
    let file = CaptureFile(std::env::temp_dir().join(format!("{}.pcap", unique_name("ft-cap"))));
    let path = file.0.to_str().expect("a UTF-8 temporary path");
    // -U and --immediate-mode: each packet reaches the file as it is captured, so the test can
    // wait for the last one instead of guessing how long tcpdump buffers. -s: in immediate mode
    // libpcap sizes each ring slot for the snap length, and at the default (256 KiB) a 2 MiB
    // ring holds 8 packets, so `-i any` drops some of a burst.
    let tcpdump = Daemon::start(
        netns
            .command("tcpdump")
            .args(["-n", "-U", "--immediate-mode", "-s", "256", "-w", path])
            .args(tcpdump_args)
            .arg("tcp"),
        "tcpdump: listening on",
    );
    let traffic = generate_traffic(&netns);

    let deadline = Instant::now() + TIMEOUT;
    loop {
        // The file grows while it is read: a record cut at its end is expected here.
        let seen = read_capture(&file.0).unwrap_or_else(|(seen, _)| seen);
        if shows_all_of(&flag_counts(&seen), &traffic) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the capture lacks some of the traffic after {TIMEOUT:?}: {:#?}\ntcpdump: {}",
            flag_counts(&seen),
            tcpdump.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let status = tcpdump.terminate();
    assert!(status.success(), "tcpdump: {status}");
    let seen = read_capture(&file.0)
        .unwrap_or_else(|(seen, e)| panic!("after {} packets: {e}", seen.len()));
    let bytes = std::fs::read(&file.0).expect("reading the capture");
    (seen, traffic, bytes)
}

/// What every capture must show, whatever its link type.
fn check_capture(seen: &[Seen], traffic: &Traffic, file: &[u8], link_type: LinkType) {
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|packet| packet.link_type == link_type));

    // Records one after the other, from the end of the file header to the end of the file.
    assert_eq!(seen[0].offset, PCAP_HEADER_LEN);
    for pair in seen.windows(2) {
        assert_eq!(
            pair[1].offset,
            pair[0].offset + PCAP_RECORD_HEADER_LEN + u64::from(pair[0].captured_len)
        );
    }
    let last = seen.last().unwrap();
    assert_eq!(
        last.offset + PCAP_RECORD_HEADER_LEN + u64::from(last.captured_len),
        file.len() as u64
    );

    let unix_ns = |time: SystemTime| {
        time.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as u64
    };
    let earliest = unix_ns(traffic.started - CLOCK_SLACK);
    let latest = unix_ns(traffic.ended + CLOCK_SLACK);
    for packet in seen {
        assert!(
            (earliest..=latest).contains(&packet.ts_unix_ns),
            "timestamp {} outside [{earliest}, {latest}]",
            packet.ts_unix_ns
        );
    }
    assert!(seen.windows(2).all(|p| p[0].ts_unix_ns <= p[1].ts_unix_ns));

    // Each handshake once: loopback traffic is captured once, not once per direction.
    let counts = flag_counts(seen);
    for &(client, server) in &traffic.echoes {
        for (from, to, flags) in [
            (client, server, SYN),
            (server, client, SYN | ACK),
            (client, server, FIN | ACK),
            (server, client, FIN | ACK),
        ] {
            assert_eq!(
                counts[&(from, to)][&flags],
                1,
                "{flags:#04x} {from} -> {to}"
            );
        }
    }
    let resets: Vec<_> = counts
        .iter()
        .filter(|(_, by_flags)| by_flags.contains_key(&(RST | ACK)))
        .map(|((from, _), by_flags)| (*from, by_flags[&(RST | ACK)]))
        .collect();
    assert_eq!(resets, [(traffic.closed_port, 1)]);
    assert!(shows_all_of(&counts, traffic));
}

fn require_tcpdump() {
    // `cargo xtask test` installs it; a missing tcpdump is a broken setup, not a skip.
    run_ok(std::process::Command::new("tcpdump").arg("--version"));
}

#[test]
fn tcpdump_ethernet_capture_on_loopback_reads_back() {
    require_tcpdump();
    let (seen, traffic, file) = capture(&["-i", "lo"]);
    assert_eq!(
        file[..4],
        0xa1b2_c3d4u32.to_ne_bytes(),
        "a microsecond pcap"
    );
    check_capture(&seen, &traffic, &file, LinkType::Ethernet);
    // Ethernet records say nothing of direction.
    assert!(seen.iter().all(|packet| packet.direction.is_none()));
    assert!(seen.iter().all(|packet| packet.ts_unix_ns % 1000 == 0));
}

#[test]
fn tcpdump_nanosecond_capture_reads_back() {
    require_tcpdump();
    let (seen, traffic, file) = capture(&["-i", "lo", "--time-stamp-precision", "nano"]);
    assert_eq!(file[..4], 0xa1b2_3c4du32.to_ne_bytes(), "a nanosecond pcap");
    check_capture(&seen, &traffic, &file, LinkType::Ethernet);
    assert!(
        seen.iter().any(|packet| packet.ts_unix_ns % 1000 != 0),
        "nanoseconds kept"
    );
}

#[test]
fn tcpdump_linux_cooked_v2_capture_reads_back() {
    require_tcpdump();
    // libpcap 1.10's default for the `any` device.
    let (seen, traffic, file) = capture(&["-i", "any", "-y", "LINUX_SLL2"]);
    check_capture(&seen, &traffic, &file, LinkType::LinuxSll2);
    // Loopback packets are captured on their way in (libpcap drops the outgoing copy).
    assert!(seen
        .iter()
        .all(|packet| packet.direction == Some(Direction::Inbound)));
}

#[test]
fn tcpdump_linux_cooked_v1_capture_reads_back() {
    require_tcpdump();
    let (seen, traffic, file) = capture(&["-i", "any", "-y", "LINUX_SLL"]);
    check_capture(&seen, &traffic, &file, LinkType::LinuxSll);
    assert!(seen
        .iter()
        .all(|packet| packet.direction == Some(Direction::Inbound)));
}
