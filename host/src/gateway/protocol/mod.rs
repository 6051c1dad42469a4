//! Client protocols: each is a [`Framing`] (how messages are cut from a client's bytes and put
//! on them), and [`stream::ClientStream`] puts a socket and a framing together into the
//! inbound items and outbound [`Outbound`] items that [`super::conn::Connection`] works with,
//! knowing nothing of the protocol.
//!
//! The framings are our own, not a WebSocket library's or tokio-util's codecs, for memory:
//! those keep a read buffer (and a write buffer) per connection for its whole life, and most
//! connections are idle most of the time. Here a connection holds bytes only while a message
//! is unfinished or unwritten (see [`stream`]'s module doc).

pub mod frame;
pub mod stream;
pub mod text;
pub mod tls;
pub mod ws;

use bytes::{Buf, Bytes, BytesMut};

use super::outbox::{Close, Outbound};

/// Why a client's inbound stream ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A message larger than `max_message_size`, refused before it was buffered whole.
    #[error("message larger than max_message_size ({0} bytes)")]
    TooLarge(usize),
    /// Bytes that break the protocol.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// How the gateway closes the client after this error; none: just drop the socket.
    pub fn close(&self) -> Option<Close> {
        match self {
            ReadError::TooLarge(limit) => Some(Close::TooLarge(*limit)),
            ReadError::Malformed(_) | ReadError::Io(_) => None,
        }
    }
}

/// What a client sent, as its connection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A message.
    Message(Bytes),
    /// A WebSocket ping, to be answered with a pong carrying the same bytes.
    Ping(Bytes),
    /// A WebSocket close: the client is leaving.
    Close,
}

/// What [`Framing::decode`] found at the start of a client's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole item, and how many bytes it took.
    Item(usize, Inbound),
    /// This many bytes carry nothing for the connection (a pong, a fragment of a message
    /// still unfinished).
    Skipped(usize),
    /// Not enough bytes for the next item.
    Incomplete,
}

/// A client protocol's framing: how items are cut from its bytes and put on them.
pub trait Framing: Unpin {
    /// Decodes the item at the start of `buf`. State carried across calls (how far a line
    /// was searched, a fragmented message) refers to bytes at `buf`'s start, which the caller
    /// passes again, with more after them, until they are consumed.
    fn decode(&mut self, buf: &[u8]) -> Result<Decoded, ReadError>;

    /// Appends the bytes of `item` to `dst` (nothing for an item the protocol cannot carry).
    fn encode(&self, item: Outbound, dst: &mut BytesMut) -> std::io::Result<()>;
}

/// Decodes from the start of `buf` past anything skipped: how many bytes that used, and the
/// item, if `buf` holds a whole one.
pub fn decode_from<F: Framing>(
    framing: &mut F,
    buf: &[u8],
) -> Result<(usize, Option<Inbound>), ReadError> {
    let mut at = 0;
    loop {
        match framing.decode(&buf[at..])? {
            Decoded::Item(used, item) => return Ok((at + used, Some(item))),
            Decoded::Skipped(used) => at += used,
            Decoded::Incomplete => return Ok((at, None)),
        }
    }
}

/// Takes the next item off `buf`, if it holds a whole one; `buf` is given back (left
/// unallocated) once all of it is consumed.
pub fn decode_next<F: Framing>(
    framing: &mut F,
    buf: &mut BytesMut,
) -> Result<Option<Inbound>, ReadError> {
    let (used, item) = decode_from(framing, buf)?;
    buf.advance(used);
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
    Ok(item)
}

/// The bytes an outbound item puts on a length-delimited protocol: data and a farewell are
/// messages; pings, pongs and close reasons have no encoding there.
fn payload(item: Outbound) -> Option<Bytes> {
    match item {
        Outbound::Data(data) | Outbound::Close(Close::Normal(Some(data))) => Some(data),
        Outbound::Ping(_) | Outbound::Pong(_) | Outbound::Close(_) => None,
    }
}
