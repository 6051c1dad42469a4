//! The client-facing listener: accepts connections, admits them under `max_connections` and
//! `max_connections_per_ip` ([`super::admission`]), completes the protocol's handshake within
//! `handshake_timeout` (refusing an `Origin` not in `allowed_origins`), and hands each client
//! to a [`super::conn::Connection`] in a task of its own, so one client's failure never
//! reaches the accept loop.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::admission::{Full, Seat};
use super::conn::{ConnShared, Connection};
use super::counters::Counters;
use super::protocol::stream::ClientStream;
use super::protocol::ws::{self, WsFraming};
use super::protocol::{Framing, frame::Frames, text::Lines};

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
    accept(listener, config, &shared).await;
    shared.state.stop_clients();
    let admission = &shared.admission;
    if tokio::time::timeout(CLOSE_ALL_GRACE, admission.emptied())
        .await
        .is_err()
    {
        tracing::warn!(
            left = admission.held(),
            "clients still closing after {CLOSE_ALL_GRACE:?}; stopping anyway"
        );
    }
}

async fn accept(listener: TcpListener, config: ListenerConfig, shared: &Arc<ConnShared>) {
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
        let seat = match shared.admission.admit(remote.ip()) {
            Ok(seat) => seat,
            Err(full) => {
                turned_away(shared, remote, full);
                drop(socket);
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        // One spawn per protocol: a task's allocation is sized for its future's largest
        // state, kept for the connection's life, so no protocol pays for another's.
        let max = config.max_message_size;
        match &config.transport {
            Transport::Text => {
                tokio::spawn(framed(socket, Lines::new(max), shared, seat, remote));
            }
            Transport::Frame => {
                tokio::spawn(framed(socket, Frames::new(max), shared, seat, remote));
            }
            Transport::Ws => {
                let transport = async { Ok(socket) };
                let handshake = handshake(transport, config.clone(), shared, seat, remote);
                tokio::spawn(websocket(handshake));
            }
            Transport::Wss(tls) => {
                let tls = tls.clone();
                let secured = async move { tls.accept(socket).await.map_err(AcceptError::Tls) };
                let handshake = handshake(secured, config.clone(), shared, seat, remote);
                tokio::spawn(websocket(handshake));
            }
        }
    }
}

/// Counts a connection refused on accept, and logs the 1st, 2nd, 4th, 8th … of each kind,
/// so that a flood is visible without flooding the log.
fn turned_away(shared: &ConnShared, remote: SocketAddr, full: Full) {
    let counter = match full {
        Full::Listener => &shared.counters.refused,
        Full::Address => &shared.counters.refused_per_ip,
    };
    let refused = Counters::bump(counter);
    if !refused.is_power_of_two() {
        return;
    }
    match full {
        Full::Listener => tracing::warn!(
            %remote,
            max_connections = shared.admission.max(),
            refused,
            "connection refused: the listener is full"
        ),
        Full::Address => tracing::warn!(
            %remote,
            max_connections_per_ip = shared.admission.max_per_ip(),
            refused,
            "connection refused: its address holds max_connections_per_ip \
             (behind a reverse proxy, set it to 0)"
        ),
    }
}

/// Serves a client of a length-delimited protocol (`text`, `frame`) spoken with `framing`.
fn framed<F: Framing + Send + 'static>(
    socket: TcpStream,
    framing: F,
    shared: Arc<ConnShared>,
    seat: Seat,
    remote: SocketAddr,
) -> Connection<TcpStream, F> {
    let stream = ClientStream::new(socket, framing, BytesMut::new());
    Connection::new(shared, seat, remote, stream, None)
}

/// The TLS and WebSocket handshakes on the stream `transport` yields, bounded by
/// `handshake_timeout`, and the client's connection once they let it in; none if the client
/// was refused (counted and logged). Boxed by a plain function: a task's allocation is sized
/// for its future's largest state and kept for the connection's whole life, so the
/// handshake's state (TLS and upgrade buffers, the seat, what the connection is made of)
/// lives in a box of its own, freed once the client is in.
///
/// A refusal is counted while the refused socket is still held, so that whoever sees the
/// socket close sees the counter too.
fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    transport: impl Future<Output = Result<S, AcceptError>> + Send + 'static,
    config: Arc<ListenerConfig>,
    shared: Arc<ConnShared>,
    seat: Seat,
    remote: SocketAddr,
) -> Pin<Box<impl Future<Output = Option<Connection<S, WsFraming>>> + Send>> {
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
        let upgraded = {
            let mut upgrade = std::pin::pin!(tokio::time::timeout(timeout, upgrade));
            upgrade.as_mut().await
        };
        let (stream, request, rest) = match upgraded {
            Ok(accepted) => accepted?,
            Err(_) => {
                refused(&shared, remote, &AcceptError::TimedOut(timeout));
                return None;
            }
        };
        let stream = ClientStream::new(stream, WsFraming::new(config.max_message_size), rest);
        let request = Some(Arc::new(request));
        Some(Connection::new(shared, seat, remote, stream, request))
    })
}

/// Serves the client once `handshake` let it in.
fn websocket<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    handshake: Pin<Box<impl Future<Output = Option<Connection<S, WsFraming>>> + Send + 'static>>,
) -> impl Future<Output = ()> + Send {
    handshake.then(|connection| match connection {
        Some(connection) => Either::Left(connection),
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

/// The size of the future a client's task runs, by protocol (`ws`, `text`): what the task of
/// every idle connection holds, for the per-connection budget test.
#[cfg(test)]
pub(super) async fn task_sizes(shared: Arc<ConnShared>) -> [(&'static str, usize); 2] {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let remote = listener.local_addr().unwrap();
    let _client = TcpStream::connect(remote).await.unwrap();
    let (socket, _) = listener.accept().await.unwrap();
    let seat = || shared.admission.admit(remote.ip()).ok().unwrap();
    let text = framed(socket, Lines::new(1024), shared.clone(), seat(), remote);
    let config = Arc::new(ListenerConfig {
        transport: Transport::Ws,
        allowed_origins: Vec::new(),
        max_message_size: 1024,
        handshake_timeout: Duration::from_secs(1),
    });
    let transport = std::future::pending::<Result<TcpStream, AcceptError>>();
    let ws = websocket(handshake(transport, config, shared.clone(), seat(), remote));
    [
        ("ws", std::mem::size_of_val(&ws)),
        ("text", std::mem::size_of_val(&text)),
    ]
}
