//! The gateway role: holds client connections and their groups, uids and sessions, forwards
//! client events to worker hosts and executes what they send back.
//!
//! # Layout
//! - [`state`]: the clients, groups, uids and sessions; executes commands, answers queries.
//! - [`listener`], [`protocol`], [`conn`]: the client side, from accept to close, with
//!   [`outbox`] (each client's byte-bounded queue) and [`heartbeat`]; [`counters`]: how
//!   often each limit cut a client off.
//! - [`router`]: which worker host gets a client's events.
//! - [`presence`]: reports uid transitions to the worker host that decides each uid's presence.
//! - [`keepers`]: tells each client's keeper of it, the worker host that runs its `on-close`
//!   if this gateway is lost.
//! - [`internal`]: the listener worker hosts link to.
//! - [`nats`]: commands from NATS, subscribed by what the gateway holds (`[cluster] nats`).
//! - [`Gateway`]: what every task of a gateway shares.

pub mod admission;
pub mod conn;
pub mod counters;
pub mod heartbeat;
pub mod internal;
pub mod keepers;
pub mod listener;
pub mod nats;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod router;
mod shared;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client_id;
use crate::config::{Advertise, GatewayConfig, Protocol};
use crate::local::LocalGateways;
use crate::nats::Nats;
use crate::register;
use crate::transport::Trust;
use crate::wire::messages::ListenerInfo;
use admission::Admission;
use heartbeat::{HeartbeatConfig, Ping};
use listener::{ListenerConfig, Transport};
use router::Router;
pub use shared::{Gateway, GatewaySnapshot};
use state::GatewayState;

/// A gateway whose sockets are bound, ready to [`run`](BoundGateway::run).
pub struct BoundGateway {
    config: GatewayConfig,
    gateway: Arc<Gateway>,
    clients: TcpListener,
    internal: TcpListener,
    transport: Transport,
    foreign: Option<mpsc::Sender<internal::Foreign>>,
}

impl BoundGateway {
    /// Binds the client listener and the internal listener, and loads the TLS certificate
    /// of a `wss` listener. `worker_start` is the `start_timeout` of the worker host of the
    /// same process, if any: early clients are held that long for a first worker host.
    pub async fn bind(
        config: GatewayConfig,
        trust: Trust,
        worker_start: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let name = config.name();
        let transport = match config.listen.protocol {
            Protocol::Ws => Transport::Ws,
            Protocol::Text => Transport::Text,
            Protocol::Frame => Transport::Frame,
            Protocol::Wss => {
                let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
                    anyhow::bail!("gateway {name}: wss needs tls_cert and tls_key");
                };
                Transport::Wss(
                    protocol::tls::acceptor(cert, key)
                        .with_context(|| format!("gateway {name}"))?,
                )
            }
        };
        let clients = listen(config.listen.addr, config.reuse_port)
            .with_context(|| format!("gateway {name}: cannot listen on {}", config.listen))?;
        let internal = TcpListener::bind((config.internal_bind(), config.internal_port))
            .await
            .with_context(|| {
                format!(
                    "gateway {name}: cannot listen on internal port {}:{}",
                    config.internal_bind(),
                    config.internal_port
                )
            })?;
        let port = internal.local_addr()?.port();
        let address = match &config.advertise {
            Some(advertise) => resolve(advertise, port)
                .await
                .with_context(|| format!("gateway {name}: advertise = {:?}", advertise.host))?,
            None => SocketAddr::from((config.lan_ip, port)),
        };
        if config.gatewayworker && address.is_ipv6() {
            anyhow::bail!(
                "gateway {name}: advertises the IPv6 address {address}, but gatewayworker = true \
                 needs an IPv4 one (GatewayWorker's client ids and gateway lists hold IPv4 \
                 addresses)"
            );
        }
        let listeners = vec![ListenerInfo {
            name,
            app: config.app.clone(),
            port: clients.local_addr()?.port(),
        }];
        let mut router = Router::new(
            config.max_events_in_flight,
            config.no_worker_hold,
            listeners.iter().map(|l| l.app.clone()).collect(),
        );
        if let Some(start_timeout) = worker_start {
            router = router.with_starting_hold(start_timeout);
        }
        let counters = Arc::new(counters::Counters::default());
        let limits = state::ClientLimits {
            max_groups: config.max_groups_per_client,
        };
        let gateway = Arc::new(Gateway {
            state: Arc::new(GatewayState::new(address, limits, counters.clone())),
            router: Arc::new(router),
            listeners,
            trust,
            counters,
            reports: Default::default(),
            registers: register::RegisterReach::new(config.register.clone()),
            nats_subjects: Default::default(),
            run: rand::random(),
        });
        Ok(Self {
            config,
            gateway,
            clients,
            internal,
            transport,
            foreign: None,
        })
    }

    /// Hands the internal port's connections that do not open with wasmgate's handshake to
    /// `foreign` (GatewayWorker's protocol, with `gatewayworker = true`).
    pub fn serve_foreign(&mut self, foreign: mpsc::Sender<internal::Foreign>) {
        self.foreign = Some(foreign);
    }

    /// The client-facing address.
    pub fn client_addr(&self) -> SocketAddr {
        self.clients.local_addr().expect("bound")
    }

    /// The internal address worker hosts use (the advertised one).
    pub fn internal_addr(&self) -> SocketAddr {
        self.gateway.state.internal()
    }

    /// The shared parts, for inspection.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    /// Serves clients and worker hosts until `shutdown`, then closes every client (WebSocket
    /// 1001), sends their close events, and flushes and closes the links. Worker hosts of this
    /// process that share `local` link through channels instead of sockets. With `nats`, the
    /// gateway announces itself and takes commands there instead of registering.
    pub async fn run(
        self,
        local: LocalGateways,
        nats: Option<Nats>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let address = self.internal_addr();
        let local_links = local.offer(address);
        tracing::info!(
            gateway = %self.config.name(),
            listen = %self.config.listen,
            internal = %address,
            app = %self.config.app,
            "gateway listening"
        );
        let _registration = nats.is_none().then(|| {
            register::spawn_registration(
                self.gateway.registers.clone(),
                self.gateway.trust.clone(),
                register::Announce::Gateway {
                    internal: address,
                    // An IPv4 address (checked at bind): its own key.
                    gatewayworker: self
                        .config
                        .gatewayworker
                        .then(|| self.gateway.state.address()),
                },
                shutdown.clone(),
            )
        });
        let nats_stop = CancellationToken::new();
        let nats_task = nats
            .map(|nats| tokio::spawn(nats::serve(self.gateway.clone(), nats, nats_stop.clone())));
        // Links outlive the clients: each closing client's close event must still reach its
        // worker host.
        let close_links = CancellationToken::new();
        let internal = tokio::spawn(internal::serve(
            self.internal,
            local_links,
            self.gateway.clone(),
            shutdown.clone(),
            close_links.clone(),
            internal::InternalSettings {
                ping_interval: self.config.link_ping_interval,
                queue_bytes: byte_count(self.config.link_queue_bytes),
                foreign: self.foreign,
            },
        ));
        let stop_presence = CancellationToken::new();
        let presence = tokio::spawn(presence::report(
            self.gateway.state.clone(),
            self.gateway.router.clone(),
            0,
            stop_presence.clone(),
        ));
        let keepers = tokio::spawn(keepers::tell(
            self.gateway.state.clone(),
            self.gateway.router.clone(),
            stop_presence.clone(),
        ));
        let config = &self.config;
        let ping = Bytes::from(config.ping_data.clone().into_bytes());
        let shared = conn::ConnShared {
            state: self.gateway.state.clone(),
            router: self.gateway.router.clone(),
            listener: 0,
            shutdown: shutdown.clone(),
            heartbeat: HeartbeatConfig {
                interval: config.ping_interval,
                limit: config.ping_not_response_limit,
                ping: if config.ping_frame {
                    Ping::Frame(ping)
                } else if ping.is_empty() {
                    Ping::Silent
                } else {
                    Ping::Data(ping)
                },
            },
            send_buffer: byte_count(config.send_buffer),
            idle_timeout: config.idle_timeout,
            counters: self.gateway.counters.clone(),
            admission: Arc::new(Admission::new(
                config.max_connections,
                config.max_connections_per_ip,
            )),
        };
        let accept = ListenerConfig {
            transport: self.transport,
            allowed_origins: config.allowed_origins.clone(),
            max_message_size: byte_count(config.max_message_size),
            handshake_timeout: config.handshake_timeout,
        };
        listener::serve(self.clients, accept, shared).await;
        // Worker hosts forget this gateway at once instead of after three periods.
        nats_stop.cancel();
        if let Some(task) = nats_task {
            let _ = task.await;
        }
        // The closes' uid transitions and their keepers' notes go out before the links close,
        // as their close events.
        stop_presence.cancel();
        let _ = presence.await;
        let _ = keepers.await;
        local.withdraw(address);
        close_links.cancel();
        let _ = internal.await;
        Ok(())
    }
}

/// A configured size as a byte count, saturating where `usize` is narrower.
/// The address `advertise` names (a name is resolved now, once), with its port or the bound
/// `port`: an IPv4 one if the name has any (its client ids then hold it, as GatewayWorker's
/// do), else an IPv6 one.
async fn resolve(advertise: &Advertise, port: u16) -> anyhow::Result<SocketAddr> {
    let port = advertise.port.unwrap_or(port);
    let found: Vec<SocketAddr> = tokio::net::lookup_host((advertise.host.as_str(), port))
        .await?
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .filter(|a| !a.ip().is_unspecified())
        .collect();
    let address = found
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| found.first())
        .copied()
        .context("it resolves to no address")?;
    match address {
        SocketAddr::V4(v4) if client_id::is_tag(*v4.ip()) => anyhow::bail!(
            "it resolves to {v4}, in 240.0.0.0/4, which client ids use for IPv6 gateways' tags"
        ),
        _ => Ok(address),
    }
}

fn byte_count(size: bytesize::ByteSize) -> usize {
    usize::try_from(size.as_u64()).unwrap_or(usize::MAX)
}

/// Queued connections a client listener lets the kernel hold before it accepts them: a
/// reconnect storm after a restart arrives at once.
const CLIENT_BACKLOG: u32 = 1024;

/// The client listener on `addr`, sharing the port with other processes when `reuse_port`.
fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // What std's bind sets too: a restarted gateway rebinds while old sockets linger.
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(CLIENT_BACKLOG)
}
