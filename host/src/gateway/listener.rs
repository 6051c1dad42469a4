//! The client-facing listener: accepts connections, enforces `max_connections` and
//! `max_connections_per_ip`, completes the protocol's handshake within `handshake_timeout`
//! (refusing an `Origin` not in `allowed_origins`), and hands each client to
//! [`super::conn::serve`] in a task of its own, so one client's failure never reaches the
//! accept loop.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::task::TaskTracker;

use super::conn::{self, ConnShared};
use super::counters::Counters;
use super::outbox::Outbound;
use super::protocol::{self, ReadError, frame::Frames, text::Lines, ws};

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
    WebSocket(tungstenite::Error),
    #[error("WebSocket handshake refused with 403: origin {0:?} is not in allowed_origins")]
    Origin(Option<String>),
    #[error("handshake not completed within handshake_timeout ({0:?})")]
    TimedOut(Duration),
}

/// Accepts clients until shutdown, then waits until every client is closed (each gets a
/// WebSocket 1001 "going away", and its worker host its close event), for at most
/// [`CLOSE_ALL_GRACE`].
pub async fn serve(listener: TcpListener, config: ListenerConfig, shared: ConnShared) {
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
    shared: &ConnShared,
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
            Transport::Ws => holding(clients, slots, async move {
                websocket(async { Ok(socket) }, remote, &config, shared).await;
            }),
            Transport::Wss(tls) => {
                let tls = tls.clone();
                holding(clients, slots, async move {
                    let secured = async { tls.accept(socket).await.map_err(AcceptError::Tls) };
                    websocket(secured, remote, &config, shared).await;
                })
            }
        }
    }
}

/// Runs `connection` as a task of its own that gives back the listener's `slots` when it ends.
fn holding(
    clients: &TaskTracker,
    slots: (OwnedSemaphorePermit, IpSlot),
    connection: impl Future<Output = ()> + Send + 'static,
) {
    clients.spawn(async move {
        connection.await;
        drop(slots);
    });
}

/// Serves a client of a length-delimited protocol (`text`, `frame`) spoken with `codec`.
async fn framed<C>(socket: TcpStream, codec: C, shared: ConnShared, remote: SocketAddr)
where
    C: Decoder<Item = Bytes, Error = ReadError>
        + Encoder<Outbound, Error = std::io::Error>
        + Clone
        + Send
        + 'static,
{
    let (r, w) = socket.into_split();
    let (inbound, outbound) = protocol::framed(r, w, codec);
    conn::serve(shared, remote, inbound, outbound, None).await;
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

/// Upgrades the stream `transport` yields to WebSocket and serves the client.
async fn websocket<S>(
    transport: impl Future<Output = Result<S, AcceptError>>,
    remote: SocketAddr,
    config: &ListenerConfig,
    shared: ConnShared,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        let stream = transport.await?;
        ws::accept(stream, config.max_message_size, &config.allowed_origins)
            .await
            .map_err(|e| match e {
                ws::HandshakeError::Origin(origin) => AcceptError::Origin(origin),
                ws::HandshakeError::WebSocket(e) => AcceptError::WebSocket(e),
            })
    };
    // A task's allocation is sized for its largest state, kept for the connection's whole
    // life: boxing the handshake (TLS and upgrade buffers) frees it once the client is in,
    // and boxing the connection keeps the two from adding up.
    // The refused socket is closed only when `handshake` drops, after the refusal is counted:
    // whoever sees the close sees the counter too.
    let mut handshake = Box::pin(tokio::time::timeout(config.handshake_timeout, handshake));
    let accepted = handshake
        .as_mut()
        .await
        .unwrap_or(Err(AcceptError::TimedOut(config.handshake_timeout)));
    match accepted {
        Ok((inbound, outbound, request)) => {
            drop(handshake);
            Box::pin(conn::serve(
                shared,
                remote,
                inbound,
                outbound,
                Some(request),
            ))
            .await;
        }
        Err(e @ AcceptError::Origin(_)) => {
            let refused = Counters::bump(&shared.counters.origins_refused);
            if refused.is_power_of_two() {
                tracing::warn!(%remote, refused, "{e}");
            }
        }
        Err(e) => {
            Counters::bump(&shared.counters.failed_handshakes);
            tracing::debug!(%remote, "{e}");
        }
    }
}
