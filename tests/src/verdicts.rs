//! What the middlebox labs assert about flagtrace's verdicts, read from the JSON objects of
//! `flows --json` (live) and `pcap --flows --json` (offline): in one place, so that the
//! assertions grow with the JSON.

use std::{collections::BTreeMap, net::SocketAddr};

use serde_json::Value;

use crate::tcpdump::Views;

/// The keys of a flow that make its verdict: who reset, the middlebox's role, when, and the
/// server name the client asked for.
pub const VERDICT_KEYS: [&str; 4] = ["reset_by", "middlebox_role", "reset_phase", "tls_sni"];
/// The durations a flow's RST is measured with: a live attachment counts kernel ticks (a few
/// milliseconds), a capture its own milliseconds, so the two agree within [`TIMING_SLACK_MS`].
pub const TIMING_KEYS: [&str; 2] = ["reset_delay_ms", "idle_before_ms"];
/// How far the live and the offline durations of one RST may differ: two kernel ticks at HZ=100
/// and the capture's own rounding.
pub const TIMING_SLACK_MS: u64 = 25;

/// Asserts a duration of a flow's RST (one of [`TIMING_KEYS`]): within `range` milliseconds.
pub fn assert_ms(flow: &Value, key: &str, range: std::ops::Range<u64>, lab: &str) {
    let ms = flow[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{lab}: no {key}: {flow:#}"));
    assert!(
        range.contains(&ms),
        "{lab}: {key} {ms} ms, expected {range:?}: {flow:#}"
    );
}

/// The one flow from `client` to `server` among `flows`.
pub fn flow(flows: &[Value], (client, server): (SocketAddr, SocketAddr)) -> &Value {
    let matching: Vec<&Value> = flows
        .iter()
        .filter(|flow| flow["client"] == client.to_string() && flow["server"] == server.to_string())
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "flows from {client} to {server}: {flows:#?}"
    );
    matching[0]
}

/// Prints a whole flow on stderr, every key of it: the evidence behind a verdict, and keys
/// newer than these assertions.
pub fn show(label: &str, flow: &Value) {
    eprintln!("{label}: {flow:#}");
}

/// Asserts flagtrace's verdict on a flow that carried a RST: `reset_by`, `middlebox_role`
/// (`None` for null) and `reset_phase`. `lab` says what happened, for the failure message.
pub fn assert_verdict(
    flow: &Value,
    reset_by: &str,
    middlebox_role: Option<&str>,
    reset_phase: &str,
    lab: &str,
) {
    assert!(
        flow["rst"].as_u64().is_some_and(|rst| rst > 0),
        "{lab}: the RST was not counted: {flow:#}"
    );
    let expected = [Some(reset_by), middlebox_role, Some(reset_phase)];
    for (key, expected) in VERDICT_KEYS.into_iter().zip(expected) {
        assert_eq!(
            flow[key],
            expected.map_or(Value::Null, Value::from),
            "{lab}: {key}: {flow:#}"
        );
    }
}

/// Asserts that a flow is no false alarm: whatever reset it, not a middlebox.
pub fn assert_no_middlebox(flow: &Value, lab: &str) {
    assert_ne!(
        flow["reset_by"], "middlebox",
        "{lab}: a false alarm: {flow:#}"
    );
    assert_eq!(flow["middlebox_role"], Value::Null, "{lab}: {flow:#}");
}

/// A connection that closed normally, FIN both ways, carried no RST and has no verdict.
pub fn assert_closed_normally(flow: &Value) {
    assert_eq!(flow["rst"], 0, "a normal close carries no RST: {flow:#}");
    assert_eq!(flow["state"], "closed", "FIN both ways: {flow:#}");
    for key in VERDICT_KEYS {
        assert_eq!(flow[key], Value::Null, "{key}: {flow:#}");
    }
}

/// Asserts that the capture read offline gives the flows that the live attachment counted,
/// each with the same verdict.
pub fn assert_same_verdicts(views: &Views) {
    let verdicts = |flows: &[Value]| -> BTreeMap<(String, String), Vec<Value>> {
        flows
            .iter()
            .map(|flow| {
                let key = (flow["client"].to_string(), flow["server"].to_string());
                (key, VERDICT_KEYS.map(|key| flow[key].clone()).to_vec())
            })
            .collect()
    };
    assert!(!views.live.is_empty(), "no flows at all: {views:#?}");
    assert_eq!(
        verdicts(&views.offline),
        verdicts(&views.live),
        "flagtrace pcap ({VERDICT_KEYS:?}, left) against the live attachment (right): {views:#?}"
    );
    for live in &views.live {
        let offline = flow(
            &views.offline,
            (
                live["client"].as_str().unwrap().parse().unwrap(),
                live["server"].as_str().unwrap().parse().unwrap(),
            ),
        );
        for key in TIMING_KEYS {
            let agree = match (live[key].as_u64(), offline[key].as_u64()) {
                (Some(live), Some(offline)) => live.abs_diff(offline) <= TIMING_SLACK_MS,
                (live, offline) => live == offline,
            };
            assert!(
                agree,
                "{key}: {} live, {} offline: {live:#}\n{offline:#}",
                live[key], offline[key]
            );
        }
    }
}
