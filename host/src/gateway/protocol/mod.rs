//! Client protocols: each turns a socket into a stream of inbound messages and a sink of
//! [`Outbound`] items for [`super::conn::serve`], which knows nothing of the protocol.
//!
//! The length-delimited protocols (`text`, `frame`) are `tokio_util` codecs; `ws` wraps
//! tungstenite; `tls` is the transport under `wss`.

pub mod frame;
pub mod text;
pub mod tls;
pub mod ws;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

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

/// Initial read buffer per connection; larger messages grow it. tokio-util's default (8 KiB)
/// is paid by every idle connection.
const READ_BUFFER: usize = 1024;

/// Splits a socket into inbound messages and an outbound sink that share one codec.
pub fn framed<R, W, C>(reader: R, writer: W, codec: C) -> (FramedRead<R, C>, FramedWrite<W, C>)
where
    R: AsyncRead,
    W: AsyncWrite,
    C: Decoder<Error = ReadError> + Encoder<Outbound, Error = std::io::Error> + Clone,
{
    (
        FramedRead::with_capacity(reader, codec.clone(), READ_BUFFER),
        FramedWrite::new(writer, codec),
    )
}

/// The bytes an outbound item puts on a length-delimited protocol: data and a farewell are
/// messages; pings and close reasons have no encoding there.
fn payload(item: Outbound) -> Option<bytes::Bytes> {
    match item {
        Outbound::Data(data) | Outbound::Close(Close::Normal(Some(data))) => Some(data),
        Outbound::Ping(_) | Outbound::Close(_) => None,
    }
}
