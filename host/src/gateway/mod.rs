//! The gateway role: holds client connections and their groups, uids and sessions, forwards
//! client events to worker hosts and executes what they send back.
//!
//! # Layout
//! - [`state`]: the clients, groups, uids and sessions; executes commands, answers queries.
//! - [`listener`], [`protocol`], [`conn`]: the client side, from accept to close.
//! - [`router`]: which worker host gets a client's events.
//! - [`internal`]: the listener worker hosts link to.

pub mod conn;
pub mod internal;
pub mod listener;
pub mod protocol;
pub mod router;
pub mod state;

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::register;
use crate::wire::messages::ListenerInfo;
use router::Router;
use state::GatewayState;

/// A running gateway's shared parts.
pub struct Gateway {
    /// The clients.
    pub state: Arc<GatewayState>,
    /// The worker-host links.
    pub router: Arc<Router>,
    /// The listeners announced to worker hosts.
    pub listeners: Vec<ListenerInfo>,
    /// The cluster secret.
    pub secret: Arc<[u8]>,
}

/// A gateway whose sockets are bound, ready to [`run`](BoundGateway::run).
pub struct BoundGateway {
    config: GatewayConfig,
    gateway: Arc<Gateway>,
    clients: TcpListener,
    internal: TcpListener,
}

impl BoundGateway {
    /// Binds the client listener and the internal listener.
    pub async fn bind(config: GatewayConfig, secret: Arc<[u8]>) -> anyhow::Result<Self> {
        let clients = TcpListener::bind(config.listen.addr)
            .await
            .with_context(|| {
                format!(
                    "gateway {}: cannot listen on {}",
                    config.name, config.listen
                )
            })?;
        let internal = TcpListener::bind((config.lan_ip, config.internal_port))
            .await
            .with_context(|| {
                format!(
                    "gateway {}: cannot listen on internal port {}:{}",
                    config.name, config.lan_ip, config.internal_port
                )
            })?;
        let address = SocketAddrV4::new(config.lan_ip, internal.local_addr()?.port());
        let listeners = vec![ListenerInfo {
            name: config.name.clone(),
            app: config.app.clone(),
            port: clients.local_addr()?.port(),
        }];
        let gateway = Arc::new(Gateway {
            state: Arc::new(GatewayState::new(address)),
            router: Arc::new(Router::default()),
            listeners,
            secret,
        });
        Ok(Self {
            config,
            gateway,
            clients,
            internal,
        })
    }

    /// The client-facing address.
    pub fn client_addr(&self) -> SocketAddr {
        self.clients.local_addr().expect("bound")
    }

    /// The internal address worker hosts use.
    pub fn internal_addr(&self) -> SocketAddrV4 {
        self.gateway.state.address()
    }

    /// The shared parts, for inspection.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    /// Serves clients and worker hosts until `shutdown`, then closes every client.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let address = self.internal_addr();
        tracing::info!(
            gateway = %self.config.name,
            listen = %self.config.listen,
            internal = %address,
            app = %self.config.app,
            "gateway listening"
        );
        let _registration = register::spawn_registration(
            self.config.register.clone(),
            self.gateway.secret.clone(),
            register::Announce::Gateway(address),
            shutdown.clone(),
        );
        let internal = tokio::spawn(internal::serve(
            self.internal,
            self.gateway.clone(),
            shutdown.clone(),
        ));
        let shared = conn::ConnShared {
            state: self.gateway.state.clone(),
            router: self.gateway.router.clone(),
            listener: 0,
            shutdown: shutdown.clone(),
        };
        listener::serve(
            self.clients,
            self.config.listen.protocol,
            self.config.max_message_size.as_u64() as usize,
            shared,
        )
        .await;
        let _ = internal.await;
        Ok(())
    }
}
