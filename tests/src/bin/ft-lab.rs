//! ft-lab: the lab tool of flagtrace's reset tests and of `cargo xtask demo`.
//!
//! `delayed-reset` and `inject-reset` play middleboxes: they sniff one interface through an
//! AF_PACKET socket and send forged RSTs on it, from the interface's own MAC or one they forge. They are meant to run inside a lab namespace
//! (`ip netns exec NS ft-lab ...`), where they only ever reach the lab's own interfaces. Both
//! print one ready line once their socket is bound, one line per RST, and stop at `--count` or
//! `--timeout`, or when killed.
//!
//! `syn-flood` plays the attacker of a SYN flood: SYNs from made-up sources, a bounded number.
//!
//! `demo` tells the seed story in fresh namespaces and removes them afterwards, also on failure
//! or Ctrl-C.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error, 130 interrupted (demo).

use std::{
    collections::{HashSet, VecDeque},
    net::SocketAddr,
    panic::AssertUnwindSafe,
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use flagtrace_tests::{
    forge::{
        injected_reset, mac_string, parse_mac, refusal, reset_answering, PacketSocket, Segment,
    },
    lab::{flagtrace_bin, run, Family, FT_LAB_READY},
    seed_story::{
        SeedStory, CONNECTIONS, GATEWAY_MAC, HELD_PORT, OPEN_PORT, RESET_DELAY, SERVER_INITIAL_TTL,
        SERVER_NAME,
    },
};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "ft-lab",
    about = "Middleboxes that forge TCP resets, for flagtrace's labs"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// A gateway that holds SYNs to PORT and answers each with a RST+ACK in the server's name
    /// after a delay. Pair it with a firewall rule that drops those SYNs.
    DelayedReset {
        #[command(flatten)]
        forger: ForgerArgs,
        /// The server port whose SYNs are answered.
        #[arg(long)]
        port: u16,
        /// How long to hold each SYN before answering it.
        #[arg(long, value_name = "MS", default_value_t = 2000)]
        delay_ms: u64,
    },
    /// An on-path injector: it sends SERVER's peer a RST+ACK in SERVER's name, with the exact
    /// sequence number the peer expects next, when SERVER sends data or when the peer sends
    /// SERVER a request (`--on`).
    InjectReset {
        #[command(flatten)]
        forger: ForgerArgs,
        /// The host to impersonate, IP:PORT.
        #[arg(long, value_name = "IP:PORT")]
        server: SocketAddr,
        /// What the injector strikes on.
        #[arg(long, value_enum, default_value_t = Strike::Data)]
        on: Strike,
    },
    /// A SYN flood from made-up sources: COUNT SYNs to the SERVER's PORTS in turn, each from a
    /// random address of 198.18.0.0/15 (RFC 2544's benchmarking range) and a random port, as
    /// fast as the socket takes them, within the timeout. With --rst, RSTs instead: each a
    /// reset flow of its own, as backscatter or a reset flood makes.
    SynFlood {
        /// Interface to send on.
        #[arg(long)]
        iface: String,
        /// The server's IPv4 address.
        #[arg(long)]
        server: std::net::Ipv4Addr,
        /// The server's ports, taken in turn.
        #[arg(long, value_delimiter = ',', required = true)]
        ports: Vec<u16>,
        /// MAC of the server (or of the gateway towards it).
        #[arg(long, value_name = "MAC", value_parser = mac_arg)]
        to_mac: [u8; 6],
        /// How many SYNs.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        count: u32,
        /// Stop after this long, sent or not.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        timeout: u64,
        /// Send RSTs instead of SYNs.
        #[arg(long)]
        rst: bool,
    },
    /// Tell the seed story in fresh network namespaces (needs root and $FLAGTRACE_BIN).
    Demo,
}

#[derive(Args)]
struct ForgerArgs {
    /// Interface to sniff and send on.
    #[arg(long)]
    iface: String,
    /// Stop after this many RSTs [default: no limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    count: Option<u32>,
    /// Stop after this long.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    timeout: u64,
    /// TTL (IPv4) or hop limit (IPv6) of the RSTs [default: this namespace's
    /// net.ipv4.ip_default_ttl, as the box's own stack would use].
    #[arg(long)]
    ttl: Option<u8>,
    /// Source MAC of the RSTs, e.g. the impersonated host's [default: this interface's own].
    #[arg(long, value_name = "MAC", value_parser = mac_arg)]
    mac: Option<[u8; 6]>,
}

/// When `inject-reset` strikes.
#[derive(Clone, Copy, ValueEnum)]
enum Strike {
    /// On SERVER's data: the receiver's RST carries the sequence number that follows the data.
    Data,
    /// On the peer's request to SERVER, while the peer waits for the answer: the RST carries
    /// the sequence number the request acknowledged.
    Request,
}

fn mac_arg(text: &str) -> Result<[u8; 6], String> {
    parse_mac(text).ok_or_else(|| format!("not a MAC address (aa:bb:cc:dd:ee:ff): {text}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::DelayedReset {
            forger,
            port,
            delay_ms,
        } => delayed_reset(&forger, port, Duration::from_millis(delay_ms)),
        Task::InjectReset { forger, server, on } => inject_reset(&forger, server, on),
        Task::SynFlood {
            iface,
            server,
            ports,
            to_mac,
            count,
            timeout,
            rst,
        } => syn_flood(
            &iface,
            (server, &ports, to_mac),
            (count, rst),
            Duration::from_secs(timeout),
        ),
        Task::Demo => return demo(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ft-lab: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A forged frame waiting for its time.
struct Pending {
    due: Instant,
    frame: Vec<u8>,
    what: String,
}

fn delayed_reset(args: &ForgerArgs, port: u16, delay: Duration) -> Result<()> {
    let mut answered = HashSet::new();
    forge(args, |segment, mac, ttl| {
        // A retransmitted SYN carries the same sequence number: answer each connection once.
        let wanted = segment.is_syn()
            && segment.dst.port() == port
            && answered.insert((segment.src, segment.dst, segment.seq));
        wanted.then(|| Pending {
            due: Instant::now() + delay,
            frame: refusal(segment, mac, ttl),
            what: format!(
                "RST+ACK to {} as {}, {} ms after its SYN",
                segment.src,
                segment.dst,
                delay.as_millis()
            ),
        })
    })
}

/// Makes the frame that answers a segment, from a source MAC and a TTL.
type ForgeFrame = fn(&Segment, [u8; 6], u8) -> Vec<u8>;

fn inject_reset(args: &ForgerArgs, server: SocketAddr, on: Strike) -> Result<()> {
    let mut reset = HashSet::new();
    forge(args, |segment, mac, ttl| {
        let (peer, seq, forged): (_, _, ForgeFrame) = match on {
            Strike::Data if segment.src == server => {
                (segment.dst, segment.seq_end(), injected_reset)
            }
            Strike::Request if segment.dst == server => {
                (segment.src, segment.ack.unwrap_or(0), reset_answering)
            }
            _ => return None,
        };
        let wanted = segment.payload_len > 0 && !segment.rst && reset.insert(peer);
        wanted.then(|| Pending {
            due: Instant::now(),
            frame: forged(segment, mac, ttl),
            what: format!("RST+ACK to {peer} as {server} with seq {seq}"),
        })
    })
}

/// Sends `count` SYNs from random sources of 198.18.0.0/15 to `server`'s ports in turn.
fn syn_flood(
    iface: &str,
    (server, ports, to_mac): (std::net::Ipv4Addr, &[u16], [u8; 6]),
    (count, rst): (u32, bool),
    timeout: Duration,
) -> Result<()> {
    use rand::{rngs::SmallRng, Rng as _, SeedableRng as _};
    refuse_the_hosts_namespace()?;
    let socket = PacketSocket::open(iface)?;
    let mut rng = SmallRng::from_entropy();
    let what = if rst { "RSTs" } else { "SYNs" };
    println!("{FT_LAB_READY} on {iface}, {count} {what} to {server}");
    let deadline = Instant::now() + timeout;
    let mut sent = 0;
    for port in ports.iter().cycle().take(count as usize) {
        if Instant::now() >= deadline {
            break;
        }
        let source = [198, 18 | rng.gen_range(0..2), rng.gen(), rng.gen()];
        let builder = etherparse::PacketBuilder::ethernet2(socket.mac(), to_mac)
            .ipv4(source, server.octets(), 64)
            .tcp(rng.gen_range(1024..=u16::MAX), *port, rng.gen(), 64240);
        let builder = if rst { builder.rst() } else { builder.syn() };
        let mut frame = Vec::with_capacity(builder.size(0));
        builder.write(&mut frame, &[])?;
        socket.send(&frame)?;
        sent += 1;
    }
    println!("ft-lab: sent {sent} {what}");
    Ok(())
}

/// Sniffs `args.iface`, asks `plan` what to forge for each TCP segment that arrives, and sends
/// the forged frames when they are due, until the count or the timeout is reached.
fn forge(
    args: &ForgerArgs,
    mut plan: impl FnMut(&Segment, [u8; 6], u8) -> Option<Pending>,
) -> Result<()> {
    refuse_the_hosts_namespace()?;
    let ttl = match args.ttl {
        Some(ttl) => ttl,
        None => default_ttl()?,
    };
    let socket = PacketSocket::open(&args.iface)?;
    let mac = args.mac.unwrap_or(socket.mac());
    println!(
        "{FT_LAB_READY} on {}, RSTs from {} with TTL {ttl}",
        args.iface,
        mac_string(mac)
    );
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let limit = args.count.unwrap_or(u32::MAX) as usize;
    let (mut pending, mut sent) = (VecDeque::<Pending>::new(), 0usize);
    loop {
        // Every delay is the same, so the queue is in order of due time.
        while pending.front().is_some_and(|p| p.due <= Instant::now()) {
            let due = pending.pop_front().expect("a front element");
            socket.send(&due.frame)?;
            sent += 1;
            println!("ft-lab: sent {}", due.what);
        }
        if sent >= limit {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            println!("ft-lab: timeout after {} s, {sent} RSTs sent", args.timeout);
            return Ok(());
        }
        let until = pending.front().map_or(deadline, |p| p.due.min(deadline));
        let Some(frame) = socket.receive(until - now)? else {
            continue;
        };
        if sent + pending.len() >= limit {
            continue;
        }
        if let Some(planned) = Segment::parse(&frame).and_then(|s| plan(&s, mac, ttl)) {
            pending.push_back(planned);
        }
    }
}

/// Forged packets belong in a lab: run only in a named network namespace (/run/netns/NAME,
/// as `ip netns add` makes them), never in the host's.
fn refuse_the_hosts_namespace() -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    const NAMED: &str = "/run/netns";
    let id = |metadata: std::fs::Metadata| (metadata.dev(), metadata.ino());
    let own = std::fs::metadata("/proc/self/ns/net")
        .map(id)
        .context("reading /proc/self/ns/net")?;
    let named = std::fs::read_dir(NAMED)
        .into_iter()
        .flatten()
        .filter_map(|entry| std::fs::metadata(entry.ok()?.path()).ok())
        .any(|namespace| id(namespace) == own);
    if !named {
        bail!(
            "ft-lab forges packets only inside a lab's network namespace (one in {NAMED}): \
             run it with `ip netns exec NS ft-lab ...`"
        );
    }
    Ok(())
}

/// The initial TTL of this network namespace's own stack.
fn default_ttl() -> Result<u8> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_default_ttl";
    let text = std::fs::read_to_string(PATH).with_context(|| format!("reading {PATH}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("{PATH} holds {text:?}"))
}

/// Set by the signal watcher: the demo stops at its next step and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn demo() -> ExitCode {
    watch_for_interrupts();
    // The lab helpers panic on failure; unwinding runs the drops that clean up. Say what failed
    // in one line instead of a panic report.
    std::panic::set_hook(Box::new(|info| {
        // After Ctrl-C, failures are its echoes (a killed resetter, a refused connection).
        if INTERRUPTED.load(Ordering::SeqCst) {
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("panic");
        eprintln!("ft-lab demo: {message}");
    }));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(tell_seed_story));
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("ft-lab demo: interrupted; everything it created is removed");
        return ExitCode::from(130);
    }
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("ft-lab demo: error: {error:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("ft-lab demo: failed; everything it created is removed");
            ExitCode::FAILURE
        }
    }
}

/// Turns SIGINT, SIGTERM and SIGHUP into [`INTERRUPTED`]. A handler rather than a blocked mask:
/// children inherit a mask, but a handler reverts to the default on exec, so `flagtrace attach`
/// and the resetter still stop on the SIGTERM their guards send.
fn watch_for_interrupts() {
    extern "C" fn interrupted(_: libc::c_int) {
        // An atomic store is async-signal-safe.
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
    // SAFETY: sigaction is plain data, all zeroes is valid; the handler only stores an atomic.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = interrupted as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

fn checkpoint() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn tell_seed_story() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo must run as root: it creates network namespaces and loads BPF programs");
    }
    if std::env::var_os("FLAGTRACE_BIN").is_none() {
        bail!(
            "FLAGTRACE_BIN is not set: run `cargo xtask demo`, or set it to the path of \
             target/release/flagtrace"
        );
    }
    let flagtrace = flagtrace_bin();
    println!("flagtrace demo: who reset this connection?\n");
    let story = SeedStory::build("ftdemo");
    let lab = &story.lab;
    let (client, gateway, server) = (&lab.client, &lab.gateway, &lab.server);
    let held = story.server(HELD_PORT);
    println!(
        "The lab, in network namespaces {}, {} and {}:\n  \
         client {} --- {} gateway {} --- server {}\n  \
         The gateway's MAC {GATEWAY_MAC} carries an F5 Networks OUI. Like an F5 virtual server, \
         it is a full proxy for port {HELD_PORT}: it answers the handshake itself, reads the TLS \
         ClientHello, and {} s later resets the connection (its pool member is down).\n  \
         The server answers on port {OPEN_PORT}; its initial TTL is {SERVER_INITIAL_TTL}.\n\
         flagtrace is attached to the client's {} (pins in {}).\n",
        client.netns.name(),
        gateway.netns.name(),
        server.netns.name(),
        client.addr(Family::V4, 0).ip(),
        gateway.client_side.ip(Family::V4),
        gateway.server_side.ip(Family::V4),
        server.addr(Family::V4, 0).ip(),
        RESET_DELAY.as_secs(),
        client.iface,
        story.pin_root().display(),
    );
    checkpoint()?;

    // What the support engineer saw, with the same tool.
    println!("$ openssl s_client -connect {held} -servername {SERVER_NAME}");
    let proxy = story.proxy_next();
    let openssl = run(client.netns.command("timeout").args([
        "20",
        "openssl",
        "s_client",
        "-connect",
        &held.to_string(),
        "-servername",
        SERVER_NAME,
    ]));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&openssl.stdout),
        String::from_utf8_lossy(&openssl.stderr)
    );
    for line in said
        .lines()
        .filter(|line| line.starts_with("CONNECTED") || line.contains("errno"))
    {
        println!("{line}");
    }
    proxy
        .join()
        .map_err(|_| anyhow!("the gateway's proxy panicked"))?
        .context("the gateway's proxy")?;
    println!();
    checkpoint()?;

    let traffic = story.run_traffic();
    let server_ip = server.addr(Family::V4, 0).ip();
    println!(
        "Traffic:\n  {} requests to {server_ip}:{OPEN_PORT}: answered\n  \
         {CONNECTIONS} TLS connections to {held}: connected, sent the ClientHello, reset after \
         {} (connection reset by peer, errno 104)\n",
        traffic.answered.len(),
        traffic
            .reset
            .iter()
            .map(|(_, after)| format!("{:.1} s", after.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    checkpoint()?;

    let pin_root = story.pin_root().to_str().context("pin root is not UTF-8")?;
    let flagtrace_output = |args: &[&str]| -> Result<String> {
        let output = run(Command::new(&flagtrace)
            .args(["--pin-root", pin_root])
            .args(args));
        if !output.status.success() {
            bail!(
                "flagtrace {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        // The registry warning and similar notes go to stderr: show them too.
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    for args in [&["resets"][..], &["flows"][..]] {
        println!("$ flagtrace {}", args.join(" "));
        println!("{}", flagtrace_output(args)?);
    }
    let verdicts = flagtrace_output(&["resets", "--json"])?;
    check_story(&verdicts).with_context(|| format!("flagtrace resets --json:\n{verdicts}"))?;
    drop(story);
    println!("Removed the namespaces, the pins and the processes of the demo.");
    Ok(())
}

/// The story holds when every connection to the held port (the demo's and openssl's) was
/// reset by a middlebox that had answered its handshake, a proxy, after the request.
fn check_story(resets_json: &str) -> Result<()> {
    let mut held = 0;
    for line in resets_json.lines().filter(|line| !line.trim().is_empty()) {
        let flow: Value = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
        let server = flow["server"].as_str().unwrap_or_default();
        if server.ends_with(&format!(":{HELD_PORT}")) {
            held += 1;
            let told = [
                ("reset_by", "middlebox"),
                ("middlebox_role", "proxy"),
                ("reset_phase", "request"),
            ];
            for (key, expected) in told {
                if flow[key] != expected {
                    bail!(
                        "{server}: {key} should be {expected}, flagtrace says {}",
                        flow[key]
                    );
                }
            }
        }
    }
    // The story's connections, and openssl's.
    if held != CONNECTIONS + 1 {
        bail!(
            "expected {} resets of port {HELD_PORT}, flagtrace lists {held}",
            CONNECTIONS + 1
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_story_needs_every_held_connection_reset_by_a_proxy_after_the_request() {
        let flow = |port: u16, by: &str, role: &str, phase: &str| {
            format!(
                r#"{{"server":"10.0.2.1:{port}","reset_by":"{by}","middlebox_role":"{role}","reset_phase":"{phase}"}}"#
            )
        };
        let proxied = || flow(443, "middlebox", "proxy", "request");
        let told = [0, 1, 2, 3].map(|_| proxied()).join("\n");
        check_story(&told).unwrap();
        let with_endpoint = format!("{told}\n{}", flow(9, "endpoint", "", "syn"));
        check_story(&with_endpoint).unwrap();
        let on_path = format!(
            "{}\n{}",
            [0, 1, 2].map(|_| proxied()).join("\n"),
            flow(443, "middlebox", "on_path", "request")
        );
        assert!(check_story(&on_path).is_err());
        let early = format!(
            "{}\n{}",
            [0, 1, 2].map(|_| proxied()).join("\n"),
            flow(443, "middlebox", "proxy", "handshake")
        );
        assert!(check_story(&early).is_err());
        assert!(check_story(&proxied()).is_err(), "too few");
        assert!(check_story("").is_err());
    }
}
