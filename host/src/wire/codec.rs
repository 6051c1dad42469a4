//! Frames on an internal link: a `u32` big-endian length, then that many bytes of postcard.
//!
//! The read and write halves are separate types so that a link can give each half to its own
//! task: one task reads, one task owns the socket's write side and batches whatever is queued
//! into one write ([`FrameWriter::forward`]). Both are generic over tokio's I/O traits and know
//! nothing of sockets, so tests drive them over in-memory pipes.
//!
//! A length is checked against the link's limit before anything is allocated for the body:
//! a peer that announces a huge frame costs us four bytes, not the allocation.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The default limit on one frame's payload: larger than any message a gateway or worker host
/// sends in practice (a client message is bounded far below by `max_message_size`), small
/// enough that one link cannot make its peer allocate without bound. A link that hits it is
/// closed; the others are untouched.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Room left in a frame for what wraps a checked message (an enum tag, a query id).
const ENVELOPE: usize = 32;

/// Checks that `message`, wrapped in a link message, fits in one frame of [`MAX_FRAME`]
/// bytes, without encoding it: what a sender asks before queueing, on TCP and in-process
/// links alike, so that a message too large fails alone and its sender can be told. Returns
/// the size it takes in a frame, which a link queue can weigh it by without a second walk.
pub fn check_frame<M: Serialize>(message: &M) -> Result<usize, WireError> {
    let len = postcard::experimental::serialized_size(message)? + ENVELOPE;
    if len > MAX_FRAME {
        return Err(WireError::FrameTooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    Ok(len)
}

/// Where a link's writer task takes its messages from: a plain channel (register links) or a
/// byte-bounded link queue ([`super::queue`]).
pub trait Outgoing<M>: Send {
    /// The next message; `None` once every sender is gone.
    fn recv(&mut self) -> impl Future<Output = Option<M>> + Send;
    /// The next message if one is queued now.
    fn try_next(&mut self) -> Option<M>;
}

impl<M: Send> Outgoing<M> for mpsc::Receiver<M> {
    fn recv(&mut self) -> impl Future<Output = Option<M>> + Send {
        mpsc::Receiver::recv(self)
    }

    fn try_next(&mut self) -> Option<M> {
        self.try_recv().ok()
    }
}

/// Bytes in a frame's length prefix.
const HEADER: usize = 4;

/// What the reader's buffer starts with: enough for the small control messages of a link
/// without growing, cheap enough to hold per idle link.
const INITIAL_BUFFER: usize = 4 * 1024;

/// Bytes a writer gathers into one write before flushing; also the capacity its buffer
/// shrinks back to after a larger burst.
const BATCH_BYTES: usize = 256 * 1024;

/// Why a frame could not be read or written; every variant ends the link it happened on,
/// except [`WireError::FrameTooLarge`] on the writing side, which fails one message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("link I/O failed: {0}")]
    Io(#[from] io::Error),
    /// A frame's length is over the link's limit (announced by the peer, or produced by us).
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The frame's payload length.
        len: usize,
        /// The link's limit.
        max: usize,
    },
    /// The payload is not a valid postcard encoding of the expected message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    /// The payload decoded but did not use all its bytes: the peer speaks another layout.
    #[error("malformed frame: {extra} bytes after the message")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("link closed in the middle of a frame")]
    Truncated,
    /// Writing to the peer took longer than this: it stopped reading.
    #[error("the peer read nothing for {0:?}: write timed out")]
    WriteTimeout(Duration),
}

impl WireError {
    /// A short, bounded name for the metric of links closed.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::Io(_) | WireError::Truncated => "io",
            WireError::FrameTooLarge { .. }
            | WireError::Malformed(_)
            | WireError::TrailingBytes { .. } => "bad_frame",
            WireError::WriteTimeout(_) => "write_timeout",
        }
    }
}

/// The reading half of a link: turns bytes into typed messages.
#[derive(Debug)]
pub struct FrameReader<R> {
    /// The byte source, usually a TCP stream's read half.
    inner: R,
    /// Bytes read but not yet consumed; holds at most one partial frame after a `recv`.
    buffer: BytesMut,
    /// The largest payload accepted on this link.
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader with the default [`MAX_FRAME`] limit.
    pub fn new(inner: R) -> Self {
        Self::with_max_frame(inner, MAX_FRAME)
    }

    /// A reader that refuses payloads longer than `max_frame` bytes.
    pub fn with_max_frame(inner: R, max_frame: usize) -> Self {
        Self {
            inner,
            buffer: BytesMut::with_capacity(INITIAL_BUFFER),
            max_frame,
        }
    }

    /// The same reader, with `read` (bytes already taken off the socket, to tell protocols
    /// apart) ahead of whatever the socket gives next.
    pub fn after(mut self, read: &[u8]) -> Self {
        self.buffer.extend_from_slice(read);
        self
    }

    /// The largest payload this reader accepts.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Changes the largest payload this reader accepts (the handshake lowers it while the
    /// peer is not yet authenticated).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Reads the next message; `None` when the peer closed the link between two frames.
    ///
    /// Cancel safe: partial frames stay in the reader's buffer, so this can be a branch of
    /// `tokio::select!` and be called again.
    pub async fn recv<M: DeserializeOwned>(&mut self) -> Result<Option<M>, WireError> {
        loop {
            if let Some(message) = self.parse()? {
                return Ok(Some(message));
            }
            if self.inner.read_buf(&mut self.buffer).await? == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(WireError::Truncated)
                };
            }
        }
    }

    /// Takes one complete frame off the buffer, if there is one; reserves room for the rest
    /// of a partial frame once its length has passed the limit.
    fn parse<M: DeserializeOwned>(&mut self) -> Result<Option<M>, WireError> {
        let Some(header) = self.buffer.first_chunk::<HEADER>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > self.max_frame {
            return Err(WireError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let total = HEADER + len;
        if self.buffer.len() < total {
            self.buffer.reserve(total - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(HEADER);
        let payload = self.buffer.split_to(len);
        let (message, rest) = postcard::take_from_bytes(&payload)?;
        if !rest.is_empty() {
            return Err(WireError::TrailingBytes { extra: rest.len() });
        }
        Ok(Some(message))
    }
}

/// The writing half of a link: encodes messages into a buffer and writes them out in one go.
#[derive(Debug)]
pub struct FrameWriter<W> {
    /// The byte sink, usually a TCP stream's write half.
    inner: W,
    /// Frames fed but not yet flushed.
    buffer: Vec<u8>,
    /// The largest payload this link's peer accepts.
    max_frame: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer with the default [`MAX_FRAME`] limit.
    pub fn new(inner: W) -> Self {
        Self::with_max_frame(inner, MAX_FRAME)
    }

    /// A writer that refuses to encode payloads longer than `max_frame` bytes, which the peer
    /// would refuse anyway (after we had sent them).
    pub fn with_max_frame(inner: W, max_frame: usize) -> Self {
        Self {
            inner,
            buffer: Vec::with_capacity(INITIAL_BUFFER),
            max_frame,
        }
    }

    /// Encodes `message` as one frame at the end of the buffer, without writing anything.
    ///
    /// On error nothing is added, so the frames fed before are still intact.
    pub fn feed<M: Serialize>(&mut self, message: &M) -> Result<(), WireError> {
        let start = self.buffer.len();
        self.buffer.extend_from_slice(&[0; HEADER]);
        if let Err(error) = postcard::to_io(message, &mut self.buffer) {
            self.buffer.truncate(start);
            return Err(error.into());
        }
        let len = self.buffer.len() - start - HEADER;
        let prefix = match u32::try_from(len) {
            Ok(prefix) if len <= self.max_frame => prefix,
            _ => {
                self.buffer.truncate(start);
                return Err(WireError::FrameTooLarge {
                    len,
                    max: self.max_frame,
                });
            }
        };
        self.buffer[start..start + HEADER].copy_from_slice(&prefix.to_be_bytes());
        Ok(())
    }

    /// Writes every fed frame in one write and flushes the sink.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        if !self.buffer.is_empty() {
            self.inner.write_all(&self.buffer).await?;
            self.buffer.clear();
        }
        self.inner.flush().await?;
        Ok(())
    }

    /// Feeds `message` and flushes.
    pub async fn send<M: Serialize>(&mut self, message: &M) -> Result<(), WireError> {
        self.feed(message)?;
        self.flush().await
    }

    /// Writes every message of `queue` until every sender is gone, batching whatever is
    /// queued at each wake-up into one write: the body of a link's writer task.
    ///
    /// A message too large for a frame is dropped alone (logged and counted), so one
    /// oversized message never ends the link and what is queued behind it. A write that
    /// takes longer than `write_timeout` (the peer stopped reading) ends the link. The buffer
    /// shrinks back after a burst, so an idle link does not keep a burst's memory.
    pub async fn forward<M: Serialize, Q: Outgoing<M>>(
        mut self,
        mut queue: Q,
        write_timeout: Duration,
    ) -> Result<(), WireError> {
        while let Some(first) = queue.recv().await {
            self.feed_or_drop(&first)?;
            if self.feed_queued(&mut queue)? == 0 {
                // Woken by one message while its senders run on other threads: one turn of
                // the scheduler lets the messages they are about to send join this write,
                // where a write each would cost a system call and a wake-up of the peer.
                tokio::task::yield_now().await;
                self.feed_queued(&mut queue)?;
            }
            let deadline = tokio::time::Instant::now() + write_timeout;
            crate::lazy_timeout::until(deadline, self.flush())
                .await
                .map_err(|_| WireError::WriteTimeout(write_timeout))??;
            if self.buffer.capacity() > BATCH_BYTES {
                self.buffer = Vec::with_capacity(INITIAL_BUFFER);
            }
        }
        Ok(())
    }

    /// Feeds what `queue` holds now, up to a batch's bytes; returns how many messages.
    fn feed_queued<M: Serialize, Q: Outgoing<M>>(
        &mut self,
        queue: &mut Q,
    ) -> Result<usize, WireError> {
        let mut fed = 0;
        while self.buffer.len() < BATCH_BYTES
            && let Some(next) = queue.try_next()
        {
            self.feed_or_drop(&next)?;
            fed += 1;
        }
        Ok(fed)
    }

    fn feed_or_drop<M: Serialize>(&mut self, message: &M) -> Result<(), WireError> {
        match self.feed(message) {
            Err(WireError::FrameTooLarge { len, max }) => {
                crate::metrics::link_message_dropped("too_large");
                tracing::warn!(
                    "an internal link dropped a message of {len} bytes, over the frame limit of {max}"
                );
                Ok(())
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use tokio::io::{AsyncWriteExt, duplex};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Sample {
        Small(u32),
        Text(String),
    }

    fn samples() -> Vec<Sample> {
        vec![
            Sample::Small(7),
            Sample::Text("héllo".into()),
            Sample::Text("x".repeat(100_000)),
        ]
    }

    #[test]
    fn a_largest_client_message_fits_in_a_frame() {
        assert!(crate::config::MAX_MESSAGE_SIZE_LIMIT as usize * 2 <= MAX_FRAME);
    }

    #[test]
    fn check_frame_leaves_room_for_the_envelope() {
        assert!(check_frame(&vec![0u8; 1024]).is_ok());
        let result = check_frame(&vec![0u8; MAX_FRAME]);
        assert!(
            matches!(result, Err(WireError::FrameTooLarge { max: MAX_FRAME, .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn forward_drops_an_oversized_message_and_goes_on() {
        let (a, b) = duplex(1 << 20);
        let (tx, rx) = mpsc::channel(8);
        tx.send(Sample::Small(1)).await.unwrap();
        tx.send(Sample::Text("x".repeat(100))).await.unwrap();
        tx.send(Sample::Small(2)).await.unwrap();
        drop(tx);
        FrameWriter::with_max_frame(a, 64)
            .forward(rx, Duration::from_secs(5))
            .await
            .expect("an oversized message does not end the writer");
        let mut reader = FrameReader::new(b);
        assert_eq!(reader.recv().await.unwrap(), Some(Sample::Small(1)));
        assert_eq!(reader.recv().await.unwrap(), Some(Sample::Small(2)));
        assert_eq!(reader.recv::<Sample>().await.unwrap(), None);
    }

    #[tokio::test]
    async fn forward_times_out_on_a_peer_that_does_not_read() {
        let (a, _b) = duplex(64);
        let (tx, rx) = mpsc::channel(8);
        tx.send(Sample::Text("x".repeat(1000))).await.unwrap();
        let result = FrameWriter::new(a)
            .forward(rx, Duration::from_millis(100))
            .await;
        assert!(
            matches!(result, Err(WireError::WriteTimeout(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn round_trip() {
        let (a, b) = duplex(1 << 20);
        let mut writer = FrameWriter::new(a);
        let mut reader = FrameReader::new(b);
        for sample in samples() {
            writer.send(&sample).await.unwrap();
            assert_eq!(reader.recv::<Sample>().await.unwrap(), Some(sample));
        }
        drop(writer);
        assert_eq!(reader.recv::<Sample>().await.unwrap(), None);
    }

    #[tokio::test]
    async fn frame_split_into_single_bytes() {
        let (mut a, b) = duplex(16);
        let mut encoder = FrameWriter::new(Vec::new());
        encoder.feed(&Sample::Text("split me".into())).unwrap();
        let bytes = encoder.buffer;
        let feeder = tokio::spawn(async move {
            for byte in bytes {
                a.write_all(&[byte]).await.unwrap();
                a.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut reader = FrameReader::new(b);
        assert_eq!(
            reader.recv::<Sample>().await.unwrap(),
            Some(Sample::Text("split me".into()))
        );
        feeder.await.unwrap();
        assert_eq!(reader.recv::<Sample>().await.unwrap(), None);
    }

    #[tokio::test]
    async fn batched_frames_arrive_in_one_write() {
        let (a, b) = duplex(1 << 20);
        let mut writer = FrameWriter::new(a);
        for sample in samples() {
            writer.feed(&sample).unwrap();
        }
        writer.flush().await.unwrap();
        let mut reader = FrameReader::new(b);
        for sample in samples() {
            assert_eq!(reader.recv::<Sample>().await.unwrap(), Some(sample));
        }
    }

    /// A sink that records the length of each write it is given.
    struct WriteLog(std::sync::Arc<std::sync::Mutex<Vec<usize>>>);

    impl AsyncWrite for WriteLog {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.0.lock().unwrap().push(buf.len());
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn messages_sent_just_after_the_one_that_woke_the_writer_share_its_write() {
        let writes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel(8);
        let writer = FrameWriter::new(WriteLog(writes.clone()));
        let writing = tokio::spawn(writer.forward(rx, Duration::from_secs(5)));
        let mut samples = samples().into_iter();
        tx.send(samples.next().unwrap()).await.unwrap();
        // The writer runs now, with one message queued; the rest come before its next turn.
        tokio::task::yield_now().await;
        for sample in samples {
            tx.send(sample).await.unwrap();
        }
        drop(tx);
        writing.await.unwrap().unwrap();
        assert_eq!(
            writes.lock().unwrap().len(),
            1,
            "one write for every message"
        );
    }

    #[tokio::test]
    async fn forward_drains_the_queue() {
        let (a, b) = duplex(1 << 20);
        let (tx, rx) = mpsc::channel(8);
        for sample in samples() {
            tx.send(sample).await.unwrap();
        }
        drop(tx);
        FrameWriter::new(a)
            .forward(rx, Duration::from_secs(5))
            .await
            .unwrap();
        let mut reader = FrameReader::new(b);
        for sample in samples() {
            assert_eq!(reader.recv::<Sample>().await.unwrap(), Some(sample));
        }
        assert_eq!(reader.recv::<Sample>().await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_length_is_rejected_before_the_body() {
        let (mut a, b) = duplex(64);
        // Only the prefix is sent and the pipe stays open: a reader that waited for the body
        // would hang here.
        let max = 1 << 20;
        a.write_all(&(max as u32 + 1).to_be_bytes()).await.unwrap();
        let mut reader = FrameReader::with_max_frame(b, max);
        let result = tokio::time::timeout(Duration::from_secs(5), reader.recv::<Sample>())
            .await
            .expect("the reader waited for the body");
        assert!(
            matches!(
                result,
                Err(WireError::FrameTooLarge { len, max: m }) if len == max + 1 && m == max
            ),
            "{result:?}"
        );
        assert!(reader.buffer.capacity() < max);
        drop(a);
    }

    #[tokio::test]
    async fn writer_refuses_frames_over_its_limit() {
        let mut writer = FrameWriter::with_max_frame(Vec::new(), 16);
        writer.feed(&Sample::Small(1)).unwrap();
        let before = writer.buffer.clone();
        let result = writer.feed(&Sample::Text("x".repeat(17)));
        assert!(
            matches!(result, Err(WireError::FrameTooLarge { max: 16, .. })),
            "{result:?}"
        );
        assert_eq!(writer.buffer, before);
    }

    #[tokio::test]
    async fn garbage_payload_is_malformed() {
        let (mut a, b) = duplex(64);
        // Variant index 9 does not exist in `Sample`.
        a.write_all(&[0, 0, 0, 2, 9, 9]).await.unwrap();
        let mut reader = FrameReader::new(b);
        let result = reader.recv::<Sample>().await;
        assert!(matches!(result, Err(WireError::Malformed(_))), "{result:?}");
    }

    #[tokio::test]
    async fn trailing_bytes_are_malformed() {
        let (mut a, b) = duplex(64);
        a.write_all(&[0, 0, 0, 3, 0, 7, 0]).await.unwrap();
        let mut reader = FrameReader::new(b);
        let result = reader.recv::<Sample>().await;
        assert!(
            matches!(result, Err(WireError::TrailingBytes { extra: 1 })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_truncated() {
        let (mut a, b) = duplex(64);
        a.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(a);
        let mut reader = FrameReader::new(b);
        let result = reader.recv::<Sample>().await;
        assert!(matches!(result, Err(WireError::Truncated)), "{result:?}");
    }
}
