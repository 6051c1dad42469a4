//! The text protocol: one message per line, `\n`-terminated (a trailing `\r` is dropped), as
//! GatewayWorker's `text://`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

use crate::gateway::state::Outbound;

/// Splits a text-protocol socket into inbound lines and an outbound sink.
pub fn framed<R: AsyncRead, W: AsyncWrite>(
    reader: R,
    writer: W,
    max_message_size: usize,
) -> (FramedRead<R, Lines>, FramedWrite<W, Lines>) {
    let codec = Lines {
        max: max_message_size,
    };
    (
        FramedRead::new(reader, codec),
        FramedWrite::new(writer, codec),
    )
}

/// Newline-delimited messages, each at most `max` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Lines {
    max: usize,
}

/// A line longer than `max_message_size`.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The line is too long.
    #[error("line longer than max_message_size ({0} bytes)")]
    TooLong(usize),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Decoder for Lines {
    type Item = Bytes;
    type Error = LineError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, LineError> {
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > self.max {
                return Err(LineError::TooLong(self.max));
            }
            return Ok(None);
        };
        if end > self.max + 1 {
            return Err(LineError::TooLong(self.max));
        }
        let mut line = buf.split_to(end).freeze();
        buf.advance(1);
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        Ok(Some(line))
    }
}

impl Encoder<Outbound> for Lines {
    type Error = std::io::Error;

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        let data = match item {
            Outbound::Data(data) | Outbound::Close(Some(data)) => data,
            Outbound::Close(None) => return Ok(()),
        };
        dst.reserve(data.len() + 1);
        dst.put_slice(&data);
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_strips_cr() {
        let mut codec = Lines { max: 16 };
        let mut buf = BytesMut::from(&b"one\r\ntwo\nthr"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "one");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "two");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"ee\n");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "three");
    }

    #[test]
    fn refuses_overlong_lines() {
        let mut codec = Lines { max: 4 };
        let mut buf = BytesMut::from(&b"12345"[..]);
        assert!(matches!(codec.decode(&mut buf), Err(LineError::TooLong(4))));
    }
}
