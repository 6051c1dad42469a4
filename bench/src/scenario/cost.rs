//! `cost`: what one data call costs a plugin, as a ratio to a plain `send-to-client` — a
//! `wasi:keyvalue` get (embedded store and Redis) and a one-row select (SQLite and
//! PostgreSQL), each timed inside the plugin by the reference plugin's `cost <op> <n>`.
//!
//! The figure is wall-clock time per call seen by the guest: the host call, the trip to the
//! backend and back, and the result copied into the guest. Client round trips, event
//! dispatch and the instance's setup are outside the timed loop.
//!
//! wasmgate runs twice per run, once granted the embedded backends and once the servers
//! (Redis, PostgreSQL: Debian's, started here on loopback as the end-to-end tests start them);
//! each server also measures `send-to-client`, and the two kinds alternate so that other load
//! on the machine falls on both. A server that cannot be had is reported as skipped, with why.

use std::fmt::Write as _;

use anyhow::{Context, bail, ensure};
use wasmgate_tests::postgres::Postgres;
use wasmgate_tests::redis::RedisServer;
use wasmgate_tests::tools::{self, Skip};

use super::answer;
use crate::client::{Client, Proto};
use crate::target::{APP, Running};

/// The parameters of a `cost` run.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    /// Calls per measurement (the plugin's `n`).
    pub calls: u32,
    /// Servers started per kind of backend; the median is reported.
    pub runs: usize,
}

/// One call measured: the plugin's op, and how the table names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Send,
    KvGet,
    SqlGet,
}

impl Call {
    /// The `<op>` of `cost <op> <n>`.
    fn op(self) -> &'static str {
        match self {
            Call::Send => "send",
            Call::KvGet => "kvget",
            Call::SqlGet => "sqlget",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Call::Send => "send-to-client",
            Call::KvGet => "kv get",
            Call::SqlGet => "sql select, 1 row",
        }
    }
}

/// The two kinds of wasmgate server a run starts, by the backends they are granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The embedded key-value store and SQLite.
    Embedded,
    /// Redis and PostgreSQL.
    Servers,
}

/// One row of the table: a call against a backend, with the nanoseconds per call measured
/// in each run, or why it could not be measured.
struct Row {
    call: Call,
    backend: &'static str,
    /// The kind of server granted the backend.
    on: Kind,
    samples: Result<Vec<f64>, String>,
}

/// The servers a second kind of wasmgate is granted, each one or why it is missing.
struct Servers {
    redis: Result<RedisServer, Skip>,
    postgres: Result<Postgres, Skip>,
}

impl Servers {
    async fn start() -> Self {
        let redis = match tools::redis_server() {
            Ok(binary) => RedisServer::start(binary).await,
            Err(skip) => Err(skip),
        };
        let postgres = tokio::task::spawn_blocking(Postgres::start)
            .await
            .unwrap_or_else(|e| Err(Skip::new(format!("starting PostgreSQL panicked: {e}"))));
        Self { redis, postgres }
    }

    /// The grants naming the servers there are; `None` if there is neither.
    fn grants(&self) -> Option<String> {
        let mut grants = format!("[worker.grants.{APP}]\n");
        if let Ok(redis) = &self.redis {
            let _ = writeln!(grants, "kv = \"{}\"", redis.url());
        }
        if let Ok(postgres) = &self.postgres {
            let _ = writeln!(grants, "sql = {{ main = \"{}\" }}", postgres.url());
        }
        (self.redis.is_ok() || self.postgres.is_ok()).then_some(grants)
    }
}

impl Cost {
    /// Runs every call against every backend and returns the table.
    pub async fn run(&self) -> anyhow::Result<String> {
        let embedded =
            format!("[worker.grants.{APP}]\nkv = \"embedded\"\nsql = {{ main = \"sqlite\" }}\n");
        let servers = Servers::start().await;
        let served = servers.grants();
        let mut send = Vec::new();
        let mut rows = vec![
            Row::new(Call::KvGet, "embedded", Kind::Embedded, Ok(())),
            Row::new(
                Call::KvGet,
                "redis",
                Kind::Servers,
                servers.redis.as_ref().map(drop),
            ),
            Row::new(Call::SqlGet, "sqlite", Kind::Embedded, Ok(())),
            Row::new(
                Call::SqlGet,
                "postgres",
                Kind::Servers,
                servers.postgres.as_ref().map(drop),
            ),
        ];
        for run in 1..=self.runs {
            for (kind, grants) in [
                (Kind::Embedded, Some(&embedded)),
                (Kind::Servers, served.as_ref()),
            ] {
                let Some(grants) = grants else { continue };
                let running = Running::granted(Proto::Ws, grants).await?;
                let measured = self.measure_all(&running, kind, &mut send, &mut rows).await;
                if let Err(e) = measured {
                    let logs = running.logs();
                    running.stop().await;
                    return Err(e.context(format!("cost: {kind:?} run {run}\n{logs}")));
                }
                running.stop().await;
            }
        }
        let send = Row {
            call: Call::Send,
            backend: "gateway link",
            on: Kind::Embedded,
            samples: Ok(send),
        };
        Ok(table(&send, &rows))
    }

    /// Measures, on one server of `kind`, `send-to-client` into `send` and every row that
    /// this kind of server serves into its row.
    async fn measure_all(
        &self,
        running: &Running,
        kind: Kind,
        send: &mut Vec<f64>,
        rows: &mut [Row],
    ) -> anyhow::Result<()> {
        let mut client = Client::connect(running.addrs[0], Proto::Ws, None).await?;
        send.push(self.measure(&mut client, Call::Send).await?);
        for row in rows {
            let Ok(samples) = &mut row.samples else {
                continue;
            };
            if row.on == kind {
                let ns = self.measure(&mut client, row.call).await;
                samples.push(ns.with_context(|| format!("{} {}", row.call.label(), row.backend))?);
            }
        }
        eprintln!("cost: {kind:?} server measured");
        Ok(())
    }

    /// Nanoseconds per call of `call`: the second of two `cost` commands, the first warming
    /// up the instance and the backend's connection.
    async fn measure(&self, client: &mut Client, call: Call) -> anyhow::Result<f64> {
        let message = format!("cost {} {}", call.op(), self.calls);
        let mut ns = 0.0;
        for _ in 0..2 {
            client.send(message.as_bytes()).await?;
            if call == Call::Send {
                for _ in 0..self.calls {
                    let sent = answer(client).await?;
                    ensure!(sent == ".", "send-to-client delivered {sent:?}");
                }
            }
            ns = per_call(&answer(client).await?, &message)?;
        }
        Ok(ns)
    }
}

impl Row {
    /// A row to measure, or skipped for `why` the backend is missing.
    fn new(call: Call, backend: &'static str, on: Kind, available: Result<(), &Skip>) -> Self {
        Self {
            call,
            backend,
            on,
            samples: available
                .map(|()| Vec::new())
                .map_err(|skip| skip.to_string()),
        }
    }
}

/// The `<ns per call>` of the reply `cost <op> <n> <ns>` to `asked` (`cost <op> <n>`).
fn per_call(reply: &[u8], asked: &str) -> anyhow::Result<f64> {
    let reply = std::str::from_utf8(reply).context("a reply that is not UTF-8")?;
    match reply.strip_prefix(asked).and_then(|r| r.strip_prefix(' ')) {
        Some(ns) => Ok(ns.parse()?),
        None => bail!("`{asked}` answered {reply:?}"),
    }
}

/// The median, least and greatest of `samples`; `None` if there are none.
fn spread(samples: &[f64]) -> Option<(f64, f64, f64)> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some((sorted[sorted.len() / 2], *sorted.first()?, *sorted.last()?))
}

/// The Markdown table: each row's median, the range of its runs, and the median's ratio to
/// `send`'s.
fn table(send: &Row, rows: &[Row]) -> String {
    let mut out = String::from(
        "| call | backend | ns/call | runs' range | ratio to send-to-client |\n\
         |---|---|---:|---:|---:|\n",
    );
    let base = send.samples.as_deref().ok().and_then(spread).map(|s| s.0);
    for row in std::iter::once(send).chain(rows) {
        let (ns, range, ratio) = match row.samples.as_deref().map(spread) {
            Ok(Some((median, least, most))) => (
                format!("{median:.0}"),
                format!("{least:.0}–{most:.0}"),
                base.map_or("—".into(), |b| format!("{:.2}×", median / b)),
            ),
            Ok(None) => ("not measured".into(), "—".into(), "—".into()),
            Err(why) => (format!("skipped: {why}"), "—".into(), "—".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {ns} | {range} | {ratio} |",
            row.call.label(),
            row.backend
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_give_nanoseconds_or_fail() {
        assert_eq!(
            per_call(b"cost kvget 1000 2345", "cost kvget 1000").unwrap(),
            2345.0
        );
        let error = per_call(b"error kv no-such-store", "cost kvget 1000").unwrap_err();
        assert!(error.to_string().contains("no-such-store"), "{error}");
        assert!(per_call(b"cost kvget 10 5", "cost kvget 1000").is_err());
    }

    #[test]
    fn rows_are_medians_set_against_send() {
        let send = Row {
            call: Call::Send,
            backend: "gateway link",
            on: Kind::Embedded,
            samples: Ok(vec![1000.0, 3000.0, 2000.0]),
        };
        let rows = [
            Row {
                call: Call::KvGet,
                backend: "embedded",
                on: Kind::Embedded,
                samples: Ok(vec![5000.0, 4000.0, 9000.0]),
            },
            Row {
                call: Call::SqlGet,
                backend: "postgres",
                on: Kind::Servers,
                samples: Err("no apt-get".into()),
            },
        ];
        let out = table(&send, &rows);
        assert!(
            out.contains("| send-to-client | gateway link | 2000 | 1000–3000 | 1.00× |"),
            "{out}"
        );
        assert!(
            out.contains("| kv get | embedded | 5000 | 4000–9000 | 2.50× |"),
            "{out}"
        );
        assert!(
            out.contains("| sql select, 1 row | postgres | skipped: no apt-get | — | — |"),
            "{out}"
        );
    }
}
