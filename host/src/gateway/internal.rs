//! The gateway's internal listener: worker hosts (and push clients) link here.
//!
//! A link starts with the authenticated handshake (links from worker hosts of this process
//! arrive as channels instead, see [`crate::local`]), then the gateway announces its listeners.
//! From then on the gateway sends client events and query replies, and executes the commands
//! and answers the queries it receives, in the order they arrive. A link that fails the
//! handshake or sends a malformed frame is closed; other links and all clients carry on.
//!
//! Liveness works whatever the queues hold: pings and pongs are queued without waiting, a
//! peer silent for `SILENT_INTERVALS` pings is dropped, and so is one that reads nothing
//! for as long (the writer's timeout, and the timeout on queueing a reply). A dropped worker
//! host's clients re-bind to another on their next event. A worker host's announcements of
//! its apps and the events it hands back go to the router, in the order they arrive.
//!
//! The port can speak a second protocol: a connection whose first bytes are not wasmgate's
//! handshake ([`handshake::is_opening`]) is handed, with those bytes, to whoever serves
//! [`Foreign`] connections (GatewayWorker's GatewayProtocol, above the roles), so that the
//! address inside a client id is the one PHP code dials.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::counters::Counters;
use super::router::{Place, WorkerLink};
use super::shared::Gateway;
use crate::local::{LinkReader, LocalLink};
use crate::transport::Stream;
use crate::wire::LinkError;
use crate::wire::codec::{FrameReader, FrameWriter};
use crate::wire::handshake::{self, HANDSHAKE_TIMEOUT, HandshakeError, OPENING, Peer};
use crate::wire::messages::{ToGateway, ToWorker};
use crate::wire::queue::{self, LinkSender, Towards};

/// Messages queued for one worker host before client reads wait for it (bytes are bounded
/// too: `link_queue_bytes`).
const LINK_QUEUE: usize = 4096;

/// Ping intervals without a message from the peer, or with a write stalled, after which its
/// link is dropped.
const SILENT_INTERVALS: u32 = 3;

/// Pause after a failed `accept` (out of file descriptors, say) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Longest a closing link may take to write what is queued on it.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// A connection to the internal port that opened with another protocol than wasmgate's
/// handshake, handed over with the bytes read to tell them apart.
#[derive(Debug)]
pub struct Foreign {
    /// The socket, after `opening`.
    pub stream: TcpStream,
    /// The first bytes the peer sent.
    pub opening: [u8; OPENING],
    /// Who connected.
    pub peer: SocketAddr,
}

/// What the internal listener does besides wasmgate's links.
pub struct InternalSettings {
    /// How often each link is pinged.
    pub ping_interval: Duration,
    /// Bytes queued on each link towards a worker host.
    pub queue_bytes: usize,
    /// Where connections of another protocol go; without it, they fail the handshake.
    pub foreign: Option<mpsc::Sender<Foreign>>,
}

/// Accepts links, over TCP and from worker hosts of this process, until `shutdown`; then, once
/// `close` fires (when the gateway's clients are gone and their close events queued), flushes
/// and closes every link and returns.
pub async fn serve(
    listener: TcpListener,
    mut local: mpsc::Receiver<LocalLink>,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
    close: CancellationToken,
    settings: InternalSettings,
) {
    let InternalSettings {
        ping_interval,
        queue_bytes,
        foreign,
    } = settings;
    let links = TaskTracker::new();
    // Failed accepts in a row: logged once per burst, not once per retry.
    let mut failing = 0u64;
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(link) = local.recv() => {
                links.spawn(local_link(link, gateway.clone(), close.clone(), ping_interval, queue_bytes));
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if failing == 0 {
                        tracing::warn!("internal accept failed (retrying quietly): {e}");
                    }
                    failing += 1;
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if failing > 0 {
            tracing::warn!(failed = failing, "internal accept works again");
            failing = 0;
        }
        let gateway = gateway.clone();
        let close = close.clone();
        let foreign = foreign.clone();
        // A socket without a local address is failing: whatever the place, it ends soon.
        let place = socket.local_addr().map_or(Place::Elsewhere, |local| {
            Place::of_peer(peer.ip(), local.ip())
        });
        links.spawn(async move {
            let (role, result) = match open(socket, peer, &gateway, foreign.as_ref()).await {
                Ok(Some((stream, opening))) => {
                    tcp_link(
                        stream,
                        &opening,
                        gateway,
                        close,
                        place,
                        ping_interval,
                        queue_bytes,
                    )
                    .await
                }
                Ok(None) => return,
                Err(e) => (None, Err(e)),
            };
            let role = role.map_or("unauthenticated peer", Peer::name);
            match result {
                Ok(()) => {
                    crate::metrics::link_closed("closed");
                    tracing::info!(%peer, role, "internal link closed by the peer or on stop")
                }
                Err(e) if e.is_quiet() => {
                    tracing::debug!(%peer, "internal connection dropped during the handshake: {e}")
                }
                Err(e) => {
                    crate::metrics::link_closed(e.reason());
                    tracing::warn!(%peer, role, "internal link closed: {e}")
                }
            }
        });
    }
    links.close();
    links.wait().await;
}

/// Takes a connection through the links' transport (TLS, if configured), reads its first
/// bytes and hands it to `foreign` if they are not wasmgate's handshake (`None`); otherwise
/// gives it back with them, for the handshake.
async fn open(
    socket: TcpStream,
    peer: SocketAddr,
    gateway: &Gateway,
    foreign: Option<&mpsc::Sender<Foreign>>,
) -> Result<Option<(Stream, [u8; OPENING])>, LinkError> {
    let mut stream = gateway.trust.accept(socket).await?;
    let mut opening = [0; OPENING];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut opening)).await {
        Err(_) => return Err(HandshakeError::Timeout.into()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(HandshakeError::Closed.into());
        }
        Ok(Err(e)) => return Err(HandshakeError::Wire(e.into()).into()),
        Ok(Ok(_)) => {}
    }
    let Some(foreign) = foreign.filter(|_| !handshake::is_opening(&opening)) else {
        return Ok(Some((stream, opening)));
    };
    // GatewayWorker's port is refused with TLS when the configuration is read, so its
    // connections are always in the clear.
    let stream = match stream.into_plain() {
        Ok(stream) => stream,
        Err(stream) => return Ok(Some((stream, opening))),
    };
    let handed = Foreign {
        stream,
        opening,
        peer,
    };
    // Its server only spawns a task per connection; gone, it is stopping.
    let _ = foreign.send(handed).await;
    Ok(None)
}

/// Serves one link over TCP, `opening` already read off it; says who the peer was (once
/// authenticated) and why it ended.
async fn tcp_link(
    stream: Stream,
    opening: &[u8; OPENING],
    gateway: Arc<Gateway>,
    close: CancellationToken,
    place: Place,
    ping_interval: Duration,
    queue_bytes: usize,
) -> (Option<Peer>, Result<(), LinkError>) {
    let (reader, writer) = stream.split();
    let mut reader = FrameReader::new(reader).after(opening);
    let mut writer = FrameWriter::new(writer);
    let role =
        match handshake::accept_handshake(&mut reader, &mut writer, gateway.trust.secret()).await {
            Ok(role) => role,
            Err(e) => return (None, Err(e.into())),
        };
    let (queue, outgoing) = queue::channel(LINK_QUEUE, queue_bytes, Towards::Worker);
    let mut writing = tokio::spawn(writer.forward(outgoing, ping_interval * SILENT_INTERVALS));
    let written = async {
        Err(match (&mut writing).await {
            Ok(Err(e)) => LinkError::Wire(e),
            Ok(Ok(())) | Err(_) => LinkError::Closed,
        })
    };
    let ends = Ends {
        reader: LinkReader::Tcp(reader),
        written,
    };
    let result = serve_link(
        ends,
        queue,
        role,
        Some(place),
        &gateway,
        &close,
        ping_interval,
    )
    .await;
    // The writer ends once every sender is gone, having written what was queued; client
    // bindings of a link that failed may still hold one, so it is cut after a grace.
    if !writing.is_finished()
        && tokio::time::timeout(FLUSH_GRACE, &mut writing)
            .await
            .is_err()
    {
        writing.abort();
    }
    (Some(role), result)
}

async fn local_link(
    link: LocalLink,
    gateway: Arc<Gateway>,
    close: CancellationToken,
    ping_interval: Duration,
    queue_bytes: usize,
) {
    let (queue, outgoing) = queue::channel(LINK_QUEUE, queue_bytes, Towards::Worker);
    if link.accepted.send(outgoing).is_err() {
        return;
    }
    let ends = Ends {
        reader: LinkReader::Local(link.inbound),
        // Its other half is a channel the worker host reads, which ends with the link.
        written: std::future::pending(),
    };
    if let Err(e) = serve_link(
        ends,
        queue,
        link.role,
        None,
        &gateway,
        &close,
        ping_interval,
    )
    .await
    {
        crate::metrics::link_closed(e.reason());
        tracing::warn!(role = link.role.name(), "in-process link closed: {e}");
    }
}

/// A link's two ends as [`serve_link`] takes them.
struct Ends<W> {
    /// What the peer sends.
    reader: LinkReader<ToGateway>,
    /// Resolves when the writer to the peer ended (with why); never for an in-process link.
    written: W,
}

/// Serves an authenticated link: announces the listeners, routes client events to it (if
/// the peer is a worker host, at `place` if it may keep clients: `None` in-process), and
/// executes what it sends until it closes, or until its writer ends. Either way a worker
/// host's link then leaves the router, which sends the events it had not finished to
/// another: a writer that fails first (a reset seen on a write, a stalled write) must not
/// leave them waiting for each client's next event.
async fn serve_link(
    ends: Ends<impl Future<Output = Result<(), LinkError>>>,
    queue: LinkSender<ToWorker>,
    role: Peer,
    place: Option<Place>,
    gateway: &Gateway,
    close: &CancellationToken,
    ping_interval: Duration,
) -> Result<(), LinkError> {
    let Ends {
        mut reader,
        written,
    } = ends;
    queue
        .send(ToWorker::Listeners {
            run: gateway.run,
            listeners: gateway.listeners.clone(),
        })
        .await?;
    // Push clients only send commands and queries; only worker hosts take client events.
    let routed = (role == Peer::Worker).then(|| gateway.router.add(queue.clone(), place));
    let reading = read_loop(
        &mut reader,
        gateway,
        &queue,
        routed.as_deref(),
        close,
        ping_interval,
    );
    let result = tokio::select! {
        result = reading => result,
        result = written => result,
    };
    if let Some(link) = routed {
        gateway
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&link.id);
        // On a stop, the link closes after its events were flushed to the worker host, which
        // runs them; otherwise those it had not finished may be lost with it.
        if close.is_cancelled() {
            gateway.router.remove(&link);
        } else {
            gateway.router.lost(&link);
        }
    }
    result
}

async fn read_loop(
    reader: &mut LinkReader<ToGateway>,
    gateway: &Gateway,
    queue: &LinkSender<ToWorker>,
    routed: Option<&WorkerLink>,
    close: &CancellationToken,
    ping_interval: Duration,
) -> Result<(), LinkError> {
    let stall = ping_interval * SILENT_INTERVALS;
    let mut ping = tokio::time::interval(ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut silent = 0;
    loop {
        let message = tokio::select! {
            _ = close.cancelled() => return Ok(()),
            _ = ping.tick() => {
                silent += 1;
                if silent > SILENT_INTERVALS {
                    return Err(LinkError::Silent(stall));
                }
                // A full queue is the write timeout's business, not the ping's.
                let _ = queue.try_send(ToWorker::Ping);
                continue;
            }
            message = reader.recv() => message?,
        };
        silent = 0;
        match message {
            None => return Ok(()),
            Some(ToGateway::Command(command)) => {
                Counters::bump(&gateway.counters.link_commands);
                gateway.state.execute(command);
            }
            Some(ToGateway::Query { id, query }) => {
                let reply = gateway.answer(&query);
                tokio::time::timeout(stall, queue.send(ToWorker::Reply { id, reply }))
                    .await
                    .map_err(|_| LinkError::Backlogged(LINK_QUEUE))??;
            }
            Some(ToGateway::Done(done)) => {
                if let Some(link) = routed {
                    gateway.router.done(link, done);
                }
            }
            Some(ToGateway::Apps { host, apps }) => {
                if let Some(link) = routed {
                    let served: Vec<String> = apps
                        .iter()
                        .map(|a| format!("{}@{}", a.name, a.version))
                        .collect();
                    tracing::info!(link = link.id, apps = %served.join(", "), "worker host serves these apps");
                    gateway.router.announce(link, host, &apps);
                }
            }
            Some(ToGateway::Returned { client, kind }) => {
                if let Some(link) = routed {
                    gateway.router.returned(link, client, kind);
                }
            }
            Some(ToGateway::Ping) => {
                let _ = queue.try_send(ToWorker::Pong);
            }
            Some(ToGateway::Leaving) => {
                if let Some(link) = routed {
                    tracing::info!(
                        link = link.id,
                        "worker host leaving: its clients move to others once their events there are done"
                    );
                    gateway.router.retire(link);
                }
            }
            Some(ToGateway::Mark(n)) => {
                // Never dropped: the worker host holds acknowledgements until it comes.
                tokio::time::timeout(stall, queue.send(ToWorker::Marked(n)))
                    .await
                    .map_err(|_| LinkError::Backlogged(LINK_QUEUE))??;
            }
            Some(ToGateway::Pong) => {}
            Some(ToGateway::Report(report)) => {
                if let Some(link) = routed {
                    let mut reports = gateway.reports.lock().unwrap_or_else(|e| e.into_inner());
                    reports.insert(link.id, report);
                }
            }
        }
    }
}
