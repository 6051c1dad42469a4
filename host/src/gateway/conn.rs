//! One client connection, whatever its protocol: registers the client, forwards its events
//! to its worker host, runs its heartbeat, and writes what the gateway queues for it.
//!
//! A protocol module turns the socket into a stream of inbound messages and a sink of
//! [`Outbound`] items; everything else (ids, events, the outbox, the heartbeat, closing) is
//! here, once. The task runs a reader and a writer side by side and stops both when either
//! ends, when its outbox is killed (destroy, slow reader) or when the gateway stops. So a
//! client that stops reading blocks only its own writer, and a kill still ends it at once.
//! Queued messages are fed to the sink in a batch and flushed once, so a burst of broadcasts
//! costs one write.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{Either, ready};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::counters::Counters;
use super::heartbeat::{Beat, Heartbeat, HeartbeatConfig};
use super::outbox::{Close, Kill, Outbound, Outbox, OutboxReader, outbox};
use super::protocol::{Inbound, ReadError};
use super::router::{Binding, Router, Unrouted};
use super::state::GatewayState;
use crate::client_id::ClientId;
use crate::wire::messages::{ClientContext, EventKind, ToWorker, WebSocketRequest};

/// Most queued messages written in one batch before flushing.
const WRITE_BATCH: usize = 64;

/// Longest the last words to a leaving client (a close frame, the socket's shutdown) may take:
/// a client that does not read them must not keep its task alive.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What every connection of one listener shares.
#[derive(Clone)]
pub struct ConnShared {
    /// The gateway's state.
    pub state: Arc<GatewayState>,
    /// The worker-host links.
    pub router: Arc<Router>,
    /// The listener's index in the gateway's listener list.
    pub listener: u16,
    /// Fired when the gateway stops.
    pub shutdown: CancellationToken,
    /// The listener's heartbeat.
    pub heartbeat: HeartbeatConfig,
    /// `send_buffer`: each client's outbox budget in bytes.
    pub send_buffer: usize,
    /// `idle_timeout`: how long a client may send no complete message; zero is forever.
    pub idle_timeout: Duration,
    /// Where limits that cut clients off are counted.
    pub counters: Arc<Counters>,
}

/// How a connection ends.
enum End {
    /// The client left or its socket failed: just close the socket.
    Done,
    /// Write this close, then close the socket.
    Close(Close),
    /// Drop the socket at once, writing nothing more.
    Drop,
}

/// Serves one client until it leaves, is closed, or the gateway stops.
pub async fn serve<R, W>(
    shared: Arc<ConnShared>,
    remote: SocketAddr,
    mut inbound: R,
    mut outbound: W,
    handshake: Option<Box<WebSocketRequest>>,
) where
    R: Stream<Item = Result<Inbound, ReadError>> + Unpin,
    W: Sink<Outbound> + Unpin,
{
    let (outbox, queue) = outbox(shared.send_buffer);
    let registered = Registered::add(&shared, remote, outbox.clone());
    let id = registered.id;
    let mut link = ClientLink {
        shared: &shared,
        id,
        binding: Binding::default(),
        events: 0,
    };
    let end = tokio::select! {
        kill = queue.killed() => killed(&shared, id, kill),
        end = write(&mut outbound, &queue) => end,
        end = read(&mut link, &mut inbound, &outbox, handshake) => end,
    };
    // Leave the state before the socket closes, so whoever sees the close sees the client
    // gone from its groups and uid too.
    let last = registered.remove();
    if !matches!(end, End::Drop) {
        let farewell = async {
            if let End::Close(close) = end {
                let _ = outbound.send(Outbound::Close(close)).await;
            }
            let _ = outbound.close().await;
        };
        let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, farewell)).await;
    }
    drop(outbound);
    if let Some(last) = last {
        // A close no worker host took is counted as a dropped event; the client is gone.
        if let Err(e) = link.send(last, EventKind::Close).await {
            tracing::debug!(client = %id, "close event not delivered: {e}");
        }
    }
}

/// A client's entry in the gateway's state, removed when the connection ends however it
/// ends: a panic in its task unwinds through this and leaves no ghost client counted.
struct Registered<'a> {
    state: &'a GatewayState,
    id: ClientId,
    removed: bool,
}

impl<'a> Registered<'a> {
    fn add(shared: &'a ConnShared, remote: SocketAddr, outbox: Outbox) -> Self {
        let id = shared.state.add(remote, shared.listener, outbox);
        crate::metrics::CONNECTIONS_OPENED.inc();
        Self {
            state: &shared.state,
            id,
            removed: false,
        }
    }

    /// Removes the client; its last context, for its close event.
    fn remove(mut self) -> Option<ClientContext> {
        self.removed = true;
        crate::metrics::CONNECTIONS_CLOSED.inc();
        self.state.remove(self.id)
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if !self.removed {
            crate::metrics::CONNECTIONS_CLOSED.inc();
            self.state.remove(self.id);
        }
    }
}

fn killed(shared: &ConnShared, id: ClientId, kill: Kill) -> End {
    match kill {
        Kill::Stopping => return End::Close(Close::GoingAway),
        Kill::SlowReader => {
            let n = Counters::bump(&shared.counters.slow_readers);
            tracing::info!(
                client = %id,
                send_buffer = shared.send_buffer,
                slow_readers = n,
                "client disconnected: it fell send_buffer behind"
            );
        }
        Kill::Destroyed => {}
    }
    End::Drop
}

/// Forwards the client's events and runs its heartbeat until the connection should end.
async fn read<R>(
    link: &mut ClientLink<'_>,
    inbound: &mut R,
    outbox: &Outbox,
    handshake: Option<Box<WebSocketRequest>>,
) -> End
where
    R: Stream<Item = Result<Inbound, ReadError>> + Unpin,
{
    let mut heartbeat = Heartbeat::start(&link.shared.heartbeat);
    let idle_timeout = link.shared.idle_timeout;
    // Armed once per timeout, not per message (a timer-wheel update per message showed in
    // the profile): a message only notes its time, and an expiry that finds a newer message
    // re-arms from it. Boxed, and only when there is a timeout: a timer's bytes would
    // otherwise be held by every connection.
    let mut idle = (!idle_timeout.is_zero()).then(|| Box::pin(tokio::time::sleep(idle_timeout)));
    let mut last_message = Instant::now();
    // A WebSocket client's `on-connect` runs on the worker host only once
    // `on-websocket-connect` has accepted it.
    let first = match handshake {
        Some(request) => EventKind::WebSocketConnect(*request),
        None => EventKind::Connect,
    };
    if !link.event(first).await {
        return End::Done;
    }
    // Its `on-connect` is on its way: from now on a keeper runs its `on-close` if this
    // gateway is lost.
    link.shared.state.keep(link.id);
    loop {
        tokio::select! {
            beat = heartbeat.tick() => match beat {
                Beat::Wait => {}
                // Over budget, the push kills the connection: the caller sees it.
                Beat::Send(ping) => {
                    outbox.push(ping);
                }
                Beat::Destroy => {
                    Counters::bump(&link.shared.counters.heartbeat_timeouts);
                    tracing::debug!(client = %link.id, "client silent past ping_not_response_limit");
                    return End::Drop;
                }
            },
            () = expired(&mut idle) => {
                let deadline = last_message + idle_timeout;
                if deadline > Instant::now() {
                    if let Some(timer) = idle.as_mut() {
                        timer.as_mut().reset(deadline);
                    }
                    continue;
                }
                let n = Counters::bump(&link.shared.counters.idle_timeouts);
                tracing::debug!(
                    client = %link.id,
                    idle_timeouts = n,
                    "client sent no complete message within idle_timeout ({idle_timeout:?})"
                );
                return End::Drop;
            }
            // Its worker host dropped its app or handed its events back: move now, so that a
            // client of an app nobody serves is closed even if it sends nothing more.
            () = link.binding.displaced(link.shared.listener) => {
                if !link.reroute().await {
                    return End::Done;
                }
            }
            message = inbound.next() => match message {
                Some(Ok(Inbound::Message(data))) => {
                    heartbeat.heard();
                    if !idle_timeout.is_zero() {
                        last_message = Instant::now();
                    }
                    crate::metrics::message_received(data.len());
                    if !link.event(EventKind::Message(data)).await {
                        return End::Done;
                    }
                }
                // Over budget, the push kills the connection: a client that pings without
                // reading fills only its own queue.
                Some(Ok(Inbound::Ping(data))) => {
                    outbox.push(Outbound::Pong(data));
                }
                Some(Ok(Inbound::Close)) => return End::Close(Close::Normal(None)),
                Some(Err(e)) => return read_failed(link, e),
                None => return End::Done,
            },
        }
    }
}

/// Resolves when `timer` expires; never without a timer.
async fn expired(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

fn read_failed(link: &ClientLink<'_>, e: ReadError) -> End {
    match e.close() {
        Some(close) => {
            Counters::bump(&link.shared.counters.oversized);
            tracing::info!(client = %link.id, "closing client: {e}");
            End::Close(close)
        }
        None => {
            tracing::debug!(client = %link.id, "read failed: {e}");
            End::Done
        }
    }
}

/// Writes queued messages in batches until a close is queued or the socket fails.
async fn write<W: Sink<Outbound> + Unpin>(outbound: &mut W, queue: &OutboxReader) -> End {
    loop {
        let mut next = Some(queue.recv().await);
        let mut written = 0;
        while let Some(message) = next.take() {
            if let Outbound::Close(close) = message {
                // Flush what came before; the close itself is written once the client has
                // left the state (see `serve`).
                // Boxed, as the other rare waits: its timer would otherwise sit in every
                // connection's future.
                let flushed = Box::pin(tokio::time::timeout(CLOSE_GRACE, outbound.flush()));
                let _ = flushed.await;
                return End::Close(close);
            }
            if let Outbound::Data(data) = &message {
                crate::metrics::message_sent(data.len());
            }
            if queue.writing(outbound.feed(message)).await.is_err() {
                return End::Done;
            }
            written += 1;
            if written < WRITE_BATCH {
                next = queue.try_recv();
            }
        }
        if queue.writing(outbound.flush()).await.is_err() {
            return End::Done;
        }
    }
}

/// A client's path to its worker host.
struct ClientLink<'a> {
    shared: &'a ConnShared,
    id: ClientId,
    binding: Binding,
    /// Events forwarded so far: the next one is numbered one more.
    events: u64,
}

impl<'a> ClientLink<'a> {
    /// Forwards an event with the client's current context; false if the client is gone or
    /// no worker host could take it (the client is then closed). Not an `async fn`: the
    /// event is moved into the boxed forward before anything waits, so a connection's
    /// future holds neither the event nor the router's future.
    fn event(&mut self, kind: EventKind) -> impl Future<Output = bool> + '_ {
        let id = self.id;
        let forward = self
            .shared
            .state
            .context(id)
            .map(|client| self.send(client, kind));
        async move {
            match forward {
                Some(forward) => routed(id, forward.await),
                None => false,
            }
        }
    }

    /// Forwards one event: at once when the router can ([`Router::try_forward`]), else
    /// boxed. The router's future is most of what a connection would hold, and a connection
    /// spends its life idle, not forwarding; an allocation per waiting event costs less than
    /// its bytes held by every idle client.
    fn send(
        &mut self,
        mut client: ClientContext,
        kind: EventKind,
    ) -> impl Future<Output = Result<(), Unrouted>> + use<'a, '_> {
        self.events += 1;
        client.event = self.events;
        let event = ToWorker::Event {
            client,
            kind,
            ack_now: false,
        };
        let router = &self.shared.router;
        match router.try_forward(&mut self.binding, event) {
            Ok(()) => Either::Left(ready(Ok(()))),
            Err(event) => Either::Right(Box::pin(router.forward(&mut self.binding, event))),
        }
    }

    /// Moves the client to a worker host that serves its app; false if none took it in
    /// time (the client is then closed).
    async fn reroute(&mut self) -> bool {
        let shared = self.shared;
        let moved = Box::pin(
            shared
                .router
                .reroute(&mut self.binding, self.id, shared.listener),
        )
        .await;
        routed(self.id, moved)
    }
}

/// Whether the events of client `id` have a worker host; one that has none is counted and
/// logged, and is to be closed.
fn routed(id: ClientId, routed: Result<(), Unrouted>) -> bool {
    match routed {
        Ok(()) => true,
        Err(e) => {
            crate::metrics::client_unrouted(e.reason());
            tracing::warn!(client = %id, reason = e.reason(), "closing client after no_worker_hold: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::gateway::heartbeat::Ping;
    use crate::gateway::protocol::reader::MessageReader;
    use crate::gateway::protocol::writer::MessageWriter;
    use crate::gateway::protocol::ws::WsFraming;
    use crate::gateway::state::ClientLimits;
    use crate::ops::Command;

    /// A socket whose first write panics, as a bug in a client task would.
    struct PanickingSink;

    impl Sink<Outbound> for PanickingSink {
        type Error = std::io::Error;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(self: Pin<&mut Self>, _: Outbound) -> Result<(), Self::Error> {
            panic!("a bug while writing");
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What a listener's connections share, and its gateway state.
    fn shared() -> (ConnShared, Arc<GatewayState>) {
        let counters = Arc::new(Counters::default());
        let address = "127.0.0.1:2300".parse().unwrap();
        let limits = ClientLimits { max_groups: 8 };
        let state = Arc::new(GatewayState::new(address, limits, counters.clone()));
        let shared = ConnShared {
            state: state.clone(),
            router: Arc::new(Router::new(64, Duration::from_secs(5), vec!["app".into()])),
            listener: 0,
            shutdown: CancellationToken::new(),
            heartbeat: HeartbeatConfig {
                interval: Duration::ZERO,
                limit: 0,
                ping: Ping::Silent,
            },
            send_buffer: 1024,
            idle_timeout: Duration::ZERO,
            counters,
        };
        (shared, state)
    }

    #[tokio::test]
    async fn a_panicking_client_task_leaves_no_ghost_client() {
        let (shared, state) = shared();
        let inbound = futures_util::stream::pending::<Result<Inbound, ReadError>>();
        let remote = "127.0.0.1:1".parse().unwrap();
        let task = tokio::spawn(serve(
            Arc::new(shared),
            remote,
            inbound,
            PanickingSink,
            None,
        ));
        while state.client_count() == 0 {
            tokio::task::yield_now().await;
        }
        state.execute(Command::SendToAll {
            data: Bytes::from_static(b"hi"),
            exclude: vec![],
        });
        let ended = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ended");
        assert!(ended.unwrap_err().is_panic());
        assert_eq!(state.client_count(), 0, "no ghost left counted");
    }

    /// What a connection holds while idle (measured by `wasmgate-bench idle`): its task's
    /// future with a WebSocket reader and writer in it, its entry in the state, its empty
    /// outbox. Sizes of the test build, where futures are larger than in a release build; a
    /// change that makes them grow past the budget must say why.
    #[test]
    fn an_idle_connection_fits_its_budget() {
        const BUDGET: usize = 2048;
        let (shared, _) = shared();
        let framing = WsFraming::new(1024);
        let inbound = MessageReader::new(tokio::io::empty(), framing.clone(), BytesMut::new());
        let outbound = MessageWriter::new(tokio::io::sink(), framing);
        let remote = "127.0.0.1:1".parse().unwrap();
        let task = std::mem::size_of_val(&serve(Arc::new(shared), remote, inbound, outbound, None));
        let entry = crate::gateway::state::CLIENT_ENTRY_SIZE;
        let outbox = crate::gateway::outbox::EMPTY_OUTBOX_SIZE;
        assert!(
            task + entry + outbox <= BUDGET,
            "task {task} + state entry {entry} + outbox {outbox} bytes, over {BUDGET}"
        );
    }
}
