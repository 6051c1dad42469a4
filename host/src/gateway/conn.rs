//! One client connection, whatever its protocol: registers the client, forwards its events
//! to its worker host, runs its heartbeat, and writes what the gateway queues for it.
//!
//! A connection is one hand-written future, [`Connection`], owning the client's socket
//! ([`ClientStream`]: one owner, no split halves). Whenever anything wakes it, it looks at
//! each of its concerns in turn: a kill (destroy, slow reader, the gateway stopping), the
//! outbox (queued messages fed to the socket in a batch and flushed once, so a burst of
//! broadcasts costs one write), the socket (items read and forwarded as events), one timer
//! for the heartbeat and `idle_timeout` together, and the router's word that the client must
//! move. It is written out by hand rather than as `async` code raced by `select!` for memory:
//! a connection spends its life idle, holding its task's bytes, and a generator keeps every
//! branch's future and every await point's locals side by side (about 1.6 KB), where this
//! struct holds only what lasts between wake-ups. The rare waits (an event waiting for room
//! at its worker host, a move, the last words to a leaving client) are boxed while they last.
//!
//! A client that stops reading blocks only its own writes, and a kill still ends it at once.
//! While an event waits for its worker host, the connection stops reading (a flood slows the
//! flooder) and stops its heartbeat, but keeps writing.

use std::future::Future;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::admission::{Admission, Seat};
use super::counters::Counters;
use super::heartbeat::{Beat, Heartbeat, HeartbeatConfig};
use super::outbox::{Close, Kill, Outbound, OutboxReader, outbox};
use super::protocol::stream::ClientStream;
use super::protocol::{Framing, Inbound, ReadError};
use super::router::{Binding, Router, Unrouted};
use super::state::GatewayState;
use crate::client_id::ClientId;
use crate::wire::messages::{ClientContext, EventKind, ToWorker, WebSocketRequest};

/// Most queued messages written in one batch before flushing.
const WRITE_BATCH: usize = 64;

/// Encoded bytes past which a batch is written before more messages are taken.
const WRITE_CHUNK: usize = 64 * 1024;

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
    /// The listener's seats: a connection gives back its own when it ends.
    pub admission: Arc<Admission>,
}

/// How a connection ends.
enum End {
    /// The client closed its sending side: write what is unwritten, then close the socket
    /// without shutting it down first. The close sends the FIN; a `shutdown` before it would
    /// be one more system call per connection that tells the client nothing more.
    Left,
    /// The socket failed, or the gateway cannot serve the client: close the socket once its
    /// sending side is shut.
    Done,
    /// Write this close, then close the socket.
    Close(Close),
    /// Drop the socket at once, writing nothing more.
    Drop,
}

/// An event or a move waiting for the router, with the client's binding, given back once
/// it is done.
type Waiting = Pin<Box<dyn Future<Output = (Binding, Result<(), Unrouted>)> + Send>>;

/// Where the reading side is.
enum Reading {
    /// The first event is not sent yet: `connect`, or `websocket-connect` with the upgrade
    /// request (a WebSocket client's `on-connect` runs on the worker host only once
    /// `on-websocket-connect` has accepted it).
    Start(Option<Arc<WebSocketRequest>>),
    /// The first event waits for the router: reading waits with it.
    First(Waiting),
    /// Reading the socket.
    Read,
    /// An event or a move waits for the router: reading waits with it.
    Wait(Waiting),
    /// The connection ended: nothing more is read.
    Ended(Box<Ending>),
}

/// A close the writer took from the outbox: what was queued before it is written first.
struct Closing {
    close: Close,
    grace: Pin<Box<Sleep>>,
}

/// A connection that ended and left the gateway's state.
struct Ending {
    /// Its last words (what is unwritten, a close frame, the socket's shutdown), bounded by
    /// [`CLOSE_GRACE`]; none once said, or for a connection dropped without them.
    farewell: Option<Pin<Box<Sleep>>>,
    /// Whether the last words end with the socket's shutdown (not for a client that left).
    shut: bool,
    /// Then its close event on its way to its worker host.
    leave: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The client's address, which its seat is given back with: the state no longer has it.
    ip: Option<IpAddr>,
}

pin_project_lite::pin_project! {
    /// The heartbeat and `idle_timeout` of a connection with either on: their one timer and
    /// what it times. Boxed, and made only when either is on: its bytes (152) would otherwise
    /// be held by every connection.
    struct Timer {
        #[pin]
        sleep: Sleep,
        heartbeat: Heartbeat,
        // When the client last sent a complete message (kept up to date only with an
        // `idle_timeout`).
        last_message: Instant,
    }
}

/// One client's connection: a future that serves it until it leaves, is closed, or the
/// gateway stops. Registered in the gateway's state when made, and removed from it however it
/// ends: a panic in its task drops it, and leaves no ghost client counted. It holds its
/// listener's seat for the client, and gives it back when dropped.
pub struct Connection<S, F> {
    shared: Arc<ConnShared>,
    /// None once the socket is closed.
    stream: Option<ClientStream<S, F>>,
    queue: OutboxReader,
    link: ClientLink,
    /// [`Reading::Ended`] once the connection ended; until then, the client is in the state.
    reading: Reading,
    /// Wakes the connection for the heartbeat's next tick or the `idle_timeout`, whichever is
    /// first; none when both are off.
    timer: Option<Pin<Box<Timer>>>,
    closing: Option<Box<Closing>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin, F: Framing> Connection<S, F> {
    /// Registers a client connected from `remote` on `stream`, taking over its `seat`;
    /// `handshake` is its WebSocket upgrade request, if it made one.
    pub fn new(
        shared: Arc<ConnShared>,
        seat: Seat,
        remote: SocketAddr,
        stream: ClientStream<S, F>,
        handshake: Option<Arc<WebSocketRequest>>,
    ) -> Self {
        let (outbox, queue) = outbox(shared.send_buffer);
        let id = shared.state.add(remote, shared.listener, outbox);
        // Given back when the connection drops, with the address the state keeps.
        seat.hand_over();
        crate::metrics::CONNECTIONS_OPENED.inc();
        let now = Instant::now();
        let heartbeat = Heartbeat::start(&shared.heartbeat, now);
        let timer = next_deadline(&heartbeat, now, shared.idle_timeout).map(|deadline| {
            Box::pin(Timer {
                sleep: tokio::time::sleep_until(deadline),
                heartbeat,
                last_message: now,
            })
        });
        Self {
            shared,
            stream: Some(stream),
            queue,
            link: ClientLink {
                index: id.index,
                binding: Binding::default(),
                events: 0,
            },
            reading: Reading::Start(handshake),
            timer,
            closing: None,
        }
    }

    /// The client's id.
    fn id(&self) -> ClientId {
        self.link.id(&self.shared)
    }

    /// Serves the client until the connection is to end: how it ends.
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        // Registered before looking: a push or a kill after the look wakes the task.
        self.queue.register(cx.waker());
        loop {
            if let Some(kill) = self.queue.killed() {
                return Poll::Ready(killed(&self.shared, self.id(), kill));
            }
            if let Poll::Ready(end) = self.poll_write(cx) {
                return Poll::Ready(end);
            }
            match self.poll_read(cx) {
                Poll::Ready(Some(end)) => return Poll::Ready(end),
                // Reading queued a message of the connection's own: written before waiting.
                Poll::Ready(None) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Writes queued messages in batches until the outbox is empty or the socket full; ready
    /// once a queued close has what came before it written, or the socket failed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let Some(stream) = &mut self.stream else {
            return Poll::Pending;
        };
        loop {
            let written = if stream.unwritten() > 0 || self.closing.is_some() {
                stream.poll_write_out(cx)
            } else {
                let (queue, closing) = (&self.queue, &mut self.closing);
                let mut taken = 0;
                let written = stream.poll_write_batch(cx, |framing, buf| {
                    while taken < WRITE_BATCH && buf.len() < WRITE_CHUNK {
                        let Some(message) = queue.try_recv() else {
                            break;
                        };
                        match message {
                            Outbound::Close(close) => {
                                // The close itself is written once the client has left the
                                // state (see `end`).
                                let grace = Box::pin(tokio::time::sleep(CLOSE_GRACE));
                                *closing = Some(Box::new(Closing { close, grace }));
                                break;
                            }
                            Outbound::Data(ref data) => crate::metrics::message_sent(data.len()),
                            Outbound::Ping(_) | Outbound::Pong(_) => {}
                        }
                        framing.encode(message, buf)?;
                        taken += 1;
                    }
                    Ok(())
                });
                if taken == 0 && self.closing.is_none() {
                    return Poll::Pending;
                }
                written
            };
            match written {
                Poll::Ready(written) => {
                    self.queue.socket_full(false);
                    if let Some(closing) = self.closing.take() {
                        return Poll::Ready(End::Close(closing.close));
                    }
                    if written.is_err() {
                        return Poll::Ready(End::Done);
                    }
                }
                Poll::Pending => {
                    self.queue.socket_full(true);
                    let late = |c: &mut Box<Closing>| c.grace.as_mut().poll(cx).is_ready();
                    if let Some(closing) = self.closing.take_if(late) {
                        return Poll::Ready(End::Close(closing.close));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Reads the client's items and forwards its events until the socket or the router makes
    /// it wait; also runs the heartbeat and `idle_timeout` and moves a displaced client.
    /// Ready with the end once the connection is to end, or with none once it queued a
    /// message of its own (a pong, a ping) to be written before it waits.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<End>> {
        // The heartbeat, the timeout and a move are looked at once per wake-up and after each
        // wait, not per item: they are rare, and each wakes the task itself.
        let mut looked = false;
        loop {
            match &mut self.reading {
                Reading::Start(request) => {
                    let first = match request.take() {
                        Some(request) => EventKind::WebSocketConnect(request),
                        None => EventKind::Connect,
                    };
                    self.reading = Reading::Read;
                    if let Some(end) = self.event(first) {
                        return Poll::Ready(Some(end));
                    }
                    match mem::replace(&mut self.reading, Reading::Read) {
                        Reading::Wait(waiting) => self.reading = Reading::First(waiting),
                        _ => self.sent_first(),
                    }
                    continue;
                }
                Reading::First(waiting) | Reading::Wait(waiting) => {
                    let (binding, routed) = ready!(waiting.as_mut().poll(cx));
                    let first = matches!(self.reading, Reading::First(_));
                    self.reading = Reading::Read;
                    self.link.binding = binding;
                    if !self.link.routed(routed, &self.shared) {
                        return Poll::Ready(Some(End::Done));
                    }
                    if first {
                        self.sent_first();
                    }
                    looked = false;
                    continue;
                }
                Reading::Read => {}
                Reading::Ended(_) => return Poll::Pending,
            }
            if !looked {
                looked = true;
                if let Poll::Ready(end) = self.poll_timer(cx) {
                    return Poll::Ready(end);
                }
                // Its worker host dropped its app or handed its events back: move now, so
                // that a client of an app nobody serves is closed even if it sends nothing
                // more.
                let listener = self.shared.listener;
                if self.link.binding.poll_displaced(listener, cx).is_ready() {
                    self.reading = Reading::Wait(self.link.reroute(&self.shared));
                    continue;
                }
            }
            let Some(stream) = &mut self.stream else {
                return Poll::Pending;
            };
            let end = match ready!(stream.poll_next(cx)) {
                Some(Ok(Inbound::Message(data))) => {
                    if let Some(timer) = &mut self.timer {
                        timer.as_mut().heard(self.shared.idle_timeout);
                    }
                    crate::metrics::message_received(data.len());
                    match self.event(EventKind::Message(data)) {
                        Some(end) => end,
                        None => continue,
                    }
                }
                // Over budget, the push kills the connection: a client that pings without
                // reading fills only its own queue.
                Some(Ok(Inbound::Ping(data))) => {
                    self.queue.push(Outbound::Pong(data));
                    return Poll::Ready(None);
                }
                Some(Ok(Inbound::Close)) => End::Close(Close::Normal(None)),
                Some(Err(e)) => read_failed(self.id(), &self.shared, e),
                None => End::Left,
            };
            return Poll::Ready(Some(end));
        }
    }

    /// Forwards an event with the client's current context; the end if the client is gone
    /// from the state. One the router cannot take at once waits in [`Reading::Wait`].
    fn event(&mut self, kind: EventKind) -> Option<End> {
        let Some(client) = self.shared.state.context(self.id()) else {
            return Some(End::Done);
        };
        if let Some(waiting) = self.link.send(&self.shared, client, kind) {
            self.reading = Reading::Wait(waiting);
        }
        None
    }

    /// The client's first event is on its way (its `on-connect`): from now on a keeper runs
    /// its `on-close` if this gateway is lost.
    fn sent_first(&self) {
        self.shared.state.keep(self.id());
    }

    /// Runs the heartbeat's ticks and the `idle_timeout` as they fall due; ready with the
    /// end if either ends the connection, or with none once a tick queued a ping.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Option<End>> {
        let Some(timer) = &mut self.timer else {
            return Poll::Pending;
        };
        let idle_timeout = self.shared.idle_timeout;
        let mut pinged = false;
        loop {
            let mut timer = timer.as_mut().project();
            if timer.sleep.as_mut().poll(cx).is_pending() {
                return if pinged {
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                };
            }
            let now = Instant::now().max(timer.sleep.deadline());
            match timer.heartbeat.tick(&self.shared.heartbeat, now) {
                None | Some(Beat::Wait) => {}
                // Over budget, the push kills the connection: the next look sees it.
                Some(Beat::Send(ping)) => {
                    self.queue.push(ping);
                    pinged = true;
                }
                Some(Beat::Destroy) => {
                    Counters::bump(&self.shared.counters.heartbeat_timeouts);
                    let client = self.link.id(&self.shared);
                    tracing::debug!(%client, "client silent past ping_not_response_limit");
                    return Poll::Ready(Some(End::Drop));
                }
            }
            if !idle_timeout.is_zero() && *timer.last_message + idle_timeout <= now {
                let n = Counters::bump(&self.shared.counters.idle_timeouts);
                tracing::debug!(
                    client = %self.link.id(&self.shared),
                    idle_timeouts = n,
                    "client sent no complete message within idle_timeout ({idle_timeout:?})"
                );
                return Poll::Ready(Some(End::Drop));
            }
            if let Some(deadline) =
                next_deadline(timer.heartbeat, *timer.last_message, idle_timeout)
            {
                timer.sleep.reset(deadline);
            }
        }
    }

    /// Ends the connection: it leaves the state before its socket closes, so whoever sees
    /// the close sees the client gone from its groups and uid too; then its last words, then
    /// its close event.
    fn end(&mut self, end: End) {
        let last = self.shared.state.remove(self.id());
        crate::metrics::CONNECTIONS_CLOSED.inc();
        self.closing = None;
        self.timer = None;
        let shut = !matches!(end, End::Left);
        let farewell = match end {
            End::Drop => {
                self.stream = None;
                None
            }
            End::Close(close) => {
                if let Some(stream) = &mut self.stream {
                    let _ = stream.encode_last(Outbound::Close(close));
                }
                Some(Box::pin(tokio::time::sleep(CLOSE_GRACE)))
            }
            End::Done | End::Left => Some(Box::pin(tokio::time::sleep(CLOSE_GRACE))),
        };
        let waiting = match mem::replace(&mut self.reading, Reading::Read) {
            Reading::First(waiting) | Reading::Wait(waiting) => Some(waiting),
            Reading::Start(_) | Reading::Read | Reading::Ended(_) => None,
        };
        let ip = last.as_ref().map(|last| last.remote.ip());
        let leave = self.link.leave(&self.shared, waiting, last);
        self.reading = Reading::Ended(Box::new(Ending {
            farewell,
            shut,
            leave,
            ip,
        }));
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, F: Framing> Future for Connection<S, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if !matches!(this.reading, Reading::Ended(_)) {
            let end = ready!(this.poll_serve(cx));
            this.end(end);
        }
        let Reading::Ended(ending) = &mut this.reading else {
            unreachable!("the connection ended above");
        };
        if let Some(grace) = &mut ending.farewell {
            // The socket first: it is nearly always said at once, and a grace polled is a
            // timer registered and cancelled for nothing.
            let said = this.stream.as_mut().is_none_or(|stream| {
                if ending.shut {
                    stream.poll_shutdown(cx).is_ready()
                } else {
                    stream.poll_write_out(cx).is_ready()
                }
            }) || grace.as_mut().poll(cx).is_ready();
            if !said {
                return Poll::Pending;
            }
            ending.farewell = None;
            this.stream = None;
        }
        ending.leave.as_mut().poll(cx)
    }
}

impl<S, F> Drop for Connection<S, F> {
    fn drop(&mut self) {
        let ip = match &self.reading {
            Reading::Ended(ending) => ending.ip,
            _ => {
                crate::metrics::CONNECTIONS_CLOSED.inc();
                let last = self.shared.state.remove(self.link.id(&self.shared));
                last.map(|last| last.remote.ip())
            }
        };
        self.shared.admission.give_back(ip);
    }
}

impl Timer {
    /// The client sent a complete message.
    fn heard(self: Pin<&mut Self>, idle_timeout: Duration) {
        let timer = self.project();
        timer.heartbeat.heard();
        if !idle_timeout.is_zero() {
            *timer.last_message = Instant::now();
        }
    }
}

/// When the timer must next wake a connection whose client last sent a complete message at
/// `last_message`: the heartbeat's next tick or the `idle_timeout`, whichever is first; none
/// when both are off. The `idle_timeout` is armed from the last message only when the timer
/// fires, not per message (a timer-wheel update per message showed in the profile): an
/// expiry that finds a newer message re-arms from it.
fn next_deadline(
    heartbeat: &Heartbeat,
    last_message: Instant,
    idle_timeout: Duration,
) -> Option<Instant> {
    let idle = (!idle_timeout.is_zero()).then(|| last_message + idle_timeout);
    match (heartbeat.next(), idle) {
        (Some(tick), Some(idle)) => Some(tick.min(idle)),
        (tick, idle) => tick.or(idle),
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

fn read_failed(id: ClientId, shared: &ConnShared, e: ReadError) -> End {
    match e.close() {
        Some(close) => {
            Counters::bump(&shared.counters.oversized);
            tracing::info!(client = %id, "closing client: {e}");
            End::Close(close)
        }
        None => {
            tracing::debug!(client = %id, "read failed: {e}");
            End::Done
        }
    }
}

/// A client's path to its worker host.
struct ClientLink {
    /// The client's index at this gateway: its id without the gateway's part, which every
    /// client of the gateway shares.
    index: u32,
    /// Taken by an event or a move while it waits for the router, given back after.
    binding: Binding,
    /// Events forwarded so far: the next one is numbered one more.
    events: u64,
}

impl ClientLink {
    /// The client's id.
    fn id(&self, shared: &ConnShared) -> ClientId {
        ClientId::new(shared.state.address(), self.index)
    }

    /// Forwards one event: at once when the router can ([`Router::try_forward`]), else the
    /// wait, boxed with the binding. The router's future is most of what a connection would
    /// hold, and a connection spends its life idle, not forwarding; an allocation per waiting
    /// event costs less than its bytes held by every idle client.
    fn send(
        &mut self,
        shared: &ConnShared,
        mut client: ClientContext,
        kind: EventKind,
    ) -> Option<Waiting> {
        self.events += 1;
        client.event = self.events;
        let event = ToWorker::Event {
            client,
            kind,
            ack_now: false,
        };
        let event = shared.router.try_forward(&mut self.binding, event).err()?;
        let router = shared.router.clone();
        let mut binding = mem::take(&mut self.binding);
        Some(Box::pin(async move {
            let forwarded = router.forward(&mut binding, event).await;
            (binding, forwarded)
        }))
    }

    /// Moves the client to a worker host that serves its app (see [`Router::reroute`]).
    fn reroute(&mut self, shared: &ConnShared) -> Waiting {
        let (router, id, listener) = (shared.router.clone(), self.id(shared), shared.listener);
        let mut binding = mem::take(&mut self.binding);
        Box::pin(async move {
            let moved = router.reroute(&mut binding, id, listener).await;
            (binding, moved)
        })
    }

    /// Whether the client's events have a worker host; one that has none is counted and
    /// logged, and is to be closed.
    fn routed(&self, routed: Result<(), Unrouted>, shared: &ConnShared) -> bool {
        match routed {
            Ok(()) => true,
            Err(e) => {
                crate::metrics::client_unrouted(e.reason());
                let client = self.id(shared);
                tracing::warn!(%client, reason = e.reason(), "closing client after no_worker_hold: {e}");
                false
            }
        }
    }

    /// The close event of a connection that ended, `last` its client's last context, sent
    /// once an event still `waiting` for the router went (so that it keeps its binding and
    /// its order). A close no worker host took is counted as a dropped event; the client is
    /// gone.
    fn leave(
        &mut self,
        shared: &Arc<ConnShared>,
        waiting: Option<Waiting>,
        last: Option<ClientContext>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let shared = shared.clone();
        let mut link = ClientLink {
            index: self.index,
            binding: mem::take(&mut self.binding),
            events: self.events,
        };
        Box::pin(async move {
            if let Some(waiting) = waiting {
                link.binding = waiting.await.0;
            }
            let Some(last) = last else {
                return;
            };
            let sent = match link.send(&shared, last, EventKind::Close) {
                Some(waiting) => waiting.await.1,
                None => Ok(()),
            };
            if let Err(e) = sent {
                let client = link.id(&shared);
                tracing::debug!(%client, "close event not delivered: {e}");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::{Bytes, BytesMut};
    use tokio::io::ReadBuf;

    use super::*;
    use crate::gateway::heartbeat::Ping;
    use crate::gateway::protocol::text::Lines;
    use crate::gateway::state::ClientLimits;
    use crate::ops::Command;

    /// A socket that never has anything to read and whose first write panics, as a bug in a
    /// client task would.
    struct PanickingSocket;

    impl AsyncRead for PanickingSocket {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for PanickingSocket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            panic!("a bug while writing");
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
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
            admission: Arc::new(Admission::new(4, 0)),
        };
        (shared, state)
    }

    #[tokio::test]
    async fn a_panicking_client_task_leaves_no_ghost_client() {
        let (shared, state) = shared();
        let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let stream = ClientStream::new(PanickingSocket, Lines::new(1024), BytesMut::new());
        let admission = shared.admission.clone();
        let seat = admission.admit(remote.ip()).ok().unwrap();
        let connection = Connection::new(Arc::new(shared), seat, remote, stream, None);
        assert_eq!(state.client_count(), 1, "registered when made");
        let task = tokio::spawn(connection);
        state.execute(Command::SendToAll {
            data: Bytes::from_static(b"hi"),
            exclude: vec![],
        });
        let ended = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ended");
        assert!(ended.unwrap_err().is_panic());
        assert_eq!(state.client_count(), 0, "no ghost left counted");
        assert_eq!(admission.held(), 0, "its seat given back");
    }

    /// What a connection holds while idle (measured by `wasmgate-bench idle`): its task's
    /// future as the listener spawns it, its slot in the state's table (40 bytes: its index
    /// and an entry that boxes whatever only some clients have) and its empty outbox (88
    /// bytes).
    ///
    /// The future (152 bytes for `ws` and `text` alike) is the [`Connection`] itself (a
    /// WebSocket's handshake is a box that makes it, freed once the client is in): it holds
    /// only what lasts between wake-ups: the socket (40 bytes: tokio's registration and the
    /// descriptor), the framing's settings, one pointer for any bytes unread or unwritten, the
    /// client's index, the binding to its worker host (its link and window), the event
    /// counter, where reading is, and a pointer each for the timer (with the heartbeat's
    /// count and the last message's time) and a close under way. Its listener's seat costs it
    /// nothing (the state keeps the address it is given back with). tokio adds 104 bytes of
    /// task header and trailer and rounds a task up to 128 bytes: a future of at most 152
    /// bytes keeps the task at 256 bytes, the next step being 384. A change that makes it
    /// grow past the budget must say why.
    #[tokio::test]
    async fn an_idle_connection_fits_its_budget() {
        const FUTURE: usize = 152;
        const BUDGET: usize = FUTURE + 40 + 88;
        let (shared, _) = shared();
        let entry = crate::gateway::state::CLIENT_SLOT_SIZE;
        let outbox = crate::gateway::outbox::EMPTY_OUTBOX_SIZE;
        let sizes = crate::gateway::listener::task_sizes(Arc::new(shared)).await;
        for (protocol, task) in sizes {
            assert!(task <= FUTURE, "{protocol}: a task future of {task} bytes");
            assert!(
                task + entry + outbox <= BUDGET,
                "{protocol}: task {task} + state slot {entry} + outbox {outbox} bytes, over {BUDGET}"
            );
        }
    }
}
