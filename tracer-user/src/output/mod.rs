//! How `flows`, `resets` and `stats` print: tables fitted to the terminal for people, JSON lines
//! or CSV for programs. Each kind of item has one serde struct (a "row"); its JSON object is one
//! JSON line, and the same object flattened is one CSV row, so the two always carry the same
//! information and a new field reaches both.

pub mod metrics;

use std::{
    collections::BTreeMap,
    env,
    io::{self, IsTerminal as _, Write},
    marker::PhantomData,
    net::IpAddr,
    os::fd::AsRawFd,
};

use serde::Serialize;
use serde_json::Value;
use tracer_common::{FlagCounts, GlobalCounters};

use crate::{
    analysis::mac::MacAddr,
    analysis::report::{FlowReport, Gateway},
    analysis::verdict::{ResetBy, Verdict},
    sys::clock::ClockSnapshot,
    sys::maps::Counters,
    sys::pins::Attachment,
};

/// How a command prints its items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// For people: aligned columns fitted to the terminal (or text, for `resets`).
    Table,
    /// For programs.
    Records(RecordFormat),
}

/// The formats for programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordFormat {
    /// One JSON object per line.
    Json,
    /// A header row, then one row per item: the JSON object flattened.
    Csv,
}

/// Prints items to `out` in one [`OutputFormat`]; tables fit in `width` columns when given.
pub struct Printer<W> {
    out: W,
    format: OutputFormat,
    width: Option<usize>,
}

impl Printer<io::StdoutLock<'static>> {
    /// Prints to stdout, fitting tables to the terminal when stdout is one.
    pub fn stdout(format: OutputFormat) -> Self {
        let stdout = io::stdout();
        let width = table_width(
            stdout.is_terminal(),
            env::var("COLUMNS").ok().as_deref(),
            || window_columns(&stdout),
        );
        Printer::new(stdout.lock(), format, width)
    }
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: OutputFormat, width: Option<usize>) -> Self {
        Printer { out, format, width }
    }

    /// Where the items go, for a note of the command's own.
    pub fn out(&mut self) -> &mut W {
        &mut self.out
    }

    /// One item per flow.
    pub fn flows(&mut self, reports: &[FlowReport], clock: &ClockSnapshot) -> io::Result<()> {
        self.items(flow_rows(reports, clock), |width| {
            flows_table(reports, clock).render(width)
        })
    }

    /// The flows that carried a RST: the same items as [`Printer::flows`], but for people
    /// grouped sentences (see [`resets_text`]), which are not cut to the terminal.
    pub fn resets(&mut self, reports: &[FlowReport], clock: &ClockSnapshot) -> io::Result<()> {
        self.items(flow_rows(reports, clock), |_| resets_text(reports, clock))
    }

    /// One item per attachment.
    pub fn stats(&mut self, stats: &[AttachmentStats]) -> io::Result<()> {
        self.items(stats.iter().map(StatsRow::new), |width| {
            stats_text(stats, width)
        })
    }

    /// `rows` as JSON lines or CSV, or `text(width)` for people.
    fn items<R: Serialize + Default>(
        &mut self,
        rows: impl Iterator<Item = R>,
        text: impl FnOnce(Option<usize>) -> String,
    ) -> io::Result<()> {
        let format = match self.format {
            OutputFormat::Table => return self.out.write_all(text(self.width).as_bytes()),
            OutputFormat::Records(format) => format,
        };
        let mut records = RecordWriter::new(&mut self.out, format)?;
        for row in rows {
            records.write(&row)?;
        }
        records.flush()
    }
}

/// Writes rows of type `R` one at a time, as JSON lines or as CSV (for streams as well as
/// lists). The CSV header comes first, even when no row follows, so an empty result still names
/// its columns; it is taken from `R::default()`. A row therefore must not hold an optional
/// object, which would take its columns away from the header: the tests check each row type.
pub struct RecordWriter<W: Write, R> {
    sink: Sink<W>,
    row: PhantomData<fn(&R)>,
}

enum Sink<W: Write> {
    Json(W),
    Csv {
        // Boxed: the writer holds its buffer's state inline, much larger than `Json`'s.
        out: Box<csv::Writer<W>>,
        header: Vec<String>,
    },
}

impl<W: Write, R: Serialize + Default> RecordWriter<W, R> {
    /// Starts the output; for CSV this writes the header.
    pub fn new(out: W, format: RecordFormat) -> io::Result<Self> {
        let sink = match format {
            RecordFormat::Json => Sink::Json(out),
            RecordFormat::Csv => {
                let header = csv_header::<R>();
                let mut out = csv::WriterBuilder::new().from_writer(out);
                out.write_record(&header)?;
                Sink::Csv {
                    out: Box::new(out),
                    header,
                }
            }
        };
        Ok(RecordWriter {
            sink,
            row: PhantomData,
        })
    }

    pub fn write(&mut self, row: &R) -> io::Result<()> {
        match &mut self.sink {
            Sink::Json(out) => {
                serde_json::to_writer(&mut *out, row)?;
                out.write_all(b"\n")
            }
            Sink::Csv { out, header } => Ok(out.write_record(csv_row(header, row))?),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Json(out) => out.flush(),
            Sink::Csv { out, .. } => out.flush(),
        }
    }
}

/// The CSV column names of `R`: its JSON keys, nested ones joined with `_`.
fn csv_header<R: Serialize + Default>() -> Vec<String> {
    flat_fields(&R::default())
        .into_iter()
        .map(|(column, _)| column)
        .collect()
}

/// `row`'s cells in the order of `header`.
fn csv_row(header: &[String], row: &impl Serialize) -> Vec<String> {
    let mut cells: BTreeMap<String, String> = flat_fields(row).into_iter().collect();
    let row: Vec<String> = header
        .iter()
        .map(|column| cells.remove(column).unwrap_or_default())
        .collect();
    debug_assert!(
        cells.is_empty(),
        "columns missing from the header: {cells:?}"
    );
    row
}

/// `row`'s JSON object as (column, cell) pairs in field order: nested objects flattened with
/// `_` (`client_to_server` + `syn` = `client_to_server_syn`), `null` as an empty cell, strings
/// as they are, lists as JSON text (so that their items stay apart), numbers and booleans as
/// JSON writes them.
fn flat_fields(row: &impl Serialize) -> Vec<(String, String)> {
    fn flatten(column: String, value: Value, fields: &mut Vec<(String, String)>) {
        let cell = match value {
            Value::Object(object) => {
                for (key, value) in object {
                    let nested = if column.is_empty() {
                        key
                    } else {
                        format!("{column}_{key}")
                    };
                    flatten(nested, value, fields);
                }
                return;
            }
            Value::Null => String::new(),
            Value::String(text) => text,
            other => other.to_string(),
        };
        fields.push((column, cell));
    }
    let value = serde_json::to_value(row).expect("a row always serializes");
    let mut fields = Vec::new();
    flatten(String::new(), value, &mut fields);
    fields
}

/// The width a table must fit in: when stdout is a terminal, `$COLUMNS` if it holds a width,
/// else the terminal's; `None` (full width) when stdout is a file or a pipe, so that nothing is
/// lost on the way to another program.
fn table_width(
    stdout_is_terminal: bool,
    columns_variable: Option<&str>,
    window_columns: impl FnOnce() -> Option<usize>,
) -> Option<usize> {
    if !stdout_is_terminal {
        return None;
    }
    columns_variable
        .and_then(|columns| columns.trim().parse().ok())
        .filter(|&columns: &usize| columns > 0)
        .or_else(window_columns)
}

/// The terminal's width in columns, from TIOCGWINSZ; `None` when it does not say.
fn window_columns(terminal: &impl AsRawFd) -> Option<usize> {
    // SAFETY: winsize is plain data; all zeros is a valid value.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`, which lives for the call.
    let status = unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (status == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// One table cell, with the shorter form a narrow terminal gets, if it has one.
pub struct Cell {
    full: String,
    compact: Option<String>,
}

impl Cell {
    pub fn compact(full: impl Into<String>, compact: impl Into<String>) -> Cell {
        Cell {
            full: full.into(),
            compact: Some(compact.into()),
        }
    }

    fn text(&self, compact: bool) -> &str {
        match &self.compact {
            Some(short) if compact => short,
            _ => &self.full,
        }
    }
}

impl From<String> for Cell {
    fn from(full: String) -> Cell {
        Cell {
            full,
            compact: None,
        }
    }
}

impl From<&str> for Cell {
    fn from(full: &str) -> Cell {
        full.to_owned().into()
    }
}

/// One step that makes a table narrower, naming columns by their full titles. A table takes its
/// steps in order until it fits: first what matters least.
#[derive(Clone, Copy, Debug)]
pub enum Narrowing {
    /// Print these columns' compact cells (the title included), where they have one.
    Compact(&'static [&'static str]),
    /// Leave this column out.
    Drop(&'static str),
}

/// Left-aligned columns separated by two spaces, one line per row, never wrapped: when too wide
/// for its width, the table takes its [`Narrowing`] steps, and when it is still too wide after
/// the last one, its lines are cut with `…`, as `ps` does.
pub struct Table {
    /// The header first.
    rows: Vec<Vec<Cell>>,
    narrowing: &'static [Narrowing],
}

impl Table {
    pub fn new(header: Vec<Cell>, narrowing: &'static [Narrowing]) -> Table {
        Table {
            rows: vec![header],
            narrowing,
        }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        self.rows.push(row);
    }

    /// The table, at full width or fitted to `width` columns.
    pub fn render(&self, width: Option<usize>) -> String {
        let columns = self.rows[0].len();
        let mut shown = vec![true; columns];
        let mut compact = vec![false; columns];
        let mut steps = self.narrowing.iter();
        if let Some(width) = width {
            while self.line_width(&shown, &compact) > width {
                match steps.next() {
                    Some(Narrowing::Compact(titles)) => {
                        for title in *titles {
                            compact[self.column(title)] = true;
                        }
                    }
                    Some(Narrowing::Drop(title)) => shown[self.column(title)] = false,
                    None => break,
                }
            }
        }
        let widths = self.widths(&compact);
        let mut out = String::new();
        for row in &self.rows {
            let cells: Vec<String> = (0..columns)
                .filter(|&column| shown[column])
                .map(|column| {
                    let width = widths[column];
                    format!("{:width$}", row[column].text(compact[column]))
                })
                .collect();
            let line = cells.join("  ");
            out += &cut(line.trim_end(), width);
            out.push('\n');
        }
        out
    }

    /// The widest cell of each column.
    fn widths(&self, compact: &[bool]) -> Vec<usize> {
        (0..compact.len())
            .map(|column| {
                let cells = self
                    .rows
                    .iter()
                    .map(|row| row[column].text(compact[column]));
                cells.map(|cell| cell.chars().count()).max().unwrap_or(0)
            })
            .collect()
    }

    fn line_width(&self, shown: &[bool], compact: &[bool]) -> usize {
        let widths = self.widths(compact);
        let shown: Vec<usize> = (0..widths.len())
            .filter(|&column| shown[column])
            .map(|column| widths[column])
            .collect();
        shown.iter().sum::<usize>() + 2 * shown.len().saturating_sub(1)
    }

    fn column(&self, title: &str) -> usize {
        self.rows[0]
            .iter()
            .position(|cell| cell.full == title)
            .unwrap_or_else(|| panic!("a narrowing step names {title:?}, not a column"))
    }
}

/// `line`, cut to `width` characters with `…` when it is longer.
fn cut(line: &str, width: Option<usize>) -> String {
    match width {
        Some(width) if line.chars().count() > width => {
            let kept: String = line.chars().take(width.saturating_sub(1)).collect();
            kept + "…"
        }
        _ => line.to_owned(),
    }
}

/// The four flag counts of a row.
#[derive(Debug, Default, Serialize)]
struct FlagCountsRow {
    syn: u32,
    syn_ack: u32,
    fin: u32,
    rst: u32,
}

impl From<FlagCounts> for FlagCountsRow {
    fn from(counts: FlagCounts) -> Self {
        FlagCountsRow {
            syn: counts.syn,
            syn_ack: counts.syn_ack,
            fin: counts.fin,
            rst: counts.rst,
        }
    }
}

/// One flow: a line of `flows --json` and `resets --json`, a row of their `--csv`. The keys
/// are documented in the README and stable.
#[derive(Debug, Default, Serialize)]
pub struct FlowRow<'a> {
    iface: &'a str,
    netns: Option<&'a str>,
    client: String,
    server: String,
    /// Totals over both directions, as top-level keys.
    #[serde(flatten)]
    totals: FlagCountsRow,
    client_to_server: FlagCountsRow,
    server_to_client: FlagCountsRow,
    /// A [`crate::analysis::flow::State`] by name: a string, so that the row has a default.
    state: &'static str,
    first_seen: String,
    last_seen: String,
    reset_by: Option<ResetBy>,
    evidence: &'a [String],
    gateway_mac: Option<String>,
    gateway_vendor: Option<&'a str>,
    gateway_ip: Option<IpAddr>,
    gateway_is_default: bool,
}

impl<'a> FlowRow<'a> {
    pub fn new(report: &'a FlowReport, clock: &ClockSnapshot) -> Self {
        let (attachment, flow) = (&report.attachment, &report.flow);
        let gateway = report.gateway.as_ref();
        let neighbour = gateway.and_then(|gateway| gateway.neighbour);
        FlowRow {
            iface: &attachment.iface,
            netns: attachment.netns.name(),
            client: flow.client.to_string(),
            server: flow.server.to_string(),
            totals: flow.totals().into(),
            client_to_server: flow.client_to_server.into(),
            server_to_client: flow.server_to_client.into(),
            state: flow.state.as_str(),
            first_seen: clock.rfc3339(flow.first_seen_ns),
            last_seen: clock.rfc3339(flow.last_seen_ns),
            reset_by: report.verdict.as_ref().map(|verdict| verdict.reset_by),
            evidence: report
                .verdict
                .as_ref()
                .map_or(&[], |verdict| verdict.evidence.as_slice()),
            gateway_mac: gateway.map(|gateway| gateway.mac.to_string()),
            gateway_vendor: gateway.and_then(|gateway| gateway.vendor.organization()),
            gateway_ip: neighbour.map(|neighbour| neighbour.ip),
            gateway_is_default: neighbour.is_some_and(|neighbour| neighbour.is_default),
        }
    }
}

fn flow_rows<'a>(
    reports: &'a [FlowReport],
    clock: &'a ClockSnapshot,
) -> impl Iterator<Item = FlowRow<'a>> {
    reports.iter().map(|report| FlowRow::new(report, clock))
}

/// What a narrow terminal takes from `flows` first: the times (shortened to the time of day,
/// then dropped), the namespace, the RST column's legend, the interface, and last the verdict.
/// The addresses, the state and the flag counts always stay.
const FLOWS_NARROWING: &[Narrowing] = &[
    Narrowing::Compact(&["FIRST_SEEN", "LAST_SEEN"]),
    Narrowing::Drop("FIRST_SEEN"),
    Narrowing::Drop("LAST_SEEN"),
    Narrowing::Drop("NETNS"),
    Narrowing::Compact(&["RST(C>S/S>C)"]),
    Narrowing::Drop("IFACE"),
    Narrowing::Drop("RESET_BY"),
];

/// Flows as a table: flag totals, RST split by direction, and who sent the RST.
pub fn flows_table(reports: &[FlowReport], clock: &ClockSnapshot) -> Table {
    let mut table = Table::new(
        vec![
            "IFACE".into(),
            "NETNS".into(),
            "CLIENT".into(),
            "SERVER".into(),
            "STATE".into(),
            "RESET_BY".into(),
            "SYN".into(),
            "SYN_ACK".into(),
            "FIN".into(),
            Cell::compact("RST(C>S/S>C)", "RST"),
            "FIRST_SEEN".into(),
            "LAST_SEEN".into(),
        ],
        FLOWS_NARROWING,
    );
    let time = |ns| {
        let stamp = clock.rfc3339(ns);
        // `2023-11-14T22:13:10.000000Z` -> `22:13:10`.
        let time_of_day = stamp.get(11..19).unwrap_or(&stamp).to_owned();
        Cell::compact(stamp, time_of_day)
    };
    for report in reports {
        let (attachment, flow) = (&report.attachment, &report.flow);
        let totals = flow.totals();
        table.push(vec![
            attachment.iface.as_str().into(),
            netns_cell(attachment).into(),
            flow.client.to_string().into(),
            flow.server.to_string().into(),
            flow.state.as_str().into(),
            report
                .verdict
                .as_ref()
                .map_or("-", |verdict| verdict.reset_by.as_str())
                .into(),
            totals.syn.to_string().into(),
            totals.syn_ack.to_string().into(),
            totals.fin.to_string().into(),
            format!(
                "{}/{}",
                flow.client_to_server.rst, flow.server_to_client.rst
            )
            .into(),
            time(flow.first_seen_ns),
            time(flow.last_seen_ns),
        ]);
    }
    table
}

/// The flows of `reports` that carry a verdict, for people: one group per interface, gateway
/// and server address, led by a header line, then one line per flow; both in the order of their
/// first RST. A flow's line reads e.g. `10.0.2.1:443 <- reset by a middlebox via 00:01:d7:3c:5e:01 (F5 Networks, Inc.),
/// gateway 10.0.1.254: RST TTL 64 (0 hops) vs server TTL 127 (1 hop) [client ..., time]`.
pub fn resets_text(reports: &[FlowReport], clock: &ClockSnapshot) -> String {
    type GroupKey<'a> = (&'a Attachment, Option<MacAddr>, IpAddr);
    let mut groups: BTreeMap<GroupKey, Vec<(&FlowReport, &Verdict)>> = BTreeMap::new();
    for report in reports {
        if let Some(verdict) = &report.verdict {
            let gateway = report.gateway.as_ref().map(|gateway| gateway.mac);
            groups
                .entry((&report.attachment, gateway, report.flow.server.ip()))
                .or_default()
                .push((report, verdict));
        }
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    for (_, members) in &mut groups {
        members.sort_by_key(|(report, _)| report.flow.first_rst_ns());
    }
    // Groups in the order of their first reset, like the lines within them.
    groups.sort_by_key(|(_, members)| members[0].0.flow.first_rst_ns());
    let mut blocks = Vec::new();
    for ((attachment, _, server), members) in groups {
        let gateway = members[0].0.gateway.as_ref();
        let mut block = format!(
            "server {server}{} on {attachment}: {}\n",
            gateway.map_or(", no gateway MAC seen".to_owned(), |g| via(g, server, true)),
            verdict_counts(members.iter().map(|(_, verdict)| verdict.reset_by))
        );
        for (report, verdict) in members {
            let flow = &report.flow;
            block += &format!(
                "  {} <- {}{}: {} [client {}, {}]\n",
                flow.server,
                reset_by_phrase(verdict),
                report
                    .gateway
                    .as_ref()
                    .map_or(String::new(), |g| via(g, server, false)),
                verdict.summary,
                flow.client,
                clock.rfc3339(flow.first_rst_ns().unwrap_or(flow.last_seen_ns)),
            );
        }
        blocks.push(block);
    }
    blocks.join("\n")
}

/// ` via MAC (vendor), gateway IP`, saying when the gateway is the default route's, or when
/// the MAC is the server's own (a flat segment).
fn via(gateway: &Gateway, server: IpAddr, say_default: bool) -> String {
    let mut text = format!(" via {} ({})", gateway.mac, gateway.vendor.describe());
    match gateway.neighbour {
        Some(neighbour) if neighbour.ip == server => text += ", directly connected",
        Some(neighbour) => {
            text += &format!(", gateway {}", neighbour.ip);
            if say_default && neighbour.is_default {
                text += " (default route)";
            }
        }
        None => {}
    }
    text
}

fn reset_by_phrase(verdict: &Verdict) -> String {
    let side = verdict.rst_from;
    match verdict.reset_by {
        ResetBy::Middlebox => "reset by a middlebox".to_owned(),
        ResetBy::Endpoint => format!("reset by the {side} itself"),
        ResetBy::Unknown => format!("reset by the {side} or a middlebox (unknown)"),
    }
}

/// `3 resets: 2 by a middlebox, 1 by the endpoint`.
fn verdict_counts(verdicts: impl Iterator<Item = ResetBy>) -> String {
    let mut counts = [0usize; 3];
    for reset_by in verdicts {
        counts[reset_by as usize] += 1;
    }
    let total: usize = counts.iter().sum();
    let parts: Vec<String> = [
        (ResetBy::Middlebox, "by a middlebox"),
        (ResetBy::Endpoint, "by the endpoint"),
        (ResetBy::Unknown, "unknown"),
    ]
    .into_iter()
    .filter(|(reset_by, _)| counts[*reset_by as usize] > 0)
    .map(|(reset_by, what)| format!("{} {what}", counts[reset_by as usize]))
    .collect();
    let resets = if total == 1 { "reset" } else { "resets" };
    format!("{total} {resets}: {}", parts.join(", "))
}

fn netns_cell(attachment: &Attachment) -> &str {
    attachment.netns.name().unwrap_or("host")
}

/// Global counters of one hook, in a row.
#[derive(Debug, Default, Serialize)]
struct CountersRow {
    packets: u64,
    tcp: u64,
    non_tcp: u64,
    parse_errors: u64,
    flows_created: u64,
    syn: u64,
    syn_ack: u64,
    fin: u64,
    rst: u64,
    resets_unrecorded: u64,
    events: u64,
    events_dropped: u64,
}

impl From<GlobalCounters> for CountersRow {
    fn from(c: GlobalCounters) -> Self {
        CountersRow {
            packets: c.packets(),
            tcp: c.tcp(),
            non_tcp: c.non_tcp,
            parse_errors: c.parse_errors,
            flows_created: c.flows_created,
            syn: c.syn(),
            syn_ack: c.syn_ack(),
            fin: c.fin(),
            rst: c.rst(),
            resets_unrecorded: c.resets_unrecorded,
            events: c.events,
            events_dropped: c.events_dropped,
        }
    }
}

/// One attachment's stats: a line of `stats --json`, a row of `stats --csv`. The keys are
/// documented in the README and stable.
#[derive(Debug, Default, Serialize)]
pub struct StatsRow<'a> {
    iface: &'a str,
    netns: Option<&'a str>,
    ingress: CountersRow,
    egress: CountersRow,
    total: CountersRow,
    flows: usize,
    /// `null` for a capture (`flagtrace pcap`), whose flow table has no limit.
    max_flows: Option<u32>,
}

impl<'a> StatsRow<'a> {
    pub fn new(stats: &'a AttachmentStats) -> Self {
        StatsRow {
            iface: &stats.attachment.iface,
            netns: stats.attachment.netns.name(),
            ingress: stats.counters.ingress.into(),
            egress: stats.counters.egress.into(),
            total: stats.counters.total().into(),
            flows: stats.flows,
            max_flows: stats.max_flows,
        }
    }
}

/// What `stats` reports for one attachment.
pub struct AttachmentStats {
    pub attachment: Attachment,
    pub counters: Counters,
    /// Entries in the flow table now.
    pub flows: usize,
    /// Capacity of the flow table; `None` for a capture's, which has no limit.
    pub max_flows: Option<u32>,
}

/// What a narrow terminal takes from `stats` first; packets, TCP and parse errors stay.
const STATS_NARROWING: &[Narrowing] =
    &[Narrowing::Drop("FLOWS_CREATED"), Narrowing::Drop("NON_TCP")];

/// Each attachment's stats for people: a heading with the flow-table fill, then one row per
/// hook and the total; a blank line between attachments.
pub fn stats_text(stats: &[AttachmentStats], width: Option<usize>) -> String {
    let blocks: Vec<String> = stats
        .iter()
        .map(|stats| {
            let heading = match stats.max_flows {
                Some(max_flows) => format!(
                    "{}: {} of {max_flows} flow-table entries in use",
                    stats.attachment, stats.flows
                ),
                None => format!("{}: {} flows", stats.attachment, stats.flows),
            };
            let table = stats_table(&stats.counters).render(width);
            format!("{}\n{table}", cut(&heading, width))
        })
        .collect();
    blocks.join("\n")
}

fn stats_table(counters: &Counters) -> Table {
    let mut table = Table::new(
        [
            "HOOK",
            "PACKETS",
            "TCP",
            "NON_TCP",
            "PARSE_ERRORS",
            "FLOWS_CREATED",
        ]
        .map(Cell::from)
        .into(),
        STATS_NARROWING,
    );
    let hooks = [
        ("ingress", counters.ingress),
        ("egress", counters.egress),
        ("total", counters.total()),
    ];
    for (hook, c) in hooks {
        let counts = [
            c.packets(),
            c.tcp(),
            c.non_tcp,
            c.parse_errors,
            c.flows_created,
        ];
        let mut row = vec![Cell::from(hook)];
        row.extend(counts.map(|count| Cell::from(count.to_string())));
        table.push(row);
    }
    table
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tracer_common::{FlowKey, FlowValue, FAMILY_IPV4, FIRST_SYN_HI, FIRST_SYN_LO};

    use super::*;
    use crate::{
        analysis::flow::FlowRecord, analysis::oui::Vendor, analysis::verdict::Role,
        source::neighbour::NeighbourIp, sys::netns::Netns,
    };

    const SECOND: i128 = 1_000_000_000;
    const JSON: OutputFormat = OutputFormat::Records(RecordFormat::Json);
    const CSV: OutputFormat = OutputFormat::Records(RecordFormat::Csv);

    fn clock() -> ClockSnapshot {
        // Boot time 1000 s corresponds to 2023-11-14T22:13:20Z.
        ClockSnapshot::new(1_700_000_000 * SECOND, 1_000 * SECOND)
    }

    fn refused_flow() -> FlowRecord {
        let client = [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0];
        let server = [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0];
        let (key, client_side) = FlowKey::from_packet(FAMILY_IPV4, 2, client, 40000, server, 80);
        let mut value = FlowValue {
            first_seen_ns: 990 * SECOND as u64,
            last_seen_ns: 990 * SECOND as u64 + 1_500_000,
            first_syn_from: if client_side == 0 {
                FIRST_SYN_LO
            } else {
                FIRST_SYN_HI
            },
            ..FlowValue::default()
        };
        value.sent_by[client_side].syn = 1;
        value.sent_by[1 - client_side].rst = 1;
        FlowRecord::new(&key, &value, None).unwrap()
    }

    fn lab(iface: &str) -> Attachment {
        Attachment {
            netns: Netns::Named("lab".into()),
            iface: iface.into(),
        }
    }

    fn f5_gateway(neighbour: Option<&str>) -> Gateway {
        Gateway {
            mac: "00:01:d7:3c:5e:01".parse().unwrap(),
            vendor: Vendor::Organization("F5 Networks, Inc.".into()),
            neighbour: neighbour.map(|ip| NeighbourIp {
                ip: ip.parse().unwrap(),
                is_default: true,
            }),
        }
    }

    fn middlebox() -> Verdict {
        Verdict {
            reset_by: ResetBy::Middlebox,
            rst_from: Role::Server,
            evidence: vec![
                "RST arrived with TTL 64 (0 hops); the server's packets arrive with TTL 127 (1 hop) on 1 other connection".into(),
            ],
            summary: "RST TTL 64 (0 hops) vs server TTL 127 (1 hop)".into(),
        }
    }

    /// The refused flow, reset by a middlebox behind the F5 gateway 10.0.0.254.
    fn refused_report(iface: &str) -> FlowReport {
        FlowReport {
            attachment: lab(iface),
            flow: refused_flow(),
            verdict: Some(middlebox()),
            gateway: Some(f5_gateway(Some("10.0.0.254"))),
        }
    }

    /// What `print` prints through a printer for `format` and `width`.
    fn printed(
        format: OutputFormat,
        width: Option<usize>,
        print: impl FnOnce(&mut Printer<Vec<u8>>) -> io::Result<()>,
    ) -> String {
        let mut printer = Printer::new(Vec::new(), format, width);
        print(&mut printer).unwrap();
        String::from_utf8(printer.out).unwrap()
    }

    /// The JSON line of one flow, without its newline.
    fn flow_json(report: &FlowReport) -> String {
        let reports = std::slice::from_ref(report);
        let text = printed(JSON, None, |p| p.flows(reports, &clock()));
        text.strip_suffix('\n').unwrap().to_owned()
    }

    #[test]
    fn flow_json_has_the_documented_shape() {
        let line = flow_json(&refused_report("veth0"));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            json!({
                "iface": "veth0",
                "netns": "lab",
                "client": "10.0.0.1:40000",
                "server": "10.0.0.2:80",
                "syn": 1, "syn_ack": 0, "fin": 0, "rst": 1,
                "client_to_server": {"syn": 1, "syn_ack": 0, "fin": 0, "rst": 0},
                "server_to_client": {"syn": 0, "syn_ack": 0, "fin": 0, "rst": 1},
                "state": "refused",
                "first_seen": "2023-11-14T22:13:10.000000Z",
                "last_seen": "2023-11-14T22:13:10.001500Z",
                "reset_by": "middlebox",
                "evidence": ["RST arrived with TTL 64 (0 hops); the server's packets arrive with TTL 127 (1 hop) on 1 other connection"],
                "gateway_mac": "00:01:d7:3c:5e:01",
                "gateway_vendor": "F5 Networks, Inc.",
                "gateway_ip": "10.0.0.254",
                "gateway_is_default": true,
            })
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn flow_json_without_reset_or_gateway() {
        let host = FlowReport {
            attachment: Attachment {
                netns: Netns::Host,
                iface: "eth0".into(),
            },
            flow: refused_flow(),
            verdict: None,
            gateway: None,
        };
        let value: serde_json::Value = serde_json::from_str(&flow_json(&host)).unwrap();
        assert_eq!(value["netns"], serde_json::Value::Null);
        assert_eq!(value["reset_by"], serde_json::Value::Null);
        assert_eq!(value["evidence"], json!([]));
        assert_eq!(value["gateway_mac"], serde_json::Value::Null);
        assert_eq!(value["gateway_vendor"], serde_json::Value::Null);
        assert_eq!(value["gateway_ip"], serde_json::Value::Null);
        assert_eq!(value["gateway_is_default"], json!(false));

        // A locally administered MAC has no vendor.
        let local = FlowReport {
            gateway: Some(Gateway {
                mac: "02:00:00:00:00:01".parse().unwrap(),
                vendor: Vendor::LocallyAdministered,
                neighbour: None,
            }),
            ..host
        };
        let value: serde_json::Value = serde_json::from_str(&flow_json(&local)).unwrap();
        assert_eq!(value["gateway_mac"], json!("02:00:00:00:00:01"));
        assert_eq!(value["gateway_vendor"], serde_json::Value::Null);
    }

    #[test]
    fn flows_table_aligns_columns() {
        let mut quiet = refused_report("veth-long");
        quiet.verdict = None;
        let reports = [refused_report("veth0"), quiet];
        let text = flows_table(&reports, &clock()).render(None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0]
            .starts_with("IFACE      NETNS  CLIENT          SERVER       STATE    RESET_BY   SYN"));
        assert!(lines[1].starts_with(
            "veth0      lab    10.0.0.1:40000  10.0.0.2:80  refused  middlebox  1    0        0    0/1           2023-11-14T22:13:10.000000Z"
        ));
        assert!(lines[2]
            .starts_with("veth-long  lab    10.0.0.1:40000  10.0.0.2:80  refused  -          1"));
    }

    #[test]
    fn resets_group_by_gateway_and_server() {
        let at =
            |port: u16, server: &str, rst_s: u64, verdict: Verdict, gateway: Option<Gateway>| {
                let mut flow = refused_flow();
                flow.client.set_port(port);
                flow.server = server.parse().unwrap();
                flow.server_evidence.rst = Some(tracer_common::RstEvidence {
                    first_rst_ns: rst_s * SECOND as u64,
                    ..Default::default()
                });
                FlowReport {
                    attachment: lab("veth0"),
                    flow,
                    verdict: Some(verdict),
                    gateway,
                }
            };
        let endpoint = Verdict {
            reset_by: ResetBy::Endpoint,
            summary: "RST TTL 64 (0 hops) agrees with server TTL 64 (0 hops)".into(),
            ..middlebox()
        };
        let unknown = Verdict {
            reset_by: ResetBy::Unknown,
            summary: "no baseline for the server".into(),
            ..middlebox()
        };
        let mut quiet = refused_report("veth0");
        quiet.verdict = None;
        let reports = [
            at(
                40002,
                "10.0.2.1:443",
                995,
                middlebox(),
                Some(f5_gateway(Some("10.0.1.254"))),
            ),
            quiet,
            at(
                40001,
                "10.0.2.1:443",
                990,
                middlebox(),
                Some(f5_gateway(Some("10.0.1.254"))),
            ),
            at(
                40003,
                "10.0.2.1:8443",
                996,
                endpoint,
                Some(f5_gateway(Some("10.0.1.254"))),
            ),
            at(
                40004,
                "10.0.0.2:25",
                997,
                unknown,
                Some(f5_gateway(Some("10.0.0.2"))),
            ),
            at(40005, "10.0.0.3:25", 998, middlebox(), None),
        ];
        assert_eq!(
            resets_text(&reports, &clock()),
            "server 10.0.2.1 via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), gateway 10.0.1.254 (default route) on veth0 (netns lab): 3 resets: 2 by a middlebox, 1 by the endpoint
  10.0.2.1:443 <- reset by a middlebox via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), gateway 10.0.1.254: RST TTL 64 (0 hops) vs server TTL 127 (1 hop) [client 10.0.0.1:40001, 2023-11-14T22:13:10.000000Z]
  10.0.2.1:443 <- reset by a middlebox via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), gateway 10.0.1.254: RST TTL 64 (0 hops) vs server TTL 127 (1 hop) [client 10.0.0.1:40002, 2023-11-14T22:13:15.000000Z]
  10.0.2.1:8443 <- reset by the server itself via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), gateway 10.0.1.254: RST TTL 64 (0 hops) agrees with server TTL 64 (0 hops) [client 10.0.0.1:40003, 2023-11-14T22:13:16.000000Z]

server 10.0.0.2 via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), directly connected on veth0 (netns lab): 1 reset: 1 unknown
  10.0.0.2:25 <- reset by the server or a middlebox (unknown) via 00:01:d7:3c:5e:01 (F5 Networks, Inc.), directly connected: no baseline for the server [client 10.0.0.1:40004, 2023-11-14T22:13:17.000000Z]

server 10.0.0.3, no gateway MAC seen on veth0 (netns lab): 1 reset: 1 by a middlebox
  10.0.0.3:25 <- reset by a middlebox: RST TTL 64 (0 hops) vs server TTL 127 (1 hop) [client 10.0.0.1:40005, 2023-11-14T22:13:18.000000Z]
"
        );
        assert_eq!(resets_text(&[], &clock()), "");
    }

    fn plain_acks(packets: u64, mut counters: GlobalCounters) -> GlobalCounters {
        counters.count_tcp(tracer_common::TCP_ACK, packets);
        counters
    }

    fn lab_stats(iface: &str) -> AttachmentStats {
        AttachmentStats {
            attachment: lab(iface),
            counters: Counters {
                ingress: plain_acks(
                    4,
                    GlobalCounters {
                        non_tcp: 1,
                        parse_errors: 0,
                        flows_created: 1,
                        ..GlobalCounters::default()
                    },
                ),
                egress: plain_acks(3, GlobalCounters::default()),
            },
            flows: 1,
            max_flows: Some(1024),
        }
    }

    #[test]
    fn stats_json_csv_and_text() {
        let stats = [lab_stats("veth0"), lab_stats("veth1")];
        let json_lines = printed(JSON, None, |p| p.stats(&stats));
        let lines: Vec<&str> = json_lines.lines().collect();
        assert_eq!(lines.len(), 2);
        let value: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(
            value,
            json!({
                "iface": "veth0",
                "netns": "lab",
                "ingress": {"packets": 5, "tcp": 4, "non_tcp": 1, "parse_errors": 0, "flows_created": 1, "syn": 0, "syn_ack": 0, "fin": 0, "rst": 0, "resets_unrecorded": 0, "events": 0, "events_dropped": 0},
                "egress": {"packets": 3, "tcp": 3, "non_tcp": 0, "parse_errors": 0, "flows_created": 0, "syn": 0, "syn_ack": 0, "fin": 0, "rst": 0, "resets_unrecorded": 0, "events": 0, "events_dropped": 0},
                "total": {"packets": 8, "tcp": 7, "non_tcp": 1, "parse_errors": 0, "flows_created": 1, "syn": 0, "syn_ack": 0, "fin": 0, "rst": 0, "resets_unrecorded": 0, "events": 0, "events_dropped": 0},
                "flows": 1,
                "max_flows": 1024,
            })
        );
        assert_eq!(
            printed(CSV, None, |p| p.stats(&stats[..1])),
            format!(
                "{}\nveth0,lab,5,4,1,0,1,0,0,0,0,0,0,0,3,3,0,0,0,0,0,0,0,0,0,0,8,7,1,0,1,0,0,0,0,0,0,0,1,1024\n",
                STATS_COLUMNS.join(",")
            )
        );
        let block = |iface: &str| {
            format!(
                "{iface} (netns lab): 1 of 1024 flow-table entries in use\n\
                 HOOK     PACKETS  TCP  NON_TCP  PARSE_ERRORS  FLOWS_CREATED\n\
                 ingress  5        4    1        0             1\n\
                 egress   3        3    0        0             0\n\
                 total    8        7    1        0             1\n"
            )
        };
        assert_eq!(
            printed(OutputFormat::Table, None, |p| p.stats(&stats)),
            block("veth0") + "\n" + &block("veth1")
        );
        // Narrow: the least telling columns go, and the heading is cut.
        assert_eq!(
            stats_text(&stats[..1], Some(40)),
            "veth0 (netns lab): 1 of 1024 flow-table…\n\
             HOOK     PACKETS  TCP  PARSE_ERRORS\n\
             ingress  5        4    0\n\
             egress   3        3    0\n\
             total    8        7    0\n"
        );
    }

    /// The CSV columns of `flows` and `resets`, as documented in the README: stable.
    const FLOW_COLUMNS: [&str; 25] = [
        "iface",
        "netns",
        "client",
        "server",
        "syn",
        "syn_ack",
        "fin",
        "rst",
        "client_to_server_syn",
        "client_to_server_syn_ack",
        "client_to_server_fin",
        "client_to_server_rst",
        "server_to_client_syn",
        "server_to_client_syn_ack",
        "server_to_client_fin",
        "server_to_client_rst",
        "state",
        "first_seen",
        "last_seen",
        "reset_by",
        "evidence",
        "gateway_mac",
        "gateway_vendor",
        "gateway_ip",
        "gateway_is_default",
    ];

    /// The CSV columns of `stats`, as documented in the README: stable.
    const STATS_COLUMNS: [&str; 40] = [
        "iface",
        "netns",
        "ingress_packets",
        "ingress_tcp",
        "ingress_non_tcp",
        "ingress_parse_errors",
        "ingress_flows_created",
        "ingress_syn",
        "ingress_syn_ack",
        "ingress_fin",
        "ingress_rst",
        "ingress_resets_unrecorded",
        "ingress_events",
        "ingress_events_dropped",
        "egress_packets",
        "egress_tcp",
        "egress_non_tcp",
        "egress_parse_errors",
        "egress_flows_created",
        "egress_syn",
        "egress_syn_ack",
        "egress_fin",
        "egress_rst",
        "egress_resets_unrecorded",
        "egress_events",
        "egress_events_dropped",
        "total_packets",
        "total_tcp",
        "total_non_tcp",
        "total_parse_errors",
        "total_flows_created",
        "total_syn",
        "total_syn_ack",
        "total_fin",
        "total_rst",
        "total_resets_unrecorded",
        "total_events",
        "total_events_dropped",
        "flows",
        "max_flows",
    ];

    #[test]
    fn csv_headers_are_stable() {
        assert_eq!(csv_header::<FlowRow>(), FLOW_COLUMNS);
        assert_eq!(csv_header::<StatsRow>(), STATS_COLUMNS);
        // With or without the optional values, a row has exactly the header's columns.
        let quiet = FlowReport {
            verdict: None,
            gateway: None,
            ..refused_report("veth0")
        };
        for report in [refused_report("veth0"), quiet] {
            let columns: Vec<String> = flat_fields(&FlowRow::new(&report, &clock()))
                .into_iter()
                .map(|(column, _)| column)
                .collect();
            assert_eq!(columns, FLOW_COLUMNS);
        }
        let stats = lab_stats("veth0");
        let columns: Vec<String> = flat_fields(&StatsRow::new(&stats))
            .into_iter()
            .map(|(column, _)| column)
            .collect();
        assert_eq!(columns, STATS_COLUMNS);
    }

    #[test]
    fn csv_quotes_commas_and_quotes_and_matches_the_json() {
        let mut report = refused_report("veth0");
        report.verdict.as_mut().unwrap().evidence = vec![
            "RST arrived with TTL 64, from \"elsewhere\"".into(),
            "a second sentence".into(),
        ];
        let reports = [report];
        let csv_text = printed(CSV, None, |p| p.flows(&reports, &clock()));
        let lines: Vec<&str> = csv_text.lines().collect();
        assert_eq!(lines.len(), 2, "{csv_text}");
        assert_eq!(lines[0], FLOW_COLUMNS.join(","));
        assert_eq!(
            lines[1],
            concat!(
                "veth0,lab,10.0.0.1:40000,10.0.0.2:80,1,0,0,1,1,0,0,0,0,0,0,1,refused,",
                "2023-11-14T22:13:10.000000Z,2023-11-14T22:13:10.001500Z,middlebox,",
                r#""[""RST arrived with TTL 64, from \""elsewhere\"""",""a second sentence""]","#,
                r#"00:01:d7:3c:5e:01,"F5 Networks, Inc.",10.0.0.254,true"#
            )
        );

        // Read back by a CSV reader, each cell is the JSON value: text as it is, null empty.
        let json_text = printed(JSON, None, |p| p.flows(&reports, &clock()));
        let json: serde_json::Value = serde_json::from_str(json_text.trim_end()).unwrap();
        let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
        let header = reader.headers().unwrap().clone();
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(record.len(), header.len());
        let cells: BTreeMap<&str, &str> = header.iter().zip(record.iter()).collect();
        assert_eq!(cells["gateway_vendor"], "F5 Networks, Inc.");
        assert_eq!(cells["client_to_server_syn"], "1");
        assert_eq!(cells["server_to_client_rst"], "1");
        let evidence: serde_json::Value = serde_json::from_str(cells["evidence"]).unwrap();
        assert_eq!(evidence, json["evidence"]);
        assert_eq!(cells["first_seen"], json["first_seen"]);
    }

    #[test]
    fn csv_of_nothing_is_its_header() {
        let csv_text = printed(CSV, None, |p| p.resets(&[], &clock()));
        assert_eq!(csv_text, FLOW_COLUMNS.join(",") + "\n");
        assert_eq!(
            printed(CSV, None, |p| p.stats(&[])),
            STATS_COLUMNS.join(",") + "\n"
        );
        assert_eq!(printed(JSON, None, |p| p.flows(&[], &clock())), "");
    }

    /// A few flows whose full table is wider than 120 columns.
    fn several_flows() -> Vec<FlowReport> {
        let mut quiet = refused_report("veth-long");
        quiet.verdict = None;
        let mut v6 = refused_report("veth0");
        v6.flow.client = "[fd00::1]:40000".parse().unwrap();
        v6.flow.server = "[fd00::2]:443".parse().unwrap();
        vec![refused_report("veth0"), quiet, v6]
    }

    fn flows_at(width: Option<usize>) -> String {
        let reports = several_flows();
        printed(OutputFormat::Table, width, |p| p.flows(&reports, &clock()))
    }

    fn max_line(text: &str) -> usize {
        text.lines().map(|line| line.chars().count()).max().unwrap()
    }

    #[test]
    fn flows_table_at_full_width_and_200_columns() {
        let full = flows_at(None);
        assert!(max_line(&full) > 120 && max_line(&full) <= 200, "{full}");
        assert_eq!(flows_at(Some(200)), full);
        let header = full.lines().next().unwrap();
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            [
                "IFACE",
                "NETNS",
                "CLIENT",
                "SERVER",
                "STATE",
                "RESET_BY",
                "SYN",
                "SYN_ACK",
                "FIN",
                "RST(C>S/S>C)",
                "FIRST_SEEN",
                "LAST_SEEN"
            ]
        );
        assert!(full.contains("2023-11-14T22:13:10.001500Z"));
    }

    #[test]
    fn flows_table_fits_120_columns_with_the_time_of_day() {
        let text = flows_at(Some(120));
        assert!(max_line(&text) <= 120, "{text}");
        // Both times as the time of day would take 124 columns: FIRST_SEEN goes.
        assert_eq!(
            text,
            "IFACE      NETNS  CLIENT           SERVER         STATE    RESET_BY   SYN  SYN_ACK  FIN  RST(C>S/S>C)  LAST_SEEN\n\
             veth0      lab    10.0.0.1:40000   10.0.0.2:80    refused  middlebox  1    0        0    0/1           22:13:10\n\
             veth-long  lab    10.0.0.1:40000   10.0.0.2:80    refused  -          1    0        0    0/1           22:13:10\n\
             veth0      lab    [fd00::1]:40000  [fd00::2]:443  refused  middlebox  1    0        0    0/1           22:13:10\n"
        );
        // A little wider, both stay as the time of day.
        let text = flows_at(Some(124));
        assert!(
            text.lines()
                .next()
                .unwrap()
                .ends_with("FIRST_SEEN  LAST_SEEN"),
            "{text}"
        );
        assert!(!text.contains("2023-"), "{text}");
    }

    #[test]
    fn flows_table_fits_80_columns_keeping_addresses_state_and_counts() {
        let text = flows_at(Some(80));
        assert!(max_line(&text) <= 80, "{text}");
        assert_eq!(
            text,
            "CLIENT           SERVER         STATE    RESET_BY   SYN  SYN_ACK  FIN  RST\n\
             10.0.0.1:40000   10.0.0.2:80    refused  middlebox  1    0        0    0/1\n\
             10.0.0.1:40000   10.0.0.2:80    refused  -          1    0        0    0/1\n\
             [fd00::1]:40000  [fd00::2]:443  refused  middlebox  1    0        0    0/1\n"
        );
    }

    #[test]
    fn flows_table_too_narrow_even_for_the_essentials_is_cut() {
        let text = flows_at(Some(40));
        for line in text.lines() {
            assert_eq!(line.chars().count(), 40, "{text}");
            assert!(line.ends_with('…'), "{text}");
        }
        assert_eq!(
            text,
            "CLIENT           SERVER         STATE  …\n\
             10.0.0.1:40000   10.0.0.2:80    refused…\n\
             10.0.0.1:40000   10.0.0.2:80    refused…\n\
             [fd00::1]:40000  [fd00::2]:443  refused…\n"
        );
    }

    #[test]
    fn tables_fit_the_terminal_only() {
        let no_window = || None;
        let window = || Some(132);
        // Not a terminal: full width, whatever $COLUMNS says.
        assert_eq!(table_width(false, None, window), None);
        assert_eq!(table_width(false, Some("80"), window), None);
        // A terminal: $COLUMNS first, then the window size.
        assert_eq!(table_width(true, Some("80"), window), Some(80));
        assert_eq!(table_width(true, Some(" 100 "), no_window), Some(100));
        assert_eq!(table_width(true, None, window), Some(132));
        for unusable in ["", "0", "wide", "-1"] {
            assert_eq!(table_width(true, Some(unusable), window), Some(132));
        }
        assert_eq!(table_width(true, None, no_window), None);
    }
}
