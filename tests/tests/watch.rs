//! `flagtrace watch`, the live reset stream, against real traffic in fresh namespaces with
//! `flagtrace attach` on the client's interface:
//! - each RST arrives as a JSON object with its addresses, ports, TTL and MAC, then its flow's
//!   verdict, as `resets` gives it: the endpoint's for a closed port and for a server's abort, a
//!   middlebox's for a gateway that rejects with a TCP reset; `--pcap` writes the RSTs with
//!   their flows' SYN and SYN/ACK to a file that tshark reads back;
//! - the kernel's rate limit bounds the events of a burst of RSTs, and the drops are reported,
//!   the same number `stats` counts;
//! - no events without a watcher, one watcher at a time, a restarted `attach` keeps the
//!   watcher's lease, and a killed watcher's lease runs out by itself.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use flagtrace_tests::{
    kernel_clock_ns,
    lab::{
        abort, echo_between, expect_refusal, expect_server_reset, flagtrace, flagtrace_bin,
        resets_json, run_ok, Daemon, Endpoint, Family, Loader, VethLab, TIMEOUT,
    },
    seed_story::{seed_lab, GATEWAY_MAC, HELD_PORT, OPEN_PORT, SERVER_INITIAL_TTL},
    tracer::PinDir,
    TempFile,
};
use serde_json::Value;
use tracer_common::{WatchConfig, WATCH_MAP};

const MESSAGE: &[u8] = b"who reset this connection?";
const CLOSED: u16 = 9;
/// The server accepts, then aborts (SO_LINGER 0): a RST after a full handshake.
const ABORT: u16 = 8082;
/// What `watch` prints (on stderr) once it holds its leases.
const WATCH_READY: &str = "flagtrace: watching";
/// How long a lease outlives its last renewal (tracer-user/src/cmd/watch/lease.rs).
const LEASE: Duration = Duration::from_secs(3);

/// `flagtrace --pin-root ROOT watch ARGS`, started once it holds its leases.
fn start_watch(pin_root: &Path, args: &[&str]) -> Daemon {
    let root = pin_root.to_str().expect("UTF-8 pin root");
    Daemon::start(
        Command::new(flagtrace_bin())
            .args(["--pin-root", root, "watch"])
            .args(args),
        WATCH_READY,
    )
}

/// The JSON objects `watch --json` printed so far: every line on stdout must be one.
fn watch_events(watch: &Daemon) -> Vec<Value> {
    let log = watch.log();
    log.lines()
        .filter_map(|line| line.strip_prefix("stdout: "))
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{log}"))
        })
        .collect()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["event"] == kind)
        .collect()
}

/// Waits until `watch` has printed at least `count` objects of `kind`.
fn wait_for(watch: &Daemon, kind: &str, count: usize) {
    let deadline = Instant::now() + TIMEOUT;
    while of_kind(&watch_events(watch), kind).len() < count {
        assert!(
            Instant::now() < deadline,
            "fewer than {count} {kind:?} objects after {TIMEOUT:?}:\n{}",
            watch.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Stops `watch` as Ctrl-C does: it must exit 0 with its totals last. Returns everything it
/// printed, and the totals.
fn interrupt(watch: &mut Daemon) -> (Vec<Value>, Value) {
    let status = watch.stop_with(libc::SIGINT);
    assert!(status.success(), "watch exited {status}:\n{}", watch.log());
    // The threads that forward its output may still be on the last lines.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = watch_events(watch);
        if let Some(end) = events.last().filter(|last| last["event"] == "end") {
            let end = end.clone();
            assert_eq!(end["signal"], "SIGINT", "{end:#}");
            return (events, end);
        }
        assert!(
            Instant::now() < deadline,
            "watch did not end with its totals:\n{}",
            watch.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The server accepts and aborts the connection at once (SO_LINGER 0): a real RST after the
/// handshake. Returns the client's address.
fn aborted_by_server(client: &Endpoint, server: &Endpoint, family: Family) -> SocketAddr {
    let server_addr = server.addr(family, ABORT);
    let listener = server.listen(family, ABORT);
    // The abort waits for the client's connect to return: a RST before that fails the connect.
    let (connected, wait_for_client) = mpsc::channel::<()>();
    let aborter = thread::spawn(move || -> std::io::Result<()> {
        let (stream, _) = listener.accept()?;
        wait_for_client
            .recv_timeout(TIMEOUT)
            .expect("the client connects");
        abort(stream)
    });
    expect_server_reset(client, server_addr, aborter, |_| {
        connected.send(()).expect("the server thread is waiting");
        Ok(())
    })
}

/// A reset the lab makes, and what `watch` must say about it.
struct ExpectedReset {
    family: Family,
    server: SocketAddr,
    /// Known when the connection was made; a refused connect does not tell its port.
    client: Option<SocketAddr>,
    /// TTL or hop limit the RST arrives with.
    rst_ttl: u64,
    reset_by: &'static str,
    /// Phrases one evidence sentence contains, as the reset tests check them.
    phrases: Vec<String>,
    /// The flow had a full handshake: its SYN/ACK is in the pcap too.
    handshake: bool,
}

/// One packet of the pcap file, as tshark reads it.
#[derive(Debug, PartialEq, Eq)]
struct PcapPacket {
    src: SocketAddr,
    dst: SocketAddr,
    syn: bool,
    ack: bool,
    rst: bool,
}

impl PcapPacket {
    fn kind(&self) -> &'static str {
        match (self.syn, self.ack, self.rst) {
            (true, false, false) => "SYN",
            (true, true, false) => "SYN/ACK",
            (false, _, true) => "RST",
            _ => "other",
        }
    }
}

/// The packets of a pcap file, read by tshark: addresses, ports and flags.
fn tshark_packets(path: &str) -> Vec<PcapPacket> {
    let fields = [
        "ip.src",
        "ipv6.src",
        "ip.dst",
        "ipv6.dst",
        "tcp.srcport",
        "tcp.dstport",
        "tcp.flags.syn",
        "tcp.flags.ack",
        "tcp.flags.reset",
    ];
    let mut command = Command::new("tshark");
    command.args(["-r", path, "-T", "fields", "-E", "separator=/t"]);
    for field in fields {
        command.args(["-e", field]);
    }
    let text = run_ok(&mut command);
    // tshark 4.0 prints booleans as 1/0, later versions as True/False.
    let flag = |cell: &str| matches!(cell, "1" | "True" | "true");
    text.lines()
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            assert_eq!(cells.len(), fields.len(), "tshark line {line:?}");
            let addr = |v4: &str, v6: &str, port: &str| -> SocketAddr {
                let ip: IpAddr = if v4.is_empty() { v6 } else { v4 }
                    .parse()
                    .unwrap_or_else(|e| panic!("address in {line:?}: {e}"));
                SocketAddr::new(ip, port.parse().expect("a port"))
            };
            PcapPacket {
                src: addr(cells[0], cells[1], cells[4]),
                dst: addr(cells[2], cells[3], cells[5]),
                syn: flag(cells[6]),
                ack: flag(cells[7]),
                rst: flag(cells[8]),
            }
        })
        .collect()
}

#[test]
fn each_reset_streams_with_its_verdict_and_lands_in_the_pcap() {
    let lab = seed_lab("ftw");
    let client_side = lab.gateway.client_side.iface;
    lab.gateway.forward_rule(&format!(
        "iifname {client_side} tcp dport {HELD_PORT} reject with tcp reset"
    ));
    let pins = PinDir::create().expect("pin root");
    let _loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);
    let pcap = TempFile::new("ft-watch", "pcap");
    let mut watch = start_watch(pins.path(), &["--json", "--pcap", pcap.as_str()]);

    let server_ttl = SERVER_INITIAL_TTL - 1;
    let mut expected = Vec::new();
    for family in [Family::V4, Family::V6] {
        // The server would accept: only the gateway can refuse.
        let _listener = lab.server.listen(family, HELD_PORT);
        // The server's baseline, which tells a forged RST's TTL from the server's.
        echo_between(&lab.client, &lab.server, family, OPEN_PORT, MESSAGE);
        let refused = lab.server.addr(family, CLOSED);
        expect_refusal(&lab.client, refused);
        let rejected = lab.server.addr(family, HELD_PORT);
        expect_refusal(&lab.client, rejected);
        let aborted_client = aborted_by_server(&lab.client, &lab.server, family);
        expected.extend([
            ExpectedReset {
                family,
                server: refused,
                client: None,
                rst_ttl: server_ttl.into(),
                reset_by: "endpoint",
                phrases: vec![family.ttl_phrase(server_ttl)],
                handshake: false,
            },
            ExpectedReset {
                family,
                server: rejected,
                client: None,
                rst_ttl: 64,
                reset_by: "middlebox",
                phrases: vec![family.ttl_phrase(64), family.ttl_phrase(server_ttl)],
                handshake: false,
            },
            ExpectedReset {
                family,
                server: lab.server.addr(family, ABORT),
                client: Some(aborted_client),
                rst_ttl: server_ttl.into(),
                reset_by: "endpoint",
                phrases: vec![family.ttl_phrase(server_ttl)],
                handshake: true,
            },
        ]);
    }
    wait_for(&watch, "verdict", expected.len());
    let (events, end) = interrupt(&mut watch);

    let rsts = of_kind(&events, "rst");
    assert_eq!(rsts.len(), expected.len(), "{events:#?}");
    assert_eq!(end["resets"], expected.len(), "{end:#}");
    assert_eq!(end["events_dropped"], 0, "{end:#}");
    assert!(of_kind(&events, "dropped").is_empty(), "{events:#?}");
    let resets = resets_json(pins.path());
    let position = |wanted: &Value| events.iter().position(|event| event == wanted).unwrap();
    let mut clients = Vec::new();
    for reset in &expected {
        let client_ip = lab.client.addr(reset.family, 0).ip();
        // The RST, from the server's address to the client's, as it arrived.
        let matching: Vec<&&Value> = rsts
            .iter()
            .filter(|rst| {
                rst["src"] == reset.server.ip().to_string()
                    && rst["sport"] == reset.server.port()
                    && rst["dst"] == client_ip.to_string()
            })
            .collect();
        assert_eq!(matching.len(), 1, "RSTs from {}: {rsts:#?}", reset.server);
        let rst = *matching[0];
        let client = SocketAddr::new(client_ip, rst["dport"].as_u64().expect("dport") as u16);
        if let Some(known) = reset.client {
            assert_eq!(client, known, "{rst:#}");
        }
        assert_eq!(rst["iface"], lab.client.iface, "{rst:#}");
        assert_eq!(rst["netns"], lab.client.netns.name(), "{rst:#}");
        assert_eq!(rst["seen_on"], "ingress", "{rst:#}");
        assert_eq!(rst["mac"], GATEWAY_MAC, "{rst:#}");
        assert_eq!(rst["ttl"], reset.rst_ttl, "{rst:#}");
        assert!(
            rst["flags"].as_str().unwrap_or_default().contains("RST"),
            "{rst:#}"
        );

        // Then its verdict, the object `resets --json` prints for the flow.
        let verdicts: Vec<&Value> = of_kind(&events, "verdict")
            .into_iter()
            .filter(|verdict| {
                verdict["client"] == client.to_string()
                    && verdict["server"] == reset.server.to_string()
            })
            .collect();
        assert_eq!(verdicts.len(), 1, "verdicts for {client}: {events:#?}");
        let verdict = verdicts[0];
        assert!(position(rst) < position(verdict), "{events:#?}");
        assert_eq!(verdict["reset_by"], reset.reset_by, "{verdict:#}");
        assert_eq!(verdict["gateway_mac"], GATEWAY_MAC, "{verdict:#}");
        let evidence: Vec<&str> = verdict["evidence"]
            .as_array()
            .unwrap_or_else(|| panic!("evidence is not a list: {verdict:#}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            evidence
                .iter()
                .any(|sentence| reset.phrases.iter().all(|p| sentence.contains(p.as_str()))),
            "no evidence sentence names {:?}: {verdict:#}",
            reset.phrases
        );
        let listed = resets
            .iter()
            .find(|flow| flow["client"] == verdict["client"] && flow["server"] == verdict["server"])
            .unwrap_or_else(|| panic!("resets --json lacks {client}: {resets:#?}"));
        let keys = |object: &Value| -> Vec<String> {
            object
                .as_object()
                .expect("an object")
                .keys()
                .filter(|key| *key != "event")
                .cloned()
                .collect()
        };
        assert_eq!(keys(verdict), keys(listed), "{verdict:#}\n{listed:#}");
        assert_eq!(verdict["reset_by"], listed["reset_by"], "{listed:#}");
        assert_eq!(verdict["evidence"], listed["evidence"], "{listed:#}");
        clients.push(client);
    }

    // The pcap: each reset flow's SYN, SYN/ACK (after a handshake) and RST, in that order, and
    // nothing of the flows that closed normally.
    let packets = tshark_packets(pcap.as_str());
    let mut written = 0;
    for (reset, client) in expected.iter().zip(&clients) {
        let flow: Vec<&PcapPacket> = packets
            .iter()
            .filter(|packet| {
                (packet.src, packet.dst) == (*client, reset.server)
                    || (packet.src, packet.dst) == (reset.server, *client)
            })
            .collect();
        let kinds: Vec<&str> = flow.iter().map(|packet| packet.kind()).collect();
        let wanted: &[&str] = if reset.handshake {
            &["SYN", "SYN/ACK", "RST"]
        } else {
            &["SYN", "RST"]
        };
        assert_eq!(kinds, wanted, "{client} -> {}: {packets:#?}", reset.server);
        // The SYN went from the client, the rest came from the server.
        assert_eq!(flow[0].src, *client, "{flow:#?}");
        assert!(flow[1..].iter().all(|packet| packet.src == reset.server));
        written += flow.len();
    }
    assert_eq!(written, packets.len(), "unexpected packets: {packets:#?}");
}

/// Connects `count` times from `client` to `refused`, a closed port, as fast as it can.
fn refuse(client: &Endpoint, refused: SocketAddr, count: usize) {
    client.netns.enter(|| {
        for _ in 0..count {
            let error = TcpStream::connect_timeout(&refused, TIMEOUT)
                .expect_err("the connection must be refused");
            assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{refused}");
        }
    });
}

/// The totals of `stats --json` for the only attachment under `pin_root`.
fn stats_total(pin_root: &Path) -> Value {
    let root = pin_root.to_str().expect("UTF-8 pin root");
    let output = flagtrace(&["--pin-root", root, "stats", "--json"]);
    assert!(
        output.status.success(),
        "stats failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let stats: Value = serde_json::from_str(lines[0]).expect("JSON");
    stats["total"].clone()
}

/// Until when the pinned watch switch of `endpoint`'s attachment holds its lease.
fn lease_until_ns(pin_root: &Path, endpoint: &Endpoint) -> u64 {
    let pin = pin_root
        .join(endpoint.netns.name())
        .join(endpoint.iface)
        .join(WATCH_MAP);
    let map = MapData::from_pin(&pin).expect("opening the watch switch");
    let switch: Array<_, WatchConfig> = Map::Array(map).try_into().expect("an array");
    switch
        .get(&0, 0)
        .expect("reading the switch")
        .lease_until_ns
}

fn count(object: &Value, key: &str) -> u64 {
    object[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {key:?}: {object:#}"))
}

#[test]
fn the_kernel_rate_limits_a_burst_of_resets_and_watch_reports_the_drops() {
    const CONNECTIONS: usize = 300;
    const RATE: u64 = 5;
    const BURST: u64 = 5;
    let lab = VethLab::create();
    let pins = PinDir::create().expect("pin root");
    let _loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);
    // Events can flow from the first lease on, so the time counts from before the start.
    let started = Instant::now();
    let mut watch = start_watch(
        pins.path(),
        &[
            "--json",
            "--rate",
            &RATE.to_string(),
            "--burst",
            &BURST.to_string(),
        ],
    );
    refuse(
        &lab.client,
        lab.server.addr(Family::V4, CLOSED),
        CONNECTIONS,
    );
    // A renewal reports the drops while the watch goes on.
    wait_for(&watch, "dropped", 1);
    let (events, end) = interrupt(&mut watch);
    let elapsed = started.elapsed().as_secs_f64();

    // Each CPU has its own bucket: a burst, then the rate.
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) } as f64;
    let bound = cpus * (BURST as f64 + RATE as f64 * elapsed) + 2.0;
    let rsts = of_kind(&events, "rst").len();
    assert!(
        rsts >= 1 && rsts as f64 <= bound,
        "{rsts} RSTs in {elapsed:.1} s on {cpus} CPUs: the bound is {bound:.0}"
    );
    assert_eq!(end["resets"], rsts, "{end:#}");
    let dropped = of_kind(&events, "dropped");
    let reported: u64 = dropped.iter().map(|event| count(event, "dropped")).sum();
    assert!(reported > 0, "{events:#?}");
    assert_eq!(count(&end, "events_dropped"), reported, "{end:#}");
    assert_eq!(
        count(dropped.last().unwrap(), "total"),
        reported,
        "{dropped:#?}"
    );

    // The kernel counted every RST, sent few, and dropped the rest: what watch said.
    let total = stats_total(pins.path());
    assert!(count(&total, "rst") >= CONNECTIONS as u64, "{total:#}");
    assert_eq!(count(&total, "events_dropped"), reported, "{total:#}");
    let sent = count(&total, "events");
    assert!(
        sent >= rsts as u64 && sent as f64 <= bound,
        "{sent} events sent, bound {bound:.0}: {total:#}"
    );
}

#[test]
fn no_events_without_a_watcher_and_a_killed_watchers_lease_runs_out() {
    let lab = VethLab::create();
    let pins = PinDir::create().expect("pin root");
    let root = pins.path().to_str().expect("UTF-8 pin root");
    let loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);
    let refused = lab.server.addr(Family::V4, CLOSED);

    refuse(&lab.client, refused, 20);
    let unwatched = stats_total(pins.path());
    assert!(count(&unwatched, "rst") >= 20, "{unwatched:#}");
    assert_eq!(count(&unwatched, "events"), 0, "{unwatched:#}");
    assert_eq!(count(&unwatched, "events_dropped"), 0, "{unwatched:#}");

    let mut watch = start_watch(pins.path(), &["--json"]);
    // One watcher per attachment: a second one is refused, and leaves the first's lease alone.
    let second = flagtrace(&["--pin-root", root, "watch", "--json"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already watched"), "{stderr}");
    refuse(&lab.client, refused, 5);
    wait_for(&watch, "rst", 5);
    let watched = stats_total(pins.path());
    // A SYN and a RST each.
    assert!(count(&watched, "events") >= 10, "{watched:#}");

    // A restarted `attach` keeps the lease: the switch is a global of the programs, which each
    // load writes into its pinned map. The watcher renews it only once a second.
    loader.terminate();
    let _loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);
    let lease = lease_until_ns(pins.path(), &lab.client);
    assert!(
        lease > kernel_clock_ns(),
        "lease {lease} after a new attach"
    );
    refuse(&lab.client, refused, 1);
    wait_for(&watch, "rst", 6);

    let killed = Instant::now();
    watch.stop_with(libc::SIGKILL);
    thread::sleep((LEASE + Duration::from_secs(1)).saturating_sub(killed.elapsed()));
    let expired = stats_total(pins.path());
    refuse(&lab.client, refused, 20);
    let later = stats_total(pins.path());
    assert!(
        count(&later, "rst") >= count(&expired, "rst") + 20,
        "{later:#}"
    );
    for key in ["events", "events_dropped"] {
        assert_eq!(
            count(&later, key),
            count(&expired, key),
            "{key} after the lease ran out: {later:#}"
        );
    }

    // The attachment is free again.
    let mut again = start_watch(pins.path(), &["--json"]);
    refuse(&lab.client, refused, 1);
    wait_for(&again, "rst", 1);
    let (_, end) = interrupt(&mut again);
    assert_eq!(end["resets"], 1, "{end:#}");
}
