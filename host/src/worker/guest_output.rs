//! A plugin's stdout and stderr, turned into log lines tagged with the plugin's name.
//!
//! Plugins get no terminal: what a guest prints (a Rust panic message, a Python traceback, a JS
//! stack) would otherwise be lost or interleaved anonymously on the host's stdout. Each line
//! becomes one `tracing` event, so the reason for a trap appears next to the trap's log entry.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

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

/// A WASI output stream that logs each line the guest writes.
#[derive(Clone)]
pub struct GuestOutput {
    plugin: Arc<str>,
    stream: Stream,
}

impl GuestOutput {
    /// Output of `plugin` on `stream`.
    pub fn new(plugin: Arc<str>, stream: Stream) -> Self {
        Self { plugin, stream }
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
