//! The messages of the internal links, one enum per direction.
//!
//! Every link starts with the handshake of [`super::handshake`]; after it, each frame carries
//! one of these enums, postcard-encoded. Adding a variant at the end is backwards compatible
//! for receivers that know it; anything else bumps [`super::handshake::PROTOCOL_VERSION`].

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::client_id::ClientId;
use crate::ops::{Command, Query, Reply, Session, WorkerReport};

/// Gateway or worker host → register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToRegister {
    /// "I am a gateway; worker hosts reach me at `address`."
    Gateway {
        /// The gateway's advertised internal (worker-facing) address, IPv4 or IPv6.
        address: SocketAddr,
        /// Where PHP BusinessWorkers and GatewayClient reach it, if it speaks GatewayWorker's
        /// protocol (`gatewayworker = true`: `address` itself, so that client ids hold it;
        /// IPv4 only, as GatewayWorker's ids and lists are).
        gatewayworker: Option<SocketAddrV4>,
    },
    /// "I am a worker host (or a push client); tell me where the gateways are."
    Worker,
    /// Liveness; the register answers [`FromRegister::Pong`].
    Ping,
}

/// Register → gateway or worker host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromRegister {
    /// The complete current list of gateway addresses (sent to worker hosts on registration
    /// and after every change).
    Gateways(Vec<SocketAddr>),
    /// Answer to [`ToRegister::Ping`].
    Pong,
}

/// One client-facing listener of a gateway, announced once per link so that events can
/// carry a small index instead of names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerInfo {
    /// The listener's name (from config).
    pub name: String,
    /// The app (plugin name) its clients talk to.
    pub app: String,
    /// Its client-facing port.
    pub port: u16,
}

/// An app a worker host serves, and the version it runs there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedApp {
    /// The app's name (its plugin file's name).
    pub name: String,
    /// The version of it the host runs.
    pub version: String,
    /// Whether that version exports `presence`: only then do gateways report the app's uids.
    pub presence: bool,
}

/// Who a client is and what its gateway knows of it, sent with each of its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientContext {
    /// The client's id.
    pub id: ClientId,
    /// The client's address.
    pub remote: SocketAddr,
    /// Index into the gateway's [`ListenerInfo`] list.
    pub listener: u16,
    /// Its bound uid.
    pub uid: Option<String>,
    /// Its session as the gateway holds it, shared rather than copied for an in-process link.
    pub session: Arc<Session>,
    /// How many session changes the gateway has applied to this client so far; lets a worker
    /// host tell whether its own in-flight changes are already included in `session`.
    pub session_version: u64,
    /// The event's number among the client's events at its gateway: 1 for its first, one
    /// more for each next, kept when the event is sent again (after a lost worker host), so
    /// that a plugin can tell a repeat; 0 in a context that is not an event's own.
    pub event: u64,
}

/// The WebSocket upgrade request of a client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebSocketRequest {
    /// Path, e.g. `/chat`.
    pub path: String,
    /// Raw query string without `?`.
    pub query: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
}

/// Something that happened to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// It connected (text and frame clients).
    Connect,
    /// Its WebSocket handshake completed: `on-websocket-connect`, then, if that accepted the
    /// client, `on-connect` (a WebSocket client gets no separate `Connect`). Shared, not
    /// owned: the gateway keeps a copy of every event until it is acknowledged, and a
    /// request's headers are most of a connection's copying.
    WebSocketConnect(Arc<WebSocketRequest>),
    /// It sent a message.
    Message(Bytes),
    /// It is gone.
    Close,
    /// `on-uid-online` of this uid, with the client whose binding made it online. Made by the
    /// worker host that decides the uid's presence from the gateways' [`PresenceChange`]s,
    /// never sent: a link that carries one is refused.
    UidOnline(String),
    /// `on-uid-offline` of this uid, as [`EventKind::UidOnline`].
    UidOffline(String),
}

/// A change in which uids a gateway holds, for one app (its listener), sent to the worker host
/// that decides the uid's presence (see ARCHITECTURE.md, "Presence").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceChange {
    /// The gateway's first client bound to the uid: this one.
    Online(ClientContext),
    /// The gateway's last client bound to the uid left it: this one.
    Offline(ClientContext),
    /// The gateway holds the uid (bound by this client) and reported it to another host
    /// before: count it here, no callback.
    Hold(ClientContext),
    /// The uid is now decided by another host: forget this gateway's holding, no callback.
    Release,
}

/// Gateway → worker host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// The gateway's listeners; sent first, and again if they change.
    Listeners {
        /// Drawn by the gateway at its start: a worker host that kept clients of an earlier
        /// run of the same address knows, when this differs, that they are gone.
        run: u64,
        /// The listeners, which events and kept clients name by index.
        listeners: Vec<ListenerInfo>,
    },
    /// A client event.
    Event {
        /// The client.
        client: ClientContext,
        /// What happened.
        kind: EventKind,
        /// The client's window of events in flight is more than half used: acknowledge this
        /// event as soon as it is done. Others may wait a moment to share a `Done`.
        ack_now: bool,
    },
    /// The answer to [`ToGateway::Query`] number `id`.
    Reply {
        /// The query's id.
        id: u64,
        /// The answer.
        reply: Reply,
    },
    /// Liveness; the worker host answers [`ToGateway::Pong`].
    Ping,
    /// Answer to [`ToGateway::Ping`].
    Pong,
    /// Answer to [`ToGateway::Leaving`], once every event the gateway sent on this link is
    /// done: nothing more will come.
    Left,
    /// The gateway's holding of `uid` changed; the receiver decides the uid's presence.
    Presence {
        /// The listener (so the app) of the clients.
        listener: u16,
        /// The uid.
        uid: String,
        /// What changed.
        change: PresenceChange,
    },
    /// Answer to [`ToGateway::Mark`] `n`, sent when the gateway read it: every command the
    /// worker host sent before it on this link was received and run.
    Marked(u64),
    /// The receiver is now the keeper of the clients of `keep` (or they changed: their uid),
    /// and no longer of those of `forget` (they closed, or moved to another keeper): it runs
    /// the `on-close` of those it keeps if this gateway is lost (ARCHITECTURE.md, "Delivery").
    /// A link's first ones (after [`ToWorker::Listeners`]) tell everything it keeps afresh.
    Keep {
        /// Clients to keep, or whose uid changed.
        keep: Vec<KeptClient>,
        /// Clients to forget.
        forget: Vec<ClientId>,
    },
}

/// A client as its keeper holds it: what its `on-close` is told if its gateway is lost (no
/// session: the gateway takes it along).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptClient {
    /// The client's id.
    pub id: ClientId,
    /// The client's address.
    pub remote: SocketAddr,
    /// Index into the gateway's [`ListenerInfo`] list.
    pub listener: u16,
    /// Its bound uid.
    pub uid: Option<String>,
}

/// Worker host (or push client) → gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToGateway {
    /// Do this.
    Command(Command),
    /// Answer this with [`ToWorker::Reply`] carrying the same `id`.
    Query {
        /// Chosen by the asker, unique among its pending queries on this link.
        id: u64,
        /// The question.
        query: Query,
    },
    /// Answer to [`ToWorker::Ping`].
    Pong,
    /// The worker host is done with this many events of each client (run or dropped): the
    /// gateway lets that client send as many more (its window of events in flight).
    Done(Vec<(ClientId, u32)>),
    /// Liveness; the gateway answers [`ToWorker::Pong`].
    Ping,
    /// The worker host is stopping: route no new client to it, move each of its clients to
    /// another once that client's events here are done, and answer [`ToWorker::Left`].
    Leaving,
    /// The worker host's plugin table, sent when the link starts and whenever it changes; the
    /// gateway keeps the latest while the link lasts and answers it to [`Query::Cluster`].
    Report(WorkerReport),
    /// Every app the worker host serves now: sent first on each link and again whenever its
    /// plugin set changes. A gateway routes a client only to hosts that serve its app.
    Apps {
        /// The worker host's id, drawn at its start: gateways rank hosts by it to agree on
        /// which one decides a uid's presence.
        host: u64,
        /// The apps.
        apps: Vec<ServedApp>,
    },
    /// An event the worker host did not run because it does not serve the client's app (an
    /// unload raced the event): the gateway sends it to a host that does, ahead of the
    /// client's later events. It was sent before the event's `Done`.
    Returned {
        /// The client, as the event carried it.
        client: ClientContext,
        /// What happened.
        kind: EventKind,
    },
    /// Answer with [`ToWorker::Marked`] `n` once read: the worker host waits for it before
    /// acknowledging events whose callbacks sent commands before it on this link (their
    /// `Done` goes to another gateway, and must not get there first).
    Mark(u64),
}
