//! What the sandbox adds to the design's floor: the reference plugin's callbacks called
//! through wasmgate's own runtime in this process, with gateways that take each command and
//! do nothing, timed by the calling thread's CPU clock. With `--floor`, the hand-off
//! baseline's CPU plus this is the least wasmgate's design costs: the hops it needs, made
//! natively, and the plugin calls, made as wasmgate makes them. What wasmgate spends beyond
//! it is its own (links, queues, acknowledgements, the gateway's bookkeeping). The plain
//! baseline's CPU plus this is the least any server costs that makes these calls, even in
//! the client's own task with nothing between: no design with a sandbox goes under it.
//!
//! The calls are the ones the scenario's events make: `on-message` with an `echo` (one
//! `send-to-client` host call) per message; per connection, `on-websocket-connect`,
//! `on-connect`, that `on-message` and `on-close`. The client's record is built once, not per
//! event as the worker host builds it, so the figure leans low: a floor, not an estimate.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wasmgate::ops::{Command, CommandFuture, Gateways, Query, QueryFuture, Unreachable};
use wasmgate::worker::WebsocketRequest;
use wasmgate::worker::runtime::{Call, Limits, Runtime};

use crate::scenario::{handed_off_rows, server_cpu};
use crate::stats::Comparison;

/// Units called before the clock starts: the instance starts, and its code and the
/// allocator's pools are warm.
const WARMUP: usize = 1_000;

/// Units called between two looks at the clock.
const BATCH: usize = 100;

/// Measurements, of which the median is given.
const MEASUREMENTS: usize = 3;

/// The plugin calls one unit of a scenario makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calls {
    /// An echo message: `on-message`.
    Message,
    /// A WebSocket connection's life in `connect`: `on-websocket-connect`, `on-connect`, one
    /// `on-message`, `on-close`.
    Connection,
}

impl Calls {
    /// The scenario's metric this cost adds to.
    fn metric(self) -> String {
        server_cpu(match self {
            Calls::Message => "msg",
            Calls::Connection => "conn",
        })
    }
}

/// Takes every command, does nothing with it.
struct Discarding;

impl Gateways for Discarding {
    fn command(&self, _command: Command) -> CommandFuture {
        Box::pin(std::future::ready(Ok(())))
    }

    fn query(&self, _query: Query) -> QueryFuture {
        Box::pin(std::future::ready(Err(Unreachable::NoGateway)))
    }
}

/// CPU µs per unit of `calls`, on a blocking thread with a runtime of its own (the caller's
/// workers stay free): the median of [`MEASUREMENTS`], which take about `duration` of CPU
/// together.
pub async fn cost(calls: Calls, duration: Duration) -> anyhow::Result<f64> {
    let each = duration.as_secs_f64() / MEASUREMENTS as f64;
    tokio::task::spawn_blocking(move || measure(calls, each))
        .await
        .context("the sandbox measurement panicked")?
}

fn measure(calls: Calls, each: f64) -> anyhow::Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _entered = rt.enter();
    let runtime = Runtime::new(Limits::default())?;
    let code = runtime
        .load(
            "commands",
            &std::fs::read(wasmgate_tests::plugins::COMMANDS)?,
        )
        .context("loading the reference plugin")?;
    let mut instance = runtime.instance(
        code,
        Arc::new(Discarding),
        "bench".into(),
        Default::default(),
    );
    let client = wasmgate_tests::records::client(&[]);
    let request = WebsocketRequest {
        path: "/".into(),
        query: String::new(),
        headers: vec![
            ("host".into(), "127.0.0.1:7373".into()),
            ("upgrade".into(), "websocket".into()),
            ("connection".into(), "Upgrade".into()),
            (
                "sec-websocket-key".into(),
                "dGhlIHNhbXBsZSBub25jZQ==".into(),
            ),
            ("sec-websocket-version".into(), "13".into()),
        ],
    };
    let mut run = async |n: usize| -> anyhow::Result<()> {
        for _ in 0..n {
            if calls == Calls::Connection {
                instance
                    .call(Call::WebsocketConnect(&client, &request))
                    .await?;
                instance.call(Call::Connect(&client)).await?;
            }
            instance.call(Call::Message(&client, b"echo x")).await?;
            if calls == Calls::Connection {
                instance.call(Call::Close(&client)).await?;
            }
        }
        Ok(())
    };
    rt.block_on(run(WARMUP))?;
    let mut costs = Vec::with_capacity(MEASUREMENTS);
    for _ in 0..MEASUREMENTS {
        let (start, mut units) = (thread_cpu(), 0);
        while thread_cpu() - start < each {
            rt.block_on(run(BATCH))?;
            units += BATCH;
        }
        costs.push((thread_cpu() - start) * 1e6 / units as f64);
    }
    costs.sort_by(f64::total_cmp);
    Ok(costs[MEASUREMENTS / 2])
}

/// This thread's CPU time in seconds.
fn thread_cpu() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill; the clock exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

/// With the rows of a `--floor` comparison named `name`: the sandbox's cost per unit, and the
/// hand-off baseline's CPU plus it, and the plain baseline's plus it, each against the plain
/// baseline's (`… + sandboxed calls`).
pub async fn floor_rows(
    name: &str,
    rows: &[Comparison],
    calls: Calls,
    duration: Duration,
) -> anyhow::Result<Vec<Comparison>> {
    let handed_off = handed_off_rows(name);
    let metric = calls.metric();
    let Some(floor) = rows
        .iter()
        .find(|r| r.scenario == handed_off && r.metric == metric)
    else {
        return Ok(Vec::new());
    };
    let cost = cost(calls, duration).await?;
    eprintln!("{name}: sandboxed calls: {cost:.2} CPU µs per unit ({calls:?})");
    let mut added = vec![
        Comparison {
            scenario: format!("{name}, sandboxed calls alone"),
            metric: metric.clone(),
            wasmgate: cost,
            baseline: None,
            target: None,
        },
        Comparison {
            scenario: format!("{handed_off} + sandboxed calls"),
            metric: metric.clone(),
            wasmgate: floor.wasmgate + cost,
            baseline: floor.baseline,
            target: floor.target,
        },
    ];
    if let Some(plain) = floor.baseline {
        added.push(Comparison {
            scenario: format!("{name}, baseline + sandboxed calls"),
            metric,
            wasmgate: plain + cost,
            baseline: Some(plain),
            target: floor.target,
        });
    }
    Ok(added)
}
