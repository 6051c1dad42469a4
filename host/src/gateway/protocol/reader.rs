//! A client's inbound messages, read without a buffer of the connection's own while it idles.
//!
//! An idle connection is most connections, and a read buffer per connection (1 KiB at the
//! least, 8 KiB by tokio-util's default, whatever a message once grew it to) was most of
//! what one cost. So a read with nothing pending goes into a scratch buffer of the worker
//! thread, and the first item is decoded straight from there; only the bytes after it (the
//! start of an unfinished message, or messages the client pipelined) are copied to the
//! connection's own `pending`, which is given back as soon as it is consumed. A read that
//! finds the socket empty holds nothing: the scratch is borrowed within one poll.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use futures_util::Stream;
use tokio::io::{AsyncRead, ReadBuf};

use super::{Framing, Inbound, ReadError, decode_from, decode_next};

/// The per-thread scratch a read with nothing pending goes into.
const SCRATCH: usize = 16 * 1024;

/// What an unfinished item reserves per read.
const READ_CHUNK: usize = 4 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Inbound items of one client, cut from `io` by `framing`.
pub struct MessageReader<R, F> {
    io: R,
    framing: F,
    /// Bytes of an item not yet consumed; empty and unallocated between items.
    pending: BytesMut,
    /// The client closed its side.
    eof: bool,
}

impl<R: AsyncRead + Unpin, F: Framing> MessageReader<R, F> {
    /// Reads from `io`; `pending` holds bytes already read past a handshake.
    pub fn new(io: R, framing: F, pending: BytesMut) -> Self {
        Self {
            io,
            framing,
            pending,
            eof: false,
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
}

impl<R: AsyncRead + Unpin, F: Framing> Stream for MessageReader<R, F> {
    type Item = Result<Inbound, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.eof {
                // Bytes of an unfinished item die with the connection.
                return Poll::Ready(None);
            }
            if this.pending.is_empty() {
                match ready!(this.poll_scratch(cx)) {
                    Ok(Some(item)) => return Poll::Ready(Some(Ok(item))),
                    Ok(None) => continue,
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
            match decode_next(&mut this.framing, &mut this.pending) {
                Ok(Some(item)) => return Poll::Ready(Some(Ok(item))),
                Ok(None) if this.pending.is_empty() => continue,
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            // An announced length reserves nothing ahead: the buffer grows with the bytes
            // that really arrive, so a client announcing large messages and sending nothing
            // more pins nothing.
            this.pending.reserve(READ_CHUNK);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.pending
            )) {
                Ok(0) => this.eof = true,
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::gateway::protocol::text::Lines;

    #[tokio::test]
    async fn keeps_no_buffer_between_messages_and_only_the_rest_of_a_read() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut reader = MessageReader::new(server, Lines::new(1 << 20), BytesMut::new());
        let mut client = client;
        client.write_all(b"one\ntwo\nthr").await.unwrap();
        let next = reader.next().await.unwrap().unwrap();
        assert_eq!(next, Inbound::Message("one".into()));
        assert_eq!(
            &reader.pending[..],
            b"two\nthr",
            "only what follows is kept"
        );
        let next = reader.next().await.unwrap().unwrap();
        assert_eq!(next, Inbound::Message("two".into()));
        client.write_all(b"ee\n").await.unwrap();
        let next = reader.next().await.unwrap().unwrap();
        assert_eq!(next, Inbound::Message("three".into()));
        assert_eq!(reader.pending.capacity(), 0, "given back once consumed");
        client.write_all(b"four\n").await.unwrap();
        let next = reader.next().await.unwrap().unwrap();
        assert_eq!(next, Inbound::Message("four".into()));
        assert_eq!(reader.pending.capacity(), 0, "decoded from the scratch");
        drop(client);
        assert!(reader.next().await.is_none());
    }

    #[tokio::test]
    async fn a_message_larger_than_the_scratch_arrives_whole() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut reader = MessageReader::new(server, Lines::new(1 << 20), BytesMut::new());
        let long = vec![b'x'; 3 * SCRATCH + 17];
        let writer = tokio::spawn(async move {
            client.write_all(&long).await.unwrap();
            client.write_all(b"\n").await.unwrap();
            client
        });
        match reader.next().await.unwrap().unwrap() {
            Inbound::Message(m) => assert_eq!(m.len(), 3 * SCRATCH + 17),
            other => panic!("{other:?}"),
        }
        drop(writer.await.unwrap());
        assert!(reader.next().await.is_none());
    }
}
