//! PHP BusinessWorkers' links to a gateway (`CMD_WORKER_CONNECT`, reference §1 and §9.2).
//!
//! A BusinessWorker whose `name` is NAME serves the listeners whose app is `php:NAME`
//! ([`PHP_APP_PREFIX`]): its link joins the gateway's own router as a worker host announcing that
//! one app, so clients are bound to it sticky and least-connections, held while none is
//! linked and closed after `no_worker_hold`, exactly as for wasm apps. Events leave as
//! GatewayProtocol packets (`CMD_ON_CONNECT`, `CMD_ON_WEBSOCKET_CONNECT`, `CMD_ON_MESSAGE`,
//! `CMD_ON_CLOSE`) carrying the client's address, the gateway's and the serialized session;
//! `CMD_PING` goes every `link_ping_interval`. What the worker sends back (commands, and
//! queries answered on the same socket) runs as GatewayClient's does.
//!
//! GatewayWorker has no acknowledgements: an event counts as done for the client's window once
//! it is written to the worker's socket. A worker that reads nothing for three ping intervals
//! is dropped; its clients move to another linked worker on their next event.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, timeout};
use tokio_util::codec::{Encoder, Framed, FramedRead};
use tracing::info;

use super::packet::{FLAG_BODY_IS_SCALAR, Packet, PacketCodec, PacketError, cmd};
use super::php_serial::{self, Value};
use super::session;
use crate::config::PHP_APP_PREFIX;
use crate::gateway::Gateway;
use crate::gateway::router::{Router, WorkerLink};
use crate::wire::messages::{
    ClientContext, EventKind, ListenerInfo, ServedApp, ToWorker, WebSocketRequest,
};
use crate::wire::queue::{self, LinkReceiver, Towards};

/// Messages queued for one BusinessWorker before the clients sending there wait (bytes are
/// bounded too: `link_queue_bytes`).
const LINK_QUEUE: usize = 4096;

/// Query replies waiting for the socket; the worker's reads wait beyond them.
const REPLIES: usize = 64;

/// Ping intervals a worker may read nothing for before its link is dropped.
const SILENT_INTERVALS: u32 = 3;

/// Why a BusinessWorker's link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkEnd {
    /// The worker read nothing for this long.
    #[error("the worker read nothing for {0:?}")]
    Stalled(Duration),
    /// A packet that is not GatewayProtocol, or a socket failure.
    #[error(transparent)]
    Packet(#[from] PacketError),
}

/// How a BusinessWorker's link is served.
pub struct LinkSettings {
    /// How often it gets `CMD_PING` (`link_ping_interval`); a worker that reads nothing for
    /// three of them is dropped.
    pub ping_interval: Duration,
    /// Bytes queued towards it before the clients sending there wait (`link_queue_bytes`).
    pub queue_bytes: usize,
}

/// Serves a BusinessWorker named `name` whose `CMD_WORKER_CONNECT` was read off `packets`;
/// `execute` runs what it sends (a query's reply goes back on the link).
pub async fn serve(
    packets: Framed<TcpStream, PacketCodec>,
    gateway: &Gateway,
    settings: &LinkSettings,
    name: &str,
    execute: impl Fn(Packet) -> Option<Bytes>,
) -> Result<(), LinkEnd> {
    let parts = packets.into_parts();
    let (read, write) = parts.io.into_split();
    let mut reader = FramedRead::new(read, parts.codec);
    reader.read_buffer_mut().extend_from_slice(&parts.read_buf);
    let (queue, events) = queue::channel(LINK_QUEUE, settings.queue_bytes, Towards::Worker);
    let linked = Linked {
        router: gateway.router.clone(),
        // A PHP worker runs no `on-close` for a lost gateway's clients: it keeps none.
        link: gateway.router.add(queue, None),
    };
    let app = format!("{PHP_APP_PREFIX}{name}");
    let served = ServedApp {
        name: app.clone(),
        version: "php".into(),
        presence: false,
    };
    // The host id only tells apart hosts that take presence, which a PHP worker never does.
    gateway.router.announce(&linked.link, 0, &[served]);
    info!(worker = name, %app, "gatewayworker port: a PHP BusinessWorker linked");
    let (replies, replied) = mpsc::channel(REPLIES);
    let writing = write_loop(
        write,
        events,
        replied,
        gateway,
        &linked.link,
        settings.ping_interval,
    );
    let reading = async {
        while let Some(packet) = reader.next().await.transpose()? {
            if let Some(answer) = execute(packet)
                && replies.send(answer).await.is_err()
            {
                break;
            }
        }
        Ok(())
    };
    tokio::select! {
        read = reading => read,
        written = writing => written,
    }
}

/// A BusinessWorker's place in the router, given up when its link ends however it ends: its
/// clients' events not yet written go to another worker.
struct Linked {
    router: Arc<Router>,
    link: Arc<WorkerLink>,
}

impl Drop for Linked {
    fn drop(&mut self) {
        self.router.lost(&self.link);
    }
}

/// Writes the events routed to the worker, the replies to its queries and `CMD_PING`.
async fn write_loop(
    mut write: OwnedWriteHalf,
    mut events: LinkReceiver<ToWorker>,
    mut replies: mpsc::Receiver<Bytes>,
    gateway: &Gateway,
    link: &WorkerLink,
    ping_interval: Duration,
) -> Result<(), LinkEnd> {
    let stall = ping_interval * SILENT_INTERVALS;
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut codec = PacketCodec::default();
    let mut out = BytesMut::new();
    loop {
        out.clear();
        let done = tokio::select! {
            message = events.recv() => match message {
                None => return Ok(()),
                Some(ToWorker::Event { client, kind, .. }) => {
                    for packet in event_packets(&gateway.listeners, &client, &kind) {
                        codec.encode(&packet, &mut out)?;
                    }
                    Some(client.id)
                }
                // Listeners, replies and pings of wasmgate's own links have no PHP form.
                Some(_) => None,
            },
            reply = replies.recv() => match reply {
                Some(reply) => {
                    out.extend_from_slice(&reply);
                    None
                }
                None => return Ok(()),
            },
            _ = ping.tick() => {
                codec.encode(&ping_packet(), &mut out)?;
                None
            }
        };
        timeout(stall, write.write_all(&out))
            .await
            .map_err(|_| LinkEnd::Stalled(stall))?
            .map_err(PacketError::Io)?;
        if let Some(client) = done {
            gateway.router.done(link, vec![(client, 1)]);
        }
    }
}

/// `CMD_PING`: every field zero but the command and the scalar flag, no body.
fn ping_packet() -> Packet {
    Packet {
        flag: FLAG_BODY_IS_SCALAR,
        ..Packet::new(cmd::PING)
    }
}

/// The packets GatewayWorker's gateway sends for one event: a WebSocket client's handshake
/// is `CMD_ON_CONNECT` then `CMD_ON_WEBSOCKET_CONNECT`, as PHP workers expect.
fn event_packets(
    listeners: &[ListenerInfo],
    client: &ClientContext,
    kind: &EventKind,
) -> Vec<Packet> {
    let client_ip = match client.remote.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    let gateway_port = listeners
        .get(usize::from(client.listener))
        .map_or(0, |l| l.port);
    let ext_data = if client.session.is_empty() {
        Bytes::new()
    } else {
        Bytes::from(session::to_php(&client.session))
    };
    let event = |cmd: u8, flag: u8, body: Bytes| Packet {
        cmd,
        local_ip: *client.id.gateway.ip(),
        local_port: client.id.gateway.port(),
        client_ip,
        client_port: client.remote.port(),
        connection_id: client.id.index,
        flag,
        gateway_port,
        ext_data: ext_data.clone(),
        body,
    };
    let scalar = |cmd: u8, body: Bytes| event(cmd, FLAG_BODY_IS_SCALAR, body);
    match kind {
        EventKind::Connect => vec![scalar(cmd::ON_CONNECT, Bytes::new())],
        EventKind::WebSocketConnect(request) => {
            let data = handshake_data(request, client, gateway_port);
            vec![
                scalar(cmd::ON_CONNECT, Bytes::new()),
                // An array: serialized, the scalar flag clear.
                event(
                    cmd::ON_WEBSOCKET_CONNECT,
                    0,
                    php_serial::encode(&data).into(),
                ),
            ]
        }
        EventKind::Message(data) => vec![scalar(cmd::ON_MESSAGE, data.clone())],
        EventKind::Close => vec![scalar(cmd::ON_CLOSE, Bytes::new())],
        // Made inside a worker host from presence reports, never routed by a gateway.
        EventKind::UidOnline(_) | EventKind::UidOffline(_) => Vec::new(),
    }
}

/// `onWebSocketConnect`'s `$data`: `get` (the query's parameters), `server` (reference
/// §3.1's keys, in its order, then one `HTTP_<NAME>` per header) and `cookie`. Parameters
/// and cookies are form-decoded; a name given twice keeps its last value (PHP's `a[]`
/// arrays are not built).
fn handshake_data(request: &WebSocketRequest, client: &ClientContext, port: u16) -> Value {
    let text = |s: &str| Value::Str(s.as_bytes().to_vec());
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let pairs = |encoded: &str| {
        Value::keyed(
            form_urlencoded::parse(encoded.as_bytes())
                .map(|(name, value)| (name.into_owned(), text(&value))),
        )
    };
    let host = header("host").unwrap_or_default();
    let server_name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    let uri = if request.query.is_empty() {
        request.path.clone()
    } else {
        format!("{}?{}", request.path, request.query)
    };
    let mut server: Vec<(String, Value)> = vec![
        ("QUERY_STRING".into(), text(&request.query)),
        ("REQUEST_METHOD".into(), text("GET")),
        ("REQUEST_URI".into(), text(&uri)),
        ("SERVER_PROTOCOL".into(), text("HTTP/1.1")),
        ("SERVER_NAME".into(), text(server_name)),
        (
            "CONTENT_TYPE".into(),
            text(header("content-type").unwrap_or_default()),
        ),
        (
            "REMOTE_ADDR".into(),
            text(&client.remote.ip().to_canonical().to_string()),
        ),
        (
            "REMOTE_PORT".into(),
            Value::Int(client.remote.port().into()),
        ),
        ("SERVER_PORT".into(), Value::Int(port.into())),
    ];
    server.extend(request.headers.iter().map(|(name, value)| {
        let name = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        (name, text(value))
    }));
    let cookies = header("cookie").unwrap_or_default().replace("; ", "&");
    Value::keyed([
        ("get".to_owned(), pairs(&request.query)),
        ("server".to_owned(), Value::keyed(server)),
        ("cookie".to_owned(), pairs(&cookies)),
    ])
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, SocketAddrV4};

    use super::*;
    use crate::client_id::ClientId;
    use crate::ops::Session;

    fn client(session: Session) -> ClientContext {
        ClientContext {
            id: ClientId::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2300), 8),
            remote: SocketAddr::from(([10, 0, 0, 5], 40000)),
            listener: 0,
            uid: None,
            session: Arc::new(session),
            session_version: 0,
            event: 0,
        }
    }

    fn listeners() -> Vec<ListenerInfo> {
        vec![ListenerInfo {
            name: "chat".into(),
            app: "php:events".into(),
            port: 8282,
        }]
    }

    fn bytes(packets: Vec<Packet>) -> Vec<u8> {
        let mut out = BytesMut::new();
        for packet in &packets {
            PacketCodec::default().encode(packet, &mut out).unwrap();
        }
        out.to_vec()
    }

    #[test]
    fn a_message_event_is_gatewayworkers_packet() {
        let mut session = Session::new();
        session.insert("name".into(), "alice".into());
        let message = EventKind::Message(Bytes::from_static(b"hi"));
        // 28-byte header: length 59, cmd 3, gateway 127.0.0.1:2300, client 10.0.0.5:40000,
        // connection 8, scalar flag, client-facing port 8282, then the session and the body.
        let expected: &[u8] = b"\x00\x00\x00\x3b\x03\x7f\x00\x00\x01\x08\xfc\
            \x0a\x00\x00\x05\x9c\x40\x00\x00\x00\x08\x01\x20\x5a\x00\x00\x00\x1d\
            a:1:{s:4:\"name\";s:5:\"alice\";}hi";
        assert_eq!(
            bytes(event_packets(&listeners(), &client(session), &message)),
            expected
        );
        // No session: an empty ext_data, as GatewayWorker's `''`.
        let close = bytes(event_packets(
            &listeners(),
            &client(Session::new()),
            &EventKind::Close,
        ));
        assert_eq!(
            close,
            b"\x00\x00\x00\x1c\x04\x7f\x00\x00\x01\x08\xfc\
            \x0a\x00\x00\x05\x9c\x40\x00\x00\x00\x08\x01\x20\x5a\x00\x00\x00\x00"
        );
        assert_eq!(
            bytes(vec![ping_packet()]),
            b"\x00\x00\x00\x1c\xc9\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0"
        );
    }

    #[test]
    fn a_websocket_handshake_is_on_connect_then_its_request_serialized() {
        let request = WebSocketRequest {
            path: "/chat".into(),
            query: "token=a%20b&room=5".into(),
            headers: vec![
                ("host".into(), "example.com:8282".into()),
                ("cookie".into(), "sid=x1; lang=en".into()),
            ],
        };
        let packets = event_packets(
            &listeners(),
            &client(Session::new()),
            &EventKind::WebSocketConnect(Arc::new(request)),
        );
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].cmd, cmd::ON_CONNECT);
        assert_eq!(packets[0].body, Bytes::new());
        assert_eq!(packets[1].cmd, cmd::ON_WEBSOCKET_CONNECT);
        assert_eq!(packets[1].flag, 0);
        let expected = concat!(
            r#"a:3:{s:3:"get";a:2:{s:5:"token";s:3:"a b";s:4:"room";s:1:"5";}"#,
            r#"s:6:"server";a:11:{s:12:"QUERY_STRING";s:18:"token=a%20b&room=5";"#,
            r#"s:14:"REQUEST_METHOD";s:3:"GET";s:11:"REQUEST_URI";s:24:"/chat?token=a%20b&room=5";"#,
            r#"s:15:"SERVER_PROTOCOL";s:8:"HTTP/1.1";s:11:"SERVER_NAME";s:11:"example.com";"#,
            r#"s:12:"CONTENT_TYPE";s:0:"";s:11:"REMOTE_ADDR";s:8:"10.0.0.5";"#,
            r#"s:11:"REMOTE_PORT";i:40000;s:11:"SERVER_PORT";i:8282;"#,
            r#"s:9:"HTTP_HOST";s:16:"example.com:8282";s:11:"HTTP_COOKIE";s:15:"sid=x1; lang=en";}"#,
            r#"s:6:"cookie";a:2:{s:3:"sid";s:2:"x1";s:4:"lang";s:2:"en";}}"#,
        );
        assert_eq!(std::str::from_utf8(&packets[1].body).unwrap(), expected);
    }
}
