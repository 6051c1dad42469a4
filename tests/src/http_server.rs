//! A local HTTP server for plugins' outbound requests (axum on 127.0.0.1), and a listener
//! that only counts who connects, to show that a denied request never left the host.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long `/slow` takes to answer.
pub const SLOW: Duration = Duration::from_secs(10);

/// Serves, until dropped:
/// - `/hello`: `hello`;
/// - `/slow`: `slow`, after [`SLOW`];
/// - `/big/N`: N bytes of `x` with their `content-length`;
/// - `/drip/N`: N bytes of `x` in 64 KiB chunks, without a length.
pub struct HttpServer {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<watch::Sender<usize>>,
    stop: CancellationToken,
}

impl HttpServer {
    /// Starts the server on a free loopback port.
    pub async fn start() -> Self {
        let requests = Arc::new(watch::Sender::new(0));
        let app = Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(SLOW).await;
                    "slow"
                }),
            )
            .route(
                "/big/{n}",
                get(|Path(n): Path<usize>| async move { vec![b'x'; n] }),
            )
            .route("/drip/{n}", get(drip))
            .layer(axum::middleware::from_fn_with_state(
                requests.clone(),
                count,
            ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await
        });
        Self {
            addr,
            requests,
            stop,
        }
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The origin to grant: `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        self.url("")
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        *self.requests.borrow()
    }

    /// Waits until `n` requests have been received in all, up to `within`.
    pub async fn received(&self, n: usize, within: Duration) {
        let mut requests = self.requests.subscribe();
        tokio::time::timeout(within, requests.wait_for(|received| *received >= n))
            .await
            .unwrap_or_else(|_| panic!("{} of {n} requests arrived in {within:?}", self.requests()))
            .expect("the server's counter outlives it");
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn count(
    State(requests): State<Arc<watch::Sender<usize>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    requests.send_modify(|received| *received += 1);
    next.run(request).await
}

async fn drip(Path(n): Path<usize>) -> Body {
    const CHUNK: usize = 64 << 10;
    let chunks = (0..n.div_ceil(CHUNK))
        .map(move |i| Ok::<_, Infallible>(Bytes::from(vec![b'x'; CHUNK.min(n - i * CHUNK)])));
    Body::from_stream(futures_util::stream::iter(chunks))
}

/// A loopback listener that accepts and counts connections and never answers.
pub struct Tripwire {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Tripwire {
    /// Starts listening on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.task.abort();
    }
}
