//! The worker host: runs plugins in the wasm runtime and connects them to the gateways.
//!
//! # Layout
//! - [`runtime`]: wasmtime, sandbox limits, instances.
//! - [`host_api`]: the imports plugins call, over the [`host_api::Gateways`] trait.
//! - [`links`]: the links to every gateway; implements `Gateways` over the network.
//! - [`dispatch`]: events to instances, one client's events in order.
//! - [`plugins`]: the plugins directory, watched for new versions (hot reload).
//! - [`timers`], [`guest_output`]: plugin timers; plugin stdout/stderr into the log.

mod bindings;
pub mod dispatch;
pub mod guest_output;
pub mod host_api;
pub mod links;
pub mod plugins;
pub mod runtime;
pub mod timers;

use std::sync::Arc;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use bindings::{
    Client, GatewayError, Level, Session as WitSession, WebsocketRequest, WorkerInfo,
};

use crate::config::WorkerConfig;
use crate::register;
use crate::wire::handshake::Role;
use dispatch::Dispatcher;
use links::GatewayLinks;
use plugins::PluginDir;
use runtime::{Limits, Runtime};

/// Events waiting for the dispatcher before gateway links wait.
const EVENT_QUEUE: usize = 4096;

/// Runs a worker host until `shutdown`: loads the plugins (again whenever `reload` is
/// notified), registers, links to every gateway and serves events; on shutdown every instance finishes its queue and runs
/// `on-worker-stop`.
pub async fn run(
    config: WorkerConfig,
    secret: Arc<[u8]>,
    reload: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut runtime = Runtime::new(Limits {
        process_timeout: config.process_timeout,
        memory_limit: config.memory_limit.as_u64() as usize,
    })?;
    if let Some(cache) = &config.cache {
        runtime = runtime.with_cache(cache.clone());
    }
    let worker: Arc<str> = config.name.clone().into();
    let links = GatewayLinks::new(secret.clone(), Role::Worker);
    let mut plugins = PluginDir::new(
        config.plugins.clone(),
        Arc::new(runtime),
        links.clone(),
        worker.clone(),
        config.instances,
        &config.grants,
    );
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let (changes_tx, changes) = mpsc::channel(16);
    let dispatching = tokio::spawn(Dispatcher::new(links.clone()).run(events, changes));
    // Load the plugins before linking to gateways, so that no early event finds its app
    // missing.
    plugins.scan(&changes_tx).await;
    let watching = shutdown.child_token();
    tokio::spawn(plugins.watch(changes_tx, reload, watching.clone()));
    let gateways = register::spawn_registration(
        config.register.clone(),
        secret,
        register::Announce::Worker,
        shutdown.clone(),
    );
    let links_stop = CancellationToken::new();
    links.start(gateways, Some(events_tx), links_stop.clone());
    tracing::info!(worker = %worker, plugins = %config.plugins.display(), "worker host started");
    shutdown.cancelled().await;
    // Stop taking events, let the instances drain and run on-worker-stop, then unlink.
    links_stop.cancel();
    drop(links);
    let _ = dispatching.await;
    Ok(())
}
