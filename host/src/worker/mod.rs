//! The worker host: runs plugins in the wasm runtime and connects them to the gateways.
//!
//! # Layout
//! - [`runtime`]: wasmtime, sandbox limits, instances.
//! - [`host_api`]: the imports plugins call, over the [`crate::ops::Gateways`] port.
//! - [`dispatch`]: events to instances, one client's events in order.
//! - [`plugins`]: the plugins directory, watched for new versions (hot reload).
//! - [`timers`], [`guest_output`]: plugin timers; plugin stdout/stderr into the log.
//! - [`kv`]: `wasi:keyvalue` for plugins, over an embedded SQLite file or Redis.
//! - [`sql`]: the databases apps are granted (`wasmgate:plugin/sql`).
//! - [`outbound_http`]: `wasi:http/outgoing-handler`, to the origins an app is granted.

mod bindings;
pub mod dispatch;
pub mod guest_output;
pub mod host_api;
mod kept;
pub mod kv;
pub mod outbound_http;
pub mod plugins;
pub mod presence;
pub mod runtime;
pub mod sql;
pub mod timers;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use bindings::{
    Client, GatewayError, Level, Session as WitSession, WebsocketRequest, WorkerInfo,
};

use crate::config::{GrantTable, WorkerConfig};
use crate::links::GatewayLinks;
use crate::local::LocalGateways;
use crate::metrics;
use crate::nats::{Nats, discovery, publish::NatsGateways};
use crate::ops::{FaultCounts, FaultReport, Gateways, PluginReport, WorkerReport};
use crate::register::{self, RegisterReach};
use crate::transport::Trust;
use crate::wire::handshake::Peer;
use dispatch::Dispatcher;
use outbound_http::HttpLimits;
use plugins::PluginDir;
use runtime::{Limits, Runtime};
use timers::TimerCaps;

/// Longest a stopping worker host waits for its links to gateways of this process to deliver
/// their last events.
const LINKS_GRACE: Duration = Duration::from_secs(5);

/// Longest a stopping worker host waits for gateways of other processes to answer that it
/// has run every event they sent (see [`GatewayLinks::leave`]). With [`LINKS_GRACE`] and
/// [`DRAIN_GRACE`] this is `wasmgate stop`'s default 30 s at most; the drain is short by then.
const LEAVE_GRACE: Duration = Duration::from_secs(8);

/// Longest a stopping worker host waits for its instances to finish their queues and run
/// `on-worker-stop`. Each call is bounded by `process_timeout`, but a long queue of slow
/// events is not; together with [`LINKS_GRACE`] this stays under `wasmgate stop`'s default
/// 30 s, so a stop never times out because of a plugin. Instances still busy are abandoned.
const DRAIN_GRACE: Duration = Duration::from_secs(15);

/// A worker host whose runtime and links exist but are not running yet: the process can
/// hand its links to the push API before anything is served.
pub struct WorkerHost {
    config: WorkerConfig,
    trust: Trust,
    runtime: Arc<Runtime>,
    links: Arc<GatewayLinks>,
    /// What plugins' operations go through: the links, or NATS for commands.
    gateways: Arc<dyn Gateways>,
    /// Where gateways are found and commands go, when NATS is the engine.
    nats: Option<Nats>,
    dispatcher: Arc<Dispatcher>,
    /// The plugins present at start not loaded yet; `None` until the directory is listed.
    loading: watch::Sender<Option<BTreeSet<String>>>,
    /// Which of its registers are linked.
    registers: RegisterReach,
}

impl WorkerHost {
    /// Sets up the wasm runtime and the (not yet dialled) links to the gateways; those of
    /// this process are reached through `local`. With `nats`, gateways are found there and
    /// commands published there; otherwise through the register.
    pub fn new(
        config: WorkerConfig,
        trust: Trust,
        local: LocalGateways,
        nats: Option<Nats>,
    ) -> anyhow::Result<Self> {
        let mut runtime = Runtime::new(Limits {
            process_timeout: config.process_timeout,
            memory_limit: config.memory_limit.as_u64() as usize,
            timers: TimerCaps {
                max_timers: config.max_timers,
                min_interval: config.min_timer_interval,
            },
            max_resources: config.max_resources,
            log_rate: config.log_rate.as_u64(),
            http: HttpLimits {
                max_response_body: config.max_http_response_body.as_u64(),
                max_requests: config.max_http_requests,
            },
        })?;
        runtime = runtime
            .with_cache(config.cache_dir(), config.cache_versions)
            .with_sql(sql::Databases::new(config.data.clone(), config.sql))
            .with_data(
                config.data.clone(),
                kv::KvLimits {
                    max_key: config.max_kv_key_size.as_u64() as usize,
                    max_value: config.max_kv_value_size.as_u64() as usize,
                },
            );
        let links = GatewayLinks::new(
            trust.clone(),
            Peer::Worker,
            local,
            config.link_ping_interval,
            usize::try_from(config.link_queue_bytes.as_u64()).unwrap_or(usize::MAX),
            config.gateway_lost_after,
        );
        let worker_id = rand::random::<u64>();
        let name = config.name.clone();
        links.report_with(Arc::new(move || report(worker_id, &name)));
        let gateways: Arc<dyn Gateways> = match &nats {
            Some(nats) => NatsGateways::new(nats.clone(), links.clone(), Some(links.other_path())),
            None => links.clone(),
        };
        let dispatcher = Dispatcher::new(gateways.clone(), worker_id);
        let registers = RegisterReach::new(config.register.clone());
        Ok(Self {
            config,
            trust,
            runtime: Arc::new(runtime),
            links,
            gateways,
            nats,
            dispatcher,
            loading: watch::channel(None).0,
            registers,
        })
    }

    /// The grants it starts with.
    pub fn grants(&self) -> &GrantTable {
        &self.config.grants
    }

    /// What its start waits for: the plugins present at start, and every gateway in
    /// `gateways` (those of this process) linked.
    pub fn startup(&self, gateways: BTreeSet<SocketAddr>) -> Startup {
        Startup {
            loading: self.loading.subscribe(),
            linked: self.links.linked(),
            gateways,
        }
    }

    /// Which of its registers are linked (none is dialled with NATS as the engine).
    pub fn registers(&self) -> RegisterReach {
        self.registers.clone()
    }

    /// The worker host's way to every gateway, as the gateway-operations port.
    pub fn gateways(&self) -> Arc<dyn Gateways> {
        self.gateways.clone()
    }

    /// Runs until `shutdown`: loads the plugins (again, with the grants sent, whenever
    /// `reload` sends grants), registers, links to every gateway and serves events; on
    /// shutdown every instance finishes its queue and runs `on-worker-stop`.
    pub async fn run(
        self,
        reload: watch::Receiver<Arc<GrantTable>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            trust,
            runtime,
            links,
            gateways,
            nats,
            dispatcher,
            loading,
            registers,
        } = self;
        let worker: Arc<str> = config.name.clone().into();
        let mut plugins = PluginDir::new(&config, runtime, gateways, dispatcher.clone());
        // Load the plugins before linking to gateways, so that no early event finds its app
        // missing.
        plugins.scan(&loading).await;
        let watching = shutdown.child_token();
        tokio::spawn(plugins.watch(reload, watching));
        let gateways = match nats {
            Some(nats) => discovery::follow(nats, shutdown.clone()),
            None => register::spawn_registration(
                registers,
                trust.clone(),
                register::Announce::Worker,
                shutdown.clone(),
            ),
        };
        let links_stop = CancellationToken::new();
        links.start(gateways, dispatcher.clone(), links_stop.clone());
        tracing::info!(worker = %worker, plugins = %config.plugins.display(), "worker host started");
        shutdown.cancelled().await;
        // Gateways of other processes route nothing new here, and answer once what they sent
        // has run: the links close with nothing queued on them.
        if !links.leave(LEAVE_GRACE).await {
            tracing::warn!(
                "gateways still had events running here after {LEAVE_GRACE:?}; closing the links anyway"
            );
        }
        // Stop taking events (after the close events of this process's gateways, which
        // stopped first), then let the instances drain and run on-worker-stop.
        links_stop.cancel();
        if !links.stopped(LINKS_GRACE).await {
            tracing::warn!("links to gateways still open after {LINKS_GRACE:?}; stopping anyway");
        }
        if tokio::time::timeout(DRAIN_GRACE, dispatcher.stop())
            .await
            .is_err()
        {
            tracing::warn!("plugin instances still busy after {DRAIN_GRACE:?}; abandoned");
        }
        Ok(())
    }
}

/// A worker host's start, watched until it serves.
pub struct Startup {
    loading: watch::Receiver<Option<BTreeSet<String>>>,
    linked: watch::Receiver<BTreeSet<SocketAddr>>,
    gateways: BTreeSet<SocketAddr>,
}

/// What a start still waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The plugins present at start not loaded yet; `None` while the directory is being read.
    pub loading: Option<Vec<String>>,
    /// The gateways of this process not linked yet.
    pub unlinked: Vec<SocketAddr>,
}

impl Startup {
    /// Resolves once the worker host serves: the plugins present at start are loaded and
    /// every gateway of this process is linked.
    pub async fn serving(&mut self) {
        let _ = self
            .loading
            .wait_for(|left| left.as_ref().is_some_and(BTreeSet::is_empty))
            .await;
        let gateways = &self.gateways;
        let _ = self
            .linked
            .wait_for(|linked| gateways.is_subset(linked))
            .await;
    }

    /// What it still waits for now.
    pub fn waiting(&self) -> Waiting {
        let linked = self.linked.borrow();
        Waiting {
            loading: self
                .loading
                .borrow()
                .as_ref()
                .map(|left| left.iter().cloned().collect()),
            unlinked: self.gateways.difference(&linked).copied().collect(),
        }
    }
}

/// The plugin table of worker host `name` (`id`) as the admin page shows it: each version
/// serving, with its faults in this process.
fn report(id: u64, name: &str) -> WorkerReport {
    let seconds = |t: std::time::SystemTime| metrics::unix_seconds(t) as u64;
    let plugins = metrics::plugins()
        .into_iter()
        .filter(|p| p.worker == name)
        .map(|p| {
            let faults = metrics::plugin_faults(name, &p.plugin);
            PluginReport {
                faults: FaultCounts {
                    trap: faults.trap,
                    timeout: faults.timeout,
                    memory_limit: faults.memory_limit,
                },
                recent_faults: faults
                    .recent
                    .iter()
                    .map(|(at, callback, kind)| FaultReport {
                        at: seconds(*at),
                        callback: (*callback).to_owned(),
                        kind: (*kind).to_owned(),
                    })
                    .collect(),
                instances: u32::try_from(p.instances).unwrap_or(u32::MAX),
                loaded_at: seconds(p.loaded_at),
                version: p.version,
                plugin: p.plugin,
            }
        })
        .collect();
    WorkerReport {
        id,
        name: name.to_owned(),
        made_at: (metrics::unix_seconds(std::time::SystemTime::now()) * 1000.0) as u64,
        plugins,
    }
}
