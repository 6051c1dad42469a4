//! The raw flag (`FLAG_NOT_CALL_ENCODE`): GatewayWorker writes such a body to the client's
//! socket as it is, so PHP code passes bytes already encoded in the client's protocol,
//! often several messages batched into one write.
//!
//! wasmgate never writes bytes it has not framed itself (a wrong byte would break the
//! client's stream for good), so it reads the body back into the messages it encodes, with
//! the client protocol's own framing, and sends those: the client receives what PHP meant.
//! A body that is not whole messages of that protocol is refused.

use bytes::Bytes;

use crate::config::Protocol;
use crate::gateway::protocol::ws::FrameHeader;

/// Most messages one raw body may hold: PHP batches a few frames into one write; a body of
/// thousands of empty lines must not become thousands of allocations.
pub const MAX_MESSAGES: usize = 1024;

/// Why a raw body is not messages of the client's protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RawError {
    /// It ends inside a message.
    #[error("a raw body ends inside a message")]
    Truncated,
    /// A WebSocket frame a server may not send: masked, or a reserved opcode or bit.
    #[error("a raw body holds a WebSocket frame a server cannot send")]
    BadFrame,
    /// A Frame message whose length is shorter than its own header.
    #[error("a raw body holds a frame shorter than its length prefix")]
    BadLength,
    /// More than [`MAX_MESSAGES`] messages.
    #[error("a raw body holds more than {MAX_MESSAGES} messages")]
    TooMany,
}

/// The messages a raw `body` holds, in `protocol`'s server-to-client framing.
pub fn messages(protocol: Protocol, body: &Bytes) -> Result<Vec<Bytes>, RawError> {
    let mut out = Messages(Vec::new());
    match protocol {
        Protocol::Ws | Protocol::Wss => websocket(body, &mut out)?,
        Protocol::Text => text(body, &mut out)?,
        Protocol::Frame => frames(body, &mut out)?,
    }
    Ok(out.0)
}

/// The messages found so far, at most [`MAX_MESSAGES`].
struct Messages(Vec<Bytes>);

impl Messages {
    fn push(&mut self, message: Bytes) -> Result<(), RawError> {
        if self.0.len() == MAX_MESSAGES {
            return Err(RawError::TooMany);
        }
        self.0.push(message);
        Ok(())
    }
}

/// Text: each line, without its `\n`; a last line without one is a message too.
fn text(body: &Bytes, out: &mut Messages) -> Result<(), RawError> {
    let mut start = 0;
    for (at, byte) in body.iter().enumerate() {
        if *byte == b'\n' {
            out.push(body.slice(start..at))?;
            start = at + 1;
        }
    }
    if start < body.len() {
        out.push(body.slice(start..))?;
    }
    Ok(())
}

/// The `N` bytes of `body` at `at`, or `Truncated` where it ends first.
fn bytes_at<const N: usize>(body: &[u8], at: usize) -> Result<[u8; N], RawError> {
    at.checked_add(N)
        .and_then(|end| body.get(at..end))
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(RawError::Truncated)
}

/// Frame: a 4-byte big-endian total length (header included), then the payload.
fn frames(body: &Bytes, out: &mut Messages) -> Result<(), RawError> {
    let mut at = 0;
    while at < body.len() {
        let len = u32::from_be_bytes(bytes_at(body, at)?) as usize;
        if len < 4 {
            return Err(RawError::BadLength);
        }
        let end = at.checked_add(len).ok_or(RawError::Truncated)?;
        if end > body.len() {
            return Err(RawError::Truncated);
        }
        out.push(body.slice(at + 4..end))?;
        at = end;
    }
    Ok(())
}

/// WebSocket (RFC 6455 §5.2), as a server sends it: unmasked frames; a fragmented message is
/// joined; control frames (ping, pong, close) carry no message and are skipped.
fn websocket(body: &Bytes, out: &mut Messages) -> Result<(), RawError> {
    let mut fragments: Option<Vec<u8>> = None;
    let mut at = 0;
    while at < body.len() {
        let header = match FrameHeader::parse(&body[at..]) {
            Ok(Some(header)) if header.mask.is_none() => header,
            Ok(Some(_)) | Err(_) => return Err(RawError::BadFrame),
            Ok(None) => return Err(RawError::Truncated),
        };
        at += header.size;
        let (fin, opcode) = (header.fin, header.opcode);
        let end = usize::try_from(header.len)
            .ok()
            .and_then(|len| at.checked_add(len))
            .filter(|end| *end <= body.len())
            .ok_or(RawError::Truncated)?;
        let payload = body.slice(at..end);
        at = end;
        match (opcode, fragments.as_mut()) {
            (1 | 2, None) if fin => out.push(payload)?,
            (1 | 2, None) => fragments = Some(payload.to_vec()),
            (0, Some(joined)) => {
                joined.extend_from_slice(&payload);
                if fin {
                    let whole = std::mem::take(joined);
                    fragments = None;
                    out.push(Bytes::from(whole))?;
                }
            }
            (8..=10, _) => {}
            _ => return Err(RawError::BadFrame),
        }
    }
    if fragments.is_some() {
        return Err(RawError::Truncated);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(protocol: Protocol, body: &'static [u8]) -> Result<Vec<Bytes>, RawError> {
        messages(protocol, &Bytes::from_static(body))
    }

    #[test]
    fn websocket_frames_batched_by_php_come_out_as_their_messages() {
        // Two text frames ("hi", "yo"), a ping, a binary frame in two fragments, and a
        // 126-byte-long frame with the 16-bit length.
        let mut body = b"\x81\x02hi\x81\x02yo\x89\x00\x02\x01a\x80\x01b".to_vec();
        body.extend_from_slice(b"\x81\x7e\x00\x7e");
        body.extend_from_slice(&[b'x'; 126]);
        let got = messages(Protocol::Ws, &Bytes::from(body)).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[..3], [&b"hi"[..], b"yo", b"ab"]);
        assert_eq!(got[3].as_ref(), &[b'x'; 126][..]);
    }

    #[test]
    fn what_a_server_cannot_send_is_refused() {
        assert_eq!(all(Protocol::Ws, b"\x81\x05hi"), Err(RawError::Truncated));
        assert_eq!(all(Protocol::Ws, b"\x81"), Err(RawError::Truncated));
        // Masked, a reserved bit, a continuation with nothing to continue, an open fragment.
        assert_eq!(
            all(Protocol::Ws, b"\x81\x82abcdhi"),
            Err(RawError::BadFrame)
        );
        assert_eq!(all(Protocol::Ws, b"\xc1\x02hi"), Err(RawError::BadFrame));
        assert_eq!(all(Protocol::Ws, b"\x80\x02hi"), Err(RawError::BadFrame));
        assert_eq!(all(Protocol::Ws, b"\x01\x02hi"), Err(RawError::Truncated));
        let huge = b"\x82\x7f\xff\xff\xff\xff\xff\xff\xff\xff";
        assert_eq!(all(Protocol::Ws, huge), Err(RawError::Truncated));
    }

    #[test]
    fn text_lines_and_frames() {
        assert_eq!(
            all(Protocol::Text, b"a\nbc\nd").unwrap(),
            [&b"a"[..], b"bc", b"d"]
        );
        assert_eq!(
            all(Protocol::Frame, b"\0\0\0\x06hi\0\0\0\x04").unwrap(),
            [&b"hi"[..], b""]
        );
        assert_eq!(
            all(Protocol::Frame, b"\0\0\0\x07hi"),
            Err(RawError::Truncated)
        );
        assert_eq!(
            all(Protocol::Frame, b"\0\0\0\x02"),
            Err(RawError::BadLength)
        );
        assert_eq!(all(Protocol::Frame, b"\0\0"), Err(RawError::Truncated));
        let lines = Bytes::from(vec![b'\n'; MAX_MESSAGES + 1]);
        assert_eq!(messages(Protocol::Text, &lines), Err(RawError::TooMany));
    }
}
