use tracer_common::Hook;

use super::*;
use crate::analysis::fixtures::*;

/// The kinds of the verdict's signals, in order.
fn kinds(verdict: &Verdict) -> Vec<&SignalKind> {
    verdict.signals.iter().map(|signal| &signal.kind).collect()
}

fn ttl_comparison(rst_ttl: u8, usual_ttl: u8, baseline: BaselineOf) -> SignalKind {
    SignalKind::TtlComparison {
        hook: Hook::Ingress,
        rst_ttl,
        rst_hops: hops(rst_ttl),
        usual_ttl,
        usual_hops: hops(usual_ttl),
        baseline,
        relation: TtlRelation::of(rst_ttl, usual_ttl),
    }
}

const THIS: BaselineOf = BaselineOf::ThisConnection;

fn others(count: usize) -> BaselineOf {
    BaselineOf::OtherConnections { count }
}

fn verdict_of(flow: FlowRecord) -> ResetBy {
    judge_first(&[flow]).reset_by
}

fn has(verdict: &Verdict, wanted: impl Fn(&SignalKind) -> bool) -> bool {
    verdict.signals.iter().any(|signal| wanted(&signal.kind))
}

#[test]
fn hops_count_down_from_the_next_initial_ttl() {
    let cases = [
        (64, 0),
        (63, 1),
        (65, 63),
        (128, 0),
        (127, 1),
        (129, 126),
        (255, 0),
        (254, 1),
        (1, 63),
    ];
    for (ttl, expected) in cases {
        assert_eq!(hops(ttl), expected, "TTL {ttl}");
    }
}

#[test]
fn seed_story_gateway_reset_against_the_port_80_baseline() {
    // Port 443 refused with TTL 64 from the gateway's MAC; port 80 answered by the server,
    // 1 hop behind that gateway, with initial TTL 128.
    let reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
    let port_80 = answered(40002, "10.0.2.1:80", 127, 5);
    let verdict = judge_first(&[reset, port_80]);
    assert_eq!(
        (verdict.reset_by, verdict.rst_from),
        (ResetBy::Middlebox, Role::Server)
    );
    assert_eq!(
        verdict.signals,
        [Signal {
            from: Role::Server,
            weight: Weight::Strong,
            kind: ttl_comparison(64, 127, others(1)),
        }]
    );
}

#[test]
fn ttl_differences_up_to_two_are_a_route_change() {
    for (rst_ttl, usual, expected) in [
        (64, 64, ResetBy::Endpoint),
        (62, 64, ResetBy::Endpoint),
        (66, 64, ResetBy::Endpoint),
        (61, 64, ResetBy::Middlebox),
        (67, 64, ResetBy::Middlebox),
        (128, 127, ResetBy::Endpoint),
        (255, 252, ResetBy::Middlebox),
        (254, 255, ResetBy::Endpoint),
        // The same distance from another initial TTL: another host there, or a
        // transparent box; never a middlebox on that alone.
        (64, 128, ResetBy::Unknown),
        (127, 63, ResetBy::Unknown),
    ] {
        let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), rst(rst_ttl, SERVER_MAC));
        flow.server_evidence.baseline = Some(baseline(usual, SERVER_MAC, Hook::Ingress));
        let verdict = judge_first(&[flow]);
        assert_eq!(verdict.reset_by, expected, "RST TTL {rst_ttl} vs {usual}");
        assert_eq!(
            verdict.signals[0].kind,
            ttl_comparison(rst_ttl, usual, THIS)
        );
        let weight = if expected == ResetBy::Middlebox {
            Weight::Strong
        } else {
            Weight::Comparison
        };
        assert_eq!(verdict.signals[0].weight, weight);
    }
}

#[test]
fn ipv6_hop_limits_are_compared_alike() {
    let reset = reset_by_server(flow(40001, "[fd00:2::1]:443"), rst(64, SERVER_MAC));
    let port_80 = answered(40002, "[fd00:2::1]:80", 61, 5);
    let verdict = judge_first(&[reset, port_80]);
    assert_eq!(verdict.reset_by, ResetBy::Middlebox);
    assert_eq!(kinds(&verdict), [&ttl_comparison(64, 61, others(1))]);

    let mut near = reset_by_server(flow(40003, "[fd00:2::1]:443"), rst(63, SERVER_MAC));
    near.server_evidence.baseline = Some(baseline(61, SERVER_MAC, Hook::Ingress));
    assert_eq!(verdict_of(near), ResetBy::Endpoint);
}

#[test]
fn a_different_mac_on_the_same_hook_is_a_middlebox() {
    let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, OTHER_MAC));
    flow.server_evidence.baseline = Some(baseline(64, SERVER_MAC, Hook::Ingress));
    let verdict = judge_first(&[flow.clone()]);
    assert_eq!(verdict.reset_by, ResetBy::Middlebox);
    // The strong signal leads; the agreeing TTL is still reported.
    assert_eq!(
        kinds(&verdict),
        [
            &SignalKind::MacDifference {
                hook: Hook::Ingress,
                rst_mac: OTHER_MAC,
                usual_mac: SERVER_MAC,
                baseline: THIS,
            },
            &ttl_comparison(64, 64, THIS),
        ]
    );

    // An unknown MAC on either side compares nothing.
    flow.server_evidence.rst.as_mut().unwrap().mac = None;
    assert_eq!(verdict_of(flow.clone()), ResetBy::Endpoint);
    flow.server_evidence.rst.as_mut().unwrap().mac = Some(OTHER_MAC);
    flow.server_evidence.baseline.as_mut().unwrap().mac = None;
    assert_eq!(verdict_of(flow), ResetBy::Endpoint);
}

#[test]
fn a_baseline_seen_on_the_other_hook_is_not_compared() {
    let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
    flow.server_evidence.baseline = Some(baseline(128, OTHER_MAC, Hook::Egress));
    let verdict = judge_first(&[flow]);
    assert_eq!(verdict.reset_by, ResetBy::Unknown);
    assert_eq!(
        kinds(&verdict),
        [&SignalKind::NoBaseline {
            hook: Hook::Ingress
        }]
    );
}

#[test]
fn race_is_strong_even_without_a_baseline() {
    let mut evidence = rst(64, SERVER_MAC);
    evidence.packets_after = 4;
    evidence.bytes_beyond = 3000;
    let verdict = judge_first(&[reset_by_server(flow(40001, "10.0.2.1:443"), evidence)]);
    assert_eq!(verdict.reset_by, ResetBy::Middlebox);
    assert_eq!(
        kinds(&verdict),
        [
            &SignalKind::DataAfterRst {
                rst_seq: 1000,
                packets_after: 4,
                bytes_beyond: 3000
            },
            &SignalKind::NoBaseline {
                hook: Hook::Ingress
            },
        ]
    );
}

#[test]
fn an_ack_beyond_the_rsts_is_strong_even_when_ttl_and_mac_agree() {
    // The half-closing client: the injector forged the server's TTL and MAC, then the server,
    // unaware, acknowledged the client's FIN.
    let mut evidence = rst(64, SERVER_MAC);
    evidence.ack = 2000;
    evidence.packets_after = 1;
    evidence.ack_beyond = 1;
    let verdict = judge_first(&[reset_by_server(flow(40001, "10.0.2.1:443"), evidence)]);
    assert_eq!(verdict.reset_by, ResetBy::Middlebox);
    assert_eq!(
        verdict.signals[0].kind,
        SignalKind::AckAfterRst {
            rst_ack: 2000,
            packets_after: 1,
            ack_beyond: 1
        }
    );
    assert_eq!(verdict.signals[0].weight, Weight::Strong);
}

#[test]
fn packets_after_without_data_beyond_only_support() {
    let mut evidence = rst(64, SERVER_MAC);
    evidence.packets_after = 2;
    let no_baseline = reset_by_server(flow(40001, "10.0.2.1:443"), evidence);
    let verdict = judge_first(std::slice::from_ref(&no_baseline));
    assert_eq!(verdict.reset_by, ResetBy::Unknown);
    let after = SignalKind::PacketsAfterRst {
        rst_seq: 1000,
        packets_after: 2,
    };
    assert_eq!(verdict.signals[1].kind, after);
    assert_eq!(verdict.signals[1].weight, Weight::Supporting);

    let mut with_baseline = no_baseline;
    with_baseline.server_evidence.baseline = Some(baseline(64, SERVER_MAC, Hook::Ingress));
    assert_eq!(verdict_of(with_baseline), ResetBy::Endpoint);
}

#[test]
fn back_to_back_rsts_that_jump() {
    let mut evidence = rst(64, SERVER_MAC);
    evidence.max_seq_jump = SEQ_JUMP_LIMIT + 1;
    let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), evidence);
    flow.server_evidence.baseline = Some(baseline(64, SERVER_MAC, Hook::Ingress));
    let verdict = judge_first(&[flow.clone()]);
    assert_eq!(verdict.reset_by, ResetBy::Middlebox);
    assert_eq!(
        verdict.signals[0].kind,
        SignalKind::SequenceJump {
            jump: SEQ_JUMP_LIMIT + 1,
            window_ns: 2 * SECOND
        }
    );
    flow.server_evidence.rst.as_mut().unwrap().max_seq_jump = SEQ_JUMP_LIMIT;
    assert_eq!(verdict_of(flow), ResetBy::Endpoint);
}

/// A refusal 3 s after the SYN, five RSTs with one sequence number, a packet after the RST:
/// all supporting, none decides. The IP ID 0 against port 80's 4321 is not even compared:
/// IDs are numbered per connection.
fn everything_supporting() -> (FlowRecord, FlowRecord) {
    let mut evidence = rst(64, SERVER_MAC);
    evidence.first_ns = 3 * SECOND + 1;
    evidence.same_seq_rsts = 4;
    evidence.packets_after = 1;
    let refused = reset_by_server(flow(40001, "10.0.2.1:443"), evidence);
    let mut port_80 = answered(40002, "10.0.2.1:80", 64, 5);
    port_80.server_evidence.baseline.as_mut().unwrap().ip_id = 4321;
    (refused, port_80)
}

#[test]
fn supporting_signals_never_decide_alone() {
    let (refused, port_80) = everything_supporting();
    let verdict = judge_first(&[refused.clone(), port_80.clone()]);
    assert_eq!(verdict.reset_by, ResetBy::Endpoint);
    assert_eq!(
        kinds(&verdict),
        [
            &ttl_comparison(64, 64, others(1)),
            &SignalKind::PacketsAfterRst {
                rst_seq: 1000,
                packets_after: 1
            },
            &SignalKind::RepeatedSequence { rsts: 5, seq: 1000 },
            &SignalKind::SlowRefusal {
                delay_ns: 3 * SECOND,
                prompt_answers: 1
            },
        ]
    );
    let weights: Vec<Weight> = verdict.signals.iter().map(|s| s.weight).collect();
    assert_eq!(
        weights,
        [
            Weight::Comparison,
            Weight::Supporting,
            Weight::Supporting,
            Weight::Supporting
        ]
    );

    // Without the port-80 baseline the same signals leave it unknown.
    let alone = judge_first(&[refused]);
    assert_eq!(alone.reset_by, ResetBy::Unknown);
    assert_eq!(
        alone.signals[0].kind,
        SignalKind::NoBaseline {
            hook: Hook::Ingress
        }
    );
}

#[test]
fn a_slow_refusal_needs_prompt_answers_to_compare_with() {
    let (refused, mut port_80) = everything_supporting();
    port_80.syn_ack_ns = Some(1 + 2 * SECOND);
    let verdict = judge_first(&[refused, port_80]);
    assert!(!has(&verdict, |kind| matches!(
        kind,
        SignalKind::SlowRefusal { .. }
    )));
}

#[test]
fn ip_ids_close_or_unnumbered_are_in_line() {
    let cases = [
        (5000, 1000, Some(Some(4000))),
        (1999, 1000, None),
        (10, 65000, None), // 546 apart, around the wrap
        (40000, 1000, Some(Some(26536))),
        (1234, 0, None), // the host does not number its packets
        (0, 0, None),
        (0, 1000, Some(None)),
    ];
    for (rst_id, usual, out_of_line) in cases {
        let mut evidence = rst(64, SERVER_MAC);
        evidence.ip_id = rst_id;
        let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), evidence);
        let mut usual_baseline = baseline(64, SERVER_MAC, Hook::Ingress);
        usual_baseline.ip_id = usual;
        flow.server_evidence.baseline = Some(usual_baseline);
        let verdict = judge_first(&[flow]);
        assert_eq!(verdict.reset_by, ResetBy::Endpoint);
        let found = verdict.signals.iter().find_map(|signal| match signal.kind {
            SignalKind::IpIdOutOfLine { distance, .. } => {
                assert_eq!(signal.weight, Weight::Supporting);
                Some(distance)
            }
            _ => None,
        });
        assert_eq!(found, out_of_line, "{rst_id} vs {usual}");
    }
}

#[test]
fn no_baseline_is_unknown_never_a_guess() {
    let verdict = judge_first(&[reset_by_server(
        flow(40001, "10.0.2.1:443"),
        rst(64, SERVER_MAC),
    )]);
    assert_eq!(verdict.reset_by, ResetBy::Unknown);
    assert_eq!(
        kinds(&verdict),
        [&SignalKind::NoBaseline {
            hook: Hook::Ingress
        }]
    );
    // Another host's packets are no baseline for this one.
    let other_host = answered(40002, "10.0.2.9:80", 64, 5);
    let with_other = judge_first(&[
        reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC)),
        other_host,
    ]);
    assert_eq!(with_other.reset_by, ResetBy::Unknown);
}

#[test]
fn a_baseline_that_arrived_after_the_reset_counts() {
    let reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
    // Port 80 answered 10 s after the reset.
    let later = answered(40002, "10.0.2.1:80", 64, 11 * SECOND);
    assert_eq!(judge_first(&[reset, later]).reset_by, ResetBy::Endpoint);
}

#[test]
fn other_flows_give_the_most_common_ttl_and_mac() {
    let reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
    let mut odd_one = answered(40004, "10.0.2.1:22", 64, 9);
    odd_one.server_evidence.baseline.as_mut().unwrap().mac = Some(OTHER_MAC);
    let flows = [
        reset,
        answered(40002, "10.0.2.1:80", 127, 5),
        answered(40003, "10.0.2.1:8080", 127, 6),
        odd_one,
    ];
    let verdict = judge_first(&flows);
    assert_eq!(verdict.reset_by, ResetBy::Middlebox);
    assert_eq!(kinds(&verdict), [&ttl_comparison(64, 127, others(3))]);
}

#[test]
fn this_flows_baseline_comes_before_other_flows() {
    let mut reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
    reset.server_evidence.baseline = Some(baseline(64, SERVER_MAC, Hook::Ingress));
    let port_80 = answered(40002, "10.0.2.1:80", 127, 5);
    let verdict = judge_first(&[reset, port_80]);
    assert_eq!(verdict.reset_by, ResetBy::Endpoint);
    assert_eq!(kinds(&verdict), [&ttl_comparison(64, 64, THIS)]);
}

#[test]
fn the_clients_own_reset_leaves_on_egress() {
    let mut flow = flow(40001, "10.0.2.1:443");
    flow.client_to_server.rst = 1;
    flow.client_evidence.rst = Some(Box::new(RstSeen {
        hook: Hook::Egress,
        ..rst(64, SERVER_MAC)
    }));
    let verdict = judge_first(&[flow]);
    assert_eq!(
        (verdict.reset_by, verdict.rst_from),
        (ResetBy::Endpoint, Role::Client)
    );
    assert_eq!(
        verdict.signals,
        [Signal {
            from: Role::Client,
            weight: Weight::Comparison,
            kind: SignalKind::TtlComparison {
                hook: Hook::Egress,
                rst_ttl: 64,
                rst_hops: 0,
                usual_ttl: 64,
                usual_hops: 0,
                baseline: THIS,
                relation: TtlRelation::Agrees,
            },
        }]
    );
}

#[test]
fn a_forged_rst_decides_over_the_clients_answer_to_it() {
    // The injector's RST arrives first; the client's stack answers the server's later data
    // with RSTs of its own.
    let mut injected = rst(64, OTHER_MAC);
    injected.packets_after = 3;
    injected.bytes_beyond = 2896;
    let mut flow = reset_by_server(flow(40001, "10.0.2.1:443"), injected);
    flow.server_evidence.baseline = Some(baseline(64, SERVER_MAC, Hook::Ingress));
    flow.client_to_server.rst = 2;
    flow.client_evidence.rst = Some(Box::new(RstSeen {
        first_ns: 2 * SECOND,
        hook: Hook::Egress,
        ..rst(64, SERVER_MAC)
    }));
    let verdict = judge_first(&[flow.clone()]);
    assert_eq!(
        (verdict.reset_by, verdict.rst_from),
        (ResetBy::Middlebox, Role::Server)
    );
    let from: Vec<Role> = verdict.signals.iter().map(|s| s.from).collect();
    assert_eq!(
        from,
        [Role::Server, Role::Server, Role::Server, Role::Client]
    );
    assert!(matches!(
        kinds(&verdict)[..2],
        [
            SignalKind::MacDifference { .. },
            SignalKind::DataAfterRst { .. }
        ]
    ));

    // Without a middlebox signal, the earliest RST decides.
    let mut honest = flow;
    honest.server_evidence.rst = Some(Box::new(RstSeen {
        first_ns: 3 * SECOND,
        ..rst(64, SERVER_MAC)
    }));
    let verdict = judge_first(&[honest]);
    assert_eq!(
        (verdict.reset_by, verdict.rst_from),
        (ResetBy::Endpoint, Role::Client)
    );
}

#[test]
fn no_rst_no_verdict_and_lost_evidence_is_unknown() {
    let quiet = flow(40001, "10.0.2.1:80");
    assert_eq!(judge(&quiet, &HostIndex::new([&quiet])), None);

    let mut evicted = flow(40001, "10.0.2.1:443");
    evicted.server_to_client.rst = 1;
    let verdict = judge_first(&[evicted]);
    assert_eq!(
        (verdict.reset_by, verdict.rst_from),
        (ResetBy::Unknown, Role::Server)
    );
    assert_eq!(kinds(&verdict), [&SignalKind::EvidenceLost]);
}

/// A connection whose handshake answer arrived with `handshake_ttl` (no FIN from the server
/// yet), reset by a RST with `rst_ttl`; and `closed` connections to the server's port 80
/// whose FINs arrived with `host_ttl`.
fn behind_a_handshake(handshake_ttl: u8, rst_ttl: u8, host_ttl: u8, closed: u16) -> Verdict {
    let mut reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(rst_ttl, SERVER_MAC));
    reset.server_evidence.baseline = Some(handshake(handshake_ttl, SERVER_MAC, Hook::Ingress));
    let mut flows = vec![reset];
    flows.extend((0..closed).map(|i| answered(40100 + i, "10.0.2.1:80", host_ttl, 5)));
    judge_first(&flows)
}

#[test]
fn a_syn_proxys_handshake_is_no_baseline_for_the_servers_reset() {
    // The proxy answered at 0 hops; the server's RST and its FINs elsewhere at 1 hop.
    let verdict = behind_a_handshake(64, 127, 127, 2);
    assert_eq!(
        (verdict.reset_by, verdict.middlebox_role),
        (ResetBy::Endpoint, None)
    );
    assert_eq!(
        verdict.signals[0].kind,
        SignalKind::SynProxyHandshake {
            hook: Hook::Ingress,
            handshake_ttl: 64,
            handshake_hops: 0,
            rst_ttl: 127,
            rst_hops: 1,
            connections: 2
        }
    );
    // Nothing of the server after a handshake: it cannot be told, never a middlebox.
    let alone = behind_a_handshake(64, 127, 127, 0);
    assert_eq!(alone.reset_by, ResetBy::Unknown);
    assert!(matches!(
        alone.signals[0].kind,
        SignalKind::HandshakeOnlyDiffers { .. }
    ));
    // A RST from nearer than the handshake's answer: no SYN proxy explains it.
    let nearer = behind_a_handshake(127, 64, 127, 0);
    assert_eq!(
        (nearer.reset_by, nearer.middlebox_role),
        (ResetBy::Middlebox, Some(MiddleboxRole::OnPath))
    );
    assert_eq!(kinds(&nearer), [&ttl_comparison(64, 127, THIS)]);
}

#[test]
fn a_proxy_that_answered_the_handshake_and_reset_is_a_middlebox() {
    // The seed story: the gateway answered port 443 itself (0 hops) and reset; the server's
    // port 80 is 1 hop away.
    let verdict = behind_a_handshake(64, 64, 127, 1);
    assert_eq!(
        (verdict.reset_by, verdict.middlebox_role),
        (ResetBy::Middlebox, Some(MiddleboxRole::Proxy))
    );
    assert_eq!(
        verdict.signals[0],
        Signal {
            from: Role::Server,
            weight: Weight::Strong,
            kind: SignalKind::ProxyAnswered {
                hook: Hook::Ingress,
                proxy_ttl: 64,
                proxy_hops: 0,
                host_ttl: 127,
                host_hops: 1,
                connections: 1
            }
        }
    );
}

#[test]
fn a_handshake_and_reset_that_agree_with_the_host_are_the_hosts() {
    let verdict = behind_a_handshake(127, 127, 127, 3);
    assert_eq!(verdict.reset_by, ResetBy::Endpoint);
    assert_eq!(kinds(&verdict), [&ttl_comparison(127, 127, THIS)]);
    // Without other connections, as with any baseline.
    assert_eq!(
        behind_a_handshake(127, 127, 127, 0).reset_by,
        ResetBy::Endpoint
    );
}

#[test]
fn another_host_at_the_same_distance_is_unknown() {
    // A load balancer's backend answered this port from initial TTL 128, the host's other
    // ports come from initial TTL 64, both 1 hop away.
    let verdict = behind_a_handshake(127, 127, 63, 2);
    assert_eq!(verdict.reset_by, ResetBy::Unknown);
    assert_eq!(kinds(&verdict), [&ttl_comparison(127, 63, others(2))]);
}

#[test]
fn a_rst_unlike_both_the_handshake_and_the_host_is_a_middlebox_on_the_path() {
    let verdict = behind_a_handshake(127, 250, 127, 2);
    assert_eq!(
        (verdict.reset_by, verdict.middlebox_role),
        (ResetBy::Middlebox, Some(MiddleboxRole::OnPath))
    );
    assert_eq!(kinds(&verdict), [&ttl_comparison(250, 127, others(2))]);
}

#[test]
fn a_middlebox_that_answered_no_handshake_is_on_the_path() {
    let reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
    let verdict = judge_first(&[reset, answered(40002, "10.0.2.1:80", 127, 5)]);
    assert_eq!(verdict.middlebox_role, Some(MiddleboxRole::OnPath));
}

#[test]
fn a_mac_unlike_only_the_handshakes_needs_the_hosts_later_packets() {
    // On a flat segment: the SYN/ACK came from OTHER_MAC (a SYN proxy's, or the server's),
    // the RST from SERVER_MAC.
    let with_later = |later: Option<MacAddr>| {
        let mut reset = reset_by_server(flow(40001, "10.0.2.1:443"), rst(64, SERVER_MAC));
        reset.server_evidence.baseline = Some(handshake(64, OTHER_MAC, Hook::Ingress));
        let mut flows = vec![reset];
        if let Some(mac) = later {
            let mut closed = answered(40002, "10.0.2.1:80", 64, 5);
            closed.server_evidence.baseline.as_mut().unwrap().mac = Some(mac);
            flows.push(closed);
        }
        judge_first(&flows)
    };
    let macs = |verdict: &Verdict| -> Vec<Weight> {
        verdict
            .signals
            .iter()
            .filter(|s| matches!(s.kind, SignalKind::MacDifference { .. }))
            .map(|s| s.weight)
            .collect()
    };
    // Nothing else to go by: reported, never decisive.
    let alone = with_later(None);
    assert_eq!(
        (alone.reset_by, macs(&alone)),
        (ResetBy::Endpoint, vec![Weight::Supporting])
    );
    // The host's later packets come from the RST's MAC: a SYN proxy answered.
    let proxied = with_later(Some(SERVER_MAC));
    assert_eq!(
        (proxied.reset_by, macs(&proxied)),
        (ResetBy::Endpoint, vec![])
    );
    // From neither: another box sent the RST.
    let forged = with_later(Some(MacAddr([0x02, 0, 0, 0, 0, 0x77])));
    assert_eq!(
        (forged.reset_by, macs(&forged)),
        (ResetBy::Middlebox, vec![Weight::Strong])
    );
}

#[test]
fn signals_serialize_with_their_kind_and_numbers() {
    let signal = Signal {
        from: Role::Server,
        weight: Weight::Strong,
        kind: ttl_comparison(64, 127, others(2)),
    };
    assert_eq!(
        serde_json::to_value(&signal).unwrap(),
        serde_json::json!({
            "from": "server", "weight": "strong", "signal": "ttl_comparison",
            "hook": "ingress", "rst_ttl": 64, "rst_hops": 0, "usual_ttl": 127,
            "usual_hops": 1, "baseline": {"of": "other_connections", "count": 2},
            "relation": "other_distance"
        })
    );
    let mac = Signal {
        from: Role::Client,
        weight: Weight::Strong,
        kind: SignalKind::MacDifference {
            hook: Hook::Egress,
            rst_mac: OTHER_MAC,
            usual_mac: SERVER_MAC,
            baseline: THIS,
        },
    };
    assert_eq!(
        serde_json::to_value(&mac).unwrap()["rst_mac"],
        "02:00:00:00:00:99"
    );
    assert_eq!(
        serde_json::to_value(Signal {
            from: Role::Server,
            weight: Weight::Comparison,
            kind: SignalKind::EvidenceLost,
        })
        .unwrap(),
        serde_json::json!({"from": "server", "weight": "comparison", "signal": "evidence_lost"})
    );
}
