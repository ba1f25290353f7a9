//! BPF_PROG_TEST_RUN of the real programs on frames built with etherparse. After every frame:
//! the program passed it unchanged, and the flow table and both hooks' counters are exactly what
//! the contract says (see flagtrace_tests::model). The expected verdict of every frame is written
//! here by hand; the etherparse oracle of the differential test must agree with each of them.
//!
//! Both programs run every frame, each in a tracer of its own (XDP counts on the Ingress index,
//! TC on Egress; the other index must stay zero). Under test run both see the loopback device.

use etherparse::{
    ip_number, ArpEthIpv4Packet, ArpOperation, IpFragOffset, IpHeaders, IpNumber, Ipv4Header,
    Ipv4Options, Ipv6Extensions, Ipv6FlowLabel, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader,
    Ipv6RoutingExtensions, PacketBuilder, PacketBuilderStep, TcpHeader, VlanId,
};
use flagtrace_tests::{
    frame::{Ext, FrameSpec, IpSpec, L4Spec, CLIENT_MAC, SERVER_MAC},
    hex,
    model::{FlowModel, Window},
    oracle::{self, ipv4_words, ipv6_words, Segment, Verdict},
    tracer::{pass_verdict, test_run_accepts, test_run_ifindex, LoadedTracer},
};
use tracer_common::{
    FlagCounts, FlowKey, Hook, FAMILY_IPV4, FAMILY_IPV6, FIRST_SYN_HI, FIRST_SYN_LO,
    FIRST_SYN_NONE, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

const CLIENT_V4: [u8; 4] = [10, 0, 0, 1];
const SERVER_V4: [u8; 4] = [10, 0, 0, 2];
const CLIENT_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const SERVER_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const CLIENT_PORT: u16 = 40000;
const SERVER_PORT: u16 = 443;
const PAYLOAD: &[u8] = b"flagtrace test payload";
const PSH: u8 = 0x08;

/// One tracer, one hook, and the state its maps must be in.
struct Harness {
    tracer: LoadedTracer,
    model: FlowModel,
    hook: Hook,
    ifindex: u32,
}

impl Harness {
    fn new(hook: Hook) -> Self {
        Self {
            tracer: LoadedTracer::load(1024).expect("loading the tracer"),
            model: FlowModel::new(),
            hook,
            ifindex: test_run_ifindex().expect("loopback ifindex"),
        }
    }

    /// Runs `frame`, which must classify as `expected`, and checks the maps exactly.
    fn send(&mut self, name: &str, frame: &[u8], expected: Verdict) {
        let context = format!("{name} on {:?}, frame {}", self.hook, hex(frame));
        assert_eq!(
            oracle::classify(frame),
            expected,
            "etherparse oracle disagrees: {context}"
        );
        let (run, window) = Window::around(|| self.tracer.run(self.hook, frame));
        if !test_run_accepts(self.hook, frame) {
            // The kernel refused the run, so the program never saw the frame: nothing counts.
            assert!(
                run.is_err(),
                "test run accepted a frame it should refuse: {context}"
            );
            self.assert_maps_match(&context);
            return;
        }
        let run = run.unwrap_or_else(|e| panic!("{context}: {e:#}"));
        assert_eq!(
            run.return_value,
            pass_verdict(self.hook),
            "wrong return value: {context}"
        );
        assert_eq!(
            run.data_out, frame,
            "the program changed the packet: {context}"
        );
        self.model.apply(self.hook, self.ifindex, &expected, window);
        self.assert_maps_match(&context);
    }

    fn assert_maps_match(&self, context: &str) {
        let mismatches = self
            .model
            .mismatches(&self.tracer)
            .expect("reading the maps");
        assert!(
            mismatches.is_empty(),
            "maps differ from the contract after {context}:\n{}",
            mismatches.join("\n")
        );
    }

    /// The one flow the tracer holds, with the counts of the low and high endpoints.
    fn only_flow(&self) -> (FlowKey, tracer_common::FlowValue) {
        let flows = self.tracer.flows().expect("reading flows");
        assert_eq!(flows.len(), 1, "expected exactly one flow, got {flows:?}");
        flows.into_iter().next().expect("one flow")
    }
}

/// Runs `scenario` once per hook, each with a fresh tracer.
fn on_both_hooks(scenario: impl Fn(&mut Harness)) {
    for hook in [Hook::Ingress, Hook::Egress] {
        scenario(&mut Harness::new(hook));
    }
}

fn tcp_v4(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16, flags: u8) -> Verdict {
    Verdict::Tcp(Segment {
        family: FAMILY_IPV4,
        src: ipv4_words(src),
        dst: ipv4_words(dst),
        src_port,
        dst_port,
        flags,
    })
}

fn tcp_v6(src: [u8; 16], src_port: u16, dst: [u8; 16], dst_port: u16, flags: u8) -> Verdict {
    Verdict::Tcp(Segment {
        family: FAMILY_IPV6,
        src: ipv6_words(src),
        dst: ipv6_words(dst),
        src_port,
        dst_port,
        flags,
    })
}

/// Sets `flags` (TCP_* bits, plus PSH) on a PacketBuilder TCP step.
fn with_flags(mut tcp: PacketBuilderStep<TcpHeader>, flags: u8) -> PacketBuilderStep<TcpHeader> {
    if flags & TCP_SYN != 0 {
        tcp = tcp.syn();
    }
    if flags & TCP_ACK != 0 {
        tcp = tcp.ack(2000);
    }
    if flags & TCP_FIN != 0 {
        tcp = tcp.fin();
    }
    if flags & TCP_RST != 0 {
        tcp = tcp.rst();
    }
    if flags & PSH != 0 {
        tcp = tcp.psh();
    }
    tcp
}

fn write_tcp(tcp: PacketBuilderStep<TcpHeader>, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    with_flags(tcp, flags)
        .write(&mut frame, payload)
        .expect("building a frame");
    frame
}

/// Ethernet / IPv4 / TCP from `src` to `dst`.
fn ipv4_frame(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8, payload: &[u8]) -> Vec<u8> {
    let tcp = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ipv4(src.0, dst.0, 64)
        .tcp(src.1, dst.1, 1000, 64240);
    write_tcp(tcp, flags, payload)
}

/// Ethernet / IPv6 / TCP from `src` to `dst`.
fn ipv6_frame(src: ([u8; 16], u16), dst: ([u8; 16], u16), flags: u8, payload: &[u8]) -> Vec<u8> {
    let tcp = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ipv6(src.0, dst.0, 64)
        .tcp(src.1, dst.1, 1000, 64240);
    write_tcp(tcp, flags, payload)
}

fn client_v4(flags: u8) -> Vec<u8> {
    ipv4_frame(
        (CLIENT_V4, CLIENT_PORT),
        (SERVER_V4, SERVER_PORT),
        flags,
        &[],
    )
}

fn server_v4(flags: u8) -> Vec<u8> {
    ipv4_frame(
        (SERVER_V4, SERVER_PORT),
        (CLIENT_V4, CLIENT_PORT),
        flags,
        &[],
    )
}

fn client_v4_verdict(flags: u8) -> Verdict {
    tcp_v4(CLIENT_V4, CLIENT_PORT, SERVER_V4, SERVER_PORT, flags)
}

fn server_v4_verdict(flags: u8) -> Verdict {
    tcp_v4(SERVER_V4, SERVER_PORT, CLIENT_V4, CLIENT_PORT, flags)
}

/// The sender index of the client in the canonical key of the client/server flow.
fn client_sender(family: u8, client: [u32; 4], server: [u32; 4]) -> usize {
    FlowKey::from_packet(family, 1, client, CLIENT_PORT, server, SERVER_PORT).1
}

fn counts(syn: u32, syn_ack: u32, fin: u32, rst: u32) -> FlagCounts {
    FlagCounts {
        syn,
        syn_ack,
        fin,
        rst,
    }
}

#[test]
fn handshake_data_and_close_are_counted_per_sender() {
    on_both_hooks(|h| {
        h.send("SYN", &client_v4(TCP_SYN), client_v4_verdict(TCP_SYN));
        let syn_ack = TCP_SYN | TCP_ACK;
        h.send("SYN/ACK", &server_v4(syn_ack), server_v4_verdict(syn_ack));
        h.send("ACK", &client_v4(TCP_ACK), client_v4_verdict(TCP_ACK));
        let data = ipv4_frame(
            (CLIENT_V4, CLIENT_PORT),
            (SERVER_V4, SERVER_PORT),
            PSH | TCP_ACK,
            PAYLOAD,
        );
        h.send("data", &data, client_v4_verdict(PSH | TCP_ACK));
        let fin = TCP_FIN | TCP_ACK;
        h.send("client FIN", &client_v4(fin), client_v4_verdict(fin));
        h.send("server FIN", &server_v4(fin), server_v4_verdict(fin));
        h.send("last ACK", &client_v4(TCP_ACK), client_v4_verdict(TCP_ACK));

        // Spelled out once more without the model: who sent what, and who the client is.
        let (key, value) = h.only_flow();
        let client = client_sender(FAMILY_IPV4, ipv4_words(CLIENT_V4), ipv4_words(SERVER_V4));
        assert_eq!(key.ifindex, h.ifindex);
        assert_eq!(key.family, FAMILY_IPV4);
        assert_eq!(value.sent_by[client], counts(1, 0, 1, 0));
        assert_eq!(value.sent_by[1 - client], counts(0, 1, 1, 0));
        let expected_first = if client == 0 {
            FIRST_SYN_LO
        } else {
            FIRST_SYN_HI
        };
        assert_eq!(value.first_syn_from, expected_first);
        assert!(value.first_seen_ns != 0 && value.first_seen_ns <= value.last_seen_ns);
        let counters = h.tracer.counters(h.hook).expect("counters");
        assert_eq!(
            (counters.packets, counters.tcp, counters.flows_created),
            (7, 7, 1)
        );
    });
}

#[test]
fn ipv6_handshake_and_refusal() {
    on_both_hooks(|h| {
        let syn = tcp_v6(CLIENT_V6, CLIENT_PORT, SERVER_V6, SERVER_PORT, TCP_SYN);
        let client = ((CLIENT_V6, CLIENT_PORT), (SERVER_V6, SERVER_PORT));
        let server = ((SERVER_V6, SERVER_PORT), (CLIENT_V6, CLIENT_PORT));
        h.send("SYN", &ipv6_frame(client.0, client.1, TCP_SYN, &[]), syn);
        let rst_ack = TCP_RST | TCP_ACK;
        h.send(
            "RST/ACK",
            &ipv6_frame(server.0, server.1, rst_ack, &[]),
            tcp_v6(SERVER_V6, SERVER_PORT, CLIENT_V6, CLIENT_PORT, rst_ack),
        );
        let (key, value) = h.only_flow();
        let client = client_sender(FAMILY_IPV6, ipv6_words(CLIENT_V6), ipv6_words(SERVER_V6));
        assert_eq!(key.family, FAMILY_IPV6);
        assert_eq!(value.sent_by[client], counts(1, 0, 0, 0));
        assert_eq!(value.sent_by[1 - client], counts(0, 0, 0, 1));
    });
}

#[test]
fn rst_and_rst_ack_count_as_rst() {
    on_both_hooks(|h| {
        h.send("RST", &server_v4(TCP_RST), server_v4_verdict(TCP_RST));
        let rst_ack = TCP_RST | TCP_ACK;
        h.send("RST/ACK", &server_v4(rst_ack), server_v4_verdict(rst_ack));
        let (_, value) = h.only_flow();
        let client = client_sender(FAMILY_IPV4, ipv4_words(CLIENT_V4), ipv4_words(SERVER_V4));
        assert_eq!(value.sent_by[1 - client], counts(0, 0, 0, 2));
        assert_eq!(value.first_syn_from, FIRST_SYN_NONE);
    });
}

#[test]
fn plain_ack_and_data_touch_no_flow() {
    on_both_hooks(|h| {
        h.send("ACK", &client_v4(TCP_ACK), client_v4_verdict(TCP_ACK));
        let data = ipv4_frame(
            (SERVER_V4, SERVER_PORT),
            (CLIENT_V4, CLIENT_PORT),
            PSH | TCP_ACK,
            PAYLOAD,
        );
        h.send("data", &data, server_v4_verdict(PSH | TCP_ACK));
        h.send("no flags", &client_v4(0), client_v4_verdict(0));
        assert!(h.tracer.flows().expect("flows").is_empty());
    });
}

#[test]
fn first_syn_sender_is_recorded_even_after_other_packets() {
    on_both_hooks(|h| {
        // The entry is created by the SYN/ACK (no client known yet); the first SYN without ACK
        // names the client; a retransmitted SYN from the other side does not change it.
        let syn_ack = TCP_SYN | TCP_ACK;
        h.send(
            "SYN/ACK first",
            &server_v4(syn_ack),
            server_v4_verdict(syn_ack),
        );
        h.send("SYN", &client_v4(TCP_SYN), client_v4_verdict(TCP_SYN));
        h.send("SYN again", &client_v4(TCP_SYN), client_v4_verdict(TCP_SYN));
        h.send(
            "other side SYN",
            &server_v4(TCP_SYN),
            server_v4_verdict(TCP_SYN),
        );
        let (_, value) = h.only_flow();
        let client = client_sender(FAMILY_IPV4, ipv4_words(CLIENT_V4), ipv4_words(SERVER_V4));
        assert_eq!(value.sent_by[client], counts(2, 0, 0, 0));
        assert_eq!(value.sent_by[1 - client], counts(1, 1, 0, 0));
        let expected_first = if client == 0 {
            FIRST_SYN_LO
        } else {
            FIRST_SYN_HI
        };
        assert_eq!(value.first_syn_from, expected_first);
    });
}

#[test]
fn combined_flags_count_in_every_matching_counter() {
    on_both_hooks(|h| {
        let all = TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST;
        h.send("SYN/ACK/FIN/RST", &client_v4(all), client_v4_verdict(all));
        let syn_fin = TCP_SYN | TCP_FIN;
        h.send("SYN/FIN", &client_v4(syn_fin), client_v4_verdict(syn_fin));
        let fin = TCP_FIN;
        h.send("bare FIN", &client_v4(fin), client_v4_verdict(fin));
        let (_, value) = h.only_flow();
        let client = client_sender(FAMILY_IPV4, ipv4_words(CLIENT_V4), ipv4_words(SERVER_V4));
        assert_eq!(value.sent_by[client], counts(1, 1, 3, 1));
    });
}

#[test]
fn both_hooks_share_one_flow_entry() {
    // As attached for real: the client's packets leave through TC, the server's arrive at XDP.
    let mut egress = Harness::new(Hook::Egress);
    egress.send("SYN out", &client_v4(TCP_SYN), client_v4_verdict(TCP_SYN));
    egress.hook = Hook::Ingress;
    let syn_ack = TCP_SYN | TCP_ACK;
    egress.send(
        "SYN/ACK in",
        &server_v4(syn_ack),
        server_v4_verdict(syn_ack),
    );
    let (_, value) = egress.only_flow();
    let client = client_sender(FAMILY_IPV4, ipv4_words(CLIENT_V4), ipv4_words(SERVER_V4));
    assert_eq!(value.sent_by[client], counts(1, 0, 0, 0));
    assert_eq!(value.sent_by[1 - client], counts(0, 1, 0, 0));
    for hook in [Hook::Ingress, Hook::Egress] {
        let counters = egress.tracer.counters(hook).expect("counters");
        assert_eq!((counters.packets, counters.tcp), (1, 1), "{hook:?}");
    }
}

/// A valid frame, what it must count as, and the shortest prefix that still counts the same:
/// any truncation shorter than `required_len` cuts a header the tracer must walk, so it is a
/// parse error; from `required_len` on the verdict stays.
struct Case {
    name: &'static str,
    frame: Vec<u8>,
    verdict: Verdict,
    required_len: usize,
}

impl Case {
    /// A TCP frame: the whole TCP header (with options) is required, the payload is not.
    fn tcp(name: &'static str, frame: Vec<u8>, verdict: Verdict, payload_len: usize) -> Self {
        let required_len = frame.len() - payload_len;
        Self {
            name,
            frame,
            verdict,
            required_len,
        }
    }

    /// A frame that is not TCP; `required_len` is where the headers the tracer walks end.
    fn other(name: &'static str, frame: Vec<u8>, required_len: usize) -> Self {
        Self {
            name,
            frame,
            verdict: Verdict::NotTcp,
            required_len,
        }
    }
}

const ETHERNET_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;

/// A client-to-server IPv4 header with `option_words` words of NOP options (the option
/// content is irrelevant to the tracer; NOPs keep it valid). PacketBuilder sets the protocol.
fn ipv4_header(option_words: u8) -> Ipv4Header {
    let mut header = Ipv4Header::new(0, 64, ip_number::TCP, CLIENT_V4, SERVER_V4).expect("header");
    header.options =
        Ipv4Options::try_from(&vec![1u8; 4 * option_words as usize][..]).expect("options");
    header
}

fn ipv4_with_options(option_words: u8) -> Vec<u8> {
    let tcp = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ip(IpHeaders::Ipv4(
            ipv4_header(option_words),
            Default::default(),
        ))
        .tcp(CLIENT_PORT, SERVER_PORT, 1000, 64240);
    write_tcp(tcp, TCP_SYN, PAYLOAD)
}

fn ipv6_header() -> Ipv6Header {
    Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: 0,
        next_header: ip_number::TCP,
        hop_limit: 64,
        source: CLIENT_V6,
        destination: SERVER_V6,
    }
}

/// An extension header of `(units + 1) * 8` bytes; the builder fills in its next header.
fn raw_ext(units: u8) -> Ipv6RawExtHeader {
    Ipv6RawExtHeader::new_raw(ip_number::TCP, &vec![0u8; 6 + 8 * units as usize]).expect("ext")
}

fn fragment(offset: u16, more: bool) -> Ipv6FragmentHeader {
    Ipv6FragmentHeader::new(
        ip_number::TCP,
        IpFragOffset::try_new(offset).expect("offset"),
        more,
        7,
    )
}

/// IPv6 with hop-by-hop (16 bytes), destination options (8) and routing (24) headers, and
/// optionally a fragment header, then TCP SYN.
fn ipv6_with_extensions(fragment_header: Option<Ipv6FragmentHeader>) -> Vec<u8> {
    let extensions = Ipv6Extensions {
        hop_by_hop_options: Some(raw_ext(1)),
        destination_options: Some(raw_ext(0)),
        routing: Some(Ipv6RoutingExtensions {
            routing: raw_ext(2),
            final_destination_options: None,
        }),
        fragment: fragment_header,
        auth: None,
    };
    let tcp = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ip(IpHeaders::Ipv6(ipv6_header(), extensions))
        .tcp(CLIENT_PORT, SERVER_PORT, 1000, 64240);
    write_tcp(tcp, TCP_SYN, PAYLOAD)
}

/// IPv6 carrying only a fragment header with a non-zero offset, then raw payload bytes that a
/// naive parser would take for a TCP header.
fn ipv6_non_first_fragment() -> Vec<u8> {
    let extensions = Ipv6Extensions {
        fragment: Some(fragment(185, false)),
        ..Default::default()
    };
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ip(IpHeaders::Ipv6(ipv6_header(), extensions))
        .write(&mut frame, ip_number::TCP, &client_v4(TCP_SYN)[34..])
        .expect("building a frame");
    frame
}

/// IPv4 fragment at `offset` (8-byte units) with the more-fragments flag, payload a TCP SYN.
fn ipv4_fragment(offset: u16) -> Vec<u8> {
    let mut header = ipv4_header(0);
    header.more_fragments = true;
    header.fragment_offset = IpFragOffset::try_new(offset).expect("offset");
    let tcp = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ip(IpHeaders::Ipv4(header, Default::default()))
        .tcp(CLIENT_PORT, SERVER_PORT, 1000, 64240);
    write_tcp(tcp, TCP_SYN, PAYLOAD)
}

fn single_vlan_syn() -> Vec<u8> {
    let tcp = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .single_vlan(VlanId::try_new(10).expect("vlan"))
        .ipv4(CLIENT_V4, SERVER_V4, 64)
        .tcp(CLIENT_PORT, SERVER_PORT, 1000, 64240);
    write_tcp(tcp, TCP_SYN, PAYLOAD)
}

/// 802.1ad outer tag (0x88a8), 802.1Q inner tag, IPv6, TCP SYN.
fn double_vlan_syn() -> Vec<u8> {
    let tcp = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .double_vlan(
            VlanId::try_new(10).expect("vlan"),
            VlanId::try_new(20).expect("vlan"),
        )
        .ipv6(CLIENT_V6, SERVER_V6, 64)
        .tcp(CLIENT_PORT, SERVER_PORT, 1000, 64240);
    write_tcp(tcp, TCP_SYN, PAYLOAD)
}

fn udp_v4() -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ipv4(CLIENT_V4, SERVER_V4, 64)
        .udp(CLIENT_PORT, 53)
        .write(&mut frame, PAYLOAD)
        .expect("building a frame");
    frame
}

fn udp_v4_with_options(option_words: u8) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ip(IpHeaders::Ipv4(
            ipv4_header(option_words),
            Default::default(),
        ))
        .udp(CLIENT_PORT, 53)
        .write(&mut frame, PAYLOAD)
        .expect("building a frame");
    frame
}

fn udp_v6_after_hop_by_hop() -> Vec<u8> {
    let extensions = Ipv6Extensions {
        hop_by_hop_options: Some(raw_ext(0)),
        ..Default::default()
    };
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ip(IpHeaders::Ipv6(ipv6_header(), extensions))
        .udp(CLIENT_PORT, 53)
        .write(&mut frame, PAYLOAD)
        .expect("building a frame");
    frame
}

fn arp_request() -> Vec<u8> {
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: CLIENT_MAC,
        sender_ipv4: CLIENT_V4,
        target_mac: [0; 6],
        target_ipv4: SERVER_V4,
    };
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, [0xff; 6])
        .arp(arp.into())
        .write(&mut frame)
        .expect("building a frame");
    frame
}

/// Built with the layered builder: shapes PacketBuilder cannot make.
fn layered(tags: &[u16], ip: IpSpec, flags: u8) -> Vec<u8> {
    FrameSpec {
        tags: tags.to_vec(),
        ip,
        l4: L4Spec::Tcp {
            src_port: CLIENT_PORT,
            dst_port: SERVER_PORT,
            flags,
            option_words: 0,
            payload: PAYLOAD.to_vec(),
        },
    }
    .build()
    .bytes
}

fn ipv4_spec() -> IpSpec {
    IpSpec::V4 {
        src: CLIENT_V4,
        dst: SERVER_V4,
        option_words: 0,
        fragment_offset: 0,
        more_fragments: false,
    }
}

fn ipv6_spec(exts: Vec<Ext>) -> IpSpec {
    IpSpec::V6 {
        src: CLIENT_V6,
        dst: SERVER_V6,
        exts,
    }
}

/// `count` extension headers of every walked kind, in no particular RFC order.
fn ext_chain(count: usize) -> Vec<Ext> {
    [
        Ext::DestOptions { units: 0 },
        Ext::HopByHop { units: 1 },
        Ext::Routing { units: 0 },
        Ext::Fragment {
            offset: 0,
            more: true,
        },
    ]
    .into_iter()
    .cycle()
    .take(count)
    .collect()
}

/// Every valid frame of the suite.
fn catalogue() -> Vec<Case> {
    let syn_v4 = || tcp_v4(CLIENT_V4, CLIENT_PORT, SERVER_V4, SERVER_PORT, TCP_SYN);
    let syn_v6 = || tcp_v6(CLIENT_V6, CLIENT_PORT, SERVER_V6, SERVER_PORT, TCP_SYN);
    let mut cases = vec![
        Case::tcp(
            "IPv4 SYN",
            ipv4_frame(
                (CLIENT_V4, CLIENT_PORT),
                (SERVER_V4, SERVER_PORT),
                TCP_SYN,
                PAYLOAD,
            ),
            syn_v4(),
            PAYLOAD.len(),
        ),
        Case::tcp(
            "IPv6 SYN",
            ipv6_frame(
                (CLIENT_V6, CLIENT_PORT),
                (SERVER_V6, SERVER_PORT),
                TCP_SYN,
                PAYLOAD,
            ),
            syn_v6(),
            PAYLOAD.len(),
        ),
        Case::tcp(
            "IPv6 with hop-by-hop, destination options, routing",
            ipv6_with_extensions(None),
            syn_v6(),
            PAYLOAD.len(),
        ),
        Case::tcp(
            "IPv6 with extension headers, first fragment",
            ipv6_with_extensions(Some(fragment(0, true))),
            syn_v6(),
            PAYLOAD.len(),
        ),
        Case::tcp(
            "IPv6 with 6 extension headers (the bound)",
            layered(&[], ipv6_spec(ext_chain(6)), TCP_SYN),
            syn_v6(),
            PAYLOAD.len(),
        ),
        Case::tcp(
            "IPv4 first fragment (MF, offset 0)",
            ipv4_fragment(0),
            syn_v4(),
            PAYLOAD.len(),
        ),
        Case::tcp("802.1Q tag", single_vlan_syn(), syn_v4(), PAYLOAD.len()),
        Case::tcp(
            "802.1ad outer and 802.1Q inner tag",
            double_vlan_syn(),
            syn_v6(),
            PAYLOAD.len(),
        ),
        Case::tcp(
            "two 802.1Q tags",
            layered(&[0x8100, 0x8100], ipv4_spec(), TCP_SYN),
            syn_v4(),
            PAYLOAD.len(),
        ),
        Case::tcp(
            "802.1ad single tag",
            layered(&[0x88a8], ipv4_spec(), TCP_SYN),
            syn_v4(),
            PAYLOAD.len(),
        ),
        Case::tcp(
            "TCP with options",
            FrameSpec {
                tags: vec![],
                ip: ipv4_spec(),
                l4: L4Spec::Tcp {
                    src_port: CLIENT_PORT,
                    dst_port: SERVER_PORT,
                    flags: TCP_SYN,
                    option_words: 10,
                    payload: PAYLOAD.to_vec(),
                },
            }
            .build()
            .bytes,
            syn_v4(),
            PAYLOAD.len(),
        ),
        // Non-TCP: only the headers the tracer walks are required.
        Case::other(
            "IPv6 non-first fragment",
            ipv6_non_first_fragment(),
            ETHERNET_LEN + IPV6_LEN + 8,
        ),
        Case::other(
            "IPv4 non-first fragment",
            ipv4_fragment(100),
            ETHERNET_LEN + IPV4_LEN,
        ),
        Case::other("UDP over IPv4", udp_v4(), ETHERNET_LEN + IPV4_LEN),
        Case::other(
            "UDP over IPv4 with options",
            udp_v4_with_options(3),
            ETHERNET_LEN + IPV4_LEN + 3 * 4,
        ),
        Case::other(
            "UDP over IPv6 after hop-by-hop",
            udp_v6_after_hop_by_hop(),
            ETHERNET_LEN + IPV6_LEN + 8,
        ),
        Case::other("ARP", arp_request(), ETHERNET_LEN),
        Case::other(
            "IPv6 with 7 extension headers (past the bound)",
            layered(&[], ipv6_spec(ext_chain(7)), TCP_SYN),
            // The walk stops after six headers, at a seventh it does not follow.
            ETHERNET_LEN + IPV6_LEN + 8 + 16 + 8 + 8 + 8 + 16,
        ),
        Case::other(
            "three VLAN tags (past the bound)",
            layered(&[0x88a8, 0x8100, 0x8100], ipv4_spec(), TCP_SYN),
            ETHERNET_LEN + 2 * VLAN_LEN,
        ),
    ];
    for option_words in [1, 5, 10] {
        cases.push(Case::tcp(
            "IPv4 with options",
            ipv4_with_options(option_words),
            syn_v4(),
            PAYLOAD.len(),
        ));
    }
    cases
}

#[test]
fn every_valid_frame_is_classified() {
    on_both_hooks(|h| {
        for case in catalogue() {
            h.send(case.name, &case.frame, case.verdict);
        }
    });
}

#[test]
fn every_truncation_is_a_parse_error_until_the_walked_headers_are_complete() {
    on_both_hooks(|h| {
        for case in catalogue() {
            // BPF_PROG_TEST_RUN rejects frames shorter than the Ethernet header (EINVAL), so
            // truncation inside it cannot reach the program (see test_run_accepts for more).
            for len in ETHERNET_LEN..case.frame.len() {
                let expected = if len < case.required_len {
                    Verdict::ParseError
                } else {
                    case.verdict
                };
                let name = format!("{} truncated to {len} bytes", case.name);
                h.send(&name, &case.frame[..len], expected);
            }
        }
    });
}

#[test]
fn frames_shorter_than_ethernet_cannot_be_test_run() {
    // Documents why the truncation test starts at 14 bytes: the kernel refuses the run itself.
    let syn = client_v4(TCP_SYN);
    on_both_hooks(|h| {
        assert!(!test_run_accepts(h.hook, &syn[..ETHERNET_LEN - 1]));
        h.send("13 bytes", &syn[..ETHERNET_LEN - 1], Verdict::ParseError);
    });
}

#[test]
fn malformed_headers_are_parse_errors() {
    let syn = client_v4(TCP_SYN);
    let ihl = ETHERNET_LEN;
    let tcp_offset = ETHERNET_LEN + IPV4_LEN + 12;
    let patched = |offset: usize, value: u8| {
        let mut frame = syn.clone();
        frame[offset] = value;
        frame
    };
    on_both_hooks(|h| {
        for small_ihl in 0..5 {
            let name = format!("IPv4 IHL {small_ihl}");
            h.send(&name, &patched(ihl, 0x40 | small_ihl), Verdict::ParseError);
        }
        // IHL 15 announces 40 bytes of options that are really the TCP header and payload, and
        // the "TCP header" after them is cut short.
        h.send(
            "IPv4 IHL 15, short frame",
            &patched(ihl, 0x4f),
            Verdict::ParseError,
        );
        for small_offset in 0..5 {
            let name = format!("TCP data offset {small_offset}");
            h.send(
                &name,
                &patched(tcp_offset, small_offset << 4),
                Verdict::ParseError,
            );
        }
        h.send(
            "TCP data offset 15, short frame",
            &patched(tcp_offset, 0xf0),
            Verdict::ParseError,
        );
        h.send(
            "IPv6 version in an IPv4 EtherType",
            &patched(ihl, 0x65),
            Verdict::ParseError,
        );
        let mut v6 = ipv6_frame(
            (CLIENT_V6, CLIENT_PORT),
            (SERVER_V6, SERVER_PORT),
            TCP_SYN,
            &[],
        );
        v6[ETHERNET_LEN] = 0x40;
        h.send(
            "IPv4 version in an IPv6 EtherType",
            &v6,
            Verdict::ParseError,
        );
    });
}

#[test]
fn ip_length_fields_are_not_trusted() {
    // GSO and BIG TCP packets carry 0 in the IPv4 total length / IPv6 payload length, so the
    // tracer walks the headers by their own length fields and the captured bytes only.
    let syn_v4 = client_v4(TCP_SYN);
    let mut zero_total = syn_v4.clone();
    zero_total[ETHERNET_LEN + 2..ETHERNET_LEN + 4].copy_from_slice(&[0, 0]);
    let mut v6 = ipv6_frame(
        (CLIENT_V6, CLIENT_PORT),
        (SERVER_V6, SERVER_PORT),
        TCP_SYN,
        &[],
    );
    v6[ETHERNET_LEN + 4..ETHERNET_LEN + 6].copy_from_slice(&[0, 0]);
    let mut trailer = syn_v4.clone();
    trailer.extend_from_slice(&[0xee; 30]);
    on_both_hooks(|h| {
        h.send(
            "IPv4 total length 0",
            &zero_total,
            client_v4_verdict(TCP_SYN),
        );
        let syn_v6 = tcp_v6(CLIENT_V6, CLIENT_PORT, SERVER_V6, SERVER_PORT, TCP_SYN);
        h.send("IPv6 payload length 0", &v6, syn_v6);
        h.send("Ethernet trailer", &trailer, client_v4_verdict(TCP_SYN));
    });
}

#[test]
fn other_ethertypes_and_protocols_are_not_tcp() {
    let mut lldp = arp_request();
    lldp[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
    let mut icmp_v4 = client_v4(TCP_SYN);
    icmp_v4[ETHERNET_LEN + 9] = u8::from(ip_number::ICMP);
    let mut no_next_v6 = ipv6_frame(
        (CLIENT_V6, CLIENT_PORT),
        (SERVER_V6, SERVER_PORT),
        TCP_SYN,
        &[],
    );
    no_next_v6[ETHERNET_LEN + 6] = u8::from(IpNumber(59));
    let mut dot1q_in_9100 = single_vlan_syn();
    dot1q_in_9100[12..14].copy_from_slice(&0x9100u16.to_be_bytes());
    on_both_hooks(|h| {
        h.send("LLDP EtherType", &lldp, Verdict::NotTcp);
        h.send("ICMP protocol", &icmp_v4, Verdict::NotTcp);
        h.send("IPv6 no next header", &no_next_v6, Verdict::NotTcp);
        h.send("0x9100 tag (not followed)", &dot1q_in_9100, Verdict::NotTcp);
        h.send("UDP", &udp_v4(), Verdict::NotTcp);
        h.send("ARP", &arp_request(), Verdict::NotTcp);
        assert!(h.tracer.flows().expect("flows").is_empty());
    });
}
