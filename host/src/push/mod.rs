//! Pushing from other applications: what GatewayWorker's GatewayClient does for PHP backends,
//! for any backend.
//!
//! - [`client`]: [`PushClient`], every gateway operation as a typed Rust call. It finds the
//!   gateways through the register and links to them like a worker host (that takes no
//!   events), or works over a worker host's own links.
//! - [`http`]: the HTTP push API, a JSON rendering of the operations that a process serves
//!   over its worker host's links when the configuration has a `[push]` section;
//!   `openapi.json` beside it describes it.
//!
//! Both offer the table of operations in [`crate::ops`] that plugins use, so an operation
//! means the same thing from a plugin, over HTTP and from Rust.

pub mod client;
pub mod http;
#[cfg(test)]
mod openapi_tests;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use client::{ConnectError, PushClient};

use crate::config::{HttpConfig, PushConfig};
use crate::http_listener;
use crate::ops::{GatewayApi, Gateways};

/// The push API's listener, bound so that a taken port fails the start.
pub struct BoundPush {
    listener: TcpListener,
    token: Option<String>,
}

impl BoundPush {
    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Binds `config.listen`.
    pub async fn bind(config: &PushConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("push: cannot listen on {}", config.listen))?;
        Ok(Self {
            listener,
            token: config.token.clone(),
        })
    }

    /// Serves the HTTP push API over `gateways` until `shutdown`, within `limits`.
    pub async fn serve(
        self,
        gateways: Arc<dyn Gateways>,
        limits: HttpConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let address = self.listener.local_addr()?;
        let app = http::router(GatewayApi::new(gateways), self.token.as_deref());
        tracing::info!(
            token = self.token.is_some(),
            "push API listening on http://{address}/api/"
        );
        http_listener::serve("push", self.listener, app, &limits, shutdown).await;
        Ok(())
    }
}
