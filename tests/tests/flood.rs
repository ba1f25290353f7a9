//! Reset evidence that a flood cannot starve. flagtrace on a server's interface, with small
//! tables (1,024 flows, 64 reset entries) so that a bounded flood overwhelms them: a connection
//! the server resets before a SYN flood from made-up sources (16,384 SYNs from each CPU, half to
//! a closed port, which the server refuses, half to an open one), and one it resets right
//! after. Expected: both listed by `resets`, each with its evidence and the server's own
//! verdict, the first from the reset table's copy of its flow (the flood evicted its flow
//! entry), and no RST counted without evidence: the refusals of the flood took only each
//! other's entries.

use std::process::Command;

use flagtrace_tests::{
    lab::{
        aborted_after_the_request, mac_of, resets_json, run_ok, stats_json, Family, Loader, VethLab,
    },
    tracer::PinDir,
};
use serde_json::Value;

const FT_LAB: &str = env!("CARGO_BIN_EXE_ft-lab");
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const CLOSED_PORT: u16 = 9;
const OPEN_PORT: u16 = 8080;
const BEFORE_PORT: u16 = 8081;
const AFTER_PORT: u16 = 8082;
const MAX_FLOWS: u32 = 1024;
const MAX_RESETS: u32 = 64;
const FLOOD_SYNS: u32 = 16 * MAX_FLOWS;

#[test]
fn reset_evidence_survives_a_syn_flood_from_made_up_sources() {
    let pins = PinDir::create().expect("pin root");
    let lab = VethLab::create();
    let server = &lab.server;
    // The server answers the made-up sources through the client's side (which drops it all),
    // so that its refusals leave through the attached interface.
    server
        .netns
        .ip(&["route", "add", "198.18.0.0/15", "via", "10.200.0.1"]);
    for iface in ["all", "default", server.iface] {
        server
            .netns
            .sysctl(&format!("net/ipv4/conf/{iface}/rp_filter"), "0");
    }
    let _listener = server.listen(Family::V4, OPEN_PORT);
    let _loader = Loader::attach_with(
        &server.netns,
        pins.path(),
        server.iface,
        &[
            "--max-flows",
            &MAX_FLOWS.to_string(),
            "--max-resets",
            &MAX_RESETS.to_string(),
        ],
    );

    let before = aborted_after_the_request(&lab.client, server, Family::V4, BEFORE_PORT, REQUEST);
    // One flood from each CPU (at most 8): a veth delivers on the sending CPU, and the kernel's
    // LRU evicts only entries that CPU's own inserts have handed to the shared list, as traffic
    // spread over all CPUs would.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let ports = format!("{CLOSED_PORT},{OPEN_PORT}");
    let server_mac = mac_of(&server.netns, server.iface);
    for cpu in 0..cpus {
        let flood = run_ok(
            lab.client
                .netns
                .command("taskset")
                .args(["-c", &cpu.to_string(), FT_LAB, "syn-flood", "--iface"])
                .args([
                    lab.client.iface,
                    "--server",
                    "10.200.0.2",
                    "--ports",
                    &ports,
                ])
                .args(["--to-mac", &server_mac, "--count", &FLOOD_SYNS.to_string()])
                .args(["--timeout", "20"]),
        );
        assert!(
            flood.contains(&format!("sent {FLOOD_SYNS} SYNs")),
            "{flood}"
        );
    }
    let after = aborted_after_the_request(&lab.client, server, Family::V4, AFTER_PORT, REQUEST);

    let resets = resets_json(pins.path());
    let stats = stats_json(pins.path());
    let total = &stats[0]["total"];
    eprintln!("{} reset flows listed; counters: {total}", resets.len());
    assert!(
        total["rst"].as_u64().unwrap_or(0) > u64::from(FLOOD_SYNS / 4),
        "the server refused the flood's SYNs to the closed port: {total}"
    );
    assert_eq!(
        total["resets_unrecorded"], 0,
        "every RST found an entry: {total}"
    );
    for (client, evicted) in [(before, true), (after, false)] {
        let listed: Vec<&Value> = resets
            .iter()
            .filter(|flow| flow["client"] == client.to_string())
            .collect();
        let [flow] = listed[..] else {
            panic!("{client} listed once: {listed:#?}");
        };
        eprintln!("{flow}");
        assert_eq!(flow["reset_by"], "endpoint", "{flow:#}");
        assert_eq!(flow["flow_evicted"], evicted, "{flow:#}");
        let signals = flow["signals"].as_array().expect("signals");
        assert!(
            !signals.is_empty() && signals.iter().all(|s| s["signal"] != "evidence_lost"),
            "the RST's evidence was kept: {flow:#}"
        );
    }
    // The text says where an evicted flow's row comes from.
    let root = pins.path().to_str().expect("UTF-8 pin root");
    let text = run_ok(Command::new(flagtrace_tests::lab::flagtrace_bin()).args([
        "--pin-root",
        root,
        "resets",
    ]));
    assert!(text.contains("from the reset table's copy"), "{text}");
}

/// A reset table full of connections' evidence, all younger than a minute, keeps it, and the
/// next connection's RST goes unrecorded: the kernel program says so through aya-log, and
/// `attach` passes it on stderr, once per power of two of such RSTs.
#[test]
fn a_full_reset_table_is_told_on_stderr() {
    const WAYS: u16 = 4;
    let pins = PinDir::create().expect("pin root");
    let lab = VethLab::create();
    let server = &lab.server;
    let loader = Loader::attach_with(
        &server.netns,
        pins.path(),
        server.iface,
        &["--max-resets", &WAYS.to_string()],
    );
    for port in AFTER_PORT..=AFTER_PORT + WAYS {
        aborted_after_the_request(&lab.client, server, Family::V4, port, REQUEST);
    }
    let total = &stats_json(pins.path())[0]["total"];
    assert_eq!(total["resets_unrecorded"], 1, "{total}");
    let log = loader.log();
    assert!(
        log.contains("flagtrace: reset table full: 1 RSTs on egress"),
        "{log}"
    );
}
