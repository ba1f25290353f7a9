//! `cargo xtask soak`: how the user side holds at an appliance's scale. The kernel programs,
//! loaded but not attached, account a crafted workload through BPF_PROG_TEST_RUN into tables
//! pinned as `attach` pins them; then the `flagtrace` binary reads them as an operator would
//! (`resets`, `flows`, `stats`), and the same packets, written to a capture file, go through
//! `flagtrace pcap`. Each command runs several times; the table shows medians, and, when a
//! reference command is given (an older flagtrace, tshark), the ratio to it in the same run.
//!
//! The workload is the worst case for a verdict that compares a flow with the others: every
//! flow goes to one server, nine in ten are answered (SYN, SYN/ACK with the server's TTL 127),
//! and one in ten is refused by a box at TTL 64 (SYN, RST), whose verdict needs the server's
//! other connections as its baseline.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use etherparse::PacketBuilder;
use tracer_common::{Hook, DEFAULT_MAX_FLOWS, DEFAULT_MAX_RESETS};

use crate::{
    tracer::{LoadedTracer, PinDir},
    TempFile,
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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flows: vec![100_000, 250_000],
            runs: 5,
            reference: None,
            tshark: true,
        }
    }
}

/// One command's median wall time, and its reference's.
#[derive(Clone, Debug)]
pub struct Row {
    pub flows: u32,
    pub command: String,
    pub median: Duration,
    pub reference: Option<(String, Duration)>,
}

/// Measures every table size in turn; pins and files are removed as each size is done.
pub fn run(flagtrace: &Path, options: &Options) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &flows in &options.flows {
        rows.extend(measure_size(flagtrace, flows, options)?);
    }
    Ok(rows)
}

fn measure_size(flagtrace: &Path, flows: u32, options: &Options) -> anyhow::Result<Vec<Row>> {
    let pins = PinDir::named("flagtrace-soak")?;
    let root = pins.path().to_owned();
    // `lo` only names the directory, as an attachment to the loopback interface would: nothing
    // is attached anywhere.
    let tables = root.join("host").join("lo");
    // Room to spare, so that the LRU table evicts nothing.
    let capacity = (2 * flows).max(DEFAULT_MAX_FLOWS);
    let tracer = LoadedTracer::load_into(pins, &tables, capacity, DEFAULT_MAX_RESETS)?;
    let capture_file = TempFile::new("flagtrace-soak", "pcap");
    account_workload(&tracer, flows, capture_file.path())?;

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
        let median = median_time(flagtrace, &args, options.runs)?;
        let reference = match &options.reference {
            Some(reference) => Some((
                "older flagtrace".to_owned(),
                median_time(reference, &args, options.runs)?,
            )),
            None if options.tshark && name == "pcap --flows --json" => Some((
                "tshark -z conv,tcp".to_owned(),
                median_time(
                    Path::new("tshark"),
                    &["-q", "-z", "conv,tcp", "-r", capture.as_str()].map(str::to_owned),
                    options.runs,
                )?,
            )),
            None => None,
        };
        rows.push(Row {
            flows,
            command: name.to_owned(),
            median,
            reference,
        });
    }
    drop(tracer);
    Ok(rows)
}

/// Runs every flow's packets through the programs, and writes them to `capture` as classic
/// pcap (microseconds), 10 µs apart, as a capture on the client's interface would hold them.
fn account_workload(tracer: &LoadedTracer, flows: u32, capture: &Path) -> anyhow::Result<()> {
    let file = File::create(capture).with_context(|| format!("creating {}", capture.display()))?;
    let mut out = BufWriter::new(file);
    // Classic pcap, microsecond stamps, Ethernet.
    for word in [0xa1b2_c3d4_u32, 0x0004_0002, 0, 0, 65_535, 1] {
        out.write_all(&word.to_le_bytes())?;
    }
    let mut micros = 0u64;
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
            let mut frame = Vec::new();
            builder.write(&mut frame, &[])?;
            tracer.run(hook, &frame)?;
            let (seconds, micro) = (micros / 1_000_000, micros % 1_000_000);
            for word in [
                CAPTURE_START_S + seconds as u32,
                micro as u32,
                frame.len() as u32,
                frame.len() as u32,
            ] {
                out.write_all(&word.to_le_bytes())?;
            }
            out.write_all(&frame)?;
            micros += 10;
        }
    }
    out.flush()
        .with_context(|| format!("writing {}", capture.display()))
}

/// The median wall time of `runs` runs of `program args`, its output thrown away; each run
/// must succeed.
fn median_time(program: &Path, args: &[String], runs: usize) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let status = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("running {}", program.display()))?;
        times.push(start.elapsed());
        ensure!(
            status.success(),
            "{} {} failed: {status}",
            program.display(),
            args.join(" ")
        );
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// The rows as a table: table size, command, median, and the reference with the ratio.
pub fn table(rows: &[Row]) -> String {
    let mut text = format!(
        "{:>8}  {:<20}  {:>9}  {:<20}  {:>9}  {:>7}\n",
        "flows", "command", "median", "reference", "median", "ratio"
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
        text += &format!(
            "{:>8}  {:<20}  {:>7.3} s  {:<20}  {:>9}  {:>7}\n",
            row.flows,
            row.command,
            row.median.as_secs_f64(),
            name,
            reference,
            ratio
        );
    }
    text
}
