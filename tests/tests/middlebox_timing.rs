//! Who reset the connection when the endpoints had it, and a box on the path reset it in the
//! server's name well after the handshake? Labs where the answer is known, with `flagtrace
//! attach` and tcpdump on the client's interface; the verdicts of `flows --json` (live) and of
//! `pcap --flows --json` (the capture) must agree, in IPv4 and IPv6:
//! - a stateful firewall's idle timeout: the gateway of the seed story's routed lab (the server
//!   starts its TTL at 128, the gateway at 64) tracks connections with a short established
//!   timeout and rejects with a TCP reset what it does not know. The client asks, the server
//!   answers, the client stays silent past the timeout and asks again: the gateway answers at
//!   once with a RST in the server's name. Expected: `middlebox`, `on_path`, after payload both
//!   ways (`transfer`).
//! - an injector on the client's segment that forges the server's MAC and TTL, so that neither
//!   tells its RST from the server's: it resets the client as soon as the client sends its
//!   request. Only what the real server sends afterwards, unaware, can tell: its answer, at the
//!   RST's own sequence number, to a client that waits; or, to a client that half-closed at
//!   once, nothing but the acknowledgement of the request and the FIN, beyond the RST's
//!   acknowledgement number. Expected: `middlebox`, `on_path`.
//!
//! Each checks its premise in the capture (the RST, and what came after it), and prints the
//! JSON of its reset flows (stderr).

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    thread,
    time::Duration,
};

use flagtrace_tests::{
    forge::Segment,
    lab::{
        echo_between, expect_forged_reset, hold_until_reset, run_ok, Daemon, Family, Gateway,
        ResetSeen, RoutedLab, SegmentLab,
    },
    seed_story::{seed_lab, OPEN_PORT},
    tcpdump::{AttachedAndCaptured, Views},
    verdicts::{
        assert_closed_normally, assert_ms, assert_same_verdicts, assert_verdict, flow, show,
    },
};
use serde_json::Value;

const FT_LAB: &str = env!("CARGO_BIN_EXE_ft-lab");
const FAMILIES: [Family; 2] = [Family::V4, Family::V6];
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const ANSWER: &[u8] = b"HTTP/1.0 200 OK\r\n\r\n";

/// How long the firewall keeps an established connection that carries nothing.
const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the client stays silent: past the timeout, with a margin for a slow machine.
const SILENCE: Duration = Duration::from_secs(3);
/// The server's port behind the firewall.
const IDLE_PORT: u16 = 8090;
/// The server's port on the injector's segment.
const INJECTED_PORT: u16 = 8000;

/// The gateway as a stateful firewall that forgets idle connections: conntrack with a short
/// established timeout, and a forward rule that rejects with a TCP reset what conntrack does
/// not know. With `nf_conntrack_tcp_loose` at 0, a packet from the middle of a forgotten
/// connection is `invalid`: conntrack does not pick the connection up again. (At 1, the
/// default, it is `new`, which `ct state invalid` lets through to the server.)
fn forget_idle_connections(gateway: &Gateway) {
    // The rule's `ct` brings conntrack, and its sysctls, into the namespace.
    gateway.forward_rule("ct state invalid reject with tcp reset");
    gateway.netns.sysctl(
        "net/netfilter/nf_conntrack_tcp_timeout_established",
        &ESTABLISHED_TIMEOUT.as_secs().to_string(),
    );
    gateway
        .netns
        .sysctl("net/netfilter/nf_conntrack_tcp_loose", "0");
}

/// Whether the gateway's conntrack holds the connection from `client` (`conntrack -L`).
fn tracks(gateway: &Gateway, client: SocketAddr) -> bool {
    let family = if client.is_ipv4() { "ipv4" } else { "ipv6" };
    let listed = run_ok(gateway.netns.command("conntrack").args([
        "-L",
        "-f",
        family,
        "-p",
        "tcp",
        "--orig-src",
        &client.ip().to_string(),
        "--orig-port-src",
        &client.port().to_string(),
    ]));
    !listed.trim().is_empty()
}

/// The client asks and the server answers; the client stays silent past the firewall's
/// timeout, then asks again. The firewall, which has forgotten the connection, rejects that
/// with a RST in the server's name; the server never hears of it. Returns the client's and the
/// server's addresses.
fn ask_again_after_silence(lab: &RoutedLab, family: Family) -> (SocketAddr, SocketAddr) {
    let server = |mut stream: TcpStream, reset_seen: ResetSeen| {
        stream.read_exact(&mut [0; REQUEST.len()])?;
        stream.write_all(ANSWER)?;
        // As far as the server knows, the connection is open; it closes it once the client is
        // done (its FIN meets the firewall, which rejects it too).
        reset_seen.wait()
    };
    let listener = lab.server.listen(family, IDLE_PORT);
    let client = expect_forged_reset(&lab.client, listener, server, |stream| {
        stream.write_all(REQUEST)?;
        stream.read_exact(&mut [0; ANSWER.len()])?;
        let client = stream.local_addr()?;
        assert!(tracks(&lab.gateway, client), "conntrack lacks {client}");
        thread::sleep(SILENCE);
        assert!(
            !tracks(&lab.gateway, client),
            "conntrack still holds {client} after {SILENCE:?} of silence"
        );
        stream.write_all(REQUEST)
    });
    (client, lab.server.addr(family, IDLE_PORT))
}

#[test]
fn a_firewalls_idle_timeout_is_a_middlebox_on_the_path() {
    let lab = seed_lab("ft");
    forget_idle_connections(&lab.gateway);
    let mut observed = AttachedAndCaptured::start(&lab.client);
    // The server's own packets after a handshake, which the RST is compared with.
    let answered =
        FAMILIES.map(|family| echo_between(&lab.client, &lab.server, family, OPEN_PORT, REQUEST));
    // Both families at once: one silence.
    let lab = &lab;
    let idle = thread::scope(|scope| {
        FAMILIES
            .map(|family| scope.spawn(move || ask_again_after_silence(lab, family)))
            .map(|asked| {
                asked
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
    });

    let views = observed.views();
    for addresses in answered {
        assert_closed_normally(flow(&views.live, addresses));
    }
    for addresses in idle {
        let flow = flow(&views.live, addresses);
        show("reset by the firewall's idle timeout", flow);
        assert_verdict(
            flow,
            "middlebox",
            Some("on_path"),
            "transfer",
            "the gateway forgot the connection after its idle timeout, and rejected the \
             client's next data with a RST (TTL 64) in the name of the server (TTL 127)",
        );
        let lab = "the firewall answered the client's data at once, after the silence";
        assert_ms(flow, "reset_delay_ms", 0..50, lab);
        let silence = u64::try_from(SILENCE.as_millis()).expect("short");
        assert_ms(flow, "idle_before_ms", silence - 10..silence + 1_000, lab);
    }
    assert_same_verdicts(&views);
}

/// Starts the injector on the segment's third box: it strikes when the client sends `server` a
/// request, in the server's name down to its MAC (the frames' source) and its TTL.
fn start_impersonator(lab: &SegmentLab, server: SocketAddr) -> Daemon {
    let ttl = lab.server.netns.sysctl_value("net/ipv4/ip_default_ttl");
    let mac = lab.server.mac();
    let args = ["--on", "request", "--mac", &mac, "--ttl", ttl.trim()];
    lab.start_injector(Path::new(FT_LAB), server, &args)
}

/// The client sends its request and waits. The injector resets it; then the real server,
/// unaware, answers and closes: data at the RST's own sequence number. Returns the client's
/// and the server's addresses.
fn answered_after_the_reset(lab: &SegmentLab, family: Family) -> (SocketAddr, SocketAddr) {
    let server_addr = lab.server.addr(family, INJECTED_PORT);
    let injector = start_impersonator(lab, server_addr);
    let server = |mut stream: TcpStream, reset_seen: ResetSeen| {
        stream.read_exact(&mut [0; REQUEST.len()])?;
        reset_seen.wait()?;
        stream.write_all(ANSWER)
    };
    let listener = lab.server.listen(family, INJECTED_PORT);
    let client = expect_forged_reset(&lab.client, listener, server, |stream| {
        stream.write_all(REQUEST)
    });
    injector.wait_success();
    (client, server_addr)
}

/// The client sends its request and half-closes at once. The injector resets it; the real
/// server's stack, unaware, acknowledges the request and the FIN, and the server sends nothing
/// else: it holds the connection until the client's stack, which no longer knows it, resets it
/// in answer to that acknowledgement. The RST comes first: the server's stack acknowledges a
/// FIN on its delayed-ACK timer (40 ms or more), the injector answers the request within a
/// millisecond (here: 0.1 ms). Returns the client's and the server's addresses.
fn acknowledged_after_the_reset(lab: &SegmentLab, family: Family) -> (SocketAddr, SocketAddr) {
    let server_addr = lab.server.addr(family, INJECTED_PORT);
    let injector = start_impersonator(lab, server_addr);
    let server = |stream: TcpStream, _: ResetSeen| hold_until_reset(&stream);
    let listener = lab.server.listen(family, INJECTED_PORT);
    let client = expect_forged_reset(&lab.client, listener, server, |stream| {
        send_and_half_close(stream, REQUEST)
    });
    injector.wait_success();
    (client, server_addr)
}

/// Sends `request` and half-closes, the FIN in the request's own segment (MSG_MORE holds the
/// data back until the FIN joins it): the injector's RST cannot come between the two and find
/// the client still sending.
fn send_and_half_close(stream: &mut TcpStream, request: &[u8]) -> io::Result<()> {
    // SAFETY: a connected socket, and a buffer valid for its length during the call.
    let sent = unsafe {
        libc::send(
            stream.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            libc::MSG_MORE,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    assert_eq!(
        sent as usize,
        request.len(),
        "a short send of a short request"
    );
    stream.shutdown(Shutdown::Write)
}

/// What an injector lab leaves to check.
struct Injected {
    views: Views,
    /// The capture's TCP segments.
    segments: Vec<Segment>,
    /// The injected connections, as (client, server) addresses.
    reset: Vec<(SocketAddr, SocketAddr)>,
    server_mac: String,
}

/// In each family, a normal exchange with the server (its own packets after a handshake, for
/// the comparisons), then the conversation `reset_one`, which the injector resets.
fn injector_lab(reset_one: fn(&SegmentLab, Family) -> (SocketAddr, SocketAddr)) -> Injected {
    let lab = SegmentLab::create();
    let mut observed = AttachedAndCaptured::start(&lab.client);
    let mut answered = Vec::new();
    let mut reset = Vec::new();
    for family in FAMILIES {
        answered.push(echo_between(
            &lab.client,
            &lab.server,
            family,
            OPEN_PORT,
            REQUEST,
        ));
        reset.push(reset_one(&lab, family));
    }
    let views = observed.views();
    for addresses in answered {
        assert_closed_normally(flow(&views.live, addresses));
    }
    Injected {
        segments: observed.segments(),
        views,
        reset,
        server_mac: lab.server.mac(),
    }
}

/// The first RST in the server's name that reached the client, and the server's segments that
/// came after it, from the capture.
fn after_the_rst(
    segments: &[Segment],
    (client, server): (SocketAddr, SocketAddr),
) -> (Segment, Vec<Segment>) {
    let mut from_server = segments
        .iter()
        .filter(|segment| segment.src == server && segment.dst == client)
        .skip_while(|segment| !segment.rst);
    let rst = from_server
        .next()
        .unwrap_or_else(|| panic!("no RST from {server} to {client} in the capture"))
        .clone();
    (rst, from_server.cloned().collect())
}

/// The injector forged the server's TTL and MAC: its RST agrees with the server's packets in
/// both, so that only what the server sent afterwards can tell.
fn assert_passes_for_the_servers(flow: &Value, server_mac: &str) {
    let servers: Vec<&Value> = flow["signals"]
        .as_array()
        .unwrap_or_else(|| panic!("signals is not a list: {flow:#}"))
        .iter()
        .filter(|signal| signal["from"] == "server")
        .collect();
    assert!(
        servers
            .iter()
            .any(|signal| signal["signal"] == "ttl_comparison" && signal["relation"] == "agrees"),
        "the forged RST's TTL agrees with the server's: {flow:#}"
    );
    assert!(
        !servers
            .iter()
            .any(|signal| signal["signal"] == "mac_difference"),
        "the forged RST comes from the server's MAC: {flow:#}"
    );
    assert_eq!(flow["gateway_mac"], server_mac, "{flow:#}");
}

#[test]
fn an_injector_with_the_servers_mac_and_ttl_is_told_by_the_servers_answer() {
    let injected = injector_lab(answered_after_the_reset);
    for addresses in &injected.reset {
        let (rst, after) = after_the_rst(&injected.segments, *addresses);
        assert!(
            after
                .iter()
                .any(|segment| segment.payload_len > 0 && segment.seq == rst.seq),
            "the server's answer, at the RST's sequence number, came after it: {rst:?}, then \
             {after:#?}"
        );
        let flow = flow(&injected.views.live, *addresses);
        show("reset by an injector, then answered by the server", flow);
        assert_passes_for_the_servers(flow, &injected.server_mac);
        assert_injected(
            flow,
            "request",
            "an injector reset the client after its request, with the server's MAC and TTL; \
             the server answered after the RST, at its sequence number",
        );
    }
    assert_same_verdicts(&injected.views);
}

#[test]
fn an_injector_with_the_servers_mac_and_ttl_is_told_by_the_servers_ack_of_the_fin() {
    let injected = injector_lab(acknowledged_after_the_reset);
    for addresses in &injected.reset {
        let (rst, after) = after_the_rst(&injected.segments, *addresses);
        let beyond = |segment: &Segment| {
            segment
                .ack
                .is_some_and(|ack| ack.wrapping_sub(rst.ack.unwrap_or(ack)) as i32 > 0)
        };
        assert!(
            after.iter().any(beyond) && after.iter().all(|segment| segment.payload_len == 0),
            "after the RST the server acknowledged beyond it, and sent no data: {rst:?}, then \
             {after:#?}"
        );
        let flow = flow(&injected.views.live, *addresses);
        show(
            "reset by an injector, then acknowledged by the server",
            flow,
        );
        assert_passes_for_the_servers(flow, &injected.server_mac);
        assert_injected(
            flow,
            "closing",
            "an injector reset the client after its request and FIN, with the server's MAC and \
             TTL; the server acknowledged the FIN after the RST, beyond the RST's \
             acknowledgement",
        );
    }
    assert_same_verdicts(&injected.views);
}

/// Asserts the verdict on a flow an injector reset in `phase`: a middlebox on the path, which
/// struck at once after what the client sent.
fn assert_injected(flow: &Value, phase: &str, lab: &str) {
    assert_verdict(flow, "middlebox", Some("on_path"), phase, lab);
    assert_ms(flow, "reset_delay_ms", 0..50, lab);
}
