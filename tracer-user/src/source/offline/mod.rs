//! The kernel programs' tables in plain memory, so that `flagtrace pcap` accounts a capture with
//! the very code the kernel runs ([`tracer_ebpf::account`]): one implementation, hence the same
//! counts, states and evidence for the same packets.
//!
//! Differences from the kernel's maps, each on purpose:
//! - the flow table has no capacity: a capture is analysed whole, and the kernel's LRU
//!   eviction (`attach --max-flows`) would only lose flows;
//! - the reset table and the reset gate have the kernel's default sizes
//!   ([`DEFAULT_MAX_RESETS`], [`RESET_GATE_SLOTS`]), so that reset evidence is kept and dropped
//!   as a default attachment keeps and drops it;
//! - the activity table has a slot per flow of a default attachment ([`DEFAULT_MAX_FLOWS`]);
//! - the reset and activity tables take memory only where packets touched them
//!   ([`SparseArray`]): a capture pays for what it holds, not for every interface's tables;
//! - times are the capture's (Unix nanoseconds), not the kernel's monotonic clock, and the
//!   activity table's ticks are its milliseconds;
//! - nobody watches a file: no events.

use std::{
    cell::{Cell, RefCell, UnsafeCell},
    collections::HashMap,
};

use tracer_common::{
    activity_capacity, activity_slot, reset_capacity, reset_set_mask, Activity, EventBudget,
    FlowKey, FlowValue, GlobalCounters, Hook, ResetEntry, TlsName, WatchConfig, DEFAULT_MAX_FLOWS,
    DEFAULT_MAX_RESETS, MS_UNKNOWN, RESET_GATE_SLOTS,
};
use tracer_ebpf::{
    account::{account, read_client_hello, Tables},
    Packet,
};

mod sparse;

use sparse::SparseArray;

use crate::{
    analysis::flow::{flow_records, FlowRecord},
    sys::{clock::ClockSnapshot, maps::Counters},
};

/// The tables [`account`] works on, for one capture. Entries hand out raw pointers, as BPF map
/// lookups do, so each lives in an [`UnsafeCell`] at an address that does not move: flow
/// values are boxed, the arrays never grow. Single-threaded (not `Sync`), like one CPU.
pub struct HostTables {
    counters: [UnsafeCell<GlobalCounters>; 2],
    gate: Box<[UnsafeCell<u32>]>,
    flows: RefCell<HashMap<FlowKey, Box<UnsafeCell<FlowValue>>>>,
    resets: SparseArray<ResetEntry>,
    reset_set_mask: u32,
    activity: SparseArray<Activity>,
    /// The server names of the ClientHellos; without the kernel's capacity, like the flows.
    hellos: RefCell<HashMap<FlowKey, TlsName>>,
    hello_scratch: UnsafeCell<TlsName>,
    scratch: UnsafeCell<FlowValue>,
    /// The time of the packet being accounted.
    now: Cell<u64>,
    /// The interface of the packet being accounted.
    ifindex: Cell<u32>,
    /// The frame being accounted, as (start, length): [`Tables::copy_packet`] reads it.
    frame: Cell<(*const u8, usize)>,
}

impl Default for HostTables {
    fn default() -> Self {
        HostTables::new()
    }
}

impl HostTables {
    pub fn new() -> HostTables {
        let resets = reset_capacity(DEFAULT_MAX_RESETS);
        HostTables {
            counters: Default::default(),
            gate: (0..RESET_GATE_SLOTS).map(|_| UnsafeCell::new(0)).collect(),
            flows: RefCell::default(),
            resets: SparseArray::new(resets as usize),
            reset_set_mask: reset_set_mask(resets),
            activity: SparseArray::new(activity_capacity(DEFAULT_MAX_FLOWS) as usize),
            hellos: RefCell::default(),
            hello_scratch: UnsafeCell::default(),
            scratch: UnsafeCell::default(),
            now: Cell::new(0),
            ifindex: Cell::new(0),
            frame: Cell::new((std::ptr::null(), 0)),
        }
    }

    /// Accounts one Ethernet frame seen by `hook` on `ifindex` at `unix_ns`, as the kernel
    /// program of that hook would.
    pub fn account(&self, frame: &[u8], ifindex: u32, hook: Hook, unix_ns: u64) {
        // 0 means "never" in the tables (`syn_ns`, `first_rst_ns`): a packet without a time
        // (a pcapng simple packet block) is stamped just after the epoch instead.
        self.now.set(unix_ns.max(1));
        self.ifindex.set(ifindex);
        self.frame.set((frame.as_ptr(), frame.len()));
        let start = frame.as_ptr() as usize;
        account(self, Packet::new(start, start + frame.len()), hook);
        self.frame.set((std::ptr::null(), 0));
    }

    /// The counters by hook.
    pub fn counters(&self) -> Counters {
        // SAFETY: no accounting runs while `&self` is borrowed here (single-threaded).
        let read = |hook: Hook| unsafe { *self.counters[hook as usize].get() };
        Counters {
            ingress: read(Hook::Ingress),
            egress: read(Hook::Egress),
        }
    }

    /// Number of flows.
    pub fn flow_count(&self) -> usize {
        self.flows.borrow().len()
    }

    /// Every flow, with its entry.
    pub fn flows(&self) -> HashMap<FlowKey, FlowValue> {
        // SAFETY: as in `counters`.
        self.flows
            .borrow()
            .iter()
            .map(|(key, value)| (*key, unsafe { *value.get() }))
            .collect()
    }

    /// Every flow in the reset table, with its entry.
    pub fn resets(&self) -> HashMap<FlowKey, ResetEntry> {
        // SAFETY: as in `counters`.
        unsafe { self.resets.accessed() }
            .filter(|entry| !entry.is_empty())
            .map(|entry| (entry.key, *entry))
            .collect()
    }

    /// Capacity of the reset table.
    pub fn reset_capacity(&self) -> u32 {
        self.resets.len() as u32
    }

    /// Capacity of the activity table.
    pub fn activity_slots(&self) -> u32 {
        self.activity.len() as u32
    }

    /// The reset gate's budgets, in slot order.
    pub fn reset_gate(&self) -> Vec<u32> {
        // SAFETY: as in `counters`.
        self.gate
            .iter()
            .map(|slot| unsafe { *slot.get() })
            .collect()
    }

    /// Every flow as a record, with its reset evidence when the reset table has some: what
    /// [`super::live::flow_records`] gives for an attachment. The stamps are already Unix time.
    pub fn flow_records(&self) -> anyhow::Result<Vec<FlowRecord>> {
        let flows = self.flows.borrow();
        // SAFETY: as in `counters`.
        let flows = flows
            .iter()
            .map(|(key, value)| (key, unsafe { &*value.get() }));
        flow_records(
            flows,
            &self.resets(),
            &self.hellos.borrow(),
            &ClockSnapshot::unix(),
        )
    }
}

impl Tables for HostTables {
    fn counters(&self, hook: Hook) -> Option<*mut GlobalCounters> {
        self.counters.get(hook as usize).map(UnsafeCell::get)
    }

    fn gate(&self, slot: u32) -> Option<*mut u32> {
        self.gate.get(slot as usize).map(UnsafeCell::get)
    }

    fn flow(&self, key: &FlowKey) -> Option<*mut FlowValue> {
        self.flows.borrow().get(key).map(|value| value.get())
    }

    fn insert_flow(&self, key: &FlowKey, value: &FlowValue) -> bool {
        let mut flows = self.flows.borrow_mut();
        if flows.contains_key(key) {
            return false;
        }
        flows.insert(*key, Box::new(UnsafeCell::new(*value)));
        true
    }

    fn reset_entry(&self, index: u32) -> Option<*mut ResetEntry> {
        self.resets.get(index as usize)
    }

    fn reset_set_mask(&self) -> u32 {
        self.reset_set_mask
    }

    fn scratch(&self) -> Option<*mut FlowValue> {
        Some(self.scratch.get())
    }

    fn now(&self) -> u64 {
        self.now.get()
    }

    fn activity(&self, tag: u32) -> Option<*mut Activity> {
        let slot = activity_slot(tag, self.activity.len() as u32);
        self.activity.get(slot as usize)
    }

    fn ticks(&self) -> u32 {
        (self.now.get() / 1_000_000) as u32
    }

    fn ticks_to_ms(&self, ticks: u32) -> u32 {
        ticks.min(MS_UNKNOWN - 1)
    }

    unsafe fn copy_packet(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        let (start, frame_len) = self.frame.get();
        let (offset, len) = (offset as usize, len as usize);
        if start.is_null() || offset.saturating_add(len) > frame_len {
            return false;
        }
        // SAFETY: the frame is borrowed for the whole of `account`, the only caller; the range
        // is inside it; `dst` has room for `len` bytes (the trait's contract).
        unsafe { std::ptr::copy_nonoverlapping(start.add(offset), dst, len) };
        true
    }

    fn read_client_hello_next(&self, _hook: Hook) {
        let (start, len) = self.frame.get();
        let start = start as usize;
        read_client_hello(self, Packet::new(start, start + len));
    }

    fn hello_scratch(&self) -> Option<*mut TlsName> {
        Some(self.hello_scratch.get())
    }

    fn insert_hello(&self, key: &FlowKey, name: &TlsName) {
        self.hellos.borrow_mut().insert(*key, *name);
    }

    fn ifindex(&self) -> u32 {
        self.ifindex.get()
    }

    fn watch(&self) -> Option<*const WatchConfig> {
        None
    }

    fn event_budget(&self) -> Option<*mut EventBudget> {
        None
    }

    fn send_event(&self, _hook: Hook, _now: u64) -> bool {
        false
    }

    fn warn_unrecorded(&self, hook: Hook, count: u64) {
        log::warn!(
            "reset table full: {count} RSTs on {} kept no evidence",
            hook.name()
        );
    }
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;
    use tracer_common::{
        FlagCounts, FIRST_SYN_HI, FIRST_SYN_LO, SEEN_EGRESS, SEEN_INGRESS, SENDER_LO,
    };

    use super::*;
    use crate::analysis::flow::State;

    const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const GATEWAY_MAC: [u8; 6] = [0x00, 0x01, 0xd7, 0, 0, 0x02];
    const CLIENT: [u8; 4] = [10, 0, 0, 1];
    const SERVER: [u8; 4] = [10, 0, 0, 2];

    /// A TCP frame between the client (port 40000) and the server (port 443), as the client's
    /// interface sees it: `from_client` leaves, the rest arrives through the gateway.
    fn frame(
        from_client: bool,
        ttl: u8,
        seq: u32,
        flags: impl FnOnce(
            etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        ) -> etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        payload: &[u8],
    ) -> Vec<u8> {
        let builder = if from_client {
            PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC)
                .ipv4(CLIENT, SERVER, ttl)
                .tcp(40000, 443, seq, 64240)
        } else {
            PacketBuilder::ethernet2(GATEWAY_MAC, CLIENT_MAC)
                .ipv4(SERVER, CLIENT, ttl)
                .tcp(443, 40000, seq, 64240)
        };
        let mut bytes = Vec::new();
        flags(builder).write(&mut bytes, payload).unwrap();
        bytes
    }

    fn key_and_client_side() -> (FlowKey, usize) {
        let word = |ip: [u8; 4]| [u32::from_ne_bytes(ip), 0, 0, 0];
        FlowKey::from_packet(
            tracer_common::FAMILY_IPV4,
            7,
            word(CLIENT),
            40000,
            word(SERVER),
            443,
        )
    }

    /// The first flight of `openssl s_client -connect ... -servername customerweb` (OpenSSL
    /// 3.0): one TLS record holding the ClientHello.
    const OPENSSL_CLIENT_HELLO: &[u8] =
        include_bytes!("../../../../tests/fixtures/openssl-client-hello.bin");

    /// The client's handshake, then `payload` as its first data, through fresh tables; the flow's
    /// record.
    fn first_payload(payload: &[u8]) -> FlowRecord {
        let tables = handshake();
        tables.account(
            &frame(true, 64, 101, |b| b.ack(901), &[]),
            7,
            Hook::Egress,
            T + 2_000,
        );
        tables.account(
            &frame(true, 64, 101, |b| b.psh().ack(901), payload),
            7,
            Hook::Egress,
            T + 3_000,
        );
        let mut records = tables.flow_records().unwrap();
        assert_eq!(records.len(), 1);
        records.pop().unwrap()
    }

    #[test]
    fn a_client_hello_leaves_its_server_name() {
        assert_eq!(
            first_payload(OPENSSL_CLIENT_HELLO).tls_sni.as_deref(),
            Some("customerweb")
        );
        assert_eq!(first_payload(b"GET / HTTP/1.1\r\n\r\n").tls_sni, None);
    }

    #[test]
    fn a_cut_client_hello_gives_its_name_only_when_whole() {
        let name_end = OPENSSL_CLIENT_HELLO
            .windows(b"customerweb".len())
            .position(|window| window == b"customerweb")
            .unwrap()
            + b"customerweb".len();
        for len in 1..OPENSSL_CLIENT_HELLO.len() {
            let sni = first_payload(&OPENSSL_CLIENT_HELLO[..len]).tls_sni;
            let expected = (len >= name_end).then(|| "customerweb".to_owned());
            assert_eq!(sni, expected, "cut at {len}");
        }
    }

    #[test]
    fn a_long_or_odd_server_name_is_cut_and_escaped() {
        // The openssl ClientHello with its name's bytes changed, and its length (2 bytes before
        // the name) kept: a name of 11 bytes with a control byte and a non-ASCII one.
        let at = OPENSSL_CLIENT_HELLO
            .windows(11)
            .position(|window| window == b"customerweb")
            .unwrap();
        let mut odd = OPENSSL_CLIENT_HELLO.to_vec();
        odd[at..at + 11].copy_from_slice(b"cust\x07mer\xffeb");
        assert_eq!(
            first_payload(&odd).tls_sni.as_deref(),
            Some("cust\\x07mer\\xffeb")
        );
        // A length field beyond what the table keeps: the first bytes, marked as cut.
        let mut long = OPENSSL_CLIENT_HELLO.to_vec();
        long[at - 2..at].copy_from_slice(&100u16.to_be_bytes());
        long.resize(at + 100 + 300, b'x');
        let sni = first_payload(&long).tls_sni.unwrap();
        assert!(
            sni.starts_with("customerweb\\x00") && sni.ends_with("..."),
            "{sni}"
        );
    }

    /// The time of the first packet of the tests' connections.
    const T: u64 = 1_700_000_000_000_000_000;

    /// Fresh tables that saw the client's SYN at [`T`] and the server's SYN/ACK 1 µs later.
    fn handshake() -> HostTables {
        let tables = HostTables::new();
        tables.account(&frame(true, 64, 100, |b| b.syn(), &[]), 7, Hook::Egress, T);
        tables.account(
            &frame(false, 57, 900, |b| b.syn().ack(101), &[]),
            7,
            Hook::Ingress,
            T + 1_000,
        );
        tables
    }

    #[test]
    fn syn_syn_ack_rst_gives_the_kernels_entry() {
        let tables = handshake();
        tables.account(
            &frame(false, 64, 901, |b| b.rst().ack(101), &[]),
            7,
            Hook::Ingress,
            T + 2_000,
        );
        // A plain packet after the RST: the gate is open, so the server's evidence counts it.
        tables.account(
            &frame(false, 57, 901, |b| b.ack(101), b"late"),
            7,
            Hook::Ingress,
            T + 3_000,
        );

        let (key, client) = key_and_client_side();
        let server = 1 - client;
        let value = unsafe { *tables.flow(&key).expect("the flow's entry") };
        let mut sent_by = [FlagCounts::default(); 2];
        sent_by[client].syn = 1;
        sent_by[server].syn_ack = 1;
        sent_by[server].rst = 1;
        assert_eq!(value.sent_by, sent_by);
        assert_eq!(
            (
                value.first_seen_ns,
                value.last_seen_ns,
                value.syn_ns,
                value.syn_ack_ns
            ),
            (T, T + 2_000, T, T + 1_000)
        );
        let first_syn = if client == SENDER_LO {
            FIRST_SYN_LO
        } else {
            FIRST_SYN_HI
        };
        assert_eq!(value.first_syn_from, first_syn);
        // Baselines: the client's SYN left towards the gateway; the server's SYN/ACK arrived
        // from it. The RST does not move the server's baseline.
        let (client_base, server_base) = (value.baseline[client], value.baseline[server]);
        assert_eq!(
            (
                client_base.mac,
                client_base.seen_on,
                client_base.max_seq_end
            ),
            (GATEWAY_MAC, SEEN_EGRESS, 101)
        );
        assert_eq!(
            (server_base.mac, server_base.ttl, server_base.seen_on),
            (GATEWAY_MAC, 57, SEEN_INGRESS)
        );
        assert_eq!(server_base.max_seq_end, 901);

        let records = tables.flow_records().unwrap();
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record.client.to_string(), "10.0.0.1:40000");
        assert_eq!(record.state, State::Reset);
        let rst = record
            .server_evidence
            .rst
            .as_deref()
            .expect("the server's RST evidence");
        assert_eq!(
            (rst.ttl, rst.seq, rst.ack, rst.hook),
            (64, 901, 101, Hook::Ingress)
        );
        assert_eq!((rst.first_ns, rst.max_seq_before), (T + 2_000, 901));
        assert_eq!((rst.packets_after, rst.bytes_beyond), (1, 4));
        assert!(record.client_evidence.rst.is_none());

        let counters = tables.counters();
        assert_eq!(
            (
                counters.egress.tcp(),
                counters.egress.syn(),
                counters.egress.flows_created
            ),
            (1, 1, 1)
        );
        assert_eq!(
            (
                counters.ingress.tcp(),
                counters.ingress.syn_ack(),
                counters.ingress.rst()
            ),
            (3, 1, 1)
        );
        assert_eq!(tables.flow_count(), 1);
    }

    #[test]
    fn other_frames_are_counted_not_tracked() {
        let tables = HostTables::new();
        let mut udp = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC)
            .ipv4(CLIENT, SERVER, 64)
            .udp(53, 53)
            .write(&mut udp, &[])
            .unwrap();
        tables.account(&udp, 1, Hook::Egress, 5);
        tables.account(&udp[..20], 1, Hook::Ingress, 6);
        tables.account(&frame(true, 64, 1, |b| b.ack(1), b"x"), 1, Hook::Egress, 7);
        let counters = tables.counters();
        assert_eq!(
            (counters.egress.non_tcp, counters.egress.tcp()),
            (1, 1),
            "{counters:?}"
        );
        assert_eq!(counters.ingress.parse_errors, 1);
        // A plain data packet never creates a flow: the kernel only looks up flag packets.
        assert_eq!(tables.flow_count(), 0);
    }
}
