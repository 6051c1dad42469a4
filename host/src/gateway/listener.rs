//! The client-facing listener: accepts connections, enforces `max_connections` and
//! `max_connections_per_ip`, completes the protocol's handshake within `handshake_timeout`
//! (refusing an `Origin` not in `allowed_origins`), and hands each client to
//! a [`super::conn::Connection`] in a task of its own, so one client's failure never reaches
//! the accept loop.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::conn::{ConnShared, Connection};
use super::counters::Counters;
use super::protocol::stream::ClientStream;
use super::protocol::ws::{self, WsFraming};
use super::protocol::{Framing, frame::Frames, text::Lines};
use crate::wire::messages::WebSocketRequest;

/// The protocol a listener speaks, with what it needs to speak it.
pub enum Transport {
    /// `ws://`.
    Ws,
    /// `wss://`: WebSocket over TLS.
    Wss(TlsAcceptor),
    /// `text://`.
    Text,
    /// `frame://`.
    Frame,
}

/// How one listener accepts clients.
pub struct ListenerConfig {
    /// The protocol.
    pub transport: Transport,
    /// Most clients at once; a connection over it is closed on accept.
    pub max_connections: usize,
    /// Most clients at once from one IP address (0: no cap); a connection over it is closed
    /// on accept.
    pub max_connections_per_ip: usize,
    /// WebSocket: the `Origin` values a handshake may carry; empty accepts any.
    pub allowed_origins: Vec<String>,
    /// Largest inbound message.
    pub max_message_size: usize,
    /// Longest the TLS and WebSocket handshakes may take together.
    pub handshake_timeout: Duration,
}

/// Longest a stopping listener waits for its clients to close: each is given about a second
/// for its close frame, and its close event may wait for room on a worker host's link.
const CLOSE_ALL_GRACE: Duration = Duration::from_secs(5);

/// Why a client never got past its TLS or WebSocket handshake.
#[derive(Debug, thiserror::Error)]
enum AcceptError {
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("WebSocket handshake failed: {0}")]
    WebSocket(ws::UpgradeError),
    #[error("WebSocket handshake refused with 403: origin {0:?} is not in allowed_origins")]
    Origin(Option<String>),
    #[error("handshake not completed within handshake_timeout ({0:?})")]
    TimedOut(Duration),
}

/// Accepts clients until shutdown, then waits until every client is closed (each gets a
/// WebSocket 1001 "going away", and its worker host its close event), for at most
/// [`CLOSE_ALL_GRACE`].
pub async fn serve(listener: TcpListener, config: ListenerConfig, shared: ConnShared) {
    let shared = Arc::new(shared);
    let clients = TaskTracker::new();
    accept(listener, config, &shared, &clients).await;
    shared.state.stop_clients();
    clients.close();
    if tokio::time::timeout(CLOSE_ALL_GRACE, clients.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = clients.len(),
            "clients still closing after {CLOSE_ALL_GRACE:?}; stopping anyway"
        );
    }
}

async fn accept(
    listener: TcpListener,
    config: ListenerConfig,
    shared: &Arc<ConnShared>,
    clients: &TaskTracker,
) {
    // Taken before a client is served and held until it is gone. Refusing on accept (rather
    // than not accepting) gives the refused client an immediate close instead of a hang in
    // the backlog, and never touches the clients already connected.
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let per_ip = Arc::new(PerIp {
        max: config.max_connections_per_ip,
        held: Mutex::default(),
    });
    let config = Arc::new(config);
    loop {
        let (socket, remote) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of descriptors: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let refused = Counters::bump(&shared.counters.refused);
            // The 1st, 2nd, 4th, 8th … so a flood is visible without flooding the log.
            if refused.is_power_of_two() {
                tracing::warn!(
                    %remote,
                    max_connections = config.max_connections,
                    refused,
                    "connection refused: the listener is full"
                );
            }
            drop(socket);
            continue;
        };
        let Some(ip_slot) = per_ip.take(remote.ip()) else {
            let refused = Counters::bump(&shared.counters.refused_per_ip);
            if refused.is_power_of_two() {
                tracing::warn!(
                    %remote,
                    max_connections_per_ip = config.max_connections_per_ip,
                    refused,
                    "connection refused: its address holds max_connections_per_ip \
                     (behind a reverse proxy, set it to 0)"
                );
            }
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let (shared, config) = (shared.clone(), config.clone());
        let slots = (slot, ip_slot);
        // One spawn per protocol: a task's allocation is sized for its future's largest
        // state, kept for the connection's life, so no protocol pays for another's.
        let max = config.max_message_size;
        match &config.transport {
            Transport::Text => holding(
                clients,
                slots,
                framed(socket, Lines::new(max), shared, remote),
            ),
            Transport::Frame => holding(
                clients,
                slots,
                framed(socket, Frames::new(max), shared, remote),
            ),
            Transport::Ws => {
                let handshake =
                    handshake(async { Ok(socket) }, config.clone(), shared.clone(), remote);
                holding(clients, slots, websocket(handshake, remote, max, shared));
            }
            Transport::Wss(tls) => {
                let tls = tls.clone();
                let secured = async move { tls.accept(socket).await.map_err(AcceptError::Tls) };
                let handshake = handshake(secured, config.clone(), shared.clone(), remote);
                holding(clients, slots, websocket(handshake, remote, max, shared));
            }
        }
    }
}

/// Runs `connection` as a task of its own that gives back the listener's `slots` when it ends.
///
/// The connection futures here are put together by plain functions and combinators, not
/// `async` blocks that await them: a generator that awaits a future it was given or built
/// keeps room for it twice (the value and the awaited copy), and a task's allocation is
/// kept for the connection's whole life.
fn holding(
    clients: &TaskTracker,
    slots: (OwnedSemaphorePermit, IpSlot),
    connection: impl Future<Output = ()> + Send + 'static,
) {
    clients.spawn(connection.map(move |()| drop(slots)));
}

/// Serves a client of a length-delimited protocol (`text`, `frame`) spoken with `framing`.
fn framed<F: Framing + Send + 'static>(
    socket: TcpStream,
    framing: F,
    shared: Arc<ConnShared>,
    remote: SocketAddr,
) -> Connection<TcpStream, F> {
    let stream = ClientStream::new(socket, framing, BytesMut::new());
    Connection::new(shared, remote, stream, None)
}

/// The connections each IP address holds, for `max_connections_per_ip`.
struct PerIp {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its address's count, given back when dropped.
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// A place for one more connection from `ip`, if it holds fewer than the cap.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if self.max > 0 {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let n = held.entry(ip).or_default();
            if *n >= self.max {
                return None;
            }
            *n += 1;
        }
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if self.per_ip.max == 0 {
            return;
        }
        let mut held = self.per_ip.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// What a WebSocket handshake yields: the stream, the upgrade request, the bytes read past it.
type Accepted<S> = (S, WebSocketRequest, BytesMut);

/// The TLS and WebSocket handshakes on the stream `transport` yields, bounded by
/// `handshake_timeout`; none if the client was refused (counted and logged). Boxed by a
/// plain function: a task's allocation is sized for its future's largest state and kept for
/// the connection's whole life, so the handshake's state (TLS and upgrade buffers) lives in
/// a box of its own, freed once the client is in.
///
/// A refusal is counted while the refused socket is still held, so that whoever sees the
/// socket close sees the counter too.
fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    transport: impl Future<Output = Result<S, AcceptError>> + Send + 'static,
    config: Arc<ListenerConfig>,
    shared: Arc<ConnShared>,
    remote: SocketAddr,
) -> Pin<Box<impl Future<Output = Option<Accepted<S>>> + Send>> {
    Box::pin(async move {
        let timeout = config.handshake_timeout;
        let upgrade = async {
            let mut stream = transport
                .await
                .inspect_err(|e| refused(&shared, remote, e))
                .ok()?;
            match ws::accept(&mut stream, &config.allowed_origins).await {
                Ok((request, rest)) => Some((stream, request, rest)),
                Err(e) => {
                    let e = match e {
                        ws::UpgradeError::Origin(origin) => AcceptError::Origin(origin),
                        e => AcceptError::WebSocket(e),
                    };
                    refused(&shared, remote, &e);
                    None
                }
            }
        };
        let mut upgrade = std::pin::pin!(tokio::time::timeout(timeout, upgrade));
        match upgrade.as_mut().await {
            Ok(accepted) => accepted,
            Err(_) => {
                refused(&shared, remote, &AcceptError::TimedOut(timeout));
                None
            }
        }
    })
}

/// Serves the client once `handshake` let it in.
fn websocket<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    handshake: Pin<Box<impl Future<Output = Option<Accepted<S>>> + Send + 'static>>,
    remote: SocketAddr,
    max_message_size: usize,
    shared: Arc<ConnShared>,
) -> impl Future<Output = ()> + Send {
    handshake.then(move |accepted| match accepted {
        Some((stream, request, rest)) => {
            let stream = ClientStream::new(stream, WsFraming::new(max_message_size), rest);
            let request = Some(Box::new(request));
            Either::Left(Connection::new(shared, remote, stream, request))
        }
        None => Either::Right(std::future::ready(())),
    })
}

/// Counts and logs a client that never got past its handshakes.
fn refused(shared: &ConnShared, remote: SocketAddr, e: &AcceptError) {
    match e {
        AcceptError::Origin(_) => {
            let refused = Counters::bump(&shared.counters.origins_refused);
            if refused.is_power_of_two() {
                tracing::warn!(%remote, refused, "{e}");
            }
        }
        e => {
            Counters::bump(&shared.counters.failed_handshakes);
            tracing::debug!(%remote, "{e}");
        }
    }
}
