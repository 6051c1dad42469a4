//! The gateway's internal listener: worker hosts (and push clients) link here.
//!
//! A link starts with the authenticated handshake (links from worker hosts of this process
//! arrive as channels instead, see [`crate::local`]), then the gateway announces its listeners.
//! From then on the gateway sends client events and query replies, and executes the commands
//! and answers the queries it receives, in the order they arrive. A link that fails the
//! handshake or sends a malformed frame is closed; other links and all clients carry on.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::shared::Gateway;
use crate::local::{LinkReader, LocalLink};
use crate::wire::LinkError;
use crate::wire::codec::{FrameReader, FrameWriter};
use crate::wire::handshake::{self, Peer};
use crate::wire::messages::{ToGateway, ToWorker};

/// Messages queued for one worker host before client reads wait for it.
const LINK_QUEUE: usize = 4096;

/// How often the gateway pings a linked worker host.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Ping intervals without a message from the peer after which its link is dropped.
const SILENT_INTERVALS: u32 = 3;

/// Longest a closing link may take to write what is queued on it.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Accepts links, over TCP and from worker hosts of this process, until `shutdown`; then, once
/// `close` fires (when the gateway's clients are gone and their close events queued), flushes
/// and closes every link and returns.
pub async fn serve(
    listener: TcpListener,
    mut local: mpsc::Receiver<LocalLink>,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
    close: CancellationToken,
) {
    let links = TaskTracker::new();
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(link) = local.recv() => {
                links.spawn(local_link(link, gateway.clone(), close.clone()));
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("internal accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let gateway = gateway.clone();
        let close = close.clone();
        links.spawn(async move {
            match tcp_link(socket, gateway, close).await {
                Ok(()) => tracing::info!(%peer, "internal link closed"),
                Err(e) if e.is_quiet() => {
                    tracing::debug!(%peer, "internal connection dropped during the handshake: {e}")
                }
                Err(e) => tracing::warn!(%peer, "internal link closed: {e}"),
            }
        });
    }
    links.close();
    links.wait().await;
}

async fn tcp_link(
    socket: TcpStream,
    gateway: Arc<Gateway>,
    close: CancellationToken,
) -> Result<(), LinkError> {
    socket.set_nodelay(true).map_err(LinkError::Connect)?;
    let (reader, writer) = socket.into_split();
    let mut reader = FrameReader::new(reader);
    let mut writer = FrameWriter::new(writer);
    let role = handshake::accept_handshake(&mut reader, &mut writer, &gateway.secret).await?;
    let (queue, outgoing) = mpsc::channel(LINK_QUEUE);
    let mut writing = tokio::spawn(writer.forward(outgoing));
    let result = serve_link(LinkReader::Tcp(reader), queue, role, &gateway, &close).await;
    // The writer ends once every sender is gone, having written what was queued; client
    // bindings of a link that failed may still hold one, so it is cut after a grace.
    if tokio::time::timeout(FLUSH_GRACE, &mut writing)
        .await
        .is_err()
    {
        writing.abort();
    }
    result
}

async fn local_link(link: LocalLink, gateway: Arc<Gateway>, close: CancellationToken) {
    let (queue, outgoing) = mpsc::channel(LINK_QUEUE);
    if link.accepted.send(outgoing).is_err() {
        return;
    }
    if let Err(e) = serve_link(
        LinkReader::Local(link.inbound),
        queue,
        link.role,
        &gateway,
        &close,
    )
    .await
    {
        tracing::warn!("in-process link closed: {e}");
    }
}

/// Serves an authenticated link: announces the listeners, routes client events to it (if
/// the peer is a worker host), and executes what it sends until it closes.
async fn serve_link(
    mut reader: LinkReader<ToGateway>,
    queue: mpsc::Sender<ToWorker>,
    role: Peer,
    gateway: &Gateway,
    close: &CancellationToken,
) -> Result<(), LinkError> {
    queue
        .send(ToWorker::Listeners(gateway.listeners.clone()))
        .await?;
    // Push clients only send commands and queries; only worker hosts take client events.
    let routed = (role == Peer::Worker).then(|| gateway.router.add(queue.clone()));
    let result = read_loop(&mut reader, gateway, &queue, close).await;
    if let Some(link) = routed {
        gateway.router.remove(link.id);
    }
    result
}

async fn read_loop(
    reader: &mut LinkReader<ToGateway>,
    gateway: &Gateway,
    queue: &mpsc::Sender<ToWorker>,
    close: &CancellationToken,
) -> Result<(), LinkError> {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut silent = 0;
    loop {
        let message = tokio::select! {
            _ = close.cancelled() => return Ok(()),
            _ = ping.tick() => {
                silent += 1;
                if silent > SILENT_INTERVALS {
                    return Err(LinkError::Silent(PING_INTERVAL * SILENT_INTERVALS));
                }
                queue.send(ToWorker::Ping).await?;
                continue;
            }
            message = reader.recv() => message?,
        };
        silent = 0;
        match message {
            None => return Ok(()),
            Some(ToGateway::Command(command)) => gateway.state.execute(command),
            Some(ToGateway::Query { id, query }) => {
                let reply = gateway.state.answer(&query);
                queue.send(ToWorker::Reply { id, reply }).await?;
            }
            Some(ToGateway::Pong) => {}
        }
    }
}
