//! A plugin's stdout and stderr, turned into log lines tagged with the plugin's name, and the
//! budget that keeps a plugin from flooding the log.
//!
//! Plugins get no terminal: what a guest prints (a Rust panic message, a Python traceback, a JS
//! stack) would otherwise be lost or interleaved anonymously on the host's stdout. Each line
//! becomes one `tracing` event, so the reason for a trap appears next to the trap's log entry.
//! What a plugin logs (its output and its `log` calls) is bounded by `log_rate` bytes per
//! second, shared by all its instances: the excess is dropped and counted, with one log line
//! when a burst starts and one when it ends.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::metrics;

/// Longest line kept before it is flushed as is, so a guest printing without newlines cannot
/// grow host memory.
const MAX_LINE: usize = 4096;

/// Which of the guest's streams this is.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// Guest stdout: logged at info level.
    Stdout,
    /// Guest stderr: logged at warn level.
    Stderr,
}

/// A token bucket of log bytes for one plugin: `rate` bytes per second, bursts up to one
/// second's worth.
pub struct LogBudget {
    plugin: Arc<str>,
    rate: f64,
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// Bytes dropped in the current burst; 0 when none is going on.
    dropped: u64,
    /// When the last bytes were dropped: a burst ends after a second without drops.
    last_drop: Instant,
}

impl LogBudget {
    /// `rate` bytes per second of log for `plugin`.
    pub fn new(plugin: Arc<str>, rate: u64) -> Self {
        let rate = rate as f64;
        Self {
            plugin,
            rate,
            state: Mutex::new(Bucket {
                tokens: rate,
                at: Instant::now(),
                dropped: 0,
                last_drop: Instant::now(),
            }),
        }
    }

    /// Whether `bytes` more may be logged now; counts and reports what is not.
    pub fn admit(&self, bytes: usize) -> bool {
        let plugin = &*self.plugin;
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.rate);
        b.at = now;
        let bytes = bytes as f64;
        if b.tokens >= bytes {
            b.tokens -= bytes;
            if b.dropped > 0 && now.duration_since(b.last_drop) >= Duration::from_secs(1) {
                tracing::warn!(
                    plugin,
                    dropped_bytes = b.dropped,
                    "plugin log output back under log_rate"
                );
                b.dropped = 0;
            }
            return true;
        }
        if b.dropped == 0 {
            tracing::warn!(
                plugin,
                "plugin log output over log_rate; dropping the excess"
            );
        }
        b.dropped += bytes as u64;
        b.last_drop = now;
        metrics::plugin_limit(plugin, metrics::PluginLimit::LogDropped);
        false
    }
}

/// A WASI output stream that logs each line the guest writes.
#[derive(Clone)]
pub struct GuestOutput {
    plugin: Arc<str>,
    stream: Stream,
    budget: Arc<LogBudget>,
}

impl GuestOutput {
    /// Output of `plugin` on `stream`, within `budget`.
    pub fn new(plugin: Arc<str>, stream: Stream, budget: Arc<LogBudget>) -> Self {
        Self {
            plugin,
            stream,
            budget,
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            out: self.clone(),
            line: Vec::new(),
        })
    }
}

struct LineWriter {
    out: GuestOutput,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        if !self.out.budget.admit(self.line.len()) {
            self.line.clear();
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches(['\n', '\r']);
        let plugin = &*self.out.plugin;
        match self.out.stream {
            Stream::Stdout => tracing::info!(plugin, "stdout: {text}"),
            Stream::Stderr => tracing::warn!(plugin, "stderr: {text}"),
        }
        self.line.clear();
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        for &b in buf {
            this.line.push(b);
            if b == b'\n' || this.line.len() >= MAX_LINE {
                this.emit();
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.line.is_empty() {
            this.emit();
        }
        Poll::Ready(Ok(()))
    }
}
