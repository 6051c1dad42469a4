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

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use bindings::{
    Client, GatewayError, Level, Session as WitSession, WebsocketRequest, WorkerInfo,
};

use crate::config::WorkerConfig;
use crate::local::LocalGateways;
use crate::register;
use crate::wire::handshake::Role;
use dispatch::Dispatcher;
use links::GatewayLinks;
use plugins::PluginDir;
use runtime::{Limits, Runtime};

/// Runs a worker host until `shutdown` (linking through `local` to the gateways of this
/// process): loads the plugins (again whenever `reload` is
/// notified), registers, links to every gateway and serves events; on shutdown every instance finishes its queue and runs
/// `on-worker-stop`.
pub async fn run(
    config: WorkerConfig,
    secret: Arc<[u8]>,
    reload: Arc<Notify>,
    local: LocalGateways,
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
    let links = GatewayLinks::new(secret.clone(), Role::Worker, local);
    let dispatcher = Dispatcher::new(links.clone());
    let mut plugins = PluginDir::new(
        config.plugins.clone(),
        Arc::new(runtime),
        links.clone(),
        dispatcher.clone(),
        worker.clone(),
        config.instances,
        &config.grants,
    );
    // Load the plugins before linking to gateways, so that no early event finds its app
    // missing.
    plugins.scan().await;
    let watching = shutdown.child_token();
    tokio::spawn(plugins.watch(reload, watching));
    if let Some(push) = &config.push {
        crate::push::spawn(push, links.clone(), shutdown.clone()).await?;
    }
    let gateways = register::spawn_registration(
        config.register.clone(),
        secret,
        register::Announce::Worker,
        shutdown.clone(),
    );
    let links_stop = CancellationToken::new();
    links.start(gateways, Some(dispatcher.clone()), links_stop.clone());
    tracing::info!(worker = %worker, plugins = %config.plugins.display(), "worker host started");
    shutdown.cancelled().await;
    // Stop taking events, then let the instances drain and run on-worker-stop.
    links_stop.cancel();
    dispatcher.stop().await;
    Ok(())
}
