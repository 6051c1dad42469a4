//! Outbound HTTP for plugins: the standard `wasi:http/outgoing-handler`, implemented by
//! `wasmtime-wasi-http`, with the host deciding where a request may go.
//!
//! The interface is always linked, so a plugin that imports it loads whatever its grants say
//! (JavaScript plugins import it for `fetch()` whether they use it or not); the grant is
//! checked when a request is sent. A request goes out only when its scheme, host and port
//! match an entry of the app's `allowed_outbound_hosts`, before any name lookup or
//! connection; anything else fails in the guest with the standard `HTTP-request-denied`.
//! The guest never gets a socket of its own (WASI sockets stay denied): every byte goes
//! through here.
//!
//! Each request is bounded: its connect, first-byte and between-bytes timeouts never reach
//! past the end of the callback that sent it (the callback's own timer drops everything at
//! `process_timeout` anyway: the request is a task owned by the instance's resource table,
//! aborted when the instance is discarded), its response body is cut at
//! `max_http_response_body`, and an instance has at most `max_http_requests` in flight.
//! Every request is counted once in `data_calls` (interface `http`).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::config::OutboundOrigin;
use crate::metrics;

/// Most distinct denied origins an instance warns about; later ones are logged at debug, so
/// a plugin that tries every host cannot flood the log.
const MAX_WARNED_ORIGINS: usize = 64;

/// What bounds the outbound HTTP of every instance.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest response body, in bytes (`max_http_response_body`).
    pub max_response_body: u64,
    /// Most requests one instance has in flight (`max_http_requests`).
    pub max_requests: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_response_body: 4 << 20,
            max_requests: 16,
        }
    }
}

/// Links `wasi:http/types` and `wasi:http/outgoing-handler` (the rest of WASI is linked by
/// the runtime).
pub fn add_to_linker<T: WasiHttpView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// One instance's outbound HTTP: its app's allow-list and its requests in flight.
pub struct OutboundHttp {
    ctx: WasiHttpCtx,
    policy: Policy,
}

impl OutboundHttp {
    /// Outbound HTTP for an instance of `app`, to `allowed` origins only (none: no requests).
    pub fn new(app: Arc<str>, allowed: &[OutboundOrigin], limits: HttpLimits) -> Self {
        Self {
            ctx: WasiHttpCtx::new(),
            policy: Policy {
                app,
                allowed: allowed.into(),
                limits,
                in_flight: Arc::new(Semaphore::new(limits.max_requests)),
                deadline: Instant::now(),
                warned: HashSet::new(),
                warned_limit: Arc::new(AtomicBool::new(false)),
            },
        }
    }

    /// What `wasmtime-wasi-http` works with; requests sent through it end by `deadline`, the
    /// end of the callback running now.
    pub fn view<'a>(
        &'a mut self,
        table: &'a mut ResourceTable,
        deadline: Instant,
    ) -> WasiHttpCtxView<'a> {
        self.policy.deadline = deadline;
        WasiHttpCtxView {
            hooks: &mut self.policy,
            table,
            ctx: &mut self.ctx,
        }
    }
}

/// Decides and sends one instance's requests.
struct Policy {
    app: Arc<str>,
    allowed: Arc<[OutboundOrigin]>,
    limits: HttpLimits,
    in_flight: Arc<Semaphore>,
    deadline: Instant,
    /// Denied origins already warned about.
    warned: HashSet<String>,
    /// Whether a limit (requests in flight, body size) was already warned about.
    warned_limit: Arc<AtomicBool>,
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
)>;

impl Policy {
    /// Whether the request's origin is granted; warns (once per origin) when it is not.
    fn allows(&mut self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("");
        let host = uri.host().unwrap_or("");
        let port = uri.port_u16().unwrap_or(match scheme {
            "https" => 443,
            _ => 80,
        });
        if self.allowed.iter().any(|o| o.allows(scheme, host, port)) {
            return true;
        }
        let default_port = matches!((scheme, port), ("http", 80) | ("https", 443));
        let origin = if default_port {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{host}:{port}")
        };
        if self.warned.len() < MAX_WARNED_ORIGINS && self.warned.insert(origin.clone()) {
            tracing::warn!(
                plugin = &*self.app,
                origin,
                "outbound HTTP request denied: add \"{origin}\" to allowed_outbound_hosts \
                 in [worker.grants.{}] to allow it",
                self.app
            );
        } else {
            tracing::debug!(plugin = &*self.app, origin, "outbound HTTP request denied");
        }
        false
    }
}

impl WasiHttpHooks for Policy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let mut record = Record::new(self.app.clone());
        if !self.allows(request.uri()) {
            record.finish("denied");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            warn_limit(
                &self.warned_limit,
                &self.app,
                "max_http_requests",
                "outbound HTTP request refused: the instance has max_http_requests in flight",
            );
            record.finish("error");
            return Box::new(async { Err(Error::ConnectionLimitReached) });
        };
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            record.finish("timeout");
            return Box::new(async { Err(Error::ConnectionTimeout) });
        }
        let options = within(options.unwrap_or_default(), remaining);
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let limit = self.limits.max_response_body;
        let warned = self.warned_limit.clone();
        Box::new(async move {
            let send = wasmtime_wasi_http::default_send_request(request, Some(options));
            let (response, io) = match tokio::time::timeout_at(deadline, send).await {
                Ok(Ok(sent)) => sent,
                Ok(Err(e)) => {
                    record.finish(outcome(&e));
                    return Err(e);
                }
                Err(_) => {
                    record.finish("timeout");
                    return Err(Error::HttpResponseTimeout);
                }
            };
            let length = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if let Some(length) = length.filter(|l| *l > limit) {
                warn_limit(
                    &warned,
                    &record.app,
                    "max_http_response_body",
                    "outbound HTTP response refused: its body is over max_http_response_body",
                );
                record.finish("too_large");
                return Err(Error::HttpResponseBodySize(Some(length)));
            }
            // The answer came: dropping the body unread is the plugin's choice, not an error.
            record.outcome = "ok";
            let response = response.map(|body| {
                CappedBody {
                    inner: body.boxed_unsync(),
                    received: 0,
                    limit,
                    deadline: Box::pin(tokio::time::sleep_until(deadline)),
                    ended: false,
                    record,
                    warned,
                    _permit: permit,
                }
                .boxed_unsync()
            });
            Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

/// The guest's request options, none of them reaching past `remaining`.
fn within(options: RequestOptions, remaining: Duration) -> RequestOptions {
    let cap = |t: Option<Duration>| Some(t.map_or(remaining, |t| t.min(remaining)));
    RequestOptions {
        connect_timeout: cap(options.connect_timeout),
        first_byte_timeout: cap(options.first_byte_timeout),
        between_bytes_timeout: cap(options.between_bytes_timeout),
    }
}

/// The `data_calls` outcome of a failed request.
fn outcome(error: &Error) -> &'static str {
    match error {
        Error::ConnectionTimeout
        | Error::ConnectionReadTimeout
        | Error::ConnectionWriteTimeout
        | Error::HttpResponseTimeout
        | Error::DnsTimeout => "timeout",
        Error::HttpResponseBodySize(_) => "too_large",
        _ => "error",
    }
}

/// Warns the first time an instance hits one of its limits; later hits are logged at debug
/// (every one is counted).
fn warn_limit(warned: &AtomicBool, app: &str, key: &'static str, message: &'static str) {
    if !warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(plugin = app, limit = key, "{message}");
    } else {
        tracing::debug!(plugin = app, limit = key, "{message}");
    }
}

/// One request's line in `data_calls`, written once: when it fails, when its body ends, or
/// when it is dropped (then with the last outcome set; before an answer that is `timeout`:
/// the callback's deadline dropped it, or the plugin abandoned it).
struct Record {
    app: Arc<str>,
    started: Instant,
    outcome: &'static str,
    done: bool,
}

impl Record {
    fn new(app: Arc<str>) -> Self {
        Self {
            app,
            started: Instant::now(),
            outcome: "timeout",
            done: false,
        }
    }

    fn finish(&mut self, outcome: &'static str) {
        if !self.done {
            self.done = true;
            metrics::data_call(&self.app, "http", outcome, self.started.elapsed());
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.finish(self.outcome);
    }
}

/// A response body that fails once more than `limit` bytes arrived or the deadline passed,
/// and holds its request's place among the instance's requests in flight until dropped.
struct CappedBody {
    inner: WasiBody,
    received: u64,
    limit: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
    ended: bool,
    record: Record,
    warned: Arc<AtomicBool>,
    _permit: OwnedSemaphorePermit,
}

impl CappedBody {
    fn fail(
        &mut self,
        outcome: &'static str,
        error: Error,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.ended = true;
        self.record.finish(outcome);
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.received += frame.data_ref().map_or(0, |d| d.len() as u64);
                if this.received > this.limit {
                    warn_limit(
                        &this.warned,
                        &this.record.app,
                        "max_http_response_body",
                        "outbound HTTP response cut: its body is over max_http_response_body",
                    );
                    let limit = this.limit;
                    return this.fail("too_large", Error::HttpResponseBodySize(Some(limit)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(outcome(&e), e),
            Poll::Ready(None) => {
                this.ended = true;
                this.record.finish("ok");
                Poll::Ready(None)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => this.fail("timeout", Error::ConnectionReadTimeout),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> Policy {
        let allowed: Vec<OutboundOrigin> = allowed.iter().map(|s| s.parse().unwrap()).collect();
        OutboundHttp::new("app".into(), &allowed, HttpLimits::default()).policy
    }

    #[test]
    fn requests_go_only_to_granted_origins() {
        let mut p = policy(&[
            "https://api.example.com",
            "http://127.0.0.1:8080",
            "http://[::1]:81",
        ]);
        for ok in [
            "https://api.example.com/v1?q=1",
            "https://api.example.com:443/",
            "http://127.0.0.1:8080/x",
            "http://[::1]:81/",
        ] {
            assert!(p.allows(&ok.parse().unwrap()), "{ok}");
        }
        for denied in [
            "http://api.example.com/",
            "https://api.example.com:8443/",
            "http://127.0.0.1/",
            "http://localhost:8080/",
            "http://[::1]:80/",
            "https://evil.net/api.example.com",
        ] {
            assert!(!p.allows(&denied.parse().unwrap()), "{denied}");
        }
        assert!(!policy(&[]).allows(&"https://api.example.com/".parse().unwrap()));
    }

    #[test]
    fn warnings_about_denied_origins_are_bounded() {
        let mut p = policy(&[]);
        for i in 0..1000 {
            let uri = format!("http://h{i}.example/").parse().unwrap();
            assert!(!p.allows(&uri));
        }
        assert_eq!(p.warned.len(), MAX_WARNED_ORIGINS);
    }

    #[test]
    fn timeouts_never_reach_past_the_callback() {
        let second = Duration::from_secs(1);
        let given = RequestOptions {
            connect_timeout: Some(Duration::from_secs(60)),
            first_byte_timeout: Some(Duration::from_millis(10)),
            between_bytes_timeout: None,
        };
        let o = within(given, second);
        assert_eq!(o.connect_timeout, Some(second));
        assert_eq!(o.first_byte_timeout, Some(Duration::from_millis(10)));
        assert_eq!(o.between_bytes_timeout, Some(second));
    }
}
