//! Pushing from other applications: what GatewayWorker's GatewayClient does for PHP backends,
//! for any backend.
//!
//! - [`client`]: [`PushClient`], every gateway operation as a typed Rust call. It finds the
//!   gateways through the register and links to them like a worker host (that takes no
//!   events), or works over a worker host's own links.
//! - [`http`]: the HTTP push API, a JSON layer over `PushClient` that the worker host serves
//!   when the configuration has a `[push]` section; `openapi.json` beside it describes it.
//!
//! Both map onto the [`crate::ops`] vocabulary that plugins use, so an operation means the
//! same thing from a plugin, over HTTP and from Rust.

pub mod client;
pub mod http;
#[cfg(test)]
mod openapi_tests;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use client::{ConnectError, PushClient, PushError};

use crate::config::PushConfig;
use crate::worker::host_api::Gateways;

/// Binds `config.listen` (so a taken port fails the start) and serves the HTTP push API over
/// `gateways` until `shutdown`.
pub async fn spawn(
    config: &PushConfig,
    gateways: Arc<dyn Gateways>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("push: cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let app = http::router(PushClient::over(gateways), config.token.as_deref());
    tracing::info!(
        token = config.token.is_some(),
        "push API listening on http://{address}/api/"
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(listen = %address, "push API stopped: {e}");
        }
    });
    Ok(())
}
