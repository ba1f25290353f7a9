//! Tables for people: left-aligned columns fitted to the terminal, narrowed step by step.

use std::os::fd::AsRawFd;

/// The width a table must fit in: when stdout is a terminal, `$COLUMNS` if it holds a width,
/// else the terminal's; `None` (full width) when stdout is a file or a pipe, so that nothing is
/// lost on the way to another program.
pub fn table_width(
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
pub fn window_columns(terminal: &impl AsRawFd) -> Option<usize> {
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
pub fn cut(line: &str, width: Option<usize>) -> String {
    match width {
        Some(width) if line.chars().count() > width => {
            let kept: String = line.chars().take(width.saturating_sub(1)).collect();
            kept + "…"
        }
        _ => line.to_owned(),
    }
}
