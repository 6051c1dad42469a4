//! Each room's history: every room message, stored in the SQL database the app is granted as
//! [`DATABASE`] (`[worker.grants.chat] sql = { history = "sqlite" }`), so that someone joining
//! a room sees what was said before, also after a restart of the server.
//!
//! The table is bounded: a room keeps its last [`SHOWN`] messages (what a joiner is sent, so
//! nothing is kept that nobody can see), and the whole table its newest [`KEPT`] messages, so
//! that opening rooms without end cannot grow it either. Both are pruned on every insert,
//! through indexes.
//!
//! The statements are portable between SQLite and PostgreSQL: no `rowid`, no serial columns.
//! A room's messages are numbered by `seq`, taken as one more than the room's highest in the
//! same statement that inserts, so the order holds across instances and worker restarts.

use serde::Serialize;
use wasmgate_sdk::sql::{self, Connection, Value};

/// The name the app's grant gives the history database.
pub const DATABASE: &str = "history";

/// Messages sent to someone joining a room, and kept per room.
pub const SHOWN: i64 = 50;

/// Messages kept over all rooms.
pub const KEPT: i64 = 10_000;

/// One stored room message, as a joiner is sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Said {
    /// The nickname of whoever said it, at the time (nicknames are not accounts).
    pub name: String,
    /// What was said.
    pub text: String,
    /// When, in milliseconds since the Unix epoch.
    pub time: i64,
}

const SCHEMA: [&str; 2] = [
    "create table if not exists chat_history (\
       room text not null, seq bigint not null, name text not null, \
       body text not null, at bigint not null, primary key (room, seq))",
    // The global prune finds the oldest messages through this.
    "create index if not exists chat_history_at on chat_history (at)",
];

/// Opens the database, creating the table on first use (cheap afterwards).
fn open() -> Result<Connection, sql::Error> {
    let db = Connection::open(DATABASE)?;
    for statement in SCHEMA {
        db.execute(statement, &[])?;
    }
    Ok(db)
}

/// Stores a room message and prunes the table to its bounds.
pub fn record(room: &str, said: &Said) -> Result<(), sql::Error> {
    let db = open()?;
    db.execute(
        "insert into chat_history (room, seq, name, body, at) \
         select $1, coalesce(max(seq), 0) + 1, $2, $3, $4 from chat_history where room = $1",
        &[
            room.into(),
            said.name.as_str().into(),
            said.text.as_str().into(),
            said.time.into(),
        ],
    )?;
    db.execute(
        "delete from chat_history where room = $1 \
         and seq <= (select max(seq) from chat_history where room = $1) - $2",
        &[room.into(), SHOWN.into()],
    )?;
    db.execute(
        "delete from chat_history where at < \
         (select at from chat_history order by at desc limit 1 offset $1)",
        &[Value::Integer(KEPT - 1)],
    )?;
    Ok(())
}

/// The last [`SHOWN`] messages of `room`, oldest first.
pub fn recent(room: &str) -> Result<Vec<Said>, sql::Error> {
    let rows = open()?.query(
        "select name, body, at from chat_history where room = $1 order by seq desc limit $2",
        &[room.into(), SHOWN.into()],
    )?;
    let mut said = rows
        .iter()
        .map(|row| {
            Ok(Said {
                name: row.get("name")?,
                text: row.get("body")?,
                time: row.get("at")?,
            })
        })
        .collect::<Result<Vec<_>, sql::RowError>>()
        .map_err(|e| sql::Error::Io(format!("a history row does not read: {e}")))?;
    said.reverse();
    Ok(said)
}
