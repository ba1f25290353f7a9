//! `cargo xtask bench` works: the whole benchmark, with a tiny repeat and small tables, measures
//! every case, checks that each run reached the flow entry it claims to measure (the bench fails
//! otherwise), and reports in the issue's format. No time is asserted: benchmarks are not tests.

use flagtrace_tests::bench::{self, Options, PacketKind, Program};
use tracer_common::{FlowKey, FlowValue};

const FILL: u32 = 4096;

#[test]
fn a_tiny_bench_measures_every_case_and_reports_in_the_issues_format() {
    let options = Options {
        repeat: 1000,
        rounds: 2,
        fill: FILL,
        admission_flows: 64,
    };
    let report = bench::run(&options).expect("the bench runs");

    for program in Program::ALL {
        let fills: &[u32] = if Program::WITH_FLOW_TABLE.contains(&program) {
            &[0, FILL]
        } else {
            &[0]
        };
        for &fill in fills {
            for packet in PacketKind::ALL {
                let case = report.case(program, packet, fill).unwrap_or_else(|| {
                    panic!("no case {} {} {fill}", program.name(), packet.name())
                });
                assert_eq!(case.rounds.len(), options.rounds);
                assert!(case.rounds.iter().all(|ns| ns.is_finite()));
            }
        }
    }
    assert_eq!(report.cases.len(), PacketKind::ALL.len() * (2 + 2 * 2));

    // An LRU hash evicts in batches a little before it is exactly full.
    for (program, entries) in &report.entries_after_fill {
        assert!(
            *entries <= FILL && *entries > FILL * 3 / 4,
            "{} table holds {entries} of {FILL}",
            program.name()
        );
    }
    let table = &report.flow_table;
    assert_eq!(table.max_entries, FILL);
    let stored = (std::mem::size_of::<FlowKey>() + std::mem::size_of::<FlowValue>()) as u64;
    assert!(
        table.memlock_bytes >= u64::from(FILL) * stored,
        "{} bytes locked cannot hold {FILL} keys and values",
        table.memlock_bytes
    );
    assert!(table.per_cpu_memlock_bytes > table.memlock_bytes);
    let admitted: Vec<Program> = report.admission.iter().map(|a| a.program).collect();
    assert_eq!(admitted, Program::WITH_FLOW_TABLE);
    assert!(report
        .admission
        .iter()
        .all(|a| a.rounds.len() == options.rounds));

    let json = report.to_json();
    let cases = json["cases"].as_array().expect("cases is an array");
    assert_eq!(cases.len(), report.cases.len());
    for case in cases {
        assert!(case["program"].is_string() && case["packet"].is_string());
        assert!(case["fill"].is_u64() && case["ns_per_packet"].is_number());
    }
    assert_eq!(json["flow_table"]["max_entries"], FILL);
    assert_eq!(json["flow_table"]["memlock_bytes"], table.memlock_bytes);

    // Four flag packets and two plain ones at each fill, and the memory target.
    assert_eq!(report.ratios().len(), 2 * 6 + 1);
    let printed = report.table();
    for packet in PacketKind::ALL {
        assert!(printed.contains(packet.name()), "{printed}");
    }
}
