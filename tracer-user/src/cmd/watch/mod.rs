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

mod pcap_writer;

use std::{
    collections::{hash_map::Entry, HashMap},
    io::{self, Write as _},
    mem::{self, MaybeUninit},
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::Path,
    ptr, slice,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aya::maps::{Array, MapData, RingBuf};
use serde::Serialize;
use tracer_common::{
    PacketEvent, WatchConfig, EVENT_SNAP_LEN, SEEN_EGRESS, SEEN_INGRESS, TCP_RST, TCP_SYN,
};
use tracer_ebpf::{Packet, TcpSegment};

use crate::sys::signals::{self, TerminationSignals};
use crate::{
    analysis::flow::ip_addr,
    analysis::mac::MacAddr,
    analysis::oui::Vendors,
    analysis::report::FlowReport,
    cli::WatchArgs,
    output::{resets_text, FlowRow},
    source::live,
    sys::clock::ClockSnapshot,
    sys::maps::{PinnedMaps, WatchMaps},
    sys::netns::Netns,
    sys::pins::{Attachment, PinRoot},
    sys::privileges::{self, CAP_BPF},
};
use pcap_writer::PcapWriter;

/// How far ahead of now each renewal sets the lease: a watcher that stops renewing (killed,
/// stuck) stops the events this long after its last renewal.
const LEASE: Duration = Duration::from_secs(3);
/// How often the lease is renewed, and the dropped-event counters read.
const RENEWAL_INTERVAL: Duration = Duration::from_secs(1);
/// How long after a RST its flow is judged: what the flow's endpoints send after a RST (an
/// endpoint that goes on sending after a forged one) is part of the evidence.
const VERDICT_DELAY: Duration = Duration::from_secs(1);
/// At most this many flows have handshake packets kept for the pcap, and at most this many
/// await their verdict: a flood of new flows cannot grow the watcher without bound.
const MAX_FLOWS: usize = 4096;
/// Handshake packets older than this are forgotten: a RST that late gets written alone.
const HANDSHAKE_MAX_AGE: Duration = Duration::from_secs(60);
/// Handshake packets kept per flow: the SYN, the SYN/ACK and a few retransmissions.
const MAX_PACKETS_PER_FLOW: usize = 8;

pub fn run(
    root: &PinRoot,
    netns: Option<&Netns>,
    oui_db: Option<&Path>,
    args: &WatchArgs,
) -> anyhow::Result<()> {
    privileges::require("watch", &[CAP_BPF])?;
    // Blocked before any lease is taken, so that a signal during setup still ends in a release.
    let signals = Signals::block().context("blocking SIGINT and SIGTERM")?;
    let mut watched = Vec::new();
    for (attachment, maps) in live::open_attachments(root, netns, args.iface.as_deref())? {
        let dir = root.dir(&attachment);
        let WatchMaps { switch, events } = WatchMaps::open(&dir, &root.purge_command(&attachment))
            .with_context(|| format!("opening the event maps of {attachment}"))?;
        let dropped = dropped_events(&attachment, &maps)?;
        watched.push(Watched {
            attachment,
            maps,
            switch,
            events,
            dropped_at_start: dropped,
            dropped_reported: dropped,
            leased: false,
        });
    }
    let pcap = args.pcap.as_deref().map(PcapWriter::create).transpose()?;
    let mut watcher = Watcher {
        watched,
        rate_per_sec: args.rate,
        burst: args.burst,
        output: Output { json: args.json },
        pcap,
        handshakes: Handshakes::default(),
        pending: HashMap::new(),
        vendors: Vendors::new(oui_db),
        resets: 0,
        verdicts_skipped: false,
    };
    watcher.take_leases()?;
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
    let signal = watcher.watch_until(&signals)?;
    watcher.finish(signal)
}

/// One watched attachment. Dropping it gives its lease back.
struct Watched {
    attachment: Attachment,
    maps: PinnedMaps,
    switch: Array<MapData, WatchConfig>,
    events: RingBuf<MapData>,
    /// The attachment's `events_dropped` when we started, and when we last reported it.
    dropped_at_start: u64,
    dropped_reported: u64,
    /// We hold its lease: ours to give back.
    leased: bool,
}

impl Watched {
    fn set_switch(&mut self, config: WatchConfig) -> anyhow::Result<()> {
        self.switch
            .set(0, config, 0)
            .with_context(|| format!("writing the watch switch of {}", self.attachment))
    }

    /// Lease 0: the kernel stops sending events at once.
    fn release(&mut self) -> anyhow::Result<()> {
        if self.leased {
            self.set_switch(WatchConfig::default())?;
            self.leased = false;
        }
        Ok(())
    }
}

impl Drop for Watched {
    /// On an error's way out; `finish` releases and reports on the normal one.
    fn drop(&mut self) {
        if let Err(error) = self.release() {
            log::warn!("{error:#}; its events stop when the lease runs out");
        }
    }
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
    rate_per_sec: u32,
    burst: u32,
    output: Output,
    pcap: Option<PcapWriter>,
    handshakes: Handshakes,
    /// Flows with a RST, and when to judge them.
    pending: HashMap<FlowId, Instant>,
    vendors: Vendors,
    /// RSTs received.
    resets: u64,
    /// Some RST found [`MAX_FLOWS`] flows awaiting a verdict and got none (said once).
    verdicts_skipped: bool,
}

impl Watcher {
    /// Takes every attachment's lease, unless another watcher holds one.
    fn take_leases(&mut self) -> anyhow::Result<()> {
        let now = kernel_now(&clock()?);
        for watched in &self.watched {
            let current = watched
                .switch
                .get(&0, 0)
                .with_context(|| format!("reading the watch switch of {}", watched.attachment))?;
            if current.lease_until_ns > now {
                bail!(
                    "{} is already watched by another `flagtrace watch` (its lease runs {:.1} s \
                     more): one watcher per attachment, since its events have one reader",
                    watched.attachment,
                    (current.lease_until_ns - now) as f64 / 1e9
                );
            }
        }
        self.renew_leases()
    }

    fn renew_leases(&mut self) -> anyhow::Result<()> {
        let config = WatchConfig {
            lease_until_ns: kernel_now(&clock()?) + LEASE.as_nanos() as u64,
            rate_per_sec: self.rate_per_sec,
            burst: self.burst,
        };
        for watched in &mut self.watched {
            watched.set_switch(config)?;
            watched.leased = true;
        }
        Ok(())
    }

    /// Prints events, renews the leases and judges flows until SIGINT or SIGTERM; returns the
    /// signal's name.
    fn watch_until(&mut self, signals: &Signals) -> anyhow::Result<&'static str> {
        let mut next_renewal = Instant::now() + RENEWAL_INTERVAL;
        loop {
            let wake = self
                .pending
                .values()
                .min()
                .map_or(next_renewal, |due| (*due).min(next_renewal));
            let mut fds: Vec<libc::pollfd> = [signals.0.as_raw_fd()]
                .into_iter()
                .chain(self.watched.iter().map(|w| w.events.as_fd().as_raw_fd()))
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            poll(&mut fds, wake.saturating_duration_since(Instant::now()))?;
            if fds[0].revents != 0 {
                return signals.read().context("reading the signal");
            }
            self.read_events()?;
            if Instant::now() >= next_renewal {
                self.renew_leases()?;
                self.report_drops()?;
                self.handshakes.expire(kernel_now(&clock()?));
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
            while let Some(item) = watched.events.next() {
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
                .or_insert_with(|| Instant::now() + VERDICT_DELAY);
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
    /// RSTs. One read of the maps per attachment, for all its flows at once.
    fn judge(&mut self, is_due: impl Fn(Instant) -> bool) -> anyhow::Result<()> {
        let mut due: Vec<(Instant, FlowId)> = self
            .pending
            .iter()
            .filter(|(_, at)| is_due(**at))
            .map(|(flow, at)| (*at, *flow))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        due.sort_by_key(|(at, _)| *at);
        let mut reports: HashMap<usize, Vec<FlowReport>> = HashMap::new();
        let clock = clock()?;
        for (_, flow) in due {
            self.pending.remove(&flow);
            let watched = &self.watched[flow.attachment];
            let of_attachment = match reports.entry(flow.attachment) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => entry.insert(live::attachment_reports(
                    &watched.attachment,
                    &watched.maps,
                    &self.vendors,
                )?),
            };
            // Gone from the flow table (evicted) or without a RST on record: nothing to say.
            let Some(report) = of_attachment.iter().find(|report| {
                report.verdict.is_some()
                    && FlowId::new(flow.attachment, report.flow.client, report.flow.server) == flow
            }) else {
                continue;
            };
            self.output
                .print(&Record::Verdict(FlowRow::new(report, &clock)), || {
                    resets_text(slice::from_ref(report), &clock)
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

/// Waits until one of `fds` is readable or `timeout` passes; a signal interrupting the wait
/// counts as a timeout (the signal itself is read from its fd).
fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> anyhow::Result<()> {
    // Rounded up: rounding down would wake just before the deadline, to no purpose.
    let millis = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid array of pollfd of the length given.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error).context("waiting for events");
        }
    }
    Ok(())
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

/// A packet as the kernel captured it: what goes into the pcap file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Captured {
    /// Kernel clock.
    time_ns: u64,
    /// Length on the wire.
    packet_len: u32,
    /// Its first bytes, from the Ethernet header on.
    frame: Vec<u8>,
}

/// One event from the ring buffer, parsed.
#[derive(Debug)]
struct Event {
    packet: Captured,
    seen_on: u8,
    src: SocketAddr,
    dst: SocketAddr,
    flags: u8,
    seq: u32,
    ack: u32,
    ttl: u8,
    ip_id: u16,
    /// The L2 neighbour, as in the maps: the source MAC of what arrived, the destination MAC of
    /// what left.
    mac: MacAddr,
}

impl Event {
    /// A [`PacketEvent`]'s bytes, parsed by the kernel programs' own parser; `None` if they
    /// are not one, or hold no TCP packet.
    fn parse(bytes: &[u8]) -> Option<Event> {
        if bytes.len() < mem::size_of::<PacketEvent>() {
            return None;
        }
        // SAFETY: at least size_of::<PacketEvent>() bytes, and PacketEvent is plain data for
        // which any bytes are a value; the ring buffer gives no alignment guarantee beyond 8.
        let event: PacketEvent = unsafe { ptr::read_unaligned(bytes.as_ptr().cast()) };
        let captured = (event.captured_len as usize).min(EVENT_SNAP_LEN);
        let frame = &event.data[..captured];
        let start = frame.as_ptr() as usize;
        let packet = Packet::new(start, start + frame.len());
        tracer_ebpf::parse(packet, |segment: TcpSegment| {
            let ip = |words| ip_addr(segment.family(), words).ok();
            let mac = if event.seen_on == SEEN_EGRESS {
                segment.eth.dst
            } else {
                segment.eth.src
            };
            Some(Event {
                src: SocketAddr::new(ip(&segment.src())?, segment.src_port()),
                dst: SocketAddr::new(ip(&segment.dst())?, segment.dst_port()),
                flags: segment.flags(),
                seq: segment.seq(),
                ack: segment.ack(),
                ttl: segment.ttl(),
                ip_id: segment.ip_id(),
                mac: MacAddr(mac),
                seen_on: event.seen_on,
                packet: Captured {
                    time_ns: event.time_ns,
                    packet_len: event.packet_len,
                    frame: frame.to_vec(),
                },
            })
        })
        .ok()?
    }
}

/// The TCP flags of `flags` by name, joined with `+`, e.g. `RST+ACK`.
fn flag_names(flags: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (TCP_SYN, "SYN"),
        (TCP_RST, "RST"),
        (0x01, "FIN"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    names.join("+")
}

fn seen_on_name(seen_on: u8) -> &'static str {
    match seen_on {
        SEEN_INGRESS => "ingress",
        SEEN_EGRESS => "egress",
        _ => "unknown",
    }
}

/// The handshake packets (SYN, SYN/ACK) of recent flows, kept until their flow is reset: at
/// most [`MAX_FLOWS`] flows of [`MAX_PACKETS_PER_FLOW`] packets, none older than
/// [`HANDSHAKE_MAX_AGE`] (see [`Handshakes::expire`]).
#[derive(Debug, Default)]
struct Handshakes {
    flows: HashMap<FlowId, Vec<Captured>>,
}

impl Handshakes {
    fn keep(&mut self, flow: FlowId, packet: Captured) {
        if !self.flows.contains_key(&flow) && self.flows.len() >= MAX_FLOWS {
            // The flow that has been quiet longest makes room.
            let quietest = self
                .flows
                .iter()
                .min_by_key(|(_, packets)| latest(packets))
                .map(|(flow, _)| *flow);
            if let Some(quietest) = quietest {
                self.flows.remove(&quietest);
            }
        }
        let packets = self.flows.entry(flow).or_default();
        if packets.len() < MAX_PACKETS_PER_FLOW {
            packets.push(packet);
        }
    }

    /// The flow's packets in time order; they are forgotten.
    fn take(&mut self, flow: &FlowId) -> Vec<Captured> {
        let mut packets = self.flows.remove(flow).unwrap_or_default();
        // Stable: packets of one instant stay in the order they arrived.
        packets.sort_by_key(|packet| packet.time_ns);
        packets
    }

    /// Forgets the flows with no packet in the last [`HANDSHAKE_MAX_AGE`] before `now_ns`.
    fn expire(&mut self, now_ns: u64) {
        let max_age = HANDSHAKE_MAX_AGE.as_nanos() as u64;
        self.flows
            .retain(|_, packets| now_ns.saturating_sub(latest(packets)) < max_age);
    }
}

fn latest(packets: &[Captured]) -> u64 {
    packets
        .iter()
        .map(|packet| packet.time_ns)
        .max()
        .unwrap_or(0)
}

/// What `watch` prints, one JSON object per line with `--json`; the `event` key says which.
/// The keys are documented in the README and stable.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Record<'a> {
    Rst(RstRecord<'a>),
    /// The same object as a line of `resets --json`.
    Verdict(FlowRow<'a>),
    Dropped(DroppedRecord<'a>),
    End(EndRecord),
}

/// A RST as it happened.
#[derive(Debug, Serialize)]
struct RstRecord<'a> {
    time: String,
    iface: &'a str,
    netns: Option<&'a str>,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    flags: String,
    seq: u32,
    ack: u32,
    ttl: u8,
    ip_id: u16,
    mac: String,
    seen_on: &'static str,
    packet_len: u32,
}

impl<'a> RstRecord<'a> {
    fn new(attachment: &'a Attachment, event: &Event, clock: &ClockSnapshot) -> Self {
        RstRecord {
            time: clock.rfc3339(event.packet.time_ns),
            iface: &attachment.iface,
            netns: attachment.netns.name(),
            src: event.src.ip(),
            sport: event.src.port(),
            dst: event.dst.ip(),
            dport: event.dst.port(),
            flags: flag_names(event.flags),
            seq: event.seq,
            ack: event.ack,
            ttl: event.ttl,
            ip_id: event.ip_id,
            mac: event.mac.to_string(),
            seen_on: seen_on_name(event.seen_on),
            packet_len: event.packet.packet_len,
        }
    }
}

/// `2023-11-14T22:13:10.000000Z RST+ACK 10.0.2.1:443 > 10.0.1.1:40000 on eth0 (netns lab),
/// ingress, TTL 63, MAC 00:01:d7:3c:5e:01`.
fn rst_text(attachment: &Attachment, event: &Event, clock: &ClockSnapshot) -> String {
    format!(
        "{} {} {} > {} on {attachment}, {}, TTL {}, MAC {}\n",
        clock.rfc3339(event.packet.time_ns),
        flag_names(event.flags),
        event.src,
        event.dst,
        seen_on_name(event.seen_on),
        event.ttl,
        event.mac
    )
}

/// Events the kernel did not send since the last report.
#[derive(Debug, Serialize)]
struct DroppedRecord<'a> {
    time: String,
    iface: &'a str,
    netns: Option<&'a str>,
    /// Since the last report.
    dropped: u64,
    /// Since the watcher started.
    total: u64,
}

/// The last line: why we stopped, and the totals.
#[derive(Debug, Serialize)]
struct EndRecord {
    signal: &'static str,
    /// RSTs received.
    resets: u64,
    /// Events the kernel dropped while we watched, all attachments.
    events_dropped: u64,
}

/// Prints records to stdout, each at once (whoever reads the stream wants events as they happen).
struct Output {
    json: bool,
}

impl Output {
    /// `record` as a JSON line, or `text()` for people.
    fn print(&self, record: &Record, text: impl FnOnce() -> String) -> anyhow::Result<()> {
        let mut out = io::stdout().lock();
        if self.json {
            serde_json::to_writer(&mut out, record).context("writing to stdout")?;
            out.write_all(b"\n").context("writing to stdout")?;
        } else {
            out.write_all(text().as_bytes())
                .context("writing to stdout")?;
        }
        out.flush().context("writing to stdout")
    }
}

/// SIGINT and SIGTERM, blocked and read from a signalfd, so that poll(2) waits for them along
/// with the events.
struct Signals(OwnedFd);

impl Signals {
    fn block() -> io::Result<Signals> {
        Ok(Signals(TerminationSignals::block()?.signalfd()?))
    }

    /// The name of the signal that arrived.
    fn read(&self) -> io::Result<&'static str> {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is valid for `size` bytes.
        let read = unsafe { libc::read(self.0.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if read != size as isize {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel filled the whole struct.
        let info = unsafe { info.assume_init() };
        Ok(signals::name(info.ssi_signo))
    }
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;
    use tracer_common::TCP_ACK;

    use super::*;
    use crate::sys::netns::Netns;

    const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const GATEWAY_MAC: [u8; 6] = [0x00, 0x01, 0xd7, 0x3c, 0x5e, 0x01];

    /// The bytes of a ring buffer entry for `frame` as the kernel writes them.
    fn event_bytes(frame: &[u8], time_ns: u64, seen_on: u8) -> Vec<u8> {
        let captured = frame.len().min(EVENT_SNAP_LEN);
        let mut event = PacketEvent {
            time_ns,
            ifindex: 7,
            packet_len: frame.len() as u32,
            captured_len: captured as u32,
            seen_on,
            _pad0: 0,
            _pad1: 0,
            data: [0; EVENT_SNAP_LEN],
        };
        event.data[..captured].copy_from_slice(&frame[..captured]);
        // SAFETY: PacketEvent is plain data with explicit padding: all its bytes are initialised.
        unsafe {
            slice::from_raw_parts(
                (&raw const event).cast::<u8>(),
                mem::size_of::<PacketEvent>(),
            )
        }
        .to_vec()
    }

    fn rst_v4(payload_len: usize) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(GATEWAY_MAC, CLIENT_MAC)
            .ipv4([10, 0, 2, 1], [10, 0, 1, 1], 63)
            .tcp(443, 40000, 0, 0)
            .rst()
            .ack(1_000_001);
        let mut frame = Vec::new();
        builder.write(&mut frame, &vec![b'x'; payload_len]).unwrap();
        frame
    }

    #[test]
    fn parses_an_event_with_the_kernels_parser() {
        // A long packet: only its first bytes are in the event, but its length is known.
        let frame = rst_v4(400);
        let event = Event::parse(&event_bytes(&frame, 5_000, SEEN_INGRESS)).unwrap();
        assert_eq!(event.src, "10.0.2.1:443".parse().unwrap());
        assert_eq!(event.dst, "10.0.1.1:40000".parse().unwrap());
        assert_eq!(event.flags, TCP_RST | TCP_ACK);
        assert_eq!((event.seq, event.ack, event.ttl), (0, 1_000_001, 63));
        assert_eq!(event.mac, MacAddr(GATEWAY_MAC));
        assert_eq!(event.packet.packet_len, frame.len() as u32);
        assert_eq!(event.packet.frame, frame[..EVENT_SNAP_LEN]);
        assert_eq!(event.packet.time_ns, 5_000);

        // Leaving: the neighbour is the destination.
        let event = Event::parse(&event_bytes(&frame, 5_000, SEEN_EGRESS)).unwrap();
        assert_eq!(event.mac, MacAddr(CLIENT_MAC));

        let v6 = PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC)
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(40000, 8443, 7, 64240)
            .syn();
        let mut frame = Vec::new();
        v6.write(&mut frame, &[]).unwrap();
        let event = Event::parse(&event_bytes(&frame, 1, SEEN_EGRESS)).unwrap();
        assert_eq!(event.src, SocketAddr::new([0xfd; 16].into(), 40000));
        assert_eq!(event.flags, TCP_SYN);
        assert_eq!(event.packet.frame, frame);
    }

    #[test]
    fn rejects_what_is_not_an_event_of_a_tcp_packet() {
        assert!(Event::parse(&[0u8; 16]).is_none());
        let udp = PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC)
            .ipv4([10, 0, 1, 1], [10, 0, 2, 1], 64)
            .udp(53, 53);
        let mut frame = Vec::new();
        udp.write(&mut frame, b"dns").unwrap();
        assert!(Event::parse(&event_bytes(&frame, 1, SEEN_EGRESS)).is_none());
    }

    #[test]
    fn a_flow_is_one_for_both_directions_and_per_attachment() {
        let a: SocketAddr = "10.0.1.1:40000".parse().unwrap();
        let b: SocketAddr = "10.0.2.1:443".parse().unwrap();
        assert_eq!(FlowId::new(0, a, b), FlowId::new(0, b, a));
        assert_ne!(FlowId::new(0, a, b), FlowId::new(1, a, b));
    }

    fn packet(time_ns: u64) -> Captured {
        Captured {
            time_ns,
            packet_len: 60,
            frame: vec![0; 60],
        }
    }

    fn flow(port: u16) -> FlowId {
        FlowId::new(
            0,
            SocketAddr::from(([10, 0, 1, 1], port)),
            "10.0.2.1:443".parse().unwrap(),
        )
    }

    #[test]
    fn handshakes_come_out_in_time_order_once() {
        let mut kept = Handshakes::default();
        // A SYN/ACK whose event came first from another CPU.
        kept.keep(flow(1), packet(20));
        kept.keep(flow(1), packet(10));
        kept.keep(flow(2), packet(15));
        let times: Vec<u64> = kept.take(&flow(1)).iter().map(|p| p.time_ns).collect();
        assert_eq!(times, [10, 20]);
        assert!(kept.take(&flow(1)).is_empty());
        assert_eq!(kept.take(&flow(2)).len(), 1);
    }

    #[test]
    fn handshakes_are_bounded_in_flows_packets_and_age() {
        let mut kept = Handshakes::default();
        for port in 0..MAX_FLOWS as u16 {
            kept.keep(flow(port), packet(1_000 + u64::from(port)));
        }
        // Full: the quietest flow (port 0) makes room.
        kept.keep(flow(60_000), packet(5_000));
        assert_eq!(kept.flows.len(), MAX_FLOWS);
        assert!(kept.take(&flow(0)).is_empty());
        assert_eq!(kept.take(&flow(1)).len(), 1);

        for time in 0..2 * MAX_PACKETS_PER_FLOW as u64 {
            kept.keep(flow(7), packet(time));
        }
        assert_eq!(kept.take(&flow(7)).len(), MAX_PACKETS_PER_FLOW);

        let age = HANDSHAKE_MAX_AGE.as_nanos() as u64;
        let mut kept = Handshakes::default();
        kept.keep(flow(1), packet(1));
        kept.keep(flow(2), packet(age));
        kept.expire(age + 1);
        assert!(kept.flows.contains_key(&flow(2)));
        assert!(!kept.flows.contains_key(&flow(1)));
    }

    #[test]
    fn flags_by_name() {
        assert_eq!(flag_names(TCP_RST), "RST");
        assert_eq!(flag_names(TCP_RST | TCP_ACK), "RST+ACK");
        assert_eq!(flag_names(TCP_SYN | TCP_ACK), "SYN+ACK");
    }

    #[test]
    fn rst_json_keys_are_stable() {
        let frame = rst_v4(0);
        let event = Event::parse(&event_bytes(&frame, 990_000_000_000, SEEN_INGRESS)).unwrap();
        let attachment = Attachment {
            netns: Netns::Named("lab".into()),
            iface: "eth0".into(),
        };
        // Boot time 1000 s corresponds to 2023-11-14T22:13:20Z.
        let clock = ClockSnapshot::new(1_700_000_000_000_000_000, 1_000_000_000_000);
        let record = Record::Rst(RstRecord::new(&attachment, &event, &clock));
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event": "rst",
                "time": "2023-11-14T22:13:10.000000Z",
                "iface": "eth0",
                "netns": "lab",
                "src": "10.0.2.1",
                "sport": 443,
                "dst": "10.0.1.1",
                "dport": 40000,
                "flags": "RST+ACK",
                "seq": 0,
                "ack": 1_000_001,
                "ttl": 63,
                "ip_id": 0,
                "mac": "00:01:d7:3c:5e:01",
                "seen_on": "ingress",
                "packet_len": frame.len(),
            })
        );
        assert_eq!(
            rst_text(&attachment, &event, &clock),
            "2023-11-14T22:13:10.000000Z RST+ACK 10.0.2.1:443 > 10.0.1.1:40000 on eth0 (netns \
             lab), ingress, TTL 63, MAC 00:01:d7:3c:5e:01\n"
        );
        let end = serde_json::to_value(Record::End(EndRecord {
            signal: "SIGINT",
            resets: 3,
            events_dropped: 12,
        }))
        .unwrap();
        assert_eq!(
            end,
            serde_json::json!({"event": "end", "signal": "SIGINT", "resets": 3, "events_dropped": 12})
        );
    }
}
