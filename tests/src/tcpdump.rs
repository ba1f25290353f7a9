//! tcpdump beside a live attachment: a lab's traffic captured on the interface flagtrace is
//! attached to, and read back with `flagtrace pcap`, which must see what the kernel counted.
//! [`AttachedAndCaptured`] gives a lab both views of the same traffic.

use std::{
    path::Path,
    process::Output,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_user::capture::CaptureReader;

use crate::{
    forge::Segment,
    lab::{
        flagtrace, flows_json, json_output, run_ok, stats_json, Daemon, Endpoint, Loader, Netns,
        TIMEOUT,
    },
    tracer::PinDir,
    TempFile,
};

/// `tcpdump ARGS -w FILE` in `netns`, ready (listening) when this returns. Packet-buffered
/// (-U), so that the file holds each packet soon after libpcap hands it over. Not
/// `--immediate-mode`: with it, `-i any` lost a packet at a connection's close in about one run
/// out of ten here (the file lacked it after a minute); without it, packets come in blocks,
/// which the waiting allows for.
pub fn start_tcpdump(netns: &Netns, file: &Path, args: &[&str]) -> Daemon {
    Daemon::start(
        netns
            .command("tcpdump")
            .args(["-n", "-U", "-w"])
            .arg(file)
            .args(args),
        "tcpdump: listening on",
    )
}

/// Stops tcpdump with SIGINT, the way a person does, so it flushes and closes the file.
pub fn stop_tcpdump(mut tcpdump: Daemon) {
    let status = tcpdump.stop_with(libc::SIGINT);
    let log = tcpdump.log();
    assert!(status.success(), "tcpdump: {status}\n{log}");
}

/// `flagtrace pcap ARGS`, run to completion.
pub fn pcap(args: &[&str]) -> Output {
    flagtrace(&[&["pcap"], args].concat())
}

/// `flagtrace pcap ARGS`, which must succeed and print one JSON object a line.
pub fn pcap_json(args: &[&str]) -> Vec<Value> {
    json_output(&pcap(args), &[&["pcap"], args].concat())
}

/// The TCP counters of `stats --json`/`pcap --stats --json`, by hook. Left out: `packets` and
/// `non_tcp`, because the lab's links send a few non-TCP frames (MLD reports, ARP refreshes) at
/// moments of the kernel's choosing, which may fall between the start of `attach` and of
/// tcpdump; the flow-table fill (`flows`; `max_flows` has no meaning offline).
pub fn tcp_counters(stats: &[Value]) -> Value {
    assert_eq!(stats.len(), 1, "one attachment, one interface: {stats:#?}");
    let hooks = ["ingress", "egress"].map(|hook| {
        let mut counters = stats[0][hook].as_object().expect("counters").clone();
        counters.remove("packets");
        counters.remove("non_tcp");
        Value::from(counters)
    });
    Value::from(hooks.to_vec())
}

/// Waits until `file` holds every packet the kernel counted, in two looks 200 ms apart (the
/// last ACKs may still be on their way at the first), and shows `expected_flows` flows.
pub fn wait_for_capture(file: &Path, pins: &Path, expected_flows: usize) {
    let file_name = file.to_str().expect("a UTF-8 path");
    let deadline = Instant::now() + TIMEOUT;
    let mut agreeing_looks = 0;
    while agreeing_looks < 2 {
        thread::sleep(Duration::from_millis(200));
        // The file grows while it is read: a cut last record is expected here (exit 8).
        let output = pcap(&[file_name, "--stats", "--json"]);
        let captured: Vec<Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let live = stats_json(pins);
        let complete = captured.len() == 1
            && captured[0]["flows"] == expected_flows
            && tcp_counters(&captured) == tcp_counters(&live);
        agreeing_looks = if complete { agreeing_looks + 1 } else { 0 };
        assert!(
            Instant::now() < deadline,
            "{} does not show the traffic after {TIMEOUT:?}: {captured:#?}\nlive: {live:#?}",
            file.display()
        );
    }
}

/// `flagtrace attach` on an endpoint's interface, and tcpdump capturing the same interface:
/// the same traffic seen live, in the pinned maps, and offline, in the file. Dropping it stops
/// both and removes the pins and the file (field order).
pub struct AttachedAndCaptured {
    /// `None` once [`AttachedAndCaptured::views`] stopped it.
    tcpdump: Option<Daemon>,
    loader: Loader,
    pins: PinDir,
    file: TempFile,
    /// The capturing host's MAC, which tells `flagtrace pcap` each packet's direction: on a
    /// flat segment, another host's MAC is in as many frames.
    local_mac: String,
}

/// What flagtrace says about the same traffic, from the two sources: one JSON object per flow.
#[derive(Debug)]
pub struct Views {
    /// `flows --json` of the live attachment.
    pub live: Vec<Value>,
    /// `pcap --flows --json` of the capture.
    pub offline: Vec<Value>,
}

impl AttachedAndCaptured {
    pub fn start(endpoint: &Endpoint) -> Self {
        let (netns, iface) = (&endpoint.netns, endpoint.iface);
        // Without GRO, the stack hands tcpdump each segment that XDP saw, rather than merged
        // ones. (TC and tcpdump both see an outgoing segment before any segmentation offload
        // splits it.)
        run_ok(netns.command("ethtool").args(["-K", iface, "gro", "off"]));
        let pins = PinDir::create().expect("pin root");
        let loader = Loader::attach(netns, pins.path(), iface);
        let file = TempFile::new("ft-capture", "pcap");
        let tcpdump = start_tcpdump(netns, file.path(), &["-i", iface]);
        Self {
            tcpdump: Some(tcpdump),
            loader,
            pins,
            file,
            local_mac: endpoint.mac(),
        }
    }

    /// Where flagtrace pins its maps: pass it to `flagtrace --pin-root`.
    pub fn pin_root(&self) -> &Path {
        self.pins.path()
    }

    /// What flagtrace printed, for failure messages.
    pub fn logs(&self) -> String {
        format!("flagtrace attach:\n{}", self.loader.log())
    }

    /// Once the traffic is over: waits until the capture holds everything the kernel counted,
    /// stops tcpdump, and reads both views. Traffic after this is neither seen offline nor
    /// compared.
    pub fn views(&mut self) -> Views {
        let flows = flows_json(self.pin_root()).len();
        wait_for_capture(self.file.path(), self.pin_root(), flows);
        let live = flows_json(self.pin_root());
        stop_tcpdump(self.tcpdump.take().expect("views are read once"));
        // What a person would read, in the test's output beside the JSON that is asserted.
        let root = self.pin_root().to_str().expect("UTF-8 pin root");
        let resets = flagtrace(&["--pin-root", root, "resets"]);
        eprintln!(
            "flagtrace resets:\n{}",
            String::from_utf8_lossy(&resets.stdout)
        );
        let args = [
            self.file.as_str(),
            "--flows",
            "--json",
            "--local-mac",
            &self.local_mac,
        ];
        let offline = pcap_json(&args);
        Views { live, offline }
    }

    /// The TCP segments of the capture, in order: what really went over the wire, to check a
    /// lab's premise (a race won, a packet after another). Read after
    /// [`AttachedAndCaptured::views`].
    pub fn segments(&self) -> Vec<Segment> {
        assert!(
            self.tcpdump.is_none(),
            "read the views first: tcpdump still runs"
        );
        let mut reader = CaptureReader::open(self.file.path()).expect("the capture");
        let mut segments = Vec::new();
        while let Some(packet) = reader.next() {
            segments.extend(Segment::parse(packet.expect("a whole capture").frame));
        }
        segments
    }
}
