//! How the commands print: tables and sentences fitted to the terminal for people, JSON lines
//! or CSV for programs. Each kind of item has one serde struct (a "row", [`rows`]); its JSON
//! object is one JSON line, and the same object flattened is one CSV row ([`records`]), so the
//! two always carry the same information and a new field reaches both. What people read is
//! drawn by [`table`] and [`text`]; the verdict's signals become sentences in [`evidence`] only.

pub mod evidence;
pub mod metrics;
pub mod records;
pub mod rows;
pub mod table;
#[cfg(test)]
mod tests;
pub mod text;

use std::{
    env,
    io::{self, BufWriter, IsTerminal as _, Write},
};

use serde::Serialize;

pub use records::RecordWriter;
pub use rows::FlowRow;
pub use text::resets_text;

use crate::{analysis::report::FlowReport, source::Stats};
use rows::StatsRow;
use table::{table_width, window_columns};
use text::{flows_table, stats_text};

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

impl Printer<BufWriter<io::StdoutLock<'static>>> {
    /// Prints to stdout, fitting tables to the terminal when stdout is one. Buffered: stdout
    /// alone flushes at every line, a write(2) per flow (each printing flushes at its end).
    pub fn stdout(format: OutputFormat) -> Self {
        let stdout = io::stdout();
        let width = table_width(
            stdout.is_terminal(),
            env::var("COLUMNS").ok().as_deref(),
            || window_columns(&stdout),
        );
        Printer::new(BufWriter::new(stdout.lock()), format, width)
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
    pub fn flows(&mut self, reports: &[FlowReport]) -> io::Result<()> {
        self.items(reports.iter().map(FlowRow::new), |width| {
            flows_table(reports).render(width)
        })
    }

    /// The flows that carried a RST: the same items as [`Printer::flows`], but for people
    /// grouped sentences (see [`resets_text`]), which are not cut to the terminal.
    pub fn resets(&mut self, reports: &[FlowReport]) -> io::Result<()> {
        self.items(reports.iter().map(FlowRow::new), |_| resets_text(reports))
    }

    /// One item per source.
    pub fn stats(&mut self, stats: &[Stats]) -> io::Result<()> {
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
            OutputFormat::Table => {
                self.out.write_all(text(self.width).as_bytes())?;
                return self.out.flush();
            }
            OutputFormat::Records(format) => format,
        };
        let mut records = RecordWriter::new(&mut self.out, format)?;
        for row in rows {
            records.write(&row)?;
        }
        records.flush()
    }
}
