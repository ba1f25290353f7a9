//! The seed story, told by `ft-lab demo` (what `cargo xtask demo` runs) and checked by the reset
//! tests, from this one implementation. Clients reach a server through a gateway whose MAC has
//! an F5 Networks OUI. The server answers on port 80. The gateway is a full proxy for port 443,
//! as an F5 virtual server is by default: nftables redirects the connections to a listener of
//! the gateway's own, which completes the handshake, reads the client's TLS ClientHello, and
//! [`RESET_DELAY`] later aborts the connection (its pool member is down). The client sees what
//! the support engineer saw: connected, then the reset (`errno 104`). The server starts its TTL
//! at 128, so its own packets reach the client with TTL 127; the gateway's handshake and RST
//! start at 64, so they arrive with TTL 64.

use std::{
    io::{self, ErrorKind, Read, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use crate::{
    lab::{
        abort, echo_exchange, expect_server_reset, spawn_echo_server_for, Family, Loader,
        RoutedLab, RoutedLabSpec, TIMEOUT,
    },
    tracer::PinDir,
};

/// The gateway's client-facing MAC: 00:01:d7 is one of F5 Networks' OUIs.
pub const GATEWAY_MAC: &str = "00:01:d7:3c:5e:01";
/// The server's initial TTL: 128, as on Windows, one hop behind the gateway.
pub const SERVER_INITIAL_TTL: u8 = 128;
/// The port the server answers on.
pub const OPEN_PORT: u16 = 80;
/// The port the gateway proxies and resets.
pub const HELD_PORT: u16 = 443;
/// The gateway's own port that the redirect leads to.
pub const PROXY_PORT: u16 = 4443;
/// How long the gateway holds a connection after the ClientHello before it resets it.
pub const RESET_DELAY: Duration = Duration::from_secs(3);
/// Connections to each port.
pub const CONNECTIONS: usize = 3;
/// The name the clients ask for in their ClientHello (server_name).
pub const SERVER_NAME: &str = "customerweb";

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\nHost: 10.0.2.1\r\n\r\n";

/// The lab, with the gateway's proxy in place and flagtrace attached to the client's
/// interface. Dropping it detaches flagtrace and removes the namespaces and the pins, in that
/// order (field order).
pub struct SeedStory {
    loader: Loader,
    /// The proxy's listener, in the gateway's namespace.
    proxy: TcpListener,
    pub lab: RoutedLab,
    pins: PinDir,
}

/// What the clients saw.
#[derive(Debug)]
pub struct Traffic {
    /// The client addresses of the connections to [`OPEN_PORT`], each answered and closed.
    pub answered: Vec<SocketAddr>,
    /// The connections to [`HELD_PORT`]: the client's address, and how long after connecting
    /// the reset came.
    pub reset: Vec<(SocketAddr, Duration)>,
}

impl SeedStory {
    /// Builds the lab; namespaces are named `<name_prefix>-<pid>-<n>-cli`/`-gw`/`-srv`.
    pub fn build(name_prefix: &str) -> Self {
        let pins = PinDir::named(&format!("flagtrace-{name_prefix}")).expect("creating a pin root");
        let lab = seed_lab(name_prefix);
        let proxy = redirect_to_proxy(&lab, Family::V4);
        let loader = Loader::attach(&lab.client.netns, pins.path(), lab.client.iface);
        Self {
            loader,
            proxy,
            lab,
            pins,
        }
    }

    /// Where flagtrace pins its maps: pass it to `flagtrace --pin-root`.
    pub fn pin_root(&self) -> &Path {
        self.pins.path()
    }

    /// What flagtrace printed, for failure messages.
    pub fn logs(&self) -> String {
        format!("flagtrace attach:\n{}", self.loader.log())
    }

    /// The server's address on `port`.
    pub fn server(&self, port: u16) -> SocketAddr {
        self.lab.server.addr(Family::V4, port)
    }

    /// The gateway takes the next connection to [`HELD_PORT`]: it reads the ClientHello, waits
    /// [`RESET_DELAY`] and aborts. Join the handle once the client is done.
    pub fn proxy_next(&self) -> thread::JoinHandle<io::Result<()>> {
        spawn_full_proxy(&self.proxy, RESET_DELAY)
    }

    /// [`CONNECTIONS`] requests to the open port, one after the other, then as many TLS
    /// connections to the held port at once, each reset [`RESET_DELAY`] after its ClientHello.
    pub fn run_traffic(&self) -> Traffic {
        let (client, server) = (&self.lab.client, &self.lab.server);
        let open = self.server(OPEN_PORT);
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

        let held = self.server(HELD_PORT);
        let hello = client_hello(SERVER_NAME);
        let reset = thread::scope(|scope| {
            let connections: Vec<_> = (0..CONNECTIONS)
                .map(|_| {
                    let proxy = self.proxy_next();
                    let hello = &hello;
                    scope.spawn(move || {
                        let start = Instant::now();
                        let local = expect_server_reset(client, held, proxy, |stream| {
                            stream.write_all(hello)
                        });
                        (local, start.elapsed())
                    })
                })
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
        Traffic { answered, reset }
    }
}

/// The seed story's routed lab (client --- gateway --- server), without its proxy: the gateway's
/// MAC on an F5 OUI, the server's initial TTL 128. Namespaces are named
/// `<name_prefix>-<pid>-<n>-cli`/`-gw`/`-srv`.
pub fn seed_lab(name_prefix: &str) -> RoutedLab {
    RoutedLab::create(RoutedLabSpec {
        name_prefix,
        gateway_mac: GATEWAY_MAC,
        server_initial_ttl: SERVER_INITIAL_TTL,
    })
}

/// Makes the gateway a full proxy for [`HELD_PORT`] in `family`: an nftables `redirect` of the
/// connections from the client's side to [`PROXY_PORT`], and the gateway's listener there (on
/// the address of the interface the connections come in on, where `redirect` sends them).
pub fn redirect_to_proxy(lab: &RoutedLab, family: Family) -> TcpListener {
    let client_side = lab.gateway.client_side.iface;
    let table = match family {
        Family::V4 => "ip full_proxy",
        Family::V6 => "ip6 full_proxy",
    };
    lab.gateway.netns.nft(&format!(
        "add table {table}; \
         add chain {table} prerouting \
         {{ type nat hook prerouting priority dstnat; policy accept; }}; \
         add rule {table} prerouting \
         iifname {client_side} tcp dport {HELD_PORT} redirect to :{PROXY_PORT}"
    ));
    let listen_at = SocketAddr::new(lab.gateway.client_side.ip(family), PROXY_PORT);
    lab.gateway
        .netns
        .enter(|| TcpListener::bind(listen_at))
        .unwrap_or_else(|e| panic!("binding the full proxy at {listen_at}: {e}"))
}

/// A TLS 1.2 ClientHello record (one cipher suite) for `server_name`, in its server_name
/// extension (RFC 6066): what the full proxy waits for before it acts, as an inspecting proxy
/// does.
pub fn client_hello(server_name: &str) -> Vec<u8> {
    let name = server_name.as_bytes();
    let length = |len: usize| u16::try_from(len).expect("short").to_be_bytes();
    // server_name extension: a list of one host_name (type 0).
    let mut names = vec![0];
    names.extend(length(name.len()));
    names.extend(name);
    let mut extension = vec![0x00, 0x00]; // server_name
    extension.extend(length(names.len() + 2));
    extension.extend(length(names.len()));
    extension.extend(names);

    let mut hello = vec![0x03, 0x03]; // client_version: TLS 1.2
    hello.extend([0x5a; 32]); // random
    hello.push(0); // session_id: none
    hello.extend([0x00, 0x02, 0xc0, 0x2f]); // TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    hello.extend([0x01, 0x00]); // compression_methods: null
    hello.extend(length(extension.len()));
    hello.extend(extension);
    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend(&u32::try_from(hello.len()).expect("short").to_be_bytes()[1..]);
    handshake.extend(hello);
    // A handshake record; clients say TLS 1.0 on the record layer.
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(length(handshake.len()));
    record.extend(handshake);
    record
}

/// Reads one TLS record from the client, which must be a ClientHello.
fn read_client_hello(stream: &mut TcpStream) -> io::Result<()> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header)?;
    let mut body = vec![0u8; u16::from_be_bytes([header[3], header[4]]).into()];
    stream.read_exact(&mut body)?;
    if header[0] != 0x16 || body.first() != Some(&0x01) {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("not a ClientHello: {header:02x?} {body:02x?}"),
        ));
    }
    Ok(())
}

/// The full proxy's side of one connection: accepts on the gateway's `listener`, reads the
/// ClientHello, waits `delay` and aborts (a RST from the gateway's own stack).
pub fn spawn_full_proxy(
    listener: &TcpListener,
    delay: Duration,
) -> thread::JoinHandle<io::Result<()>> {
    let listener = listener
        .try_clone()
        .expect("cloning the full proxy's listener");
    thread::spawn(move || {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        read_client_hello(&mut stream)?;
        thread::sleep(delay);
        abort(stream)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_hello_is_one_record_naming_the_server() {
        let record = client_hello("customerweb");
        assert_eq!(&record[..3], [0x16, 0x03, 0x01]);
        assert_eq!(
            usize::from(u16::from_be_bytes([record[3], record[4]])),
            record.len() - 5
        );
        assert_eq!(record[5], 0x01, "a ClientHello");
        assert!(record.ends_with(b"customerweb"));
    }
}
