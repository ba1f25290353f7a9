//! Who reset the connection when a middlebox speaks TCP itself? Two real middleboxes on the
//! gateway of a routed lab (client --- gateway --- server; the gateway's client-side MAC has an
//! F5 OUI; the server starts its TTL at 128, so its packets reach the client with TTL 127 and
//! the gateway's with 64), with `flagtrace attach` and tcpdump on the client's interface and
//! the verdicts of `flows --json` and `resets --json` checked, in IPv4 and IPv6; the capture,
//! read with `flagtrace pcap`, must give every flow the same verdict:
//! - a full proxy: the gateway redirects port 443 (nftables `redirect`) to a listener of its
//!   own, which reads the client's ClientHello, waits and aborts. The handshake and the RST are
//!   both the gateway's (TTL 64), so the flow agrees with itself; only the same server's port
//!   80 (TTL 127) shows that the "server" on 443 is not the server. Expected: `middlebox`.
//! - a SYN proxy (nftables `synproxy`): the gateway answers each handshake (TTL 64), then the
//!   server's own packets follow (TTL 127), among them its refusal of a closed port and its
//!   abort after a request. Those RSTs are the server's: never `middlebox` (`endpoint`, or
//!   `unknown` where the evidence cannot tell), and a normal close (FIN both ways) has no RST at
//!   all, over repeated rounds.
//!
//! Both describe what flagtrace must say about these devices; each prints the JSON of its
//! reset flows (stderr) so that a failure shows the evidence.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use flagtrace_tests::{
    lab::{
        aborted_after_the_request, echo_between, expect_server_reset, flows_json, resets_json,
        Endpoint, Family, RoutedLab,
    },
    seed_story::{
        client_hello, redirect_to_proxy, seed_lab, spawn_full_proxy, HELD_PORT, OPEN_PORT,
        SERVER_NAME,
    },
    tcpdump::AttachedAndCaptured,
    verdicts::{
        assert_closed_normally, assert_ms, assert_no_middlebox, assert_same_verdicts,
        assert_verdict, flow, show,
    },
};
use serde_json::Value;

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];
/// What the clients send where the server speaks HTTP.
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
/// Normal connections to the server's port 80 in each family: the server's own packets, which
/// every verdict about that server can compare with.
const BASELINE_CONNECTIONS: usize = 3;

/// The port the full proxy takes over.
const PROXIED_PORT: u16 = HELD_PORT;
/// How long the full proxy holds a connection before it aborts (the real device: 3 s).
const PROXY_DELAY: Duration = Duration::from_secs(1);
/// Proxied connections in each family.
const PROXIED_CONNECTIONS: usize = 2;

const SYN_PROXY_TABLE: &str = "inet syn_proxy";
/// A port the server does not listen on: it refuses, after the SYN proxy's handshake.
const CLOSED: u16 = 9;
/// The server accepts, reads the request and aborts.
const ABORT: u16 = 8082;
/// The server echoes and closes normally.
const ECHO: u16 = 8080;
/// Rounds of the SYN-proxy traffic: a false alarm must not come and go.
const ROUNDS: usize = 5;

/// `count` echo exchanges with the server's `port`, one after the other, each closed normally.
/// Returns their (client, server) addresses.
fn echo_exchanges(
    lab: &RoutedLab,
    family: Family,
    port: u16,
    count: usize,
) -> Vec<(SocketAddr, SocketAddr)> {
    (0..count)
        .map(|_| echo_between(&lab.client, &lab.server, family, port, REQUEST))
        .collect()
}

#[test]
fn a_full_proxy_at_the_gateway_is_a_middlebox() {
    let lab = seed_lab("ft");
    let listeners = FAMILIES.map(|family| (family, redirect_to_proxy(&lab, family)));
    let mut observed = AttachedAndCaptured::start(&lab.client);
    let hello = client_hello(SERVER_NAME);

    let mut answered = Vec::new();
    let mut proxied = Vec::new();
    for (family, listener) in &listeners {
        let family = *family;
        answered.extend(echo_exchanges(
            &lab,
            family,
            OPEN_PORT,
            BASELINE_CONNECTIONS,
        ));
        let server = lab.server.addr(family, PROXIED_PORT);
        for _ in 0..PROXIED_CONNECTIONS {
            let proxy = spawn_full_proxy(listener, PROXY_DELAY);
            let client = expect_server_reset(&lab.client, server, proxy, |stream| {
                stream.write_all(&hello)
            });
            proxied.push((client, server));
        }
    }

    let views = observed.views();
    for addresses in &answered {
        assert_closed_normally(flow(&views.live, *addresses));
    }
    let resets = resets_json(observed.pin_root());
    let proxied: Vec<&Value> = proxied
        .iter()
        .map(|addresses| flow(&resets, *addresses))
        .collect();
    for flow in &proxied {
        show("proxied flow", flow);
    }
    for flow in proxied {
        assert_verdict(
            flow,
            "middlebox",
            Some("proxy"),
            "request",
            &format!(
                "the full proxy answered the handshake and reset after the client's \
                 ClientHello, before any answer, 0 hops away like its handshake, while the \
                 server's port {OPEN_PORT} is 1 hop away"
            ),
        );
        let delay = u64::try_from(PROXY_DELAY.as_millis()).expect("short");
        assert_ms(
            flow,
            "reset_delay_ms",
            delay - 10..delay + 500,
            "the proxy waited after the ClientHello",
        );
        assert_eq!(
            flow["tls_sni"], SERVER_NAME,
            "the ClientHello's name: {flow:#}"
        );
    }
    assert_same_verdicts(&views);
}

/// The SYN proxy for everything the client sends, after the nftables wiki's Synproxy page and
/// nft(8), on the forward hook because the gateway routes the connections. The SYNs go
/// untracked, so they and the handshake's last ACK (invalid while `nf_conntrack_tcp_loose` is
/// 0) reach `synproxy`, which answers the SYN with a cookie and, once the ACK proves it, opens
/// the connection to the server itself. It answers for the server and translates neither the
/// MSS nor the window scale, so both must be the server's: 1460 and 1440 on a 1500-byte link,
/// and `window_scale`.
fn syn_proxy_ruleset(client_side: &str, window_scale: u32) -> String {
    let table = SYN_PROXY_TABLE;
    let proxy = format!("synproxy wscale {window_scale} timestamp sack-perm");
    format!(
        "add table {table}; \
         add chain {table} prerouting \
         {{ type filter hook prerouting priority raw; policy accept; }}; \
         add rule {table} prerouting \
         iifname {client_side} tcp flags & (fin|syn|rst|ack) == syn notrack; \
         add chain {table} forward \
         {{ type filter hook forward priority filter; policy accept; }}; \
         add rule {table} forward iifname {client_side} meta nfproto ipv4 \
         ct state invalid,untracked {proxy} mss 1460; \
         add rule {table} forward iifname {client_side} meta nfproto ipv6 \
         ct state invalid,untracked {proxy} mss 1440; \
         add rule {table} forward ct state invalid drop"
    )
}

/// The window scale `endpoint`'s stack offers in its SYN/ACK, as the kernel's
/// tcp_select_initial_window computes it from its largest receive buffer (the larger of
/// tcp_rmem's maximum and rmem_max): the shift that brings it down to 64 KiB, at most 14.
/// Linux's defaults (6 MiB) give 7; a machine with larger buffers offers more (32 MiB: 10).
fn window_scale(endpoint: &Endpoint) -> u32 {
    let largest = |key: &str| -> u64 {
        let value = endpoint.netns.sysctl_value(key);
        value
            .split_whitespace()
            .last()
            .and_then(|largest| largest.parse().ok())
            .unwrap_or_else(|| panic!("{key} = {value:?}"))
    };
    let buffer = largest("net/ipv4/tcp_rmem").max(largest("net/core/rmem_max"));
    buffer.ilog2().saturating_sub(15).min(14)
}

/// Connects to `server`, whose handshake the SYN proxy completes; the server's refusal follows,
/// passed on by the proxy, and resets the connection: before the connect returns (it reads the
/// socket's error last) or on the first read. Never "refused": the client's handshake succeeded.
/// The client's port is not known when the connect fails, so the flow is found by its server.
fn reset_after_the_handshake(client: &Endpoint, server: SocketAddr) {
    let error = client
        .connect(server, |mut stream: TcpStream| {
            stream.read_to_end(&mut Vec::new())
        })
        .and_then(|read| read)
        .expect_err("the server's refusal resets the connection");
    assert_eq!(
        error.kind(),
        ErrorKind::ConnectionReset,
        "{server}: {error}"
    );
}

#[test]
fn a_syn_proxy_raises_no_false_alarm() {
    let lab = seed_lab("ft");
    lab.gateway.netns.nft(&syn_proxy_ruleset(
        lab.gateway.client_side.iface,
        window_scale(&lab.server),
    ));
    lab.gateway
        .netns
        .sysctl("net/netfilter/nf_conntrack_tcp_loose", "0");
    let mut observed = AttachedAndCaptured::start(&lab.client);

    let mut closed_normally = Vec::new();
    let mut aborted = Vec::new();
    for round in 0..ROUNDS {
        for family in FAMILIES {
            closed_normally.extend(echo_exchanges(
                &lab,
                family,
                OPEN_PORT,
                BASELINE_CONNECTIONS,
            ));
            reset_after_the_handshake(&lab.client, lab.server.addr(family, CLOSED));
            let server = lab.server.addr(family, ABORT);
            aborted.push((
                aborted_after_the_request(&lab.client, &lab.server, family, ABORT, REQUEST),
                server,
            ));
            closed_normally.extend(echo_exchanges(&lab, family, ECHO, 1));
        }

        // Every round judges the flows of all rounds so far: a verdict must not change as the
        // evidence about the server grows.
        let flows = flows_json(observed.pin_root());
        let mut reset: Vec<&Value> = aborted
            .iter()
            .map(|addresses| flow(&flows, *addresses))
            .collect();
        for family in FAMILIES {
            let closed = lab.server.addr(family, CLOSED).to_string();
            let refused: Vec<&Value> = flows
                .iter()
                .filter(|flow| flow["server"] == closed)
                .collect();
            assert_eq!(refused.len(), round + 1, "flows to {closed}: {flows:#?}");
            reset.extend(refused);
        }
        for flow in &reset {
            show(&format!("round {round}: a RST of the server"), flow);
        }
        for flow in &flows {
            assert_no_middlebox(flow, &format!("round {round}, behind the SYN proxy"));
        }
        for flow in reset {
            assert!(
                flow["rst"].as_u64().is_some_and(|rst| rst > 0),
                "round {round}: the server's RST was not counted: {flow:#}"
            );
            assert!(
                flow["reset_by"] == "endpoint" || flow["reset_by"] == "unknown",
                "round {round}: the server's own RST is the endpoint's, or unknown: {flow:#}"
            );
            // The closed port resets right after the proxied handshake; the abort after the
            // request.
            let refused = flow["server"]
                .as_str()
                .is_some_and(|server| server.ends_with(&format!(":{CLOSED}")));
            let phase = if refused { "handshake" } else { "request" };
            assert_eq!(flow["reset_phase"], phase, "round {round}: {flow:#}");
        }
        for addresses in &closed_normally {
            assert_closed_normally(flow(&flows, *addresses));
        }
    }
    assert_same_verdicts(&observed.views());
}
