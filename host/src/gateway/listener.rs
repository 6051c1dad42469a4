//! The client-facing listener: accepts connections, enforces `max_connections` and
//! `max_connections_per_ip`, completes the protocol's handshake within `handshake_timeout`
//! (refusing an `Origin` not in `allowed_origins`), and hands each client to a
//! [`super::conn::Connection`] in a task of its own, so one client's failure never reaches the
//! accept loop.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

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
    let admission = Arc::new(Admission {
        max: config.max_connections,
        max_per_ip: config.max_connections_per_ip,
        held: AtomicUsize::new(0),
        per_ip: Mutex::default(),
        emptied: Notify::new(),
    });
    accept(listener, config, &shared, &admission).await;
    shared.state.stop_clients();
    if tokio::time::timeout(CLOSE_ALL_GRACE, admission.emptied())
        .await
        .is_err()
    {
        tracing::warn!(
            left = admission.held.load(Ordering::Acquire),
            "clients still closing after {CLOSE_ALL_GRACE:?}; stopping anyway"
        );
    }
}

async fn accept(
    listener: TcpListener,
    config: ListenerConfig,
    shared: &Arc<ConnShared>,
    admission: &Arc<Admission>,
) {
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
        let seat = match admission.admit(remote.ip()) {
            Ok(seat) => seat,
            Err(full) => {
                turned_away(&shared.counters, &config, remote, full);
                drop(socket);
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let (shared, config) = (shared.clone(), config.clone());
        // One spawn per protocol: a task's allocation is sized for its future's largest
        // state, kept for the connection's life, so no protocol pays for another's.
        let max = config.max_message_size;
        match &config.transport {
            Transport::Text => holding(seat, framed(socket, Lines::new(max), shared, remote)),
            Transport::Frame => holding(seat, framed(socket, Frames::new(max), shared, remote)),
            Transport::Ws => {
                let handshake =
                    handshake(async { Ok(socket) }, config.clone(), shared.clone(), remote);
                holding(seat, websocket(handshake, remote, max, shared));
            }
            Transport::Wss(tls) => {
                let tls = tls.clone();
                let secured = async move { tls.accept(socket).await.map_err(AcceptError::Tls) };
                let handshake = handshake(secured, config.clone(), shared.clone(), remote);
                holding(seat, websocket(handshake, remote, max, shared));
            }
        }
    }
}

/// Counts a connection refused on accept, and logs the 1st, 2nd, 4th, 8th … of each kind,
/// so that a flood is visible without flooding the log.
fn turned_away(counters: &Counters, config: &ListenerConfig, remote: SocketAddr, full: Full) {
    let counter = match full {
        Full::Listener => &counters.refused,
        Full::Address => &counters.refused_per_ip,
    };
    let refused = Counters::bump(counter);
    if !refused.is_power_of_two() {
        return;
    }
    match full {
        Full::Listener => tracing::warn!(
            %remote,
            max_connections = config.max_connections,
            refused,
            "connection refused: the listener is full"
        ),
        Full::Address => tracing::warn!(
            %remote,
            max_connections_per_ip = config.max_connections_per_ip,
            refused,
            "connection refused: its address holds max_connections_per_ip \
             (behind a reverse proxy, set it to 0)"
        ),
    }
}

/// Runs `connection` as a task of its own that gives back its `seat` when it ends.
fn holding(seat: Seat, connection: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(held(seat, connection));
}

/// The future a client's task runs: `connection`, then its `seat` given back.
///
/// The connection futures here are put together by plain functions and combinators, not
/// `async` blocks that await them: a generator that awaits a future it was given or built
/// keeps room for it twice (the value and the awaited copy), and a task's allocation is
/// kept for the connection's whole life.
fn held(seat: Seat, connection: impl Future<Output = ()>) -> impl Future<Output = ()> {
    connection.map(move |()| drop(seat))
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

/// The connections a listener holds, under `max_connections` and `max_connections_per_ip`:
/// a seat is taken on accept, before a client is served, and given back when its task ends
/// (so the listener's stop waits for the seats, not for a task set of its own). Refusing on
/// accept (rather than not accepting) gives the refused client an immediate close instead of
/// a hang in the backlog, and never touches the clients already connected.
struct Admission {
    max: usize,
    /// 0: no cap per address.
    max_per_ip: usize,
    /// Seats taken.
    held: AtomicUsize,
    /// Seats taken by each address, while there is a cap per address.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Woken when the last seat is given back.
    emptied: Notify,
}

/// Why a connection was refused on accept.
enum Full {
    /// The listener holds `max_connections`.
    Listener,
    /// The connection's address holds `max_connections_per_ip`.
    Address,
}

/// One connection's seat, given back when dropped. Held in its task, so kept small: every
/// idle connection pays for it.
struct Seat {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// A seat for one more connection from `ip`, if neither cap is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Seat, Full> {
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.give_back();
            return Err(Full::Listener);
        }
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = per_ip.entry(ip).or_default();
            if *n >= self.max_per_ip {
                drop(per_ip);
                self.give_back();
                return Err(Full::Address);
            }
            *n += 1;
        }
        Ok(Seat {
            admission: self.clone(),
            ip,
        })
    }

    fn give_back(&self) {
        if self.held.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.emptied.notify_waiters();
        }
    }

    /// Resolves once every seat is given back.
    async fn emptied(&self) {
        loop {
            let emptied = self.emptied.notified();
            let mut emptied = std::pin::pin!(emptied);
            // Enabled before looking: a last seat given back after the look wakes it.
            emptied.as_mut().enable();
            if self.held.load(Ordering::Acquire) == 0 {
                return;
            }
            emptied.await;
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let admission = &self.admission;
        if admission.max_per_ip > 0 {
            let mut per_ip = admission.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
        admission.give_back();
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

/// The size of the future a client's task runs, by protocol (`ws`, `text`): what the task of
/// every idle connection holds, for the per-connection budget test.
#[cfg(test)]
pub(super) async fn task_sizes(shared: Arc<ConnShared>) -> [(&'static str, usize); 2] {
    let admission = Arc::new(Admission {
        max: 2,
        max_per_ip: 0,
        held: AtomicUsize::new(0),
        per_ip: Mutex::default(),
        emptied: Notify::new(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let remote = listener.local_addr().unwrap();
    let _client = TcpStream::connect(remote).await.unwrap();
    let (socket, _) = listener.accept().await.unwrap();
    let seat = || admission.admit(remote.ip()).ok().unwrap();
    let text = held(
        seat(),
        framed(socket, Lines::new(1024), shared.clone(), remote),
    );
    let config = Arc::new(ListenerConfig {
        transport: Transport::Ws,
        max_connections: 2,
        max_connections_per_ip: 0,
        allowed_origins: Vec::new(),
        max_message_size: 1024,
        handshake_timeout: Duration::from_secs(1),
    });
    let transport = std::future::pending::<Result<TcpStream, AcceptError>>();
    let handshake = handshake(transport, config, shared.clone(), remote);
    let ws = held(seat(), websocket(handshake, remote, 1024, shared));
    [
        ("ws", std::mem::size_of_val(&ws)),
        ("text", std::mem::size_of_val(&text)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, max_per_ip: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max,
            max_per_ip,
            held: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            emptied: Notify::new(),
        })
    }

    #[test]
    fn places_are_refused_past_either_cap_and_given_back_when_dropped() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let admission = admission(2, 1);
        let first = admission.admit(a).ok().expect("room");
        assert!(matches!(admission.admit(a), Err(Full::Address)));
        let bystander = admission.admit(b).ok().expect("another address has room");
        assert!(matches!(admission.admit(b), Err(Full::Listener)));
        drop(first);
        assert!(admission.admit(a).is_ok(), "the seat came back");
        drop(bystander);
        assert_eq!(
            admission.held.load(Ordering::Acquire),
            0,
            "refusals hold nothing"
        );
    }

    #[tokio::test]
    async fn a_stopping_listener_waits_for_the_last_place() {
        let admission = admission(4, 0);
        let ip = "10.0.0.1".parse().unwrap();
        let seats = [admission.admit(ip).ok(), admission.admit(ip).ok()];
        let emptied = admission.clone();
        let waiting = tokio::spawn(async move { emptied.emptied().await });
        let [first, second] = seats;
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one client is still closing");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the last seat")
            .unwrap();
    }
}
