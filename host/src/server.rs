//! Runs the roles a configuration asks for, side by side in one process, until shutdown.
//!
//! The same code serves "everything on one machine" (all three sections present) and
//! "one role per machine" (one section, or `--role`): roles only ever talk over their
//! network links, never through shared memory.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::gateway::BoundGateway;
use crate::{register, worker};

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
    }
    if !roles.contains(&Role::Worker) {
        config.worker = None;
    }
}

/// What a running server can be asked to do while it runs (by a signal or the control
/// endpoint).
#[derive(Clone, Default)]
pub struct Triggers {
    /// Re-read the plugins directory now (what `wasmgate reload` does).
    pub reload: Arc<Notify>,
}

/// Binds every listener of `config`, then serves until `shutdown`. Binding first means a
/// port conflict fails the start instead of a role dying later.
pub async fn run(
    config: Config,
    triggers: Triggers,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.register.is_some() || !config.gateway.is_empty() || config.worker.is_some(),
        "nothing to run: the configuration has no [register], [[gateway]] or [worker] section"
    );
    let secret: Arc<[u8]> = config.secret.as_bytes().into();
    let mut roles = JoinSet::new();
    if let Some(register) = &config.register {
        let listener = TcpListener::bind(register.listen)
            .await
            .with_context(|| format!("register: cannot listen on {}", register.listen))?;
        tracing::info!(listen = %register.listen, "register listening");
        roles.spawn(register::run(listener, secret.clone(), shutdown.clone()));
    }
    for gateway in config.gateway {
        let bound = BoundGateway::bind(gateway, secret.clone()).await?;
        roles.spawn(bound.run(shutdown.clone()));
    }
    if let Some(worker) = config.worker {
        roles.spawn(worker::run(
            worker,
            secret.clone(),
            triggers.reload.clone(),
            shutdown.clone(),
        ));
    }
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
