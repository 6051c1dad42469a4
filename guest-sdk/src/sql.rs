//! SQL databases the host opens for the plugin (`wasmgate:plugin/sql`), with typed rows.
//!
//! ```no_run
//! use wasmgate_sdk::sql::{Connection, Value};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = Connection::open("main")?; // granted in `[worker.grants.APP] sql`
//! db.execute("create table if not exists notes (id integer primary key, body text)", &[])?;
//! db.execute("insert into notes (body) values ($1)", &["hello".into()])?;
//! for row in db.query("select id, body from notes", &[])?.iter() {
//!     let (id, body): (i64, String) = (row.get("id")?, row.get("body")?);
//! #   let _ = (id, body);
//! }
//! # Ok(()) }
//! ```
//!
//! Placeholders are positional: `$1`, `$2` … work in SQLite and PostgreSQL alike (SQLite
//! also takes `?`). The host pools the connections: opening is cheap, and a `Connection`
//! holds no server connection of its own, so keeping one in a `static` gains nothing.

use std::fmt;

use crate::bindings::wasmgate::plugin::sql as raw;
pub use crate::bindings::wasmgate::plugin::sql::{Error, Value};

/// A database the app's grant names.
pub struct Connection(raw::Connection);

impl Connection {
    /// Opens the database granted as `name`; any other name is `Error::AccessDenied`.
    pub fn open(name: &str) -> Result<Self, Error> {
        raw::Connection::open(name).map(Self)
    }

    /// Runs a statement that returns no rows; returns how many rows it changed.
    pub fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, Error> {
        self.0.execute(statement, params)
    }

    /// Runs a statement that returns rows.
    pub fn query(&self, statement: &str, params: &[Value]) -> Result<Rows, Error> {
        let set = self.0.query(statement, params)?;
        Ok(Rows {
            columns: set.columns,
            rows: set.rows,
        })
    }
}

impl Error {
    /// The case's name in the WIT: `access-denied`, `invalid-query` …
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NoSuchDatabase(_) => "no-such-database",
            Error::AccessDenied(_) => "access-denied",
            Error::InvalidQuery(_) => "invalid-query",
            Error::TooLarge(_) => "too-large",
            Error::Timeout(_) => "timeout",
            Error::Io(_) => "io",
        }
    }

    /// The host's explanation, naming the database.
    pub fn message(&self) -> &str {
        match self {
            Error::NoSuchDatabase(m)
            | Error::AccessDenied(m)
            | Error::InvalidQuery(m)
            | Error::TooLarge(m)
            | Error::Timeout(m)
            | Error::Io(m) => m,
        }
    }
}

/// The rows of a query and their column names.
#[derive(Debug, Clone)]
pub struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl Rows {
    /// The column names, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the query returned no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The first row, if any (a lookup by key).
    pub fn first(&self) -> Option<Row<'_>> {
        self.iter().next()
    }

    /// Every row, in order.
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(|values| Row {
            columns: &self.columns,
            values,
        })
    }
}

/// One row: values by column name or position.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

impl Row<'_> {
    /// The value of `column`, converted: `row.get::<String>("body")`.
    pub fn get<T: FromValue>(&self, column: &str) -> Result<T, RowError> {
        let index = self
            .columns
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| RowError::NoSuchColumn(column.to_owned()))?;
        self.get_at(index)
    }

    /// The value at `index` (from 0), converted.
    pub fn get_at<T: FromValue>(&self, index: usize) -> Result<T, RowError> {
        let value = self
            .values
            .get(index)
            .ok_or_else(|| RowError::NoSuchColumn(index.to_string()))?;
        T::from_value(value).ok_or_else(|| RowError::WrongType {
            column: self.columns.get(index).cloned().unwrap_or_default(),
            found: kind(value),
        })
    }

    /// The raw values, in column order.
    pub fn values(&self) -> &[Value] {
        self.values
    }
}

/// Why a row's value could not be read as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowError {
    /// The query has no such column.
    NoSuchColumn(String),
    /// The value is of another type (`found`: `null`, `integer`, `real`, `text` or `blob`).
    WrongType {
        /// The column.
        column: String,
        /// What the value is.
        found: &'static str,
    },
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowError::NoSuchColumn(c) => write!(f, "no column `{c}` in the result"),
            RowError::WrongType { column, found } => {
                write!(f, "column `{column}` holds {found}, not the type asked for")
            }
        }
    }
}

impl std::error::Error for RowError {}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Integer(_) => "integer",
        Value::Real(_) => "real",
        Value::Text(_) => "text",
        Value::Blob(_) => "blob",
    }
}

/// A Rust type a SQL value converts to; `Option<T>` reads NULL as `None`.
pub trait FromValue: Sized {
    /// The value as `Self`, or `None` if it is of another type.
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }
}

impl FromValue for f64 {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Real(f) => Some(*f),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Option<Self> {
        i64::from_value(value).map(|i| i != 0)
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Blob(b) => Some(b.clone()),
            Value::Text(t) => Some(t.clone().into_bytes()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            value => T::from_value(value).map(Some),
        }
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Integer(i)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Real(f)
    }
}

impl From<&str> for Value {
    fn from(t: &str) -> Self {
        Value::Text(t.to_owned())
    }
}

impl From<String> for Value {
    fn from(t: String) -> Self {
        Value::Text(t)
    }
}

impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Self {
        Value::Blob(b.to_vec())
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Blob(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_convert_by_name_and_type() {
        let rows = Rows {
            columns: vec!["k".into(), "n".into(), "gone".into()],
            rows: vec![vec![
                Value::Text("a".into()),
                Value::Integer(3),
                Value::Null,
            ]],
        };
        let row = rows.first().unwrap();
        assert_eq!(row.get::<String>("k"), Ok("a".into()));
        assert_eq!(row.get::<i64>("n"), Ok(3));
        assert_eq!(row.get::<f64>("n"), Ok(3.0));
        assert_eq!(row.get::<Option<String>>("gone"), Ok(None));
        assert_eq!(
            row.get::<String>("n"),
            Err(RowError::WrongType {
                column: "n".into(),
                found: "integer"
            })
        );
        assert_eq!(row.get::<i64>("x"), Err(RowError::NoSuchColumn("x".into())));
    }
}
