//! Real traffic in fresh network namespaces, and the `flagtrace` binary ($FLAGTRACE_BIN) run
//! against the client side. Three topologies, each removed on drop:
//! - [`VethLab`]: client and server joined by a veth pair;
//! - [`RoutedLab`]: client, gateway (a router with a chosen MAC and nftables) and server;
//! - [`SegmentLab`]: client, server and a third box on one flat segment (a hub), where an
//!   injector sees everything.
//!
//! Background processes (`flagtrace attach`, the lab tool `ft-lab`) are [`Daemon`]s, started once
//! they print their ready line and stopped on drop.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        mpsc::{self, RecvTimeoutError},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use aya::programs::{tc::TcAttachType, SchedClassifier};
use serde_json::Value;

use crate::unique_name;

/// How long anything in the lab may take before the test gives up (a CI machine can be slow,
/// but a hang must become a failure).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The `flagtrace` binary under test, as `cargo xtask test` passes it.
pub fn flagtrace_bin() -> PathBuf {
    let path = std::env::var_os("FLAGTRACE_BIN").expect(
        "FLAGTRACE_BIN is not set: run the tests through `cargo xtask test`, or set it to the \
         absolute path of target/release/flagtrace",
    );
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "FLAGTRACE_BIN={} is not a file",
        path.display()
    );
    path
}

/// Runs a command to completion, killing it after [`TIMEOUT`].
pub fn run(command: &mut Command) -> Output {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("starting {description}: {error}"));
    let collect = |stream: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = collect(child.stdout.take().map(|s| Box::new(s) as _));
    let stderr = collect(child.stderr.take().map(|s| Box::new(s) as _));
    let status = wait_until(&mut child, TIMEOUT)
        .unwrap_or_else(|| panic!("{description} still running after {TIMEOUT:?}"));
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Runs a command that must succeed, returning its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// `Some(status)` once the child exited, `None` if it still runs after `timeout`.
pub fn wait_until(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `flagtrace ARGS`, run to completion.
pub fn flagtrace(args: &[&str]) -> Output {
    run(Command::new(flagtrace_bin()).args(args))
}

/// A named network namespace (/run/netns/NAME), deleted on drop with every interface in it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: String) -> Self {
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        Self { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`, which must succeed; returns its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `ip netns exec NAME PROGRAM`: a command to run inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Sets a sysctl of this namespace's network stack, e.g. `net/ipv4/ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = Path::new("/proc/sys").join(key);
        // /proc/sys/net shows the namespace of the thread that opens it.
        self.enter(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("{} = {value} in {}: {e}", path.display(), self.name));
    }

    /// Reads a sysctl of this namespace's network stack, e.g. `net/ipv4/tcp_rmem`.
    pub fn sysctl_value(&self, key: &str) -> String {
        let path = Path::new("/proc/sys").join(key);
        self.enter(|| std::fs::read_to_string(&path))
            .unwrap_or_else(|e| panic!("reading {} in {}: {e}", path.display(), self.name))
    }

    /// Runs nftables COMMANDS (`;`-separated) in this namespace.
    pub fn nft(&self, commands: &str) {
        run_ok(self.command("nft").arg(commands));
    }

    /// Runs `f` on a thread that entered this namespace, so sockets it creates live here (they
    /// stay in this namespace when handed to other threads).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    let netns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                    // SAFETY: a valid namespace fd; setns affects only this thread.
                    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let deleted = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(deleted, Ok(status) if status.success()) {
            eprintln!("warning: deleting netns {}: {deleted:?}", self.name);
        }
    }
}

/// One side of the lab.
#[derive(Debug)]
pub struct Endpoint {
    pub netns: Netns,
    pub iface: &'static str,
    pub ipv4: [u8; 4],
    pub ipv6: [u16; 8],
}

impl Endpoint {
    pub fn addr(&self, family: Family, port: u16) -> SocketAddr {
        match family {
            Family::V4 => SocketAddr::from((self.ipv4, port)),
            Family::V6 => SocketAddr::from((self.ipv6, port)),
        }
    }

    fn configure(&self) {
        configure_interface(&self.netns, self.iface, self.ipv4, self.ipv6);
    }

    /// Routes everything not on the local subnet through `gateway`, both families.
    fn route_via(&self, gateway: &Port) {
        let [a, b, c, d] = gateway.ipv4;
        let ipv6 = std::net::Ipv6Addr::from(gateway.ipv6).to_string();
        self.netns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &format!("{a}.{b}.{c}.{d}"),
        ]);
        self.netns
            .ip(&["-6", "route", "add", "default", "via", &ipv6]);
    }

    /// The MAC address of this endpoint's interface, as `ip link` prints it.
    pub fn mac(&self) -> String {
        mac_of(&self.netns, self.iface)
    }

    /// A listener on this endpoint.
    pub fn listen(&self, family: Family, port: u16) -> TcpListener {
        let addr = self.addr(family, port);
        self.netns
            .enter(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("binding {addr} in {}: {e}", self.netns.name()))
    }

    /// Connects from this endpoint and runs `talk` on the connection.
    pub fn connect<T: Send>(
        &self,
        server: SocketAddr,
        talk: impl FnOnce(TcpStream) -> T + Send,
    ) -> std::io::Result<T> {
        self.netns.enter(|| {
            let stream = TcpStream::connect_timeout(&server, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.set_write_timeout(Some(TIMEOUT))?;
            Ok(talk(stream))
        })
    }
}

/// Addresses on `iface` in `netns` (IPv4 /24, IPv6 /64), which comes up with its loopback.
fn configure_interface(netns: &Netns, iface: &str, ipv4: [u8; 4], ipv6: [u16; 8]) {
    let [a, b, c, d] = ipv4;
    let ipv6 = std::net::Ipv6Addr::from(ipv6);
    netns.ip(&["link", "set", "lo", "up"]);
    // No link-local address: no DAD, no router solicitations, a quiet link.
    netns.ip(&["link", "set", iface, "addrgenmode", "none"]);
    netns.ip(&["addr", "add", &format!("{a}.{b}.{c}.{d}/24"), "dev", iface]);
    netns.ip(&["addr", "add", &format!("{ipv6}/64"), "dev", iface, "nodad"]);
    netns.ip(&["link", "set", iface, "up"]);
}

/// A veth pair from `a` to `b`, created inside the namespaces: no interface ever appears in the
/// host's namespace.
fn veth_pair((a, a_iface): (&Netns, &str), (b, b_iface): (&Netns, &str)) {
    a.ip(&[
        "link",
        "add",
        a_iface,
        "type",
        "veth",
        "peer",
        "name",
        b_iface,
        "netns",
        b.name(),
    ]);
}

/// Waits until every listed interface is up (both ends of each veth are).
fn wait_until_up(links: &[(&Netns, &str)]) {
    let is_up = |(netns, iface): &(&Netns, &str)| {
        let links: Value = serde_json::from_str(&netns.ip(&["-j", "link", "show", "dev", iface]))
            .expect("ip -j prints JSON");
        links[0]["operstate"] == "UP"
    };
    let deadline = Instant::now() + TIMEOUT;
    while !links.iter().all(is_up) {
        assert!(Instant::now() < deadline, "links not up after {TIMEOUT:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The MAC address of `iface` in `netns`, as `ip link` prints it (lower case).
pub fn mac_of(netns: &Netns, iface: &str) -> String {
    let links: Value = serde_json::from_str(&netns.ip(&["-j", "link", "show", "dev", iface]))
        .expect("ip -j prints JSON");
    links[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address for {iface} in {}: {links}", netns.name()))
        .to_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// How a TTL (IPv4) or hop limit (IPv6) of `value` reads in the evidence.
    pub fn ttl_phrase(self, value: u8) -> String {
        match self {
            Family::V4 => format!("TTL {value}"),
            Family::V6 => format!("hop limit {value}"),
        }
    }
}

/// Client and server namespaces (`ft-<pid>-<n>-cli` / `-srv`) joined by a veth pair, with IPv4
/// and IPv6 addresses; both removed on drop, even when the test panics.
#[derive(Debug)]
pub struct VethLab {
    pub client: Endpoint,
    pub server: Endpoint,
}

impl VethLab {
    pub fn create() -> Self {
        let base = unique_name("ft");
        let client = Endpoint {
            netns: Netns::create(format!("{base}-cli")),
            iface: "veth0",
            ipv4: [10, 200, 0, 1],
            ipv6: [0xfd00, 0, 0, 0, 0, 0, 0, 1],
        };
        let server = Endpoint {
            netns: Netns::create(format!("{base}-srv")),
            iface: "veth1",
            ipv4: [10, 200, 0, 2],
            ipv6: [0xfd00, 0, 0, 0, 0, 0, 0, 2],
        };
        veth_pair((&client.netns, client.iface), (&server.netns, server.iface));
        client.configure();
        server.configure();
        wait_until_up(&[(&client.netns, client.iface), (&server.netns, server.iface)]);
        Self { client, server }
    }

    /// A listener on the server side.
    pub fn listen(&self, family: Family, port: u16) -> TcpListener {
        self.server.listen(family, port)
    }

    /// Connects from the client side and runs `talk` on the connection.
    pub fn connect<T: Send>(
        &self,
        server: SocketAddr,
        talk: impl FnOnce(TcpStream) -> T + Send,
    ) -> std::io::Result<T> {
        self.client.connect(server, talk)
    }
}

/// Accepts one connection and sends back everything it receives once the client has finished
/// sending, then closes: the server reads all data before closing, so it sends FIN, never RST.
pub fn spawn_echo_server(listener: TcpListener) -> thread::JoinHandle<std::io::Result<()>> {
    spawn_echo_server_for(listener, 1)
}

/// [`spawn_echo_server`] for `connections` connections, one after the other.
pub fn spawn_echo_server_for(
    listener: TcpListener,
    connections: usize,
) -> thread::JoinHandle<std::io::Result<()>> {
    thread::spawn(move || {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept()?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.set_write_timeout(Some(TIMEOUT))?;
            let mut received = Vec::new();
            stream.read_to_end(&mut received)?;
            stream.write_all(&received)?;
        }
        Ok(())
    })
}

/// The client half of an echo exchange: sends `data`, half-closes (FIN), reads the echo until
/// the server's FIN. Returns the client's address and what came back.
pub fn echo_exchange(mut stream: TcpStream, data: &[u8]) -> std::io::Result<(SocketAddr, Vec<u8>)> {
    let local = stream.local_addr()?;
    stream.write_all(data)?;
    stream.shutdown(Shutdown::Write)?;
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed)?;
    Ok((local, echoed))
}

/// Opens `port` on `server`, sends `data` from `client` and checks the echo: a connection that
/// opens and closes normally. Returns the client's and the server's addresses.
pub fn echo_between(
    client: &Endpoint,
    server: &Endpoint,
    family: Family,
    port: u16,
    data: &[u8],
) -> (SocketAddr, SocketAddr) {
    let server_addr = server.addr(family, port);
    let echo_server = spawn_echo_server(server.listen(family, port));
    let (client_addr, echoed) = client
        .connect(server_addr, |stream| echo_exchange(stream, data))
        .and_then(|exchange| exchange)
        .unwrap_or_else(|e| panic!("echo exchange with {server_addr}: {e}"));
    echo_server
        .join()
        .expect("echo server thread")
        .unwrap_or_else(|e| panic!("echo server {server_addr}: {e}"));
    assert!(
        echoed == data,
        "the echo from {server_addr} differs from what was sent"
    );
    (client_addr, server_addr)
}

/// Connects from `client` to `server`, which must refuse; returns how long the refusal took.
pub fn expect_refusal(client: &Endpoint, server: SocketAddr) -> Duration {
    let started = Instant::now();
    let error = client
        .connect(server, |_| ())
        .expect_err("the connection must be refused");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{server}: {error}"
    );
    started.elapsed()
}

/// Connects from `client` to `server_addr`, where `server` (a thread already accepting) resets
/// the connection; `talk` is the client's side until its read fails. Checks that the server
/// thread succeeded and that the client saw the reset; returns the client's address.
pub fn expect_server_reset(
    client: &Endpoint,
    server_addr: SocketAddr,
    server: thread::JoinHandle<std::io::Result<()>>,
    talk: impl FnOnce(&mut TcpStream) -> std::io::Result<()> + Send,
) -> SocketAddr {
    let (local, read) = read_until_reset(client, server_addr, talk);
    join_server(server, server_addr);
    assert_reset(read, server_addr);
    local
}

/// Tells a server thread that the client has seen the RST that a box on the path sent in the
/// server's name: the server itself could not know.
pub struct ResetSeen(mpsc::Receiver<()>);

impl ResetSeen {
    /// Waits until the client has seen the RST; an error if it never does.
    pub fn wait(&self) -> std::io::Result<()> {
        self.0.recv_timeout(TIMEOUT).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the client saw no reset")
        })
    }
}

/// Connects from `client` to the server's `listener`, where a box on the path (a firewall, an
/// injector) resets the connection in the server's name. `server` runs on a thread of its own
/// with the accepted connection and a [`ResetSeen`]: the box leaves the server unaware, and it
/// may go on once the test lets it. `talk` is the client's side until its read fails. Checks
/// that the server succeeded and that the client saw the reset; returns the client's address.
pub fn expect_forged_reset(
    client: &Endpoint,
    listener: TcpListener,
    server: impl FnOnce(TcpStream, ResetSeen) -> std::io::Result<()> + Send + 'static,
    talk: impl FnOnce(&mut TcpStream) -> std::io::Result<()> + Send,
) -> SocketAddr {
    let server_addr = listener.local_addr().expect("a bound listener");
    let (reset_seen, told) = mpsc::channel();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        server(stream, ResetSeen(told))
    });
    let (local, read) = read_until_reset(client, server_addr, talk);
    // A server that does not wait to be told may be gone already.
    let _ = reset_seen.send(());
    join_server(server, server_addr);
    assert_reset(read, server_addr);
    local
}

/// Connects from `client` to `server_addr`, runs `talk`, then reads until the connection ends;
/// returns the client's address and how the read ended.
fn read_until_reset(
    client: &Endpoint,
    server_addr: SocketAddr,
    talk: impl FnOnce(&mut TcpStream) -> std::io::Result<()> + Send,
) -> (SocketAddr, std::io::Result<usize>) {
    client
        .connect(server_addr, |mut stream: TcpStream| {
            let local = stream.local_addr()?;
            talk(&mut stream)?;
            Ok::<_, std::io::Error>((local, stream.read_to_end(&mut Vec::new())))
        })
        .and_then(|talk| talk)
        .unwrap_or_else(|e| panic!("talking to {server_addr}: {e}"))
}

fn join_server(server: thread::JoinHandle<std::io::Result<()>>, server_addr: SocketAddr) {
    server
        .join()
        .expect("server thread")
        .unwrap_or_else(|e| panic!("server {server_addr}: {e}"));
}

/// The client's read ended in a reset.
fn assert_reset(read: std::io::Result<usize>, server_addr: SocketAddr) {
    let error = read.expect_err("the connection is reset");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionReset,
        "{server_addr}"
    );
}

/// Waits until `stream`'s connection has been reset (SO_ERROR, as a RST leaves it), sending
/// nothing meanwhile; an error after [`TIMEOUT`].
pub fn hold_until_reset(stream: &TcpStream) -> std::io::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    while stream.take_error()?.is_none() {
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the connection was never reset",
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The server accepts on `port`, reads the client's `request` and aborts (SO_LINGER 0): its own
/// RST after a request. Returns the client's address.
pub fn aborted_after_the_request(
    client: &Endpoint,
    server: &Endpoint,
    family: Family,
    port: u16,
    request: &'static [u8],
) -> SocketAddr {
    let server_addr = server.addr(family, port);
    let listener = server.listen(family, port);
    let aborter = thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.read_exact(&mut vec![0u8; request.len()])?;
        abort(stream)
    });
    expect_server_reset(client, server_addr, aborter, |stream| {
        stream.write_all(request)
    })
}

/// Aborts a connection: closing with a zero linger time sends a RST instead of a FIN, as a
/// server or proxy that gives up on a connection does.
pub fn abort(stream: TcpStream) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the size given, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(stream);
    Ok(())
}

/// What a [`Daemon`] printed so far, by stream.
type Log = Arc<Mutex<String>>;

/// A background process that prints a line starting with a known prefix once it is in place
/// (hooks attached, socket bound); stopped on drop if still running.
pub struct Daemon {
    child: Child,
    description: String,
    log: Log,
}

impl Daemon {
    /// Starts `command` and waits for its ready line.
    pub fn start(command: &mut Command, ready_prefix: &str) -> Self {
        let description = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {description}: {e}"));
        let log = Log::default();
        let (lines, ready) = mpsc::channel();
        let forward = |stream: Box<dyn Read + Send>, name: &'static str| {
            let (lines, log) = (lines.clone(), log.clone());
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock()
                        .expect("log lock")
                        .push_str(&format!("{name}: {line}\n"));
                    let _ = lines.send(line);
                }
            })
        };
        forward(Box::new(child.stdout.take().expect("piped")), "stdout");
        forward(Box::new(child.stderr.take().expect("piped")), "stderr");
        drop(lines);
        let mut daemon = Self {
            child,
            description,
            log,
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match ready.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(ready_prefix) => return daemon,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no ready line after {TIMEOUT:?}:\n{}",
                    daemon.description,
                    daemon.log()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = daemon.child.wait();
                    panic!(
                        "{} exited ({status:?}) before its ready line:\n{}",
                        daemon.description,
                        daemon.log()
                    )
                }
            }
        }
    }

    /// Everything the process printed so far.
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` (SIGINT as Ctrl-C would, SIGKILL) and waits for the process to exit; its
    /// log stays readable.
    pub fn stop_with(&mut self, signal: libc::c_int) -> ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        self.wait_for_exit()
    }

    /// Waits for the process to exit by itself (a bounded tool that finished its work).
    pub fn wait(mut self) -> ExitStatus {
        self.wait_for_exit()
    }

    /// [`Daemon::wait`] for a tool that must succeed; returns what it printed.
    pub fn wait_success(mut self) -> String {
        let status = self.wait_for_exit();
        let log = self.log();
        assert!(status.success(), "{}: {status}\n{log}", self.description);
        log
    }

    fn wait_for_exit(&mut self) -> ExitStatus {
        wait_until(&mut self.child, TIMEOUT).unwrap_or_else(|| {
            panic!(
                "{} still running after {TIMEOUT:?}:\n{}",
                self.description,
                self.log()
            )
        })
    }
}

impl Drop for Daemon {
    /// SIGTERM first (flagtrace detaches its hooks on it), SIGKILL if that is not enough. Never
    /// panics: it also runs while a failed test unwinds.
    fn drop(&mut self) {
        const GRACE: Duration = Duration::from_secs(5);
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + GRACE;
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running `flagtrace attach`, stopped on drop if the test did not stop it.
pub struct Loader(Daemon);

/// What `attach` prints once both hooks are in place.
pub const READY_PREFIX: &str = "flagtrace: attached";

impl Loader {
    /// Starts `flagtrace --netns NS --pin-root ROOT attach IFACE` and waits for its ready line.
    pub fn attach(netns: &Netns, pin_root: &Path, iface: &str) -> Self {
        Self::attach_with(netns, pin_root, iface, &[])
    }

    /// [`Loader::attach`] with more options of `attach` (`--max-flows N`...).
    pub fn attach_with(netns: &Netns, pin_root: &Path, iface: &str, options: &[&str]) -> Self {
        let pin_root = pin_root.to_str().expect("UTF-8 pin root");
        Self(Daemon::start(
            Command::new(flagtrace_bin())
                .args([
                    "--netns",
                    netns.name(),
                    "--pin-root",
                    pin_root,
                    "attach",
                    iface,
                ])
                .args(options),
            READY_PREFIX,
        ))
    }

    /// Everything the loader printed so far.
    pub fn log(&self) -> String {
        self.0.log()
    }

    /// Sends SIGTERM and waits for the loader to exit.
    pub fn terminate(self) -> ExitStatus {
        self.0.terminate()
    }

    /// Waits for the loader to exit by itself; its exit status and what it printed.
    pub fn wait(self) -> (ExitStatus, String) {
        let mut daemon = self.0;
        let status = daemon.wait_for_exit();
        (status, daemon.log())
    }
}

/// What `ft-lab` prints once its socket is bound.
pub const FT_LAB_READY: &str = "ft-lab: ready";

/// Starts the lab tool `ft-lab ARGS` inside `netns` and waits until it listens.
pub fn start_ft_lab(netns: &Netns, ft_lab: &Path, args: &[&str]) -> Daemon {
    Daemon::start(netns.command(ft_lab).args(args), FT_LAB_READY)
}

/// One addressed interface of the gateway.
#[derive(Debug)]
pub struct Port {
    pub iface: &'static str,
    pub ipv4: [u8; 4],
    pub ipv6: [u16; 8],
}

impl Port {
    pub fn ip(&self, family: Family) -> std::net::IpAddr {
        match family {
            Family::V4 => self.ipv4.into(),
            Family::V6 => std::net::Ipv6Addr::from(self.ipv6).into(),
        }
    }
}

/// A router between the client's and the server's subnets.
#[derive(Debug)]
pub struct Gateway {
    pub netns: Netns,
    pub client_side: Port,
    pub server_side: Port,
}

/// Name of the nftables table the lab's gateway rules live in.
const NFT_TABLE: &str = "inet flagtrace_lab";

impl Gateway {
    /// Adds an nftables rule to the gateway's forward hook, e.g. `tcp dport 443 drop`.
    pub fn forward_rule(&self, rule: &str) {
        self.netns.nft(&format!(
            "add table {NFT_TABLE}; \
             add chain {NFT_TABLE} forward \
             {{ type filter hook forward priority 0; policy accept; }}; \
             add rule {NFT_TABLE} forward {rule}"
        ));
    }
}

/// What a [`RoutedLab`] looks like.
#[derive(Clone, Copy, Debug)]
pub struct RoutedLabSpec<'a> {
    /// Prefix of the namespaces' names: `<prefix>-<pid>-<n>-cli` / `-gw` / `-srv`.
    pub name_prefix: &'a str,
    /// MAC address of the gateway's client-facing interface.
    pub gateway_mac: &'a str,
    /// The server's initial TTL and IPv6 hop limit (Linux: 64, Windows: 128).
    pub server_initial_ttl: u8,
}

/// Client (10.0.1.1, fd00:1::1) -- gateway (10.0.1.254 | 10.0.2.254) -- server (10.0.2.1,
/// fd00:2::1), each in its own namespace, joined by veth pairs; the client's and the server's
/// default routes point at the gateway. All removed on drop, even when the test panics.
#[derive(Debug)]
pub struct RoutedLab {
    pub client: Endpoint,
    pub gateway: Gateway,
    pub server: Endpoint,
}

impl RoutedLab {
    pub fn create(spec: RoutedLabSpec) -> Self {
        let base = unique_name(spec.name_prefix);
        let client = Endpoint {
            netns: Netns::create(format!("{base}-cli")),
            iface: "eth0",
            ipv4: [10, 0, 1, 1],
            ipv6: [0xfd00, 1, 0, 0, 0, 0, 0, 1],
        };
        let gateway = Gateway {
            netns: Netns::create(format!("{base}-gw")),
            client_side: Port {
                iface: "eth0",
                ipv4: [10, 0, 1, 254],
                ipv6: [0xfd00, 1, 0, 0, 0, 0, 0, 0xfe],
            },
            server_side: Port {
                iface: "eth1",
                ipv4: [10, 0, 2, 254],
                ipv6: [0xfd00, 2, 0, 0, 0, 0, 0, 0xfe],
            },
        };
        let server = Endpoint {
            netns: Netns::create(format!("{base}-srv")),
            iface: "eth0",
            ipv4: [10, 0, 2, 1],
            ipv6: [0xfd00, 2, 0, 0, 0, 0, 0, 1],
        };
        let ttl = spec.server_initial_ttl.to_string();
        server.netns.sysctl("net/ipv4/ip_default_ttl", &ttl);
        // An interface takes the `default` IPv6 settings when it arrives: set them first.
        server.netns.sysctl("net/ipv6/conf/default/hop_limit", &ttl);
        gateway.netns.sysctl("net/ipv4/ip_forward", "1");
        gateway.netns.sysctl("net/ipv6/conf/all/forwarding", "1");

        veth_pair(
            (&client.netns, client.iface),
            (&gateway.netns, gateway.client_side.iface),
        );
        veth_pair(
            (&server.netns, server.iface),
            (&gateway.netns, gateway.server_side.iface),
        );
        gateway.netns.ip(&[
            "link",
            "set",
            gateway.client_side.iface,
            "address",
            spec.gateway_mac,
        ]);
        for port in [&gateway.client_side, &gateway.server_side] {
            configure_interface(&gateway.netns, port.iface, port.ipv4, port.ipv6);
        }
        client.configure();
        server.configure();
        client.route_via(&gateway.client_side);
        server.route_via(&gateway.server_side);
        // A router solicits a neighbour for a packet it forwards from its link-local address,
        // which the quiet links lack: it knows its neighbours statically instead.
        for (endpoint, port) in [
            (&client, &gateway.client_side),
            (&server, &gateway.server_side),
        ] {
            let ipv6 = std::net::Ipv6Addr::from(endpoint.ipv6).to_string();
            let mac = endpoint.mac();
            gateway.netns.ip(&[
                "-6",
                "neigh",
                "add",
                &ipv6,
                "lladdr",
                &mac,
                "dev",
                port.iface,
                "nud",
                "permanent",
            ]);
        }
        wait_until_up(&[
            (&client.netns, client.iface),
            (&gateway.netns, gateway.client_side.iface),
            (&gateway.netns, gateway.server_side.iface),
            (&server.netns, server.iface),
        ]);
        Self {
            client,
            gateway,
            server,
        }
    }
}

/// Client (10.0.3.1), server (10.0.3.2) and a third box (10.0.3.66) on one flat segment: a
/// bridge that learns no addresses, so, like a hub, it floods every frame to every port and the
/// third box sees the client's and the server's traffic. All removed on drop.
#[derive(Debug)]
pub struct SegmentLab {
    pub client: Endpoint,
    pub server: Endpoint,
    pub third: Endpoint,
    /// Holds the bridge; kept for its drop.
    _hub: Netns,
}

impl SegmentLab {
    pub fn create() -> Self {
        let base = unique_name("ft");
        let host = |name: &str, last: u8| Endpoint {
            netns: Netns::create(format!("{base}-{name}")),
            iface: "eth0",
            ipv4: [10, 0, 3, last],
            ipv6: [0xfd00, 3, 0, 0, 0, 0, 0, last.into()],
        };
        let (client, server, third) = (host("cli", 1), host("srv", 2), host("third", 66));
        let hub = Netns::create(format!("{base}-hub"));
        hub.ip(&["link", "add", "hub0", "type", "bridge"]);
        let mut links = Vec::new();
        for (port, endpoint) in [
            ("to-cli", &client),
            ("to-srv", &server),
            ("to-third", &third),
        ] {
            veth_pair((&hub, port), (&endpoint.netns, endpoint.iface));
            hub.ip(&["link", "set", port, "master", "hub0"]);
            hub.ip(&[
                "link",
                "set",
                port,
                "type",
                "bridge_slave",
                "learning",
                "off",
            ]);
            hub.ip(&["link", "set", port, "up"]);
            endpoint.configure();
            links.push((&hub, port));
            links.push((&endpoint.netns, endpoint.iface));
        }
        hub.ip(&["link", "set", "hub0", "up"]);
        wait_until_up(&links);
        drop(links);
        Self {
            client,
            server,
            third,
            _hub: hub,
        }
    }

    /// Starts `ft-lab inject-reset` (at `ft_lab`) on the third box, in `server`'s name, with
    /// `args` (`--on`, `--mac`, `--ttl`): it sends one RST, then exits.
    pub fn start_injector(&self, ft_lab: &Path, server: SocketAddr, args: &[&str]) -> Daemon {
        let server = server.to_string();
        let injector = [
            "inject-reset",
            "--iface",
            self.third.iface,
            "--server",
            &server,
            "--count",
            "1",
            "--timeout",
            "60",
        ];
        start_ft_lab(&self.third.netns, ft_lab, &[&injector[..], args].concat())
    }
}

/// BPF hooks found on an interface, described for messages.
#[derive(Debug, Default)]
pub struct Hooks {
    pub xdp: Vec<String>,
    pub tc: Vec<String>,
}

/// Every XDP and TC hook on `iface` in `netns`, looked up three ways so a hook attached by any
/// mechanism shows up: `ip -d link` (XDP, netlink or link), `bpftool net` (XDP and classic tc
/// filters), and a TCX query (bpftool 7.1 predates TCX).
pub fn hooks_on(netns: &Netns, iface: &str) -> Hooks {
    let mut hooks = Hooks::default();
    let links: Value = serde_json::from_str(&netns.ip(&["-d", "-j", "link", "show", "dev", iface]))
        .expect("ip -j prints JSON");
    if let Some(xdp) = links[0].get("xdp") {
        hooks.xdp.push(format!("ip link: {xdp}"));
    }
    let bpftool = run_ok(Command::new("ip").args([
        "netns",
        "exec",
        netns.name(),
        "bpftool",
        "-j",
        "net",
        "show",
        "dev",
        iface,
    ]));
    let bpftool: Value = serde_json::from_str(&bpftool).expect("bpftool -j prints JSON");
    for (section, found) in [("xdp", &mut hooks.xdp), ("tc", &mut hooks.tc)] {
        for entry in bpftool[0][section].as_array().into_iter().flatten() {
            found.push(format!("bpftool {section}: {entry}"));
        }
    }
    for attach_type in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_, programs) = netns
            .enter(|| SchedClassifier::query_tcx(iface, attach_type))
            .unwrap_or_else(|e| panic!("TCX query on {iface} in {}: {e}", netns.name()));
        for program in programs {
            hooks.tc.push(format!(
                "tcx {attach_type:?}: {}",
                program.name_as_str().unwrap_or("?")
            ));
        }
    }
    hooks
}

/// `flagtrace --pin-root ROOT flows --json`, one JSON object per flow.
pub fn flows_json(pin_root: &Path) -> Vec<Value> {
    json_lines(pin_root, &["flows", "--json"])
}

/// `flagtrace --pin-root ROOT resets --json`: the flows that carried a RST.
pub fn resets_json(pin_root: &Path) -> Vec<Value> {
    json_lines(pin_root, &["resets", "--json"])
}

/// `flagtrace --pin-root ROOT stats --json`: the counters of each attachment.
pub fn stats_json(pin_root: &Path) -> Vec<Value> {
    json_lines(pin_root, &["stats", "--json"])
}

/// `flagtrace --pin-root ROOT ARGS`, which must succeed and print one JSON object a line.
fn json_lines(pin_root: &Path, args: &[&str]) -> Vec<Value> {
    let root = pin_root.to_str().expect("UTF-8 pin root");
    let output = flagtrace(&[&["--pin-root", root], args].concat());
    json_output(&output, args)
}

/// The objects that `flagtrace ARGS` printed, one JSON object a line; the run must have
/// succeeded.
pub fn json_output(output: &Output, args: &[&str]) -> Vec<Value> {
    assert!(
        output.status.success(),
        "flagtrace {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    std::str::from_utf8(&output.stdout)
        .expect("UTF-8 output")
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Checks `flagtrace --pin-root ROOT ARGS --csv` against `json`, the objects that `ARGS --json`
/// printed: a header, then one row per object with the same information, flattened the way the
/// README says (nested keys joined with `_`, `null` empty, lists as JSON text). Parsed back
/// with a CSV reader, so quoting is checked too.
pub fn assert_csv_matches_json(pin_root: &Path, args: &[&str], json: &[Value]) {
    let root = pin_root.to_str().expect("UTF-8 pin root");
    let mut command = Command::new(flagtrace_bin());
    command.args(["--pin-root", root]).args(args).arg("--csv");
    let text = run_ok(&mut command);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap_or_else(|e| panic!("{args:?} --csv header: {e}\n{text}"))
        .iter()
        .map(str::to_owned)
        .collect();
    let mut rows: Vec<Vec<(String, String)>> = reader
        .records()
        .map(|record| {
            let record = record.unwrap_or_else(|e| panic!("{args:?} --csv: {e}\n{text}"));
            header
                .iter()
                .cloned()
                .zip(record.iter().map(str::to_owned))
                .collect()
        })
        .collect();
    let mut expected: Vec<Vec<(String, String)>> = json.iter().map(csv_cells).collect();
    if let Some(first) = expected.first() {
        let columns: Vec<&String> = first.iter().map(|(column, _)| column).collect();
        assert_eq!(
            header.iter().collect::<Vec<_>>(),
            columns,
            "{args:?}: the CSV columns are the JSON keys, in order"
        );
    }
    // Two runs of the command: compare the rows as sets, not by position. The times are
    // converted from the kernel's clock to wall time by each run, at that run's own reading of
    // both clocks, so they may differ by a microsecond: compare them to the second.
    for row in rows.iter_mut().chain(expected.iter_mut()) {
        for (column, cell) in row.iter_mut() {
            if column.ends_with("_seen") {
                cell.truncate("2026-11-23T21:51:04".len());
            }
        }
    }
    rows.sort();
    expected.sort();
    assert_eq!(
        rows, expected,
        "{args:?} --csv differs from --json:\n{text}"
    );
}

/// The CSV cells of a JSON object, as (column, cell), in key order.
fn csv_cells(object: &Value) -> Vec<(String, String)> {
    fn flatten(column: String, value: &Value, cells: &mut Vec<(String, String)>) {
        match value {
            Value::Object(object) => {
                for (key, value) in object {
                    let nested = if column.is_empty() {
                        key.clone()
                    } else {
                        format!("{column}_{key}")
                    };
                    flatten(nested, value, cells);
                }
            }
            Value::Null => cells.push((column, String::new())),
            Value::String(text) => cells.push((column, text.clone())),
            other => cells.push((column, other.to_string())),
        }
    }
    let mut cells = Vec::new();
    flatten(String::new(), object, &mut cells);
    cells
}

/// Seconds since the Unix epoch of an RFC 3339 UTC timestamp (`YYYY-MM-DDTHH:MM:SS[.frac]Z`),
/// or `None` if it is not one.
pub fn rfc3339_utc_seconds(stamp: &str) -> Option<f64> {
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let mut time = time.splitn(3, ':');
    let (hour, minute) = (
        time.next()?.parse::<i64>().ok()?,
        time.next()?.parse::<i64>().ok()?,
    );
    let second = time.next()?.parse::<f64>().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3_600 + minute * 60) as f64 + second)
}

#[cfg(test)]
mod tests {
    use super::rfc3339_utc_seconds;

    #[test]
    fn rfc3339_utc_timestamps_parse_to_unix_seconds() {
        assert_eq!(rfc3339_utc_seconds("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(
            rfc3339_utc_seconds("2000-03-01T00:00:00.5Z"),
            Some(951_868_800.5)
        );
        assert_eq!(
            rfc3339_utc_seconds("2024-02-29T23:59:59Z"),
            Some(1_709_251_199.0)
        );
        assert_eq!(rfc3339_utc_seconds("2024-02-29T23:59:59+01:00"), None);
        assert_eq!(rfc3339_utc_seconds("yesterday"), None);
    }
}
