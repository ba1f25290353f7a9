//! What flagtrace records of one packet. The kernel programs (src/main.rs) run this over BPF
//! maps; `flagtrace pcap` runs it on the host over plain memory. One implementation, so that a
//! capture and a live attachment count the same traffic alike.

use core::mem;

use tracer_common::{
    activity_tag, flow_hash, gate_slot, reset_set, Activity, Baseline, EventBudget, FlagCounts,
    FlowKey, FlowValue, GlobalCounters, Hook, ResetEntry, RstEvidence, RstPayload, TlsName,
    WatchConfig, ACTIVITY_PAYLOAD_SEEN, ACTIVITY_SEQ_KNOWN, ACTIVITY_SYN_SEEN, BACK_TO_BACK_NS,
    FAMILY_IPV4, FIRST_SYN_HI, FIRST_SYN_LO, FIRST_SYN_NONE, MS_UNKNOWN, RESET_ENTRY_IDLE_NS,
    RESET_GATE_BUDGET, RESET_OF_CONNECTION, RESET_OF_UNANSWERED, RESET_WAYS, RST_PAYLOAD_BYTES,
    SEEN_NONE, SENDER_LO, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

use crate::{load_u16, load_u32, parse, tls, EthHdr, NoSegment, OnSegment, Packet, TcpSegment};

/// The tables the accounting works on. Entries come as raw pointers, the way BPF map lookups
/// give them: in the kernel other CPUs write the same entries at the same time.
pub trait Tables {
    /// This CPU's global counters for `hook`.
    fn counters(&self, hook: Hook) -> Option<*mut GlobalCounters>;
    /// The reset gate's budget at `slot`.
    fn gate(&self, slot: u32) -> Option<*mut u32>;
    fn flow(&self, key: &FlowKey) -> Option<*mut FlowValue>;
    /// Adds `value` under `key` unless the key is present; whether it did.
    fn insert_flow(&self, key: &FlowKey, value: &FlowValue) -> bool;
    /// Entry `index` of the reset table.
    fn reset_entry(&self, index: u32) -> Option<*mut ResetEntry>;
    /// [`tracer_common::reset_set_mask`] of the reset table's capacity.
    fn reset_set_mask(&self) -> u32;
    /// Room, private to this CPU, where a new flow entry is built: it is too large for the
    /// 512-byte BPF stack next to everything else.
    fn scratch(&self) -> Option<*mut FlowValue>;
    /// The time the maps record, on the clock of [`FlowValue::first_seen_ns`].
    fn now(&self) -> u64;
    /// The activity table's slot for `tag` (an [`activity_tag`]).
    fn activity(&self, tag: u32) -> Option<*mut Activity>;
    /// The activity table's clock: a coarse tick count, read as one load.
    fn ticks(&self) -> u32;
    /// Milliseconds in `ticks` ticks of [`Tables::ticks`], below [`MS_UNKNOWN`].
    fn ticks_to_ms(&self, ticks: u32) -> u32;
    /// Copies `len` bytes of the packet at `offset` to `dst`; false when the packet is shorter.
    /// The caller bounds `len` where the verifier can see it.
    ///
    /// # Safety
    /// `dst` has room for `len` bytes.
    unsafe fn copy_packet(&self, offset: u32, dst: *mut u8, len: u32) -> bool;
    /// Has the packet being accounted, a first payload, read by [`read_client_hello`] once
    /// the accounting is done: in the kernel a tail call into a program of its own, so that
    /// the verifier walks the TLS parser once, not in every copy of the accounting.
    fn read_client_hello_next(&self, hook: Hook);
    /// Room, private to this CPU, where a ClientHello's server name is read into.
    fn hello_scratch(&self) -> Option<*mut TlsName>;
    /// Keeps the server name of the flow `key`'s ClientHello.
    fn insert_hello(&self, key: &FlowKey, name: &TlsName);
    /// The interface the packet is accounted on. Asked only for the packets that need their
    /// flow key, which most do not.
    fn ifindex(&self) -> u32;
    /// What `flagtrace watch` asks for; `None` where nobody can watch.
    fn watch(&self) -> Option<*const WatchConfig>;
    /// This CPU's event budget.
    fn event_budget(&self) -> Option<*mut EventBudget>;
    /// Sends the packet being accounted to the watcher; false when the ring buffer is full.
    fn send_event(&self, hook: Hook, now: u64) -> bool;
    /// Says that `count` RSTs on this CPU and hook found no room in the reset table: a rare
    /// event, as it is told only at powers of two.
    fn warn_unrecorded(&self, hook: Hook, count: u64);
}

const TCP_FLAGS_OF_INTEREST: u8 = TCP_SYN | TCP_FIN | TCP_RST;

/// Parses and accounts one packet. Never fails: whatever happens, the caller passes the packet.
#[inline(always)]
pub fn account<T: Tables>(tables: &T, packet: Packet<'_>, hook: Hook) {
    let Some(counters) = tables.counters(hook) else {
        return;
    };
    // Per-CPU counters: plain increments are safe.
    let counters = unsafe { &mut *counters };
    let accounting = Accounting {
        tables,
        counters: &mut *counters,
        hook,
    };
    match parse(packet, accounting) {
        Ok(()) => {}
        Err(NoSegment::NotTcp) => counters.non_tcp += 1,
        Err(NoSegment::Malformed) => counters.parse_errors += 1,
    }
}

/// What one TCP segment does to the tables.
struct Accounting<'t, T> {
    tables: &'t T,
    counters: &'t mut GlobalCounters,
    hook: Hook,
}

impl<'a, T: Tables> OnSegment<'a> for Accounting<'_, T> {
    type Output = ();

    #[inline(always)]
    fn on_segment(self, segment: TcpSegment<'a>) {
        let Accounting {
            tables,
            counters,
            hook,
        } = self;
        let flags = segment.flags();
        counters.count_tcp(flags, 1);
        if flags & TCP_FLAGS_OF_INTEREST == 0 {
            // Most packets: parsing, the activity slot and one array read, no table lookup.
            let hash = segment.flow_hash();
            let ifindex = tables.ifindex();
            let first_payload = note_activity(tables, &segment, hook, hash, ifindex);
            if take_gate_budget(tables, gate_slot(hash)) {
                let (key, sender) = segment.flow_key(ifindex);
                let obs = Observation::new(tables, segment, &key, sender, hook);
                note_after_reset(tables, &obs, hash);
            }
            if first_payload {
                // Last: in the kernel this does not return.
                tables.read_client_hello_next(hook);
            }
            return;
        }
        let (key, sender) = segment.flow_key(tables.ifindex());
        let obs = Observation::new(tables, segment, &key, sender, hook);
        let recorded = record_flags(tables, &obs);
        if recorded.as_ref().is_some_and(|recorded| recorded.created) {
            counters.flows_created += 1;
        }
        // The hash from the entry, which keeps it: a SYN or FIN of a flow without a RST needs
        // none. 0 is an entry pinned by a build that did not keep it (or, once in 2^32 flows, a
        // hash of 0: hashing again gives it too).
        let hash = match recorded.as_ref().map(Recorded::flow_hash) {
            Some(hash) if hash != 0 => hash,
            _ => segment.flow_hash(),
        };
        if obs.is_rst() {
            if !record_reset(tables, &obs, hash, recorded.as_ref()) {
                counters.resets_unrecorded += 1;
                // 1, 2, 4, 8...: a table that stays full is told of ever more rarely.
                if counters.resets_unrecorded.is_power_of_two() {
                    tables.warn_unrecorded(hook, counters.resets_unrecorded);
                }
            }
        } else {
            // A first payload with SYN or FIN (TCP Fast Open) is not read for a ClientHello.
            note_activity(tables, &segment, hook, hash, key.ifindex);
            if recorded.as_ref().is_some_and(Recorded::had_reset) {
                note_after_reset(tables, &obs, hash);
            }
        }
        if flags & (TCP_SYN | TCP_RST) != 0 {
            offer_event(tables, counters, &obs);
        }
    }
}

/// One packet, with where and when it was seen: what the tables need of it. The key is a
/// reference, not a field: its address goes to map helpers, and LLVM must then assume a helper
/// may write to all of the object it lies in. Kept apart, the other fields stay values (constant,
/// for the hook and the family) instead of being stored and reloaded around every helper call.
struct Observation<'a, 'k> {
    segment: TcpSegment<'a>,
    key: &'k FlowKey,
    sender: usize,
    hook: Hook,
    now: u64,
}

impl<'a, 'k> Observation<'a, 'k> {
    #[inline(always)]
    fn new<T: Tables>(
        tables: &T,
        segment: TcpSegment<'a>,
        key: &'k FlowKey,
        sender: usize,
        hook: Hook,
    ) -> Self {
        Observation {
            segment,
            key,
            sender,
            hook,
            now: tables.now(),
        }
    }

    #[inline(always)]
    fn flags(&self) -> u8 {
        self.segment.flags()
    }

    /// The L2 neighbour on this flow's path: the source of what arrives, the destination of what
    /// leaves. Its MAC as the native integers of its first four and last two bytes.
    #[inline(always)]
    fn neighbour_mac(&self) -> (u32, u16) {
        let eth = self.segment.eth;
        match self.hook {
            Hook::Ingress => (
                load!(u32, eth, EthHdr, src),
                load!(u16, eth, EthHdr, src + 4),
            ),
            Hook::Egress => (
                load!(u32, eth, EthHdr, dst),
                load!(u16, eth, EthHdr, dst + 4),
            ),
        }
    }

    #[inline(always)]
    fn seen_on(&self) -> u8 {
        self.hook.seen_on()
    }

    /// Sequence number just past this segment (SYN and FIN take one each).
    #[inline(always)]
    fn seq_end(&self) -> u32 {
        let flags = self.flags();
        let control = (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
        self.segment
            .seq()
            .wrapping_add(self.segment.payload_len())
            .wrapping_add(control)
    }

    #[inline(always)]
    fn is_rst(&self) -> bool {
        self.flags() & TCP_RST != 0
    }
}

/// A relaxed atomic add. The BPF target has no atomic read-modify-write in core::sync::atomic;
/// the intrinsic lowers to the BPF atomic add instruction.
#[inline(always)]
unsafe fn atomic_add(word: *mut u64, value: u64) {
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            word, value,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(word)
            .fetch_add(value, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Adds one packet's flags to the counts of its sender, atomically: the table is shared by all
/// CPUs. The BPF target has 64-bit atomics only, so each add covers two adjacent u32 counters,
/// `(syn, syn_ack)` and `(fin, rst)`; on little-endian BPF the second counter is the high half.
/// A low counter would need 2^32 packets on one flow to carry into its neighbour.
#[inline(always)]
fn add_flags(counts: *mut FlagCounts, flags: u8) {
    // Branch-free: SYN counts as syn, or as syn_ack (32 bits up) with ACK; FIN is bit 0 and RST
    // (0x04) moves up 30 bits to bit 32.
    const _: () = assert!(TCP_ACK << 1 == 32 && TCP_FIN == 1 && (TCP_RST as u64) << 30 == 1 << 32);
    let handshake = ((flags & TCP_SYN != 0) as u64) << ((flags & TCP_ACK) << 1);
    let teardown = (flags & TCP_FIN) as u64 | ((flags & TCP_RST) as u64) << 30;
    let words = counts as *mut u64;
    unsafe {
        if handshake != 0 {
            atomic_add(words, handshake);
        }
        if teardown != 0 {
            atomic_add(words.add(1), teardown);
        }
    }
}

/// Element `sender` of a two-element array behind `pair`, written as a branch: an indexed access
/// would carry a bounds check (and a panic path) that the verifier refuses.
#[inline(always)]
fn by_sender<T>(pair: *mut [T; 2], sender: usize) -> *mut T {
    unsafe {
        if sender == SENDER_LO {
            &raw mut (*pair)[0]
        } else {
            &raw mut (*pair)[1]
        }
    }
}

/// Zeroes a table entry in place with 8-byte stores. `write_bytes` would compile to a call to
/// compiler_builtins' memset, a byte-at-a-time loop (this toolchain's BPF backend does not inline
/// memset): 104 iterations cost a new flow about 35 ns (see BENCHMARKS.md).
#[inline(always)]
unsafe fn zero<T>(value: *mut T) {
    const {
        assert!(mem::size_of::<T>().is_multiple_of(8) && mem::align_of::<T>() >= 8);
    }
    let words = value as *mut u64;
    for i in 0..mem::size_of::<T>() / 8 {
        // Volatile, so that LLVM cannot fold the stores back into a memset.
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// The flow key as 32-bit words, for comparing and copying without memcmp or memcpy calls.
const KEY_WORDS: usize = mem::size_of::<FlowKey>() / 4;
const _: () =
    assert!(mem::size_of::<FlowKey>().is_multiple_of(4) && mem::align_of::<FlowKey>() >= 4);

/// Whether the key behind `stored` is `obs.key`. ORs the difference of the words rather than
/// stopping at the first: a chain of early exits is what LLVM turns back into memcmp. An IPv4 key
/// skips the words that are zero in every IPv4 key (all of each address but its first word): a
/// stored key that matches its family word is an IPv4 key too, so those words match. The family
/// comes from the observation, not the key, whose address has escaped to a map lookup: the parser
/// gives each family its own copy of this code, and there the test costs nothing.
#[inline(always)]
fn same_key(stored: *const FlowKey, obs: &Observation) -> bool {
    const fn word_of(offset: usize) -> usize {
        offset / 4
    }
    const ADDR_LO: usize = word_of(mem::offset_of!(FlowKey, addr_lo));
    const ADDR_HI: usize = word_of(mem::offset_of!(FlowKey, addr_hi));
    const PORTS: usize = word_of(mem::offset_of!(FlowKey, port_lo));
    const IFINDEX: usize = word_of(mem::offset_of!(FlowKey, ifindex));
    const FAMILY: usize = word_of(mem::offset_of!(FlowKey, family));
    const _: () = assert!(FAMILY + 1 == KEY_WORDS);
    let stored = stored as *const u32;
    let key = obs.key as *const FlowKey as *const u32;
    let differs = |i: usize| unsafe { stored.add(i).read_volatile() ^ key.add(i).read() };
    let mut difference =
        differs(ADDR_LO) | differs(ADDR_HI) | differs(PORTS) | differs(IFINDEX) | differs(FAMILY);
    if obs.segment.family() != FAMILY_IPV4 {
        for i in 1..4 {
            difference |= differs(ADDR_LO + i) | differs(ADDR_HI + i);
        }
    }
    difference == 0
}

/// Copies a table entry with 8-byte loads and stores, for the reason [`zero`] gives.
#[inline(always)]
unsafe fn copy_words<T>(dst: *mut T, src: *const T) {
    const {
        assert!(mem::size_of::<T>().is_multiple_of(8) && mem::align_of::<T>() >= 8);
    }
    let (dst, src) = (dst as *mut u64, src as *const u64);
    for i in 0..mem::size_of::<T>() / 8 {
        unsafe { dst.add(i).write_volatile(src.add(i).read()) };
    }
}

#[inline(always)]
fn copy_key(stored: *mut FlowKey, key: &FlowKey) {
    let stored = stored as *mut u32;
    let key = key as *const FlowKey as *const u32;
    for i in 0..KEY_WORDS {
        unsafe { stored.add(i).write_volatile(key.add(i).read()) };
    }
}

// The MACs the accounting writes start 4-aligned, for `store_mac`.
const _: () = assert!(
    mem::offset_of!(Baseline, mac) % 4 == 0
        && mem::align_of::<Baseline>() >= 4
        && mem::offset_of!(RstEvidence, mac) % 4 == 0
        && mem::align_of::<RstEvidence>() >= 4
);

/// Stores a MAC address read by [`Observation::neighbour_mac`]: a 4-byte and a 2-byte store. A
/// `[u8; 6]` copy from packet memory compiles to a call to memmove's byte loop, or to six byte
/// loads and six byte stores.
///
/// # Safety
/// `dst` is 4-byte aligned.
#[inline(always)]
unsafe fn store_mac(dst: &mut [u8; 6], (head, tail): (u32, u16)) {
    let dst = dst.as_mut_ptr();
    unsafe {
        (dst as *mut u32).write(head);
        (dst.add(4) as *mut u16).write(tail);
    }
}

/// `a` is at or after `b` in sequence space.
#[inline(always)]
fn seq_at_or_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// `a` is after `b` in sequence space.
#[inline(always)]
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The flow entry [`record_flags`] recorded a packet in. Its fields are read after the update, as
/// values, rather than returned from it: carried across the update they cost registers and
/// spills on every flag packet, and only RSTs and the packets of reset flows need them.
struct Recorded {
    entry: *mut FlowValue,
    /// The entry was created by this packet.
    created: bool,
}

impl Recorded {
    /// Whether the flow carried a RST, from either side. Asked for packets other than RSTs,
    /// which leave the RST counts alone: so it is also whether it did before this packet.
    #[inline(always)]
    fn had_reset(&self) -> bool {
        unsafe { ((*self.entry).sent_by[0].rst | (*self.entry).sent_by[1].rst) != 0 }
    }

    #[inline(always)]
    fn flow_hash(&self) -> u32 {
        unsafe { (*self.entry).flow_hash }
    }

    /// The highest sequence end of `sender`. Asked for RSTs, which leave the baseline alone: so
    /// it is the one from before this packet.
    #[inline(always)]
    fn max_seq_end(&self, sender: usize) -> u32 {
        unsafe { (*by_sender(&raw mut (*self.entry).baseline, sender)).max_seq_end }
    }
}

/// Records a segment that carries SYN, FIN or RST in its flow's entry. `None` when there was no
/// room to build a new entry.
#[inline(always)]
fn record_flags<T: Tables>(tables: &T, obs: &Observation) -> Option<Recorded> {
    let recorded = |entry, created| {
        update_flow(entry, obs);
        Some(Recorded { entry, created })
    };
    if let Some(entry) = tables.flow(obs.key) {
        return recorded(entry, false);
    }
    let scratch = tables.scratch()?;
    unsafe {
        zero(scratch);
        (*scratch).first_seen_ns = obs.now;
        (*scratch).flow_hash = obs.segment.flow_hash();
    }
    update_flow(scratch, obs);
    if tables.insert_flow(obs.key, unsafe { &*scratch }) {
        return Some(Recorded {
            entry: scratch,
            created: true,
        });
    }
    // Another CPU created the entry first: the packet updates theirs.
    match tables.flow(obs.key) {
        Some(theirs) => recorded(theirs, false),
        None => Some(Recorded {
            entry: scratch,
            created: false,
        }),
    }
}

/// Adds one packet to a flow entry: counts, times, and the sender's baseline unless it is a RST.
#[inline(always)]
fn update_flow(value: *mut FlowValue, obs: &Observation) {
    let flags = obs.flags();
    add_flags(
        by_sender(unsafe { &raw mut (*value).sent_by }, obs.sender),
        flags,
    );
    let baseline = by_sender(unsafe { &raw mut (*value).baseline }, obs.sender);
    let value = unsafe { &mut *value };
    value.last_seen_ns = obs.now;
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        if value.syn_ns == 0 {
            value.syn_ns = obs.now;
        }
        // Benign race: only a simultaneous open has two first SYNs, and either answer is right.
        if value.first_syn_from == FIRST_SYN_NONE {
            value.first_syn_from = if obs.sender == SENDER_LO {
                FIRST_SYN_LO
            } else {
                FIRST_SYN_HI
            };
        }
    }
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK && value.syn_ack_ns == 0 {
        value.syn_ack_ns = obs.now;
    }
    if !obs.is_rst() {
        record_baseline(unsafe { &mut *baseline }, obs);
    }
}

#[inline(always)]
fn record_baseline(baseline: &mut Baseline, obs: &Observation) {
    let seq_end = obs.seq_end();
    if baseline.seen_on == SEEN_NONE || seq_at_or_after(seq_end, baseline.max_seq_end) {
        baseline.max_seq_end = seq_end;
    }
    // SAFETY: asserted next to store_mac.
    unsafe { store_mac(&mut baseline.mac, obs.neighbour_mac()) };
    baseline.ip_id = obs.segment.ip_id();
    baseline.ttl = obs.segment.ttl();
    baseline.seen_on = obs.seen_on();
}

/// The reset-table entry of `key`, among the [`RESET_WAYS`] of its set. With `claim`, a flow
/// without one takes an empty entry of the set; else the newest entry of an unanswered flow;
/// else a connection's entry idle for [`RESET_ENTRY_IDLE_NS`]. The newest unanswered one gives
/// way, not the oldest: a flood of refusals churns one entry and leaves the evidence from before
/// it. The entry is cleared and takes the class `claim` gives, asked only then: a flow's later
/// RSTs find their entry without it.
#[inline(always)]
fn reset_entry<T: Tables>(
    tables: &T,
    obs: &Observation,
    hash: u32,
    claim: Option<impl FnOnce() -> u8>,
) -> Option<*mut ResetEntry> {
    let set = reset_set(hash, tables.reset_set_mask());
    let mut ways = [core::ptr::null_mut::<ResetEntry>(); RESET_WAYS as usize];
    for (way, slot) in ways.iter_mut().enumerate() {
        let entry = tables.reset_entry(set + way as u32)?;
        if same_key(unsafe { &raw const (*entry).key }, obs) {
            return Some(entry);
        }
        *slot = entry;
    }
    let claim = claim?;
    let mut victim = core::ptr::null_mut();
    let mut victim_rank = Occupant::Protected;
    for entry in ways {
        let rank = Occupant::of(unsafe { &*entry }, obs.now);
        // Ties: the first empty entry (they fill in order), the last unanswered one (the newest
        // of those that came in order), the first idle connection.
        if rank < victim_rank || (rank == victim_rank && rank == Occupant::Unanswered) {
            victim = entry;
            victim_rank = rank;
        }
    }
    if victim_rank == Occupant::Protected {
        return None;
    }
    // Racy on purpose: two CPUs claiming one entry at the same instant mix their evidence.
    unsafe {
        zero(&raw mut (*victim).evidence);
        zero(&raw mut (*victim).flow);
        copy_key(&raw mut (*victim).key, obs.key);
        (*victim).class = claim();
    }
    Some(victim)
}

/// What giving an entry of the reset table to a new flow would lose, least first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Occupant {
    Empty,
    Unanswered,
    IdleConnection,
    Protected,
}

impl Occupant {
    #[inline(always)]
    fn of(entry: &ResetEntry, now: u64) -> Occupant {
        if entry.is_empty() {
            Occupant::Empty
        } else if entry.class != RESET_OF_CONNECTION {
            Occupant::Unanswered
        } else if now.wrapping_sub(entry.last_rst_ns()) >= RESET_ENTRY_IDLE_NS {
            Occupant::IdleConnection
        } else {
            Occupant::Protected
        }
    }
}

/// Keeps what a RST says about who sent it, and opens the gate so that the plain packets after
/// it are examined too. Returns false when the reset table had no room for the flow.
#[inline(always)]
fn record_reset<T: Tables>(
    tables: &T,
    obs: &Observation,
    hash: u32,
    flow: Option<&Recorded>,
) -> bool {
    if let Some(budget) = tables.gate(gate_slot(hash)) {
        unsafe { *budget = RESET_GATE_BUDGET };
    }
    let class = || {
        if was_connection(flow, activity_of(tables, obs, hash), obs) {
            RESET_OF_CONNECTION
        } else {
            RESET_OF_UNANSWERED
        }
    };
    let Some(entry) = reset_entry(tables, obs, hash, Some(class)) else {
        return false;
    };
    let rst = by_sender(unsafe { &raw mut (*entry).evidence.by_sender }, obs.sender);
    let max_seq_before = flow.map_or(0, |flow| flow.max_seq_end(obs.sender));
    if unsafe { (*rst).first_rst_ns } == 0 {
        let rst = unsafe { &mut *rst };
        let activity = activity_of(tables, obs, hash);
        (rst.reset_delay_ms, rst.idle_before_ms) = reset_timing(tables, obs, activity);
        keep_payload(tables, unsafe { &mut (*entry).evidence.payload }, obs);
        if let Some(flow) = flow {
            unsafe { copy_words(&raw mut (*entry).flow, flow.entry) };
        }
    }
    update_reset(rst, obs, max_seq_before);
    true
}

/// Whether the flow was a connection when this RST came: payload had passed either way, or the
/// RST's sender is the endpoint that answered the SYN. Not a refusal of a SYN, nor the answer of
/// a host that never sent the SYN its SYN/ACK answered (the backscatter of a spoofed SYN flood),
/// nor a RST of a flow never seen before.
#[inline(always)]
fn was_connection(flow: Option<&Recorded>, activity: Option<&Activity>, obs: &Observation) -> bool {
    const EITHER_PAYLOAD: u32 = ACTIVITY_PAYLOAD_SEEN | ACTIVITY_PAYLOAD_SEEN << 1;
    if activity.is_some_and(|slot| slot.state & EITHER_PAYLOAD != 0) {
        return true;
    }
    let Some(flow) = flow else {
        return false;
    };
    let value = unsafe { &*flow.entry };
    let syn_from_other = if obs.sender == SENDER_LO {
        FIRST_SYN_HI
    } else {
        FIRST_SYN_LO
    };
    value.syn_ack_ns != 0 && value.first_syn_from == syn_from_other
}

/// The flow's activity slot, when the flow is the latest to have written it.
#[inline(always)]
fn activity_of<'t, T: Tables>(tables: &'t T, obs: &Observation, hash: u32) -> Option<&'t Activity> {
    let tag = activity_tag(hash, obs.key.ifindex);
    let slot = unsafe { &*tables.activity(tag)? };
    (slot.tag == tag).then_some(slot)
}

/// How long before the RST the other side last sent something new, and how long the connection
/// had been silent before the packet that preceded the RST: read from the activity slot, which
/// RSTs leave alone. Unknown when another flow has taken the slot since.
#[inline(always)]
fn reset_timing<T: Tables>(
    tables: &T,
    obs: &Observation,
    activity: Option<&Activity>,
) -> (u32, u32) {
    let Some(slot) = activity else {
        return (MS_UNKNOWN, MS_UNKNOWN);
    };
    let now = tables.ticks();
    let other = other_hook(obs.hook);
    let delay = if slot.state & (ACTIVITY_SEQ_KNOWN << other as u32) != 0 {
        tables.ticks_to_ms(now.wrapping_sub(*by_hook(&slot.new_tick, other)))
    } else {
        MS_UNKNOWN
    };
    let idle = if slot.gap_ticks == MS_UNKNOWN {
        MS_UNKNOWN
    } else {
        tables.ticks_to_ms(slot.gap_ticks)
    };
    (delay, idle)
}

/// The first bytes of a RST's payload, when it is the first of its flow to carry one.
#[inline(always)]
fn keep_payload<T: Tables>(tables: &T, payload: &mut RstPayload, obs: &Observation) {
    let len = obs.segment.payload_len();
    if len == 0 || payload.len != 0 {
        return;
    }
    // Checked after an optimisation barrier, as the verifier needs to see the bounds.
    let copied = core::hint::black_box(len.min(RST_PAYLOAD_BYTES as u32));
    if copied == 0 || copied > RST_PAYLOAD_BYTES as u32 {
        return;
    }
    // SAFETY: `copied` is at most the payload array's length.
    if unsafe {
        tables.copy_packet(
            obs.segment.payload_offset(),
            payload.bytes.as_mut_ptr(),
            copied,
        )
    } {
        payload.len = len.min(u16::MAX as u32) as u16;
        payload.sender = obs.sender as u8;
    }
}

#[inline(always)]
fn update_reset(rst: *mut RstEvidence, obs: &Observation, max_seq_before: u32) {
    let rst = unsafe { &mut *rst };
    let seq = obs.segment.seq();
    if rst.first_rst_ns == 0 {
        rst.first_rst_ns = obs.now;
        // SAFETY: asserted next to store_mac.
        unsafe { store_mac(&mut rst.mac, obs.neighbour_mac()) };
        rst.ip_id = obs.segment.ip_id();
        rst.ttl = obs.segment.ttl();
        rst.seen_on = obs.seen_on();
        rst.seq = seq;
        rst.ack = if obs.flags() & TCP_ACK != 0 {
            obs.segment.ack()
        } else {
            0
        };
        rst.max_seq_before = max_seq_before;
    } else {
        if seq == rst.seq {
            rst.same_seq_rsts = rst.same_seq_rsts.saturating_add(1);
        }
        if obs.now.wrapping_sub(rst.last_rst_ns) < BACK_TO_BACK_NS {
            let jump = seq
                .wrapping_sub(rst.last_seq)
                .min(rst.last_seq.wrapping_sub(seq));
            if jump > rst.max_seq_jump {
                rst.max_seq_jump = jump;
            }
        }
    }
    rst.last_rst_ns = obs.now;
    rst.last_seq = seq;
}

/// Spends one packet of the reset gate's budget at `slot`; false when the gate is closed, which
/// is the answer for nearly every packet.
#[inline(always)]
fn take_gate_budget<T: Tables>(tables: &T, slot: u32) -> bool {
    let Some(budget) = tables.gate(slot) else {
        return false;
    };
    let budget = unsafe { &mut *budget };
    if *budget == 0 {
        return false;
    }
    // Racy on purpose: a lost decrement only examines one packet more.
    *budget -= 1;
    true
}

/// For a packet other than a RST whose flow recently carried one: counts what the RST's sender
/// went on sending.
#[inline(always)]
fn note_after_reset<T: Tables>(tables: &T, obs: &Observation, hash: u32) {
    let Some(entry) = reset_entry(tables, obs, hash, None::<fn() -> u8>) else {
        return;
    };
    let rst = by_sender(unsafe { &raw mut (*entry).evidence.by_sender }, obs.sender);
    if unsafe { (*rst).first_rst_ns } == 0 {
        return;
    }
    let payload_len = obs.segment.payload_len();
    let beyond = payload_len > 0 && seq_at_or_after(obs.segment.seq(), unsafe { (*rst).seq });
    let bytes = if beyond { payload_len as u64 } else { 0 };
    // packets_after and bytes_beyond are adjacent u32s on an 8-byte boundary: one 64-bit add.
    unsafe { atomic_add(&raw mut (*rst).packets_after as *mut u64, 1 | bytes << 32) };
    let rst = unsafe { &mut *rst };
    // A SYN starts a new connection on the same ports, whose numbers say nothing of this one.
    if obs.flags() & (TCP_ACK | TCP_SYN) == TCP_ACK && rst.ack != 0 {
        let acked = obs.segment.ack().wrapping_sub(rst.ack);
        // Within a window: a later connection's numbers are random, and the one in 2^8 of them
        // that lands here still needs the gate to be open.
        if acked > rst.ack_beyond && acked < ACK_BEYOND_WINDOW {
            rst.ack_beyond = acked;
        }
    }
}

/// How far beyond a RST's acknowledgement a later ACK of its sender may go and still count as
/// acknowledging this connection's data (16 MiB of it in flight).
const ACK_BEYOND_WINDOW: u32 = 1 << 24;

/// The activity slot of the packet's flow learns of it: when, after how long a silence, and
/// whether it carried new sequence space. Every TCP packet but RSTs does this; it is what lets a
/// RST say after what, and how long after, it came. One array slot, no hash lookup: a slot taken
/// by another flow only makes those answers unknown (the tag tells). Returns whether the packet
/// is its direction's first payload after its SYN (or SYN/ACK): a client's may be a TLS
/// ClientHello. Once per direction of a connection.
#[inline(always)]
fn note_activity<T: Tables>(
    tables: &T,
    segment: &TcpSegment,
    hook: Hook,
    hash: u32,
    ifindex: u32,
) -> bool {
    let tag = activity_tag(hash, ifindex);
    let Some(slot) = tables.activity(tag) else {
        return false;
    };
    let slot = unsafe { &mut *slot };
    let now = tables.ticks();
    if slot.tag == tag {
        slot.gap_ticks = now.wrapping_sub(slot.last_tick);
    } else {
        slot.tag = tag;
        slot.gap_ticks = MS_UNKNOWN;
        slot.state = 0;
    }
    slot.last_tick = now;
    let flags = segment.flags();
    let payload_len = segment.payload_len();
    let space = payload_len + (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
    if space == 0 {
        return false;
    }
    let end = segment.seq().wrapping_add(space);
    let direction = hook as u32;
    let seq_end = by_hook_mut(&mut slot.seq_end, hook);
    if slot.state & (ACTIVITY_SEQ_KNOWN << direction) != 0 && !seq_after(end, *seq_end) {
        return false;
    }
    *seq_end = end;
    *by_hook_mut(&mut slot.new_tick, hook) = now;
    let mut state = slot.state | ACTIVITY_SEQ_KNOWN << direction;
    let mut first_payload = false;
    if flags & TCP_SYN != 0 {
        state |= ACTIVITY_SYN_SEEN << direction;
    } else if payload_len > 0 && state & (ACTIVITY_PAYLOAD_SEEN << direction) == 0 {
        state |= ACTIVITY_PAYLOAD_SEEN << direction;
        first_payload = state & (ACTIVITY_SYN_SEEN << direction) != 0;
    }
    slot.state = state;
    first_payload
}

/// Keeps the server name of the TLS ClientHello `packet` carries, if it carries one: the
/// client's first payload, which the accounting passed on ([`Tables::read_client_hello_next`]).
#[inline(always)]
pub fn read_client_hello<T: Tables>(tables: &T, packet: Packet<'_>) {
    let _ = parse(packet, |segment: TcpSegment| {
        let Some(name) = tables.hello_scratch() else {
            return;
        };
        let name = unsafe { &mut *name };
        if tls::server_name(
            tables,
            segment.payload_offset(),
            segment.payload_len(),
            name,
        ) {
            let (key, _) = segment.flow_key(tables.ifindex());
            tables.insert_hello(&key, name);
        }
    });
}

/// The other hook: on one interface, the other direction of the connection.
#[inline(always)]
fn other_hook(hook: Hook) -> Hook {
    match hook {
        Hook::Ingress => Hook::Egress,
        Hook::Egress => Hook::Ingress,
    }
}

/// Element `hook` of a by-hook pair, as a branch on what is a constant in each program.
#[inline(always)]
fn by_hook(pair: &[u32; 2], hook: Hook) -> &u32 {
    match hook {
        Hook::Ingress => &pair[0],
        Hook::Egress => &pair[1],
    }
}

#[inline(always)]
fn by_hook_mut(pair: &mut [u32; 2], hook: Hook) -> &mut u32 {
    match hook {
        Hook::Ingress => &mut pair[0],
        Hook::Egress => &mut pair[1],
    }
}

/// Sends a SYN, SYN/ACK or RST to `flagtrace watch` while it holds its lease and this CPU's
/// budget allows: a flood of them must not turn into a flood of events.
#[inline(always)]
fn offer_event<T: Tables>(tables: &T, counters: &mut GlobalCounters, obs: &Observation) {
    let Some(watch) = tables.watch() else {
        return;
    };
    let watch = unsafe { &*watch };
    if obs.now >= watch.lease_until_ns {
        return;
    }
    if take_event_credit(tables, watch, obs.now) && tables.send_event(obs.hook, obs.now) {
        counters.events += 1;
    } else {
        counters.events_dropped += 1;
    }
}

/// One second's worth of credit: the price of one event.
const EVENT_PRICE: u64 = 1_000_000_000;

/// The token bucket: `rate_per_sec` events a second, at most `burst` at once.
#[inline(always)]
fn take_event_credit<T: Tables>(tables: &T, watch: &WatchConfig, now: u64) -> bool {
    let Some(budget) = tables.event_budget() else {
        return false;
    };
    let budget = unsafe { &mut *budget };
    // Bounded so that the product below cannot overflow: a 4-second gap refills any bucket.
    let elapsed = now.saturating_sub(budget.updated_ns).min(1 << 32);
    let full = watch.burst as u64 * EVENT_PRICE;
    let credit = budget
        .credit
        .saturating_add(elapsed * watch.rate_per_sec as u64);
    budget.updated_ns = now;
    if credit < EVENT_PRICE {
        budget.credit = credit;
        return false;
    }
    budget.credit = credit.min(full).saturating_sub(EVENT_PRICE);
    true
}

impl TcpSegment<'_> {
    /// This packet's [`flow_hash`].
    #[inline(always)]
    pub fn flow_hash(&self) -> u32 {
        flow_hash(&self.src(), self.src_port(), &self.dst(), self.dst_port())
    }
}
