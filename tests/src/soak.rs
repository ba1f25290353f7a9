//! `cargo xtask soak`: how the user side holds at an appliance's scale. The kernel programs,
//! loaded but not attached, account a crafted workload through BPF_PROG_TEST_RUN into tables
//! pinned as `attach` pins them in a namespace of the soak's own; then the `flagtrace` binary
//! reads them as an operator would (`resets`, `flows`, `stats`), `attach --metrics` takes the
//! pinned tables over on a veth of that namespace and its endpoint is scraped, and the same
//! packets, written to a capture file, go through `flagtrace pcap`; so does a bulk capture of
//! the same flows with data segments (1 GB by default), against tshark's conversation table.
//! Each command runs several times; the table shows medians, the most memory a run held, and,
//! when a reference command is given (an older flagtrace, tshark), the ratio to it in the same
//! run.
//!
//! The workload is the worst case for a verdict that compares a flow with the others: every
//! flow goes to one server, nine in ten are answered (SYN, SYN/ACK with the server's TTL 127),
//! and one in ten is refused by a box at TTL 64 (SYN, RST), whose verdict needs the server's
//! other connections as its baseline.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    net::SocketAddr,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use etherparse::PacketBuilder;
use tracer_common::{Hook, DEFAULT_MAX_FLOWS, DEFAULT_MAX_RESETS};

use crate::{
    lab::{flagtrace_bin, mac_of, Daemon, Netns, FT_LAB_READY},
    scrape::{abuse, attach_with_metrics, http_get},
    tracer::{LoadedTracer, PinDir},
    unique_name, TempFile,
};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The gateway: an F5 Networks OUI.
const GATEWAY_MAC: [u8; 6] = [0x00, 0x01, 0xd7, 0x3c, 0x5e, 0x01];
const SERVER: [u8; 4] = [10, 0, 2, 1];
/// The capture's first packet: 2023-11-14T22:13:20Z.
const CAPTURE_START_S: u32 = 1_700_000_000;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Table sizes (flows) to measure at.
    pub flows: Vec<u32>,
    /// Runs of each command; the median is shown.
    pub runs: usize,
    /// An older `flagtrace` to run the same commands with, for a ratio in the same run.
    pub reference: Option<PathBuf>,
    /// Time `tshark -q -z conv,tcp` on the capture too (the conversation table operators use).
    pub tshark: bool,
    /// Size of the bulk capture (the largest table size's flows with data segments); 0: none.
    pub bulk_bytes: u64,
    /// The lab tool, which floods the attachment with RSTs while `watch` runs; `None`: no
    /// watch probe.
    pub ft_lab: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flows: vec![100_000, 250_000],
            runs: 5,
            reference: None,
            tshark: true,
            bulk_bytes: 1_000_000_000,
            ft_lab: None,
        }
    }
}

/// One command's median wall time and the most memory a run of it held, and its reference's
/// median.
#[derive(Clone, Debug)]
pub struct Row {
    pub flows: u32,
    pub command: String,
    pub median: Duration,
    /// Bytes; `None` where the time is not a process's (a scrape).
    pub max_rss: Option<u64>,
    pub reference: Option<(String, Duration)>,
    /// What the figures mean, where they are not a command's wall time.
    pub note: Option<String>,
}

/// Measures every table size in turn; pins, namespaces and files are removed as each size is
/// done. The bulk capture comes with the largest size.
pub fn run(flagtrace: &Path, options: &Options) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &flows in &options.flows {
        rows.extend(measure_size(flagtrace, flows, options)?);
    }
    if let Some(&flows) = options
        .flows
        .iter()
        .max()
        .filter(|_| options.bulk_bytes > 0)
    {
        rows.push(measure_bulk(flagtrace, flows, options)?);
    }
    Ok(rows)
}

fn measure_size(flagtrace: &Path, flows: u32, options: &Options) -> anyhow::Result<Vec<Row>> {
    let pins = PinDir::named("flagtrace-soak")?;
    let root = pins.path().to_owned();
    // The tables are pinned where `attach` on the namespace's veth keeps them, so that it takes
    // them over for the scrape; nothing else runs there.
    let netns = Netns::create(unique_name("ftsoak"));
    netns.ip(&[
        "link", "add", SOAK_IFACE, "type", "veth", "peer", "name", "sk1",
    ]);
    netns.ip(&["link", "set", SOAK_IFACE, "up"]);
    netns.ip(&["link", "set", "sk1", "up"]);
    let tables = root.join(netns.name()).join(SOAK_IFACE);
    // Room to spare, so that the LRU table evicts nothing.
    let capacity = (2 * flows).max(DEFAULT_MAX_FLOWS);
    let tracer = LoadedTracer::load_into(pins, &tables, capacity, DEFAULT_MAX_RESETS)?;
    let capture_file = TempFile::new("flagtrace-soak", "pcap");
    write_workload(flows, capture_file.path(), 0, |hook, frame| {
        tracer.run(hook, frame).map(drop)
    })?;

    let root = root.to_string_lossy().into_owned();
    let capture = capture_file.as_str().to_owned();
    let live = |command: &str| {
        let mut args = vec!["--pin-root", root.as_str()];
        args.extend(command.split_whitespace());
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let offline = |command: &str| {
        let mut args = vec!["pcap", capture.as_str()];
        args.extend(command.split_whitespace());
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let commands = [
        ("resets --json", live("resets --json")),
        ("flows --json", live("flows --json")),
        ("stats --json", live("stats --json")),
        ("pcap --json", offline("--json")),
        ("pcap --flows --json", offline("--flows --json")),
    ];
    let mut rows = Vec::new();
    for (name, args) in commands {
        let tshark = (options.tshark && name == "pcap --flows --json").then_some(capture.as_str());
        rows.push(measure(flagtrace, flows, name, &args, options, tshark)?);
    }
    let (loader, metrics) = attach_with_metrics(&netns, Path::new(&root), SOAK_IFACE);
    rows.push(measure_scrape(metrics, flows, options.runs)?);
    rows.extend(measure_abused_scrapes(metrics, flows)?);
    if let Some(ft_lab) = &options.ft_lab {
        rows.push(measure_watch(&netns, Path::new(&root), ft_lab, flows)?);
    }
    let status = loader.terminate();
    ensure!(status.success(), "attach --metrics ended with {status}");
    drop(tracer);
    Ok(rows)
}

/// The veth end in the soak's namespace that `attach` takes the pinned tables over on.
const SOAK_IFACE: &str = "sk0";

/// `command`'s median time and memory, with its reference's median: the older flagtrace, or
/// tshark's conversation table of the capture `tshark`.
fn measure(
    flagtrace: &Path,
    flows: u32,
    name: &str,
    args: &[String],
    options: &Options,
    tshark: Option<&str>,
) -> anyhow::Result<Row> {
    let (median, max_rss) = median_run(flagtrace, args, options.runs)?;
    let reference = match (&options.reference, tshark) {
        (Some(reference), _) => Some((
            "older flagtrace".to_owned(),
            median_run(reference, args, options.runs)?.0,
        )),
        (None, Some(capture)) => Some((
            "tshark -z conv,tcp".to_owned(),
            median_run(
                Path::new("tshark"),
                &["-q", "-z", "conv,tcp", "-r", capture].map(str::to_owned),
                options.runs,
            )?
            .0,
        )),
        (None, None) => None,
    };
    Ok(Row {
        flows,
        command: name.to_owned(),
        median,
        max_rss: Some(max_rss),
        reference,
        note: None,
    })
}

/// The median time of a scrape of `attach --metrics` on the pinned tables (each after the
/// endpoint's one-second cache has expired).
fn measure_scrape(addr: SocketAddr, flows: u32, runs: usize) -> anyhow::Result<Row> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        thread::sleep(Duration::from_millis(1100));
        let start = Instant::now();
        let response = http_get(addr, "/metrics").context("scraping /metrics")?;
        times.push(start.elapsed());
        ensure!(
            response.status == 200 && response.body.contains("flagtrace_reset_flows"),
            "a scrape failed: {} {}",
            response.status,
            response.body.lines().next().unwrap_or_default()
        );
    }
    times.sort();
    Ok(Row {
        flows,
        command: "scrape /metrics".to_owned(),
        median: times[times.len() / 2],
        max_rss: None,
        reference: None,
        note: None,
    })
}

/// A scrape of the 250k-flow tables by another client while the endpoint is abused
/// ([`abuse`]): after 1,000 idle connections, 2,000 pipelined requests, a 1 MiB head.
fn measure_abused_scrapes(addr: SocketAddr, flows: u32) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut failure = None;
    abuse(addr, |after| {
        // The endpoint's cache would answer at once: a scrape that reads the maps.
        thread::sleep(Duration::from_millis(1100));
        let start = Instant::now();
        match http_get(addr, "/metrics") {
            Ok(response) if response.status == 200 => rows.push(Row {
                flows,
                command: format!("scrape {after}"),
                median: start.elapsed(),
                max_rss: None,
                reference: None,
                note: None,
            }),
            other => failure = Some(format!("scrape {after}: {other:?}")),
        }
    });
    match failure {
        Some(failure) => anyhow::bail!(failure),
        None => Ok(rows),
    }
}

/// RSTs the watch probe floods the attachment with, each a reset flow of its own, within
/// [`WATCH_FLOOD_SECONDS`].
const WATCH_FLOOD_RSTS: u32 = 1_000_000;
const WATCH_FLOOD_SECONDS: u64 = 10;

/// `watch --json` on the attachment while ft-lab floods it with RSTs from made-up sources: the
/// CPU time `watch` spends from its ready line until 2 s after the flood (its verdicts come a
/// second after their RSTs), against the events it printed. Its start, which reads the whole
/// table once, is not counted.
fn measure_watch(netns: &Netns, root: &Path, ft_lab: &Path, flows: u32) -> anyhow::Result<Row> {
    let root = root.to_str().context("UTF-8 pin root")?;
    let watch = Daemon::start(
        Command::new(flagtrace_bin()).args(["--pin-root", root, "watch", "--json"]),
        "flagtrace: watching",
    );
    let cpu_before = cpu_time(watch.pid())?;
    let started = Instant::now();
    let flood = Daemon::start(
        netns.command(ft_lab).args([
            "syn-flood",
            "--rst",
            "--iface",
            "sk1",
            "--server",
            "10.99.0.1",
            "--ports",
            "443",
            "--to-mac",
            &mac_of(netns, SOAK_IFACE),
            "--count",
            &WATCH_FLOOD_RSTS.to_string(),
            "--timeout",
            &WATCH_FLOOD_SECONDS.to_string(),
        ]),
        FT_LAB_READY,
    )
    .wait_success();
    thread::sleep(Duration::from_secs(2));
    let cpu = cpu_time(watch.pid())? - cpu_before;
    let wall = started.elapsed();
    let log = watch.log();
    let count = |kind: &str| {
        let tag = format!("\"event\":\"{kind}\"");
        log.lines()
            .filter(|line| line.starts_with("stdout: ") && line.contains(&tag))
            .count()
    };
    let (rsts, verdicts) = (count("rst"), count("verdict"));
    watch.terminate();
    let sent = flood
        .lines()
        .find_map(|line| line.strip_prefix("stdout: ft-lab: sent "))
        .unwrap_or("?")
        .to_owned();
    let events = (rsts + verdicts).max(1) as f64;
    Ok(Row {
        flows,
        command: "watch, RST flood".to_owned(),
        median: cpu,
        max_rss: None,
        reference: None,
        note: Some(format!(
            "CPU time of watch over {:.1} s: {:.0} % of a CPU; flood: {sent}; printed {rsts} \
             RSTs and {verdicts} verdicts, {:.2} ms of CPU per event",
            wall.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
            1000.0 * cpu.as_secs_f64() / events
        )),
    })
}

/// User and system CPU time of process `pid` so far (/proc/PID/stat).
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("a stat line")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(Duration::from_secs_f64(ticks as f64 / per_second))
}

/// `pcap --flows --json` on a capture of `flows` flows, each answered flow with data segments
/// up to about `options.bulk_bytes` in all, against tshark's conversation table of it.
fn measure_bulk(flagtrace: &Path, flows: u32, options: &Options) -> anyhow::Result<Row> {
    let capture_file = TempFile::new("flagtrace-soak-bulk", "pcap");
    // A workload flow's two frames are about 130 bytes of capture; a data segment 1,470.
    let answered = u64::from(flows) * 9 / 10;
    let segments = options
        .bulk_bytes
        .saturating_sub(130 * u64::from(flows))
        .div_ceil(answered.max(1) * DATA_SEGMENT_CAPTURED) as u32;
    write_workload(flows, capture_file.path(), segments, |_, _| Ok(()))?;
    let size = std::fs::metadata(capture_file.path())?.len();
    let args = ["pcap", capture_file.as_str(), "--flows", "--json"].map(str::to_owned);
    let name = format!("pcap --flows, {} MB", size / 1_000_000);
    let tshark = options.tshark.then_some(capture_file.as_str());
    measure(flagtrace, flows, &name, &args, options, tshark)
}

/// The capture bytes of a data segment: its record header, Ethernet, IPv4, TCP and payload.
const DATA_SEGMENT_CAPTURED: u64 = 16 + 14 + 20 + 20 + DATA_PAYLOAD.len() as u64;
const DATA_PAYLOAD: &[u8; 1400] = &[0x5a; 1400];

/// Writes every flow's packets to `capture` as classic pcap (microseconds), 10 µs apart, as a
/// capture on the client's interface would hold them, and hands each handshake packet to
/// `account` with the hook that would see it. An answered flow then carries `segments` data
/// segments from the server (only in the capture).
fn write_workload(
    flows: u32,
    capture: &Path,
    segments: u32,
    mut account: impl FnMut(Hook, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let file = File::create(capture).with_context(|| format!("creating {}", capture.display()))?;
    let mut out = BufWriter::new(file);
    // Classic pcap, microsecond stamps, Ethernet.
    for word in [0xa1b2_c3d4_u32, 0x0004_0002, 0, 0, 65_535, 1] {
        out.write_all(&word.to_le_bytes())?;
    }
    let mut micros = 0u64;
    let mut record = |out: &mut BufWriter<File>, frame: &[u8]| -> std::io::Result<()> {
        let (seconds, micro) = (micros / 1_000_000, micros % 1_000_000);
        for word in [
            CAPTURE_START_S + seconds as u32,
            micro as u32,
            frame.len() as u32,
            frame.len() as u32,
        ] {
            out.write_all(&word.to_le_bytes())?;
        }
        micros += 10;
        out.write_all(frame)
    };
    let mut frame = Vec::new();
    for i in 0..flows {
        let client = [10, 1, (i >> 8) as u8, i as u8];
        let port = 1024 + (i >> 16) as u16;
        let refused = i % 10 == 0;
        let server_port = if refused { 443 } else { 80 };
        let syn = PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC)
            .ipv4(client, SERVER, 64)
            .tcp(port, server_port, 1000, 64_240)
            .syn();
        let answer = PacketBuilder::ethernet2(GATEWAY_MAC, CLIENT_MAC);
        let answer = if refused {
            answer
                .ipv4(SERVER, client, 64)
                .tcp(server_port, port, 0, 0)
                .rst()
                .ack(1001)
        } else {
            answer
                .ipv4(SERVER, client, 127)
                .tcp(server_port, port, 5000, 64_240)
                .syn()
                .ack(1001)
        };
        for (hook, builder) in [(Hook::Egress, syn), (Hook::Ingress, answer)] {
            frame.clear();
            builder.write(&mut frame, &[])?;
            account(hook, &frame)?;
            record(&mut out, &frame)?;
        }
        for segment in (0..segments).filter(|_| !refused) {
            frame.clear();
            PacketBuilder::ethernet2(GATEWAY_MAC, CLIENT_MAC)
                .ipv4(SERVER, client, 127)
                .tcp(server_port, port, 5001 + segment * 1400, 64_240)
                .ack(1001)
                .write(&mut frame, DATA_PAYLOAD)?;
            record(&mut out, &frame)?;
        }
    }
    out.flush()
        .with_context(|| format!("writing {}", capture.display()))
}

/// The median wall time of `runs` runs of `program args`, its output thrown away, and the most
/// memory (resident bytes) one of them held; each run must succeed.
fn median_run(program: &Path, args: &[String], runs: usize) -> anyhow::Result<(Duration, u64)> {
    let mut times = Vec::with_capacity(runs);
    let mut max_rss = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("running {}", program.display()))?;
        let (status, rss) = wait_with_rss(child.id())?;
        times.push(start.elapsed());
        max_rss = max_rss.max(rss);
        ensure!(
            status.success(),
            "{} {} failed: {status}",
            program.display(),
            args.join(" ")
        );
    }
    times.sort();
    Ok((times[times.len() / 2], max_rss))
}

/// Waits for the child `pid`: its exit status and the most memory it held (wait4's rusage).
fn wait_with_rss(pid: u32) -> anyhow::Result<(ExitStatus, u64)> {
    let mut status = 0;
    // SAFETY: wait4 fills the status and the rusage struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: our own child, not yet waited for; valid pointers.
    let waited = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    ensure!(
        waited == pid as libc::pid_t,
        "waiting for process {pid}: {}",
        std::io::Error::last_os_error()
    );
    Ok((ExitStatus::from_raw(status), usage.ru_maxrss as u64 * 1024))
}

/// The rows as a table: table size, command, median, the most memory a run held (and per flow),
/// and the reference with the ratio.
pub fn table(rows: &[Row]) -> String {
    let mut text = format!(
        "{:>8}  {:<38}  {:>9}  {:>8}  {:>9}  {:<20}  {:>9}  {:>7}\n",
        "flows", "command", "median", "max RSS", "per flow", "reference", "median", "ratio"
    );
    for row in rows {
        let (name, reference, ratio) = match &row.reference {
            Some((name, time)) => (
                name.as_str(),
                format!("{:.3} s", time.as_secs_f64()),
                format!("{:.3}", row.median.as_secs_f64() / time.as_secs_f64()),
            ),
            None => ("-", "-".to_owned(), "-".to_owned()),
        };
        let (rss, per_flow) = match row.max_rss {
            Some(bytes) => (
                format!("{} MB", bytes / 1_000_000),
                format!("{} B", bytes / u64::from(row.flows.max(1))),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        text += &format!(
            "{:>8}  {:<38}  {:>7.3} s  {:>8}  {:>9}  {:<20}  {:>9}  {:>7}\n",
            row.flows,
            row.command,
            row.median.as_secs_f64(),
            rss,
            per_flow,
            name,
            reference,
            ratio
        );
        if let Some(note) = &row.note {
            text += &format!("{:>8}  ({note})\n", "");
        }
    }
    text
}
