//! Test clients for every client protocol, with bounded waits: a test that expects a message
//! fails after [`RECV_TIMEOUT`] instead of hanging.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest a client waits for an expected message.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected client speaking WebSocket or text lines.
pub enum TestClient {
    /// A WebSocket client.
    Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    /// A WebSocket client over TLS.
    Wss(Box<WebSocketStream<TlsStream<TcpStream>>>),
    /// A text-line client.
    Text(BufReader<OwnedReadHalf>, OwnedWriteHalf),
    /// A frame-protocol client (4-byte big-endian total length, then the message).
    Frame(BufReader<OwnedReadHalf>, OwnedWriteHalf),
}

/// What a client saw instead of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Silence {
    /// Nothing arrived in time.
    Timeout,
    /// The server closed the connection.
    Closed,
}

impl TestClient {
    /// Connects a WebSocket client to `ws://addr/path`.
    pub async fn ws(addr: SocketAddr, path: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}")).await?;
        Ok(Self::Ws(Box::new(ws)))
    }

    /// Connects a WebSocket client over TLS to `wss://localhost:PORT/path` at `addr`,
    /// trusting only `root` (the test's self-signed certificate, valid for `localhost`).
    pub async fn wss(
        addr: SocketAddr,
        path: &str,
        root: CertificateDer<'static>,
    ) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        roots.add(root)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let url = format!("wss://localhost:{}{path}", addr.port());
        let (ws, _) = tokio_tungstenite::client_async(url, tls).await?;
        Ok(Self::Wss(Box::new(ws)))
    }

    /// Connects a text-line client.
    pub async fn text(addr: SocketAddr) -> anyhow::Result<Self> {
        let (r, w) = TcpStream::connect(addr).await?.into_split();
        Ok(Self::Text(BufReader::new(r), w))
    }

    /// Connects a frame-protocol client. Its writes are not coalesced (`TCP_NODELAY`), so
    /// each [`send_raw`](Self::send_raw) leaves as a segment of its own.
    pub async fn frame(addr: SocketAddr) -> anyhow::Result<Self> {
        let socket = TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        let (r, w) = socket.into_split();
        Ok(Self::Frame(BufReader::new(r), w))
    }

    /// Writes `bytes` as they are (text and frame clients only), to split or join messages.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Text(_, w) | Self::Frame(_, w) => Ok(w.write_all(bytes).await?),
            Self::Ws(_) | Self::Wss(_) => anyhow::bail!("raw bytes would break the WebSocket"),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        match self {
            Self::Ws(ws) => ws.send(Message::text(text)).await?,
            Self::Wss(ws) => ws.send(Message::text(text)).await?,
            Self::Text(_, w) => {
                w.write_all(format!("{text}\n").as_bytes()).await?;
            }
            Self::Frame(_, w) => w.write_all(&frame(text.as_bytes())).await?,
        }
        Ok(())
    }

    /// Sends one message of any bytes (a binary frame over WebSocket).
    pub async fn send_bytes(&mut self, data: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Ws(ws) => ws.send(Message::binary(data.to_vec())).await?,
            Self::Wss(ws) => ws.send(Message::binary(data.to_vec())).await?,
            Self::Text(_, w) => w.write_all(&[data, b"\n"].concat()).await?,
            Self::Frame(_, w) => w.write_all(&frame(data)).await?,
        }
        Ok(())
    }

    /// The next message, or why there is none within `wait` (bytes that are not UTF-8 are
    /// replaced: use [`TestClient::recv_bytes`] to see them).
    pub async fn recv_within(&mut self, wait: Duration) -> Result<String, Silence> {
        // Valid UTF-8 (the common case) becomes the string without a copy.
        self.recv_bytes_within(wait).await.map(|data| {
            String::from_utf8(data)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        })
    }

    /// The next message as bytes, or why there is none within `wait`.
    pub async fn recv_bytes_within(&mut self, wait: Duration) -> Result<Vec<u8>, Silence> {
        let next = async {
            match self {
                Self::Ws(ws) => ws_next(ws).await.map_err(|_| Silence::Closed),
                Self::Wss(ws) => ws_next(ws).await.map_err(|_| Silence::Closed),
                Self::Text(r, _) => {
                    let mut line = Vec::new();
                    match r.read_until(b'\n', &mut line).await {
                        Ok(0) | Err(_) => Err(Silence::Closed),
                        Ok(_) => {
                            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                                line.pop();
                            }
                            Ok(line)
                        }
                    }
                }
                Self::Frame(r, _) => {
                    let read = async {
                        let total = r.read_u32().await? as usize;
                        let mut data = vec![0; total.saturating_sub(4)];
                        r.read_exact(&mut data).await?;
                        std::io::Result::Ok(data)
                    };
                    read.await.map_err(|_| Silence::Closed)
                }
            }
        };
        tokio::time::timeout(wait, next)
            .await
            .unwrap_or(Err(Silence::Timeout))
    }

    /// The next message as bytes; panics if none arrives within [`RECV_TIMEOUT`].
    pub async fn recv_bytes(&mut self) -> Vec<u8> {
        match self.recv_bytes_within(RECV_TIMEOUT).await {
            Ok(m) => m,
            Err(e) => panic!("expected a message, got {e:?}"),
        }
    }

    /// Sends `data` with [`TestClient::send_bytes`] and returns the next message as bytes.
    pub async fn ask_bytes(&mut self, data: &[u8]) -> Vec<u8> {
        self.send_bytes(data).await.expect("send");
        self.recv_bytes().await
    }

    /// The next message; panics if none arrives within [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> String {
        match self.recv_within(RECV_TIMEOUT).await {
            Ok(m) => m,
            Err(e) => panic!("expected a message, got {e:?}"),
        }
    }

    /// Sends `text` and returns the next message.
    pub async fn ask(&mut self, text: &str) -> String {
        self.send(text).await.expect("send");
        self.recv().await
    }

    /// Sends `question` until the reply is `expected`, skipping other replies: for a state that
    /// changes asynchronously (a close being processed, a plugin version being loaded, while
    /// questions may go unanswered). Panics after a bounded number of tries.
    pub async fn ask_until(&mut self, question: &str, expected: &str) {
        for _ in 0..40 {
            self.send(question).await.expect("send");
            while let Ok(reply) = self.recv_within(Duration::from_millis(250)).await {
                if reply == expected {
                    return;
                }
            }
        }
        panic!("{question:?} never got {expected:?}");
    }

    /// Asserts that nothing arrives within `wait` (the connection stays open).
    pub async fn assert_silent(&mut self, wait: Duration) {
        match self.recv_within(wait).await {
            Err(Silence::Timeout) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Waits until the server closes the connection, skipping messages, and returns the
    /// WebSocket close frame it sent (none for other protocols, or a close without a frame).
    pub async fn close_frame(&mut self) -> Option<CloseFrame> {
        let closed = async {
            match self {
                Self::Ws(ws) => ws_closed(ws).await,
                Self::Wss(ws) => ws_closed(ws).await,
                Self::Text(..) | Self::Frame(..) => {
                    while self.recv_within(RECV_TIMEOUT).await != Err(Silence::Closed) {}
                    None
                }
            }
        };
        tokio::time::timeout(RECV_TIMEOUT, closed)
            .await
            .expect("the connection was not closed")
    }

    /// Waits until the server closes the connection, skipping messages.
    pub async fn assert_closed(&mut self) {
        loop {
            match self.recv_within(RECV_TIMEOUT).await {
                Err(Silence::Closed) => return,
                Err(Silence::Timeout) => panic!("the connection was not closed"),
                Ok(_) => continue,
            }
        }
    }
}

/// A message in the frame protocol: its total length (prefix included), then the bytes.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let total = u32::try_from(data.len() + 4).expect("a test frame under 4 GiB");
    let mut out = total.to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

/// Skips a WebSocket's messages until it closes; returns the close frame, if there was one.
async fn ws_closed<S>(ws: &mut WebSocketStream<S>) -> Option<CloseFrame>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        if let Err(frame) = ws_next(ws).await {
            return frame;
        }
    }
}

/// The next data message of a WebSocket, skipping pings and pongs; `Err` with the close frame,
/// if there was one, once the connection is closed.
async fn ws_next<S>(ws: &mut WebSocketStream<S>) -> Result<Vec<u8>, Option<CloseFrame>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_bytes().to_vec()),
            Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
            Some(Ok(Message::Close(frame))) => return Err(frame),
            Some(Err(_)) | None => return Err(None),
            Some(Ok(_)) => continue,
        }
    }
}
