//! `flagtrace attach --metrics`: the Prometheus endpoint, checked with `promtool check metrics`
//! and scraped by a real Prometheus server (Debian's `prometheus`), whose HTTP API must give
//! back what flagtrace's own commands say.
//!
//! `flagtrace` attaches inside a lab namespace, and its endpoint listens on 127.0.0.1 of the
//! namespace the test runs in: the socket is bound before flagtrace enters the lab's
//! namespace. Nothing listens anywhere but on loopback, and the Prometheus server's storage
//! lives in a temporary directory removed on drop, with the server killed.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use flagtrace_tests::{
    lab::{
        echo_between, expect_refusal, flagtrace, flagtrace_bin, flows_json, hooks_on, run, run_ok,
        Family, VethLab, TIMEOUT,
    },
    scrape::{abuse, attach_with_metrics, http_get, HttpResponse},
    tracer::PinDir,
    unique_name,
};
use serde_json::Value;

const MESSAGE: &[u8] = b"who reset this connection?";
const CLOSED_PORT: u16 = 9;

/// The README's example Prometheus configuration, alerting rules and their unit tests.
fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/prometheus")
}

/// The sample lines of the text format: name, labels, value.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value: {line}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            (name.to_owned(), labels, value)
        })
        .collect()
}

/// `a="x",b="y"` with the text format's escapes (`\\`, `\"`, `\n`).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, escaped)) => value.push(escaped),
                    None => panic!("dangling escape in {text}"),
                },
                Some((index, '"')) => break index,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {text}"),
            }
        };
        labels.insert(name.trim_start_matches(',').to_owned(), value);
        rest = &after[end + 1..];
    }
    labels
}

/// The value of the one sample of `name` whose labels include `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    let matching: Vec<f64> = samples(text)
        .into_iter()
        .filter(|(sample, sample_labels, _)| {
            sample == name
                && labels
                    .iter()
                    .all(|(key, value)| sample_labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|(_, _, value)| value)
        .collect();
    assert_eq!(matching.len(), 1, "{name}{labels:?} in\n{text}");
    matching[0] as u64
}

/// `flagtrace stats --json` for the only attachment under `pin_root`.
fn stats_json(pin_root: &Path) -> Value {
    let root = pin_root.to_str().expect("UTF-8 pin root");
    let output =
        run_ok(Command::new(flagtrace_bin()).args(["--pin-root", root, "stats", "--json"]));
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 1, "one attachment: {output}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {output}"))
}

/// A scrape, and `stats --json` read right before and after it with the same counts, so that
/// a late packet (an ARP refresh) cannot make them differ.
fn scrape_with_stats(metrics: SocketAddr, pin_root: &Path) -> (HttpResponse, Value) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let before = stats_json(pin_root);
        let scrape = http_get(metrics, "/metrics").expect("GET /metrics");
        if stats_json(pin_root) == before {
            return (scrape, before);
        }
        assert!(Instant::now() < deadline, "counts never settled");
        thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `promtool ARGS` with `stdin`, which must succeed.
fn promtool(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin.as_bytes())
        .expect("writing to promtool");
    let output = child.wait_with_output().expect("waiting for promtool");
    assert!(
        output.status.success(),
        "promtool {args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A Prometheus server on 127.0.0.1, scraping `targets` every second with the example rules
/// loaded; killed, and its directory (config, storage, log) removed, on drop.
struct PrometheusServer {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl PrometheusServer {
    fn start(targets: &[SocketAddr]) -> Self {
        let dir = std::env::temp_dir().join(unique_name("flagtrace-prometheus"));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let rules = examples_dir().join("flagtrace-rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: flagtrace\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        let log = fs::File::create(dir.join("log")).expect("creating the log");
        fs::write(&config_path, config).expect("writing the config");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_loopback_port()));
        let spawned = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) => {
                let _ = fs::remove_dir_all(&dir);
                panic!("starting prometheus (Debian package prometheus): {error}");
            }
        };
        let server = Self { child, dir, addr };
        server.wait_until(|| {
            let ready = http_get(server.addr, "/-/ready");
            ready.is_ok_and(|response| response.status == 200)
        });
        server
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Polls `done` until it holds, failing after [`TIMEOUT`] with the server's log.
    fn wait_until(&self, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "Prometheus did not get there in {TIMEOUT:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// `GET path`, which must answer 200 with `{"status": "success"}`; returns `data`.
    fn api(&self, path: &str) -> Value {
        let response = http_get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(response.status, 200, "GET {path}: {}", response.body);
        let body: Value = serde_json::from_str(&response.body)
            .unwrap_or_else(|e| panic!("GET {path}: {e}: {}", response.body));
        assert_eq!(body["status"], "success", "GET {path}: {body}");
        body["data"].clone()
    }

    /// The instant vector of a PromQL query.
    fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(promql)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of a query that must give exactly one series, once it does.
    fn query_one(&self, promql: &str) -> (BTreeMap<String, String>, u64) {
        let mut result = Vec::new();
        self.wait_until(|| {
            result = self.query(promql);
            !result.is_empty()
        });
        assert_eq!(result.len(), 1, "{promql}: {result:?}");
        let labels = serde_json::from_value(result[0]["metric"].clone()).expect("labels");
        let value = result[0]["value"][1]
            .as_str()
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{promql}: {result:?}"));
        (labels, value as u64)
    }
}

impl Drop for PrometheusServer {
    /// Never panics: it also runs while a failed test unwinds.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Err(error) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: removing {}: {error}", self.dir.display());
        }
    }
}

/// A URL query component: everything but the unreserved characters percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_what_flagtrace_counted() {
    let pins = PinDir::create().expect("pin root");
    let lab = VethLab::create();
    let (netns, iface) = (&lab.client.netns, lab.client.iface);
    let (loader, metrics) = attach_with_metrics(netns, pins.path(), iface);

    // The quiet lab makes exact counts: one connection closed normally, one refused.
    echo_between(&lab.client, &lab.server, Family::V4, 8080, MESSAGE);
    expect_refusal(&lab.client, lab.server.addr(Family::V4, CLOSED_PORT));

    let (scrape, stats) = scrape_with_stats(metrics, pins.path());
    assert_eq!(scrape.status, 200, "{scrape:?}");
    assert_eq!(
        scrape.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = &scrape.body;
    promtool(&["check", "metrics"], text);

    // Every series carries the attachment, and none is per flow.
    let all = samples(text);
    for (name, labels, _) in &all {
        assert!(name.starts_with("flagtrace_"), "{name}");
        assert_eq!(labels.get("iface").map(String::as_str), Some(iface));
        assert_eq!(labels.get("netns").map(String::as_str), Some(netns.name()));
        for per_flow in ["client", "server", "port"] {
            assert!(!labels.contains_key(per_flow), "{name}{labels:?}");
        }
    }

    // The counters are the ones `stats --json` prints.
    for direction in ["ingress", "egress"] {
        let at = [("direction", direction)];
        let hook = &stats[direction];
        for (name, key) in [
            ("flagtrace_packets_total", "packets"),
            ("flagtrace_tcp_packets_total", "tcp"),
            ("flagtrace_parse_errors_total", "parse_errors"),
            ("flagtrace_flows_created_total", "flows_created"),
        ] {
            assert_eq!(
                Some(value(text, name, &at)),
                hook[key].as_u64(),
                "{name}{at:?}"
            );
        }
    }
    assert_eq!(
        Some(value(text, "flagtrace_flows", &[])),
        stats["flows"].as_u64()
    );
    assert_eq!(
        Some(value(text, "flagtrace_flow_table_capacity", &[])),
        stats["max_flows"].as_u64()
    );

    // The flags are the sums over `flows --json`: the client is the local side, so what it
    // sent left through egress, and what the server sent came in through ingress.
    let flows = flows_json(pins.path());
    assert_eq!(flows.len(), 2, "{flows:#?}");
    for (direction, side) in [
        ("egress", "client_to_server"),
        ("ingress", "server_to_client"),
    ] {
        for flag in ["syn", "syn_ack", "fin", "rst"] {
            let sum: u64 = flows.iter().map(|f| f[side][flag].as_u64().unwrap()).sum();
            let at = [("direction", direction), ("flag", flag)];
            assert_eq!(value(text, "flagtrace_tcp_flags_total", &at), sum, "{at:?}");
        }
    }
    let flag = |direction, flag| {
        value(
            text,
            "flagtrace_tcp_flags_total",
            &[("direction", direction), ("flag", flag)],
        )
    };
    assert_eq!(
        (
            flag("egress", "syn"),
            flag("ingress", "syn_ack"),
            flag("ingress", "rst")
        ),
        (2, 1, 1)
    );

    // The refusal is the one reset, judged as `flagtrace resets` judges it; every verdict has
    // a series, and the per-gateway series add up to the same.
    let refused = flows
        .iter()
        .find(|flow| flow["reset_by"].is_string())
        .expect("the refused flow has a verdict");
    let reset_by = refused["reset_by"].as_str().unwrap();
    let role = refused["middlebox_role"].as_str().unwrap_or("none");
    let verdict_roles = [
        ("endpoint", "none"),
        ("middlebox", "proxy"),
        ("middlebox", "on_path"),
        ("unknown", "none"),
    ];
    for (verdict, verdict_role) in verdict_roles {
        let expected = u64::from(verdict == reset_by && verdict_role == role);
        let at = [("verdict", verdict), ("role", verdict_role)];
        assert_eq!(
            value(text, "flagtrace_reset_flows", &at),
            expected,
            "{at:?}"
        );
    }
    let by_gateway: Vec<_> = all
        .iter()
        .filter(|(name, _, _)| name == "flagtrace_reset_flows_by_gateway")
        .collect();
    assert_eq!(by_gateway.len(), 1, "{by_gateway:?}");
    let (_, labels, count) = by_gateway[0];
    let gateway_mac = flows
        .iter()
        .find(|flow| flow["reset_by"].is_string())
        .and_then(|flow| flow["gateway_mac"].as_str())
        .expect("the refused flow has a gateway MAC");
    assert_eq!(labels["gateway_mac"], gateway_mac);
    assert_eq!(labels["verdict"], reset_by);
    assert_eq!(*count, 1.0);

    // Only /metrics is served.
    let elsewhere = http_get(metrics, "/").expect("GET /");
    assert_eq!(elsewhere.status, 404, "{elsewhere:?}");

    // A real Prometheus scrapes the endpoint (from the test's namespace, while flagtrace is
    // attached in the lab's) and gives the same numbers back through its API.
    let prometheus = PrometheusServer::start(&[metrics]);
    let selector = |name: &str, labels: &[(&str, &str)]| {
        let mut matchers = vec![format!("iface=\"{iface}\"")];
        matchers.extend(labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")));
        format!("{name}{{{}}}", matchers.join(","))
    };
    let checks = [
        (
            selector(
                "flagtrace_tcp_flags_total",
                &[("direction", "egress"), ("flag", "syn")],
            ),
            flag("egress", "syn"),
        ),
        (
            selector(
                "flagtrace_tcp_flags_total",
                &[("direction", "ingress"), ("flag", "rst")],
            ),
            flag("ingress", "rst"),
        ),
        (
            selector("flagtrace_flows_created_total", &[("direction", "egress")]),
            stats["egress"]["flows_created"].as_u64().unwrap(),
        ),
        (
            selector(
                "flagtrace_reset_flows",
                &[("verdict", reset_by), ("role", role)],
            ),
            1,
        ),
        (
            format!("sum({})", selector("flagtrace_reset_flows_by_gateway", &[])),
            1,
        ),
    ];
    for (promql, expected) in checks {
        let (labels, got) = prometheus.query_one(&promql);
        assert_eq!(got, expected, "{promql}");
        if !promql.starts_with("sum(") {
            // What tells the appliances of a fleet apart.
            assert_eq!(labels["job"], "flagtrace", "{labels:?}");
            assert_eq!(labels["instance"], metrics.to_string(), "{labels:?}");
            assert_eq!(labels["netns"], netns.name(), "{labels:?}");
        }
    }
    let (_, up) = prometheus.query_one("up{job=\"flagtrace\"}");
    assert_eq!(up, 1);
    // The README's alerting rules are loaded by the real server.
    let rules = prometheus.api("/api/v1/rules").to_string();
    assert!(rules.contains("FlagtraceMiddleboxResets"), "{rules}");
    drop(prometheus);

    let status = loader.terminate();
    assert!(status.success(), "flagtrace attach exited with {status}");
    let hooks = hooks_on(netns, iface);
    assert!(
        hooks.xdp.is_empty() && hooks.tc.is_empty(),
        "left behind: {hooks:?}"
    );
}

#[test]
fn a_taken_metrics_port_fails_before_attaching_and_names_the_address() {
    let pins = PinDir::create().expect("pin root");
    let lab = VethLab::create();
    let taken = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    let addr = taken.local_addr().expect("local address").to_string();
    let root = pins.path().to_str().expect("UTF-8 pin root");
    let output = flagtrace(&[
        "--netns",
        lab.client.netns.name(),
        "--pin-root",
        root,
        "attach",
        lab.client.iface,
        "--metrics",
        &addr,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("binding the metrics endpoint to {addr}")),
        "{stderr}"
    );
    let hooks = hooks_on(&lab.client.netns, lab.client.iface);
    assert!(hooks.xdp.is_empty() && hooks.tc.is_empty(), "{hooks:?}");
    let pinned: Vec<_> = fs::read_dir(pins.path()).expect("pin root").collect();
    assert!(pinned.is_empty(), "nothing pinned: {pinned:?}");
}

#[test]
fn the_readmes_prometheus_examples_are_valid() {
    let dir = examples_dir();
    let config = dir.join("prometheus.yml");
    let output = run(Command::new("promtool").args([
        "check",
        "config",
        config.to_str().expect("UTF-8 path"),
    ]));
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}");
    assert!(!report.contains("WARNING"), "{report}");
    // The alert fires on the first middlebox reset and resolves when they stop.
    let tests = dir.join("flagtrace-rules.test.yml");
    promtool(&["test", "rules", tests.to_str().expect("UTF-8 path")], "");
}

/// A scrape that must succeed, with how long it took (printed, not asserted: the soak
/// measures time).
fn scrape_ok(addr: SocketAddr, after: &str) {
    let started = Instant::now();
    let response = http_get(addr, "/metrics").unwrap_or_else(|e| panic!("{after}: {e}"));
    assert_eq!(response.status, 200, "{after}: {response:?}");
    assert!(response.body.contains("flagtrace_flows"), "{after}");
    eprintln!("scrape {after}: {:?}", started.elapsed());
}

#[test]
fn the_endpoint_answers_through_idle_connections_pipelining_and_a_huge_header() {
    let pins = PinDir::create().expect("pin root");
    let lab = VethLab::create();
    let (loader, addr) = attach_with_metrics(&lab.client.netns, pins.path(), lab.client.iface);
    scrape_ok(addr, "at first");
    let huge_answer = abuse(addr, |after| scrape_ok(addr, after));
    assert!(
        huge_answer.is_empty() || huge_answer.starts_with("HTTP/1.1 431"),
        "{huge_answer}"
    );

    // The endpoint never failed: attach ends on SIGTERM like any other time.
    let status = loader.terminate();
    assert!(status.success(), "{status}");
}
