//! PostgreSQL by URL: a deadpool pool of tokio-postgres clients per app and database, at
//! most `max_connections` of them, connected on demand within `connect_timeout`.
//!
//! A call dropped at its callback's deadline sends PostgreSQL a cancel request for its query
//! (the client's cancel token, on a connection of its own); the pooled client went back to
//! the pool when the call was dropped and serves the next call once the server has answered
//! the cancelled one. A server that is down or refuses the login fails the call with `io`
//! (or `timeout`), never the instance; clients whose connection closed are replaced.

use std::str::FromStr;

use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{CancelToken, NoTls, Row};

use super::{Answer, Collector, Error, Statement, Value};
use crate::config::SqlLimits;

/// One app's pool for one database.
pub struct Pool {
    name: String,
    limits: SqlLimits,
    /// `None` when the URL did not parse; every call says so.
    pool: Result<deadpool_postgres::Pool, String>,
}

impl Pool {
    /// The database `name` at `url`; nothing connects before the first call.
    pub fn new(url: &str, name: &str, limits: SqlLimits) -> Self {
        let pool = tokio_postgres::Config::from_str(url)
            .map_err(|e| format!("its URL is invalid: {e}"))
            .and_then(|mut config| {
                config.connect_timeout(limits.connect_timeout);
                let manager = ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                };
                let manager = Manager::from_config(config, NoTls, manager);
                deadpool_postgres::Pool::builder(manager)
                    .max_size(limits.max_connections)
                    .create_timeout(Some(limits.connect_timeout))
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| format!("its pool cannot be built: {e}"))
            });
        Self {
            name: name.to_owned(),
            limits,
            pool,
        }
    }

    /// Runs `statement` on a pooled client.
    pub async fn run(&self, statement: Statement) -> Result<Answer, Error> {
        let name = &self.name;
        let pool = self
            .pool
            .as_ref()
            .map_err(|why| Error::NoSuchDatabase(format!("database `{name}`: {why}")))?;
        let client = pool.get().await.map_err(|e| match e {
            PoolError::Timeout(_) => Error::Timeout(format!(
                "database `{name}`: no connection within the timeout"
            )),
            e => Error::Io(format!("database `{name}` is unreachable: {}", chain(&e))),
        })?;
        let fail = |e: tokio_postgres::Error| error(&e, name);
        let prepared = client.prepare_cached(&statement.sql).await.map_err(fail)?;
        let params: Vec<Param<'_>> = statement.params.iter().map(Param).collect();
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let cancel = CancelOnDrop(Some(client.cancel_token()));
        // Only a call dropped mid-query cancels: an answer, even an error, disarms.
        let answer = async {
            if statement.rows {
                let rows = client.query(&prepared, &params).await.map_err(fail)?;
                let columns = prepared.columns().iter().map(|c| c.name().to_owned());
                let mut collected = Collector::new(columns.collect(), self.limits);
                for row in &rows {
                    collected.push(values(row, name)?)?;
                }
                Ok(Answer::Rows(collected.finish()))
            } else {
                let changed = client.execute(&prepared, &params).await.map_err(fail)?;
                Ok(Answer::Changed(changed))
            }
        }
        .await;
        cancel.disarm();
        answer
    }
}

/// Cancels the query in flight unless disarmed.
struct CancelOnDrop(Option<CancelToken>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(token) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = token.cancel_query(NoTls).await {
                    tracing::warn!("cancelling a PostgreSQL query failed: {e}");
                }
            });
        }
    }
}

/// A parameter, converted to the type PostgreSQL inferred for its placeholder.
#[derive(Debug)]
struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self.0, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Integer(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Integer(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Integer(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Integer(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Value::Integer(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Integer(i), &Type::FLOAT4) => (*i as f32).to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Blob(b), _) => b.as_slice().to_sql(ty, out),
            (Value::Text(t), _) => t.as_str().to_sql(ty, out),
            (Value::Integer(_) | Value::Real(_), _) => {
                Err(format!("a number cannot be sent as {ty}: cast the placeholder").into())
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A row's values; a column of a type with no WIT counterpart must be cast in the query.
fn values(row: &Row, name: &str) -> Result<Vec<Value>, Error> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let get = |e: tokio_postgres::Error| error(&e, name);
        let ty = column.type_();
        let value = match *ty {
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)
                .map_err(get)?
                .map(|v| Value::Integer(v.into())),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)
                .map_err(get)?
                .map(|v| Value::Integer(v.into())),
            Type::INT8 => row
                .try_get::<_, Option<i64>>(i)
                .map_err(get)?
                .map(Value::Integer),
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)
                .map_err(get)?
                .map(|v| Value::Integer(v.into())),
            Type::FLOAT4 => row
                .try_get::<_, Option<f32>>(i)
                .map_err(get)?
                .map(|v| Value::Real(v.into())),
            Type::FLOAT8 => row
                .try_get::<_, Option<f64>>(i)
                .map_err(get)?
                .map(Value::Real),
            Type::BYTEA => row
                .try_get::<_, Option<Vec<u8>>>(i)
                .map_err(get)?
                .map(Value::Blob),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => row
                .try_get::<_, Option<String>>(i)
                .map_err(get)?
                .map(Value::Text),
            _ => {
                return Err(Error::InvalidQuery(format!(
                    "database `{name}`: column `{}` has type {ty}, which has no SQL value: \
                     cast it in the query (`::text`, `::int8`, `::float8`)",
                    column.name()
                )));
            }
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(values)
}

/// Says in the WIT's words why PostgreSQL failed.
fn error(e: &tokio_postgres::Error, name: &str) -> Error {
    let message = format!("database `{name}`: {}", chain(e));
    match e.as_db_error().map(|db| db.code().code()) {
        // query_canceled: our own cancel, or the server's statement_timeout.
        Some("57014") => Error::Timeout(message),
        // program_limit_exceeded
        Some(code) if code.starts_with("54") => Error::TooLarge(message),
        // invalid_catalog_name: the database in the URL does not exist.
        Some("3D000") => Error::NoSuchDatabase(message),
        // connection_exception, insufficient_resources, operator_intervention, system_error
        Some(code) if ["08", "53", "57", "58"].iter().any(|c| code.starts_with(c)) => {
            Error::Io(message)
        }
        Some(_) => Error::InvalidQuery(message),
        None if e.is_closed() => Error::Io(message),
        // A parameter that does not convert, a wrong parameter count, a closed link.
        None => Error::InvalidQuery(message),
    }
}

/// An error and its causes on one line (tokio-postgres puts the useful part in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
