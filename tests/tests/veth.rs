//! Real traffic: `flagtrace attach` on the client end of a veth pair between two fresh network
//! namespaces, real TCP over IPv4 and IPv6, and the counts read back with `flagtrace flows
//! --json`. Also: the hooks go away on SIGTERM, the counts survive a restart, and expected
//! failures exit with their documented codes.
//!
//! The lab is quiet (no link-local addresses, no DAD, nothing else talks TCP), so counts are
//! exact: a connection to an open port sends one SYN and gets one SYN/ACK; one to a closed port
//! gets its RST at once, before any SYN retransmission.

use std::{
    io::ErrorKind,
    net::SocketAddr,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use flagtrace_tests::{
    lab::{
        assert_csv_matches_json, echo_exchange, flagtrace, flagtrace_bin, flows_json, hooks_on,
        rfc3339_utc_seconds, run, run_ok, spawn_echo_server, wait_until, Family, Loader, Netns,
        VethLab, TIMEOUT,
    },
    tracer::PinDir,
    unique_name,
};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use serde_json::{json, Value};
use tracer_common::{FlowKey, FlowValue, ResetEntry, COUNTERS_MAP, FLOWS_MAP, RESETS_MAP};

const MESSAGE: &[u8] = b"who reset this connection?";
const CLOSED_PORT: u16 = 9;
/// Slack for comparing the tool's wall-clock timestamps with this process's clock.
const CLOCK_SLACK_SECONDS: f64 = 5.0;

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Opens `port` on the server, sends `data` from the client and checks the echo; returns the
/// client's and the server's addresses.
fn echo(lab: &VethLab, family: Family, port: u16, data: &[u8]) -> (SocketAddr, SocketAddr) {
    let server = lab.server.addr(family, port);
    let echo_server = spawn_echo_server(lab.listen(family, port));
    let (client, echoed) = lab
        .connect(server, |stream| echo_exchange(stream, data))
        .and_then(|exchange| exchange)
        .unwrap_or_else(|e| panic!("echo exchange with {server}: {e}"));
    echo_server
        .join()
        .expect("echo server thread")
        .unwrap_or_else(|e| panic!("echo server {server}: {e}"));
    assert!(
        echoed == data,
        "the echo from {server} differs from what was sent"
    );
    (client, server)
}

/// Connects to a port nobody listens on; returns the server's address.
fn refused(lab: &VethLab, family: Family) -> SocketAddr {
    let server = lab.server.addr(family, CLOSED_PORT);
    let error = lab
        .connect(server, |_| ())
        .expect_err("nothing listens on the closed port");
    assert_eq!(
        error.kind(),
        ErrorKind::ConnectionRefused,
        "{server}: {error}"
    );
    server
}

fn flag_counts(syn: u32, syn_ack: u32, fin: u32, rst: u32) -> Value {
    json!({"syn": syn, "syn_ack": syn_ack, "fin": fin, "rst": rst})
}

/// The one flow whose server is `server`.
fn flow_to(flows: &[Value], server: SocketAddr) -> &Value {
    let matching: Vec<&Value> = flows
        .iter()
        .filter(|flow| flow["server"] == server.to_string())
        .collect();
    assert_eq!(matching.len(), 1, "flows to {server}: {flows:#?}");
    matching[0]
}

/// Checks one flow line of `flows --json` completely.
fn assert_flow(
    flow: &Value,
    lab: &VethLab,
    client: &str,
    (client_to_server, server_to_client): (Value, Value),
    state: &str,
    since: f64,
) {
    let sum = |key: &str| {
        client_to_server[key].as_u64().expect("count")
            + server_to_client[key].as_u64().expect("count")
    };
    // On this flat segment the server is the L2 neighbour: its MAC (a random, locally
    // administered veth address, so no vendor) and its address from the neighbour table.
    let server_ip = flow["server"]
        .as_str()
        .and_then(|server| server.parse::<SocketAddr>().ok())
        .expect("server is an address")
        .ip();
    let reset = verdict_of(flow, state);
    let expected = json!({
        "iface": lab.client.iface,
        "netns": lab.client.netns.name(),
        "client": client,
        "server": flow["server"],
        "syn": sum("syn"),
        "syn_ack": sum("syn_ack"),
        "fin": sum("fin"),
        "rst": sum("rst"),
        "client_to_server": client_to_server,
        "server_to_client": server_to_client,
        "state": state,
        "first_seen": flow["first_seen"],
        "last_seen": flow["last_seen"],
        "reset_by": reset.0,
        // An honest refusal (see `verdict_of`): never a middlebox's, and it answered a SYN.
        "middlebox_role": null,
        "reset_phase": if state == "refused" { json!("syn") } else { Value::Null },
        "reset_delay_ms": refusal_delay(flow, state),
        // The SYN was the only packet before the refusal: no silence to measure.
        "idle_before_ms": null,
        "tls_sni": null,
        "rst_payload": null,
        "evidence": reset.1,
        "signals": reset.2,
        "gateway_mac": lab.server.mac(),
        "gateway_vendor": null,
        "gateway_ip": server_ip.to_string(),
        "gateway_is_default": false,
        "flow_evicted": false,
    });
    assert_eq!(flow, &expected, "flow line differs (left: got)");
    let (first, last) = (seconds(flow, "first_seen"), seconds(flow, "last_seen"));
    let now = unix_seconds();
    assert!(
        since - CLOCK_SLACK_SECONDS <= first && first <= last && last <= now + CLOCK_SLACK_SECONDS,
        "timestamps outside the test's lifetime [{since}, {now}]: {flow}"
    );
}

/// SIGTERMs the loader, which must exit 0 and leave no XDP or TC hook on the interface.
fn terminate_and_check_detached(loader: Loader, netns: &Netns, iface: &str) {
    let status = loader.terminate();
    assert!(
        status.success(),
        "flagtrace attach exited with {status} on SIGTERM"
    );
    let hooks = hooks_on(netns, iface);
    assert!(
        hooks.xdp.is_empty() && hooks.tc.is_empty(),
        "left behind: {hooks:?}"
    );
}

/// The verdict fields a flow must carry. A closed flow has none. A refusal is an honest one
/// here: `endpoint` when another flow gave the server a baseline, `unknown` when none did, and
/// never `middlebox`; its evidence says which (resets.rs checks the sentences themselves), one
/// signal for each sentence.
/// A refusal's `reset_delay_ms`: the time from the SYN to the RST on a veth pair, a tick or two
/// at most; `null` for a flow without a RST.
fn refusal_delay(flow: &Value, state: &str) -> Value {
    let delay = &flow["reset_delay_ms"];
    if state == "closed" {
        return Value::Null;
    }
    assert!(
        delay.as_u64().is_some_and(|ms| ms < 100),
        "a refusal comes at once after the SYN: {flow}"
    );
    delay.clone()
}

fn verdict_of(flow: &Value, state: &str) -> (Value, Value, Value) {
    if state == "closed" {
        return (Value::Null, json!([]), json!([]));
    }
    let reset_by = flow["reset_by"].clone();
    assert!(
        reset_by == "endpoint" || reset_by == "unknown",
        "an honest refusal judged {reset_by}: {flow}"
    );
    let evidence = flow["evidence"].clone();
    assert!(
        evidence
            .as_array()
            .is_some_and(|sentences| !sentences.is_empty()),
        "a reset without evidence: {flow}"
    );
    let signals = flow["signals"].clone();
    assert_eq!(
        signals.as_array().map(Vec::len),
        evidence.as_array().map(Vec::len),
        "one signal per sentence: {flow}"
    );
    (reset_by, evidence, signals)
}

/// A timestamp field of a flow line, in seconds since the Unix epoch.
fn seconds(flow: &Value, key: &str) -> f64 {
    let stamp = flow[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string: {flow}"));
    rfc3339_utc_seconds(stamp).unwrap_or_else(|| panic!("{key} is not RFC 3339 UTC: {flow}"))
}

/// Asserts that two `flows --json` outputs list the same flows with the same counts. Timestamps
/// may differ in the last digits: each run converts boot time to wall-clock time anew.
fn assert_same_flows(got: &[Value], expected: &[Value], what: &str) {
    const TIMESTAMPS: [&str; 2] = ["first_seen", "last_seen"];
    let by_server = |flows: &[Value]| {
        let mut flows = flows.to_vec();
        flows.sort_by_key(|flow| flow["server"].to_string());
        flows
    };
    let (got, expected) = (by_server(got), by_server(expected));
    let without_timestamps = |flow: &Value| {
        let mut flow = flow.clone();
        let fields = flow.as_object_mut().expect("a flow is an object");
        TIMESTAMPS.iter().for_each(|key| drop(fields.remove(*key)));
        flow
    };
    assert_eq!(
        got.iter().map(without_timestamps).collect::<Vec<_>>(),
        expected.iter().map(without_timestamps).collect::<Vec<_>>(),
        "{what}"
    );
    for (got, expected) in got.iter().zip(&expected) {
        for key in TIMESTAMPS {
            let drift = (seconds(got, key) - seconds(expected, key)).abs();
            assert!(
                drift < 0.5,
                "{what}: {key} moved by {drift}s: {got} vs {expected}"
            );
        }
    }
}

/// Checks the one flow of an echo exchange: handshake and close, one FIN each way.
fn assert_closed_flow(
    flows: &[Value],
    lab: &VethLab,
    (client, server): (SocketAddr, SocketAddr),
    since: f64,
) {
    let directions = (flag_counts(1, 0, 1, 0), flag_counts(0, 1, 1, 0));
    let client = client.to_string();
    assert_flow(
        flow_to(flows, server),
        lab,
        &client,
        directions,
        "closed",
        since,
    );
}

/// Checks the one flow of a refused connection: a SYN answered by a RST.
fn assert_refused_flow(flows: &[Value], lab: &VethLab, server: SocketAddr, since: f64) {
    let flow = flow_to(flows, server);
    // The client's ephemeral port is not known to a refused connect; its address is.
    let client = flow["client"]
        .as_str()
        .expect("client is a string")
        .to_owned();
    let client_ip = lab.client.addr(family_of(server), 0).ip();
    let port = client
        .rsplit_once(':')
        .and_then(|(ip, port)| {
            (ip.trim_matches(['[', ']']) == client_ip.to_string()).then_some(port)
        })
        .and_then(|port| port.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("client {client} is not {client_ip}:<port>"));
    assert_ne!(port, 0);
    let directions = (flag_counts(1, 0, 0, 0), flag_counts(0, 0, 0, 1));
    assert_flow(flow, lab, &client, directions, "refused", since);
}

fn family_of(addr: SocketAddr) -> Family {
    if addr.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

/// A pipe is not a terminal: `flows` prints every column in full there, whatever `$COLUMNS`
/// says.
fn assert_full_table_when_piped(pins: &Path) {
    let root = pins.to_str().expect("UTF-8 pin root");
    let table = run_ok(Command::new(flagtrace_bin()).env("COLUMNS", "40").args([
        "--pin-root",
        root,
        "flows",
    ]));
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "IFACE",
            "NETNS",
            "CLIENT",
            "SERVER",
            "STATE",
            "RESET_BY",
            "SYN",
            "SYN_ACK",
            "FIN",
            "RST(C>S/S>C)",
            "FIRST_SEEN",
            "LAST_SEEN"
        ],
        "{table}"
    );
    assert!(!table.contains('…'), "nothing cut: {table}");
}

/// `flagtrace stats --json` for the lab's client interface.
fn stats(pins: &Path, lab: &VethLab) -> Value {
    let root = pins.to_str().expect("UTF-8 pin root");
    let output =
        run_ok(Command::new(flagtrace_bin()).args(["--pin-root", root, "stats", "--json"]));
    let lines: Vec<Value> = output
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(lines.len(), 1, "one attachment in the pin root: {output}");
    let stats = lines.into_iter().next().expect("one line");
    assert_eq!(stats["iface"], lab.client.iface);
    assert_eq!(stats["netns"], lab.client.netns.name());
    stats
}

#[test]
fn tcp_over_ipv4_and_ipv6_is_counted_exactly() {
    let since = unix_seconds();
    let pins = PinDir::create().expect("pin root");
    let lab = VethLab::create();
    let _loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);

    let closed_v4 = echo(&lab, Family::V4, 8080, MESSAGE);
    let closed_v6 = echo(&lab, Family::V6, 8443, MESSAGE);
    let refused_v4 = refused(&lab, Family::V4);
    let refused_v6 = refused(&lab, Family::V6);

    let flows = flows_json(pins.path());
    assert_eq!(flows.len(), 4, "exactly the four connections: {flows:#?}");
    assert_closed_flow(&flows, &lab, closed_v4, since);
    assert_closed_flow(&flows, &lab, closed_v6, since);
    assert_refused_flow(&flows, &lab, refused_v4, since);
    assert_refused_flow(&flows, &lab, refused_v6, since);
    assert_csv_matches_json(pins.path(), &["flows"], &flows);
    assert_full_table_when_piped(pins.path());

    // The client's SYNs leave through TC, so egress creates every flow; real traffic has no
    // malformed frames.
    let stats = stats(pins.path(), &lab);
    assert_csv_matches_json(pins.path(), &["stats"], std::slice::from_ref(&stats));
    assert_eq!(stats["flows"], 4);
    assert_eq!(stats["egress"]["flows_created"], 4);
    assert_eq!(stats["ingress"]["flows_created"], 0);
    assert_eq!(stats["total"]["parse_errors"], 0);
    for hook in ["ingress", "egress"] {
        assert!(stats[hook]["tcp"].as_u64().expect("count") >= 4, "{stats}");
    }
}

#[test]
fn ten_megabytes_arrive_intact_in_both_directions() {
    let since = unix_seconds();
    let pins = PinDir::create().expect("pin root");
    let lab = VethLab::create();
    let _loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);
    let mut data = vec![0u8; 10 << 20];
    SmallRng::seed_from_u64(0x5eed).fill(&mut data[..]);
    // echo() compares the 10 MB that came back with what was sent.
    let exchange = echo(&lab, Family::V4, 5001, &data);
    assert_closed_flow(&flows_json(pins.path()), &lab, exchange, since);
}

#[test]
fn hooks_go_away_on_sigterm_and_counts_survive_a_restart() {
    let since = unix_seconds();
    let pins = PinDir::create().expect("pin root");
    let lab = VethLab::create();
    let (netns, iface) = (&lab.client.netns, lab.client.iface);

    let loader = Loader::attach(netns, pins.path(), iface);
    let hooks = hooks_on(netns, iface);
    // The lookup must see the hooks while attached, or the checks below prove nothing.
    assert!(
        !hooks.xdp.is_empty() && !hooks.tc.is_empty(),
        "not attached: {hooks:?}"
    );
    let first = refused(&lab, Family::V4);
    let before = flows_json(pins.path());
    assert_refused_flow(&before, &lab, first, since);
    terminate_and_check_detached(loader, netns, iface);
    assert_same_flows(
        &flows_json(pins.path()),
        &before,
        "pins must keep the counts",
    );

    let loader = Loader::attach(netns, pins.path(), iface);
    let after_restart = flows_json(pins.path());
    assert_same_flows(
        &after_restart,
        &before,
        "a restarted attach must reuse the pinned counts",
    );
    // And it counts into the same table.
    let second = refused(&lab, Family::V6);
    let flows = flows_json(pins.path());
    assert_eq!(flows.len(), 2, "{flows:#?}");
    assert_refused_flow(&flows, &lab, first, since);
    assert_refused_flow(&flows, &lab, second, since);
    terminate_and_check_detached(loader, netns, iface);
}

/// A copy of the binary that an unprivileged user may run, removed on drop.
struct PublicCopy {
    dir: PathBuf,
}

impl PublicCopy {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("flagtrace-test-bin"));
        std::fs::create_dir(&dir).expect("creating a temp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::copy(flagtrace_bin(), dir.join("flagtrace")).expect("copying the binary");
        std::fs::set_permissions(
            dir.join("flagtrace"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        Self { dir }
    }
}

impl Drop for PublicCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `flagtrace ARGS` expecting exit `code` and one line on stderr.
fn assert_fails(output: std::process::Output, code: i32, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: stderr {stderr:?}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "{what}: one clear line, got {stderr:?}"
    );
    stderr
}

#[test]
fn expected_failures_exit_with_documented_codes() {
    let pins = PinDir::create().expect("pin root");
    let lab = VethLab::create();
    let root = pins.path().to_str().expect("UTF-8 pin root");
    let netns = lab.client.netns.name();

    let output = flagtrace(&["--netns", netns, "--pin-root", root, "attach", "nosuch0"]);
    assert_fails(output, 4, "attach to a missing interface");

    let missing_netns = unique_name("ft-missing");
    let output = flagtrace(&[
        "--netns",
        &missing_netns,
        "--pin-root",
        root,
        "attach",
        "veth0",
    ]);
    assert_fails(output, 5, "attach in a missing namespace");

    let output = flagtrace(&["--pin-root", root, "flows", "--json"]);
    assert_fails(output, 6, "flows with an empty pin root");

    // Pins left by an older build: FLOWS and RESETS as they still are, COUNTERS as it was
    // before `packets` became derived (a 40-byte value). Reusing them would misread every counter; flagtrace
    // must refuse them.
    let pin_dir = pins.path().join(netns).join(lab.client.iface);
    std::fs::create_dir_all(&pin_dir).expect("creating the pin dir");
    let key = size_of::<FlowKey>().to_string();
    let flow = size_of::<FlowValue>().to_string();
    let reset = size_of::<ResetEntry>().to_string();
    for (name, map_type, key, value, entries) in [
        (FLOWS_MAP, "lru_hash", key.as_str(), flow.as_str(), "16"),
        (RESETS_MAP, "array", "4", reset.as_str(), "16"),
        (COUNTERS_MAP, "percpu_array", "4", "40", "2"),
    ] {
        let path = pin_dir.join(name);
        run_ok(Command::new("bpftool").args([
            "map",
            "create",
            path.to_str().expect("UTF-8 pin path"),
            "type",
            map_type,
            "key",
            key,
            "value",
            value,
            "entries",
            entries,
            "name",
            name,
        ]));
    }
    let output = flagtrace(&[
        "--netns",
        netns,
        "--pin-root",
        root,
        "attach",
        lab.client.iface,
    ]);
    assert_fails(output, 7, "attach over a pin of an older format");
    let output = flagtrace(&["--pin-root", root, "stats", "--json"]);
    let stderr = assert_fails(output, 7, "stats over a pin of an older format");
    assert!(
        stderr.contains(COUNTERS_MAP),
        "should name the old map: {stderr}"
    );
    // Beside a healthy attachment, the broken one is reported and skipped, not fatal.
    let healthy = Loader::attach(&lab.server.netns, pins.path(), lab.server.iface);
    let output = flagtrace(&["--pin-root", root, "stats", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "the healthy attachment: {stdout}"
    );
    assert!(stdout.contains(lab.server.netns.name()), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(COUNTERS_MAP) && stderr.contains("skipped"),
        "the broken one, named: {stderr}"
    );
    assert!(healthy.terminate().success());
    std::fs::remove_dir_all(pins.path().join(netns)).expect("removing the old pin");

    let public = PublicCopy::new();
    let nobody = 65534;
    let output = run(Command::new(public.dir.join("flagtrace"))
        .args([
            "--netns",
            netns,
            "--pin-root",
            root,
            "attach",
            lab.client.iface,
        ])
        .uid(nobody)
        .gid(nobody));
    let stderr = assert_fails(output, 3, "attach without privileges");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_NET_ADMIN"),
        "should name the capabilities: {stderr}"
    );
    let hooks = hooks_on(&lab.client.netns, lab.client.iface);
    assert!(
        hooks.xdp.is_empty() && hooks.tc.is_empty(),
        "left behind: {hooks:?}"
    );
}

#[test]
fn detach_refuses_a_running_attach_and_the_attach_says_when_forced_out() {
    let pins = PinDir::create().expect("pin root");
    let lab = VethLab::create();
    let loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);
    let root = pins.path().to_str().expect("UTF-8 path");
    let detach = |extra: &[&str]| {
        let mut args = vec![
            "--netns",
            lab.client.netns.name(),
            "--pin-root",
            root,
            "detach",
            lab.client.iface,
        ];
        args.extend(extra);
        flagtrace(&args)
    };

    let refused = detach(&[]);
    assert_eq!(refused.status.code(), Some(10), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("belong to a running process") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(
        !hooks_on(&lab.client.netns, lab.client.iface).xdp.is_empty(),
        "a refused detach leaves the hooks"
    );

    let forced = detach(&["--force"]);
    assert!(forced.status.success(), "{forced:?}");
    let (status, log) = loader.wait();
    assert_eq!(
        status.code(),
        Some(11),
        "the blinded attach ends non-zero:\n{log}"
    );
    assert!(log.contains("were removed"), "and says why:\n{log}");
}

#[test]
fn a_closed_output_pipe_ends_a_command_quietly() {
    let pins = PinDir::create().expect("pin root");
    let lab = VethLab::create();
    let _loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);
    refused(&lab, Family::V4);
    let root = pins.path().to_str().expect("UTF-8 path");
    for stderr_too in [false, true] {
        // A reader that went away before the output came: `flagtrace flows | head -0`.
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let mut command = Command::new(flagtrace_bin());
        command
            .args(["--pin-root", root, "flows", "--json"])
            .stdin(std::process::Stdio::null())
            .stdout(writer.try_clone().expect("the pipe again"));
        let stderr = if stderr_too {
            command.stderr(writer);
            None
        } else {
            drop(writer);
            let (stderr, stderr_writer) = std::io::pipe().expect("a pipe for stderr");
            command.stderr(stderr_writer);
            Some(stderr)
        };
        let mut child = command.spawn().expect("starting flagtrace");
        drop(command);
        let status = wait_until(&mut child, TIMEOUT).expect("flows ends at once");
        let said = stderr.map_or_else(String::new, |mut stderr| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut text).expect("reading stderr");
            text
        });
        assert_eq!(
            (status.code(), said.as_str()),
            (Some(0), ""),
            "stderr on the closed pipe too: {stderr_too}"
        );
    }
}
