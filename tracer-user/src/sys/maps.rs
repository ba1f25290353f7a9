//! The pinned maps of one attachment: checking that a pin fits this build, and reading it.
//!
//! Whole tables are read in batches ([`bpf::lookup_all`]): a system call per few thousand
//! entries, where aya's iterators make one or two per entry.

use std::{
    io,
    mem::size_of,
    ops::Range,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::{
    maps::{
        Array, HashMap, IterableMap, Map, MapData, MapError, MapInfo, MapType, PerCpuArray, RingBuf,
    },
    sys::SyscallError,
    Pod,
};
use foldhash::{HashMap as StdHashMap, HashMapExt as _, HashSet, HashSetExt as _};
use tracer_common::{
    reset_set, reset_set_mask, FlowKey, FlowValue, GlobalCounters, Hook, ResetEntry, TlsName,
    WatchConfig, COUNTERS_MAP, EVENTS_MAP, EVENTS_RING_BYTES, FLOWS_MAP, HELLOS_MAP, HOOK_COUNT,
    RESETS_MAP, RESET_WAYS, WATCH_MAP,
};

use super::bpf;
use crate::error::Failure;

/// Entries a batched read asks the kernel for at once: 4,096 flow entries are 600 KiB of
/// buffers, and the default reset table (65,536 entries) takes 16 calls.
const BATCH_ENTRIES: usize = 4096;

/// What a pinned map must look like for this build to use it.
struct MapSpec {
    name: &'static str,
    map_type: MapType,
    key_size: usize,
    value_size: usize,
    /// Fixed capacity, for maps whose capacity is not chosen at load time.
    max_entries: Option<u32>,
}

const FLOWS: MapSpec = MapSpec {
    name: FLOWS_MAP,
    map_type: MapType::LruHash,
    key_size: size_of::<FlowKey>(),
    value_size: size_of::<FlowValue>(),
    max_entries: None,
};

const RESETS: MapSpec = MapSpec {
    name: RESETS_MAP,
    map_type: MapType::Array,
    key_size: size_of::<u32>(),
    value_size: size_of::<ResetEntry>(),
    max_entries: None,
};

const HELLOS: MapSpec = MapSpec {
    name: HELLOS_MAP,
    map_type: MapType::LruHash,
    key_size: size_of::<FlowKey>(),
    value_size: size_of::<TlsName>(),
    max_entries: None,
};

const WATCH: MapSpec = MapSpec {
    name: WATCH_MAP,
    map_type: MapType::Array,
    key_size: size_of::<u32>(),
    value_size: size_of::<WatchConfig>(),
    max_entries: Some(1),
};

const EVENTS: MapSpec = MapSpec {
    name: EVENTS_MAP,
    map_type: MapType::RingBuf,
    key_size: 0,
    value_size: 0,
    max_entries: Some(EVENTS_RING_BYTES),
};

const COUNTERS: MapSpec = MapSpec {
    name: COUNTERS_MAP,
    map_type: MapType::PerCpuArray,
    key_size: size_of::<u32>(),
    value_size: size_of::<GlobalCounters>(),
    max_entries: Some(HOOK_COUNT),
};

impl MapSpec {
    /// Opens the pin of this map in `dir` and checks it; `None` when there is no pin.
    /// `fix` is the command that removes an incompatible pin.
    fn open_checked(&self, dir: &Path, fix: &str) -> anyhow::Result<Option<(MapData, MapInfo)>> {
        let path = dir.join(self.name);
        let data = match MapData::from_pin(&path) {
            Ok(data) => data,
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == io::ErrorKind::PermissionDenied =>
            {
                use std::os::unix::fs::MetadataExt as _;
                let metadata = std::fs::metadata(&path)
                    .with_context(|| format!("reading the owner of {}", path.display()))?;
                return Err(Failure::PinAccess {
                    path,
                    uid: metadata.uid(),
                    mode: metadata.mode(),
                }
                .into());
            }
            Err(error) => {
                return Err(error).with_context(|| format!("opening pinned map {}", path.display()))
            }
        };
        let info = data
            .info()
            .with_context(|| format!("reading map info of {}", path.display()))?;
        if let Some(reason) = self.mismatch(&info) {
            return Err(Failure::IncompatiblePin {
                path,
                reason,
                fix: fix.to_owned(),
            }
            .into());
        }
        Ok(Some((data, info)))
    }

    /// How the map in `info` differs from this spec, if it does.
    fn mismatch(&self, info: &MapInfo) -> Option<String> {
        let map_type = info.map_type().ok();
        if map_type != Some(self.map_type) {
            return Some(format!(
                "map type {}, expected {:?}",
                map_type.map_or_else(|| "unknown".to_owned(), |t| format!("{t:?}")),
                self.map_type
            ));
        }
        let sizes = [
            ("key size", info.key_size(), self.key_size),
            ("value size", info.value_size(), self.value_size),
        ];
        for (what, actual, expected) in sizes {
            if actual as usize != expected {
                return Some(format!("{what} {actual}, expected {expected}"));
            }
        }
        match self.max_entries {
            Some(expected) if info.max_entries() != expected => Some(format!(
                "{} entries, expected {expected}",
                info.max_entries()
            )),
            _ => None,
        }
    }
}

/// Opens the pins of `specs` in `dir`, each with its capacity. A pin of the wrong shape is from
/// another version ([`Failure::IncompatiblePin`]). A missing one is not: every build pins its
/// whole set, so a set with some pins missing, all of the right shape, is one an `attach` is
/// still making, or one a failed `attach` left: nothing to read yet, and no reason to purge.
fn open_set<const N: usize>(
    dir: &Path,
    fix: &str,
    specs: [&MapSpec; N],
) -> anyhow::Result<[(Map, u32); N]> {
    let mut opened = Vec::with_capacity(N);
    let mut missing = Vec::new();
    for spec in specs {
        match spec.open_checked(dir, fix)? {
            Some((data, info)) => {
                let path = dir.join(spec.name);
                let map = Map::from_map_data(data)
                    .with_context(|| format!("opening {}", path.display()))?;
                opened.push((map, info.max_entries()));
            }
            None => missing.push(spec.name),
        }
    }
    if !missing.is_empty() {
        return Err(Failure::NothingAttached(format!(
            "the pins in {} are incomplete (no {}): an attach is starting there, or one failed \
             before it finished; try again, or attach again",
            dir.display(),
            missing.join(", ")
        ))
        .into());
    }
    Ok(opened
        .try_into()
        .unwrap_or_else(|_| unreachable!("one map per spec")))
}

/// What an earlier `attach` left pinned that the next load must keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinnedState {
    /// Capacities of the tables; `None` for a table not pinned. A reused pin keeps the capacity
    /// it was created with.
    pub flows: Option<u32>,
    pub resets: Option<u32>,
    /// The watch switch. It is a global of the object, whose value a load writes into its map
    /// (pinned or not): the load writes this one, so that a running watcher keeps its lease.
    pub watch: WatchConfig,
}

/// Checks the pins an earlier `attach` left in `dir`, if any, and returns what they hold that the
/// next load must keep.
pub fn pinned_state(dir: &Path, fix: &str) -> anyhow::Result<PinnedState> {
    let capacity = |spec: &MapSpec| -> anyhow::Result<Option<u32>> {
        Ok(spec
            .open_checked(dir, fix)?
            .map(|(_, info)| info.max_entries()))
    };
    // The flow table first: a pin from before the reset evidence fails there, with the fix.
    let flows = capacity(&FLOWS)?;
    for spec in [&COUNTERS, &EVENTS] {
        capacity(spec)?;
    }
    let watch = match WATCH.open_checked(dir, fix)? {
        Some((data, _)) => Array::<_, WatchConfig>::try_from(Map::Array(data))?
            .get(&0, 0)
            .with_context(|| format!("reading {}", dir.join(WATCH_MAP).display()))?,
        None => WatchConfig::default(),
    };
    Ok(PinnedState {
        flows,
        resets: capacity(&RESETS)?,
        watch,
    })
}

/// Global counters of one attachment, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub ingress: GlobalCounters,
    pub egress: GlobalCounters,
}

impl Counters {
    pub fn total(&self) -> GlobalCounters {
        self.ingress + self.egress
    }
}

/// The flow table, reset evidence and counters pinned for one attachment.
pub struct PinnedMaps {
    dir: PathBuf,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    resets: Array<MapData, ResetEntry>,
    hellos: HashMap<MapData, FlowKey, TlsName>,
    counters: PerCpuArray<MapData, GlobalCounters>,
    capacity: u32,
    resets_capacity: u32,
    hellos_capacity: u32,
}

impl PinnedMaps {
    /// Opens and checks the pins in `dir`. `fix` is the command that removes incompatible pins.
    pub fn open(dir: &Path, fix: &str) -> anyhow::Result<PinnedMaps> {
        let context = |spec: &MapSpec| format!("opening {}", dir.join(spec.name).display());
        let [(flows, capacity), (resets, resets_capacity), (counters, _), (hellos, hellos_capacity)] =
            open_set(dir, fix, [&FLOWS, &RESETS, &COUNTERS, &HELLOS])?;
        Ok(PinnedMaps {
            dir: dir.to_owned(),
            flows: HashMap::try_from(flows).with_context(|| context(&FLOWS))?,
            resets: Array::try_from(resets).with_context(|| context(&RESETS))?,
            hellos: HashMap::try_from(hellos).with_context(|| context(&HELLOS))?,
            counters: PerCpuArray::try_from(counters).with_context(|| context(&COUNTERS))?,
            capacity,
            resets_capacity,
            hellos_capacity,
        })
    }

    /// Capacity of the flow table.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Every entry of the flow table. The kernel updates and evicts entries while it is read:
    /// entries are deduplicated by key, and the read is bounded (see `read_all`).
    pub fn flows(&self) -> anyhow::Result<StdHashMap<FlowKey, FlowValue>> {
        let mut flows = StdHashMap::with_capacity(presized(self.capacity));
        self.read_flows(|key, value| {
            flows.insert(key, value);
        })?;
        Ok(flows)
    }

    /// How many flows the flow table holds: [`PinnedMaps::flows`] without keeping the values.
    pub fn flow_count(&self) -> anyhow::Result<usize> {
        let mut keys = HashSet::with_capacity(presized(self.capacity));
        self.read_flows(|key, _| {
            keys.insert(key);
        })?;
        Ok(keys.len())
    }

    /// Hands every entry of the flow table to `entry`, a key more than once if the kernel moved
    /// it during the read (see `read_all`).
    fn read_flows(&self, entry: impl FnMut(FlowKey, FlowValue)) -> anyhow::Result<()> {
        read_all(
            &self.flows,
            || self.flows.iter(),
            2 * self.capacity as usize,
            &self.dir.join(FLOWS_MAP),
            entry,
        )
    }

    /// The flow table's entry for `key`, if it has one.
    pub fn flow(&self, key: &FlowKey) -> anyhow::Result<Option<FlowValue>> {
        point_lookup(&self.flows, key, &self.dir.join(FLOWS_MAP))
    }

    /// Every ClientHello's server name, by flow.
    pub fn hellos(&self) -> anyhow::Result<StdHashMap<FlowKey, TlsName>> {
        let mut hellos = StdHashMap::with_capacity(presized(self.hellos_capacity));
        read_all(
            &self.hellos,
            || self.hellos.iter(),
            2 * self.hellos_capacity as usize,
            &self.dir.join(HELLOS_MAP),
            |key, value| {
                hellos.insert(key, value);
            },
        )?;
        Ok(hellos)
    }

    /// The server name of the flow `key`'s ClientHello, if the table has one.
    pub fn hello(&self, key: &FlowKey) -> anyhow::Result<Option<TlsName>> {
        point_lookup(&self.hellos, key, &self.dir.join(HELLOS_MAP))
    }

    /// Every flow in the reset evidence table, with its entry.
    pub fn resets(&self) -> anyhow::Result<StdHashMap<FlowKey, ResetEntry>> {
        let mut resets = StdHashMap::new();
        read_all(
            &self.resets,
            || (0..self.resets_capacity).map(|index| Ok((index, self.resets.get(&index, 0)?))),
            self.resets_capacity as usize,
            &self.dir.join(RESETS_MAP),
            |_, entry: ResetEntry| {
                if !entry.is_empty() {
                    resets.insert(entry.key, entry);
                }
            },
        )?;
        Ok(resets)
    }

    /// The reset-table entry of the flow `key`, if the reset table has one: only the entries of
    /// its set are read.
    pub fn reset_entry(&self, key: &FlowKey) -> anyhow::Result<Option<ResetEntry>> {
        for index in reset_slots(key, self.resets_capacity) {
            let entry = self.resets.get(&index, 0).with_context(|| {
                format!("reading {}[{index}]", self.dir.join(RESETS_MAP).display())
            })?;
            if entry.key == *key {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// The global counters per hook, summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let read = |hook: Hook| -> anyhow::Result<GlobalCounters> {
            let per_cpu = self.counters.get(&(hook as u32), 0).with_context(|| {
                format!(
                    "reading {} entry {hook:?}",
                    self.dir.join(COUNTERS_MAP).display()
                )
            })?;
            Ok(per_cpu.iter().copied().sum())
        };
        Ok(Counters {
            ingress: read(Hook::Ingress)?,
            egress: read(Hook::Egress)?,
        })
    }
}

/// What `flagtrace watch` uses of one attachment: the switch it leases, and the ring buffer the
/// events come through.
pub struct WatchMaps {
    pub switch: Array<MapData, WatchConfig>,
    pub events: RingBuf<MapData>,
}

impl WatchMaps {
    /// Opens and checks the pins in `dir`. `fix` is the command that removes incompatible pins.
    pub fn open(dir: &Path, fix: &str) -> anyhow::Result<WatchMaps> {
        let context = |spec: &MapSpec| format!("opening {}", dir.join(spec.name).display());
        let [(switch, _), (events, _)] = open_set(dir, fix, [&WATCH, &EVENTS])?;
        Ok(WatchMaps {
            switch: Array::try_from(switch).with_context(|| context(&WATCH))?,
            events: RingBuf::try_from(events).with_context(|| context(&EVENTS))?,
        })
    }
}

/// Room for the entries of a table of `capacity`, reserved before reading it: growing a map
/// of a quarter million entries rehashes and copies it again and again. Bounded, since the
/// table's capacity may be far above what it holds.
fn presized(capacity: u32) -> usize {
    (capacity as usize).min(1 << 20)
}

/// Reads every entry of `map` (at most `limit`) into `keep`: in batches where the kernel can,
/// else through `walk`, aya's entry-by-entry read. A walk of an LRU hash restarts from the first
/// key when the key it stands on is evicted, so under churn it could go on for ever and see
/// entries twice: `limit` bounds it, and `keep` must not mind a key seen twice.
fn read_all<K: Pod, V: Pod, W: Iterator<Item = Result<(K, V), MapError>>>(
    map: &impl IterableMap<K, V>,
    walk: impl FnOnce() -> W,
    limit: usize,
    path: &Path,
    mut keep: impl FnMut(K, V),
) -> anyhow::Result<()> {
    let batched = bpf::lookup_all(map, BATCH_ENTRIES, limit, |key, value| keep(*key, *value))
        .with_context(|| format!("reading {} in batches", path.display()))?;
    if batched {
        return Ok(());
    }
    log::debug!(
        "{}: this kernel reads no batches of it, reading entry by entry",
        path.display()
    );
    for entry in walk().take(limit) {
        let (key, value) = entry.with_context(|| format!("reading {}", path.display()))?;
        keep(key, value);
    }
    Ok(())
}

/// The value of `key` in a hash table pinned at `path`; `None` when it has none.
fn point_lookup<V: Pod>(
    table: &HashMap<MapData, FlowKey, V>,
    key: &FlowKey,
    path: &Path,
) -> anyhow::Result<Option<V>> {
    match table.get(key, 0) {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(error) => {
            Err(error).with_context(|| format!("looking up {key:?} in {}", path.display()))
        }
    }
}

/// The entries of the reset table (of `capacity` entries) that the flow `key` may occupy: its
/// set, [`RESET_WAYS`] adjacent entries from [`reset_set`] of its flow hash, where the kernel
/// programs put it (tracer-ebpf/src/account.rs).
fn reset_slots(key: &FlowKey, capacity: u32) -> Range<u32> {
    let set = reset_set(key.flow_hash(), reset_set_mask(capacity));
    set..set + RESET_WAYS
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;
    use tracer_common::{reset_capacity, DEFAULT_MAX_RESETS, FAMILY_IPV4};
    use tracer_ebpf::account::Tables as _;

    use super::*;
    use crate::source::offline::HostTables;

    #[test]
    fn a_reset_entry_lies_in_its_flows_slots() {
        // The kernel programs' accounting, run on the host, places the entries.
        let tables = HostTables::new();
        let capacity = reset_capacity(DEFAULT_MAX_RESETS);
        let (client, server) = ([10, 0, 0, 1], [192, 0, 2, 7]);
        for port in 40_000..40_200 {
            let mut rst = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4(server, client, 64)
                .tcp(443, port, 1, 0)
                .rst()
                .write(&mut rst, &[])
                .unwrap();
            tables.account(&rst, 3, Hook::Ingress, 1);
            let word = |ip: [u8; 4]| [u32::from_ne_bytes(ip), 0, 0, 0];
            let (key, _) =
                FlowKey::from_packet(FAMILY_IPV4, 3, word(server), 443, word(client), port);
            let holding: Vec<u32> = (0..capacity)
                .filter(|&index| {
                    let entry = tables.reset_entry(index).expect("an entry in range");
                    // SAFETY: nothing is accounted while this reads.
                    unsafe { (*entry).key == key }
                })
                .collect();
            assert_eq!(holding.len(), 1, "{key:?} in {holding:?}");
            assert!(
                reset_slots(&key, capacity).contains(&holding[0]),
                "{key:?} at {holding:?}"
            );
        }
    }

    fn counters(base: u64) -> GlobalCounters {
        GlobalCounters {
            tcp_by_flags: std::array::from_fn(|class| base + class as u64),
            non_tcp: base + 20,
            parse_errors: base + 21,
            flows_created: base + 22,
            resets_unrecorded: base + 23,
            events: base + 24,
            events_dropped: base + 25,
        }
    }

    #[test]
    fn total_adds_both_hooks_field_by_field() {
        let both = Counters {
            ingress: counters(10),
            egress: counters(100),
        };
        assert_eq!(
            both.total(),
            GlobalCounters {
                tcp_by_flags: std::array::from_fn(|class| 110 + 2 * class as u64),
                non_tcp: 150,
                parse_errors: 152,
                flows_created: 154,
                resets_unrecorded: 156,
                events: 158,
                events_dropped: 160,
            }
        );
    }
}
