//! The admin page: one HTML page and its JSON API, served by a process with an `[admin]`
//! section, showing the whole cluster as this process's links see it — every gateway (its
//! listener, clients, groups and uids), every worker host's plugin table (reported to the
//! gateways, see [`crate::ops::ClusterView`]), a search by client id, uid or group, and a
//! kick button.
//!
//! It stands beside the push API: it asks the gateways through the same table of operations
//! ([`GatewayApi`]), over whatever links the process hands it, and knows nothing of the roles.
//!
//! - [`http`]: the router (`/` the page, `/api/…` the JSON endpoints behind the token);
//!   `page.html` and `openapi.json` beside it, embedded at build time.

pub mod http;
#[cfg(test)]
mod openapi_tests;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminConfig, HttpConfig};
use crate::http_listener;
use crate::ops::GatewayApi;

/// The admin page's listener, bound so that a taken port fails the start.
pub struct BoundAdmin {
    listener: TcpListener,
    token: Option<String>,
}

impl BoundAdmin {
    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Binds `config.listen`.
    pub async fn bind(config: &AdminConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("admin: cannot listen on {}", config.listen))?;
        Ok(Self {
            listener,
            token: config.token.clone(),
        })
    }

    /// Serves the page and its API over `gateways` until `shutdown`, within `limits`.
    pub async fn serve(
        self,
        gateways: GatewayApi,
        limits: HttpConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let address = self.listener.local_addr()?;
        let app = http::router(gateways, self.token.as_deref());
        tracing::info!(
            token = self.token.is_some(),
            "admin page at http://{address}/"
        );
        http_listener::serve("admin", self.listener, app, &limits, shutdown).await;
        Ok(())
    }
}
