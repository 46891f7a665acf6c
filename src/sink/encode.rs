//! JSON rows → PostgreSQL `COPY` text, checked against the sink's columns.
//!
//! Checks that need only the row and the column list (unknown column, null in
//! a NOT NULL column without default, JSON type that cannot be the column's
//! type, integer range, NUL characters) happen here, so the error names the
//! row and column precisely. Everything else (a malformed uuid or date, a too
//! long varchar) is left to PostgreSQL's own parser during `COPY`, whose error
//! names the line, which is the row: see [`copy_error_to_rejection`].

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::schema::{ColumnDef, ColumnKind};
use crate::error::Error;
use crate::model::OP_FIELD;

/// Encodes rows of one batch into COPY text, one line per row.
///
/// Rows are read straight from their JSON text: each value is located as a
/// borrowed raw slice and converted to COPY text without building a
/// `serde_json::Value` tree (that allocation was the largest cost of staging).
pub struct CopyEncoder<'a> {
    columns: &'a [ColumnDef],
    /// Per column: part of the upsert key, so a value is required.
    required: Vec<bool>,
    /// Whether a row may be a delete by key (upsert outputs).
    deletes_allowed: bool,
    /// Pre-escaped `\t<tag>\t<task>\t<batch seq>\t` suffix shared by every row.
    suffix: Vec<u8>,
    /// Rows for staging as tuples: sinkgate's columns follow the sink's,
    /// and an omitted column is `\N` with its name in the omitted list.
    /// Otherwise (a chunk's text) a row is the sink's columns only, and an
    /// omitted one is left out: [`CopyEncoder::omitted`] says which.
    own_columns: bool,
    /// Indexes of the columns the last row omitted.
    omitted: Vec<usize>,
    rows: u64,
    bytes: u64,
    deletes: u64,
    scratch: String,
    digest: RowDigest,
}

impl<'a> CopyEncoder<'a> {
    /// `key`: the upsert key (empty in append mode); rows must give every
    /// key column a non-null value. `deletes`: a row may be a delete by key
    /// ([`OP_FIELD`]). `batch_seq` orders this batch after every earlier
    /// one; rows within it are ordered by their index.
    pub fn new(
        columns: &'a [ColumnDef],
        key: &[String],
        deletes: bool,
        tag: i64,
        task_id: &str,
        batch_seq: i64,
    ) -> Self {
        let mut suffix = Vec::new();
        suffix.push(b'\t');
        suffix.extend_from_slice(tag.to_string().as_bytes());
        suffix.push(b'\t');
        escape_into(task_id, &mut suffix);
        suffix.push(b'\t');
        suffix.extend_from_slice(batch_seq.to_string().as_bytes());
        suffix.push(b'\t');
        CopyEncoder {
            columns,
            required: columns.iter().map(|c| key.contains(&c.name)).collect(),
            deletes_allowed: deletes,
            suffix,
            own_columns: true,
            omitted: Vec::new(),
            rows: 0,
            bytes: 0,
            deletes: 0,
            scratch: String::new(),
            digest: RowDigest::default(),
        }
    }

    /// An encoder of chunk text (append outputs): each row is the sink's
    /// columns it carries, and nothing of sinkgate's.
    pub fn chunked(columns: &'a [ColumnDef]) -> Self {
        CopyEncoder {
            own_columns: false,
            ..CopyEncoder::new(columns, &[], false, 0, "", 0)
        }
    }

    /// The indexes of the columns the last row pushed omitted, in column
    /// order.
    pub fn omitted(&self) -> &[usize] {
        &self.omitted
    }

    /// Rows encoded so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Rows encoded so far that are deletes by key.
    pub fn deletes(&self) -> u64 {
        self.deletes
    }

    /// Bytes of COPY text produced so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest of the rows encoded so far (see [`RowDigest`]).
    pub fn digest(&self) -> [u8; 32] {
        self.digest.clone().finish()
    }

    /// Appends one row, given as the text of a JSON object, to `out`, or
    /// explains why the row does not fit.
    ///
    /// A column the row omits gets its default at promotion (its name is
    /// staged in the row's omitted list); a column sent as `null` stays
    /// NULL, as an `INSERT` would store it.
    pub fn push(&mut self, row: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let row_number = self.rows + 1;
        // One slot per column, and the last for the operation field.
        let mut values: Vec<Option<&RawValue>> = vec![None; self.columns.len() + 1];
        let mut unknown = None;
        let mut deserializer = serde_json::Deserializer::from_slice(row);
        let parsed = RowSeed {
            columns: self.columns,
            values: &mut values,
            unknown: &mut unknown,
        }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
        if let Some(column) = unknown {
            return Err(reject(
                row_number,
                &column,
                "no such writable column in the sink table",
            ));
        }
        if let Err(error) = parsed {
            return Err(Error::RowRejected {
                row: row_number,
                column: None,
                detail: format!("not a JSON object: {error}"),
            });
        }

        let delete = match values[self.columns.len()].map(|raw| raw.get()) {
            None => false,
            Some(_) if !self.deletes_allowed => {
                return Err(reject(
                    row_number,
                    OP_FIELD,
                    "only rows of an upsert output can be deletes",
                ))
            }
            Some(r#""delete""#) => true,
            Some(r#""upsert""#) => false,
            Some(_) => {
                return Err(reject(
                    row_number,
                    OP_FIELD,
                    r#"must be "upsert" or "delete""#,
                ))
            }
        };

        let start = out.len();
        let mut omitted: Vec<&str> = Vec::new();
        self.omitted.clear();
        // Columns written so far (each after a tab but the first).
        let mut written = 0;
        let own_columns = self.own_columns;
        let mut separate = |out: &mut Vec<u8>| {
            if written > 0 {
                out.push(b'\t');
            }
            written += 1;
        };
        for (index, (column, value)) in self.columns.iter().zip(&values).enumerate() {
            let value = value.map(|raw| raw.get());
            if delete && !self.required[index] {
                // A delete names its key; anything else it carried would
                // be dropped without a word.
                if value.is_some() {
                    out.truncate(start);
                    return Err(reject(
                        row_number,
                        &column.name,
                        "a delete carries only the key columns",
                    ));
                }
                omitted.push(&column.name);
                separate(out);
                out.extend_from_slice(b"\\N");
                continue;
            }
            let problem = match value {
                None if self.required[index] => {
                    Some("the row has no value for this key column (upsert, first_write_wins)")
                }
                None if !column.nullable && column.default_expr.is_none() => {
                    Some("missing value in a NOT NULL column without default")
                }
                // Every omitted column is recorded (not only those with a
                // default now): a default added later applies to it too.
                None => {
                    omitted.push(&column.name);
                    self.omitted.push(index);
                    if own_columns {
                        separate(out);
                        out.extend_from_slice(b"\\N");
                    }
                    None
                }
                Some("null") if self.required[index] => {
                    Some("null in a key column (upsert, first_write_wins)")
                }
                Some("null") if !column.nullable => {
                    Some("null in a NOT NULL column (omit the column to get its default)")
                }
                Some("null") => {
                    separate(out);
                    out.extend_from_slice(b"\\N");
                    None
                }
                Some(raw) => {
                    separate(out);
                    if let Err(detail) = self.encode_value(column, raw, out) {
                        out.truncate(start);
                        return Err(reject(row_number, &column.name, &detail));
                    }
                    None
                }
            };
            if let Some(detail) = problem {
                out.truncate(start);
                return Err(reject(row_number, &column.name, detail));
            }
        }
        if !own_columns {
            out.push(b'\n');
            self.digest.add(row);
            self.rows += 1;
            self.bytes += (out.len() - start) as u64;
            return Ok(());
        }
        out.extend_from_slice(&self.suffix);
        out.extend_from_slice(self.rows.to_string().as_bytes());
        out.push(b'\t');
        if omitted.is_empty() {
            out.extend_from_slice(b"\\N");
        } else {
            self.scratch.clear();
            self.scratch.push('{');
            for (index, name) in omitted.iter().enumerate() {
                if index > 0 {
                    self.scratch.push(',');
                }
                quote_array_element(name, &mut self.scratch);
            }
            self.scratch.push('}');
            escape_into(&self.scratch, out);
        }
        out.extend_from_slice(if delete { b"\tt\n" } else { b"\t\\N\n" });
        self.digest.add(row);
        self.rows += 1;
        self.deletes += u64::from(delete);
        self.bytes += (out.len() - start) as u64;
        Ok(())
    }

    /// Encodes one non-null JSON value (its raw text) for `column`.
    fn encode_value(
        &mut self,
        column: &ColumnDef,
        raw: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let kind = JsonKind::of(raw);
        match (column.kind, kind) {
            (ColumnKind::Bool, JsonKind::True) => out.push(b't'),
            (ColumnKind::Bool, JsonKind::False) => out.push(b'f'),
            (ColumnKind::Bool, _) => {
                return Err(format!("expected a boolean for {}", column.data_type))
            }
            (ColumnKind::Int2, _) => {
                encode_int(raw, kind, i16::MIN as i64, i16::MAX as i64, column, out)?
            }
            (ColumnKind::Int4, _) => {
                encode_int(raw, kind, i32::MIN as i64, i32::MAX as i64, column, out)?
            }
            (ColumnKind::Int8, _) => encode_int(raw, kind, i64::MIN, i64::MAX, column, out)?,
            (ColumnKind::Float, JsonKind::Number) => out.extend_from_slice(raw.as_bytes()),
            (ColumnKind::Float, JsonKind::String) => escape_checked(&unquote(raw)?, out)?,
            (ColumnKind::Float, _) => {
                return Err(format!("expected a number for {}", column.data_type))
            }
            (ColumnKind::Text, JsonKind::String) => escape_checked(&unquote(raw)?, out)?,
            (ColumnKind::Text, _) => {
                return Err(format!("expected a string for {}", column.data_type))
            }
            (ColumnKind::Json, _) => {
                if has_nul_escape(raw) {
                    return Err("JSON containing \\u0000 cannot be stored by PostgreSQL".into());
                }
                escape_into(raw, out);
            }
            (ColumnKind::Array, JsonKind::Array) => {
                self.scratch.clear();
                array_literal(raw, &mut self.scratch)?;
                escape_into(&self.scratch, out);
            }
            (ColumnKind::Array, JsonKind::String) => escape_checked(&unquote(raw)?, out)?,
            (ColumnKind::Array, _) => {
                return Err(format!("expected an array for {}", column.data_type))
            }
            (ColumnKind::Other, JsonKind::String) => escape_checked(&unquote(raw)?, out)?,
            (ColumnKind::Other, JsonKind::Number | JsonKind::True | JsonKind::False) => {
                out.extend_from_slice(raw.as_bytes())
            }
            (ColumnKind::Other, _) => {
                return Err(format!(
                    "expected a string or number for {}",
                    column.data_type
                ))
            }
        }
        Ok(())
    }
}

/// SHA-256 of a batch's rows as sent, each row's JSON text followed by a
/// newline: what makes a batch id's content checkable on a retry (the same
/// rows give the same digest whether sent as JSON or NDJSON, if their text
/// is the same).
#[derive(Clone, Default)]
pub struct RowDigest(Sha256);

impl RowDigest {
    pub fn add(&mut self, row: &[u8]) {
        self.0.update(row);
        self.0.update(b"\n");
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// The JSON type of a raw value, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonKind {
    String,
    Number,
    True,
    False,
    Array,
    Object,
}

impl JsonKind {
    fn of(raw: &str) -> JsonKind {
        match raw.as_bytes().first() {
            Some(b'"') => JsonKind::String,
            Some(b't') => JsonKind::True,
            Some(b'f') => JsonKind::False,
            Some(b'[') => JsonKind::Array,
            Some(b'{') => JsonKind::Object,
            // Numbers, and `null` (callers look at it first).
            _ => JsonKind::Number,
        }
    }
}

/// The content of a raw JSON string: borrowed when it has no escapes.
fn unquote(raw: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    let inner = &raw[1..raw.len() - 1];
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw)
            .map(std::borrow::Cow::Owned)
            .map_err(|error| error.to_string())
    } else {
        Ok(std::borrow::Cow::Borrowed(inner))
    }
}

/// Reads one JSON object into per-column raw values.
struct RowSeed<'c, 'v, 'de> {
    columns: &'c [ColumnDef],
    values: &'v mut [Option<&'de RawValue>],
    /// Set to the first key that is not a column.
    unknown: &'v mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object of column → value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(index) = map.next_key_seed(ColumnSeed {
            columns: self.columns,
            unknown: &mut *self.unknown,
        })? {
            self.values[index] = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(())
    }
}

/// A key, resolved to its column index.
struct ColumnSeed<'c, 'v> {
    columns: &'c [ColumnDef],
    unknown: &'v mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for ColumnSeed<'_, '_> {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ColumnSeed<'_, '_> {
    type Value = usize;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a column name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<usize, E> {
        match self.columns.iter().position(|column| column.name == key) {
            Some(index) => Ok(index),
            // The slot after the columns'.
            None if key == OP_FIELD => Ok(self.columns.len()),
            None => {
                *self.unknown = Some(key.to_owned());
                Err(E::custom("unknown column"))
            }
        }
    }
}

fn reject(row: u64, column: &str, detail: &str) -> Error {
    Error::RowRejected {
        row,
        column: Some(column.to_owned()),
        detail: format!("column {column:?}: {detail}"),
    }
}

fn encode_int(
    raw: &str,
    kind: JsonKind,
    min: i64,
    max: i64,
    column: &ColumnDef,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let parsed = match kind {
        JsonKind::Number => raw.parse::<i64>().ok(),
        JsonKind::String => unquote(raw)?.trim().parse::<i64>().ok(),
        _ => None,
    };
    let out_of_range = kind == JsonKind::Number
        && parsed.is_none()
        && raw.bytes().all(|b| b.is_ascii_digit() || b == b'-');
    match parsed {
        Some(number) if (min..=max).contains(&number) => {
            out.extend_from_slice(number.to_string().as_bytes());
            Ok(())
        }
        Some(_) => Err(format!(
            "value {raw} is out of range for {}",
            column.data_type
        )),
        None if out_of_range => Err(format!(
            "value {raw} is out of range for {}",
            column.data_type
        )),
        None => Err(format!(
            "expected an integer for {}, got {raw}",
            column.data_type
        )),
    }
}

/// Escapes text for COPY's text format; refuses NUL, which PostgreSQL cannot store.
fn escape_checked(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    if text.contains('\0') {
        return Err("text contains a NUL character, which PostgreSQL cannot store".into());
    }
    escape_into(text, out);
    Ok(())
}

/// COPY text escaping: backslash, newline, carriage return, and tab.
pub fn escape_into(text: &str, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    let mut last = 0;
    for (index, byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&bytes[last..index]);
        out.extend_from_slice(escaped);
        last = index + 1;
    }
    out.extend_from_slice(&bytes[last..]);
}

/// Whether JSON text holds the escape `\u0000` (a NUL, which PostgreSQL's
/// `json`/`jsonb` refuse). An escaped backslash followed by `u0000` is
/// not one: escapes are read pairwise.
fn has_nul_escape(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' {
            if bytes[index + 1..].starts_with(b"u0000") {
                return true;
            }
            index += 2;
        } else {
            index += 1;
        }
    }
    false
}

/// A JSON array (its raw text) as a PostgreSQL array literal: `{"a","b",NULL}`,
/// nested for multi-dimensional arrays. Numbers are copied as sent, digit
/// for digit (never through a float), so `numeric[]` keeps every digit and
/// trailing zero.
fn array_literal(raw: &str, out: &mut String) -> Result<(), String> {
    match JsonKind::of(raw) {
        JsonKind::Array => {
            let items: Vec<&RawValue> =
                serde_json::from_str(raw).map_err(|error| error.to_string())?;
            out.push('{');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                array_literal(item.get(), out)?;
            }
            out.push('}');
        }
        JsonKind::True => out.push_str("true"),
        JsonKind::False => out.push_str("false"),
        JsonKind::String => {
            let text = unquote(raw)?;
            if text.contains('\0') {
                return Err("text contains a NUL character, which PostgreSQL cannot store".into());
            }
            quote_array_element(&text, out);
        }
        JsonKind::Number if raw == "null" => out.push_str("NULL"),
        JsonKind::Number => out.push_str(raw),
        JsonKind::Object => return Err("objects cannot be array elements".into()),
    }
    Ok(())
}

/// One double-quoted element of an array literal.
pub fn quote_array_element(text: &str, out: &mut String) {
    out.push('"');
    for ch in text.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
}

/// Turns a data error that PostgreSQL raised during `COPY` into a rejection
/// naming the row (COPY's line number) and column, when it is one.
pub fn copy_error_to_rejection(error: &sqlx::Error) -> Option<Error> {
    let database_error = error.as_database_error()?;
    let code = database_error.code()?;
    // Class 22: data exception; 23: integrity constraint violation.
    if !(code.starts_with("22") || code.starts_with("23")) {
        return None;
    }
    let pg = database_error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?;
    let context = pg.r#where().unwrap_or_default();
    // "COPY table, line 3, column n: \"abc\"" (column part optional)
    let line = context
        .split(", line ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse::<u64>().ok())?;
    let column = context
        .split(", column ")
        .nth(1)
        .map(|rest| rest.split(':').next().unwrap_or(rest).to_owned())
        .or_else(|| pg.column().map(str::to_owned));
    Some(Error::RowRejected {
        row: line,
        detail: match &column {
            Some(column) => format!("column {column:?}: {}", pg.message()),
            None => pg.message().to_owned(),
        },
        column,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn column(name: &str, kind: ColumnKind, nullable: bool) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            data_type: format!("{kind:?}"),
            kind,
            nullable,
            default_expr: None,
            builtin: true,
        }
    }

    #[test]
    fn escapes_copy_specials_and_appends_sinkgate_columns() {
        let columns = [
            column("w", ColumnKind::Text, false),
            column("n", ColumnKind::Int8, true),
        ];
        let mut encoder = CopyEncoder::new(&columns, &[], false, 7, "task\t0", 100);
        let mut out = Vec::new();
        let row = json!({"w": "a\tb\\c\nd"}).to_string();
        encoder.push(row.as_bytes(), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\tb\\\\c\\nd\t\\N\t7\ttask\\t0\t100\t0\t{\"n\"}\t\\N\n"
        );
    }

    #[test]
    fn a_delete_stages_its_key_and_the_flag() {
        let columns = [
            column("k", ColumnKind::Int8, false),
            column("v", ColumnKind::Text, true),
        ];
        let key = ["k".to_owned()];
        let mut encoder = CopyEncoder::new(&columns, &key, true, 2, "t", 5);
        let mut out = Vec::new();
        encoder
            .push(br#"{"_sinkgate_op": "delete", "k": 4}"#, &mut out)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "4\t\\N\t2\tt\t5\t0\t{\"v\"}\tt\n"
        );
        assert_eq!(encoder.deletes(), 1);
        let mut appends = CopyEncoder::new(&columns, &[], false, 2, "t", 5);
        let error = appends
            .push(br#"{"_sinkgate_op": "delete", "k": 4}"#, &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(error, Error::RowRejected { ref column, .. } if column.as_deref() == Some("_sinkgate_op"))
        );
    }

    #[test]
    fn rejects_with_row_and_column() {
        let columns = [column("n", ColumnKind::Int4, false)];
        let mut encoder = CopyEncoder::new(&columns, &[], false, 1, "t", 0);
        let mut out = Vec::new();
        encoder.push(br#"{"n": 1}"#, &mut out).unwrap();
        let error = encoder.push(br#"{"n": 3000000000}"#, &mut out).unwrap_err();
        assert!(
            matches!(error, Error::RowRejected { row: 2, ref column, .. } if column.as_deref() == Some("n"))
        );
        let error = encoder.push(br#"{"m": 1}"#, &mut out).unwrap_err();
        assert!(
            matches!(error, Error::RowRejected { ref column, .. } if column.as_deref() == Some("m"))
        );
        assert_eq!(encoder.rows(), 1);
    }

    #[test]
    fn arrays_become_literals() {
        let mut text = String::new();
        array_literal(&json!([["a\"b", null], ["c", "d"]]).to_string(), &mut text).unwrap();
        assert_eq!(text, r#"{{"a\"b",NULL},{"c","d"}}"#);
        text.clear();
        array_literal("[123456789012345678901234567890, 1.50, -0.0e1]", &mut text).unwrap();
        assert_eq!(text, "{123456789012345678901234567890,1.50,-0.0e1}");
    }

    #[test]
    fn only_a_real_nul_escape_is_refused_in_json() {
        assert!(has_nul_escape(r#"{"a": "\u0000"}"#));
        assert!(!has_nul_escape(r#"{"a": "\\u0000"}"#));
        assert!(has_nul_escape(r#"{"a": "\\\u0000"}"#));
    }
}
