//! `wasmgate-bench`: load scenarios that measure wasmgate against a native baseline server in
//! the same run, and print each figure with its ratio to the baseline (see BENCHMARKS.md).
//!
//! # Layout
//! - [`client`]: the load client's connections (WebSocket or text lines), one per simulated
//!   user; [`driver`]: the event loops that drive many of them per thread.
//! - [`baseline`]: the native baseline server: the reference protocol, no wasm, no hops; and,
//!   for `--floor`, its hand-off shapes, which make the hops of wasmgate's design and nothing
//!   else.
//! - [`sandbox`]: for `--floor`, the plugin calls a scenario's events make, timed in this
//!   process through wasmgate's runtime: the hand-off baseline plus them is the design's floor.
//! - [`target`]: starts the servers under test as child processes.
//! - [`scenario`]: `echo`, `fanout`, `connect`, `idle`, `reload`, and the loop that runs
//!   each against both servers; `cost`, which sets data calls against `send-to-client`
//!   inside wasmgate alone.
//! - [`stats`]: histograms, figures, medians, the comparison table; [`chart`]: the SVG.
//!
//! This one binary is also the server processes it measures: started under the name
//! `wasmgate` it is wasmgate's own command line (the same library code the `wasmgate`
//! binary runs), and `baseline` / `idle-clients` are its helper commands. So the tool needs
//! nothing but itself and the reference plugins.
//!
//! Everything stays on 127.0.0.0/8, and every run is bounded in time.

mod baseline;
mod chart;
mod client;
mod driver;
mod sandbox;
mod scenario;
mod stats;
mod target;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use baseline::{Shape, WsLib};
use client::Proto;
use scenario::connect::Connect;
use scenario::cost::Cost;
use scenario::echo::Echo;
use scenario::fanout::{Fanout, Spread};
use scenario::idle::Idle;
use scenario::reload::Reload;
use scenario::{Setup, compare};
use stats::Comparison;
use target::{Engine, Layout, Listeners, Running, Server};

#[derive(Parser)]
#[command(
    name = "wasmgate-bench",
    about = "Measures wasmgate against a native baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What every scenario command takes.
#[derive(Args, Debug, Clone, Copy)]
struct Common {
    /// The client protocol.
    #[arg(long, value_enum, default_value = "ws")]
    proto: Proto,
    /// wasmgate's roles in one process (`single`) or one process each (`split`).
    #[arg(long, value_enum, default_value = "single")]
    layout: Layout,
    /// Runs per server; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Unmeasured seconds before.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// The WebSocket library of the baseline; the default is the cheapest one that serves
    /// the scenario: fastwebsockets for `echo`, `connect`, `reload` and `sweep`,
    /// tokio-tungstenite for `fanout` and `idle` (see `WsLib::cheapest`).
    #[arg(long, value_enum)]
    baseline_ws: Option<WsLib>,
    /// Also measures the baseline handing each command to a worker task and back (the
    /// least wasmgate's design costs natively; with `--layout split`, to a worker process
    /// over a TCP link), reported against the plain baseline in rows of its own.
    /// fastwebsockets only: `echo`, `connect`.
    #[arg(long)]
    floor: bool,
    /// Event-loop threads of the load client in `echo`, `fanout` and `connect` (see
    /// `driver.rs`); the default is one per core, so that no single core caps the client.
    #[arg(long)]
    client_threads: Option<usize>,
}

impl Common {
    /// The setup of a scenario whose baseline needs to deliver what clients send each
    /// other (`delivers`), or only to answer.
    fn setup(&self, listeners: Listeners, delivers: bool) -> Setup {
        Setup {
            proto: self.proto,
            layout: self.layout,
            listeners,
            runs: self.runs,
            ws_lib: self.baseline_ws.unwrap_or(WsLib::cheapest(delivers)),
            floor: self.floor,
        }
    }

    /// The load client's event loops.
    fn client_threads(&self) -> usize {
        self.client_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }

    /// A `fanout` with these timings.
    fn fanout(&self, members: usize, window: usize, payload: usize, spread: Spread) -> Fanout {
        Fanout {
            members,
            window,
            payload,
            spread,
            warmup: self.warmup(),
            duration: self.duration(),
            threads: self.client_threads(),
        }
    }
}

/// The cluster a `fanout` run measures: several gateway processes and one worker host.
#[derive(Args, Debug, Clone, Copy)]
struct ClusterArgs {
    /// Gateway processes (each with `/metrics`); more than 1 makes it a cluster run.
    #[arg(long, default_value_t = 1)]
    gateways: usize,
    /// What carries commands to the gateways; `nats` makes it a cluster run, with a local
    /// `nats-server` (skipped, said why, when there is none).
    #[arg(long, value_enum, default_value = "mesh")]
    engine: Engine,
    /// Members on every gateway, or all on the first.
    #[arg(long, value_enum, default_value = "all")]
    spread: Spread,
}

impl ClusterArgs {
    fn is_cluster(&self) -> bool {
        self.gateways > 1 || self.engine == Engine::Nats
    }
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop `echo` round trips → msgs/s and latency.
    Echo {
        #[command(flatten)]
        common: Common,
        /// Clients.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Payload bytes.
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
    /// One publisher, M group members → deliveries/s and delivery latency; with
    /// `--gateways` or `--engine nats`, a cluster run (no baseline) that also reports the
    /// commands each gateway received.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Group members.
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        /// Broadcasts in flight at most.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Payload bytes (at least 27).
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
    /// Connect, handshake, one echo, close, in a loop → connections/s.
    Connect {
        #[command(flatten)]
        common: Common,
        /// Connections opened at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Idle connections → server RSS per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Connections in total.
        #[arg(long, default_value_t = 19_000)]
        connections: usize,
        /// Server processes (gateways, or baseline processes) sharing them.
        #[arg(long, visible_alias = "gateways", default_value_t = 1)]
        listeners: usize,
        /// All server processes on one port (`SO_REUSEPORT`, `reuse_port = true`) instead
        /// of one port each; the kernel spreads the connections over them.
        #[arg(long)]
        reuse_port: bool,
        /// Most connections per helper client process.
        #[arg(long, default_value_t = 15_000)]
        per_process: usize,
    },
    /// Hot reload under echo load → time to the new version's first answer, lost messages.
    Reload {
        #[command(flatten)]
        common: Common,
        /// Clients.
        #[arg(long, default_value_t = 50)]
        clients: usize,
    },
    /// `echo` at several client counts → the table and the SVG chart.
    Sweep {
        #[command(flatten)]
        common: Common,
        /// Client counts.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
        clients: Vec<usize>,
        /// Where to write the chart.
        #[arg(long, default_value = "bench/echo-sweep.svg")]
        svg: PathBuf,
    },
    /// Per-call cost of kv get and a one-row select in a plugin, as ratios to send-to-client.
    Cost {
        /// Calls per measurement, timed inside the plugin (at most 10000).
        #[arg(long, default_value_t = 1000)]
        calls: u32,
        /// Servers started per kind of backend; the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// The whole suite of BENCHMARKS.md in one run.
    All {
        /// Runs per server and scenario.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Measured seconds per run.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Connections of the large idle run (6 gateway processes on one port); 0 skips it.
        #[arg(long, default_value_t = 100_000)]
        idle_total: usize,
        /// Where to write the chart.
        #[arg(long, default_value = "bench/echo-sweep.svg")]
        svg: PathBuf,
    },
    /// Serves the native baseline (used by the scenarios).
    #[command(hide = true)]
    Baseline {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, value_enum)]
        proto: Proto,
        #[arg(long, value_enum, default_value = "tungstenite")]
        ws_lib: WsLib,
        #[arg(long, value_enum, default_value = "direct")]
        shape: Shape,
        /// The worker process of `--shape linked`.
        #[arg(long)]
        worker: Option<SocketAddr>,
        /// Shares the port with other processes (`SO_REUSEPORT`).
        #[arg(long)]
        reuse_port: bool,
    },
    /// Serves the linked baseline's commands (used by `--floor` with `--layout split`).
    #[command(hide = true)]
    BaselineWorker {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Holds idle connections (used by `idle`).
    #[command(hide = true)]
    IdleClients {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, value_enum)]
        proto: Proto,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        source: Ipv4Addr,
    },
}

fn main() -> ExitCode {
    let invoked_as = std::env::args_os().next().map(PathBuf::from);
    if invoked_as.is_some_and(|p| p.file_name().is_some_and(|n| n == target::WASMGATE)) {
        return wasmgate::cli::main();
    }
    let cli = Cli::parse();
    let done = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli.command)));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let rows = match command {
        Command::Baseline {
            listen,
            proto,
            ws_lib,
            shape,
            worker,
            reuse_port,
        } => {
            let listener = baseline::listen(listen, reuse_port)?;
            return Ok(baseline::serve(listener, proto, ws_lib, shape, worker).await?);
        }
        Command::BaselineWorker { listen } => {
            let listener = baseline::listen(listen, false)?;
            return Ok(baseline::serve_worker(listener).await?);
        }
        Command::IdleClients {
            addr,
            proto,
            count,
            source,
        } => return scenario::idle::hold(addr, proto, count, source).await,
        Command::Cost { calls, runs } => {
            eprintln!("machine: {}", machine());
            print!("{}", Cost { calls, runs }.run().await?);
            return Ok(());
        }
        Command::Echo {
            common,
            clients,
            payload,
        } => echo(&common, clients, payload).await?,
        Command::Fanout {
            common,
            cluster,
            members,
            window,
            payload,
        } if cluster.is_cluster() => {
            fanout_cluster(&common, cluster, members, window, payload).await?
        }
        Command::Fanout {
            common,
            cluster,
            members,
            window,
            payload,
        } => {
            let spread = cluster.spread;
            fanout(&common, members, window, payload, spread).await?
        }
        Command::Connect {
            common,
            concurrency,
        } => connect(&common, concurrency).await?,
        Command::Idle {
            common,
            connections,
            listeners,
            reuse_port,
            per_process,
        } => {
            let listeners = Listeners {
                count: listeners,
                reuse_port,
            };
            idle(&common, connections, listeners, per_process).await?
        }
        Command::Reload { common, clients } => reload(&common, clients).await?,
        Command::Sweep {
            common,
            clients,
            svg,
        } => sweep(&common, &clients, &svg).await?,
        Command::All {
            runs,
            duration,
            idle_total,
            svg,
        } => all(runs, duration, idle_total, &svg).await?,
    };
    print!("{}", stats::table(&rows));
    Ok(())
}

async fn echo(common: &Common, clients: usize, payload: usize) -> anyhow::Result<Vec<Comparison>> {
    let setup = common.setup(Listeners::separate(1), false);
    let params = Echo {
        clients,
        payload,
        warmup: common.warmup(),
        duration: common.duration(),
        threads: common.client_threads(),
    };
    let name = format!("echo {} {clients} clients", setup.label());
    let rows = compare(&name, &setup, async |running, _| {
        params.run(running, setup.proto, setup.layout).await
    })
    .await?;
    with_floor(common, &setup, &name, rows, sandbox::Calls::Message).await
}

/// `rows` of a comparison named `name`, and with `--floor` the design's floor for the
/// scenario's `calls` ([`sandbox`]).
async fn with_floor(
    common: &Common,
    setup: &Setup,
    name: &str,
    mut rows: Vec<Comparison>,
    calls: sandbox::Calls,
) -> anyhow::Result<Vec<Comparison>> {
    if setup.floor {
        let floor = sandbox::floor_rows(name, &rows, calls, common.duration()).await?;
        rows.extend(floor);
    }
    Ok(rows)
}

async fn fanout(
    common: &Common,
    members: usize,
    window: usize,
    payload: usize,
    spread: Spread,
) -> anyhow::Result<Vec<Comparison>> {
    let setup = common.setup(Listeners::separate(1), true);
    let params = common.fanout(members, window, payload, spread);
    let name = format!("fanout {} {members} members", setup.label());
    compare(&name, &setup, async |running, _| {
        params.run(running, setup.proto).await
    })
    .await
}

/// `fanout` against a cluster of `cluster.gateways` gateway processes linked by
/// `cluster.engine`: wasmgate alone (a baseline has no cluster to compare with), the
/// engines compared by running this once per engine.
async fn fanout_cluster(
    common: &Common,
    cluster: ClusterArgs,
    members: usize,
    window: usize,
    payload: usize,
) -> anyhow::Result<Vec<Comparison>> {
    let ClusterArgs {
        gateways,
        engine,
        spread,
    } = cluster;
    anyhow::ensure!(gateways > 0, "--gateways must be at least 1");
    if engine == Engine::Nats && target::nats_server().is_none() {
        eprintln!(
            "fanout --engine nats skipped: no nats-server on PATH or in /usr/sbin \
             (Debian: apt-get install nats-server)"
        );
        return Ok(Vec::new());
    }
    let params = common.fanout(members, window, payload, spread);
    let engine_name = match engine {
        Engine::Mesh => "mesh",
        Engine::Nats => "nats",
    };
    let spread_name = match spread {
        Spread::All => "spread",
        Spread::One => "on gw0",
    };
    let name = format!(
        "fanout {} {gateways} gw {engine_name} {members} members {spread_name}",
        common.proto.scheme()
    );
    let mut runs = Vec::new();
    for run in 1..=common.runs {
        let running = start_cluster(common.proto, gateways, engine).await?;
        let figures = match params.run(&running, common.proto).await {
            Ok(f) => f,
            Err(e) => {
                let logs = running.logs();
                running.stop().await;
                return Err(e.context(format!("{name}: run {run}\n{logs}")));
            }
        };
        running.stop().await;
        let shown: Vec<String> = figures
            .iter()
            .map(|f| format!("{} {:.1}", f.metric, f.value))
            .collect();
        eprintln!("{name}: run {run}: {}", shown.join(", "));
        runs.push(figures);
    }
    let mut rows = Comparison::pair(&name, &runs, &[]);
    // The targets are ratios to the baseline, which a cluster run has none of.
    for row in &mut rows {
        row.target = None;
    }
    Ok(rows)
}

async fn connect(common: &Common, concurrency: usize) -> anyhow::Result<Vec<Comparison>> {
    let setup = common.setup(Listeners::separate(1), false);
    let params = Connect {
        concurrency,
        warmup: common.warmup(),
        duration: common.duration(),
        threads: common.client_threads(),
    };
    let name = format!("connect {} {concurrency} at once", setup.label());
    let rows = compare(&name, &setup, async |running, _| {
        params.run(running, setup.proto).await
    })
    .await?;
    with_floor(common, &setup, &name, rows, sandbox::Calls::Connection).await
}

async fn idle(
    common: &Common,
    connections: usize,
    listeners: Listeners,
    per_process: usize,
) -> anyhow::Result<Vec<Comparison>> {
    let setup = common.setup(listeners, true);
    let params = Idle {
        connections,
        per_process,
    };
    let ports = if listeners.reuse_port {
        " on one port"
    } else {
        ""
    };
    let name = format!(
        "idle {} {connections} conns / {} procs{ports}",
        setup.label(),
        listeners.count
    );
    compare(&name, &setup, async |running, server| {
        // Separate baseline processes share nothing, so a send-to-all reaches only the
        // clients of the process the sender landed on: the broadcast is measured for
        // wasmgate, and for the baseline only when it is one process.
        let broadcast = matches!(server, Server::Wasmgate(_)) || listeners.count == 1;
        params.run(&name, running, setup.proto, broadcast).await
    })
    .await
}

async fn reload(common: &Common, clients: usize) -> anyhow::Result<Vec<Comparison>> {
    let setup = common.setup(Listeners::separate(1), false);
    let params = Reload {
        clients,
        payload: 64,
        settle: common.duration() / 3,
    };
    let name = format!("reload {} {clients} clients", setup.label());
    compare(&name, &setup, async |running, server| {
        params.run(running, setup.proto, server).await
    })
    .await
}

async fn sweep(
    common: &Common,
    clients: &[usize],
    svg: &PathBuf,
) -> anyhow::Result<Vec<Comparison>> {
    let mut rows = Vec::new();
    let mut points = Vec::new();
    for &n in clients {
        let found = echo(common, n, 64).await?;
        let get = |metric: &str| found.iter().find(|r| r.metric == metric);
        if let (Some(rate), Some(p99)) = (get("msgs/s"), get("p99 µs")) {
            points.push(chart::Point {
                clients: n,
                wasmgate_rate: rate.wasmgate,
                baseline_rate: rate.baseline.unwrap_or(f64::NAN),
                wasmgate_p99: p99.wasmgate,
                baseline_p99: p99.baseline.unwrap_or(f64::NAN),
            });
        }
        rows.extend(found);
    }
    let title = format!(
        "echo, {}, 64-byte payload: wasmgate vs native baseline",
        common.setup(Listeners::separate(1), false).label()
    );
    // The rows are the measurement: a chart with nowhere to go (a relative path, run from
    // outside the repository) loses only itself.
    match std::fs::write(svg, chart::svg(&title, &points)) {
        Ok(()) => eprintln!("chart written to {}", svg.display()),
        Err(e) => eprintln!("chart not written to {}: {e}", svg.display()),
    }
    Ok(rows)
}

/// The suite behind BENCHMARKS.md: issue 14's targets, each measured against the baseline.
async fn all(
    runs: usize,
    duration: f64,
    idle_total: usize,
    svg: &PathBuf,
) -> anyhow::Result<Vec<Comparison>> {
    let common = |proto, layout| Common {
        proto,
        layout,
        runs,
        duration,
        warmup: 1.0,
        baseline_ws: None,
        floor: false,
        client_threads: None,
    };
    eprintln!("machine: {}", machine());
    let ws = common(Proto::Ws, Layout::Single);
    let split = common(Proto::Ws, Layout::Split);
    let mut rows = Vec::new();
    // A scenario that fails is reported and skipped, so one failure late in a long run
    // does not throw away the figures measured before it.
    let mut keep = |name: &str, result: anyhow::Result<Vec<Comparison>>| match result {
        Ok(found) => rows.extend(found),
        Err(e) => eprintln!("{name} failed, skipped: {e:#}"),
    };
    // The rows whose targets the design itself may put out of reach also measure its
    // native floor (`--floor`).
    let floored = Common { floor: true, ..ws };
    let split_floored = Common {
        floor: true,
        ..split
    };
    keep("echo", echo(&floored, 100, 64).await);
    keep("echo", echo(&split_floored, 100, 64).await);
    keep("echo", echo(&ws, 1000, 64).await);
    keep("echo", echo(&split, 1000, 64).await);
    keep(
        "echo",
        echo(&common(Proto::Text, Layout::Single), 100, 64).await,
    );
    keep("fanout", fanout(&ws, 10_000, 8, 64, Spread::All).await);
    keep("connect", connect(&floored, 32).await);
    for proto in [Proto::Ws, Proto::Text] {
        let single = common(proto, Layout::Single);
        keep(
            "idle",
            idle(&single, 19_000, Listeners::separate(1), 15_000).await,
        );
    }
    if idle_total > 0 {
        let shared = Listeners {
            count: 6,
            reuse_port: true,
        };
        keep("idle", idle(&split, idle_total, shared, 15_000).await);
    }
    keep("reload", reload(&ws, 50).await);
    keep("sweep", sweep(&ws, &[1, 10, 100, 1000], svg).await);
    Ok(rows)
}

/// [`Running::cluster`], tried up to three times: a port picked free for a child can be
/// taken by one of the previous run's connections before the child binds it.
async fn start_cluster(proto: Proto, gateways: usize, engine: Engine) -> anyhow::Result<Running> {
    let mut attempt = 1;
    loop {
        match Running::cluster(proto, gateways, engine).await {
            Ok(running) => return Ok(running),
            Err(e) if attempt < 3 => {
                let first = format!("{e:#}");
                let first = first.lines().next().unwrap_or_default();
                eprintln!("cluster start failed, trying again: {first}");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The CPU model and core count, for the report.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}
