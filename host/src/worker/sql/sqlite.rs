//! Embedded SQLite: `<data>/<app>/<name>.sqlite`, created (directory 0700, file 0600) on
//! first use, in WAL mode so readers do not wait for a writer.
//!
//! rusqlite blocks, so statements run on tokio's blocking threads, but never more at once
//! than the pool has connections (`max_connections` per app and database): a call first
//! takes one of the pool's permits, and the permit travels with the blocking work, so a
//! cancelled call keeps its thread counted until the statement has really stopped. Dropping a
//! call interrupts its statement (`sqlite3_interrupt`); the connection then returns to the
//! pool.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{ErrorCode, InterruptHandle, OpenFlags};
use tokio::sync::Semaphore;

use super::{Answer, Collector, Error, Statement, Value};
use crate::config::SqlLimits;

/// How long a writer waits for another connection's write lock before `timeout`; the
/// callback's own deadline usually comes first.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The connections of one app's database, opened as calls need them.
pub struct Pool {
    dir: PathBuf,
    file: PathBuf,
    name: String,
    limits: SqlLimits,
    idle: Arc<Mutex<Vec<rusqlite::Connection>>>,
    permits: Arc<Semaphore>,
}

impl Pool {
    /// The database `name` of `app`, under the data directory `data`.
    pub fn new(data: &Path, app: &str, name: &str, limits: SqlLimits) -> Self {
        Self {
            file: file(data, app, name),
            dir: data.join(app),
            name: name.to_owned(),
            limits,
            idle: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(Semaphore::new(limits.max_connections)),
        }
    }

    /// Runs `statement` on an idle connection (or a new one), off the async workers.
    pub async fn run(&self, statement: Statement) -> Result<Answer, Error> {
        // Waiting here is cancel-safe: nothing is held yet.
        let permit = self.permits.clone().acquire_owned().await;
        let permit = permit.map_err(|_| Error::Io("the database is closed".into()))?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let connection = match idle {
            Some(connection) => connection,
            None => {
                let (dir, file) = (self.dir.clone(), self.file.clone());
                let name = self.name.clone();
                let opened = tokio::task::spawn_blocking(move || open(&dir, &file, &name));
                opened
                    .await
                    .map_err(|e| Error::Io(format!("opening `{}` failed: {e}", self.name)))??
            }
        };
        let interrupt = InterruptOnDrop(Some(connection.get_interrupt_handle()));
        let (idle, limits, name) = (self.idle.clone(), self.limits, self.name.clone());
        let work = tokio::task::spawn_blocking(move || {
            let answer = execute(&connection, statement, limits, &name);
            idle.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(connection);
            drop(permit);
            answer
        });
        let answer = work
            .await
            .map_err(|e| Error::Io(format!("the statement's thread failed: {e}")))?;
        interrupt.disarm();
        answer
    }
}

/// Interrupts the connection's running statement unless disarmed: a call dropped at its
/// callback's deadline must not leave a thread running its statement.
struct InterruptOnDrop(Option<InterruptHandle>);

impl InterruptOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.interrupt();
        }
    }
}

fn open(dir: &PathBuf, file: &PathBuf, name: &str) -> Result<rusqlite::Connection, Error> {
    let missing =
        |e: std::io::Error| Error::NoSuchDatabase(format!("cannot create database `{name}`: {e}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(missing)?;
    // Create the file private before SQLite opens it with the process umask.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)
        .map_err(missing)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = rusqlite::Connection::open_with_flags(file, flags)
        .map_err(|e| Error::NoSuchDatabase(format!("cannot open database `{name}`: {e}")))?;
    let setup = connection
        .busy_timeout(BUSY_TIMEOUT)
        .and_then(|()| connection.pragma_update(None, "journal_mode", "WAL"));
    setup.map_err(|e| Error::Io(format!("cannot set up database `{name}`: {e}")))?;
    Ok(connection)
}

fn execute(
    connection: &rusqlite::Connection,
    statement: Statement,
    limits: SqlLimits,
    name: &str,
) -> Result<Answer, Error> {
    let fail = |e: rusqlite::Error| error(e, name);
    let mut prepared = connection.prepare_cached(&statement.sql).map_err(fail)?;
    let params = rusqlite::params_from_iter(statement.params.iter().map(Param));
    if !statement.rows {
        let changed = prepared.execute(params).map_err(fail)?;
        return Ok(Answer::Changed(changed as u64));
    }
    let columns: Vec<String> = prepared
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let width = columns.len();
    let mut collected = Collector::new(columns, limits);
    let mut rows = prepared.query(params).map_err(fail)?;
    while let Some(row) = rows.next().map_err(fail)? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(value(row.get_ref(i).map_err(fail)?));
        }
        collected.push(values)?;
    }
    Ok(Answer::Rows(collected.finish()))
}

/// A parameter as rusqlite binds it.
struct Param<'a>(&'a Value);

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(text) => ValueRef::Text(text.as_bytes()),
            Value::Blob(blob) => ValueRef::Blob(blob),
        }))
    }
}

fn value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        // SQLite does not enforce UTF-8 in text columns; invalid bytes are replaced.
        ValueRef::Text(text) => Value::Text(String::from_utf8_lossy(text).into_owned()),
        ValueRef::Blob(blob) => Value::Blob(blob.to_vec()),
    }
}

/// Says in the WIT's words why SQLite failed.
fn error(e: rusqlite::Error, name: &str) -> Error {
    let message = format!("database `{name}`: {e}");
    match &e {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::OperationInterrupted
            | ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked => Error::Timeout(message),
            ErrorCode::TooBig => Error::TooLarge(message),
            ErrorCode::CannotOpen | ErrorCode::NotADatabase => Error::NoSuchDatabase(message),
            ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::ReadOnly
            | ErrorCode::DatabaseCorrupt
            | ErrorCode::OutOfMemory
            | ErrorCode::PermissionDenied => Error::Io(message),
            _ => Error::InvalidQuery(message),
        },
        _ => Error::InvalidQuery(message),
    }
}

/// The file of `app`'s SQLite database `name` under the data directory `data`.
pub fn file(data: &Path, app: &str, name: &str) -> PathBuf {
    data.join(app).join(format!("{name}.sqlite"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(sql: &str, params: Vec<Value>, rows: bool) -> Statement {
        Statement {
            sql: sql.into(),
            params,
            rows,
        }
    }

    #[tokio::test]
    async fn stores_typed_values_and_creates_private_files() {
        let dir = std::env::temp_dir().join(format!("wasmgate-sqlite-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pool = Pool::new(&dir, "app", "main", SqlLimits::default());
        let create = "create table t (i integer, r real, s text, b blob, n)";
        assert!(matches!(
            pool.run(statement(create, vec![], false)).await,
            Ok(Answer::Changed(0))
        ));
        let row = vec![
            Value::Integer(-7),
            Value::Real(1.5),
            Value::Text("hé".into()),
            Value::Blob(vec![0, 255]),
            Value::Null,
        ];
        let insert = "insert into t values (?, ?, ?, ?, ?)";
        assert!(matches!(
            pool.run(statement(insert, row.clone(), false)).await,
            Ok(Answer::Changed(1))
        ));
        let Ok(Answer::Rows(set)) = pool.run(statement("select * from t", vec![], true)).await
        else {
            panic!("no rows");
        };
        assert_eq!(set.columns, ["i", "r", "s", "b", "n"]);
        // The WIT values derive no `PartialEq` (the key-value resources in the same bindings
        // cannot): compared as printed.
        assert_eq!(format!("{:?}", set.rows), format!("{:?}", [row]));
        let bad = pool.run(statement("selec 1", vec![], true)).await;
        assert!(matches!(bad, Err(Error::InvalidQuery(m)) if m.contains("main")));
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.join("app")), 0o700);
        assert_eq!(mode(dir.join("app/main.sqlite")), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_dropped_call_interrupts_its_statement_and_frees_the_connection() {
        let dir = std::env::temp_dir().join(format!("wasmgate-sqlite-cut-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let limits = SqlLimits {
            max_connections: 1,
            ..SqlLimits::default()
        };
        let pool = Pool::new(&dir, "app", "main", limits);
        let endless = "with recursive c(x) as (select 1 union all select x + 1 from c) \
                       select count(*) from c";
        let slow = pool.run(statement(endless, vec![], true));
        let cut = tokio::time::timeout(Duration::from_millis(200), slow).await;
        assert!(cut.is_err(), "the endless query finished?");
        // One connection: the next call gets it only once the statement was interrupted.
        let next = pool.run(statement("select 1 as one", vec![], true));
        let next = tokio::time::timeout(Duration::from_secs(5), next).await;
        let Ok(Ok(Answer::Rows(set))) = next else {
            panic!("the connection stayed busy");
        };
        assert_eq!(
            format!("{:?}", set.rows),
            format!("{:?}", [[Value::Integer(1)]])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
