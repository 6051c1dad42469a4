//! The worker host: runs plugins in the wasm runtime and connects them to the gateways.
//!
//! # Layout
//! - [`runtime`]: wasmtime, sandbox limits, instances.
//! - [`host_api`]: the imports plugins call, over the [`host_api::Gateways`] trait.
//! - [`links`]: the links to every gateway; implements `Gateways` over the network.
//! - [`dispatch`]: events to instances, one client's events in order.
//! - [`plugins`]: the plugins directory.
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
use dispatch::Dispatcher;
use links::GatewayLinks;
use runtime::{Limits, Runtime};

/// Events waiting for the dispatcher before gateway links wait.
const EVENT_QUEUE: usize = 4096;

/// Runs a worker host until `shutdown`: loads the plugins (again whenever `reload` is
/// notified), registers, links to every gateway and serves events; on shutdown every instance finishes its queue and runs
/// `on-worker-stop`.
pub async fn run(
    config: WorkerConfig,
    secret: Arc<[u8]>,
    _reload: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let runtime = Arc::new(Runtime::new(Limits {
        process_timeout: config.process_timeout,
        memory_limit: config.memory_limit.as_u64() as usize,
    })?);
    let codes = plugins::load_dir(&runtime, &config.plugins).await;
    if codes.is_empty() {
        tracing::warn!(dir = %config.plugins.display(), "no plugins loaded");
    }
    let gateways = register::spawn_registration(
        config.register.clone(),
        secret.clone(),
        register::Announce::Worker,
        shutdown.clone(),
    );
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let links_stop = CancellationToken::new();
    let links = GatewayLinks::spawn(gateways, secret, Some(events_tx), links_stop.clone());
    let worker: Arc<str> = config.name.clone().into();
    tracing::info!(worker = %worker, plugins = codes.len(), "worker host started");
    let dispatcher = Dispatcher::start(&runtime, codes, config.instances, links.clone(), worker);
    let dispatching = tokio::spawn(dispatcher.run(events));
    shutdown.cancelled().await;
    // Stop taking events, let the instances drain and run on-worker-stop, then unlink.
    links_stop.cancel();
    drop(links);
    let _ = dispatching.await;
    Ok(())
}
