//! The WebSocket protocol (RFC 6455), server side, over any stream — TCP for `ws://`, TLS
//! for `wss://`: the upgrade handshake, with its path, query and headers kept for
//! `on-websocket-connect`, then [`WsFraming`].
//!
//! Inbound text and binary messages both become bytes; fragments are joined; a client's
//! ping is answered with a pong (through the connection's outbox, so a client that pings
//! without reading fills only its own queue). Outbound bytes go out as a text frame when
//! they are valid UTF-8 and as a binary frame otherwise; the heartbeat's pings are ping
//! frames, and a close carries the code and reason [`Close`] chooses.
//!
//! Written here rather than taken from tungstenite, which wasmgate used before, for memory:
//! a library's connection keeps its read and write buffers (1 KiB and more) for the
//! connection's whole life, where [`super::stream`] keeps none while it idles. The
//! handshake's HTTP request is parsed by `httparse`, and the accept key derived by
//! tungstenite's `derive_accept_key`.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::{Decoded, Framing, Inbound, ReadError};
use crate::gateway::outbox::{Close, Outbound};
use crate::wire::messages::WebSocketRequest;

/// Largest upgrade request accepted (request line and headers).
const MAX_REQUEST: usize = 16 * 1024;

/// Most headers an upgrade request may carry.
const MAX_HEADERS: usize = 64;

/// Largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL: u64 = 125;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

/// Why a WebSocket handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The request's `Origin` (this one, or none) is not in `allowed_origins`: refused with 403.
    #[error("origin {0:?} is not allowed")]
    Origin(Option<String>),
    /// Not a WebSocket upgrade request (answered 400, or 426 for another version).
    #[error("not a WebSocket upgrade: {0}")]
    BadRequest(&'static str),
    /// The socket failed or closed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Completes the server side of the handshake on `socket`: the request's path, query and
/// headers, and any bytes the client sent after it. A request whose `Origin` is not one of
/// `allowed_origins` (unless that is empty) is answered 403. The caller bounds how long this
/// may take (`handshake_timeout`).
pub async fn accept<S>(
    socket: &mut S,
    allowed_origins: &[String],
) -> Result<(WebSocketRequest, BytesMut), UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let upgrade = loop {
        buf.reserve(1024);
        if socket.read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        match upgrade(&buf, allowed_origins) {
            Ok(Some(found)) => break found,
            Ok(None) if buf.len() < MAX_REQUEST => {}
            Ok(None) => {
                return refuse(socket, UpgradeError::BadRequest("request too large")).await;
            }
            Err(e) => return refuse(socket, e).await,
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(upgrade.key.as_bytes())
    );
    socket.write_all(response.as_bytes()).await?;
    socket.flush().await?;
    let rest = BytesMut::from(&buf[upgrade.len..]);
    Ok((upgrade.request, rest))
}

/// Answers a refused handshake with its status, then fails with `error`.
async fn refuse<S, T>(socket: &mut S, error: UpgradeError) -> Result<T, UpgradeError>
where
    S: AsyncWrite + Unpin,
{
    let status = match &error {
        UpgradeError::Origin(_) => "403 Forbidden",
        UpgradeError::BadRequest(VERSION) => "426 Upgrade Required\r\nSec-WebSocket-Version: 13",
        _ => "400 Bad Request",
    };
    let response = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.flush().await;
    Err(error)
}

/// Why a request asks for a version other than 13.
const VERSION: &str = "Sec-WebSocket-Version is not 13";

/// A whole upgrade request.
struct Upgrade {
    /// What `on-websocket-connect` sees.
    request: WebSocketRequest,
    /// The request's length in bytes.
    len: usize,
    /// Its `Sec-WebSocket-Key`.
    key: String,
}

/// The upgrade request at the start of `buf`, once it is whole.
fn upgrade(buf: &[u8], allowed_origins: &[String]) -> Result<Option<Upgrade>, UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let used = match request.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(UpgradeError::BadRequest("too many headers"));
        }
        Err(_) => return Err(UpgradeError::BadRequest("malformed HTTP request")),
    };
    if request.method != Some("GET") || request.version != Some(1) {
        return Err(UpgradeError::BadRequest("not an HTTP/1.1 GET"));
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value))
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(UpgradeError::BadRequest("no Upgrade: websocket"));
    }
    if header("sec-websocket-version").as_deref().map(str::trim) != Some("13") {
        return Err(UpgradeError::BadRequest(VERSION));
    }
    let Some(key) = header("sec-websocket-key") else {
        return Err(UpgradeError::BadRequest("no Sec-WebSocket-Key"));
    };
    if !allowed_origins.is_empty() {
        let origin = header("origin");
        let allowed = origin
            .as_deref()
            .is_some_and(|o| allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
        if !allowed {
            return Err(UpgradeError::Origin(origin.map(Cow::into_owned)));
        }
    }
    let target: http::Uri = request
        .path
        .unwrap_or_default()
        .parse()
        .map_err(|_| UpgradeError::BadRequest("malformed request target"))?;
    let request = WebSocketRequest {
        path: target.path().to_owned(),
        query: target.query().unwrap_or_default().to_owned(),
        headers: request
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    };
    Ok(Some(Upgrade {
        request,
        len: used,
        key: key.trim().to_owned(),
    }))
}

/// A frame's header (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The last frame of its message.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// The masking key, which every client frame carries and no server frame does.
    pub mask: Option<[u8; 4]>,
    /// The payload's length.
    pub len: u64,
    /// The header's own length.
    pub size: usize,
}

/// Why a frame header is unacceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("reserved bits set in a WebSocket frame")]
pub struct ReservedBits;

impl FrameHeader {
    /// The header at the start of `buf`, if it is whole; reserved bits (no extension is
    /// negotiated) are an error.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, ReservedBits> {
        let Some(&[first, second]) = buf.first_chunk::<2>() else {
            return Ok(None);
        };
        if first & 0x70 != 0 {
            return Err(ReservedBits);
        }
        let masked = second & 0x80 != 0;
        let (len, at) = match second & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(b) => (u64::from_be_bytes(b), 10),
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        let (mask, size) = if masked {
            match buf
                .get(at..at + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
            {
                Some(key) => (Some(key), at + 4),
                None => return Ok(None),
            }
        } else {
            (None, at)
        };
        Ok(Some(Self {
            fin: first & 0x80 != 0,
            opcode: first & 0x0f,
            mask,
            len,
            size,
        }))
    }
}

/// WebSocket frames as a server reads and writes them: masked frames in, unmasked out.
#[derive(Debug, Clone)]
pub struct WsFraming {
    max: usize,
    /// The message whose fragments are arriving: its opcode and the payload so far. Boxed:
    /// fragmented messages are rare, and every idle connection would hold its room.
    fragments: Option<Box<(u8, BytesMut)>>,
}

impl WsFraming {
    /// Messages of at most `max_message_size` bytes, however fragmented.
    pub fn new(max_message_size: usize) -> Self {
        Self {
            max: max_message_size,
            fragments: None,
        }
    }

    /// The message `payload` completes, checked for UTF-8 if it is text.
    fn message(opcode: u8, payload: Bytes) -> Result<Inbound, ReadError> {
        if opcode == OP_TEXT && std::str::from_utf8(&payload).is_err() {
            return Err(malformed("a text message that is not UTF-8"));
        }
        Ok(Inbound::Message(payload))
    }
}

fn malformed(what: &str) -> ReadError {
    ReadError::Malformed(what.to_owned())
}

impl Framing for WsFraming {
    fn decode(&mut self, buf: &[u8]) -> Result<Decoded, ReadError> {
        let header = match FrameHeader::parse(buf) {
            Ok(Some(header)) => header,
            Ok(None) => return Ok(Decoded::Incomplete),
            Err(e) => return Err(ReadError::Malformed(e.to_string())),
        };
        let Some(mask) = header.mask else {
            return Err(malformed("an unmasked client frame"));
        };
        let control = header.opcode & 0x8 != 0;
        if control && (!header.fin || header.len > MAX_CONTROL) {
            return Err(malformed("a fragmented or oversized control frame"));
        }
        let so_far = self.fragments.as_ref().map_or(0, |f| f.1.len());
        let too_large = usize::try_from(header.len)
            .ok()
            .and_then(|len| len.checked_add(so_far))
            .is_none_or(|total| total > self.max);
        if !control && too_large {
            return Err(ReadError::TooLarge(self.max));
        }
        // Within `max` (or 125 for a control frame): it fits a usize.
        let end = header.size + header.len as usize;
        let Some(masked) = buf.get(header.size..end) else {
            return Ok(Decoded::Incomplete);
        };
        let mut payload = BytesMut::with_capacity(masked.len());
        payload.put_slice(masked);
        unmask(&mut payload, mask);
        let item = match (header.opcode, self.fragments.as_deref_mut()) {
            (OP_PING, _) => Inbound::Ping(payload.freeze()),
            (OP_PONG, _) => return Ok(Decoded::Skipped(end)),
            (OP_CLOSE, _) => Inbound::Close,
            (OP_TEXT | OP_BINARY, None) if header.fin => {
                Self::message(header.opcode, payload.freeze())?
            }
            (OP_TEXT | OP_BINARY, None) => {
                self.fragments = Some(Box::new((header.opcode, payload)));
                return Ok(Decoded::Skipped(end));
            }
            (OP_CONTINUATION, Some((_, joined))) => {
                joined.extend_from_slice(&payload);
                if !header.fin {
                    return Ok(Decoded::Skipped(end));
                }
                let (opcode, whole) = self.fragments.take().map(|f| *f).unwrap_or_default();
                Self::message(opcode, whole.freeze())?
            }
            _ => return Err(malformed("an unexpected WebSocket opcode")),
        };
        Ok(Decoded::Item(end, item))
    }

    fn encode(&self, item: Outbound, dst: &mut BytesMut) -> std::io::Result<()> {
        match item {
            Outbound::Data(data) => put_data(dst, &data),
            Outbound::Ping(data) => put_frame(dst, OP_PING, &data),
            Outbound::Pong(data) => put_frame(dst, OP_PONG, &data),
            Outbound::Close(close) => {
                if let Close::Normal(Some(data)) = &close {
                    put_data(dst, data);
                }
                let reason = close.ws_reason();
                let mut payload = Vec::with_capacity(2 + reason.len());
                payload.extend_from_slice(&close.ws_code().to_be_bytes());
                payload.extend_from_slice(reason.as_bytes());
                put_frame(dst, OP_CLOSE, &payload);
            }
        }
        Ok(())
    }
}

/// A message: text if it is valid UTF-8, binary otherwise.
fn put_data(dst: &mut BytesMut, data: &[u8]) {
    let opcode = if std::str::from_utf8(data).is_ok() {
        OP_TEXT
    } else {
        OP_BINARY
    };
    put_frame(dst, opcode, data);
}

/// One unmasked, final frame.
fn put_frame(dst: &mut BytesMut, opcode: u8, payload: &[u8]) {
    dst.reserve(10 + payload.len());
    dst.put_u8(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => dst.put_u8(len as u8),
        len @ 126..=0xffff => {
            dst.put_u8(126);
            dst.put_u16(len as u16);
        }
        len => {
            dst.put_u8(127);
            dst.put_u64(len as u64);
        }
    }
    dst.put_slice(payload);
}

/// XORs `data` with the repeating `mask`, eight bytes at a time where it can.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap_or_default()) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::protocol::decode_next;

    /// A client frame: masked with a fixed key.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = BytesMut::new();
        put_frame(&mut out, opcode, payload);
        if !fin {
            out[0] &= 0x7f;
        }
        let header = FrameHeader::parse(&out).unwrap().unwrap();
        let mut frame = out[..header.size].to_vec();
        frame[1] |= 0x80;
        frame.extend_from_slice(&key);
        let mut masked = payload.to_vec();
        unmask(&mut masked, key);
        frame.extend_from_slice(&masked);
        frame
    }

    fn all(framing: &mut WsFraming, bytes: &[u8]) -> Result<Vec<Inbound>, ReadError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = decode_next(framing, &mut buf)? {
            out.push(item);
        }
        Ok(out)
    }

    #[test]
    fn decodes_masked_messages_of_every_length_form() {
        let mut framing = WsFraming::new(1 << 20);
        for len in [0, 5, 125, 126, 300, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let got = all(&mut framing, &client_frame(true, OP_TEXT, &payload)).unwrap();
            assert_eq!(got, vec![Inbound::Message(Bytes::from(payload))], "{len}");
        }
    }

    #[test]
    fn joins_fragments_around_control_frames() {
        let mut framing = WsFraming::new(16);
        let mut bytes = client_frame(false, OP_BINARY, b"he");
        bytes.extend(client_frame(true, OP_PING, b"p"));
        bytes.extend(client_frame(false, OP_CONTINUATION, b"ll"));
        bytes.extend(client_frame(true, OP_PONG, b""));
        bytes.extend(client_frame(true, OP_CONTINUATION, b"o"));
        bytes.extend(client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
        let got = all(&mut framing, &bytes).unwrap();
        assert_eq!(
            got,
            vec![
                Inbound::Ping(Bytes::from_static(b"p")),
                Inbound::Message(Bytes::from_static(b"hello")),
                Inbound::Close,
            ]
        );
    }

    #[test]
    fn refuses_what_a_client_may_not_send() {
        let unmasked = {
            let mut out = BytesMut::new();
            put_frame(&mut out, OP_TEXT, b"hi");
            out.to_vec()
        };
        let not_utf8 = client_frame(true, OP_TEXT, &[0xff, 0xfe]);
        let reserved = {
            let mut f = client_frame(true, OP_TEXT, b"hi");
            f[0] |= 0x40;
            f
        };
        let stray_continuation = client_frame(true, OP_CONTINUATION, b"hi");
        let fragmented_ping = client_frame(false, OP_PING, b"hi");
        for bad in [
            unmasked,
            not_utf8,
            reserved,
            stray_continuation,
            fragmented_ping,
        ] {
            let got = all(&mut WsFraming::new(16), &bad);
            assert!(
                matches!(got, Err(ReadError::Malformed(_))),
                "{bad:?}: {got:?}"
            );
        }
    }

    #[test]
    fn refuses_an_oversized_message_from_its_header_alone() {
        let frame = client_frame(true, OP_BINARY, &[0; 17]);
        let got = all(&mut WsFraming::new(16), &frame[..8]);
        assert!(matches!(got, Err(ReadError::TooLarge(16))), "{got:?}");
        let mut fragments = client_frame(false, OP_BINARY, &[0; 10]);
        fragments.extend(client_frame(true, OP_CONTINUATION, &[0; 7]));
        let got = all(&mut WsFraming::new(16), &fragments);
        assert!(matches!(got, Err(ReadError::TooLarge(16))), "{got:?}");
    }

    #[test]
    fn encodes_text_binary_and_close_frames() {
        let framing = WsFraming::new(16);
        let mut out = BytesMut::new();
        framing
            .encode(Outbound::Data(Bytes::from_static(b"hi")), &mut out)
            .unwrap();
        framing
            .encode(Outbound::Data(Bytes::from_static(&[0xff])), &mut out)
            .unwrap();
        framing
            .encode(Outbound::Close(Close::GoingAway), &mut out)
            .unwrap();
        let mut expected = b"\x81\x02hi\x82\x01\xff\x88\x16\x03\xe9".to_vec();
        expected.extend_from_slice(b"server shutting down");
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn parses_an_upgrade_and_refuses_other_requests() {
        let request = b"GET /chat?room=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://a\r\n\r\nrest";
        let found = upgrade(request, &[]).unwrap().unwrap();
        let seen = &found.request;
        assert_eq!(
            (seen.path.as_str(), seen.query.as_str()),
            ("/chat", "room=1")
        );
        assert!(
            seen.headers
                .contains(&("origin".into(), "https://a".into()))
        );
        assert_eq!(&request[found.len..], b"rest");
        assert_eq!(
            derive_accept_key(found.key.as_bytes()),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(upgrade(&request[..40], &[]).unwrap().is_none());
        assert!(matches!(
            upgrade(request, &["https://b".into()]),
            Err(UpgradeError::Origin(Some(o))) if o == "https://a"
        ));
        let plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            upgrade(plain, &[]),
            Err(UpgradeError::BadRequest(_))
        ));
    }

    #[test]
    fn unmasking_twice_gives_the_bytes_back() {
        let original: Vec<u8> = (0..=255).collect();
        let mut data = original.clone();
        unmask(&mut data, [1, 2, 3, 4]);
        assert_eq!(data[5], original[5] ^ 2);
        unmask(&mut data, [1, 2, 3, 4]);
        assert_eq!(data, original);
    }
}
