//! Rows as JSON lines or CSV, one at a time, for lists and streams alike.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    marker::PhantomData,
};

use serde::Serialize;
use serde_json::Value;

use super::RecordFormat;

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
pub(super) fn csv_header<R: Serialize + Default>() -> Vec<String> {
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

/// Keys whose value is an object or `null`: written as one cell of JSON text, as a flattened
/// object would have columns only in the rows that have it.
const OBJECT_OR_NULL_KEYS: [&str; 1] = ["rst_payload"];

/// `row`'s JSON object as (column, cell) pairs in field order: nested objects flattened with
/// `_` (`client_to_server` + `syn` = `client_to_server_syn`), `null` as an empty cell, strings
/// as they are, lists and [`OBJECT_OR_NULL_KEYS`] as JSON text (so that their items stay
/// apart), numbers and booleans as JSON writes them.
pub(super) fn flat_fields(row: &impl Serialize) -> Vec<(String, String)> {
    fn flatten(column: String, value: Value, fields: &mut Vec<(String, String)>) {
        let cell = match value {
            Value::Object(object) if !OBJECT_OR_NULL_KEYS.contains(&column.as_str()) => {
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
