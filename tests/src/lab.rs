//! Real traffic: two fresh network namespaces joined by a veth pair, TCP endpoints inside them,
//! and the `flagtrace` binary ($FLAGTRACE_BIN) run against the client side.

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
fn wait_until(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
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
        let [a, b, c, d] = self.ipv4;
        let ipv6 = std::net::Ipv6Addr::from(self.ipv6);
        self.netns.ip(&["link", "set", "lo", "up"]);
        // No link-local address: no DAD, no router solicitations, a quiet link.
        self.netns
            .ip(&["link", "set", self.iface, "addrgenmode", "none"]);
        self.netns.ip(&[
            "addr",
            "add",
            &format!("{a}.{b}.{c}.{d}/24"),
            "dev",
            self.iface,
        ]);
        self.netns.ip(&[
            "addr",
            "add",
            &format!("{ipv6}/64"),
            "dev",
            self.iface,
            "nodad",
        ]);
        self.netns.ip(&["link", "set", self.iface, "up"]);
    }

    fn is_up(&self) -> bool {
        let links: Value =
            serde_json::from_str(&self.netns.ip(&["-j", "link", "show", "dev", self.iface]))
                .expect("ip -j prints JSON");
        links[0]["operstate"] == "UP"
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
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
        // Created inside the namespaces: no interface ever appears in the host's namespace.
        client.netns.ip(&[
            "link",
            "add",
            client.iface,
            "type",
            "veth",
            "peer",
            "name",
            server.iface,
            "netns",
            server.netns.name(),
        ]);
        client.configure();
        server.configure();
        let deadline = Instant::now() + TIMEOUT;
        while !(client.is_up() && server.is_up()) {
            assert!(
                Instant::now() < deadline,
                "veth pair not up after {TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Self { client, server }
    }

    /// A listener on the server side.
    pub fn listen(&self, family: Family, port: u16) -> TcpListener {
        let addr = self.server.addr(family, port);
        self.server
            .netns
            .enter(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("binding {addr} in {}: {e}", self.server.netns.name()))
    }

    /// Connects from the client side and runs `talk` on the connection.
    pub fn connect<T: Send>(
        &self,
        server: SocketAddr,
        talk: impl FnOnce(TcpStream) -> T + Send,
    ) -> std::io::Result<T> {
        self.client.netns.enter(|| {
            let stream = TcpStream::connect_timeout(&server, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.set_write_timeout(Some(TIMEOUT))?;
            Ok(talk(stream))
        })
    }
}

/// Accepts one connection and sends back everything it receives once the client has finished
/// sending, then closes: the server reads all data before closing, so it sends FIN, never RST.
pub fn spawn_echo_server(listener: TcpListener) -> thread::JoinHandle<std::io::Result<()>> {
    thread::spawn(move || {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received)?;
        stream.write_all(&received)?;
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

/// A running `flagtrace attach`, killed on drop if the test did not stop it.
pub struct Loader {
    child: Child,
    log: Arc<Mutex<String>>,
}

/// What `attach` prints once both hooks are in place.
pub const READY_PREFIX: &str = "flagtrace: attached";

impl Loader {
    /// Starts `flagtrace --netns NS --pin-root ROOT attach IFACE` and waits for its ready line.
    pub fn attach(netns: &Netns, pin_root: &Path, iface: &str) -> Self {
        let pin_root = pin_root.to_str().expect("UTF-8 pin root");
        let mut child = Command::new(flagtrace_bin())
            .args([
                "--netns",
                netns.name(),
                "--pin-root",
                pin_root,
                "attach",
                iface,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting flagtrace attach");
        let log = Arc::new(Mutex::new(String::new()));
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
        let mut loader = Self { child, log };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match ready.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(READY_PREFIX) => return loader,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no ready line after {TIMEOUT:?}:\n{}", loader.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = loader.child.wait();
                    panic!(
                        "flagtrace attach exited ({status:?}) before its ready line:\n{}",
                        loader.log()
                    )
                }
            }
        }
    }

    /// Everything the loader printed so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Sends SIGTERM and waits for the loader to exit.
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        wait_until(&mut self.child, TIMEOUT).unwrap_or_else(|| {
            panic!(
                "flagtrace attach still running {TIMEOUT:?} after SIGTERM:\n{}",
                self.log()
            )
        })
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
    let root = pin_root.to_str().expect("UTF-8 pin root");
    let output = flagtrace(&["--pin-root", root, "flows", "--json"]);
    assert!(
        output.status.success(),
        "flagtrace flows --json failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 output")
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
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
