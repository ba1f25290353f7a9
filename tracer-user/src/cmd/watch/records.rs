//! What `watch` prints: for people a line per event, for programs (`--json`) a JSON object per
//! line, each written at once, since whoever reads the stream wants events as they happen.

use std::{
    io::{self, Write as _},
    net::IpAddr,
};

use anyhow::Context as _;
use serde::Serialize;

use super::events::{flag_names, hook_name, Event};
use crate::{
    output::{FlowRow, RecordFormat, RecordWriter},
    sys::clock::ClockSnapshot,
    sys::pins::Attachment,
};

/// What `watch` prints, one JSON object per line with `--json`; the `event` key says which.
/// The keys are documented in the README and stable.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record<'a> {
    Rst(RstRecord<'a>),
    /// The same object as a line of `resets --json`.
    Verdict(Box<FlowRow<'a>>),
    Dropped(DroppedRecord<'a>),
    End(EndRecord),
}

/// [`RecordWriter`] takes a CSV header from a row's default; `watch` writes no CSV, so any record
/// will do.
impl Default for Record<'_> {
    fn default() -> Self {
        Record::End(EndRecord::default())
    }
}

/// A RST as it happened.
#[derive(Debug, Serialize)]
pub struct RstRecord<'a> {
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
    pub fn new(attachment: &'a Attachment, event: &Event, clock: &ClockSnapshot) -> Self {
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
            seen_on: hook_name(event.hook),
            packet_len: event.packet.packet_len,
        }
    }
}

/// `2023-11-14T22:13:10.000000Z RST+ACK 10.0.2.1:443 > 10.0.1.1:40000 on eth0 (netns lab),
/// ingress, TTL 63, MAC 00:01:d7:3c:5e:01`.
pub fn rst_text(attachment: &Attachment, event: &Event, clock: &ClockSnapshot) -> String {
    format!(
        "{} {} {} > {} on {attachment}, {}, TTL {}, MAC {}\n",
        clock.rfc3339(event.packet.time_ns),
        flag_names(event.flags),
        event.src,
        event.dst,
        hook_name(event.hook),
        event.ttl,
        event.mac
    )
}

/// Events the kernel did not send since the last report.
#[derive(Debug, Serialize)]
pub struct DroppedRecord<'a> {
    pub time: String,
    pub iface: &'a str,
    pub netns: Option<&'a str>,
    /// Since the last report.
    pub dropped: u64,
    /// Since the watcher started.
    pub total: u64,
}

/// The last line: why we stopped, and the totals.
#[derive(Debug, Default, Serialize)]
pub struct EndRecord {
    pub signal: &'static str,
    /// RSTs received.
    pub resets: u64,
    /// Events the kernel dropped while we watched, all attachments.
    pub events_dropped: u64,
}

/// Prints records to stdout, each at once (whoever reads the stream wants events as they happen).
pub struct Output {
    pub json: bool,
}

impl Output {
    /// `record` as a JSON line, or `text()` for people.
    pub fn print(&self, record: &Record, text: impl FnOnce() -> String) -> anyhow::Result<()> {
        let mut out = io::stdout().lock();
        let written = if self.json {
            // A writer per record, as each record borrows what it describes for a lifetime of
            // its own.
            RecordWriter::new(&mut out, RecordFormat::Json).and_then(|mut records| {
                records.write(record)?;
                records.flush()
            })
        } else {
            out.write_all(text().as_bytes()).and_then(|()| out.flush())
        };
        written.context("writing to stdout")
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::SEEN_INGRESS;

    use super::*;
    use crate::{
        cmd::watch::events::tests::{event_bytes, rst_v4},
        sys::netns::Netns,
    };

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
