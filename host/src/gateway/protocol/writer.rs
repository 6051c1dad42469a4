//! A client's outbound items, encoded into a buffer that lives only while there is something
//! to write: a flush that empties it gives it back, so an idle connection holds none (a
//! library's write buffer keeps the capacity of the largest burst it ever wrote).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use futures_util::Sink;
use tokio::io::AsyncWrite;

use super::Framing;
use crate::gateway::outbox::Outbound;

/// Encoded bytes past which `poll_ready` writes before taking another item.
const WRITE_CHUNK: usize = 64 * 1024;

/// The sink of one client's outbound items, put on `io` by `framing`.
pub struct MessageWriter<W, F> {
    io: W,
    framing: F,
    /// Encoded and not yet written.
    unwritten: BytesMut,
}

impl<W: AsyncWrite + Unpin, F: Framing> MessageWriter<W, F> {
    /// Writes to `io`.
    pub fn new(io: W, framing: F) -> Self {
        Self {
            io,
            framing,
            unwritten: BytesMut::new(),
        }
    }

    /// Writes everything encoded, then gives the buffer back.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.unwritten.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.unwritten))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.unwritten.advance(n);
        }
        self.unwritten = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin, F: Framing> Sink<Outbound> for MessageWriter<W, F> {
    type Error = std::io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.unwritten.len() >= WRITE_CHUNK {
            ready!(this.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Outbound) -> std::io::Result<()> {
        let this = self.get_mut();
        this.framing.encode(item, &mut this.unwritten)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::SinkExt;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::gateway::protocol::text::Lines;

    #[tokio::test]
    async fn holds_no_buffer_once_flushed() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut writer = MessageWriter::new(server, Lines::new(1 << 20));
        writer
            .feed(Outbound::Data(Bytes::from_static(b"one")))
            .await
            .unwrap();
        writer
            .feed(Outbound::Data(Bytes::from_static(b"two")))
            .await
            .unwrap();
        assert!(writer.unwritten.capacity() > 0);
        writer.flush().await.unwrap();
        assert_eq!(writer.unwritten.capacity(), 0);
        let mut got = [0; 8];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one\ntwo\n");
    }
}
