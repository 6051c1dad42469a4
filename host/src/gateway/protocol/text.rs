//! The text protocol: one message per line, `\n`-terminated (a trailing `\r` is dropped), as
//! GatewayWorker's `text://`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{ReadError, payload};
use crate::gateway::outbox::Outbound;

/// Newline-delimited messages, each at most `max` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Lines {
    max: usize,
}

impl Lines {
    /// Lines of at most `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        Self {
            max: max_message_size,
        }
    }
}

impl Decoder for Lines {
    type Item = Bytes;
    type Error = ReadError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ReadError> {
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > self.max {
                return Err(ReadError::TooLarge(self.max));
            }
            return Ok(None);
        };
        if end > self.max + 1 {
            return Err(ReadError::TooLarge(self.max));
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
        if let Some(data) = payload(item) {
            dst.reserve(data.len() + 1);
            dst.put_slice(&data);
            dst.put_u8(b'\n');
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_strips_cr() {
        let mut codec = Lines::new(16);
        let mut buf = BytesMut::from(&b"one\r\ntwo\nthr"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "one");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "two");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"ee\n");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "three");
    }

    #[test]
    fn refuses_overlong_lines() {
        let mut codec = Lines::new(4);
        let mut buf = BytesMut::from(&b"12345"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ReadError::TooLarge(4))
        ));
    }
}
