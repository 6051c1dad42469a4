//! One client connection, whatever its protocol: registers the client, forwards its events
//! to its worker host, and writes what the gateway queues for it.
//!
//! A protocol module turns the socket into a stream of inbound messages and a sink of
//! [`Outbound`] items; everything else (ids, events, the outbox, closing) is here, once.
//! The task waits on the client's reads, its outbox, its kill token and the gateway's
//! shutdown together. Queued messages are fed to the sink in a batch and flushed once, so a
//! burst of broadcasts costs one write.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::router::{Binding, Router};
use super::state::{GatewayState, Outbound, Outbox};
use crate::client_id::ClientId;
use crate::wire::messages::{ClientContext, EventKind, ToWorker, WebSocketRequest};

/// Messages one client may have queued before it counts as a slow reader and is dropped.
pub const OUTBOX_CAPACITY: usize = 1024;

/// Most queued messages written in one batch before flushing.
const WRITE_BATCH: usize = 64;

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
}

/// Serves one client until it leaves, is closed, or the gateway stops.
pub async fn serve<R, W, E>(
    shared: ConnShared,
    remote: SocketAddr,
    mut inbound: R,
    mut outbound: W,
    handshake: Option<WebSocketRequest>,
) where
    R: Stream<Item = Result<Bytes, E>> + Unpin,
    W: Sink<Outbound> + Unpin,
    E: std::fmt::Display,
{
    let (queue, mut outbox) = mpsc::channel(OUTBOX_CAPACITY);
    let kill = CancellationToken::new();
    let id = shared.state.add(
        remote,
        shared.listener,
        Outbox {
            queue,
            kill: kill.clone(),
        },
    );
    let mut link = ClientLink {
        shared: &shared,
        id,
        binding: Binding::default(),
    };
    let mut open = link.event(EventKind::Connect).await;
    if let Some(request) = handshake
        && open
    {
        open = link.event(EventKind::WebSocketConnect(request)).await;
    }
    while open {
        tokio::select! {
            _ = kill.cancelled() => break,
            _ = shared.shutdown.cancelled() => {
                let _ = outbound.send(Outbound::Close(None)).await;
                break;
            }
            Some(first) = outbox.recv() => {
                if !write_batch(&mut outbound, &mut outbox, first).await {
                    break;
                }
            }
            message = inbound.next() => match message {
                Some(Ok(data)) => open = link.event(EventKind::Message(data)).await,
                Some(Err(e)) => {
                    tracing::debug!(client = %id, "read failed: {e}");
                    break;
                }
                None => break,
            },
        }
    }
    // Leave the state before the socket closes, so whoever sees the close sees the client
    // gone from its groups and uid too.
    let last = shared.state.remove(id);
    let _ = outbound.close().await;
    if let Some(last) = last {
        link.send(last, EventKind::Close).await;
    }
}

/// Writes `first` and whatever else is queued, then flushes. Returns false once the
/// connection should end (a close was written, or the socket failed).
async fn write_batch<W: Sink<Outbound> + Unpin>(
    outbound: &mut W,
    outbox: &mut mpsc::Receiver<Outbound>,
    first: Outbound,
) -> bool {
    let mut next = Some(first);
    let mut written = 0;
    while let Some(message) = next.take() {
        let closing = matches!(message, Outbound::Close(_));
        if outbound.feed(message).await.is_err() {
            return false;
        }
        if closing {
            let _ = outbound.flush().await;
            return false;
        }
        written += 1;
        if written < WRITE_BATCH {
            next = outbox.try_recv().ok();
        }
    }
    outbound.flush().await.is_ok()
}

/// A client's path to its worker host.
struct ClientLink<'a> {
    shared: &'a ConnShared,
    id: ClientId,
    binding: Binding,
}

impl ClientLink<'_> {
    /// Forwards an event with the client's current context; false if the client is gone or
    /// no worker host could take it (the client is then closed).
    async fn event(&mut self, kind: EventKind) -> bool {
        match self.shared.state.context(self.id) {
            Some(client) => self.send(client, kind).await,
            None => false,
        }
    }

    async fn send(&mut self, client: ClientContext, kind: EventKind) -> bool {
        let event = ToWorker::Event { client, kind };
        match self.shared.router.forward(&mut self.binding, event).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(client = %self.id, "closing client: {e}");
                false
            }
        }
    }
}
