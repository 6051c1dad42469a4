//! `wasmgate:plugin/sql`: the databases an app may open, granted by name in its
//! `[worker.grants.APP] sql` table.
//!
//! Every granted name resolves to one backend shared by all of the app's instances and
//! versions ([`Databases`]): an SQLite file under `<data>/<app>/` ([`sqlite`]) or a
//! PostgreSQL pool ([`postgres`]). The linker always carries the interface, so a plugin that
//! imports it loads without a grant; the refusal is an `access-denied` value at call time.
//!
//! Calls are async and cancel-safe: when a callback passes `process_timeout`, the runtime
//! drops its future, and with it the call, which interrupts the SQLite statement or cancels
//! the PostgreSQL query and hands the connection back to its pool. Each call is counted in
//! `data_calls{interface="sql"}`, a dropped one as `timeout`.

pub mod postgres;
pub mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{HasData, Resource, ResourceTable};

use super::bindings::wasmgate::plugin::sql::{self as wit, Error, RowSet, Value};
use crate::config::{SqlBackend, SqlLimits};
use crate::metrics;

/// Every backend the apps of this worker host have opened, by app, name and grant; kept for
/// the life of the worker host so pools survive instance replacements and reloads.
pub struct Databases {
    data: PathBuf,
    limits: SqlLimits,
    open: Mutex<HashMap<DatabaseKey, Arc<Database>>>,
}

/// An app, a database name it was granted, and the grant's backend: a changed grant gets a
/// backend of its own.
type DatabaseKey = (Arc<str>, String, SqlBackend);

impl Databases {
    /// No database open yet; embedded ones will live under `data`.
    pub fn new(data: PathBuf, limits: SqlLimits) -> Self {
        Self {
            data,
            limits,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The backend of `app`'s database `name`, set up (not yet connected) on first use.
    fn get(&self, app: &Arc<str>, name: &str, backend: &SqlBackend) -> Arc<Database> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let key = (app.clone(), name.to_owned(), backend.clone());
        open.entry(key)
            .or_insert_with(|| {
                Arc::new(match backend {
                    SqlBackend::Sqlite => {
                        Database::Sqlite(sqlite::Pool::new(&self.data, app, name, self.limits))
                    }
                    SqlBackend::Postgres(url) => {
                        Database::Postgres(postgres::Pool::new(url, name, self.limits))
                    }
                })
            })
            .clone()
    }
}

/// One granted database.
enum Database {
    Sqlite(sqlite::Pool),
    Postgres(postgres::Pool),
}

impl Database {
    async fn run(&self, statement: Statement) -> Result<Answer, Error> {
        match self {
            Database::Sqlite(pool) => pool.run(statement).await,
            Database::Postgres(pool) => pool.run(statement).await,
        }
    }
}

/// What a plugin asked a database to run.
pub struct Statement {
    /// The SQL text.
    pub sql: String,
    /// Positional parameters.
    pub params: Vec<Value>,
    /// `query` (rows wanted) or `execute` (a count of changed rows wanted).
    pub rows: bool,
}

/// What a database answered.
pub enum Answer {
    /// Rows changed by `execute`.
    Changed(u64),
    /// The rows of `query`.
    Rows(RowSet),
}

/// An app's view of the capability: what it was granted and where the backends are.
pub struct SqlGrant {
    app: Arc<str>,
    granted: BTreeMap<String, SqlBackend>,
    databases: Arc<Databases>,
}

impl SqlGrant {
    /// `app`'s grant `granted`, served from `databases`.
    pub fn new(
        app: Arc<str>,
        granted: BTreeMap<String, SqlBackend>,
        databases: Arc<Databases>,
    ) -> Self {
        Self {
            app,
            granted,
            databases,
        }
    }
}

/// An open database as the guest holds it: what a `connection` resource stands for in the
/// instance's table. The bindings keep their own marker type for the resource (naming this
/// one would make them import this module, which imports them); [`handle`], [`entry_ref`]
/// and [`entry_owned`] convert, and the table checks the entry's type on every access.
struct SqlConnection {
    name: String,
    database: Arc<Database>,
}

fn handle(entry: Resource<SqlConnection>) -> Resource<wit::Connection> {
    Resource::new_own(entry.rep())
}

fn entry_ref(resource: &Resource<wit::Connection>) -> Resource<SqlConnection> {
    Resource::new_borrow(resource.rep())
}

fn entry_owned(resource: Resource<wit::Connection>) -> Resource<SqlConnection> {
    Resource::new_own(resource.rep())
}

/// The sql imports' view of an instance's state: its grant and its resource table.
pub struct SqlCtx<'a> {
    grant: &'a mut SqlGrant,
    table: &'a mut ResourceTable,
}

impl<'a> SqlCtx<'a> {
    /// The view over `grant` and the instance's `table`.
    pub fn new(grant: &'a mut SqlGrant, table: &'a mut ResourceTable) -> Self {
        Self { grant, table }
    }
}

/// Marks [`SqlCtx`] as what the sql imports are linked with.
pub struct HasSql;

impl HasData for HasSql {
    type Data<'a> = SqlCtx<'a>;
}

/// Links `wasmgate:plugin/sql` into `linker`, reaching each store's state through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> SqlCtx<'_>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSql>(linker, get)
}

/// Counts one call when it ends; a call dropped before it ended (its callback's deadline)
/// counts as `timeout`.
struct Metered<'a> {
    app: &'a str,
    started: Instant,
    outcome: Option<&'static str>,
}

impl<'a> Metered<'a> {
    fn start(app: &'a str) -> Self {
        Self {
            app,
            started: Instant::now(),
            outcome: None,
        }
    }

    fn finish<T>(mut self, result: Result<T, Error>) -> Result<T, Error> {
        self.outcome = Some(match &result {
            Ok(_) => "ok",
            Err(Error::AccessDenied(_)) => "denied",
            Err(Error::TooLarge(why)) => {
                tracing::warn!(plugin = self.app, "sql call refused: {why}");
                "too_large"
            }
            Err(Error::Timeout(_)) => "timeout",
            Err(_) => "error",
        });
        result
    }
}

impl Drop for Metered<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or("timeout");
        metrics::data_call(self.app, "sql", outcome, self.started.elapsed());
    }
}

impl wit::Host for SqlCtx<'_> {}

impl wit::HostConnection for SqlCtx<'_> {
    async fn open(&mut self, name: String) -> Result<Resource<wit::Connection>, Error> {
        let grant = &*self.grant;
        let metered = Metered::start(&grant.app);
        let opened = match grant.granted.get(&name) {
            None => {
                tracing::warn!(plugin = &*grant.app, database = name, "sql open denied");
                Err(Error::AccessDenied(format!(
                    "database `{name}` is not granted to app `{app}`: add it to \
                     `[worker.grants.{app}] sql`, e.g. `sql = {{ {name} = \"sqlite\" }}`",
                    app = grant.app
                )))
            }
            Some(backend) => {
                let database = grant.databases.get(&grant.app, &name, backend);
                self.table
                    .push(SqlConnection { name, database })
                    .map(handle)
                    .map_err(|e| Error::Io(format!("cannot open another connection: {e}")))
            }
        };
        metered.finish(opened)
    }

    async fn execute(
        &mut self,
        connection: Resource<wit::Connection>,
        statement: String,
        params: Vec<Value>,
    ) -> Result<u64, Error> {
        let statement = Statement {
            sql: statement,
            params,
            rows: false,
        };
        match self.run(&connection, statement).await? {
            Answer::Changed(n) => Ok(n),
            Answer::Rows(_) => Err(Error::Io("the database answered rows to execute".into())),
        }
    }

    async fn query(
        &mut self,
        connection: Resource<wit::Connection>,
        statement: String,
        params: Vec<Value>,
    ) -> Result<RowSet, Error> {
        let statement = Statement {
            sql: statement,
            params,
            rows: true,
        };
        match self.run(&connection, statement).await? {
            Answer::Rows(rows) => Ok(rows),
            Answer::Changed(_) => Err(Error::Io("the database answered no rows to query".into())),
        }
    }

    async fn drop(&mut self, connection: Resource<wit::Connection>) -> wasmtime::Result<()> {
        self.table.delete(entry_owned(connection))?;
        Ok(())
    }
}

impl SqlCtx<'_> {
    async fn run(
        &mut self,
        connection: &Resource<wit::Connection>,
        statement: Statement,
    ) -> Result<Answer, Error> {
        let app = self.grant.app.clone();
        let metered = Metered::start(&app);
        let found = self
            .table
            .get(&entry_ref(connection))
            .map(|c| (c.name.clone(), c.database.clone()))
            .map_err(|e| Error::Io(format!("not an open connection: {e}")));
        let limits = self.grant.databases.limits;
        // Nothing of `self` is held across the await: the store's state is not `Sync`.
        let plugin = app.clone();
        let result = async move {
            let (name, database) = found?;
            check_params(&statement.params, limits)?;
            database.run(statement).await.inspect_err(|e| {
                tracing::debug!(plugin = &*plugin, database = name, "sql call failed: {e:?}");
            })
        }
        .await;
        metered.finish(result)
    }
}

/// Refuses a parameter past `max_value_size` before it reaches a database.
fn check_params(params: &[Value], limits: SqlLimits) -> Result<(), Error> {
    let max = limits.max_value_size.as_u64() as usize;
    for (i, value) in params.iter().enumerate() {
        if value_size(value) > max {
            return Err(Error::TooLarge(format!(
                "parameter {} is larger than `[worker.sql] max_value_size` ({max} bytes)",
                i + 1
            )));
        }
    }
    Ok(())
}

/// The bytes a value takes in a result, for the size bounds.
fn value_size(value: &Value) -> usize {
    match value {
        Value::Null => 1,
        Value::Integer(_) | Value::Real(_) => 8,
        Value::Text(text) => text.len(),
        Value::Blob(blob) => blob.len(),
    }
}

/// Collects a result within the bounds: `max_rows` rows, `max_value_size` per value and
/// `max_result_size` in all.
pub struct Collector {
    limits: SqlLimits,
    bytes: usize,
    set: RowSet,
}

impl Collector {
    /// An empty result with these `columns`.
    pub fn new(columns: Vec<String>, limits: SqlLimits) -> Self {
        let bytes = columns.iter().map(String::len).sum();
        Self {
            limits,
            bytes,
            set: RowSet {
                columns,
                rows: Vec::new(),
            },
        }
    }

    /// Adds a row, or says which bound it breaks.
    pub fn push(&mut self, row: Vec<Value>) -> Result<(), Error> {
        if self.set.rows.len() >= self.limits.max_rows {
            return Err(Error::TooLarge(format!(
                "the query returned more than `[worker.sql] max_rows` ({}) rows",
                self.limits.max_rows
            )));
        }
        let max_value = self.limits.max_value_size.as_u64() as usize;
        for value in &row {
            let size = value_size(value);
            if size > max_value {
                return Err(Error::TooLarge(format!(
                    "a value is larger than `[worker.sql] max_value_size` ({max_value} bytes)"
                )));
            }
            self.bytes += size;
        }
        let max_result = self.limits.max_result_size.as_u64() as usize;
        if self.bytes > max_result {
            return Err(Error::TooLarge(format!(
                "the result is larger than `[worker.sql] max_result_size` ({max_result} bytes)"
            )));
        }
        self.set.rows.push(row);
        Ok(())
    }

    /// The result.
    pub fn finish(self) -> RowSet {
        self.set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytesize::ByteSize;

    fn limits() -> SqlLimits {
        SqlLimits {
            max_rows: 2,
            max_value_size: ByteSize::b(8),
            max_result_size: ByteSize::b(16),
            ..SqlLimits::default()
        }
    }

    #[test]
    fn results_are_bounded_in_rows_values_and_bytes() {
        let mut rows = Collector::new(vec!["a".into()], limits());
        rows.push(vec![Value::Integer(1)]).unwrap();
        rows.push(vec![Value::Null]).unwrap();
        let third = rows.push(vec![Value::Null]);
        assert!(matches!(third, Err(Error::TooLarge(why)) if why.contains("max_rows")));

        let mut values = Collector::new(vec!["a".into()], limits());
        let big = values.push(vec![Value::Text("123456789".into())]);
        assert!(matches!(big, Err(Error::TooLarge(why)) if why.contains("max_value_size")));

        let mut total = Collector::new(vec!["a".into()], limits());
        total.push(vec![Value::Integer(1)]).unwrap();
        let over = total.push(vec![Value::Blob(vec![0; 8])]);
        assert!(matches!(over, Err(Error::TooLarge(why)) if why.contains("max_result_size")));
    }

    #[test]
    fn parameters_are_bounded() {
        assert!(check_params(&[Value::Text("12345678".into())], limits()).is_ok());
        let big = check_params(&[Value::Null, Value::Blob(vec![0; 9])], limits());
        assert!(matches!(big, Err(Error::TooLarge(why)) if why.contains("parameter 2")));
    }
}
