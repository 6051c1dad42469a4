//! A client's socket with its protocol's framing, owned whole by its connection: inbound
//! items read without a buffer of the connection's own while it idles, outbound items
//! encoded into a buffer that lives only while bytes of it are unwritten.
//!
//! An idle connection is most connections, and a library's buffers (1 KiB at the least,
//! 8 KiB by tokio-util's default, whatever a burst once grew them to) were most of what one
//! cost. So a read with nothing pending goes into a scratch buffer of the worker thread, and
//! the first item is decoded straight from there; only the bytes after it (the start of an
//! unfinished message, or messages the client pipelined) are copied to the connection's own
//! `pending`, which is given back as soon as it is consumed. A read that finds the socket
//! empty holds nothing: the scratch is borrowed within one poll. On the way out, a write that
//! empties `unwritten` gives its buffer back.
//!
//! One owner, not split read and write halves: TCP's halves share the socket through an
//! `Arc`, TLS's through a lock, and the connection reads and writes from one task anyway.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Framing, Inbound, ReadError, decode_from, decode_next};
use crate::gateway::outbox::Outbound;

/// The per-thread scratch a read with nothing pending goes into.
const SCRATCH: usize = 16 * 1024;

/// What an unfinished item reserves per read.
const READ_CHUNK: usize = 4 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// One client's socket `io`, spoken with `framing`.
pub struct ClientStream<S, F> {
    io: S,
    framing: F,
    /// Inbound bytes of an item not yet consumed; empty and unallocated between items.
    pending: BytesMut,
    /// Encoded and not yet written; empty and unallocated once written.
    unwritten: BytesMut,
    /// The client closed its side.
    eof: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin, F: Framing> ClientStream<S, F> {
    /// Speaks `framing` on `io`; `pending` holds bytes already read past a handshake.
    pub fn new(io: S, framing: F, pending: BytesMut) -> Self {
        Self {
            io,
            framing,
            pending,
            unwritten: BytesMut::new(),
            eof: false,
        }
    }

    /// The next inbound item; none once the client closed its side (bytes of an unfinished
    /// item die with it).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Inbound, ReadError>>> {
        loop {
            if self.eof {
                return Poll::Ready(None);
            }
            if self.pending.is_empty() {
                match ready!(self.poll_scratch(cx)) {
                    Ok(Some(item)) => return Poll::Ready(Some(Ok(item))),
                    Ok(None) => continue,
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
            match decode_next(&mut self.framing, &mut self.pending) {
                Ok(Some(item)) => return Poll::Ready(Some(Ok(item))),
                Ok(None) if self.pending.is_empty() => continue,
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            // An announced length reserves nothing ahead: the buffer grows with the bytes
            // that really arrive, so a client announcing large messages and sending nothing
            // more pins nothing.
            self.pending.reserve(READ_CHUNK);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.pending);
            match ready!(read) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    /// Reads into the thread's scratch and decodes the first item there, keeping the rest.
    fn poll_scratch(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Inbound>, ReadError>> {
        SCRATCH_BUF.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let read = buf.filled();
            if read.is_empty() {
                self.eof = true;
                return Poll::Ready(Ok(None));
            }
            let (at, item) = decode_from(&mut self.framing, read)?;
            self.pending.extend_from_slice(&read[at..]);
            Poll::Ready(Ok(item))
        })
    }

    /// Encodes `item` after what is unwritten.
    pub fn encode(&mut self, item: Outbound) -> std::io::Result<()> {
        self.framing.encode(item, &mut self.unwritten)
    }

    /// How many encoded bytes are not written yet.
    pub fn unwritten(&self) -> usize {
        self.unwritten.len()
    }

    /// Writes everything encoded and flushes the socket, then gives the buffer back.
    pub fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.unwritten.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.unwritten))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.unwritten.advance(n);
        }
        self.unwritten = BytesMut::new();
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Writes everything encoded, then shuts the socket's sending side.
    pub fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::gateway::protocol::text::Lines;

    type Duplex = ClientStream<tokio::io::DuplexStream, Lines>;

    fn stream() -> (tokio::io::DuplexStream, Duplex) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let stream = ClientStream::new(server, Lines::new(1 << 20), BytesMut::new());
        (client, stream)
    }

    async fn next(stream: &mut Duplex) -> Option<Result<Inbound, ReadError>> {
        std::future::poll_fn(|cx| stream.poll_next(cx)).await
    }

    fn message(item: Option<Result<Inbound, ReadError>>) -> Bytes {
        match item {
            Some(Ok(Inbound::Message(m))) => m,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn keeps_no_buffer_between_messages_and_only_the_rest_of_a_read() {
        let (mut client, mut stream) = stream();
        client.write_all(b"one\ntwo\nthr").await.unwrap();
        assert_eq!(message(next(&mut stream).await), "one");
        assert_eq!(
            &stream.pending[..],
            b"two\nthr",
            "only what follows is kept"
        );
        assert_eq!(message(next(&mut stream).await), "two");
        client.write_all(b"ee\n").await.unwrap();
        assert_eq!(message(next(&mut stream).await), "three");
        assert_eq!(stream.pending.capacity(), 0, "given back once consumed");
        client.write_all(b"four\n").await.unwrap();
        assert_eq!(message(next(&mut stream).await), "four");
        assert_eq!(stream.pending.capacity(), 0, "decoded from the scratch");
        drop(client);
        assert!(next(&mut stream).await.is_none());
    }

    #[tokio::test]
    async fn a_message_larger_than_the_scratch_arrives_whole() {
        let (mut client, mut stream) = stream();
        let long = vec![b'x'; 3 * SCRATCH + 17];
        let writer = tokio::spawn(async move {
            client.write_all(&long).await.unwrap();
            client.write_all(b"\n").await.unwrap();
            client
        });
        assert_eq!(message(next(&mut stream).await).len(), 3 * SCRATCH + 17);
        drop(writer.await.unwrap());
        assert!(next(&mut stream).await.is_none());
    }

    #[tokio::test]
    async fn holds_no_write_buffer_once_written() {
        let (mut client, mut stream) = stream();
        stream
            .encode(Outbound::Data(Bytes::from_static(b"one")))
            .unwrap();
        stream
            .encode(Outbound::Data(Bytes::from_static(b"two")))
            .unwrap();
        assert!(stream.unwritten.capacity() > 0);
        std::future::poll_fn(|cx| stream.poll_write_out(cx))
            .await
            .unwrap();
        assert_eq!(stream.unwritten.capacity(), 0);
        let mut got = [0; 8];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one\ntwo\n");
    }
}
