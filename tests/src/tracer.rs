//! The real eBPF object (`tracer_user::EBPF_OBJECT`) loaded but not attached, for
//! BPF_PROG_TEST_RUN, with its maps read back.

use std::{
    collections::HashMap,
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context as _};
use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf, Pod,
};
use tracer_common::{
    activity_capacity, Activity, FlowKey, FlowValue, GlobalCounters, Hook, PacketEvent, ResetEntry,
    TlsName, WatchConfig, ACTIVITY_MAP, COUNTERS_MAP, EVENTS_MAP, FLOWS_MAP, HELLOS_MAP,
    RESETS_MAP, RESET_GATE_SECTION, RESET_GATE_SLOTS, TC_PROGRAM, WATCH_SECTION, XDP_PROGRAM,
};
use tracer_user::sys::loader::{program_mut, TracerLoader};

use crate::{
    hex,
    model::{Tracer, Window},
    unique_name,
};

/// The reset gate's slots: the value of its one-entry map.
pub type ResetGate = [u32; RESET_GATE_SLOTS as usize];

/// Where bpffs is mounted; the maps load pinned, as `attach` loads them, so loading needs it.
pub const BPFFS: &str = "/sys/fs/bpf";

/// What a tracer must return on XDP: always pass.
pub const XDP_PASS: u32 = 2;
/// What a tracer must return on TC: TC_ACT_UNSPEC (-1), "no verdict, continue with the next
/// filter". BPF_PROG_TEST_RUN reports it as an unsigned 32-bit value.
pub const TC_ACT_UNSPEC: u32 = -1i32 as u32;

/// The return value a hook's program must give for every packet.
pub fn pass_verdict(hook: Hook) -> u32 {
    match hook {
        Hook::Ingress => XDP_PASS,
        Hook::Egress => TC_ACT_UNSPEC,
    }
}

/// Mounts bpffs at [`BPFFS`] unless it already is, as `cargo xtask test` would.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = CString::new(BPFFS).expect("no NUL in a constant");
    // SAFETY: statfs fills the zeroed struct it is given; both outlive the calls.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut fs) } == 0 && fs.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    let fstype = CString::new("bpf").expect("no NUL in a constant");
    // SAFETY: all pointers are to NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting bpffs at {BPFFS}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// A directory of its own under bpffs, removed with everything pinned in it on drop.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// A pin root for a test: `flagtrace-test-<pid>-<n>`.
    pub fn create() -> anyhow::Result<Self> {
        Self::named("flagtrace-test")
    }

    /// A pin root named `<prefix>-<pid>-<n>`, so that whoever looks at bpffs sees whose it is.
    pub fn named(prefix: &str) -> anyhow::Result<Self> {
        ensure_bpffs()?;
        let path = Path::new(BPFFS).join(unique_name(prefix));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                eprintln!("warning: removing pin dir {}: {error}", self.path.display());
            }
        }
    }
}

/// Result of one BPF_PROG_TEST_RUN.
#[derive(Debug)]
pub struct Run {
    pub return_value: u32,
    /// The packet as the program left it.
    pub data_out: Vec<u8>,
}

/// Capacity of the reset table in the loaded tracer: small, so that reading it after every packet
/// stays cheap and the differential test fills some of its sets.
pub const RESET_CAPACITY: u32 = 256;

/// Both programs loaded (not attached) with fresh maps pinned in a private directory.
pub struct LoadedTracer {
    ebpf: Ebpf,
    pins: PinDir,
    /// The interface BPF_PROG_TEST_RUN gives the programs: [`test_run_ifindex`].
    ifindex: u32,
    /// Capacity of the flow table, which sizes the activity table.
    max_flows: u32,
}

impl LoadedTracer {
    pub fn load(max_flows: u32) -> anyhow::Result<Self> {
        let pins = PinDir::create()?;
        let pin_dir = pins.path().to_owned();
        Self::load_into(pins, &pin_dir, max_flows, RESET_CAPACITY)
    }

    /// Loaded with its maps pinned in `pin_dir`, somewhere under `pins`: a directory laid out as
    /// `attach` lays out a pin root (`<root>/host/<iface>`) lets `flagtrace` read the tables.
    pub fn load_into(
        pins: PinDir,
        pin_dir: &Path,
        max_flows: u32,
        max_resets: u32,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        let mut ebpf = TracerLoader {
            max_flows,
            max_resets,
            ..TracerLoader::new(pin_dir)
        }
        .load()?;
        let xdp: &mut Xdp = program_mut(&mut ebpf, XDP_PROGRAM)?;
        xdp.load()
            .with_context(|| format!("loading {XDP_PROGRAM}"))?;
        let tc: &mut SchedClassifier = program_mut(&mut ebpf, TC_PROGRAM)?;
        tc.load().with_context(|| format!("loading {TC_PROGRAM}"))?;
        Ok(Self {
            ebpf,
            pins,
            ifindex: test_run_ifindex()?,
            max_flows,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        self.pins.path()
    }

    /// Runs the hook's program once on `frame`, which starts with the Ethernet header for both
    /// program types. BPF_PROG_TEST_RUN rejects frames shorter than an Ethernet header (EINVAL).
    pub fn run(&self, hook: Hook, frame: &[u8]) -> anyhow::Result<Run> {
        // Exactly the input size: a program that grew the packet would make the run fail ENOSPC.
        let mut data_out = vec![0u8; frame.len()];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            ..TestRunOptions::default()
        };
        let result = match hook {
            Hook::Ingress => program::<Xdp>(&self.ebpf, XDP_PROGRAM)?.test_run(opts),
            Hook::Egress => program::<SchedClassifier>(&self.ebpf, TC_PROGRAM)?.test_run(opts),
        }
        .with_context(|| format!("BPF_PROG_TEST_RUN of the {hook:?} program"))?;
        data_out.truncate(result.data_size_out as usize);
        Ok(Run {
            return_value: result.return_value,
            data_out,
        })
    }

    /// Writes `value` as the flow table's entry for `key`, as a build before this one might have
    /// left it.
    pub fn set_flow(&mut self, key: &FlowKey, value: &FlowValue) -> anyhow::Result<()> {
        let mut flows: BpfHashMap<&mut MapData, FlowKey, FlowValue> =
            self.map_mut(FLOWS_MAP)?.try_into()?;
        flows
            .insert(key, value, 0)
            .with_context(|| format!("writing {FLOWS_MAP}"))
    }

    /// The reset table's entries in use, with their indexes.
    fn reset_entries(&self) -> anyhow::Result<Vec<(u32, ResetEntry)>> {
        let table: Array<&MapData, ResetEntry> = self.map(RESETS_MAP)?.try_into()?;
        let mut used = Vec::new();
        for index in 0..table.len() {
            let entry = table
                .get(&index, 0)
                .with_context(|| format!("reading {RESETS_MAP}[{index}]"))?;
            if !entry.is_empty() {
                used.push((index, entry));
            }
        }
        Ok(used)
    }

    /// Every ClientHello's server name the programs kept, by flow.
    pub fn hellos(&self) -> anyhow::Result<HashMap<FlowKey, TlsName>> {
        let table: BpfHashMap<&MapData, FlowKey, TlsName> = self.map(HELLOS_MAP)?.try_into()?;
        table
            .iter()
            .map(|entry| entry.with_context(|| format!("reading {HELLOS_MAP}")))
            .collect()
    }

    /// Sets what `flagtrace watch` asks of the programs.
    pub fn set_watch(&mut self, config: WatchConfig) -> anyhow::Result<()> {
        let mut watch: Array<&mut MapData, WatchConfig> =
            self.map_mut(WATCH_SECTION)?.try_into()?;
        watch
            .set(0, config, 0)
            .with_context(|| format!("writing {WATCH_SECTION}"))
    }

    /// The events waiting in the ring buffer, oldest first.
    pub fn take_events(&mut self) -> anyhow::Result<Vec<PacketEvent>> {
        let mut ring: RingBuf<&mut MapData> = self.map_mut(EVENTS_MAP)?.try_into()?;
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            ensure!(
                item.len() == size_of::<PacketEvent>(),
                "an event of {} bytes",
                item.len()
            );
            // SAFETY: PacketEvent is plain old data of exactly this size; read_unaligned
            // makes no alignment assumption.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const PacketEvent) });
        }
        Ok(events)
    }

    fn map(&self, name: &str) -> anyhow::Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("no map {name} in the object"))
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("no map {name} in the object"))
    }

    /// Every entry of a hash map keyed by flow.
    fn entries<V: Pod>(&self, name: &str) -> anyhow::Result<HashMap<FlowKey, V>> {
        let map: BpfHashMap<&MapData, FlowKey, V> = self.map(name)?.try_into()?;
        map.iter()
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {name}"))
    }

    fn clear_entries<V: Pod>(&mut self, name: &str) -> anyhow::Result<()> {
        let keys: Vec<FlowKey> = self.entries::<V>(name)?.into_keys().collect();
        let mut map: BpfHashMap<&mut MapData, FlowKey, V> = self.map_mut(name)?.try_into()?;
        for key in keys {
            map.remove(&key)
                .with_context(|| format!("deleting {key:?} from {name}"))?;
        }
        Ok(())
    }
}

impl Tracer for LoadedTracer {
    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn account(&self, hook: Hook, frame: &[u8], _gap_ns: u64) -> Result<Option<Window>, String> {
        let (run, window) = Window::around(|| self.run(hook, frame));
        if !test_run_accepts(hook, frame) {
            // Refused by the kernel before the program ran: nothing to count.
            return match run {
                Ok(_) => Err("test run accepted a frame it should refuse".to_owned()),
                Err(_) => Ok(None),
            };
        }
        let run = run.map_err(|error| format!("{error:#}"))?;
        if run.return_value != pass_verdict(hook) {
            return Err(format!("returned {}", run.return_value));
        }
        if run.data_out != frame {
            return Err(format!("changed the frame to {}", hex(&run.data_out)));
        }
        Ok(Some(window))
    }

    fn counters(&self, hook: Hook) -> anyhow::Result<GlobalCounters> {
        let counters: PerCpuArray<&MapData, GlobalCounters> = self.map(COUNTERS_MAP)?.try_into()?;
        let per_cpu = counters
            .get(&(hook as u32), 0)
            .with_context(|| format!("reading {COUNTERS_MAP}[{hook:?}]"))?;
        Ok(per_cpu.iter().copied().sum())
    }

    fn flows(&self) -> anyhow::Result<HashMap<FlowKey, FlowValue>> {
        self.entries(FLOWS_MAP)
    }

    fn resets(&self) -> anyhow::Result<HashMap<FlowKey, ResetEntry>> {
        Ok(self
            .reset_entries()?
            .into_iter()
            .map(|(_, entry)| (entry.key, entry))
            .collect())
    }

    fn reset_gate(&self) -> anyhow::Result<Vec<u32>> {
        let gate: Array<&MapData, ResetGate> = self.map(RESET_GATE_SECTION)?.try_into()?;
        let slots = gate
            .get(&0, 0)
            .with_context(|| format!("reading {RESET_GATE_SECTION}"))?;
        Ok(slots.to_vec())
    }

    fn reset_capacity(&self) -> u32 {
        RESET_CAPACITY
    }

    fn activity_slots(&self) -> u32 {
        activity_capacity(self.max_flows)
    }

    fn clear_flows(&mut self) -> anyhow::Result<()> {
        self.clear_entries::<FlowValue>(FLOWS_MAP)?;
        let used: Vec<u32> = self
            .reset_entries()?
            .into_iter()
            .map(|(index, _)| index)
            .collect();
        let mut resets: Array<&mut MapData, ResetEntry> = self.map_mut(RESETS_MAP)?.try_into()?;
        for index in used {
            resets
                .set(index, ResetEntry::default(), 0)
                .with_context(|| format!("clearing {RESETS_MAP}[{index}]"))?;
        }
        let mut activity: Array<&mut MapData, Activity> = self.map_mut(ACTIVITY_MAP)?.try_into()?;
        for index in 0..activity.len() {
            let slot = activity
                .get(&index, 0)
                .with_context(|| format!("reading {ACTIVITY_MAP}[{index}]"))?;
            if slot.tag != 0 {
                activity
                    .set(index, Activity::default(), 0)
                    .with_context(|| format!("clearing {ACTIVITY_MAP}[{index}]"))?;
            }
        }
        let mut gate: Array<&mut MapData, ResetGate> =
            self.map_mut(RESET_GATE_SECTION)?.try_into()?;
        gate.set(0, [0; RESET_GATE_SLOTS as usize], 0)
            .with_context(|| format!("closing {RESET_GATE_SECTION}"))
    }
}

/// Whether BPF_PROG_TEST_RUN runs the hook's program on `frame` at all. It refuses (EINVAL)
/// frames shorter than an Ethernet header, and for TC (an skb) also frames whose outer
/// EtherType is IPv4 or IPv6 but that are too short for the fixed IP header.
pub fn test_run_accepts(hook: Hook, frame: &[u8]) -> bool {
    const ETHERNET_LEN: usize = 14;
    if frame.len() < ETHERNET_LEN {
        return false;
    }
    let network_header_len = match (hook, u16::from_be_bytes([frame[12], frame[13]])) {
        (Hook::Egress, 0x0800) => 20,
        (Hook::Egress, 0x86dd) => 40,
        _ => 0,
    };
    frame.len() >= ETHERNET_LEN + network_header_len
}

/// The interface index BPF_PROG_TEST_RUN gives both program types when no context is passed:
/// the loopback device of the caller's network namespace.
pub fn test_run_ifindex() -> anyhow::Result<u32> {
    let name = CString::new("lo").expect("no NUL in a constant");
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(index != 0, "no loopback interface in this namespace");
    Ok(index)
}

fn program<'a, P>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a P>
where
    &'a P: TryFrom<&'a aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program(name)
        .with_context(|| format!("no program {name} in the object"))?;
    program
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}
