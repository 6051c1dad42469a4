//! The process layer: runs the roles a configuration asks for, side by side in one process,
//! and what belongs to the whole process rather than to one role.
//!
//! The same code serves "everything on one machine" (all three sections present) and
//! "one role per machine" (one section, or `--role`): roles only ever talk through their
//! links, never through shared state. Between a worker host and a gateway of the same
//! process a link is a pair of channels ([`crate::local`]) carrying the same messages.
//!
//! Besides the roles, a process serves its operators and other applications: the control
//! socket ([`control`]), bound before anything else because it is also the lock against a
//! second server of the same configuration; `/metrics` ([`scrape`]); the HTTP push API over
//! the worker host's links ([`crate::push`]); the admin page ([`crate::admin`]) over the
//! worker host's links, or, in a process without one, over links of its own found through
//! the gateways' register. The operators' views read the roles through
//! [`Running`]. Roles never import this layer: they are handed what they need.
//!
//! - [`running`]: the handle on what runs; [`scrape`]: `/metrics`; [`control`]: the control
//!   socket; [`pid_file`], [`notify`]: what service managers use.

pub mod control;
pub mod notify;
pub mod pid_file;
pub mod running;
pub mod scrape;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::BoundAdmin;
use crate::config::{Config, ConfigError, GrantTable};
use crate::gateway::BoundGateway;
use crate::gatewayworker;
use crate::local::LocalGateways;
use crate::nats::Nats;
use crate::ops::GatewayApi;
use crate::push::{BoundPush, PushClient};
use crate::register;
use crate::transport::Trust;
use crate::web::BoundWeb;
use crate::worker::{Startup, Waiting, WorkerHost};
use control::ControlSocket;
use pid_file::PidFile;
pub use running::{Running, RunningGateway, RunningWorker};

/// GatewayProtocol connections a gateway's internal port has handed over and its
/// GatewayWorker server has not yet taken (it only spawns a task for each).
const FOREIGN_QUEUE: usize = 64;

/// A role a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Discovery: the gateway list.
    Register,
    /// Client connections.
    Gateway,
    /// Plugins.
    Worker,
}

impl Role {
    /// The role's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Register => "register",
            Role::Gateway => "gateway",
            Role::Worker => "worker",
        }
    }
}

/// Keeps only the sections of `roles` (all sections when `roles` is empty).
pub fn select_roles(config: &mut Config, roles: &[Role]) {
    if roles.is_empty() {
        return;
    }
    if !roles.contains(&Role::Register) {
        config.register = None;
    }
    if !roles.contains(&Role::Gateway) {
        config.gateway.clear();
        // The pages' scripts talk to the gateways: they are served where the gateways run.
        config.web = None;
    }
    if !roles.contains(&Role::Worker) {
        config.worker = None;
    }
}

/// What a running server can be asked to do while it runs (by a signal or the control
/// endpoint).
#[derive(Clone, Default)]
pub struct Triggers {
    /// Reload now (what `wasmgate reload` does): read the configuration again, apply its
    /// grants, and re-read the plugins directory.
    pub reload: Arc<Notify>,
    /// Reads the configuration again, as it was read at start (same file, same roles); none
    /// where there is nothing to read again (tests).
    pub reread: Option<Arc<ReadConfig>>,
}

/// How a server reads its configuration again at a reload.
pub type ReadConfig = dyn Fn() -> anyhow::Result<Config> + Send + Sync;

/// Serves reloads: each one reads the configuration again and hands the worker host its
/// grants (unchanged when the file cannot be read or is invalid: a typo must not take a
/// running app's grants away). What else changed is reported, not applied: listeners and
/// limits need a restart.
async fn serve_reloads(
    running: Config,
    triggers: Triggers,
    grants: watch::Sender<Arc<GrantTable>>,
    shutdown: CancellationToken,
) {
    let without_grants = |config: &Config| {
        let mut config = config.clone();
        config.worker.iter_mut().for_each(|w| w.grants.clear());
        config.to_toml()
    };
    let started = without_grants(&running);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = triggers.reload.notified() => {}
        }
        let read = triggers.reread.as_ref().map(|reread| reread());
        match read {
            Some(Ok(config)) => {
                if without_grants(&config) != started {
                    tracing::warn!(
                        "reload: the configuration changed beyond [worker.grants]; those changes need a restart"
                    );
                }
                let table = config.worker.map(|w| w.grants).unwrap_or_default();
                if **grants.borrow() != table {
                    tracing::info!("reload: applying the changed grants");
                }
                grants.send_replace(Arc::new(table));
            }
            Some(Err(e)) => {
                tracing::error!("reload: configuration not read again, grants unchanged: {e:#}");
                grants.send_modify(|_| {});
            }
            None => grants.send_modify(|_| {}),
        }
    }
}

/// Stops the gateways first, then the worker host: at `shutdown` the gateways close their
/// clients (WebSocket 1001) and send their close events; once they are done, `workers_stop`
/// lets the worker host run `on-close` for them, drain and stop. A gateway that fails stops
/// the whole process.
async fn stop_in_order(
    mut gateways: JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
    workers_stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut result = Ok(());
    let mut record = |ended: Result<anyhow::Result<()>, tokio::task::JoinError>| {
        if let Err(e) = ended.context("a gateway panicked").and_then(|r| r) {
            tracing::error!("{e:#}");
            shutdown.cancel();
            result = Err(e);
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(ended) = gateways.join_next() => record(ended),
        }
    }
    while let Some(ended) = gateways.join_next().await {
        record(ended);
    }
    workers_stop.cancel();
    result
}

/// Tells a service manager `READY=1` once the worker host (if any) serves, or after its
/// `start_timeout` with a warning naming what it still waits for; at once for a process
/// without one. Listeners are bound before: clients that connect meanwhile wait
/// (`no_worker_hold`), they are not refused.
async fn announce_ready(
    worker: Option<(Startup, Duration)>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Some((mut startup, start_timeout)) = worker {
        tokio::select! {
            () = startup.serving() => tracing::info!("worker host serving: plugins loaded, gateways linked"),
            () = tokio::time::sleep(start_timeout) => tracing::warn!(
                "{}", start_timeout_warning(start_timeout, &startup.waiting())
            ),
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    notify::notify("READY=1");
    Ok(())
}

/// The warning for a start that reports ready after `start_timeout`: the plugins still
/// loading and the gateways not linked by name, so the operator knows what to look at.
fn start_timeout_warning(start_timeout: Duration, waiting: &Waiting) -> String {
    let mut still = Vec::new();
    match &waiting.loading {
        None => still.push("the plugins directory is still being read".to_owned()),
        Some(loading) if !loading.is_empty() => {
            still.push(format!("plugins still loading: {}", loading.join(", ")))
        }
        Some(_) => {}
    }
    if !waiting.unlinked.is_empty() {
        let unlinked: Vec<String> = waiting.unlinked.iter().map(|g| g.to_string()).collect();
        still.push(format!(
            "gateways of this process not linked yet: {} (is the register reachable?)",
            unlinked.join(", ")
        ));
    }
    if still.is_empty() {
        // Both came true at the same moment as the timeout.
        return format!(
            "ready after start_timeout ({start_timeout:?}), just as the worker host came to serve"
        );
    }
    format!(
        "ready after start_timeout ({start_timeout:?}) although the worker host does not serve yet; waiting for {}",
        still.join("; ")
    )
}

/// Binds every listener of `config`, then serves until `shutdown`. Binding first means a
/// port conflict fails the start instead of a role dying later. Once everything is bound,
/// a service manager waiting on `NOTIFY_SOCKET` is told `READY=1`.
pub async fn run(
    config: Config,
    triggers: Triggers,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.register.is_some() || !config.gateway.is_empty() || config.worker.is_some(),
        "nothing to run: the configuration has no [register], [[gateway]] or [worker] section"
    );
    let secret = config.load_secret().map_err(ConfigError::from)?;
    let started = config.clone();
    tracing::info!("cluster secret from {}", secret.origin);
    let secret: Arc<[u8]> = secret.bytes.into();
    let trust = Trust::load(secret.clone(), config.internal_tls.as_ref())?;
    if trust.is_tls() {
        tracing::info!("internal links over TLS ([internal_tls])");
    }
    let control = ControlSocket::bind(&config.control.socket)?;
    let _pid_file = PidFile::create(&config.control.pid_file)?;
    let metrics_listener = match &config.metrics {
        Some(m) => Some(
            TcpListener::bind(m.listen)
                .await
                .with_context(|| format!("metrics: cannot listen on {}", m.listen))?,
        ),
        None => None,
    };
    let web = match &config.web {
        Some(web) => Some(BoundWeb::bind(web).await?),
        None => None,
    };
    let push = match &config.push {
        Some(push) => Some(BoundPush::bind(push).await?),
        None => None,
    };
    let admin = match &config.admin {
        Some(admin) => Some(BoundAdmin::bind(admin).await?),
        None => None,
    };
    // Without a worker host, the admin page links to the gateways as a push client does,
    // through the register the gateways of this file use.
    let admin_registers = config
        .gateway
        .first()
        .map(|g| g.register.clone())
        .unwrap_or_default();
    let mut endpoints = Vec::new();
    if let Some(listener) = &metrics_listener {
        endpoints.push((
            "metrics",
            format!("http://{}/metrics", listener.local_addr()?),
        ));
    }
    if let Some(push) = &push {
        endpoints.push(("push", format!("http://{}/", push.local_addr()?)));
    }
    if let Some(web) = &web {
        endpoints.push(("web", format!("http://{}/", web.local_addr()?)));
    }
    if let Some(admin) = &admin {
        endpoints.push(("admin", format!("http://{}/", admin.local_addr()?)));
    }
    let grants = config
        .worker
        .as_ref()
        .map(|w| watch::channel(Arc::new(w.grants.clone())));
    let mut running = Running {
        endpoints,
        started: SystemTime::now(),
        register: config.register.as_ref().map(|r| r.listen),
        gateways: Vec::new(),
        cluster: None,
        // Filled in once the worker host is set up.
        worker: None,
        nats: None,
    };
    // One NATS connection for every role of the process, so that what its worker host
    // publishes stays in order.
    let nats = match &config.cluster {
        Some(cluster) => Some(Nats::connect(cluster).await?),
        None => None,
    };
    running.nats = nats.clone();
    let local = LocalGateways::default();
    let mut local_gateways = BTreeSet::new();
    let mut roles = JoinSet::new();
    let mut gateways = JoinSet::new();
    let workers_stop = CancellationToken::new();
    if let Some(register) = &config.register {
        let listener = TcpListener::bind(register.listen)
            .await
            .with_context(|| format!("register: cannot listen on {}", register.listen))?;
        tracing::info!(listen = %register.listen, "register listening");
        let directory = register::Directory::default();
        if let Some(listen) = register.gatewayworker_listen {
            let listener = TcpListener::bind(listen).await.with_context(|| {
                format!("register: cannot listen on {listen} (gatewayworker_listen)")
            })?;
            tracing::info!(%listen, "register listening for GatewayWorker (PHP) members");
            roles.spawn(gatewayworker::register::run(
                listener,
                directory.clone(),
                secret.clone(),
                register.clone(),
                shutdown.clone(),
            ));
        }
        roles.spawn(register::run(
            listener,
            directory,
            trust.clone(),
            shutdown.clone(),
        ));
    }
    // Early clients wait for this process's worker host as long as its start does.
    let worker_start = config.worker.as_ref().map(|w| w.start_timeout);
    for gateway in config.gateway {
        let (name, listen, app) = (
            gateway.name(),
            gateway.listen.to_string(),
            gateway.app.clone(),
        );
        let compatible = gateway.gatewayworker;
        let settings = gatewayworker::gateway::PortSettings {
            secret: secret.clone(),
            auth_timeout: gateway.handshake_timeout,
            max_packet: usize::try_from(gateway.gatewayworker_max_packet.as_u64())
                .unwrap_or(usize::MAX),
            protocol: gateway.listen.protocol,
            link: gatewayworker::business::LinkSettings {
                ping_interval: gateway.link_ping_interval,
                queue_bytes: usize::try_from(gateway.link_queue_bytes.as_u64())
                    .unwrap_or(usize::MAX),
            },
        };
        let mut bound = BoundGateway::bind(gateway, trust.clone(), worker_start).await?;
        if compatible {
            let (handed, foreign) = tokio::sync::mpsc::channel(FOREIGN_QUEUE);
            bound.serve_foreign(handed);
            roles.spawn(gatewayworker::gateway::run(
                foreign,
                bound.gateway(),
                settings,
                shutdown.clone(),
            ));
        }
        local_gateways.insert(bound.internal_addr());
        running.gateways.push(RunningGateway {
            name,
            listen,
            app,
            gateway: bound.gateway(),
        });
        gateways.spawn(bound.run(local.clone(), nats.clone(), shutdown.clone()));
    }
    let mut ready = None;
    let mut admin = admin;
    if let (Some(worker), Some((grants, granted))) = (config.worker, grants) {
        let start_timeout = worker.start_timeout;
        let (name, plugins, memory_limit, data) = (
            worker.name.clone(),
            worker.plugins.clone(),
            worker.memory_limit.as_u64(),
            worker.data.clone(),
        );
        let worker = WorkerHost::new(worker, trust.clone(), local.clone(), nats.clone())?;
        running.worker = Some(RunningWorker {
            name,
            plugins,
            memory_limit,
            data,
            grants: granted.clone(),
            registers: worker.registers(),
        });
        ready = Some((worker.startup(local_gateways), start_timeout));
        running.cluster = Some(GatewayApi::new(worker.gateways()));
        if let Some(push) = push {
            roles.spawn(push.serve(worker.gateways(), config.http.clone(), shutdown.clone()));
        }
        if let Some(admin) = admin.take() {
            let api = GatewayApi::new(worker.gateways());
            roles.spawn(admin.serve(api, config.http.clone(), shutdown.clone()));
        }
        let reloads = serve_reloads(started, triggers.clone(), grants, shutdown.clone());
        roles.spawn(async move {
            reloads.await;
            Ok(())
        });
        roles.spawn(worker.run(granted, workers_stop.clone()));
    }
    if let Some(admin) = admin {
        let client = match &nats {
            Some(nats) => PushClient::link_nats(nats.clone(), trust.clone()),
            None => PushClient::link(admin_registers, trust.clone()),
        };
        let (limits, shutdown) = (config.http.clone(), shutdown.clone());
        roles.spawn(async move {
            let api = GatewayApi::clone(&client);
            admin.serve(api, limits, shutdown).await
        });
    }
    roles.spawn(stop_in_order(gateways, shutdown.clone(), workers_stop));
    if let Some(web) = web {
        roles.spawn(web.run(config.http.clone(), shutdown.clone()));
    }
    let running = Arc::new(running);
    if let Some(listener) = metrics_listener {
        tracing::info!("metrics at http://{}/metrics", listener.local_addr()?);
        let registry = scrape::registry(running.clone());
        roles.spawn(scrape::serve(
            listener,
            registry,
            config.http.clone(),
            shutdown.clone(),
        ));
    }
    let reload = triggers.reload.clone();
    roles.spawn(control::serve(control, running, reload, shutdown.clone()));
    roles.spawn(announce_ready(ready, shutdown.clone()));
    let mut result = Ok(());
    while let Some(ended) = roles.join_next().await {
        if let Err(e) = ended.context("a role panicked").and_then(|r| r) {
            tracing::error!("{e:#}");
            shutdown.cancel();
            result = Err(e);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_timeout_warning_names_what_is_still_awaited() {
        let waiting = Waiting {
            loading: Some(vec!["chat".into(), "game".into()]),
            unlinked: vec!["127.0.0.1:2900".parse().unwrap()],
        };
        let warning = start_timeout_warning(Duration::from_secs(60), &waiting);
        assert!(warning.contains("(60s)"), "{warning}");
        assert!(
            warning.contains("plugins still loading: chat, game"),
            "{warning}"
        );
        assert!(
            warning.contains("not linked yet: 127.0.0.1:2900"),
            "{warning}"
        );

        let listing = Waiting {
            loading: None,
            unlinked: Vec::new(),
        };
        let warning = start_timeout_warning(Duration::from_secs(1), &listing);
        assert!(
            warning.contains("directory is still being read"),
            "{warning}"
        );
        assert!(!warning.contains("gateways"), "{warning}");

        let linking = Waiting {
            loading: Some(Vec::new()),
            unlinked: vec!["127.0.0.1:2900".parse().unwrap()],
        };
        let warning = start_timeout_warning(Duration::from_secs(1), &linking);
        assert!(!warning.contains("plugins"), "{warning}");
    }
}
