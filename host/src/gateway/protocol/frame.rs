//! The frame protocol, GatewayWorker's `frame://`: each message is prefixed by its TOTAL
//! length (the 4-byte big-endian prefix included), so `"hi"` travels as `00 00 00 06 h i`.
//!
//! The prefix is checked before anything is buffered for the message: a length over
//! `max_message_size` closes the client at once, and one shorter than the prefix itself is
//! malformed (Workerman would wait forever on a zero length; here it is an error). A prefix
//! alone reserves little: the buffer grows with the bytes that really arrive, so connections
//! that announce large frames and send nothing more do not pin `max_message_size` each.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Decoded, Framing, Inbound, ReadError, payload};
use crate::gateway::outbox::Outbound;

/// The length prefix's size.
const PREFIX: usize = 4;

/// Length-prefixed messages, each at most `max` bytes of payload.
#[derive(Debug, Clone, Copy)]
pub struct Frames {
    max: usize,
}

impl Frames {
    /// Frames of at most `max_message_size` payload bytes.
    pub fn new(max_message_size: usize) -> Self {
        Self {
            max: max_message_size,
        }
    }
}

impl Framing for Frames {
    fn decode(&mut self, buf: &[u8]) -> Result<Decoded, ReadError> {
        let Some(prefix) = buf.first_chunk::<PREFIX>() else {
            return Ok(Decoded::Incomplete);
        };
        let total = u32::from_be_bytes(*prefix) as usize;
        let Some(len) = total.checked_sub(PREFIX) else {
            return Err(ReadError::Malformed(format!(
                "frame length {total} is shorter than its own 4-byte prefix"
            )));
        };
        if len > self.max {
            return Err(ReadError::TooLarge(self.max));
        }
        let Some(data) = buf.get(PREFIX..total) else {
            return Ok(Decoded::Incomplete);
        };
        Ok(Decoded::Item(
            total,
            Inbound::Message(Bytes::copy_from_slice(data)),
        ))
    }

    fn encode(&self, item: Outbound, dst: &mut BytesMut) -> std::io::Result<()> {
        let Some(data) = payload(item) else {
            return Ok(());
        };
        let total = u32::try_from(data.len() + PREFIX).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a message of 4 GiB or more does not fit a frame",
            )
        })?;
        dst.reserve(data.len() + PREFIX);
        dst.put_u32(total);
        dst.put_slice(&data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::protocol::decode_next;

    fn message(codec: &mut Frames, buf: &mut BytesMut) -> Option<Bytes> {
        match decode_next(codec, buf).unwrap()? {
            Inbound::Message(m) => Some(m),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_split_and_joined_frames() {
        let mut codec = Frames::new(16);
        let mut buf = BytesMut::from(&b"\0\0"[..]);
        assert!(message(&mut codec, &mut buf).is_none());
        buf.extend_from_slice(b"\0\x06h");
        assert!(message(&mut codec, &mut buf).is_none());
        buf.extend_from_slice(b"i\0\0\0\x04\0\0\0\x07abc");
        assert_eq!(message(&mut codec, &mut buf).unwrap(), "hi");
        assert_eq!(message(&mut codec, &mut buf).unwrap(), "");
        assert_eq!(message(&mut codec, &mut buf).unwrap(), "abc");
        assert!(buf.is_empty());
    }

    #[test]
    fn encodes_the_total_length() {
        let mut out = BytesMut::new();
        Frames::new(16)
            .encode(Outbound::Data(Bytes::from_static(b"hi")), &mut out)
            .unwrap();
        assert_eq!(&out[..], b"\0\0\0\x06hi");
    }

    #[test]
    fn refuses_oversized_and_impossible_lengths_from_the_prefix_alone() {
        let mut codec = Frames::new(4);
        let mut buf = BytesMut::from(&b"\0\0\0\x09"[..]);
        assert!(matches!(
            decode_next(&mut codec, &mut buf),
            Err(ReadError::TooLarge(4))
        ));
        let mut buf = BytesMut::from(&b"\0\0\0\x03"[..]);
        assert!(matches!(
            decode_next(&mut codec, &mut buf),
            Err(ReadError::Malformed(_))
        ));
    }
}
