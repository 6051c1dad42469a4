//! The text protocol: one message per line, `\n`-terminated (a trailing `\r` is dropped), as
//! GatewayWorker's `text://`.
//!
//! Each byte is searched for the newline once: the decoder remembers how far the unfinished
//! line was already scanned, so a client trickling a long line a byte at a time costs linear
//! work, not a rescan of the whole buffer per read.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Decoded, Framing, Inbound, ReadError, payload};
use crate::gateway::outbox::Outbound;

/// Newline-delimited messages, each at most `max` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Lines {
    max: usize,
    /// How many bytes at the buffer's start hold no newline: the next search starts there.
    scanned: usize,
}

impl Lines {
    /// Lines of at most `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        Self {
            max: max_message_size,
            scanned: 0,
        }
    }
}

impl Framing for Lines {
    fn decode(&mut self, buf: &[u8]) -> Result<Decoded, ReadError> {
        let from = self.scanned.min(buf.len());
        let Some(found) = buf[from..].iter().position(|&b| b == b'\n') else {
            self.scanned = buf.len();
            // One byte of slack: a line of `max` bytes may still be waiting for its "\r\n".
            if buf.len() > self.max + 1 {
                return Err(ReadError::TooLarge(self.max));
            }
            return Ok(Decoded::Incomplete);
        };
        let end = from + found;
        self.scanned = 0;
        let len = match end.checked_sub(1) {
            Some(last) if buf[last] == b'\r' => last,
            _ => end,
        };
        if len > self.max {
            return Err(ReadError::TooLarge(self.max));
        }
        let line = Bytes::copy_from_slice(&buf[..len]);
        Ok(Decoded::Item(end + 1, Inbound::Message(line)))
    }

    fn encode(&self, item: Outbound, dst: &mut BytesMut) -> std::io::Result<()> {
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
    use crate::gateway::protocol::decode_next;

    fn line(codec: &mut Lines, buf: &mut BytesMut) -> Option<Bytes> {
        match decode_next(codec, buf).unwrap()? {
            Inbound::Message(m) => Some(m),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn splits_lines_and_strips_cr() {
        let mut codec = Lines::new(16);
        let mut buf = BytesMut::from(&b"one\r\ntwo\nthr"[..]);
        assert_eq!(line(&mut codec, &mut buf).unwrap(), "one");
        assert_eq!(line(&mut codec, &mut buf).unwrap(), "two");
        assert!(line(&mut codec, &mut buf).is_none());
        buf.extend_from_slice(b"ee\n");
        assert_eq!(line(&mut codec, &mut buf).unwrap(), "three");
    }

    #[test]
    fn a_trickled_line_is_scanned_once() {
        let mut codec = Lines::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut examined = 0;
        for _ in 0..100_000 {
            buf.extend_from_slice(b"x");
            // What this call searches: everything past what earlier calls searched.
            examined += buf.len() - codec.scanned;
            assert!(line(&mut codec, &mut buf).is_none());
        }
        buf.extend_from_slice(b"\nnext");
        examined += buf.len() - codec.scanned;
        assert_eq!(line(&mut codec, &mut buf).unwrap().len(), 100_000);
        assert!(examined <= 100_000 + 5, "{examined} bytes examined");
        assert_eq!(codec.scanned, 0, "the next line is searched from its start");
        buf.extend_from_slice(b"\n");
        assert_eq!(line(&mut codec, &mut buf).unwrap(), "next");
    }

    #[test]
    fn refuses_overlong_lines() {
        let mut codec = Lines::new(4);
        let mut buf = BytesMut::from(&b"123456"[..]);
        assert!(matches!(
            decode_next(&mut codec, &mut buf),
            Err(ReadError::TooLarge(4))
        ));
    }

    /// Found by the `client_protocols` fuzz target: a line one byte over the limit, without a
    /// `\r`, used to pass as if the last byte were one.
    #[test]
    fn the_limit_counts_the_line_without_its_terminator() {
        let mut codec = Lines::new(4);
        let mut buf = BytesMut::from(&b"1234\r\n1234\n"[..]);
        assert_eq!(line(&mut codec, &mut buf).unwrap(), "1234");
        assert_eq!(line(&mut codec, &mut buf).unwrap(), "1234");
        let mut buf = BytesMut::from(&b"12345\n"[..]);
        assert!(matches!(
            decode_next(&mut codec, &mut buf),
            Err(ReadError::TooLarge(4))
        ));
    }
}
