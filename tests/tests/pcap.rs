//! `flagtrace pcap` against the live path: flagtrace attached to the client's interface of a
//! routed lab, and tcpdump capturing the same interface at the same time (as Ethernet, and as
//! Linux cooked v2 on `any`). Real TCP: normal connections that close with FIN, a refused
//! connection (the server's RST), and a middlebox's reset (the gateway rejects a port with a
//! TCP reset), over IPv4 and IPv6. The capture, read offline, must give exactly the flows,
//! counts, states, verdicts and counters that the kernel counted live; also as pcapng with
//! direction flags, and a truncated copy gives the flows before the cut and exit code 8.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use flagtrace_tests::{
    forge::parse_mac,
    lab::{
        echo_between, expect_refusal, flows_json, run_ok, stats_json, Family, Loader, RoutedLab,
    },
    seed_story::{seed_lab, GATEWAY_MAC, HELD_PORT, OPEN_PORT},
    tcpdump::{pcap, pcap_json, start_tcpdump, stop_tcpdump, tcp_counters, wait_for_capture},
    tracer::PinDir,
    unique_name,
};
use serde_json::{Map, Value};
use tracer_user::capture::CaptureReader;

const MESSAGE: &[u8] = b"who reset this connection?";
const CLOSED_PORT: u16 = 9;
/// Echo connections per family.
const ECHOES: usize = 2;
/// Flows per family: the echoes, the refused one and the rejected one.
const FLOWS_PER_FAMILY: usize = ECHOES + 2;
/// Exit code of a truncated or corrupt capture (README, `flagtrace --help`).
const EXIT_CAPTURE_DAMAGED: i32 = 8;
/// Exit code of a file that is no capture.
const EXIT_NOT_A_CAPTURE: i32 = 9;

/// Files of the test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Self {
        let path = std::env::temp_dir().join(unique_name("ft-pcap"));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self(path)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Flows keyed by (client, server), without `dropped` keys.
fn by_flow(flows: &[Value], dropped: &[&str]) -> BTreeMap<(String, String), Map<String, Value>> {
    flows
        .iter()
        .map(|flow| {
            let mut object = flow.as_object().expect("a JSON object").clone();
            for key in dropped {
                object.remove(*key);
            }
            let key = (flow["client"].to_string(), flow["server"].to_string());
            (key, object)
        })
        .collect()
}

/// Keys of a flow whose values legitimately differ between the live path and a capture:
/// - `first_seen`, `last_seen`: the kernel stamps packets with its coarse monotonic clock, which
///   ticks every few milliseconds, tcpdump with the precise wall clock;
/// - `iface`: the attachment's interface name live, the file's name (or pcapng `if_name`, or
///   `--iface`) offline;
/// - `netns`: the attachment's namespace live; a capture belongs to no namespace of this host;
/// - `gateway_is_default`: live, from the namespace's default route; a capture has no routes.
const LIVE_ONLY: &[&str] = &[
    "first_seen",
    "last_seen",
    "iface",
    "netns",
    "gateway_is_default",
];

/// Counts and states only: what a Linux cooked capture must give alike (its synthesised
/// Ethernet headers carry no destination MAC, so the MAC evidence differs).
fn counts_and_states(flows: &[Value]) -> BTreeMap<(String, String), Value> {
    by_flow(flows, &[])
        .into_iter()
        .map(|(key, flow)| {
            let kept = ["client_to_server", "server_to_client", "state"].map(|k| flow[k].clone());
            (key, Value::from(kept.to_vec()))
        })
        .collect()
}

/// The traffic: per family, ECHOES normal connections, one to a closed port (the server
/// refuses), one to the port the gateway rejects with a TCP reset (a middlebox).
fn make_traffic(lab: &RoutedLab) {
    for family in [Family::V4, Family::V6] {
        // The server would accept: only the gateway can refuse.
        let _listener = lab.server.listen(family, HELD_PORT);
        for _ in 0..ECHOES {
            echo_between(&lab.client, &lab.server, family, OPEN_PORT, MESSAGE);
        }
        expect_refusal(&lab.client, lab.server.addr(family, CLOSED_PORT));
        expect_refusal(&lab.client, lab.server.addr(family, HELD_PORT));
    }
}

/// Rewrites a pcap file of Ethernet packets as pcapng, with one interface named `if_name` and
/// each packet's direction in `epb_flags`: outbound when `local_mac` sent it.
fn pcap_to_pcapng(pcap: &Path, pcapng: &Path, if_name: &str, local_mac: [u8; 6]) {
    fn block(out: &mut Vec<u8>, block_type: u32, body: &[u8]) {
        let len = (12 + body.len().next_multiple_of(4)) as u32;
        out.extend_from_slice(&block_type.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(body);
        out.resize(out.len() + body.len().next_multiple_of(4) - body.len(), 0);
        out.extend_from_slice(&len.to_le_bytes());
    }
    fn option(body: &mut Vec<u8>, code: u16, value: &[u8]) {
        body.extend_from_slice(&code.to_le_bytes());
        body.extend_from_slice(&(value.len() as u16).to_le_bytes());
        body.extend_from_slice(value);
        body.resize(
            body.len() + value.len().next_multiple_of(4) - value.len(),
            0,
        );
    }
    let mut out = Vec::new();
    // Section header: byte-order magic, version 1.0, section length unknown.
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend_from_slice(&[1, 0, 0, 0]);
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    block(&mut out, 0x0a0d_0d0a, &shb);
    // Interface: Ethernet, no snap length, nanosecond timestamps, its name.
    let mut idb = vec![1, 0, 0, 0, 0, 0, 0, 0];
    option(&mut idb, 2, if_name.as_bytes());
    option(&mut idb, 9, &[9]);
    option(&mut idb, 0, &[]);
    block(&mut out, 1, &idb);
    let mut reader = CaptureReader::open(pcap).expect("the pcap capture");
    while let Some(packet) = reader.next() {
        let packet = packet.expect("a whole capture");
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend_from_slice(&((packet.ts_unix_ns >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(packet.ts_unix_ns as u32).to_le_bytes());
        epb.extend_from_slice(&packet.captured_len.to_le_bytes());
        epb.extend_from_slice(&packet.original_len.to_le_bytes());
        epb.extend_from_slice(packet.frame);
        epb.resize(epb.len().next_multiple_of(4), 0);
        let outbound = packet.frame[6..12] == local_mac;
        let flags: u32 = if outbound { 2 } else { 1 };
        option(&mut epb, 2, &flags.to_le_bytes());
        option(&mut epb, 0, &[]);
        block(&mut out, 6, &epb);
    }
    fs::write(pcapng, out).unwrap_or_else(|e| panic!("writing {}: {e}", pcapng.display()));
}

/// Where each packet record starts in a pcap file, after the file header.
fn record_offsets(file: &Path) -> Vec<u64> {
    let mut reader = CaptureReader::open(file).expect("the capture");
    let mut offsets = Vec::new();
    while let Some(packet) = reader.next() {
        offsets.push(packet.expect("a whole capture").offset);
    }
    offsets
}

#[test]
fn a_capture_reads_as_the_kernel_counted_live() {
    run_ok(Command::new("tcpdump").arg("--version"));
    run_ok(Command::new("ethtool").arg("--version"));
    let lab = seed_lab("ft-pcap");
    let client_side = lab.gateway.client_side.iface;
    lab.gateway.forward_rule(&format!(
        "iifname {client_side} tcp dport {HELD_PORT} reject with tcp reset"
    ));
    let iface = lab.client.iface;
    // Without GRO, the stack hands tcpdump each segment that XDP saw, rather than merged ones.
    // (TC and tcpdump both see an outgoing segment before any segmentation offload splits it.)
    run_ok(
        lab.client
            .netns
            .command("ethtool")
            .args(["-K", iface, "gro", "off"]),
    );

    let pins = PinDir::create().expect("pin root");
    let loader = Loader::attach(&lab.client.netns, pins.path(), iface);
    let dir = TempDir::create();
    let ethernet = dir.file("client.pcap");
    let cooked = dir.file("any.pcap");
    let tcpdump = start_tcpdump(&lab.client.netns, &ethernet, &["-i", iface]);
    let tcpdump_any = start_tcpdump(
        &lab.client.netns,
        &cooked,
        &["-i", "any", "-y", "LINUX_SLL2"],
    );
    make_traffic(&lab);
    let expected_flows = 2 * FLOWS_PER_FAMILY;
    wait_for_capture(&ethernet, pins.path(), expected_flows);
    wait_for_capture(&cooked, pins.path(), expected_flows);
    stop_tcpdump(tcpdump);
    stop_tcpdump(tcpdump_any);

    let live = flows_json(pins.path());
    let live_stats = stats_json(pins.path());
    drop(loader);
    assert_eq!(live.len(), expected_flows, "{live:#?}");

    // The Ethernet capture: the same flows, counts, states, verdicts, evidence and gateway.
    let offline = pcap_json(&[path_str(&ethernet), "--flows", "--json"]);
    assert_eq!(
        by_flow(&offline, LIVE_ONLY),
        by_flow(&live, LIVE_ONLY),
        "pcap --flows --json differs from the live flows --json"
    );
    // Not two empty answers: the traffic's verdicts are there.
    let verdicts = |flows: &[Value], reset_by: &str| {
        flows
            .iter()
            .filter(|flow| flow["reset_by"] == reset_by)
            .count()
    };
    assert_eq!(verdicts(&offline, "middlebox"), 2, "{offline:#?}");
    assert_eq!(verdicts(&offline, "endpoint"), 2, "{offline:#?}");
    for flow in &offline {
        assert_eq!(flow["iface"], "client.pcap");
        assert_eq!(flow["gateway_mac"], GATEWAY_MAC, "{flow:#}");
        // From the client's ARP and neighbour discovery with the gateway.
        let gateway_ip = match flow["server"].as_str().unwrap().starts_with('[') {
            true => lab.gateway.client_side.ip(Family::V6),
            false => lab.gateway.client_side.ip(Family::V4),
        };
        assert_eq!(flow["gateway_ip"], gateway_ip.to_string(), "{flow:#}");
    }
    // The default: the flows with a verdict, as `resets --json` prints them.
    let resets = pcap_json(&[path_str(&ethernet), "--json"]);
    let with_verdict: Vec<Value> = offline
        .iter()
        .filter(|flow| !flow["reset_by"].is_null())
        .cloned()
        .collect();
    assert_eq!(by_flow(&resets, &[]), by_flow(&with_verdict, &[]));
    // Every packet counted on the same hook: the same counters.
    let offline_stats = pcap_json(&[path_str(&ethernet), "--stats", "--json"]);
    assert_eq!(tcp_counters(&offline_stats), tcp_counters(&live_stats));
    assert_eq!(offline_stats[0]["max_flows"], Value::Null);
    // The inferred local MAC is the client's: naming it changes nothing.
    let client_mac = lab.client.mac();
    let named = pcap_json(&[
        path_str(&ethernet),
        "--flows",
        "--json",
        "--local-mac",
        &client_mac,
    ]);
    assert_eq!(by_flow(&named, &[]), by_flow(&offline, &[]));

    // pcapng, directions from epb_flags, the interface's name from if_name.
    let pcapng = dir.file("client.pcapng");
    pcap_to_pcapng(
        &ethernet,
        &pcapng,
        "lab0",
        parse_mac(&client_mac).expect("the client's MAC"),
    );
    let from_pcapng = pcap_json(&[path_str(&pcapng), "--flows", "--json"]);
    assert!(from_pcapng.iter().all(|flow| flow["iface"] == "lab0"));
    assert_eq!(
        by_flow(&from_pcapng, &["iface"]),
        by_flow(&offline, &["iface"])
    );

    // Linux cooked v2 on `any`: directions from the packet types, the same counts and states.
    let from_cooked = pcap_json(&[path_str(&cooked), "--flows", "--json"]);
    assert_eq!(counts_and_states(&from_cooked), counts_and_states(&live));
    let cooked_stats = pcap_json(&[path_str(&cooked), "--stats", "--json"]);
    assert_eq!(tcp_counters(&cooked_stats), tcp_counters(&live_stats));

    // A copy cut inside a record: the flows before the cut, then exit 8 naming the offset.
    let offsets = record_offsets(&ethernet);
    let cut_record = offsets[offsets.len() / 2];
    let bytes = fs::read(&ethernet).expect("reading the capture");
    let truncated = dir.file("truncated.pcap");
    fs::write(&truncated, &bytes[..cut_record as usize + 20]).expect("writing the cut copy");
    let whole_records = dir.file("before-the-cut.pcap");
    fs::write(&whole_records, &bytes[..cut_record as usize]).expect("writing the records");
    let output = pcap(&[path_str(&truncated), "--flows", "--json", "--iface", "x"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_CAPTURE_DAMAGED), "{stderr}");
    assert!(stderr.contains(&format!("byte {cut_record}")), "{stderr}");
    let before_cut: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let expected = pcap_json(&[
        path_str(&whole_records),
        "--flows",
        "--json",
        "--iface",
        "x",
    ]);
    assert!(!expected.is_empty() && expected.len() <= offline.len());
    assert_eq!(by_flow(&before_cut, &[]), by_flow(&expected, &[]));

    // No capture at all.
    let text = dir.file("notes.txt");
    fs::write(&text, "not a capture\n").unwrap();
    for file in [text, dir.file("missing.pcap")] {
        let output = pcap(&[path_str(&file)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(EXIT_NOT_A_CAPTURE), "{stderr}");
        assert!(stderr.contains(path_str(&file)), "{stderr}");
    }
}
