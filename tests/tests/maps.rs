//! Reading the pinned maps as `flagtrace` does (`tracer_user::sys::maps::PinnedMaps`): whole
//! tables read in batches (BPF_MAP_LOOKUP_BATCH) must hold exactly what aya's entry-by-entry
//! reads find, for tables of many batches; and the point lookups of one flow must find what the
//! kernel programs recorded, where they recorded it.
//!
//! Run with `--nocapture` to see what each way of reading a full-size table takes.

use std::{collections::HashMap, hash::BuildHasher, path::Path, time::Instant};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError};
use etherparse::PacketBuilder;
use flagtrace_tests::{
    model::Tracer as _,
    oracle::ipv4_words,
    tracer::{test_run_ifindex, LoadedTracer, PinDir},
};
use tracer_common::{
    reset_set, reset_set_mask, FlowKey, FlowValue, Hook, ResetEntry, RstEvidence, FAMILY_IPV4,
    FLOWS_MAP, RESETS_MAP, RESET_WAYS,
};
use tracer_user::sys::{loader::TracerLoader, maps::PinnedMaps};

/// What `PinnedMaps::open` names as the fix of an incompatible pin; these pins are fresh.
const FIX: &str = "(a fresh pin directory)";

/// Flow `i` on the loopback: clients from 10.0.0.0 on, each with its own port.
fn flow(ifindex: u32, i: u32) -> FlowKey {
    let [_, b, c, d] = i.to_be_bytes();
    let (key, _) = FlowKey::from_packet(
        FAMILY_IPV4,
        ifindex,
        ipv4_words([10, b, c, d]),
        40_000 + (i % 20_000) as u16,
        ipv4_words([192, 0, 2, 1]),
        443,
    );
    key
}

/// A value that tells flow `i`'s entry from the others.
fn flow_value(key: &FlowKey, i: u32) -> FlowValue {
    let mut value = FlowValue {
        first_seen_ns: u64::from(i) + 1,
        flow_hash: key.flow_hash(),
        ..FlowValue::default()
    };
    value.sent_by[0].syn = i;
    value
}

/// The pinned map `name` in `dir`, as aya's map of type `T`.
fn pinned<T: TryFrom<Map, Error = MapError>>(dir: &Path, name: &str) -> T {
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .and_then(Map::from_map_data)
        .and_then(T::try_from);
    data.unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// The flow table as aya's iterator reads it: two system calls per entry.
fn flows_entry_by_entry(dir: &Path) -> HashMap<FlowKey, FlowValue> {
    let table: BpfHashMap<MapData, FlowKey, FlowValue> = pinned(dir, FLOWS_MAP);
    table
        .iter()
        .collect::<Result<_, _>>()
        .expect("walking FLOWS")
}

/// The reset table's used entries as one lookup per entry reads them.
fn resets_entry_by_entry(dir: &Path) -> HashMap<FlowKey, ResetEntry> {
    let table: Array<MapData, ResetEntry> = pinned(dir, RESETS_MAP);
    (0..table.len())
        .map(|index| table.get(&index, 0).expect("reading RESETS"))
        .filter(|entry| !entry.is_empty())
        .map(|entry| (entry.key, entry))
        .collect()
}

/// Whether two maps, whatever their hashers, hold the same entries.
fn same_entries<V: PartialEq>(
    a: &HashMap<FlowKey, V, impl BuildHasher>,
    b: &HashMap<FlowKey, V, impl BuildHasher>,
) -> bool {
    a.len() == b.len() && a.iter().all(|(key, value)| b.get(key) == Some(value))
}

/// Milliseconds `read` takes.
fn timed<T>(read: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let result = read();
    (result, start.elapsed().as_secs_f64() * 1e3)
}

/// Full-size tables, loaded as `attach` loads them: 100,000 flows (25 batches) and every entry
/// of the default 65,536-entry reset table (16 batches), filled from user space.
#[test]
fn batch_reads_equal_entry_by_entry_reads() {
    const FLOWS: u32 = 100_000;
    let pins = PinDir::create().expect("a pin directory");
    let dir = pins.path();
    let ebpf = TracerLoader::new(dir).load().expect("loading the tracer");
    let maps = PinnedMaps::open(dir, FIX).expect("opening the pins");
    assert!(maps.flows().expect("reading FLOWS").is_empty());
    assert!(maps.resets().expect("reading RESETS").is_empty());

    let mut flows: BpfHashMap<MapData, FlowKey, FlowValue> = pinned(dir, FLOWS_MAP);
    let keys: Vec<FlowKey> = (0..FLOWS).map(|i| flow(1, i)).collect();
    for (i, key) in (0..).zip(&keys) {
        flows
            .insert(key, flow_value(key, i), 0)
            .expect("writing FLOWS");
    }
    // Every entry of the reset table: the first flows where the programs would put them (their
    // set, while it has room), then the rest of the entries with flows of their own.
    let mut resets: Array<MapData, ResetEntry> = pinned(dir, RESETS_MAP);
    let capacity = resets.len();
    let mut used = vec![false; capacity as usize];
    let mut placed = Vec::new();
    for (i, key) in (0..).zip(&keys[..20_000]) {
        let set = reset_set(key.flow_hash(), reset_set_mask(capacity));
        let Some(index) = (set..set + RESET_WAYS).find(|&index| !used[index as usize]) else {
            continue;
        };
        used[index as usize] = true;
        placed.push((index, *key, i));
    }
    let mut strays = (FLOWS..).map(|i| (flow(2, i), i));
    for index in 0..capacity {
        if !used[index as usize] {
            let (key, i) = strays.next().expect("endless");
            placed.push((index, key, i));
        }
    }
    for &(index, key, i) in &placed {
        let mut entry = ResetEntry {
            key,
            ..ResetEntry::default()
        };
        entry.evidence.by_sender[1] = RstEvidence {
            first_rst_ns: u64::from(i) + 1,
            seq: i,
            ..RstEvidence::default()
        };
        resets.set(index, entry, 0).expect("writing RESETS");
    }

    let (batched_flows, batched_ms) = timed(|| maps.flows().expect("reading FLOWS"));
    let (walked_flows, walked_ms) = timed(|| flows_entry_by_entry(dir));
    eprintln!("{FLOWS} flows: {batched_ms:.1} ms in batches, {walked_ms:.1} ms entry by entry");
    assert_eq!(batched_flows.len(), FLOWS as usize);
    assert!(
        same_entries(&batched_flows, &walked_flows),
        "the two reads of FLOWS differ"
    );

    let (batched_resets, batched_ms) = timed(|| maps.resets().expect("reading RESETS"));
    let (walked_resets, walked_ms) = timed(|| resets_entry_by_entry(dir));
    eprintln!(
        "{capacity} reset entries: {batched_ms:.1} ms in batches, {walked_ms:.1} ms entry by entry"
    );
    assert_eq!(batched_resets.len(), capacity as usize);
    assert!(
        same_entries(&batched_resets, &walked_resets),
        "the two reads of RESETS differ"
    );

    // Point lookups: a flow, its evidence when it lies in its set, nothing for strangers.
    for (i, key) in (0..).zip(&keys).step_by(997) {
        assert_eq!(maps.flow(key).unwrap(), Some(flow_value(key, i)));
    }
    assert_eq!(maps.flow(&flow(3, 0)).unwrap(), None);
    for &(index, key, _) in placed.iter().step_by(101) {
        let set = reset_set(key.flow_hash(), reset_set_mask(capacity));
        let in_its_set = (set..set + RESET_WAYS).contains(&index);
        let expected = in_its_set.then(|| walked_resets[&key]);
        assert_eq!(maps.reset_entry(&key).unwrap(), expected, "entry {index}");
    }
    assert_eq!(maps.reset_entry(&keys[FLOWS as usize - 1]).unwrap(), None);
    drop(ebpf);
}

/// The point lookups find the entries the programs themselves recorded: RSTs of more flows than
/// the tracer's small reset table has room for, so that some sets are full.
#[test]
fn point_lookups_find_what_the_programs_recorded() {
    let tracer = LoadedTracer::load(1024).expect("loading the tracer");
    let ifindex = test_run_ifindex().expect("loopback ifindex");
    let mut keys = Vec::new();
    for port in 40_000..40_400 {
        let mut rst = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([192, 0, 2, 1], [10, 0, 0, 1], 64)
            .tcp(443, port, 7, 0)
            .rst()
            .write(&mut rst, &[])
            .expect("etherparse writes into a Vec");
        tracer.run(Hook::Ingress, &rst).expect("running the RST");
        let (key, _) = FlowKey::from_packet(
            FAMILY_IPV4,
            ifindex,
            ipv4_words([192, 0, 2, 1]),
            443,
            ipv4_words([10, 0, 0, 1]),
            port,
        );
        keys.push(key);
    }
    let flows = tracer.flows().expect("reading flows");
    let resets = tracer.resets().expect("reading resets");
    assert!(
        !resets.is_empty() && resets.len() < keys.len(),
        "{} of {} flows with evidence: no set was full",
        resets.len(),
        keys.len()
    );
    let maps = PinnedMaps::open(tracer.pin_dir(), FIX).expect("opening the pins");
    for key in &keys {
        assert_eq!(maps.flow(key).unwrap().as_ref(), flows.get(key));
        assert_eq!(maps.reset_entry(key).unwrap().as_ref(), resets.get(key));
    }
}
