//! JSON rows → PostgreSQL `COPY` text, checked against the sink's columns.
//!
//! Checks that need only the row and the column list (unknown column, null in
//! a NOT NULL column without default, JSON type that cannot be the column's
//! type, integer range, NUL characters) happen here, so the error names the
//! row and column precisely. Everything else (a malformed uuid or date, a too
//! long varchar) is left to PostgreSQL's own parser during `COPY`, whose error
//! names the line, which is the row: see [`copy_error_to_rejection`].

use serde_json::{Map, Value};

use super::schema::{ColumnDef, ColumnKind};
use crate::error::Error;

/// Encodes rows of one batch into COPY text, one line per row.
pub struct CopyEncoder<'a> {
    columns: &'a [ColumnDef],
    /// Pre-escaped `\t<tag>\t<task>\t` suffix shared by every row.
    suffix: Vec<u8>,
    /// Sequence of the first row; row `i` (0-based) gets `seq_base + i`.
    seq_base: i64,
    rows: u64,
    bytes: u64,
    scratch: String,
}

impl<'a> CopyEncoder<'a> {
    pub fn new(columns: &'a [ColumnDef], tag: i64, task_id: &str, seq_base: i64) -> Self {
        let mut suffix = Vec::new();
        suffix.push(b'\t');
        suffix.extend_from_slice(tag.to_string().as_bytes());
        suffix.push(b'\t');
        escape_into(task_id, &mut suffix);
        suffix.push(b'\t');
        CopyEncoder {
            columns,
            suffix,
            seq_base,
            rows: 0,
            bytes: 0,
            scratch: String::new(),
        }
    }

    /// Rows encoded so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes of COPY text produced so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends one row to `out`, or explains why the row does not fit.
    pub fn push(&mut self, row: &Map<String, Value>, out: &mut Vec<u8>) -> Result<(), Error> {
        let row_number = self.rows + 1;
        if let Some(unknown) = row
            .keys()
            .find(|key| !self.columns.iter().any(|column| &column.name == *key))
        {
            return Err(reject(
                row_number,
                unknown,
                "no such writable column in the sink table",
            ));
        }
        let start = out.len();
        for (index, column) in self.columns.iter().enumerate() {
            if index > 0 {
                out.push(b'\t');
            }
            match row.get(&column.name) {
                None | Some(Value::Null) => {
                    if !column.nullable && column.default_expr.is_none() {
                        out.truncate(start);
                        return Err(reject(
                            row_number,
                            &column.name,
                            "null or missing value in a NOT NULL column without default",
                        ));
                    }
                    out.extend_from_slice(b"\\N");
                }
                Some(value) => {
                    if let Err(detail) = self.encode_value(column, value, out) {
                        out.truncate(start);
                        return Err(reject(row_number, &column.name, &detail));
                    }
                }
            }
        }
        out.extend_from_slice(&self.suffix);
        out.extend_from_slice((self.seq_base + self.rows as i64).to_string().as_bytes());
        out.push(b'\n');
        self.rows += 1;
        self.bytes += (out.len() - start) as u64;
        Ok(())
    }

    fn encode_value(
        &mut self,
        column: &ColumnDef,
        value: &Value,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        match column.kind {
            ColumnKind::Bool => match value {
                Value::Bool(true) => out.push(b't'),
                Value::Bool(false) => out.push(b'f'),
                _ => return Err(format!("expected a boolean for {}", column.data_type)),
            },
            ColumnKind::Int2 => encode_int(value, i16::MIN as i64, i16::MAX as i64, column, out)?,
            ColumnKind::Int4 => encode_int(value, i32::MIN as i64, i32::MAX as i64, column, out)?,
            ColumnKind::Int8 => encode_int(value, i64::MIN, i64::MAX, column, out)?,
            ColumnKind::Float => match value {
                Value::Number(number) => out.extend_from_slice(number.to_string().as_bytes()),
                Value::String(text) => escape_checked(text, out)?,
                _ => return Err(format!("expected a number for {}", column.data_type)),
            },
            ColumnKind::Text => match value {
                Value::String(text) => escape_checked(text, out)?,
                _ => return Err(format!("expected a string for {}", column.data_type)),
            },
            ColumnKind::Json => {
                self.scratch.clear();
                self.scratch = value.to_string();
                if self.scratch.contains("\\u0000") {
                    return Err("JSON containing \\u0000 cannot be stored by PostgreSQL".into());
                }
                escape_into(&self.scratch, out);
            }
            ColumnKind::Array => match value {
                Value::Array(_) => {
                    self.scratch.clear();
                    array_literal(value, &mut self.scratch)?;
                    escape_into(&self.scratch, out);
                }
                Value::String(text) => escape_checked(text, out)?,
                _ => return Err(format!("expected an array for {}", column.data_type)),
            },
            ColumnKind::Other => match value {
                Value::String(text) => escape_checked(text, out)?,
                Value::Number(number) => out.extend_from_slice(number.to_string().as_bytes()),
                Value::Bool(flag) => out.extend_from_slice(if *flag { b"true" } else { b"false" }),
                _ => {
                    return Err(format!(
                        "expected a string or number for {}",
                        column.data_type
                    ))
                }
            },
        }
        Ok(())
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
    value: &Value,
    min: i64,
    max: i64,
    column: &ColumnDef,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let parsed = match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse::<i64>().ok(),
        _ => None,
    };
    match parsed {
        Some(number) if (min..=max).contains(&number) => {
            out.extend_from_slice(number.to_string().as_bytes());
            Ok(())
        }
        Some(_) => Err(format!(
            "value {value} is out of range for {}",
            column.data_type
        )),
        None => Err(format!(
            "expected an integer for {}, got {value}",
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

/// A JSON array as a PostgreSQL array literal: `{"a","b",NULL}`, nested for
/// multi-dimensional arrays.
fn array_literal(value: &Value, out: &mut String) -> Result<(), String> {
    match value {
        Value::Array(items) => {
            out.push('{');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                array_literal(item, out)?;
            }
            out.push('}');
        }
        Value::Null => out.push_str("NULL"),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Number(number) => out.push_str(&number.to_string()),
        Value::String(text) => {
            if text.contains('\0') {
                return Err("text contains a NUL character, which PostgreSQL cannot store".into());
            }
            out.push('"');
            for ch in text.chars() {
                if ch == '"' || ch == '\\' {
                    out.push('\\');
                }
                out.push(ch);
            }
            out.push('"');
        }
        Value::Object(_) => return Err("objects cannot be array elements".into()),
    }
    Ok(())
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
        }
    }

    #[test]
    fn escapes_copy_specials_and_appends_sinkgate_columns() {
        let columns = [
            column("w", ColumnKind::Text, false),
            column("n", ColumnKind::Int8, true),
        ];
        let mut encoder = CopyEncoder::new(&columns, 7, "task\t0", 100);
        let mut out = Vec::new();
        let row = json!({"w": "a\tb\\c\nd"});
        encoder.push(row.as_object().unwrap(), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\tb\\\\c\\nd\t\\N\t7\ttask\\t0\t100\n"
        );
    }

    #[test]
    fn rejects_with_row_and_column() {
        let columns = [column("n", ColumnKind::Int4, false)];
        let mut encoder = CopyEncoder::new(&columns, 1, "t", 0);
        let mut out = Vec::new();
        encoder
            .push(json!({"n": 1}).as_object().unwrap(), &mut out)
            .unwrap();
        let error = encoder
            .push(
                json!({"n": 3_000_000_000_i64}).as_object().unwrap(),
                &mut out,
            )
            .unwrap_err();
        assert!(
            matches!(error, Error::RowRejected { row: 2, ref column, .. } if column.as_deref() == Some("n"))
        );
        let error = encoder
            .push(json!({"m": 1}).as_object().unwrap(), &mut out)
            .unwrap_err();
        assert!(
            matches!(error, Error::RowRejected { ref column, .. } if column.as_deref() == Some("m"))
        );
        assert_eq!(encoder.rows(), 1);
    }

    #[test]
    fn arrays_become_literals() {
        let mut text = String::new();
        array_literal(&json!([["a\"b", null], ["c", "d"]]), &mut text).unwrap();
        assert_eq!(text, r#"{{"a\"b",NULL},{"c","d"}}"#);
    }
}
