//! The seed story, told by `ft-lab demo` (what `cargo xtask demo` runs) and checked by the reset
//! tests, from this one implementation. Clients reach a server through a gateway whose MAC has
//! an F5 Networks OUI. The server answers on port 80. The gateway holds the SYNs to port 443
//! (nftables drops them, so the server never sees them) and answers each one two seconds later
//! with a RST in the server's name (`ft-lab delayed-reset`), as the real device did. The server
//! starts its TTL at 128, so its own packets reach the client with TTL 127. The gateway's RSTs
//! start at the gateway's 64, so they arrive with TTL 64.

use std::{net::SocketAddr, path::Path, thread, time::Duration};

use crate::{
    lab::{
        echo_exchange, expect_refusal, spawn_echo_server_for, start_ft_lab, Daemon, Family, Loader,
        RoutedLab, RoutedLabSpec,
    },
    tracer::PinDir,
};

/// The gateway's client-facing MAC: 00:01:d7 is one of F5 Networks' OUIs.
pub const GATEWAY_MAC: &str = "00:01:d7:3c:5e:01";
/// The server's initial TTL: 128, as on Windows, one hop behind the gateway.
pub const SERVER_INITIAL_TTL: u8 = 128;
/// The port the server answers on.
pub const OPEN_PORT: u16 = 80;
/// The port whose SYNs the gateway holds and resets.
pub const HELD_PORT: u16 = 443;
/// How long the gateway holds a SYN before it resets the connection.
pub const RESET_DELAY: Duration = Duration::from_secs(2);
/// Connections to each port.
pub const CONNECTIONS: usize = 3;

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\nHost: 10.0.2.1\r\n\r\n";

/// The lab, with the gateway's rule and resetter in place and flagtrace attached to the
/// client's interface. Dropping it detaches flagtrace, stops the resetter, and removes the
/// namespaces and the pins, in that order (field order).
pub struct SeedStory {
    loader: Loader,
    resetter: Daemon,
    pub lab: RoutedLab,
    pins: PinDir,
}

/// What the clients saw.
#[derive(Debug)]
pub struct Traffic {
    /// The client addresses of the connections to [`OPEN_PORT`], each answered and closed.
    pub answered: Vec<SocketAddr>,
    /// How long each connection to [`HELD_PORT`] waited for its refusal.
    pub refused_after: Vec<Duration>,
}

impl SeedStory {
    /// Builds the lab; namespaces are named `<name_prefix>-<pid>-<n>-cli`/`-gw`/`-srv`.
    /// `ft_lab` is the lab tool's binary.
    pub fn build(name_prefix: &str, ft_lab: &Path) -> Self {
        let pins = PinDir::named(&format!("flagtrace-{name_prefix}")).expect("creating a pin root");
        let lab = RoutedLab::create(RoutedLabSpec {
            name_prefix,
            gateway_mac: GATEWAY_MAC,
            server_initial_ttl: SERVER_INITIAL_TTL,
        });
        let held_at = lab.gateway.client_side.iface;
        lab.gateway
            .forward_rule(&format!("iifname {held_at} tcp dport {HELD_PORT} drop"));
        let resetter = start_ft_lab(
            &lab.gateway.netns,
            ft_lab,
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
        let loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);
        Self {
            loader,
            resetter,
            lab,
            pins,
        }
    }

    /// Where flagtrace pins its maps: pass it to `flagtrace --pin-root`.
    pub fn pin_root(&self) -> &Path {
        self.pins.path()
    }

    /// What flagtrace and the resetter printed, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "flagtrace attach:\n{}ft-lab delayed-reset:\n{}",
            self.loader.log(),
            self.resetter.log()
        )
    }

    /// [`CONNECTIONS`] requests to the open port, one after the other, then as many
    /// connections to the held port at once (each waits [`RESET_DELAY`] for its refusal).
    pub fn run_traffic(&self) -> Traffic {
        let (client, server) = (&self.lab.client, &self.lab.server);
        let open = server.addr(Family::V4, OPEN_PORT);
        let echo_server = spawn_echo_server_for(server.listen(Family::V4, OPEN_PORT), CONNECTIONS);
        let answered = (0..CONNECTIONS)
            .map(|_| {
                let (local, echoed) = client
                    .connect(open, |stream| echo_exchange(stream, REQUEST))
                    .and_then(|exchange| exchange)
                    .unwrap_or_else(|e| panic!("request to {open}: {e}"));
                assert!(echoed == REQUEST, "{open} answered something else");
                local
            })
            .collect();
        echo_server
            .join()
            .expect("server thread")
            .unwrap_or_else(|e| panic!("server {open}: {e}"));

        let held = server.addr(Family::V4, HELD_PORT);
        let refused_after = thread::scope(|scope| {
            let connections: Vec<_> = (0..CONNECTIONS)
                .map(|_| scope.spawn(|| expect_refusal(client, held)))
                .collect();
            connections
                .into_iter()
                .map(|connection| {
                    connection
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        Traffic {
            answered,
            refused_after,
        }
    }
}
