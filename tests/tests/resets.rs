//! Who reset the connection? Labs in fresh network namespaces where the answer is known, with
//! `flagtrace attach` on the client's interface, and the verdicts of `flows --json` and
//! `resets --json` checked: `reset_by`, the evidence sentences, and the gateway's MAC, vendor
//! and address.
//!
//! - honest resets (a closed port, a server that closes with unread data) are the endpoint's,
//!   and a normal close has no verdict, over repeated rounds on every topology: never a false
//!   "middlebox";
//! - a gateway that rejects a port with a TCP reset (nftables) is a middlebox: its RST starts
//!   at the gateway's TTL, the server's packets at the server's;
//! - the seed story (a gateway that holds SYNs and resets them seconds later), also as
//!   `ft-lab demo` tells it;
//! - an injector on the client's segment (its own MAC) is a middlebox, caught by the MAC and by
//!   the real server sending on past "its" reset.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::mpsc,
    thread,
    time::Duration,
};

use flagtrace_tests::{
    lab::{
        assert_csv_matches_json, echo_between, expect_forged_reset, expect_refusal,
        expect_server_reset, flows_json, resets_json, run, start_ft_lab, Endpoint, Family, Loader,
        Port, ResetSeen, RoutedLab, SegmentLab, VethLab, TIMEOUT,
    },
    seed_story::{
        seed_lab, SeedStory, CONNECTIONS, GATEWAY_MAC, HELD_PORT, OPEN_PORT, RESET_DELAY,
        SERVER_INITIAL_TTL,
    },
    tracer::PinDir,
};
use serde_json::Value;

const FT_LAB: &str = env!("CARGO_BIN_EXE_ft-lab");
const MESSAGE: &[u8] = b"who reset this connection?";
const OPEN: u16 = 8080;
const CLOSED: u16 = 9;
const UNREAD: u16 = 8081;
/// What `ieee-data` calls the holder of 00:01:d7.
const F5: &str = "F5 Networks";

/// The device that hands the client the server's packets, as flagtrace should name it.
struct ExpectedGateway {
    mac: String,
    /// Its address in each family, as the client's neighbour table knows it.
    ips: [IpAddr; 2],
    is_default: bool,
    /// A word of the vendor's name, or `None` for a locally administered MAC.
    vendor: Option<&'static str>,
}

impl ExpectedGateway {
    /// The other end of a flat link: the server itself.
    fn server(server: &Endpoint) -> Self {
        Self {
            mac: server.mac(),
            ips: [Family::V4, Family::V6].map(|family| server.addr(family, 0).ip()),
            is_default: false,
            vendor: None,
        }
    }

    /// The router in front of the client, with the F5 MAC.
    fn router(lab: &RoutedLab) -> Self {
        let port: &Port = &lab.gateway.client_side;
        Self {
            mac: GATEWAY_MAC.to_owned(),
            ips: [Family::V4, Family::V6].map(|family| port.ip(family)),
            is_default: true,
            vendor: Some(F5),
        }
    }

    fn assert_names(&self, flow: &Value) {
        assert_eq!(
            flow["gateway_mac"],
            self.mac.as_str(),
            "gateway_mac: {flow:#}"
        );
        let server: SocketAddr = flow["server"]
            .as_str()
            .and_then(|server| server.parse().ok())
            .unwrap_or_else(|| panic!("server is not an address: {flow:#}"));
        let ip = self.ips[usize::from(server.is_ipv6())];
        assert_eq!(flow["gateway_ip"], ip.to_string(), "gateway_ip: {flow:#}");
        assert_eq!(
            flow["gateway_is_default"], self.is_default,
            "gateway_is_default: {flow:#}"
        );
        match self.vendor {
            Some(vendor) => {
                let named = flow["gateway_vendor"].as_str().unwrap_or_default();
                assert!(named.contains(vendor), "gateway_vendor: {flow:#}");
            }
            None => assert_eq!(flow["gateway_vendor"], Value::Null, "{flow:#}"),
        }
    }
}

/// What flagtrace says about the lab's flows, from both commands.
struct Verdicts {
    flows: Vec<Value>,
}

impl Verdicts {
    /// Reads `flows --json` and `resets --json`, and checks that the second lists exactly the
    /// flows of the first that carried a RST, with the same verdicts.
    fn read(pin_root: &Path) -> Self {
        let flows = flows_json(pin_root);
        let resets = resets_json(pin_root);
        let key = |flow: &Value| (flow["client"].to_string(), flow["server"].to_string());
        let mut reset_flows: Vec<&Value> = flows
            .iter()
            .filter(|flow| flow["rst"].as_u64().expect("rst count") > 0)
            .collect();
        let mut listed: Vec<&Value> = resets.iter().collect();
        reset_flows.sort_by_key(|flow| key(flow));
        listed.sort_by_key(|flow| key(flow));
        let essentials = |flow: &&Value| {
            (
                key(flow),
                flow["reset_by"].clone(),
                flow["evidence"].clone(),
                flow["gateway_mac"].clone(),
            )
        };
        assert_eq!(
            listed.iter().map(essentials).collect::<Vec<_>>(),
            reset_flows.iter().map(essentials).collect::<Vec<_>>(),
            "resets --json must list the flows with a RST, as flows --json does"
        );
        // The vendors ("F5 Networks, Inc.") and the evidence make CSV quote.
        assert_csv_matches_json(pin_root, &["resets"], &resets);
        Self { flows }
    }

    /// The one flow to `server` (from `client` when given).
    fn flow(&self, client: Option<SocketAddr>, server: SocketAddr) -> &Value {
        let matching: Vec<&Value> = self
            .flows
            .iter()
            .filter(|flow| {
                flow["server"] == server.to_string()
                    && client.is_none_or(|client| flow["client"] == client.to_string())
            })
            .collect();
        assert_eq!(matching.len(), 1, "flows to {server}: {:#?}", self.flows);
        matching[0]
    }

    /// No flow says "middlebox".
    fn assert_no_middlebox(&self) {
        for flow in &self.flows {
            assert_ne!(flow["reset_by"], "middlebox", "false middlebox: {flow:#}");
        }
    }
}

/// The evidence sentences of a flow.
fn evidence(flow: &Value) -> Vec<&str> {
    flow["evidence"]
        .as_array()
        .unwrap_or_else(|| panic!("evidence is not a list: {flow:#}"))
        .iter()
        .map(|sentence| {
            sentence
                .as_str()
                .unwrap_or_else(|| panic!("evidence holds a non-string: {flow:#}"))
        })
        .collect()
}

/// Asserts the flow's verdict, and that some evidence sentence contains all of `phrases`.
fn assert_reset_by(flow: &Value, reset_by: &str, phrases: &[&str]) {
    assert_eq!(flow["reset_by"], reset_by, "reset_by: {flow:#}");
    let sentences = evidence(flow);
    assert!(
        sentences
            .iter()
            .any(|sentence| phrases.iter().all(|phrase| sentence.contains(phrase))),
        "no evidence sentence names {phrases:?}: {flow:#}"
    );
}

/// A flow that closed without a RST has no verdict and no evidence.
fn assert_no_reset(flow: &Value) {
    assert_eq!(flow["rst"], 0, "{flow:#}");
    assert_eq!(flow["reset_by"], Value::Null, "{flow:#}");
    assert_eq!(flow["evidence"], serde_json::json!([]), "{flow:#}");
}

/// The server accepts, waits for the client's data, and closes without reading it: its stack
/// resets the connection (RFC 2525), a real RST after the handshake. Returns the client's
/// address.
fn close_with_unread_data(client: &Endpoint, server: &Endpoint, family: Family) -> SocketAddr {
    let server_addr = server.addr(family, UNREAD);
    let listener = server.listen(family, UNREAD);
    let closer = thread::spawn(move || -> std::io::Result<()> {
        let (stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.peek(&mut [0u8; 1])?;
        Ok(())
    });
    expect_server_reset(client, server_addr, closer, |stream| {
        stream.write_all(MESSAGE)
    })
}

/// The three honest cases of one family, as (client, server) addresses.
struct HonestFlows {
    family: Family,
    /// A normal close, which is also the baseline of the others.
    normal: (SocketAddr, SocketAddr),
    /// A closed port's server (the client's port is not known to a refused connect).
    refused: SocketAddr,
    /// A server that closed with unread data.
    unread: (SocketAddr, SocketAddr),
}

/// A normal close, a closed port, and a server that closes with unread data, in that order.
fn honest_traffic(client: &Endpoint, server: &Endpoint, family: Family) -> HonestFlows {
    let normal = echo_between(client, server, family, OPEN, MESSAGE);
    let refused = server.addr(family, CLOSED);
    expect_refusal(client, refused);
    let unread = (
        close_with_unread_data(client, server, family),
        server.addr(family, UNREAD),
    );
    HonestFlows {
        family,
        normal,
        refused,
        unread,
    }
}

impl HonestFlows {
    /// `server_ttl`: the TTL the server's packets arrive with.
    fn assert_endpoint(&self, verdicts: &Verdicts, server_ttl: u8, gateway: &ExpectedGateway) {
        let (client, server) = self.normal;
        let normal = verdicts.flow(Some(client), server);
        assert_no_reset(normal);
        gateway.assert_names(normal);
        let rst_ttl = self.family.ttl_phrase(server_ttl);
        for flow in [
            verdicts.flow(None, self.refused),
            verdicts.flow(Some(self.unread.0), self.unread.1),
        ] {
            assert_reset_by(flow, "endpoint", &[&rst_ttl]);
            gateway.assert_names(flow);
        }
    }
}

/// A lab with a client and a real server, and flagtrace on the client.
enum Honest {
    Veth(VethLab),
    Segment(SegmentLab),
    Routed(RoutedLab),
}

impl Honest {
    fn ends(&self) -> (&Endpoint, &Endpoint) {
        match self {
            Honest::Veth(lab) => (&lab.client, &lab.server),
            Honest::Segment(lab) => (&lab.client, &lab.server),
            Honest::Routed(lab) => (&lab.client, &lab.server),
        }
    }

    /// The TTL of the server's packets at the client, and the device that hands them over.
    fn path(&self) -> (u8, ExpectedGateway) {
        match self {
            Honest::Routed(lab) => (SERVER_INITIAL_TTL - 1, ExpectedGateway::router(lab)),
            _ => (64, ExpectedGateway::server(self.ends().1)),
        }
    }
}

#[test]
fn honest_resets_are_the_endpoints_over_repeated_rounds() {
    const ROUNDS: usize = 5;
    for round in 0..ROUNDS {
        let lab = match round % 3 {
            0 => Honest::Veth(VethLab::create()),
            1 => Honest::Routed(seed_lab("ft")),
            _ => Honest::Segment(SegmentLab::create()),
        };
        let pins = PinDir::create().expect("pin root");
        let (client, server) = lab.ends();
        let _loader = Loader::attach(&client.netns, pins.path(), client.iface);
        let traffic = [Family::V4, Family::V6].map(|family| honest_traffic(client, server, family));

        let verdicts = Verdicts::read(pins.path());
        assert_eq!(
            verdicts.flows.len(),
            6,
            "round {round}: {:#?}",
            verdicts.flows
        );
        verdicts.assert_no_middlebox();
        let (server_ttl, gateway) = lab.path();
        for flows in &traffic {
            flows.assert_endpoint(&verdicts, server_ttl, &gateway);
        }
    }
}

#[test]
fn a_gateway_that_rejects_with_a_tcp_reset_is_a_middlebox() {
    let lab = seed_lab("ft");
    let client_side = lab.gateway.client_side.iface;
    lab.gateway.forward_rule(&format!(
        "iifname {client_side} tcp dport {HELD_PORT} reject with tcp reset"
    ));
    let pins = PinDir::create().expect("pin root");
    let _loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);
    let gateway = ExpectedGateway::router(&lab);

    for family in [Family::V4, Family::V6] {
        // The server would accept: only the gateway can refuse.
        let _listener = lab.server.listen(family, HELD_PORT);
        let baseline = echo_between(&lab.client, &lab.server, family, OPEN_PORT, MESSAGE);
        let rejected = lab.server.addr(family, HELD_PORT);
        expect_refusal(&lab.client, rejected);
        let refused = lab.server.addr(family, CLOSED);
        expect_refusal(&lab.client, refused);

        let verdicts = Verdicts::read(pins.path());
        assert_no_reset(verdicts.flow(Some(baseline.0), baseline.1));
        let server_ttl = family.ttl_phrase(SERVER_INITIAL_TTL - 1);
        let endpoint = verdicts.flow(None, refused);
        assert_reset_by(endpoint, "endpoint", &[&server_ttl]);
        gateway.assert_names(endpoint);
        // The gateway's own stack starts its RST at 64, and it is 0 hops away.
        let middlebox = verdicts.flow(None, rejected);
        assert_reset_by(
            middlebox,
            "middlebox",
            &[&family.ttl_phrase(64), &server_ttl],
        );
        gateway.assert_names(middlebox);
    }
}

#[test]
fn the_seed_storys_full_proxy_is_a_middlebox() {
    let story = SeedStory::build("ft");
    let traffic = story.run_traffic();
    for (_, after) in &traffic.reset {
        assert!(
            *after >= RESET_DELAY - Duration::from_millis(100),
            "reset after {after:?}, before the gateway's delay:\n{}",
            story.logs()
        );
    }
    let verdicts = Verdicts::read(story.pin_root());
    let gateway = ExpectedGateway::router(&story.lab);
    for client in &traffic.answered {
        assert_no_reset(verdicts.flow(Some(*client), story.server(OPEN_PORT)));
    }
    for (client, _) in &traffic.reset {
        let flow = verdicts.flow(Some(*client), story.server(HELD_PORT));
        // The gateway answered the handshake and reset at 0 hops; the server's port 80 is 1
        // hop away.
        assert_reset_by(flow, "middlebox", &["TTL 64 (0 hops)", "TTL 127 (1 hop)"]);
        assert_eq!(flow["middlebox_role"], "proxy", "{flow:#}");
        assert_eq!(flow["reset_phase"], "request", "{flow:#}");
        gateway.assert_names(flow);
    }
}

/// A gateway that holds the SYNs to a port (nftables drops them, so the server never sees them)
/// and answers each one [`RESET_DELAY`] later with a RST in the server's name
/// (`ft-lab delayed-reset`).
#[test]
fn a_gateway_that_holds_syns_and_refuses_late_is_a_middlebox() {
    let lab = seed_lab("ft");
    let held_at = lab.gateway.client_side.iface;
    lab.gateway
        .forward_rule(&format!("iifname {held_at} tcp dport {HELD_PORT} drop"));
    let resetter = start_ft_lab(
        &lab.gateway.netns,
        Path::new(FT_LAB),
        &[
            "delayed-reset",
            "--iface",
            held_at,
            "--port",
            &HELD_PORT.to_string(),
            "--delay-ms",
            &RESET_DELAY.as_millis().to_string(),
        ],
    );
    let pins = PinDir::create().expect("pin root");
    let loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);
    let answered = echo_between(&lab.client, &lab.server, Family::V4, OPEN_PORT, MESSAGE);
    let held = lab.server.addr(Family::V4, HELD_PORT);
    let refused_after: Vec<Duration> = thread::scope(|scope| {
        let connections: Vec<_> = (0..CONNECTIONS)
            .map(|_| scope.spawn(|| expect_refusal(&lab.client, held)))
            .collect();
        connections
            .into_iter()
            .map(|connection| connection.join().expect("a refused connection"))
            .collect()
    });
    for waited in &refused_after {
        assert!(
            *waited >= RESET_DELAY - Duration::from_millis(100),
            "refused after {waited:?}, before the gateway's delay:\nflagtrace attach:\n{}\n\
             ft-lab delayed-reset:\n{}",
            loader.log(),
            resetter.log()
        );
    }
    let verdicts = Verdicts::read(pins.path());
    let gateway = ExpectedGateway::router(&lab);
    assert_no_reset(verdicts.flow(Some(answered.0), answered.1));
    let refused: Vec<&Value> = verdicts
        .flows
        .iter()
        .filter(|flow| flow["server"] == held.to_string())
        .collect();
    assert_eq!(refused.len(), CONNECTIONS, "{:#?}", verdicts.flows);
    for flow in refused {
        assert_reset_by(flow, "middlebox", &["TTL 64", "TTL 127"]);
        assert_eq!(flow["middlebox_role"], "on_path", "{flow:#}");
        assert_eq!(flow["reset_phase"], "syn", "{flow:#}");
        gateway.assert_names(flow);
        // Supporting: the refusal took the gateway's delay, while port 80 answered at once.
        let held_for = evidence(flow)
            .iter()
            .find_map(|sentence| {
                let before = sentence.split_once(" s after the SYN")?.0;
                before.rsplit(' ').next()?.parse::<f64>().ok()
            })
            .unwrap_or_else(|| panic!("no evidence of the delay: {flow:#}"));
        // The resetter may be late on a busy machine, never early.
        let delay = RESET_DELAY.as_secs_f64();
        assert!(
            (delay - 0.1..delay + 1.0).contains(&held_for),
            "the evidence says the refusal came after {held_for} s: {flow:#}"
        );
    }
}

#[test]
fn ft_lab_demo_tells_the_seed_story_and_cleans_up() {
    let output = run(Command::new(FT_LAB).arg("demo"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ft-lab demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let told = stdout.lines().any(|line| {
        line.contains(&format!(":{HELD_PORT}"))
            && line.contains("middlebox")
            && line.contains(GATEWAY_MAC)
            && line.contains(F5)
    });
    assert!(told, "no line tells the seed story:\n{stdout}");
    // The demo names its namespaces and its pin root; none may outlive it.
    let named = |prefix: &str| {
        stdout
            .split_whitespace()
            .find(|word| word.starts_with(prefix))
            .map(|word| word.trim_end_matches([',', ')', '.']).to_owned())
            .unwrap_or_else(|| panic!("the demo names no {prefix}...:\n{stdout}"))
    };
    let client_netns = named("ftdemo-");
    let namespaces = run(Command::new("ip").args(["netns", "list"]));
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(
        !namespaces.contains(&client_netns),
        "the demo left {client_netns} behind:\n{namespaces}"
    );
    let pin_root = named("/sys/fs/bpf/");
    assert!(
        !Path::new(&pin_root).exists(),
        "the demo left {pin_root} behind"
    );
}

/// Bytes the server sends before the injector strikes, and again after.
const CHUNK: usize = 1000;

#[test]
fn an_injector_on_the_clients_segment_is_a_middlebox() {
    const PORT: u16 = 8000;
    let lab = SegmentLab::create();
    let server_addr = lab.server.addr(Family::V4, PORT);
    let injector = lab.start_injector(Path::new(FT_LAB), server_addr, &["--on", "data"]);
    let pins = PinDir::create().expect("pin root");
    let _loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);

    // Once the client is connected, the server sends a chunk, which the injector answers at
    // once with a RST in the server's name. Once the client has taken that RST, the server,
    // which knows nothing of it, sends another chunk: exactly CHUNK bytes at the RST's
    // sequence number.
    let (connected, wait_for_client) = mpsc::channel::<()>();
    let sender = move |mut stream: TcpStream, reset_seen: ResetSeen| {
        wait_for_client
            .recv_timeout(TIMEOUT)
            .expect("the client connects");
        stream.write_all(&[b'a'; CHUNK])?;
        reset_seen.wait()?;
        stream.write_all(&[b'b'; CHUNK])
    };
    let client = expect_forged_reset(
        &lab.client,
        lab.server.listen(Family::V4, PORT),
        sender,
        |_| {
            connected.send(()).expect("the server thread is waiting");
            Ok(())
        },
    );
    injector.wait_success();

    let verdicts = Verdicts::read(pins.path());
    let flow = verdicts.flow(Some(client), server_addr);
    let injector_mac = lab.third.mac();
    let server_mac = lab.server.mac();
    assert_reset_by(flow, "middlebox", &[&injector_mac, &server_mac]);
    // The race: data at or beyond the RST's sequence number, from the side that "reset".
    assert_reset_by(flow, "middlebox", &[&format!("{CHUNK} bytes")]);
    ExpectedGateway::server(&lab.server).assert_names(flow);
}
