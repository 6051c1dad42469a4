//! Serving an axum router on a TCP listener with the bounds of `[http]`
//! ([`HttpConfig`]), for every HTTP listener of a process: the push API, `[web]` and
//! `/metrics`.
//!
//! `axum::serve` sets none of them: a client that sends half a request head holds its
//! connection (and, on a stop, the whole process) for as long as it likes. Here hyper's own
//! `header_read_timeout` bounds the head, tower-http's timeout the request, a semaphore the
//! connections of one listener (one over the cap is closed on accept, like a gateway's), and
//! a stop tells every connection to finish its request and closes those still open after
//! `stop_timeout`.
//!
//! [`require_token`] is the one bearer-token check of the listeners that take a token (the
//! push API and the admin page's API).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;

use crate::config::HttpConfig;
use crate::metrics::{self, HttpCutOff};

/// How often at most a listener logs that it refused connections over its cap: a flood
/// of them would otherwise flood the log.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown`, within `limits`; `name` (`push`, `web`,
/// `metrics`) labels its log lines and metrics. Returns once every connection is closed,
/// at most `limits.stop_timeout` after `shutdown`.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    limits: &HttpConfig,
    shutdown: CancellationToken,
) {
    let app = app
        .layer(axum::middleware::map_response(
            move |response: Response| async move {
                if response.status() == StatusCode::REQUEST_TIMEOUT {
                    tracing::debug!(listener = name, "request cut off at request_timeout");
                    metrics::http_cut_off(name, HttpCutOff::RequestTimeout, 1);
                }
                response
            },
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connections = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let close_now = CancellationToken::new();
    let mut refusals = Refusals::default();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of descriptors: back off instead of spinning.
                    tracing::warn!(listener = name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::http_cut_off(name, HttpCutOff::OverLimit, 1);
            refusals.log(name, remote, limits.max_connections);
            continue;
        };
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let (shutdown, close_now) = (shutdown.clone(), close_now.clone());
        connections.spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = shutdown.cancelled() => {
                    // Idle connections close at once; a request under way may finish.
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        ended = connection.as_mut() => ended,
                        _ = close_now.cancelled() => return,
                    }
                }
            };
            match ended {
                Err(e) if e.is_timeout() => {
                    tracing::debug!(listener = name, %remote, "request head not sent within header_read_timeout");
                    metrics::http_cut_off(name, HttpCutOff::HeaderTimeout, 1);
                }
                Err(e) => tracing::debug!(listener = name, %remote, "connection failed: {e}"),
                Ok(()) => {}
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.stop_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            open = connections.len(),
            "HTTP connections still open {:?} after the stop began: closing them",
            limits.stop_timeout
        );
        metrics::http_cut_off(name, HttpCutOff::StopTimeout, connections.len() as u64);
        close_now.cancel();
        connections.wait().await;
    }
}

/// When a listener last logged a refusal, and how many it refused since.
#[derive(Default)]
struct Refusals(Option<(Instant, u64)>);

impl Refusals {
    fn log(&mut self, name: &'static str, remote: SocketAddr, max: usize) {
        let now = Instant::now();
        match &mut self.0 {
            Some((at, since)) if now.duration_since(*at) < REFUSAL_LOG_EVERY => *since += 1,
            _ => {
                let since = self.0.map_or(0, |(_, since)| since);
                tracing::warn!(
                    listener = name,
                    %remote,
                    refused_since_last_line = since,
                    "HTTP connection refused: max_connections ({max}) reached"
                );
                self.0 = Some((now, 0));
            }
        }
    }
}

/// Answers `document` as `application/json`: the OpenAPI descriptions the listeners serve.
pub fn json_document(document: &'static str) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document,
    )
        .into_response()
}

/// Puts `router` behind `token` when there is one: a request passes only if it carries it as
/// `Authorization: Bearer <token>` or `X-API-Key: <token>` (compared in constant time);
/// others are answered 401 with `{"error": {"code": "unauthorized", "message"}}`.
pub fn require_token(router: Router, token: Option<&str>) -> Router {
    match token {
        Some(token) => {
            let token: Arc<[u8]> = token.as_bytes().into();
            router.layer(axum::middleware::from_fn_with_state(token, authorize))
        }
        None => router,
    }
}

async fn authorize(State(token): State<Arc<[u8]>>, request: Request, next: Next) -> Response {
    let refused = match presented_token(request.headers()) {
        Some(given) if bool::from(given.ct_eq(&token)) => return next.run(request).await,
        Some(_) => "wrong token",
        None => "send the token as `Authorization: Bearer <token>` or `X-API-Key: <token>`",
    };
    let body = serde_json::json!({"error": {"code": "unauthorized", "message": refused}});
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| {
        let (scheme, token) = v.as_bytes().split_at_checked(7)?;
        scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
    });
    bearer.or_else(|| headers.get("x-api-key").map(HeaderValue::as_bytes))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// Longest any step here may take; the bounds under test are far shorter.
    const BOUND: Duration = Duration::from_secs(10);

    async fn start(
        limits: HttpConfig,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        let served = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { serve("test", listener, app, &limits, shutdown).await }
        });
        (addr, shutdown, served)
    }

    /// A complete request on a fresh connection: the bystander, whose answers must keep coming.
    async fn get(addr: SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(BOUND, stream.read_to_string(&mut answer))
            .await
            .expect("the bystander was answered in time")
            .unwrap();
        answer
    }

    /// A connection that sent half a request head.
    async fn half_sent(addr: SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Le")
            .await
            .unwrap();
        stream
    }

    /// Waits (bounded) until the server closes `stream`.
    async fn closed(mut stream: TcpStream) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(BOUND, stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the server kept the connection open");
    }

    #[tokio::test]
    async fn a_half_sent_head_is_closed_at_header_read_timeout_while_others_are_served() {
        let limits = HttpConfig {
            header_read_timeout: Duration::from_millis(300),
            ..HttpConfig::default()
        };
        let (addr, shutdown, served) = start(limits).await;
        let holder = half_sent(addr).await;
        assert!(get(addr).await.ends_with("ok"));
        closed(holder).await;
        assert!(get(addr).await.ends_with("ok"));
        shutdown.cancel();
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_is_closed_and_the_others_kept() {
        let limits = HttpConfig {
            max_connections: 2,
            ..HttpConfig::default()
        };
        let (addr, shutdown, served) = start(limits).await;
        let mut held = half_sent(addr).await;
        let _idle = TcpStream::connect(addr).await.unwrap();
        closed(TcpStream::connect(addr).await.unwrap()).await;
        // The held connection is still served once it finishes its request.
        held.write_all(b"ngth: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(BOUND, held.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        // Its slot is free again for a bystander.
        assert!(get(addr).await.ends_with("ok"));
        shutdown.cancel();
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_half_sent_request_does_not_hold_up_a_stop() {
        let limits = HttpConfig {
            header_read_timeout: Duration::from_secs(3600),
            stop_timeout: Duration::from_millis(200),
            ..HttpConfig::default()
        };
        let (addr, shutdown, served) = start(limits).await;
        let holder = half_sent(addr).await;
        assert!(get(addr).await.ends_with("ok"));
        shutdown.cancel();
        tokio::time::timeout(BOUND, served)
            .await
            .expect("the listener stopped within its stop_timeout")
            .unwrap();
        closed(holder).await;
    }
}
