//! The differential test's frames and checks, run on the kernel programs (tests/differential.rs,
//! as root) and on the same accounting on the host (tests/differential_host.rs): over 200,000
//! random and mutated frames, each through the ingress program, the egress program or both (they
//! share the tables and count on their own index), so that a flow's packets mix hooks and each
//! program sees over 100,000 frames. After every batch the flow table (keys, per-sender flag
//! counts, first SYN sender, per-sender baselines, timestamps), the reset evidence table, the
//! reset gate and the global counters must equal what [`crate::model`] computes from the
//! etherparse oracle's reading of the same bytes ([`crate::oracle`] documents where and why it
//! departs from etherparse's whole-packet parsers).
//!
//! Most frames are valid TCP frames across IPv4/IPv6, options, extension headers, fragments and
//! VLAN tags, then mutated where the parser looks: flags, lengths, IHL, data offset, EtherTypes,
//! next headers, fragment offsets; truncated, extended, or with bytes inserted between headers.
//! A few are noise. MACs, TTLs, IP IDs and sequence numbers come from small pools (with some
//! random values), so that RSTs repeat sequence numbers, jump, wrap, and are followed by data at,
//! before and beyond them. Seeded: FLAGTRACE_SEED=<u64> replays a run; the seed is printed at the
//! start (shown with --nocapture) and named in every failure, with the first frame whose result
//! differs, in hex.

use std::{
    collections::VecDeque,
    time::{SystemTime, UNIX_EPOCH},
};

use rand::{rngs::SmallRng, seq::SliceRandom, Rng, SeedableRng};
use tracer_common::{Hook, BACK_TO_BACK_NS, SEEN_NONE, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

use crate::{
    frame::{Ext, Field, FieldKind, Frame, FrameSpec, IpSpec, L4Spec},
    hex,
    model::{FlowModel, Tracer},
    oracle::{self, Verdict},
};

const BATCHES: usize = 400;
const BATCH_LEN: usize = 512;

/// Few endpoints, so that flows repeat and both directions of a flow occur.
const IPV4_POOL: [[u8; 4]; 3] = [[10, 0, 0, 1], [10, 0, 0, 2], [192, 168, 7, 9]];
const IPV6_POOL: [[u8; 16]; 3] = [
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
];
const PORT_POOL: [u16; 5] = [80, 443, 40000, 40001, 51234];
/// Two locally administered MACs and one with a real OUI.
const MAC_POOL: [[u8; 6]; 3] = [
    [0x02, 0, 0, 0, 0, 0x01],
    [0x02, 0, 0, 0, 0, 0x02],
    [0x00, 0x01, 0xd7, 0x3c, 0x5e, 0x01],
];
/// Initial TTLs and one hop less, and the extremes.
const TTL_POOL: [u8; 6] = [1, 63, 64, 127, 128, 255];
/// Close together (same-sequence RSTs, data just at or past a RST), far apart (jumps), and
/// around both wraps of sequence space (where "at or after" turns over).
const SEQ_POOL: [u32; 9] = [
    0,
    1000,
    1001,
    1022,
    5000,
    0x7fff_fff0,
    0x8000_0000,
    0xffff_fff0,
    0xffff_ffff,
];
const FLAG_CHOICES: [u8; 9] = [
    TCP_SYN,
    TCP_SYN | TCP_ACK,
    TCP_ACK,
    TCP_FIN | TCP_ACK,
    TCP_RST,
    TCP_RST | TCP_ACK,
    TCP_ACK | 0x08,
    TCP_FIN,
    TCP_SYN | TCP_FIN | TCP_RST,
];
const ETHER_TYPES: [u16; 7] = [0x0800, 0x86dd, 0x8100, 0x88a8, 0x9100, 0x0806, 0x88cc];
const NEXT_HEADERS: [u8; 10] = [0, 6, 17, 43, 44, 60, 51, 59, 58, 135];

fn seed() -> u64 {
    match std::env::var("FLAGTRACE_SEED") {
        Ok(seed) => seed.parse().expect("FLAGTRACE_SEED must be a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    }
}

fn ext(rng: &mut SmallRng) -> Ext {
    let units = rng.gen_range(0..=3);
    match rng.gen_range(0..4) {
        0 => Ext::HopByHop { units },
        1 => Ext::Routing { units },
        2 => Ext::DestOptions { units },
        _ => Ext::Fragment {
            offset: if rng.gen_bool(0.8) {
                0
            } else {
                rng.gen_range(1..8192)
            },
            more: rng.gen(),
        },
    }
}

/// From `pool` mostly, else any value.
fn pooled<T: Copy>(pool: &[T], rng: &mut SmallRng) -> T
where
    rand::distributions::Standard: rand::distributions::Distribution<T>,
{
    if rng.gen_bool(0.9) {
        *pool.choose(rng).expect("non-empty")
    } else {
        rng.gen()
    }
}

fn random_spec(rng: &mut SmallRng) -> FrameSpec {
    let tpid = |rng: &mut SmallRng| *[0x8100, 0x88a8].choose(rng).expect("non-empty");
    let tags = match rng.gen_range(0..16) {
        0..=7 => vec![],
        8..=11 => vec![tpid(rng)],
        12..=14 => vec![tpid(rng), 0x8100],
        _ => vec![0x88a8, 0x8100, 0x8100],
    };
    let ip = if rng.gen() {
        IpSpec::V4 {
            src: *IPV4_POOL.choose(rng).expect("non-empty"),
            dst: *IPV4_POOL.choose(rng).expect("non-empty"),
            id: pooled(&[0, 1, 0xffff], rng),
            option_words: if rng.gen_bool(0.6) {
                0
            } else {
                rng.gen_range(1..=10)
            },
            fragment_offset: if rng.gen_bool(0.85) {
                0
            } else {
                rng.gen_range(1..8192)
            },
            more_fragments: rng.gen_bool(0.15),
        }
    } else {
        let count = match rng.gen_range(0..20) {
            0..=7 => 0,
            8..=16 => rng.gen_range(1..=3),
            _ => rng.gen_range(4..=8),
        };
        IpSpec::V6 {
            src: *IPV6_POOL.choose(rng).expect("non-empty"),
            dst: *IPV6_POOL.choose(rng).expect("non-empty"),
            exts: (0..count).map(|_| ext(rng)).collect(),
        }
    };
    let payload = (0..rng.gen_range(0..=64)).map(|_| rng.gen()).collect();
    let src_port = *PORT_POOL.choose(rng).expect("non-empty");
    let dst_port = *PORT_POOL.choose(rng).expect("non-empty");
    let l4 = if rng.gen_bool(0.9) {
        L4Spec::Tcp {
            src_port,
            dst_port,
            flags: if rng.gen_bool(0.8) {
                *FLAG_CHOICES.choose(rng).expect("non-empty")
            } else {
                rng.gen()
            },
            seq: pooled(&SEQ_POOL, rng),
            ack: pooled(&SEQ_POOL, rng),
            option_words: if rng.gen_bool(0.7) {
                rng.gen_range(0..=3)
            } else {
                rng.gen_range(4..=10)
            },
            payload,
        }
    } else {
        L4Spec::Udp {
            src_port,
            dst_port,
            payload,
        }
    };
    FrameSpec {
        src_mac: *MAC_POOL.choose(rng).expect("non-empty"),
        dst_mac: *MAC_POOL.choose(rng).expect("non-empty"),
        tags,
        ip,
        ttl: pooled(&TTL_POOL, rng),
        l4,
    }
}

/// A value the parser cares about for a field of this kind.
fn interesting_value(kind: FieldKind, rng: &mut SmallRng) -> u16 {
    let random = rng.gen_bool(0.25);
    match kind {
        FieldKind::EtherType if !random => *ETHER_TYPES.choose(rng).expect("non-empty"),
        FieldKind::Ipv4VersionIhl if !random => 0x40 | rng.gen_range(0..16),
        FieldKind::Ipv6Version if !random => *[0x60, 0x40, 0x00].choose(rng).expect("non-empty"),
        FieldKind::NextHeader if !random => {
            u16::from(*NEXT_HEADERS.choose(rng).expect("non-empty"))
        }
        FieldKind::ExtLength if !random => *[0, 1, 2, 255].choose(rng).expect("non-empty"),
        FieldKind::Ipv4Fragment if !random => *[0x0000, 0x2000, 0x4000, 0x0001, 0x1fff]
            .choose(rng)
            .expect("non-empty"),
        FieldKind::Ipv6FragmentOffset if !random => *[0x0000, 0x0001, 0x0008, 0xfff9]
            .choose(rng)
            .expect("non-empty"),
        FieldKind::Ipv4TotalLength | FieldKind::Ipv6PayloadLength if !random => {
            *[0, 1, 0xffff].choose(rng).expect("non-empty")
        }
        FieldKind::Port if !random => *PORT_POOL.choose(rng).expect("non-empty"),
        FieldKind::TcpDataOffset if !random => rng.gen_range(0..16) << 4,
        FieldKind::TcpFlags if !random => u16::from(*FLAG_CHOICES.choose(rng).expect("non-empty")),
        _ => rng.gen(),
    }
}

fn write_field(bytes: &mut [u8], field: Field, value: u16) {
    match field.kind.width() {
        2 => bytes[field.offset..field.offset + 2].copy_from_slice(&value.to_be_bytes()),
        _ => bytes[field.offset] = value as u8,
    }
}

/// Mutates a valid frame: first the values of fields (or any bit), then its length.
fn mutate(frame: Frame, rng: &mut SmallRng) -> Vec<u8> {
    let Frame {
        mut bytes,
        fields,
        header_ends,
    } = frame;
    for _ in 0..rng.gen_range(0..=3) {
        let field = *fields.choose(rng).expect("every frame has fields");
        match rng.gen_range(0..3) {
            0 => {
                let bit = rng.gen_range(0..bytes.len() * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            1 => {
                let bit = rng.gen_range(0..field.kind.width() * 8);
                bytes[field.offset + bit / 8] ^= 1 << (bit % 8);
            }
            _ => write_field(&mut bytes, field, interesting_value(field.kind, rng)),
        }
    }
    match rng.gen_range(0..8) {
        // Cut near a header boundary, where a parser's bounds checks are decided.
        0 | 1 => {
            let end = *header_ends.choose(rng).expect("every frame has headers");
            let len = end.saturating_add_signed(rng.gen_range(-3..=3));
            bytes.truncate(len.clamp(14, bytes.len()));
        }
        2 => {
            let len = rng.gen_range(14..=bytes.len());
            bytes.truncate(len);
        }
        3 => bytes.extend((0..rng.gen_range(1..=64)).map(|_| rng.gen::<u8>())),
        // Insert a tag-sized or extension-sized block between two headers.
        4 => {
            let at = *header_ends.choose(rng).expect("every frame has headers");
            let block: Vec<u8> = (0..*[4, 8].choose(rng).expect("non-empty"))
                .map(|_| rng.gen())
                .collect();
            bytes.splice(at..at, block);
        }
        _ => {}
    }
    bytes
}

fn noise(rng: &mut SmallRng) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..rng.gen_range(14..=200)).map(|_| rng.gen()).collect();
    let ether_type = *ETHER_TYPES.choose(rng).expect("non-empty");
    bytes[12..14].copy_from_slice(&ether_type.to_be_bytes());
    bytes
}

/// One frame of a batch, the programs it goes through, in this order, and how long after the
/// frame before it comes (on a clock the test sets).
struct Shot {
    frame: Vec<u8>,
    hooks: &'static [Hook],
    gap_ns: u64,
}

/// Mostly one program per frame, so that a flow's packets mix hooks (each records its own MAC
/// side) and a repeated RST is a real repeat; some frames through both, in either order.
const HOOK_CHOICES: [&[Hook]; 10] = [
    &[Hook::Ingress],
    &[Hook::Ingress],
    &[Hook::Ingress],
    &[Hook::Ingress],
    &[Hook::Egress],
    &[Hook::Egress],
    &[Hook::Egress],
    &[Hook::Egress],
    &[Hook::Ingress, Hook::Egress],
    &[Hook::Egress, Hook::Ingress],
];

/// How many recent frames a new one may continue the flow of.
const RECENT_FLOWS: usize = 8;

/// How long after the frame before a frame comes: mostly at once or within milliseconds, and
/// now and then just under, at or just over [`BACK_TO_BACK_NS`], so that a sender's RSTs fall
/// on both sides of it. A batch spans well under a minute (RESET_ENTRY_IDLE_NS), as the model
/// wants.
fn gap_ns(rng: &mut SmallRng) -> u64 {
    match rng.gen_range(0..100) {
        0..=39 => 0,
        40..=97 => rng.gen_range(1..=20_000_000),
        _ => BACK_TO_BACK_NS - 1 + rng.gen_range(0..=2),
    }
}

/// The frames to test: mostly mutated valid frames, some unmutated, a few noise. Half of the
/// valid frames continue the flow of a recent one, in either direction, so that RSTs are
/// followed by more segments from both sides while the reset gate is open.
struct Frames {
    rng: SmallRng,
    /// The gaps between frames, apart so that a seed gives the frames it gave before they had
    /// gaps.
    clock_rng: SmallRng,
    recent: VecDeque<FrameSpec>,
}

impl Frames {
    fn new(seed: u64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            clock_rng: SmallRng::seed_from_u64(!seed),
            recent: VecDeque::with_capacity(RECENT_FLOWS),
        }
    }

    fn next(&mut self) -> Shot {
        let gap_ns = gap_ns(&mut self.clock_rng);
        let rng = &mut self.rng;
        let hooks = *HOOK_CHOICES.choose(rng).expect("non-empty");
        if rng.gen_bool(0.03) {
            return Shot {
                frame: noise(rng),
                hooks,
                gap_ns,
            };
        }
        let mut spec = random_spec(rng);
        if let Some(earlier) = self.recent.iter().collect::<Vec<_>>().choose(rng) {
            if rng.gen_bool(0.5) {
                continue_flow(&mut spec, earlier, rng.gen_bool(0.4));
            }
        }
        if self.recent.len() == RECENT_FLOWS {
            self.recent.pop_front();
        }
        self.recent.push_back(spec.clone());
        let frame = spec.build();
        if let Some(segment) = spec.segment() {
            assert_eq!(
                oracle::classify(&frame.bytes),
                Verdict::Tcp(segment),
                "the oracle misreads a generated frame: {spec:?} {}",
                hex(&frame.bytes)
            );
        }
        let frame = if rng.gen_bool(0.15) {
            frame.bytes
        } else {
            mutate(frame, rng)
        };
        Shot {
            frame,
            hooks,
            gap_ns,
        }
    }
}

/// Gives `spec` the IP header and ports of `earlier`, swapped when `reply`.
fn continue_flow(spec: &mut FrameSpec, earlier: &FrameSpec, reply: bool) {
    spec.ip = earlier.ip.clone();
    let ports = |l4: &L4Spec| match *l4 {
        L4Spec::Tcp {
            src_port, dst_port, ..
        }
        | L4Spec::Udp {
            src_port, dst_port, ..
        } => (src_port, dst_port),
    };
    let (mut src, mut dst) = ports(&earlier.l4);
    if reply {
        std::mem::swap(&mut src, &mut dst);
        match &mut spec.ip {
            IpSpec::V4 { src, dst, .. } => std::mem::swap(src, dst),
            IpSpec::V6 { src, dst, .. } => std::mem::swap(src, dst),
        }
    }
    match &mut spec.l4 {
        L4Spec::Tcp {
            src_port, dst_port, ..
        }
        | L4Spec::Udp {
            src_port, dst_port, ..
        } => (*src_port, *dst_port) = (src, dst),
    }
}

/// Runs a frame through its programs, which check what they can of the run (see
/// [`Tracer::account`]), and accounts it in the model.
fn run_frame(tracer: &impl Tracer, model: &mut FlowModel, shot: &Shot) -> Result<(), String> {
    let frame = shot.frame.as_slice();
    let verdict = oracle::classify(frame);
    let mut gap_ns = shot.gap_ns;
    for &hook in shot.hooks {
        let window = tracer
            .account(hook, frame, std::mem::take(&mut gap_ns))
            .map_err(|error| format!("{hook:?}: {error}"))?;
        if let Some(window) = window {
            model.apply(hook, tracer.ifindex(), &verdict, window);
        }
    }
    Ok(())
}

/// Replays a failed batch frame by frame on a fresh tracer to name the first frame after which
/// the tables differ.
fn first_failing_frame<T: Tracer>(batch: &[Shot], fresh: impl Fn() -> anyhow::Result<T>) -> String {
    let tracer = fresh().expect("a fresh tracer");
    let mut model = FlowModel::new(&tracer);
    for (index, shot) in batch.iter().enumerate() {
        let frame = &shot.frame;
        if let Err(error) = run_frame(&tracer, &mut model, shot) {
            return format!("frame {index} {} on {:?}: {error}", hex(frame), shot.hooks);
        }
        let mismatches = model.mismatches(&tracer).expect("reading the tables");
        if !mismatches.is_empty() {
            return format!(
                "frame {index} {}\noracle verdict: {:?}\n{}",
                hex(frame),
                oracle::classify(frame),
                mismatches.join("\n")
            );
        }
    }
    "no single frame reproduces the difference on a fresh tracer".into()
}

/// How often each kind of evidence occurred in the compared maps: the comparison of a field
/// means something only if the field took many values.
#[derive(Debug, Default)]
struct Coverage {
    flows: usize,
    baselines: usize,
    resetting_senders: usize,
    with_packets_after: usize,
    with_bytes_beyond: usize,
    with_same_seq_rsts: usize,
    with_seq_jump: usize,
    with_max_seq_before: usize,
}

impl Coverage {
    /// Adds what `model` holds (which equals the kernel's maps when this is called).
    fn add(&mut self, model: &FlowModel) {
        self.flows += model.flows().len();
        self.baselines += model
            .flows()
            .values()
            .flat_map(|flow| flow.value.baseline)
            .filter(|baseline| baseline.seen_on != SEEN_NONE)
            .count();
        for rst in model.resets().values().flatten().flatten() {
            let evidence = &rst.evidence;
            self.resetting_senders += 1;
            self.with_packets_after += usize::from(evidence.packets_after > 0);
            self.with_bytes_beyond += usize::from(evidence.bytes_beyond > 0);
            self.with_same_seq_rsts += usize::from(evidence.same_seq_rsts > 0);
            self.with_seq_jump += usize::from(rst.max_seq_jump.iter().any(|&jump| jump > 0));
            self.with_max_seq_before += usize::from(evidence.max_seq_before > 0);
        }
    }

    fn assert_bulk(&self) {
        let counts = [
            ("flows", self.flows, 20_000),
            ("baselines", self.baselines, 10_000),
            ("senders with a RST", self.resetting_senders, 10_000),
            ("with packets after the RST", self.with_packets_after, 2_000),
            ("with bytes beyond the RST", self.with_bytes_beyond, 1_000),
            ("with same-sequence RSTs", self.with_same_seq_rsts, 1_000),
            ("with a sequence jump", self.with_seq_jump, 1_000),
            (
                "with a sequence end before the RST",
                self.with_max_seq_before,
                1_000,
            ),
        ];
        for (name, count, least) in counts {
            assert!(
                count >= least,
                "only {count} {name} (want {least}): {self:?}"
            );
        }
    }
}

/// The whole test on the tracers `fresh` makes: one for the run, and one for each failing batch
/// to replay it on.
pub fn agrees_with_etherparse<T: Tracer>(fresh: impl Fn() -> anyhow::Result<T>) {
    let seed = seed();
    eprintln!("differential test seed: FLAGTRACE_SEED={seed}");
    let mut frames = Frames::new(seed);
    let mut tracer = fresh().expect("a tracer");
    let mut model = FlowModel::new(&tracer);
    let mut verdicts = [0usize; 3];
    let mut coverage = Coverage::default();
    for batch_index in 0..BATCHES {
        let batch: Vec<Shot> = (0..BATCH_LEN).map(|_| frames.next()).collect();
        for (index, shot) in batch.iter().enumerate() {
            if let Err(error) = run_frame(&tracer, &mut model, shot) {
                panic!(
                    "FLAGTRACE_SEED={seed}: batch {batch_index} frame {index} {} on {:?}: {error}",
                    hex(&shot.frame),
                    shot.hooks
                );
            }
            verdicts[match oracle::classify(&shot.frame) {
                Verdict::Tcp(_) => 0,
                Verdict::NotTcp => 1,
                Verdict::ParseError => 2,
            }] += 1;
        }
        let mismatches = model.mismatches(&tracer).expect("reading the tables");
        if !mismatches.is_empty() {
            panic!(
                "FLAGTRACE_SEED={seed}: tables differ from the oracle after batch {batch_index}:\n{}\n\
                 first frame that makes a difference: {}",
                mismatches.join("\n"),
                first_failing_frame(&batch, &fresh)
            );
        }
        coverage.add(&model);
        tracer.clear_flows().expect("clearing flows");
        model.clear_flows();
    }
    // The comparison means something only if every outcome was exercised in bulk.
    let total = BATCHES * BATCH_LEN;
    eprintln!("tcp/non-tcp/parse-error frames: {verdicts:?}, {coverage:?}");
    assert!(total >= 200_000);
    for (name, count) in ["tcp", "non-tcp", "parse-error"].iter().zip(verdicts) {
        assert!(count * 10 >= total, "only {count} {name} frames of {total}");
    }
    for hook in [Hook::Ingress, Hook::Egress] {
        // The tracer's own count, which the comparisons above have checked.
        let ran = tracer
            .counters(hook)
            .expect("reading the counters")
            .packets();
        assert!(
            ran >= 100_000,
            "the {hook:?} program ran on only {ran} frames"
        );
    }
    coverage.assert_bulk();
}
