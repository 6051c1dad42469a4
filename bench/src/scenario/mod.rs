//! The scenarios of issue 8, and how each is run against wasmgate and the baseline.
//!
//! Every scenario is a function from a running server to the figures of one run; [`compare`]
//! starts a fresh wasmgate and a fresh baseline for each run (and, with [`Setup::floor`], the
//! baseline in its hand-off shape), alternating them so that noise from other work on the
//! machine spreads over all, and pairs the medians.

pub mod connect;
pub mod cost;
pub mod echo;
pub mod fanout;
pub mod idle;
pub mod reload;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};

use crate::baseline::{Shape, WsLib};
use crate::client::{Client, Proto};
use crate::stats::{Comparison, Figure};
use crate::target::{CpuTime, Layout, Listeners, Running, Server, cpu_time};

/// Longest a client waits for an answer before the run fails: the tool stops by itself
/// even when the server under test stops answering.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections opened at once: more would overflow the listen backlog (SYN retries add a
/// second to a connect) without making anything faster.
const CONNECTING: usize = 64;

/// What every scenario is run against.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// The client protocol.
    pub proto: Proto,
    /// wasmgate's process layout.
    pub layout: Layout,
    /// Client listeners (gateways, or baseline processes).
    pub listeners: Listeners,
    /// Runs per server; the median is reported.
    pub runs: usize,
    /// The baseline's WebSocket library.
    pub ws_lib: WsLib,
    /// Also measure the baseline in its hand-off shape (linked to a worker process with
    /// [`Layout::Split`]), against the plain one.
    pub floor: bool,
}

impl Setup {
    /// `ws single`, for scenario names.
    pub fn label(&self) -> String {
        let layout = match self.layout {
            Layout::Single => "single",
            Layout::Split => "split",
        };
        format!("{} {layout}", self.proto.scheme())
    }
}

/// Runs `measure` `setup.runs` times against each server and pairs the medians: wasmgate's
/// against the baseline's, then, with [`Setup::floor`], the hand-off baseline's against the
/// baseline's in rows named `<name>, hand-off baseline` (its figures in wasmgate's column).
pub async fn compare(
    name: &str,
    setup: &Setup,
    mut measure: impl AsyncFnMut(&Running, Server) -> anyhow::Result<Vec<Figure>>,
) -> anyhow::Result<Vec<Comparison>> {
    anyhow::ensure!(
        !setup.floor || setup.ws_lib == WsLib::Fastwebsockets,
        "--floor measures the fastwebsockets baseline only (echo, connect)"
    );
    let direct = Server::Baseline(setup.ws_lib, Shape::Direct);
    let hand_off = match setup.layout {
        Layout::Single => Shape::HandedOff,
        Layout::Split => Shape::Linked,
    };
    let handed_off = Server::Baseline(setup.ws_lib, hand_off);
    let mut servers = vec![Server::Wasmgate(setup.layout), direct];
    if setup.floor {
        servers.push(handed_off);
    }
    let mut figures_of: Vec<Vec<Vec<Figure>>> = vec![Vec::new(); servers.len()];
    for run in 1..=setup.runs {
        for (&server, series) in servers.iter().zip(&mut figures_of) {
            let running = Running::start(server, setup.proto, setup.listeners).await?;
            let figures = measure(&running, server).await;
            let figures = match figures {
                Ok(f) => f,
                Err(e) => {
                    let logs = running.logs();
                    running.stop().await;
                    return Err(e.context(format!("{name}: {} run {run}\n{logs}", server.name())));
                }
            };
            running.stop().await;
            let shown: Vec<String> = figures
                .iter()
                .map(|f| format!("{} {:.1}", f.metric, f.value))
                .collect();
            eprintln!("{name}: {} run {run}: {}", server.name(), shown.join(", "));
            series.push(figures);
        }
    }
    let mut rows = Comparison::pair(name, &figures_of[0], &figures_of[1]);
    if let Some(floor) = figures_of.get(2) {
        rows.extend(Comparison::pair(
            &handed_off_rows(name),
            floor,
            &figures_of[1],
        ));
    }
    Ok(rows)
}

/// The scenario name of the hand-off baseline's rows in the comparison named `name`.
pub fn handed_off_rows(name: &str) -> String {
    format!("{name}, hand-off baseline")
}

/// Opens `n` clients spread over `addrs`, from `source` if given.
pub async fn connect_all(
    addrs: &[SocketAddr],
    proto: Proto,
    n: usize,
    source: Option<IpAddr>,
) -> anyhow::Result<Vec<Client>> {
    stream::iter((0..n).map(|i| addrs[i % addrs.len()]))
        .map(|addr| async move {
            tokio::time::timeout(REPLY_TIMEOUT, Client::connect(addr, proto, source))
                .await
                .context("connect timed out")?
                .with_context(|| format!("connecting to {addr}"))
        })
        .buffer_unordered(CONNECTING)
        .try_collect()
        .await
}

/// The next message on `client`, within [`REPLY_TIMEOUT`].
pub async fn answer(client: &mut Client) -> anyhow::Result<Bytes> {
    tokio::time::timeout(REPLY_TIMEOUT, client.recv())
        .await
        .context("no answer within the reply timeout")?
        .context("the connection failed")
}

/// The measured part of a run: after a warm-up, for a fixed duration.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Where measuring starts.
    pub start: Instant,
    /// Where the run ends.
    pub end: Instant,
}

impl Window {
    /// A window that opens after `warmup` from now and lasts `duration`.
    pub fn after(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + duration,
        }
    }

    /// Whether `t` falls inside.
    pub fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }

    /// Its length in seconds.
    pub fn seconds(&self) -> f64 {
        (self.end - self.start).as_secs_f64()
    }

    /// Measures the CPU time `running`'s processes and this tool use inside the window, in a
    /// task of its own: the server's cost, which unlike throughput does not depend on how much
    /// CPU the load client and the rest of a shared machine leave it, and the client's, which
    /// shows whether the client or the server bounds a run.
    pub fn cpu_of(self, running: &Running) -> tokio::task::JoinHandle<anyhow::Result<Cpu>> {
        let server = running.cpu_sampler();
        let client = || cpu_time(std::process::id()).map(CpuTime::total);
        tokio::spawn(async move {
            tokio::time::sleep_until(self.start.into()).await;
            let before = Cpu {
                server: server()?,
                client: client()?,
            };
            tokio::time::sleep_until(self.end.into()).await;
            Ok(Cpu {
                server: server()? - before.server,
                client: client()? - before.client,
            })
        })
    }
}

/// CPU time spent inside a [`Window`].
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    /// By the server's processes.
    pub server: CpuTime,
    /// By this tool: the load client.
    pub client: Duration,
}

/// Server and client CPU microseconds per unit of work (message, delivery, connection) in a
/// window, as figures: the server's whole (`target` is its), its user and system parts, the
/// client's. The parts tell a server's own code from the socket work every server pays.
pub fn cpu_per(unit: &str, cpu: Cpu, count: u64, target: Option<&'static str>) -> [Figure; 4] {
    let micros = |d: Duration| d.as_secs_f64() * 1e6 / count.max(1) as f64;
    let mut server = Figure::new(server_cpu(unit), micros(cpu.server.total()));
    server.target = target;
    [
        server,
        Figure::new(
            format!("server user CPU µs/{unit}"),
            micros(cpu.server.user),
        ),
        Figure::new(
            format!("server system CPU µs/{unit}"),
            micros(cpu.server.system),
        ),
        Figure::new(format!("client CPU µs/{unit}"), micros(cpu.client)),
    ]
}

/// The metric of the servers' CPU microseconds per `unit` of work.
pub fn server_cpu(unit: &str) -> String {
    format!("server CPU µs/{unit}")
}

/// `prefix` followed by `payload` bytes of filler: a message whose payload has the size a
/// scenario asks for.
pub fn padded(prefix: &str, payload: usize) -> Vec<u8> {
    let mut message = prefix.as_bytes().to_vec();
    message.resize(prefix.len() + payload, b'x');
    message
}
