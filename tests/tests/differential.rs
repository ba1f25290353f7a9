//! Differential test: over 200,000 random and mutated frames through the XDP program (and the TC
//! program, which shares the flow table and counts on its own index). Every run must pass the
//! frame unchanged, and after every batch the flow table (keys, per-sender flag
//! counts, first SYN sender, timestamps) and the global counters must equal what the etherparse
//! oracle (flagtrace_tests::oracle, which documents where and why it departs from etherparse's
//! whole-packet parsers) computes from the same bytes.
//!
//! Most frames are valid TCP frames across IPv4/IPv6, options, extension headers, fragments and
//! VLAN tags, then mutated where the parser looks: flags, lengths, IHL, data offset, EtherTypes,
//! next headers, fragment offsets; truncated, extended, or with bytes inserted between headers.
//! A few are noise. Seeded: FLAGTRACE_SEED=<u64> replays a run; the seed is printed on failure,
//! with the first frame whose result differs, in hex.

use std::time::{SystemTime, UNIX_EPOCH};

use flagtrace_tests::{
    frame::{Ext, Field, FieldKind, Frame, FrameSpec, IpSpec, L4Spec},
    hex,
    model::{FlowModel, Window},
    oracle::{self, ipv4_words, ipv6_words, Segment, Verdict, MAX_IPV6_EXT_HEADERS},
    tracer::{pass_verdict, test_run_accepts, test_run_ifindex, LoadedTracer},
};
use rand::{rngs::SmallRng, seq::SliceRandom, Rng, SeedableRng};
use tracer_common::{Hook, FAMILY_IPV4, FAMILY_IPV6, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

const BATCHES: usize = 400;
const BATCH_LEN: usize = 512;
/// Far above a batch's flows, so the LRU never evicts (even with per-CPU free lists).
const MAX_FLOWS: u32 = 65_536;

/// Few endpoints, so that flows repeat and both directions of a flow occur.
const IPV4_POOL: [[u8; 4]; 3] = [[10, 0, 0, 1], [10, 0, 0, 2], [192, 168, 7, 9]];
const IPV6_POOL: [[u8; 16]; 3] = [
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
];
const PORT_POOL: [u16; 5] = [80, 443, 40000, 40001, 51234];
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
    FrameSpec { tags, ip, l4 }
}

/// The segment a generated frame carries before mutation, when it is plainly readable TCP:
/// the generator's ground truth, which the oracle must reproduce.
fn plain_segment(spec: &FrameSpec) -> Option<Segment> {
    let L4Spec::Tcp {
        src_port,
        dst_port,
        flags,
        ..
    } = spec.l4
    else {
        return None;
    };
    let (family, src, dst) = match &spec.ip {
        IpSpec::V4 {
            src,
            dst,
            fragment_offset: 0,
            ..
        } => (FAMILY_IPV4, ipv4_words(*src), ipv4_words(*dst)),
        IpSpec::V6 { src, dst, exts }
            if exts.len() <= MAX_IPV6_EXT_HEADERS
                && exts
                    .iter()
                    .all(|ext| !matches!(ext, Ext::Fragment { offset, .. } if *offset != 0)) =>
        {
            (FAMILY_IPV6, ipv6_words(*src), ipv6_words(*dst))
        }
        _ => return None,
    };
    (spec.tags.len() <= oracle::MAX_VLAN_TAGS).then_some(Segment {
        family,
        src,
        dst,
        src_port,
        dst_port,
        flags,
    })
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

/// The next frame to test: mostly mutated valid frames, some unmutated, a few noise.
fn next_frame(rng: &mut SmallRng) -> Vec<u8> {
    if rng.gen_bool(0.03) {
        return noise(rng);
    }
    let spec = random_spec(rng);
    let frame = spec.build();
    if let Some(segment) = plain_segment(&spec) {
        assert_eq!(
            oracle::classify(&frame.bytes),
            Verdict::Tcp(segment),
            "the oracle misreads a generated frame: {spec:?} {}",
            hex(&frame.bytes)
        );
    }
    if rng.gen_bool(0.15) {
        frame.bytes
    } else {
        mutate(frame, rng)
    }
}

/// Runs frame number `index` of a batch through both programs, checking the return values and
/// that the frame is unchanged, and accounts it in the model. Odd frames go to TC first, so both
/// hooks create flows.
fn run_frame(
    tracer: &LoadedTracer,
    model: &mut FlowModel,
    ifindex: u32,
    (index, frame): (usize, &[u8]),
) -> Result<(), String> {
    let verdict = oracle::classify(frame);
    let mut hooks = [Hook::Ingress, Hook::Egress];
    if index % 2 == 1 {
        hooks.reverse();
    }
    for hook in hooks {
        let (run, window) = Window::around(|| tracer.run(hook, frame));
        if !test_run_accepts(hook, frame) {
            // Refused by the kernel before the program ran: nothing to count.
            return match run {
                Err(_) => Ok(()),
                Ok(_) => Err(format!(
                    "{hook:?}: test run accepted a frame it should refuse"
                )),
            };
        }
        let run = run.map_err(|e| format!("{hook:?}: {e:#}"))?;
        if run.return_value != pass_verdict(hook) {
            return Err(format!("{hook:?}: returned {}", run.return_value));
        }
        if run.data_out != frame {
            return Err(format!(
                "{hook:?}: changed the frame to {}",
                hex(&run.data_out)
            ));
        }
        model.apply(hook, ifindex, &verdict, window);
    }
    Ok(())
}

/// Replays a failed batch frame by frame on a fresh tracer to name the first frame after which
/// the maps differ.
fn first_failing_frame(batch: &[Vec<u8>], ifindex: u32) -> String {
    let tracer = LoadedTracer::load(MAX_FLOWS).expect("loading the tracer");
    let mut model = FlowModel::new();
    for (index, frame) in batch.iter().enumerate() {
        if let Err(error) = run_frame(&tracer, &mut model, ifindex, (index, frame.as_slice())) {
            return format!("frame {index} {}: {error}", hex(frame));
        }
        let mismatches = model.mismatches(&tracer).expect("reading the maps");
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

#[test]
fn kernel_agrees_with_etherparse_on_random_and_mutated_frames() {
    let seed = seed();
    eprintln!("differential test seed: FLAGTRACE_SEED={seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let ifindex = test_run_ifindex().expect("loopback ifindex");
    let mut tracer = LoadedTracer::load(MAX_FLOWS).expect("loading the tracer");
    let mut model = FlowModel::new();
    let mut verdicts = [0usize; 3];
    let mut flows_seen = 0;
    for batch_index in 0..BATCHES {
        let batch: Vec<Vec<u8>> = (0..BATCH_LEN).map(|_| next_frame(&mut rng)).collect();
        for (index, frame) in batch.iter().enumerate() {
            if let Err(error) = run_frame(&tracer, &mut model, ifindex, (index, frame.as_slice())) {
                panic!(
                    "FLAGTRACE_SEED={seed}: batch {batch_index} frame {index} {}: {error}",
                    hex(frame)
                );
            }
            verdicts[match oracle::classify(frame) {
                Verdict::Tcp(_) => 0,
                Verdict::NotTcp => 1,
                Verdict::ParseError => 2,
            }] += 1;
        }
        let mismatches = model.mismatches(&tracer).expect("reading the maps");
        if !mismatches.is_empty() {
            panic!(
                "FLAGTRACE_SEED={seed}: maps differ from the oracle after batch {batch_index}:\n{}\n\
                 first frame that makes a difference: {}",
                mismatches.join("\n"),
                first_failing_frame(&batch, ifindex)
            );
        }
        flows_seen += model.flows().len();
        tracer.clear_flows().expect("clearing flows");
        model.clear_flows();
    }
    // The comparison means something only if every outcome was exercised in bulk.
    let total = BATCHES * BATCH_LEN;
    eprintln!("tcp/non-tcp/parse-error frames: {verdicts:?}, flows: {flows_seen}");
    assert!(total >= 200_000);
    for (name, count) in ["tcp", "non-tcp", "parse-error"].iter().zip(verdicts) {
        assert!(count * 10 >= total, "only {count} {name} frames of {total}");
    }
    assert!(flows_seen >= 20_000, "only {flows_seen} flows");
}
