//! A client's socket with its protocol's framing, owned whole by its connection: inbound
//! items read, and outbound items written, without a buffer of the connection's own while it
//! idles.
//!
//! An idle connection is most connections, and a library's buffers (1 KiB at the least,
//! 8 KiB by tokio-util's default, whatever a burst once grew them to) were most of what one
//! cost. So a read with nothing pending goes into a scratch buffer of the worker thread, and
//! the first item is decoded straight from there; only the bytes after it (the start of an
//! unfinished message, or messages the client pipelined) are copied to the connection's own
//! `pending`. Outbound items are encoded into another per-thread scratch and written from
//! there; only what the socket does not take is copied to the connection's own `unwritten`.
//! Both live in a [`Spill`] allocated only while either holds bytes, so an idle connection
//! holds one pointer for them. The scratches are borrowed within one poll.
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

/// Most capacity the per-thread write scratch keeps after a batch; a larger message's room
/// is given back.
const WRITE_SCRATCH_KEEP: usize = 256 * 1024;

thread_local! {
    static READ_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
    static WRITE_SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// One client's socket `io`, spoken with `framing`.
pub struct ClientStream<S, F> {
    io: S,
    framing: F,
    /// Bytes the connection holds between polls; none between items.
    spill: Option<Box<Spill>>,
}

/// The bytes of a connection that outlive a poll.
#[derive(Default)]
struct Spill {
    /// Inbound bytes of an item not yet consumed.
    pending: BytesMut,
    /// Encoded and not yet written.
    unwritten: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin, F: Framing> ClientStream<S, F> {
    /// Speaks `framing` on `io`; `pending` holds bytes already read past a handshake.
    pub fn new(io: S, framing: F, pending: BytesMut) -> Self {
        let spill = (!pending.is_empty()).then(|| {
            Box::new(Spill {
                pending,
                unwritten: BytesMut::new(),
            })
        });
        Self { io, framing, spill }
    }

    /// The next inbound item; none once the client closed its side (bytes of an unfinished
    /// item die with it). Nothing remembers the close: a socket read again says it again.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Inbound, ReadError>>> {
        loop {
            let Some(spill) = self.spill.as_mut().filter(|s| !s.pending.is_empty()) else {
                match ready!(self.poll_scratch(cx)) {
                    Some(Ok(Some(item))) => return Poll::Ready(Some(Ok(item))),
                    Some(Ok(None)) => continue,
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                    None => return Poll::Ready(None),
                }
            };
            let decoded = decode_next(&mut self.framing, &mut spill.pending);
            let consumed = spill.pending.is_empty();
            if consumed {
                self.give_back();
            }
            match decoded {
                Ok(Some(item)) => return Poll::Ready(Some(Ok(item))),
                Ok(None) if consumed => continue,
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            let Some(spill) = self.spill.as_mut() else {
                continue;
            };
            // An announced length reserves nothing ahead: the buffer grows with the bytes
            // that really arrive, so a client announcing large messages and sending nothing
            // more pins nothing.
            spill.pending.reserve(READ_CHUNK);
            let read =
                tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut spill.pending);
            match ready!(read) {
                Ok(0) => return Poll::Ready(None),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    /// Reads into the thread's scratch and decodes the first item there, keeping the rest;
    /// none once the client closed its side.
    fn poll_scratch(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Option<Inbound>, ReadError>>> {
        READ_SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            if let Err(e) = ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                return Poll::Ready(Some(Err(e.into())));
            }
            let read = buf.filled();
            if read.is_empty() {
                return Poll::Ready(None);
            }
            let decoded = decode_from(&mut self.framing, read).map(|(at, item)| {
                if at < read.len() {
                    let spill = self.spill.get_or_insert_default();
                    spill.pending.extend_from_slice(&read[at..]);
                }
                item
            });
            Poll::Ready(Some(decoded))
        })
    }

    /// Frees the spill once it holds nothing.
    fn give_back(&mut self) {
        if let Some(spill) = self.spill.as_mut() {
            if spill.pending.is_empty() {
                spill.pending = BytesMut::new();
            }
            if spill.unwritten.is_empty() {
                spill.unwritten = BytesMut::new();
            }
            if spill.pending.capacity() == 0 && spill.unwritten.capacity() == 0 {
                self.spill = None;
            }
        }
    }

    /// How many encoded bytes are not written yet.
    pub fn unwritten(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.unwritten.len())
    }

    /// Writes a batch while nothing is unwritten: `fill` encodes items with the framing into
    /// the thread's scratch, which is written at once and flushed; what the socket does not
    /// take is kept, and written by [`Self::poll_write_out`]. Pending while bytes are kept
    /// (the socket is full); an empty batch writes nothing.
    pub fn poll_write_batch(
        &mut self,
        cx: &mut Context<'_>,
        fill: impl FnOnce(&F, &mut BytesMut) -> std::io::Result<()>,
    ) -> Poll<std::io::Result<()>> {
        debug_assert_eq!(self.unwritten(), 0, "a batch goes after what is unwritten");
        let written = WRITE_SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            fill(&self.framing, scratch)?;
            if scratch.is_empty() {
                return Ok(None);
            }
            let mut at = 0;
            while at < scratch.len() {
                match Pin::new(&mut self.io).poll_write(cx, &scratch[at..]) {
                    Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => at += n,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
            let all = at == scratch.len();
            if !all {
                let spill = self.spill.get_or_insert_default();
                spill.unwritten.extend_from_slice(&scratch[at..]);
            }
            if scratch.capacity() > WRITE_SCRATCH_KEEP {
                *scratch = BytesMut::new();
            }
            Ok(Some(all))
        });
        match written {
            Ok(None) => Poll::Ready(Ok(())),
            Ok(Some(true)) => Pin::new(&mut self.io).poll_flush(cx),
            Ok(Some(false)) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Encodes `item` after what is unwritten, for the last words to a leaving client.
    pub fn encode_last(&mut self, item: Outbound) -> std::io::Result<()> {
        let spill = self.spill.get_or_insert_default();
        self.framing.encode(item, &mut spill.unwritten)
    }

    /// Writes everything kept unwritten and flushes the socket.
    pub fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(spill) = self.spill.as_mut() {
            while !spill.unwritten.is_empty() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &spill.unwritten))?;
                if n == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                spill.unwritten.advance(n);
            }
            self.give_back();
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Writes everything kept unwritten, then shuts the socket's sending side.
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

    fn stream(buffer: usize) -> (tokio::io::DuplexStream, Duplex) {
        let (client, server) = tokio::io::duplex(buffer);
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

    fn pending(stream: &Duplex) -> Option<&[u8]> {
        stream.spill.as_ref().map(|s| &s.pending[..])
    }

    #[tokio::test]
    async fn keeps_no_buffer_between_messages_and_only_the_rest_of_a_read() {
        let (mut client, mut stream) = stream(1 << 16);
        client.write_all(b"one\ntwo\nthr").await.unwrap();
        assert_eq!(message(next(&mut stream).await), "one");
        assert_eq!(
            pending(&stream),
            Some(&b"two\nthr"[..]),
            "only what follows is kept"
        );
        assert_eq!(message(next(&mut stream).await), "two");
        client.write_all(b"ee\n").await.unwrap();
        assert_eq!(message(next(&mut stream).await), "three");
        assert!(stream.spill.is_none(), "given back once consumed");
        client.write_all(b"four\n").await.unwrap();
        assert_eq!(message(next(&mut stream).await), "four");
        assert!(stream.spill.is_none(), "decoded from the scratch");
        drop(client);
        assert!(next(&mut stream).await.is_none());
    }

    #[tokio::test]
    async fn a_message_larger_than_the_scratch_arrives_whole() {
        let (mut client, mut stream) = stream(1 << 16);
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

    fn lines(items: &[&'static [u8]]) -> impl FnOnce(&Lines, &mut BytesMut) -> std::io::Result<()> {
        move |framing, buf| {
            for item in items {
                framing.encode(Outbound::Data(Bytes::from_static(item)), buf)?;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn writes_from_the_scratch_and_keeps_only_what_the_socket_did_not_take() {
        let (mut client, mut stream) = stream(6);
        let batch = lines(&[b"one", b"two", b"three"]);
        let waker = std::task::Waker::noop();
        let first = stream.poll_write_batch(&mut Context::from_waker(waker), batch);
        assert!(first.is_pending(), "the socket takes 6 bytes");
        assert_eq!(stream.unwritten(), 8);
        let mut got = [0; 14];
        let reader = tokio::spawn(async move {
            client.read_exact(&mut got).await.unwrap();
            (client, got)
        });
        std::future::poll_fn(|cx| stream.poll_write_out(cx))
            .await
            .unwrap();
        let (mut client, got) = reader.await.unwrap();
        assert_eq!(&got, b"one\ntwo\nthree\n");
        assert!(stream.spill.is_none(), "given back once written");

        std::future::poll_fn(|cx| stream.poll_write_batch(cx, lines(&[b"four"])))
            .await
            .unwrap();
        assert!(stream.spill.is_none(), "written from the scratch");
        let mut got = [0; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"four\n");
    }
}
