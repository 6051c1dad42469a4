//! Test clients for both client protocols, with bounded waits: a test that expects a message
//! fails after [`RECV_TIMEOUT`] instead of hanging.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest a client waits for an expected message.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected client speaking WebSocket or text lines.
pub enum TestClient {
    /// A WebSocket client.
    Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    /// A text-line client.
    Text(BufReader<OwnedReadHalf>, OwnedWriteHalf),
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

    /// Connects a text-line client.
    pub async fn text(addr: SocketAddr) -> anyhow::Result<Self> {
        let (r, w) = TcpStream::connect(addr).await?.into_split();
        Ok(Self::Text(BufReader::new(r), w))
    }

    /// Sends one message.
    pub async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        match self {
            Self::Ws(ws) => ws.send(Message::text(text)).await?,
            Self::Text(_, w) => {
                w.write_all(format!("{text}\n").as_bytes()).await?;
            }
        }
        Ok(())
    }

    /// The next message, or why there is none within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<String, Silence> {
        let next = async {
            match self {
                Self::Ws(ws) => loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                        Some(Ok(Message::Binary(b))) => {
                            return Ok(String::from_utf8_lossy(&b).into_owned());
                        }
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                            return Err(Silence::Closed);
                        }
                        Some(Ok(_)) => continue,
                    }
                },
                Self::Text(r, _) => {
                    let mut line = String::new();
                    match r.read_line(&mut line).await {
                        Ok(0) | Err(_) => Err(Silence::Closed),
                        Ok(_) => Ok(line.trim_end_matches(['\n', '\r']).to_owned()),
                    }
                }
            }
        };
        tokio::time::timeout(wait, next)
            .await
            .unwrap_or(Err(Silence::Timeout))
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

    /// Asserts that nothing arrives within `wait` (the connection stays open).
    pub async fn assert_silent(&mut self, wait: Duration) {
        match self.recv_within(wait).await {
            Err(Silence::Timeout) => {}
            other => panic!("expected silence, got {other:?}"),
        }
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
