//! `cargo xtask bench` (tests/benches/kernel.rs): what flagtrace's XDP program costs per packet,
//! next to reference programs built from the same parser (tracer-ebpf/src/bin/reference.rs):
//! `empty` (the cost of running any program), `parse` (parsing alone) and `lookup` (parsing and
//! one LRU-hash lookup-or-insert with an atomic add: the floor for per-flow counting).
//!
//! Every case is one program on one packet, run with BPF_PROG_TEST_RUN `repeat` times per call,
//! for several rounds; rounds go round-robin over the cases so that load from other processes
//! spreads over all of them, and the median round is reported. A repeated packet hits the same
//! flow entry, so the cases measure the hit path; [`Admission`] measures new flows separately.
//!
//! The bench checks that it measured what it says: every run must return XDP_PASS, and the flow
//! entry of every case must have counted exactly the runs of that case.

use std::{
    fmt::Write as _,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{bail, ensure, Context as _};
use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use etherparse::PacketBuilder;
use serde_json::{json, Value};
use tracer_common::{
    FlowKey, FlowValue, GlobalCounters, Hook, ACTIVITY_MAP, COUNTERS_MAP, FAMILY_IPV4, FLOWS_MAP,
    TCP_FIN, TCP_RST, TCP_SYN, XDP_PROGRAM,
};
use tracer_user::sys::loader::TracerLoader;

use crate::{
    oracle::{self, ipv4_words, Verdict},
    tracer::{test_run_ifindex, PinDir, XDP_PASS},
};

/// The reference programs' flow table (same key and value sizes as flagtrace's).
const REFERENCE_FLOWS_MAP: &str = "REFERENCE_FLOWS";
/// Highest address index the fill and the admission flows can encode (see [`v4_flow`]).
const MAX_SYNTHETIC_FLOWS: u32 = 1 << 20;

/// How much to measure. [`Options::default`] is the full bench; the smoke test runs a tiny one.
#[derive(Clone, Debug)]
pub struct Options {
    /// Program runs per BPF_PROG_TEST_RUN call.
    pub repeat: u32,
    /// Calls per case; the median is reported.
    pub rounds: usize,
    /// Capacity of the flow tables, and the keys inserted before the full-table cases (an LRU
    /// hash evicts in batches, so it keeps a few hundred fewer).
    pub fill: u32,
    /// New flows offered to each full table per round, to measure admission.
    pub admission_flows: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            repeat: 1_000_000,
            rounds: 9,
            fill: 1_000_000,
            admission_flows: 100_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Empty,
    Parse,
    Lookup,
    Flagtrace,
}

impl Program {
    pub const ALL: [Program; 4] = [
        Program::Empty,
        Program::Parse,
        Program::Lookup,
        Program::Flagtrace,
    ];
    /// The programs that keep a flow table: they are measured at each fill.
    pub const WITH_FLOW_TABLE: [Program; 2] = [Program::Lookup, Program::Flagtrace];

    pub fn name(self) -> &'static str {
        match self {
            Program::Empty => "empty",
            Program::Parse => "parse",
            Program::Lookup => "lookup",
            Program::Flagtrace => "flagtrace",
        }
    }

    /// The program's function name in its object.
    fn symbol(self) -> &'static str {
        match self {
            Program::Empty => "reference_empty",
            Program::Parse => "reference_parse",
            Program::Lookup => "reference_lookup",
            Program::Flagtrace => XDP_PROGRAM,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    TcpSynV4,
    /// A plain segment: ACK, no SYN, FIN or RST. Most of the traffic on a busy link.
    TcpAckV4,
    TcpRstV4,
    TcpSynV6,
    UdpV4,
    TcpSynVlanV4,
}

impl PacketKind {
    pub const ALL: [PacketKind; 6] = [
        PacketKind::TcpSynV4,
        PacketKind::TcpAckV4,
        PacketKind::TcpRstV4,
        PacketKind::TcpSynV6,
        PacketKind::UdpV4,
        PacketKind::TcpSynVlanV4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PacketKind::TcpSynV4 => "tcp_syn_v4",
            PacketKind::TcpAckV4 => "tcp_ack_v4",
            PacketKind::TcpRstV4 => "tcp_rst_v4",
            PacketKind::TcpSynV6 => "tcp_syn_v6",
            PacketKind::UdpV4 => "udp_v4",
            PacketKind::TcpSynVlanV4 => "tcp_syn_vlan_v4",
        }
    }

    /// The frame. Each kind is a flow of its own (its own client port), so that the RST's reset
    /// gate does not open for the ACK's flow.
    pub fn frame(self) -> Vec<u8> {
        const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
        const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
        const CLIENT_V4: [u8; 4] = [10, 0, 0, 1];
        const SERVER_V4: [u8; 4] = [10, 0, 0, 2];
        const CLIENT_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        const SERVER_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        const SERVER_PORT: u16 = 443;
        const TTL: u8 = 64;
        const WINDOW: u16 = 64240;
        let client_port = 40000 + self as u16;
        let eth = || PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC);
        let v4 = || eth().ipv4(CLIENT_V4, SERVER_V4, TTL);
        let tcp_v4 = || v4().tcp(client_port, SERVER_PORT, 1000, WINDOW);
        let mut frame = Vec::new();
        let written = match self {
            PacketKind::TcpSynV4 => tcp_v4().syn().write(&mut frame, &[]),
            PacketKind::TcpAckV4 => tcp_v4().ack(2000).write(&mut frame, &[]),
            PacketKind::TcpRstV4 => tcp_v4().rst().ack(2000).write(&mut frame, &[]),
            PacketKind::TcpSynV6 => eth()
                .ipv6(CLIENT_V6, SERVER_V6, TTL)
                .tcp(client_port, SERVER_PORT, 1000, WINDOW)
                .syn()
                .write(&mut frame, &[]),
            PacketKind::UdpV4 => v4().udp(client_port, 53).write(&mut frame, &[0; 8]),
            PacketKind::TcpSynVlanV4 => eth()
                .single_vlan(100.try_into().expect("a valid VLAN id"))
                .ipv4(CLIENT_V4, SERVER_V4, TTL)
                .tcp(client_port, SERVER_PORT, 1000, WINDOW)
                .syn()
                .write(&mut frame, &[]),
        };
        written.expect("etherparse writes into a Vec");
        frame
    }
}

/// One program on one packet at one fill.
#[derive(Clone, Debug)]
pub struct Case {
    pub program: Program,
    pub packet: PacketKind,
    /// Flow-table entries present before the run.
    pub fill: u32,
    /// Nanoseconds per packet, one per round.
    pub rounds: Vec<f64>,
}

impl Case {
    pub fn ns_per_packet(&self) -> f64 {
        median(&self.rounds)
    }
}

/// New flows into a full table: the program's own cost per new flow (BPF_PROG_TEST_RUN's
/// per-call time of one run on a SYN of a flow never seen, minus the same for `empty`), and the
/// rate one core could admit at that cost.
#[derive(Clone, Debug)]
pub struct Admission {
    pub program: Program,
    /// Nanoseconds per new flow, one per round.
    pub rounds: Vec<f64>,
}

impl Admission {
    pub fn ns_per_flow(&self) -> f64 {
        median(&self.rounds)
    }

    pub fn flows_per_second(&self) -> f64 {
        1e9 / self.ns_per_flow()
    }
}

/// The locked memory of flagtrace's flow table, as the kernel accounts it (fdinfo `memlock`),
/// and of the activity table, which `attach` sizes with it.
#[derive(Clone, Debug)]
pub struct FlowTableMemory {
    pub max_entries: u32,
    pub memlock_bytes: u64,
    pub activity_memlock_bytes: u64,
    /// Possible CPUs, the count the kernel sizes per-CPU memory by.
    pub cpus: usize,
    /// The same table as a per-CPU LRU hash (`BPF_MAP_TYPE_LRU_PERCPU_HASH`), for comparison:
    /// per-CPU values are what a table without atomic adds would cost.
    pub per_cpu_memlock_bytes: u64,
}

impl FlowTableMemory {
    /// Both tables: what each flow of `--max-flows` costs.
    pub fn bytes_per_flow(&self) -> f64 {
        (self.memlock_bytes + self.activity_memlock_bytes) as f64 / f64::from(self.max_entries)
    }

    pub fn per_cpu_bytes_per_flow(&self) -> f64 {
        self.per_cpu_memlock_bytes as f64 / f64::from(self.max_entries)
    }
}

/// A program's size after the verifier, and after the JIT.
#[derive(Clone, Debug)]
pub struct ProgramSize {
    pub program: Program,
    pub xlated_insns: u32,
    pub jited_bytes: u32,
}

/// One of the targets, as a ratio of two medians of one run.
#[derive(Clone, Debug)]
pub struct Ratio {
    pub what: String,
    pub value: f64,
    pub target: f64,
}

impl Ratio {
    pub fn met(&self) -> bool {
        self.value <= self.target
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub options: Options,
    pub cases: Vec<Case>,
    /// Entries actually present after filling each table with `options.fill` keys (an LRU hash
    /// may evict before it is exactly full).
    pub entries_after_fill: Vec<(Program, u32)>,
    pub admission: Vec<Admission>,
    pub flow_table: FlowTableMemory,
    pub sizes: Vec<ProgramSize>,
    pub machine: Machine,
}

/// Where the figures were measured.
#[derive(Clone, Debug)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// The kernel release.
    pub kernel: String,
}

impl Machine {
    fn this_one() -> anyhow::Result<Self> {
        let read =
            |path: &str| std::fs::read_to_string(path).with_context(|| format!("reading {path}"));
        let cpuinfo = read("/proc/cpuinfo")?;
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or("unknown", |(_, model)| model.trim())
            .to_owned();
        Ok(Machine {
            cpu,
            kernel: read("/proc/sys/kernel/osrelease")?.trim().to_owned(),
        })
    }
}

/// Flag packets may cost at most this much more than `lookup` at the same fill.
pub const FLAG_TARGET: f64 = 1.25;
/// `tcp_ack_v4` may cost at most this much more than `parse`.
pub const ACK_TARGET: f64 = 1.5;
/// `udp_v4` may cost at most this much more than `parse`.
pub const UDP_TARGET: f64 = 1.2;
/// Locked bytes per flow at the table's capacity.
pub const MEMORY_TARGET: f64 = 256.0;

const FLAG_PACKETS: [PacketKind; 4] = [
    PacketKind::TcpSynV4,
    PacketKind::TcpRstV4,
    PacketKind::TcpSynV6,
    PacketKind::TcpSynVlanV4,
];

impl Report {
    pub fn case(&self, program: Program, packet: PacketKind, fill: u32) -> Option<&Case> {
        self.cases
            .iter()
            .find(|c| c.program == program && c.packet == packet && c.fill == fill)
    }

    /// The fills the table programs were measured at.
    pub fn fills(&self) -> [u32; 2] {
        [0, self.options.fill]
    }

    /// Every target, at every fill.
    pub fn ratios(&self) -> Vec<Ratio> {
        let ns = |program, packet, fill| self.case(program, packet, fill).map(Case::ns_per_packet);
        let mut ratios = Vec::new();
        let mut push = |what: String, over: Option<f64>, under: Option<f64>, target| {
            if let (Some(over), Some(under)) = (over, under) {
                ratios.push(Ratio {
                    what,
                    value: over / under,
                    target,
                });
            }
        };
        for fill in self.fills() {
            for packet in FLAG_PACKETS {
                push(
                    format!("{} flagtrace/lookup, fill {fill}", packet.name()),
                    ns(Program::Flagtrace, packet, fill),
                    ns(Program::Lookup, packet, fill),
                    FLAG_TARGET,
                );
            }
            for (packet, target) in [
                (PacketKind::TcpAckV4, ACK_TARGET),
                (PacketKind::UdpV4, UDP_TARGET),
            ] {
                push(
                    format!("{} flagtrace/parse, fill {fill}", packet.name()),
                    ns(Program::Flagtrace, packet, fill),
                    ns(Program::Parse, packet, 0),
                    target,
                );
            }
        }
        ratios.push(Ratio {
            what: format!(
                "locked bytes per flow at {} entries",
                self.flow_table.max_entries
            ),
            value: self.flow_table.bytes_per_flow(),
            target: MEMORY_TARGET,
        });
        ratios
    }

    /// `target/bench/report.json`: the format, plus what was measured around it.
    pub fn to_json(&self) -> Value {
        let round2 = |x: f64| (x * 100.0).round() / 100.0;
        json!({
            "cases": self.cases.iter().map(|c| json!({
                "program": c.program.name(),
                "packet": c.packet.name(),
                "fill": c.fill,
                "ns_per_packet": round2(c.ns_per_packet()),
                "rounds": c.rounds.iter().map(|&x| round2(x)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "flow_table": {
                "max_entries": self.flow_table.max_entries,
                "memlock_bytes": self.flow_table.memlock_bytes,
                "activity_memlock_bytes": self.flow_table.activity_memlock_bytes,
                "bytes_per_flow": round2(self.flow_table.bytes_per_flow()),
                "cpus": self.flow_table.cpus,
                "per_cpu_table_memlock_bytes": self.flow_table.per_cpu_memlock_bytes,
            },
            "admission": self.admission.iter().map(|a| json!({
                "program": a.program.name(),
                "fill": self.options.fill,
                "ns_per_flow": round2(a.ns_per_flow()),
                "flows_per_second": a.flows_per_second().round(),
            })).collect::<Vec<_>>(),
            "entries_after_fill": self.entries_after_fill.iter().map(|(p, n)| json!({
                "program": p.name(),
                "entries": n,
            })).collect::<Vec<_>>(),
            "targets": self.ratios().iter().map(|r| json!({
                "what": r.what,
                "ratio": (r.value * 1000.0).round() / 1000.0,
                "target": r.target,
                "met": r.met(),
            })).collect::<Vec<_>>(),
            "programs": self.sizes.iter().map(|s| json!({
                "program": s.program.name(),
                "xlated_insns": s.xlated_insns,
                "jited_bytes": s.jited_bytes,
            })).collect::<Vec<_>>(),
            "options": {
                "repeat": self.options.repeat,
                "rounds": self.options.rounds,
                "admission_flows": self.options.admission_flows,
            },
            "machine": {
                "cpu": self.machine.cpu,
                "cpus": self.flow_table.cpus,
                "kernel": self.machine.kernel,
            },
        })
    }

    /// The human-readable report: one row per packet, one column per program and fill.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let columns: Vec<(Program, u32)> = Program::ALL
            .iter()
            .flat_map(|&program| {
                let fills = if Program::WITH_FLOW_TABLE.contains(&program) {
                    self.fills().to_vec()
                } else {
                    vec![0]
                };
                fills.into_iter().map(move |fill| (program, fill))
            })
            .collect();
        let _ = writeln!(
            out,
            "{}, {} CPUs, Linux {}",
            self.machine.cpu, self.flow_table.cpus, self.machine.kernel
        );
        let _ = writeln!(
            out,
            "ns per packet, median of {} rounds of {} runs (BPF_PROG_TEST_RUN)",
            self.options.rounds, self.options.repeat
        );
        let _ = write!(out, "{:<16}", "packet");
        for (program, fill) in &columns {
            let heading = if Program::WITH_FLOW_TABLE.contains(program) {
                format!("{}@{}", program.name(), fill)
            } else {
                program.name().to_owned()
            };
            let _ = write!(out, " {heading:>17}");
        }
        let _ = writeln!(out);
        for packet in PacketKind::ALL {
            let _ = write!(out, "{:<16}", packet.name());
            for &(program, fill) in &columns {
                match self.case(program, packet, fill) {
                    Some(case) => {
                        let _ = write!(out, " {:>17.2}", case.ns_per_packet());
                    }
                    None => {
                        let _ = write!(out, " {:>17}", "-");
                    }
                }
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "\ntargets (ratios of medians):");
        for ratio in self.ratios() {
            let _ = writeln!(
                out,
                "  {:<48} {:>8.3}  <= {:<6} {}",
                ratio.what,
                ratio.value,
                ratio.target,
                if ratio.met() { "ok" } else { "MISSED" }
            );
        }
        let table = &self.flow_table;
        let _ = writeln!(
            out,
            "\nflow table at {} entries: {} bytes locked, and the activity table {} ({:.1} per \
             flow) on {} CPUs; the same flow table per-CPU: {} bytes ({:.1} per flow)",
            table.max_entries,
            table.memlock_bytes,
            table.activity_memlock_bytes,
            table.bytes_per_flow(),
            table.cpus,
            table.per_cpu_memlock_bytes,
            table.per_cpu_bytes_per_flow()
        );
        for (program, entries) in &self.entries_after_fill {
            let _ = writeln!(
                out,
                "{} table after inserting {} keys: {entries} entries",
                program.name(),
                self.options.fill
            );
        }
        let _ = writeln!(
            out,
            "\nadmission of new flows into a full table ({} per round, program time only):",
            self.options.admission_flows
        );
        for admission in &self.admission {
            let _ = writeln!(
                out,
                "  {:<10} {:>8.1} ns per new flow, {:>12.0} flows/s per core",
                admission.program.name(),
                admission.ns_per_flow(),
                admission.flows_per_second()
            );
        }
        let _ = writeln!(out, "\nprogram sizes:");
        for size in &self.sizes {
            let _ = writeln!(
                out,
                "  {:<10} {:>5} xlated instructions, {:>6} bytes jited",
                size.program.name(),
                size.xlated_insns,
                size.jited_bytes
            );
        }
        out
    }
}

/// Runs the whole bench. Needs root (it loads BPF programs) and bpffs (flagtrace's maps load
/// pinned, as `attach` loads them); pins go to a private directory, removed as soon as the maps
/// exist.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    ensure!(
        options.repeat >= 1 && options.rounds >= 1 && options.fill >= 1,
        "repeat, rounds and fill must be at least 1"
    );
    ensure!(
        options.fill <= MAX_SYNTHETIC_FLOWS
            && options.admission_flows as u64 * options.rounds as u64 <= MAX_SYNTHETIC_FLOWS as u64,
        "at most {MAX_SYNTHETIC_FLOWS} fill or admission flows"
    );
    let mut programs = Programs::load(options.fill)?;
    let packets: Vec<(PacketKind, Vec<u8>)> =
        PacketKind::ALL.iter().map(|&k| (k, k.frame())).collect();

    let mut cases = measure(&mut programs, &Program::ALL, &packets, 0, options)?;
    let entries_after_fill = programs.fill(&packets, options.fill)?;
    cases.extend(measure(
        &mut programs,
        &Program::WITH_FLOW_TABLE,
        &packets,
        options.fill,
        options,
    )?);
    let admission = programs.admission(options)?;
    Ok(Report {
        options: options.clone(),
        cases,
        entries_after_fill,
        admission,
        flow_table: programs.flow_table_memory(options.fill)?,
        sizes: programs.sizes()?,
        machine: Machine::this_one()?,
    })
}

/// Both objects loaded, with the flow tables taken out of them so that they can be written
/// while the programs run.
struct Programs {
    reference: Ebpf,
    flagtrace: Ebpf,
    reference_flows: BpfHashMap<MapData, FlowKey, FlowValue>,
    flagtrace_flows: BpfHashMap<MapData, FlowKey, FlowValue>,
    /// The interface BPF_PROG_TEST_RUN reports to XDP (loopback): part of flagtrace's key.
    ifindex: u32,
}

impl Programs {
    fn load(capacity: u32) -> anyhow::Result<Self> {
        let mut reference = EbpfLoader::new()
            .map_max_entries(REFERENCE_FLOWS_MAP, capacity)
            .load(tracer_user::REFERENCE_OBJECT)
            .context("loading tracer_user::REFERENCE_OBJECT")?;
        // The maps load pinned, as `attach` loads them; the pins are only needed while loading,
        // and removing them at once leaves nothing behind even if the bench is killed.
        let pins = PinDir::create()?;
        let mut flagtrace = TracerLoader {
            max_flows: capacity,
            ..TracerLoader::new(pins.path())
        }
        .load()?;
        drop(pins);
        for program in Program::ALL {
            let ebpf = match program {
                Program::Flagtrace => &mut flagtrace,
                _ => &mut reference,
            };
            let xdp: &mut Xdp = ebpf
                .program_mut(program.symbol())
                .with_context(|| format!("no program {}", program.symbol()))?
                .try_into()?;
            xdp.load()
                .with_context(|| format!("loading {}", program.symbol()))?;
        }
        Ok(Programs {
            reference_flows: take_flow_table(&mut reference, REFERENCE_FLOWS_MAP)?,
            flagtrace_flows: take_flow_table(&mut flagtrace, FLOWS_MAP)?,
            reference,
            flagtrace,
            ifindex: test_run_ifindex()?,
        })
    }

    fn xdp(&self, program: Program) -> anyhow::Result<&Xdp> {
        let ebpf = match program {
            Program::Flagtrace => &self.flagtrace,
            _ => &self.reference,
        };
        Ok(ebpf
            .program(program.symbol())
            .with_context(|| format!("no program {}", program.symbol()))?
            .try_into()?)
    }

    fn flows(&mut self, program: Program) -> &mut BpfHashMap<MapData, FlowKey, FlowValue> {
        match program {
            Program::Flagtrace => &mut self.flagtrace_flows,
            _ => &mut self.reference_flows,
        }
    }

    /// The flow entry `program` looks up for `frame`, if it looks one up: `lookup` for every
    /// TCP segment (with ifindex 0), flagtrace for those with SYN, FIN or RST.
    fn key(&self, program: Program, frame: &[u8]) -> Option<FlowKey> {
        let Verdict::Tcp(segment) = oracle::classify(frame) else {
            return None;
        };
        let ifindex = match program {
            Program::Empty | Program::Parse => return None,
            Program::Lookup => 0,
            Program::Flagtrace if segment.flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 => {
                return None
            }
            Program::Flagtrace => self.ifindex,
        };
        let (key, _) = segment.flow_key(ifindex);
        Some(key)
    }

    /// Runs `program` on `frame`, `repeat` times in one BPF_PROG_TEST_RUN call.
    fn test_run(&self, program: Program, frame: &[u8], repeat: u32) -> anyhow::Result<Timing> {
        let cpu_before = thread_cpu_ns();
        let result = self
            .xdp(program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", program.name()))?;
        let cpu_ns = thread_cpu_ns() - cpu_before;
        ensure!(
            result.return_value == XDP_PASS,
            "{} returned {} instead of XDP_PASS",
            program.name(),
            result.return_value
        );
        Ok(Timing {
            kernel_ns_per_run: result.duration.as_nanos() as u64,
            cpu_ns_per_run: cpu_ns as f64 / f64::from(repeat),
        })
    }

    /// Fills both tables with `fill` distinct keys, the packets' own flows last so that the LRU
    /// keeps them: the full-table cases then measure the hit path at a full table. Returns the
    /// entries present afterwards.
    fn fill(
        &mut self,
        packets: &[(PacketKind, Vec<u8>)],
        fill: u32,
    ) -> anyhow::Result<Vec<(Program, u32)>> {
        let mut present = Vec::new();
        for program in Program::WITH_FLOW_TABLE {
            let ifindex = if program == Program::Flagtrace {
                self.ifindex
            } else {
                0
            };
            let own: Vec<FlowKey> = packets
                .iter()
                .filter_map(|(_, frame)| self.key(program, frame))
                .collect();
            let others = fill.saturating_sub(own.len() as u32);
            let flows = self.flows(program);
            let keys = (0..others)
                .map(|i| v4_flow(ifindex, [10, 128, 0, 0], i).0)
                .chain(own);
            for key in keys {
                // As the kernel creates an entry: with its flow hash, which a RST reads.
                let value = FlowValue {
                    flow_hash: key.flow_hash(),
                    ..FlowValue::default()
                };
                flows
                    .insert(key, value, 0)
                    .with_context(|| format!("filling the {} table", program.name()))?;
            }
            let mut entries = 0;
            for key in flows.keys() {
                key.with_context(|| format!("counting the {} table", program.name()))?;
                entries += 1;
            }
            present.push((program, entries));
        }
        Ok(present)
    }

    fn counters(&self) -> anyhow::Result<GlobalCounters> {
        let counters: PerCpuArray<&MapData, GlobalCounters> = self
            .flagtrace
            .map(COUNTERS_MAP)
            .with_context(|| format!("no map {COUNTERS_MAP}"))?
            .try_into()?;
        let per_cpu = counters.get(&(Hook::Ingress as u32), 0)?;
        Ok(GlobalCounters {
            flows_created: per_cpu.iter().map(|c| c.flows_created).sum(),
            ..GlobalCounters::default()
        })
    }

    /// New flows into the full tables: a SYN of a flow never seen, one run per call, each flow
    /// offered to `empty`, `lookup` and flagtrace in turn so that drifting load hits all three
    /// alike. Per call, the time BPF_PROG_TEST_RUN reports covers the program and the test
    /// loop's own overhead but not the system call; `empty` measures that overhead, and is
    /// subtracted.
    fn admission(&mut self, options: &Options) -> anyhow::Result<Vec<Admission>> {
        let mut admissions: Vec<Admission> = Program::WITH_FLOW_TABLE
            .iter()
            .map(|&program| Admission {
                program,
                rounds: Vec::new(),
            })
            .collect();
        for round in 0..options.rounds {
            let created_before = self.counters()?.flows_created;
            let mut overhead_ns = 0;
            let mut program_ns = [0; Program::WITH_FLOW_TABLE.len()];
            let first = round as u32 * options.admission_flows;
            for flow in first..first + options.admission_flows {
                let frame = syn_frame(flow);
                overhead_ns += self.test_run(Program::Empty, &frame, 1)?.kernel_ns_per_run;
                for (total, program) in program_ns.iter_mut().zip(Program::WITH_FLOW_TABLE) {
                    *total += self.test_run(program, &frame, 1)?.kernel_ns_per_run;
                }
            }
            for (admission, total) in admissions.iter_mut().zip(program_ns) {
                let ns = total as f64 - overhead_ns as f64;
                admission
                    .rounds
                    .push(ns / f64::from(options.admission_flows));
            }
            let created = self.counters()?.flows_created - created_before;
            ensure!(
                created == u64::from(options.admission_flows),
                "flagtrace created {created} flows from {} new SYNs",
                options.admission_flows
            );
        }
        Ok(admissions)
    }

    fn flow_table_memory(&self, max_entries: u32) -> anyhow::Result<FlowTableMemory> {
        let fd = self.flagtrace_flows_fd()?;
        let memlock_bytes = fdinfo_memlock(fd)?;
        let per_cpu = create_lru_per_cpu_hash(max_entries)?;
        let activity = self
            .flagtrace
            .map(ACTIVITY_MAP)
            .with_context(|| format!("no map {ACTIVITY_MAP}"))?;
        let activity_fd = match activity {
            Map::Array(data) => data.fd().as_fd().as_raw_fd(),
            _ => anyhow::bail!("{ACTIVITY_MAP} is not an array"),
        };
        Ok(FlowTableMemory {
            max_entries,
            memlock_bytes,
            activity_memlock_bytes: fdinfo_memlock(activity_fd)?,
            cpus: aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?,
            per_cpu_memlock_bytes: fdinfo_memlock(per_cpu.as_raw_fd())?,
        })
    }

    fn flagtrace_flows_fd(&self) -> anyhow::Result<i32> {
        use aya::maps::IterableMap as _;
        Ok(self.flagtrace_flows.map().fd().as_fd().as_raw_fd())
    }

    fn sizes(&self) -> anyhow::Result<Vec<ProgramSize>> {
        Program::ALL
            .iter()
            .map(|&program| {
                let info = self.xdp(program)?.info()?;
                Ok(ProgramSize {
                    program,
                    xlated_insns: info.size_translated().unwrap_or(0) / 8,
                    jited_bytes: info.size_jitted(),
                })
            })
            .collect()
    }
}

/// One BPF_PROG_TEST_RUN call.
struct Timing {
    /// What the kernel reports: the test loop timed in the kernel, divided by `repeat` and
    /// truncated to whole nanoseconds.
    kernel_ns_per_run: u64,
    /// The thread's CPU time over the whole call, divided by `repeat`: the same loop with a
    /// sub-nanosecond resolution (the call's own fixed cost, a few microseconds, is nothing over
    /// a million runs). The per-packet figures use this: whole nanoseconds are too coarse for
    /// ratios of programs that take 7 to 12.
    cpu_ns_per_run: f64,
}

/// Measures `programs` on every packet at `fill`, rounds round-robin over the cases.
fn measure(
    loaded: &mut Programs,
    programs: &[Program],
    packets: &[(PacketKind, Vec<u8>)],
    fill: u32,
    options: &Options,
) -> anyhow::Result<Vec<Case>> {
    let mut cases: Vec<(Case, &[u8])> = programs
        .iter()
        .flat_map(|&program| {
            packets.iter().map(move |(packet, frame)| {
                (
                    Case {
                        program,
                        packet: *packet,
                        fill,
                        rounds: Vec::new(),
                    },
                    frame.as_slice(),
                )
            })
        })
        .collect();
    for _ in 0..options.rounds {
        for (case, frame) in &mut cases {
            let key = loaded.key(case.program, frame);
            let before = match key {
                Some(key) => counted(case.program, loaded.flows(case.program), &key)?,
                None => None,
            };
            if fill > 0 && key.is_some() && before.is_none() {
                bail!(
                    "the {} flow of {} is missing from the filled table",
                    case.program.name(),
                    case.packet.name()
                );
            }
            let timing = loaded.test_run(case.program, frame, options.repeat)?;
            case.rounds.push(timing.cpu_ns_per_run);
            if let Some(key) = key {
                let flows = loaded.flows(case.program);
                let after = counted(case.program, flows, &key)?;
                check_counted(case, before, after, options.repeat)?;
                if fill == 0 {
                    // Empty again for the next round and the next case.
                    flows.remove(&key).context("emptying the flow table")?;
                }
            }
        }
    }
    Ok(cases.into_iter().map(|(case, _)| case).collect())
}

/// What the flow entry of `key` has counted, if it exists: `lookup` adds one to its first word
/// per hit (an insert leaves it 0); flagtrace adds one flag per packet.
fn counted(
    program: Program,
    flows: &BpfHashMap<MapData, FlowKey, FlowValue>,
    key: &FlowKey,
) -> anyhow::Result<Option<u64>> {
    let value = match flows.get(key, 0) {
        Ok(value) => value,
        Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
        Err(e) => return Err(e).context("reading a flow entry"),
    };
    let counts = value.sent_by.iter();
    Ok(Some(match program {
        Program::Lookup => u64::from(value.sent_by[0].syn),
        _ => counts
            .map(|c| u64::from(c.syn) + u64::from(c.syn_ack) + u64::from(c.fin) + u64::from(c.rst))
            .sum(),
    }))
}

/// Every run of the round must have reached the case's flow entry.
fn check_counted(
    case: &Case,
    before: Option<u64>,
    after: Option<u64>,
    repeat: u32,
) -> anyhow::Result<()> {
    let Some(after) = after else {
        bail!(
            "{} on {}: no flow entry after the run",
            case.program.name(),
            case.packet.name()
        );
    };
    // lookup's insert (the first run on an empty table) does not count.
    let inserts = u64::from(case.program == Program::Lookup && before.is_none());
    let expected = u64::from(repeat) - inserts;
    let counted = after - before.unwrap_or(0);
    ensure!(
        counted == expected,
        "{} on {} at fill {}: the flow entry counted {counted} of {expected} runs",
        case.program.name(),
        case.packet.name(),
        case.fill
    );
    Ok(())
}

fn take_flow_table(
    ebpf: &mut Ebpf,
    name: &str,
) -> anyhow::Result<BpfHashMap<MapData, FlowKey, FlowValue>> {
    let map: Map = ebpf
        .take_map(name)
        .with_context(|| format!("no map {name}"))?;
    Ok(map.try_into()?)
}

/// Flow number `i` of a synthetic IPv4 population: client `prefix` + i, port 50000, to
/// 192.0.2.1:443 (TEST-NET-1). Returns the key (at `ifindex`) and the client address.
fn v4_flow(ifindex: u32, prefix: [u8; 4], i: u32) -> (FlowKey, [u8; 4]) {
    let base = u32::from_be_bytes(prefix);
    let client = (base + i).to_be_bytes();
    let (key, _) = FlowKey::from_packet(
        FAMILY_IPV4,
        ifindex,
        ipv4_words(client),
        50000,
        ipv4_words([192, 0, 2, 1]),
        443,
    );
    (key, client)
}

/// A SYN of admission flow `i`: clients from 172.16.0.0, never in the fill (10.128.0.0 on).
fn syn_frame(i: u32) -> Vec<u8> {
    let (_, client) = v4_flow(0, [172, 16, 0, 0], i);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(client, [192, 0, 2, 1], 64)
        .tcp(50000, 443, 1, 64240)
        .syn()
        .write(&mut frame, &[])
        .expect("etherparse writes into a Vec");
    frame
}

/// The `memlock:` line of a BPF object's fdinfo: what the kernel charges for it.
fn fdinfo_memlock(fd: i32) -> anyhow::Result<u64> {
    let path = format!("/proc/self/fdinfo/{fd}");
    let fdinfo = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .with_context(|| format!("no memlock in {path}"))?
        .trim()
        .parse()
        .with_context(|| format!("memlock in {path}"))
}

/// A `BPF_MAP_TYPE_LRU_PERCPU_HASH` with flagtrace's key and value sizes, only to read its
/// memlock; aya creates maps only from an object, so this is the raw BPF_MAP_CREATE.
fn create_lru_per_cpu_hash(max_entries: u32) -> anyhow::Result<OwnedFd> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;
    // map_type, key_size, value_size, max_entries, then fields the kernel wants zero.
    let mut attr = [0u32; 16];
    attr[..4].copy_from_slice(&[
        BPF_MAP_TYPE_LRU_PERCPU_HASH,
        std::mem::size_of::<FlowKey>() as u32,
        std::mem::size_of::<FlowValue>() as u32,
        max_entries,
    ]);
    // SAFETY: BPF_MAP_CREATE reads `size_of_val(&attr)` bytes of `attr`, which outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("creating a per-CPU LRU hash");
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), kernel time included.
fn thread_cpu_ns() -> u64 {
    crate::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn every_packet_classifies_as_its_name_says() {
        for kind in PacketKind::ALL {
            let verdict = oracle::classify(&kind.frame());
            match (kind, verdict) {
                (PacketKind::UdpV4, Verdict::NotTcp) => {}
                (PacketKind::TcpAckV4, Verdict::Tcp(s)) => {
                    assert_eq!(s.flags & (TCP_SYN | TCP_FIN | TCP_RST), 0)
                }
                (PacketKind::TcpRstV4, Verdict::Tcp(s)) => assert_ne!(s.flags & TCP_RST, 0),
                (_, Verdict::Tcp(s)) => assert_eq!(s.flags, TCP_SYN, "{}", kind.name()),
                (_, verdict) => panic!("{}: {verdict:?}", kind.name()),
            }
        }
    }
}
