//! [`PushClient`]: every gateway operation as a typed Rust call, for backends that push to
//! clients (what GatewayClient is to GatewayWorker).
//!
//! The operations are [`GatewayApi`]'s, generated from the table plugins and the HTTP push
//! API use too, so a push means exactly what the WIT `gateway` import of the same name means.
//! What this module adds is the links: finding the gateways through the register and linking
//! to each, like a worker host that takes no events.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::links::{
    DEFAULT_PING_INTERVAL, DEFAULT_QUEUE_BYTES, GatewayLinks, NoEvents, SILENT_INTERVALS,
};
use crate::local::LocalGateways;
use crate::nats::{Nats, discovery, publish::NatsGateways};
use crate::ops::{GatewayApi, Gateways};
use crate::register::{self, Announce};
use crate::transport::Trust;
use crate::wire::handshake::Peer;

/// How long [`PushClient::connect`] waits for the gateways by default: GatewayClient's 5 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why [`PushClient::connect`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The register list is empty.
    #[error("no register address given")]
    NoRegister,
    /// No gateway got linked in time: a register is unreachable, the secret is wrong, or no
    /// gateway is registered.
    #[error(
        "no gateway linked within {0:?} (is a register reachable, the secret right, a gateway running?)"
    )]
    NoGateway(Duration),
}

/// Pushes to the clients of a wasmgate cluster and queries its gateways: every operation of
/// [`GatewayApi`], which it dereferences to.
///
/// Cheap to clone; the links it opened close when the last clone is dropped. Commands (sends,
/// closes, group, uid and session changes) return once queued to the gateway(s), not once
/// delivered, in the order they were made. Queries wait at most one second for the gateways;
/// run one within [`crate::ops::partial::gathering`] to learn which gateways its answer
/// missed.
///
/// ```no_run
/// use wasmgate::push::PushClient;
///
/// # async fn example() -> anyhow::Result<()> {
/// let push = PushClient::connect(vec!["10.0.0.5:1236".parse()?], "the cluster secret").await?;
/// push.send_to_group(&["lobby"], "dinner is ready", &[]).await?;
/// let online = push.get_client_count_by_group("lobby").await?;
/// println!("{online} clients in the lobby");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PushClient {
    api: GatewayApi,
    /// Stops the registration and links `connect` started, with the last clone.
    links: Option<Arc<DropGuard>>,
}

impl fmt::Debug for PushClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushClient")
            .field("owns_links", &self.links.is_some())
            .finish_non_exhaustive()
    }
}

impl PushClient {
    /// Discovers the gateways through `registers` (every one is asked, as worker hosts do),
    /// links to each with the cluster's `secret`, and returns once every listed gateway is
    /// linked, or after [`CONNECT_TIMEOUT`] if at least one is. Gateways that join later are
    /// linked as they register. Must be called within a tokio runtime.
    pub async fn connect(
        registers: Vec<SocketAddr>,
        secret: impl AsRef<[u8]>,
    ) -> Result<Self, ConnectError> {
        Self::connect_within(registers, secret, CONNECT_TIMEOUT).await
    }

    /// [`connect`](Self::connect), waiting at most `timeout` for the gateways.
    pub async fn connect_within(
        registers: Vec<SocketAddr>,
        secret: impl AsRef<[u8]>,
        timeout: Duration,
    ) -> Result<Self, ConnectError> {
        Self::connect_trusting(registers, Trust::plain(secret.as_ref().into()), timeout).await
    }

    /// [`connect_within`](Self::connect_within) with links that prove `trust`: the cluster
    /// secret and, if the cluster runs `[internal_tls]`, a certificate of its CA.
    pub async fn connect_trusting(
        registers: Vec<SocketAddr>,
        trust: Trust,
        timeout: Duration,
    ) -> Result<Self, ConnectError> {
        if registers.is_empty() {
            return Err(ConnectError::NoRegister);
        }
        let (client, listed, linked) = Self::start(Finder::Registers(registers), trust);
        let all = wait_until(listed, linked.clone(), |listed, linked| {
            !listed.is_empty() && listed.is_subset(linked)
        });
        if tokio::time::timeout(timeout, all).await.is_ok() || !linked.borrow().is_empty() {
            Ok(client)
        } else {
            Err(ConnectError::NoGateway(timeout))
        }
    }

    /// Links as [`connect`](Self::connect) does, without waiting: each gateway is linked as
    /// the registers list it (what a process without a worker host serves the admin page
    /// over). Must be called within a tokio runtime.
    pub fn link(registers: Vec<SocketAddr>, trust: Trust) -> Self {
        Self::start(Finder::Registers(registers), trust).0
    }

    /// Links as [`link`](Self::link) does, finding the gateways through `nats` and
    /// publishing commands there (`[cluster] nats`); queries go over the links.
    pub fn link_nats(nats: Nats, trust: Trust) -> Self {
        Self::start(Finder::Nats(nats), trust).0
    }

    /// Starts the registration (or the following of NATS announcements) and the links;
    /// returns the client with the gateways listed and those linked.
    fn start(
        finder: Finder,
        trust: Trust,
    ) -> (
        Self,
        watch::Receiver<BTreeSet<SocketAddr>>,
        watch::Receiver<BTreeSet<SocketAddr>>,
    ) {
        let stop = CancellationToken::new();
        let (listed, nats) = match finder {
            Finder::Registers(registers) => (
                register::spawn_registration(
                    register::RegisterReach::new(registers),
                    trust.clone(),
                    Announce::Client,
                    stop.clone(),
                ),
                None,
            ),
            Finder::Nats(nats) => (discovery::follow(nats.clone(), stop.clone()), Some(nats)),
        };
        // A push client runs no gateway, so every link is a network link.
        let links = GatewayLinks::new(
            trust,
            Peer::Client,
            LocalGateways::default(),
            DEFAULT_PING_INTERVAL,
            DEFAULT_QUEUE_BYTES,
            // Takes no events: nothing to do for a lost gateway.
            DEFAULT_PING_INTERVAL * SILENT_INTERVALS,
        );
        links.start(listed.clone(), Arc::new(NoEvents), stop.clone());
        let linked = links.linked();
        let gateways: Arc<dyn Gateways> = match nats {
            // Nothing waits for its commands to be confirmed: it acknowledges no event.
            Some(nats) => NatsGateways::new(nats, links, None),
            None => links,
        };
        let client = Self {
            api: GatewayApi::new(gateways),
            links: Some(Arc::new(stop.drop_guard())),
        };
        (client, listed, linked)
    }

    /// Pushes through `gateways`, e.g. a worker host's own links (what the HTTP API does).
    pub fn over(gateways: Arc<dyn Gateways>) -> Self {
        Self {
            api: GatewayApi::new(gateways),
            links: None,
        }
    }
}

/// Where a push client finds the gateways.
enum Finder {
    /// The registers' lists.
    Registers(Vec<SocketAddr>),
    /// The gateways' announcements on NATS.
    Nats(Nats),
}

impl Deref for PushClient {
    type Target = GatewayApi;

    fn deref(&self) -> &GatewayApi {
        &self.api
    }
}

/// Waits until `ready(listed, linked)` holds for the two watches.
async fn wait_until(
    mut listed: watch::Receiver<BTreeSet<SocketAddr>>,
    mut linked: watch::Receiver<BTreeSet<SocketAddr>>,
    ready: impl Fn(&BTreeSet<SocketAddr>, &BTreeSet<SocketAddr>) -> bool,
) {
    loop {
        if ready(&listed.borrow_and_update(), &linked.borrow_and_update()) {
            return;
        }
        let changed = tokio::select! {
            r = listed.changed() => r,
            r = linked.changed() => r,
        };
        if changed.is_err() {
            // The links stopped; nothing will change any more.
            return std::future::pending().await;
        }
    }
}
