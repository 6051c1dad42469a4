//! The native baseline: the reference protocol (ARCHITECTURE.md §5) served by a bare tokio
//! server — no register, no internal link, no wasm — so that every wasmgate figure can be
//! given as a ratio to the best this machine does with the same libraries.
//!
//! It is built the way a careful hand-written server would be, and the way wasmgate's
//! design asks for: one task per client that answers its own commands directly, one table
//! of clients, groups and uids behind a short `std` lock (never held across an await), and
//! a bounded queue per client for what other clients send it (a broadcast clones one
//! `Bytes` into each queue; the client's task writes a batch and flushes once). WebSocket is
//! tokio-tungstenite with a 1 KiB initial read buffer, as in wasmgate's gateway, or another
//! library ([`WsLib`]); by default the cheapest one per message that serves the scenario
//! ([`WsLib::cheapest`]).
//!
//! Two more shapes ([`Shape::HandedOff`], [`Shape::Linked`], in [`hand_off`]) answer every
//! command on a worker task instead of the client's own, in the process or in a worker
//! process, which is told of each client's arrival and departure too: the least that
//! wasmgate's design (a gateway hands each event to the worker host that runs its plugin,
//! which hands the reply back) costs in a native server, so that the bench can tell the
//! design's share of wasmgate's figures from its own.

mod hand_off;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt, future};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::client::Proto;
use hand_off::Job;
pub use hand_off::serve_worker;

/// Messages one client may have queued by others before it counts as too slow and is
/// closed, as wasmgate's `send_buffer` does.
const QUEUE: usize = 1024;

/// Most queued messages written before one flush (wasmgate's gateway uses the same).
const WRITE_BATCH: usize = 64;

/// Initial WebSocket read buffer, as in wasmgate's gateway.
const READ_BUFFER: usize = 1024;

/// The WebSocket library a baseline server speaks through, so libraries can be compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WsLib {
    /// tokio-tungstenite, which wasmgate uses.
    Tungstenite,
    /// tokio-websockets.
    TokioWebsockets,
    /// fastwebsockets. Its `read_frame` is not cancel-safe, so a connection cannot wait on
    /// its client and its queue at once: this baseline answers commands but never delivers
    /// what other clients send (`pub`, `all`, `touid`) — enough for `echo`, `connect` and
    /// `idle`, not for `fanout`.
    Fastwebsockets,
}

impl WsLib {
    /// The baseline's library when none is asked for: the one that costs least per message
    /// among those that serve the scenario. With a load client that is not the bottleneck,
    /// fastwebsockets answered `echo` with 10–17 % less CPU per message than
    /// tokio-tungstenite and tokio-websockets, and more messages per second (BENCHMARKS.md,
    /// "A lean load client"), so it is the baseline wherever answers are all a scenario
    /// needs. Where the baseline must deliver what clients send each other (`fanout`, the
    /// `idle` broadcast), tokio-tungstenite: fastwebsockets cannot, and tungstenite also
    /// holds the least per idle connection of the three.
    pub fn cheapest(delivers: bool) -> Self {
        if delivers {
            WsLib::Tungstenite
        } else {
            WsLib::Fastwebsockets
        }
    }
}

/// Who answers a client's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// The client's own task, in the poll that read the command.
    Direct,
    /// One of [`hand_off::local`]'s tasks (as many as cores, as wasmgate's default
    /// `instances`), picked by the client's id: the client's task hands the command over a
    /// queue and writes the reply it is handed back, two wake-ups per command that `Direct`
    /// does not make, and one more at the client's arrival and at its departure. Speaks
    /// WebSocket through fastwebsockets only.
    HandedOff,
    /// As `HandedOff`, with the commands sent over one TCP link to a worker process
    /// ([`serve_worker`]) and the replies back, as wasmgate's split layout; meaningful for
    /// `echo` only, since the worker process holds no client table.
    Linked,
}

/// Queued connections the listener lets the kernel hold: what `TcpListener::bind` (mio)
/// asks for, and wasmgate's gateway too.
const BACKLOG: u32 = 1024;

/// The baseline's listener on `addr`, set up as `TcpListener::bind` does, and sharing the
/// port with other processes (`SO_REUSEPORT`) when `reuse_port`.
pub fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves clients on `listener` until the process ends; with [`Shape::Linked`], through the
/// worker process at `worker`.
pub async fn serve(
    listener: TcpListener,
    proto: Proto,
    lib: WsLib,
    shape: Shape,
    worker: Option<SocketAddr>,
) -> io::Result<()> {
    let hub = Arc::new(Hub::default());
    let speaks_fastwebsockets = proto == Proto::Ws && lib == WsLib::Fastwebsockets;
    let workers: Arc<[mpsc::Sender<Job>]> = match (shape, worker) {
        (Shape::Direct, _) => Arc::new([]),
        _ if !speaks_fastwebsockets => {
            return Err(io::Error::other(
                "the hand-off baseline speaks WebSocket through fastwebsockets only",
            ));
        }
        (Shape::HandedOff, _) => hand_off::local(&hub).into(),
        (Shape::Linked, Some(worker)) => hand_off::linked(worker).await?.into(),
        (Shape::Linked, None) => {
            return Err(io::Error::other("the linked baseline needs --worker"));
        }
    };
    loop {
        let (socket, _) = listener.accept().await?;
        let hub = hub.clone();
        let workers = workers.clone();
        tokio::spawn(async move {
            socket.set_nodelay(true)?;
            match (proto, lib) {
                (Proto::Text, _) => client(&hub, Framed::new(socket, Lines)).await,
                (Proto::Ws, WsLib::Tungstenite) => client(&hub, tungstenite(socket).await?).await,
                (Proto::Ws, WsLib::TokioWebsockets) => {
                    client(&hub, tokio_websockets(socket).await?).await;
                }
                (Proto::Ws, WsLib::Fastwebsockets) => {
                    fastwebsockets(&hub, &workers, socket).await?;
                }
            }
            Ok::<_, io::Error>(())
        });
    }
}

/// Upgrades `socket` with tokio-tungstenite and adapts it to the byte messages [`client`]
/// reads and writes.
async fn tungstenite(
    socket: TcpStream,
) -> io::Result<impl Stream<Item = io::Result<Option<Bytes>>> + Sink<Bytes> + Unpin> {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let ws = tokio_tungstenite::accept_async_with_config(socket, Some(config))
        .await
        .map_err(io::Error::other)?;
    Ok(ws
        .map(|message| match message {
            Ok(Message::Text(text)) => Ok(Some(Bytes::from(text))),
            Ok(Message::Binary(data)) => Ok(Some(data)),
            Ok(Message::Close(_)) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => Ok(None),
            Err(e) => Err(io::Error::other(e)),
        })
        .with(|data: Bytes| future::ready(Ok::<_, tungstenite::Error>(frame(data)))))
}

/// A text frame for UTF-8, a binary frame otherwise: the choice wasmgate makes.
fn frame(data: Bytes) -> Message {
    match Utf8Bytes::try_from(data.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(data),
    }
}

/// As [`tungstenite`], with tokio-websockets.
async fn tokio_websockets(
    socket: TcpStream,
) -> io::Result<impl Stream<Item = io::Result<Option<Bytes>>> + Sink<Bytes> + Unpin> {
    use tokio_websockets::Message;
    let (_, ws) = tokio_websockets::ServerBuilder::new()
        .accept(socket)
        .await
        .map_err(io::Error::other)?;
    Ok(ws
        .map(|message| match message {
            Ok(m) if m.is_text() || m.is_binary() => Ok(Some(Bytes::from(m.into_payload()))),
            Ok(m) if m.is_close() => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => Ok(None),
            Err(e) => Err(io::Error::other(e)),
        })
        .with(|data: Bytes| {
            let message = if std::str::from_utf8(&data).is_ok() {
                Message::text(data)
            } else {
                Message::binary(data)
            };
            future::ready(Ok::<_, tokio_websockets::Error>(message))
        }))
}

/// Serves one fastwebsockets client: answers its commands (see [`WsLib::Fastwebsockets`]),
/// itself, or through one of `workers` when there are any ([`Shape::HandedOff`],
/// [`Shape::Linked`]).
async fn fastwebsockets(
    hub: &Hub,
    workers: &[mpsc::Sender<Job>],
    mut socket: TcpStream,
) -> io::Result<()> {
    use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, Role, WebSocket};
    upgrade(&mut socket).await?;
    let mut ws = FragmentCollector::new(WebSocket::after_handshake(socket, Role::Server));
    // Nobody reads this queue: what other clients send is dropped (see the variant's doc).
    let (queue, _undelivered) = mpsc::channel(1);
    let id = hub.add(queue);
    // The client's arrival and departure reach its worker too, as wasmgate's events do.
    let worker = (!workers.is_empty()).then(|| &workers[id as usize % workers.len()]);
    let event = || Job {
        client: id,
        message: Bytes::new(),
        reply: None,
    };
    if let Some(worker) = worker {
        worker.send(event()).await.map_err(io::Error::other)?;
    }
    // One command in flight at a time: a reply comes back before the next frame is read.
    let (replies, mut replied) = mpsc::channel(1);
    let served = async {
        loop {
            let frame = ws.read_frame().await.map_err(io::Error::other)?;
            let reply = match frame.opcode {
                OpCode::Text | OpCode::Binary => match worker {
                    None => hub.command(id, &frame.payload),
                    Some(worker) => {
                        let job = Job {
                            client: id,
                            message: Bytes::copy_from_slice(&frame.payload),
                            reply: Some(replies.clone()),
                        };
                        worker.send(job).await.map_err(io::Error::other)?;
                        replied.recv().await.flatten()
                    }
                },
                OpCode::Close => return Ok(()),
                _ => None,
            };
            if let Some(reply) = reply {
                let payload = Payload::Borrowed(&reply);
                let frame = if std::str::from_utf8(&reply).is_ok() {
                    Frame::text(payload)
                } else {
                    Frame::binary(payload)
                };
                ws.write_frame(frame).await.map_err(io::Error::other)?;
            }
        }
    };
    let result = served.await;
    hub.remove(id);
    if let Some(worker) = worker {
        // A worker that has stopped leaves nothing to tell.
        let _ = worker.send(event()).await;
    }
    result
}

/// Answers a WebSocket upgrade request (RFC 6455 §4.2), which fastwebsockets leaves to hyper.
/// Clients send nothing before the answer, so no frame bytes are read past the request.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(socket: &mut S) -> io::Result<()> {
    use base64::Engine;
    use sha1::Digest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::with_capacity(512);
    while !request.ends_with(b"\r\n\r\n") {
        if request.len() > 8192 || socket.read_buf(&mut request).await? == 0 {
            return Err(io::ErrorKind::InvalidData.into());
        }
    }
    let text = String::from_utf8_lossy(&request);
    let key = text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, value)| value.trim())
        .ok_or(io::ErrorKind::InvalidData)?;
    let digest = sha1::Sha1::new()
        .chain_update(key)
        .chain_update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
        .finalize();
    let accept = base64::engine::general_purpose::STANDARD.encode(digest);
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    socket.write_all(answer.as_bytes()).await
}

/// Serves one client: answers its commands and writes what other clients queue for it.
async fn client<C>(hub: &Hub, mut conn: C)
where
    C: Stream<Item = io::Result<Option<Bytes>>> + Sink<Bytes> + Unpin,
{
    let (queue, mut queued) = mpsc::channel(QUEUE);
    let id = hub.add(queue);
    loop {
        tokio::select! {
            message = conn.next() => match message {
                Some(Ok(Some(message))) => {
                    if let Some(reply) = hub.command(id, &message)
                        && conn.send(reply).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(None)) => {}
                _ => break,
            },
            out = queued.recv() => {
                let mut next = out;
                let mut written = 0;
                while let Some(Out::Data(data)) = next.take() {
                    if conn.feed(data).await.is_err() {
                        break;
                    }
                    written += 1;
                    if written < WRITE_BATCH {
                        next = queued.try_recv().ok();
                    }
                }
                if matches!(next, Some(Out::Close)) || conn.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    hub.remove(id);
}

/// What other clients queue for a client.
enum Out {
    Data(Bytes),
    /// `kick`, or the client fell [`QUEUE`] behind.
    Close,
}

/// Every client with its groups, uid and session.
#[derive(Default)]
struct Hub {
    next_id: AtomicU64,
    tables: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    clients: HashMap<u64, Peer>,
    groups: HashMap<String, HashMap<u64, mpsc::Sender<Out>>>,
    uids: HashMap<String, HashMap<u64, mpsc::Sender<Out>>>,
}

struct Peer {
    queue: mpsc::Sender<Out>,
    groups: HashSet<String>,
    uid: Option<String>,
    session: HashMap<String, String>,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, queue: mpsc::Sender<Out>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let peer = Peer {
            queue,
            groups: HashSet::new(),
            uid: None,
            session: HashMap::new(),
        };
        self.lock().clients.insert(id, peer);
        id
    }

    fn remove(&self, id: u64) {
        let mut tables = self.lock();
        let Some(peer) = tables.clients.remove(&id) else {
            return;
        };
        for group in peer.groups {
            leave(&mut tables.groups, &group, id);
        }
        if let Some(uid) = peer.uid {
            leave(&mut tables.uids, &uid, id);
        }
    }

    /// Runs one reference-protocol command of client `id`; returns its reply, if any.
    fn command(&self, id: u64, message: &[u8]) -> Option<Bytes> {
        let (word, rest) = split(message);
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let rest = rest.unwrap_or_default();
        if word == b"echo" {
            // The echo path takes no lock, as a hand-written echo would not.
            return Some(Bytes::copy_from_slice(rest));
        }
        let mut tables = self.lock();
        let reply = match word {
            b"join" => {
                let group = text(rest);
                let peer = tables.clients.get_mut(&id)?;
                peer.groups.insert(group.clone());
                let queue = peer.queue.clone();
                let members = tables.groups.entry(group.clone()).or_default();
                members.insert(id, queue);
                format!("joined {group}")
            }
            b"leave" => {
                let group = text(rest);
                tables.clients.get_mut(&id)?.groups.remove(&group);
                leave(&mut tables.groups, &group, id);
                format!("left {group}")
            }
            b"pub" => {
                let (group, payload) = split(rest);
                let payload = Bytes::copy_from_slice(payload.unwrap_or_default());
                if let Some(members) = tables.groups.get(&text(group)) {
                    deliver(members.values(), &payload);
                }
                return None;
            }
            b"all" => {
                let payload = Bytes::copy_from_slice(rest);
                deliver(tables.clients.values().map(|p| &p.queue), &payload);
                return None;
            }
            b"bind" => {
                let uid = text(rest);
                let peer = tables.clients.get_mut(&id)?;
                let old = peer.uid.replace(uid.clone());
                let queue = peer.queue.clone();
                if let Some(old) = old {
                    leave(&mut tables.uids, &old, id);
                }
                tables
                    .uids
                    .entry(uid.clone())
                    .or_default()
                    .insert(id, queue);
                format!("bound {uid}")
            }
            b"unbind" => {
                let uid = text(rest);
                let peer = tables.clients.get_mut(&id)?;
                if peer.uid.as_deref() == Some(uid.as_str()) {
                    peer.uid = None;
                    leave(&mut tables.uids, &uid, id);
                }
                format!("unbound {uid}")
            }
            b"touid" => {
                let (uid, payload) = split(rest);
                let payload = Bytes::copy_from_slice(payload.unwrap_or_default());
                if let Some(clients) = tables.uids.get(&text(uid)) {
                    deliver(clients.values(), &payload);
                }
                return None;
            }
            b"count" => {
                let group = text(rest);
                let n = tables.groups.get(&group).map_or(0, HashMap::len);
                format!("count {group} {n}")
            }
            b"set" => {
                let (key, value) = split(rest);
                let (key, value) = (text(key), text(value.unwrap_or_default()));
                tables.clients.get_mut(&id)?.session.insert(key, value);
                "ok".into()
            }
            b"get" => {
                let key = text(rest);
                match tables.clients.get(&id)?.session.get(&key) {
                    Some(value) => format!("value {key} {value}"),
                    None => "none".into(),
                }
            }
            b"whoami" => format!("{id:020x}"),
            b"kick" => {
                let target = u64::from_str_radix(&text(rest), 16).ok()?;
                let _ = tables.clients.get(&target)?.queue.try_send(Out::Close);
                return None;
            }
            _ => "error unknown command".into(),
        };
        Some(reply.into())
    }
}

/// Queues `payload` for every recipient; one that is [`QUEUE`] behind is closed.
fn deliver<'a>(recipients: impl Iterator<Item = &'a mpsc::Sender<Out>>, payload: &Bytes) {
    for queue in recipients {
        if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(Out::Data(payload.clone()))
        {
            // The queue is full, so the close has to wait its turn: drop it rather than block.
            let _ = queue.try_send(Out::Close);
        }
    }
}

/// Removes `id` from `name`'s members, and the entry once it is empty.
fn leave(table: &mut HashMap<String, HashMap<u64, mpsc::Sender<Out>>>, name: &str, id: u64) {
    if let Some(members) = table.get_mut(name) {
        members.remove(&id);
        if members.is_empty() {
            table.remove(name);
        }
    }
}

/// Splits at the first space: the bytes before it, and those after it if there is one.
fn split(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    match bytes.iter().position(|&b| b == b' ') {
        Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
        None => (bytes, None),
    }
}

/// Newline-terminated messages for the text protocol.
struct Lines;

impl Decoder for Lines {
    type Item = Option<Bytes>;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Option<Bytes>>> {
        Ok(buf.iter().position(|&b| b == b'\n').map(|end| {
            let line = buf.split_to(end).freeze();
            buf.advance(1);
            Some(line)
        }))
    }
}

impl Encoder<Bytes> for Lines {
    type Error = io::Error;

    fn encode(&mut self, data: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        dst.reserve(data.len() + 1);
        dst.put_slice(&data);
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(hub: &Hub, id: u64, message: &str) -> Option<String> {
        hub.command(id, message.as_bytes())
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn upgrade_answers_with_the_rfc_6455_accept_key() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, mut server) = tokio::io::duplex(4096);
        client
            .write_all(b"GET / HTTP/1.1\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            .await
            .unwrap();
        upgrade(&mut server).await.unwrap();
        drop(server);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 101 "));
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn reference_commands() {
        let hub = Hub::default();
        let (tx, mut rx) = mpsc::channel(8);
        let a = hub.add(tx);
        let (tx, _rx) = mpsc::channel(8);
        let b = hub.add(tx);
        assert_eq!(reply(&hub, a, "echo hi there").as_deref(), Some("hi there"));
        assert_eq!(reply(&hub, a, "join room").as_deref(), Some("joined room"));
        assert_eq!(
            reply(&hub, b, "count room").as_deref(),
            Some("count room 1")
        );
        assert_eq!(reply(&hub, b, "pub room hello"), None);
        assert!(matches!(rx.try_recv(), Ok(Out::Data(d)) if d == "hello"));
        assert_eq!(reply(&hub, a, "bind u1").as_deref(), Some("bound u1"));
        assert_eq!(reply(&hub, b, "touid u1 psst"), None);
        assert!(matches!(rx.try_recv(), Ok(Out::Data(d)) if d == "psst"));
        assert_eq!(reply(&hub, a, "set nick Ada L").as_deref(), Some("ok"));
        assert_eq!(
            reply(&hub, a, "get nick").as_deref(),
            Some("value nick Ada L")
        );
        assert_eq!(reply(&hub, a, "whoami"), Some(format!("{a:020x}")));
        assert_eq!(reply(&hub, b, &format!("kick {a:020x}")), None);
        assert!(matches!(rx.try_recv(), Ok(Out::Close)));
        hub.remove(a);
        assert_eq!(
            reply(&hub, b, "count room").as_deref(),
            Some("count room 0")
        );
        assert_eq!(
            reply(&hub, b, "nope").as_deref(),
            Some("error unknown command")
        );
    }
}
