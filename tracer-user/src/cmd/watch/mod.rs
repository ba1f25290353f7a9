//! `flagtrace watch`: every RST as the kernel sees it, read from each attachment's event ring
//! buffer, then about a second later the verdict on its flow, from the same report code as
//! `flagtrace resets`; with `--pcap`, the RSTs and their flows' handshake packets in a pcap file.
//!
//! The kernel sends events (SYN, SYN/ACK and RST packets, with their first bytes) only while the
//! attachment's watch switch holds a lease in the future, and each CPU at most `rate` a second
//! with bursts of `burst`; what it does not send it counts as dropped. We renew the lease every
//! second, a few seconds ahead, so a watcher killed by SIGKILL stops the events by itself, and
//! SIGINT or SIGTERM stop them at once. One watcher per attachment: a ring buffer has one reader,
//! so a watcher finding a lease held by another refuses to start.
//!
//! Here the loop: wait, read the events, renew the leases, judge the flows whose time has come.
//! Beside it: `events` (the ring buffer's entries, parsed), `lease` (the watch switch),
//! `handshakes` (packets kept for the pcap), `pcap_writer` and `records` (what is printed).

mod events;
mod handshakes;
mod lease;
mod pcap_writer;
mod records;

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    path::Path,
    slice,
    task::Poll,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::io::unix::AsyncFd;
use tracer_common::{FlowKey, TCP_ACK, TCP_RST, TCP_SYN};

use crate::{
    analysis::oui::Vendors,
    cli::WatchArgs,
    output::{resets_text, FlowRow},
    source::live::{self, FlowJudge},
    sys::clock::ClockSnapshot,
    sys::maps::{PinnedMaps, WatchMaps},
    sys::netns::Netns,
    sys::pins::{Attachment, PinRoot},
    sys::privileges::{self, CAP_BPF},
    sys::signals::{AsyncSignals, SignalFd},
};
use events::Event;
use handshakes::Handshakes;
use lease::{RateLimit, Watched};
use pcap_writer::PcapWriter;
use records::{rst_text, DroppedRecord, EndRecord, Output, Record, RstRecord};

/// How often the lease is renewed, and the dropped-event counters read.
const RENEWAL_INTERVAL: Duration = Duration::from_secs(1);
/// How long after a RST its flow is judged: what the flow's endpoints send after a RST (an
/// endpoint that goes on sending after a forged one) is part of the evidence.
const VERDICT_DELAY: Duration = Duration::from_secs(1);
/// At most this many flows have handshake packets kept for the pcap, and at most this many
/// await their verdict: a flood of new flows cannot grow the watcher without bound.
const MAX_FLOWS: usize = 4096;

pub fn run(
    root: &PinRoot,
    netns: Option<&Netns>,
    oui_db: Option<&Path>,
    args: &WatchArgs,
) -> anyhow::Result<()> {
    privileges::require("watch", &[CAP_BPF])?;
    // Blocked before any lease is taken, so that a signal during setup still ends in a release.
    let signals = SignalFd::block().context("blocking SIGINT and SIGTERM")?;
    // One thread waits for the signals, the events of every attachment and the next deadline.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let _in_runtime = runtime.enter();
    let mut watched = Vec::new();
    for (attachment, maps) in live::open_attachments(root, netns, args.iface.as_deref())? {
        let dir = root.dir(&attachment);
        let WatchMaps { switch, events } = WatchMaps::open(&dir, &root.purge_command(&attachment))
            .with_context(|| format!("opening the event maps of {attachment}"))?;
        let dropped = dropped_events(&attachment, &maps)?;
        // SAFETY: the ring buffer owns its fd, which stays open and the same until the AsyncFd,
        // which owns the ring buffer, is dropped.
        let events = unsafe { AsyncFd::register(events) }
            .with_context(|| format!("waiting for the events of {attachment}"))?;
        let judge = FlowJudge::new(&attachment, &maps)?;
        watched.push(Watched::new(
            attachment, maps, judge, switch, events, dropped,
        ));
    }
    let pcap = args.pcap.as_deref().map(PcapWriter::create).transpose()?;
    let mut watcher = Watcher {
        watched,
        rate_limit: RateLimit {
            per_sec: args.rate,
            burst: args.burst,
        },
        output: Output { json: args.json },
        pcap,
        handshakes: Handshakes::default(),
        pending: HashMap::new(),
        vendors: Vendors::new(oui_db),
        resets: 0,
        verdicts_skipped: false,
    };
    lease::take(&mut watcher.watched, watcher.rate_limit)?;
    let names: Vec<String> = watcher
        .watched
        .iter()
        .map(|w| w.attachment.to_string())
        .collect();
    let pcap_note = args.pcap.as_ref().map_or(String::new(), |path| {
        format!(", writing {}", path.display())
    });
    log::info!(
        "watching {}; at most {} events/s per CPU, bursts of {}{pcap_note}",
        names.join(", "),
        args.rate,
        args.burst
    );
    let signals = signals
        .into_async()
        .context("waiting for SIGINT and SIGTERM")?;
    let signal = runtime.block_on(watcher.watch_until(&signals))?;
    watcher.finish(signal)
}

/// The attachment's events dropped since it was attached (over the rate, or the ring full).
fn dropped_events(attachment: &Attachment, maps: &PinnedMaps) -> anyhow::Result<u64> {
    let counters = maps
        .counters()
        .with_context(|| format!("reading the counters of {attachment}"))?;
    Ok(counters.total().events_dropped)
}

/// Now on the kernel's clock (the maps' and the lease's).
fn kernel_now(clock: &ClockSnapshot) -> u64 {
    clock.monotonic_before(Duration::ZERO)
}

struct Watcher {
    watched: Vec<Watched>,
    rate_limit: RateLimit,
    output: Output,
    pcap: Option<PcapWriter>,
    handshakes: Handshakes,
    /// Flows with a RST: when to judge them, and their key in the flow table.
    pending: HashMap<FlowId, (Instant, FlowKey)>,
    vendors: Vendors,
    /// RSTs received.
    resets: u64,
    /// Some RST found [`MAX_FLOWS`] flows awaiting a verdict and got none (said once).
    verdicts_skipped: bool,
}

impl Watcher {
    /// Prints events, renews the leases and judges flows until SIGINT or SIGTERM; returns the
    /// signal's name.
    async fn watch_until(&mut self, signals: &AsyncSignals) -> anyhow::Result<&'static str> {
        let mut next_renewal = Instant::now() + RENEWAL_INTERVAL;
        loop {
            let wake = self
                .pending
                .values()
                .map(|(due, _)| *due)
                .min()
                .map_or(next_renewal, |due| due.min(next_renewal));
            tokio::select! {
                signal = signals.recv() => return signal.context("reading the signal"),
                ready = any_events(&self.watched) => ready.context("waiting for events")?,
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            self.read_events()?;
            if Instant::now() >= next_renewal {
                lease::renew(&mut self.watched, self.rate_limit)?;
                self.report_drops()?;
                self.handshakes.expire(kernel_now(&clock()?));
                for watched in &mut self.watched {
                    watched.judge.refresh(&watched.maps)?;
                }
                next_renewal = Instant::now() + RENEWAL_INTERVAL;
            }
            let now = Instant::now();
            self.judge(|due| due <= now)?;
        }
    }

    /// Stops the events, prints what is left and the totals.
    fn finish(mut self, signal: &'static str) -> anyhow::Result<()> {
        for watched in &mut self.watched {
            watched.release()?;
        }
        // What the kernel sent before the release.
        self.read_events()?;
        // Judged now rather than a second later: whoever stops us wants to be done.
        self.judge(|_| true)?;
        self.report_drops()?;
        let events_dropped = self
            .watched
            .iter()
            .map(|w| w.dropped_reported - w.dropped_at_start)
            .sum();
        let end = EndRecord {
            signal,
            resets: self.resets,
            events_dropped,
        };
        self.output.print(&Record::End(end), || {
            format!(
                "stopped ({signal}): {} RST{}, {events_dropped} events dropped\n",
                self.resets,
                if self.resets == 1 { "" } else { "s" }
            )
        })
    }

    /// Takes every event out of the ring buffers.
    fn read_events(&mut self) -> anyhow::Result<()> {
        for index in 0..self.watched.len() {
            let watched = &mut self.watched[index];
            let mut events = Vec::new();
            while let Some(item) = watched.events.get_mut().next() {
                match Event::parse(&item) {
                    Some(event) => events.push(event),
                    None => log::warn!(
                        "an event of {} that is no TCP packet, skipped",
                        watched.attachment
                    ),
                }
            }
            if events.is_empty() {
                continue;
            }
            let clock = clock()?;
            for event in events {
                self.handle(index, event, &clock)?;
            }
        }
        Ok(())
    }

    fn handle(&mut self, index: usize, event: Event, clock: &ClockSnapshot) -> anyhow::Result<()> {
        let flow = FlowId::new(index, event.src, event.dst);
        if event.flags & TCP_RST == 0 {
            // A SYN/ACK tells how its server's packets look, for the verdicts to come.
            if event.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
                let watched = &mut self.watched[index];
                watched.judge.learn(&watched.maps, &event.key)?;
            }
            // A SYN or SYN/ACK: kept in case its flow is reset.
            if self.pcap.is_some() {
                self.handshakes.keep(flow, event.packet);
            }
            return Ok(());
        }
        self.resets += 1;
        let attachment = &self.watched[index].attachment;
        self.output.print(
            &Record::Rst(RstRecord::new(attachment, &event, clock)),
            || rst_text(attachment, &event, clock),
        )?;
        if let Some(pcap) = &mut self.pcap {
            for packet in self.handshakes.take(&flow).iter().chain([&event.packet]) {
                let unix_ns = clock.unix_ns(packet.time_ns).max(0) as u64;
                pcap.write_packet(unix_ns, packet.packet_len, &packet.frame)
                    .context("writing to the pcap file")?;
            }
        }
        if self.pending.len() < MAX_FLOWS || self.pending.contains_key(&flow) {
            self.pending
                .entry(flow)
                .or_insert_with(|| (Instant::now() + VERDICT_DELAY, event.key));
        } else if !self.verdicts_skipped {
            self.verdicts_skipped = true;
            log::warn!(
                "{MAX_FLOWS} flows await their verdict; RSTs of more flows are \
                 printed without one"
            );
        }
        Ok(())
    }

    /// Prints the verdicts of the pending flows whose time `is_due`, in the order of their
    /// RSTs. Each costs two lookups in its attachment's maps, whatever their size.
    fn judge(&mut self, is_due: impl Fn(Instant) -> bool) -> anyhow::Result<()> {
        let mut due: Vec<(Instant, FlowId, FlowKey)> = self
            .pending
            .iter()
            .filter(|(_, (at, _))| is_due(*at))
            .map(|(flow, (at, key))| (*at, *flow, *key))
            .collect();
        due.sort_by_key(|(at, _, _)| *at);
        for (_, flow, key) in due {
            self.pending.remove(&flow);
            let watched = &mut self.watched[flow.attachment];
            let report = watched.judge.report(&watched.maps, &key, &self.vendors)?;
            // Gone from the flow table (evicted) or without a RST on record: nothing to say.
            let Some(report) = report.filter(|report| report.verdict.is_some()) else {
                continue;
            };
            self.output
                .print(&Record::Verdict(Box::new(FlowRow::new(&report))), || {
                    resets_text(slice::from_ref(&report))
                })?;
        }
        Ok(())
    }

    /// Says how many events each attachment dropped since the last report, if any.
    fn report_drops(&mut self) -> anyhow::Result<()> {
        let clock = clock()?;
        for watched in &mut self.watched {
            let dropped = dropped_events(&watched.attachment, &watched.maps)?;
            if dropped <= watched.dropped_reported {
                continue;
            }
            let record = DroppedRecord {
                time: clock.rfc3339(kernel_now(&clock)),
                iface: &watched.attachment.iface,
                netns: watched.attachment.netns.name(),
                dropped: dropped - watched.dropped_reported,
                total: dropped - watched.dropped_at_start,
            };
            let text = format!(
                "{} {} events dropped on {} (over the rate limit or ring buffer full), {} since \
                 the start\n",
                record.time, record.dropped, watched.attachment, record.total
            );
            self.output.print(&Record::Dropped(record), || text)?;
            watched.dropped_reported = dropped;
        }
        Ok(())
    }
}

fn clock() -> anyhow::Result<ClockSnapshot> {
    ClockSnapshot::now().context("reading the clocks")
}

/// Waits until some attachment's ring buffer has events. Its readiness is cleared before they
/// are read: an event that comes after the read makes it ready again.
async fn any_events(watched: &[Watched]) -> io::Result<()> {
    std::future::poll_fn(|cx| {
        for watched in watched {
            if let Poll::Ready(ready) = watched.events.poll_read_ready(cx) {
                return Poll::Ready(ready.map(|mut guard| guard.clear_ready()));
            }
        }
        Poll::Pending
    })
    .await
}

/// One flow of one attachment, the same for both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowId {
    /// Index of the attachment in [`Watcher::watched`].
    attachment: usize,
    /// The two endpoints, in order.
    ends: [SocketAddr; 2],
}

impl FlowId {
    fn new(attachment: usize, a: SocketAddr, b: SocketAddr) -> FlowId {
        FlowId {
            attachment,
            ends: if a <= b { [a, b] } else { [b, a] },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_flow_is_one_for_both_directions_and_per_attachment() {
        let a: SocketAddr = "10.0.1.1:40000".parse().unwrap();
        let b: SocketAddr = "10.0.2.1:443".parse().unwrap();
        assert_eq!(FlowId::new(0, a, b), FlowId::new(0, b, a));
        assert_ne!(FlowId::new(0, a, b), FlowId::new(1, a, b));
    }
}
