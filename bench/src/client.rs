//! The load client: one lean WebSocket or text-line connection per simulated user.
//!
//! It is written by hand rather than on a WebSocket library on purpose: on a 2-core machine
//! the load generator shares the CPU with the server under test, so every cycle the client
//! spends is a cycle the server does not get, and that would pull every ratio towards 1. It
//! speaks just enough WebSocket for the reference protocol: a fixed upgrade request, masked
//! text frames out, unfragmented frames in; pings and pongs are skipped, a close ends the
//! connection. [`Client`] connects and runs the scenarios that are not about throughput;
//! the measured loops of `echo`, `fanout` and `connect` run on [`crate::driver`]'s event
//! loops with this module's framing ([`encode`], [`next_unit`], [`upgraded`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The client protocols a gateway listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// WebSocket (`ws://`).
    Ws,
    /// Newline-terminated text lines (`text://`).
    Text,
}

impl Proto {
    /// The scheme of a wasmgate listen URL.
    pub fn scheme(self) -> &'static str {
        match self {
            Proto::Ws => "ws",
            Proto::Text => "text",
        }
    }
}

/// The upgrade request every WebSocket client sends; the key is the RFC 6455 example, since
/// the server's answer to it is not checked (a load tool trusts the server it starts).
pub const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// Largest handshake answer accepted before the server is deemed broken.
const MAX_HANDSHAKE: usize = 8 * 1024;

/// One connection to a server under test.
pub struct Client {
    stream: TcpStream,
    proto: Proto,
    /// Bytes read and not yet returned as messages.
    input: BytesMut,
    /// The frame being written, reused so a send allocates nothing.
    output: Vec<u8>,
    /// This connection's masking key (RFC 6455 requires client frames to be masked).
    mask: [u8; 4],
}

impl Client {
    /// Connects to `addr` from `source` (any loopback address when `None`) and completes the
    /// protocol's handshake.
    pub async fn connect(
        addr: SocketAddr,
        proto: Proto,
        source: Option<IpAddr>,
    ) -> io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = source {
            defer_port(&socket)?;
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let port = stream.local_addr()?.port();
        let mut client = Self {
            stream,
            proto,
            input: BytesMut::with_capacity(256),
            output: Vec::with_capacity(128),
            mask: [0x5a, 0xc3, (port >> 8) as u8, port as u8],
        };
        if proto == Proto::Ws {
            client.upgrade().await?;
        }
        Ok(client)
    }

    async fn upgrade(&mut self) -> io::Result<()> {
        self.stream.write_all(UPGRADE).await?;
        loop {
            if let Some(end) = upgraded(&self.input)? {
                self.input.advance(end);
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &[u8]) -> io::Result<()> {
        encode(self.proto, self.mask, message, &mut self.output);
        self.stream.write_all(&self.output).await
    }

    /// Receives the next message. Cancel-safe: bytes already read stay buffered.
    pub async fn recv(&mut self) -> io::Result<Bytes> {
        loop {
            if let Some(message) = self.parse()? {
                return Ok(message);
            }
            self.fill().await?;
        }
    }

    /// Drops the buffers and waits until the server closes the connection, so that an idle
    /// client costs its process little more than its socket; calls `heard` each time
    /// `marker` goes by in what the server sends.
    pub async fn hold(self, marker: &'static [u8], mut heard: impl FnMut()) -> io::Result<()> {
        let Self { stream, .. } = self;
        let mut watch = Marker::new(marker);
        loop {
            stream.readable().await?;
            let mut probe = [0; 64];
            match stream.try_read(&mut probe) {
                Ok(0) => return Ok(()),
                Ok(n) => (0..watch.feed(&probe[..n])).for_each(|_| heard()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        self.input.reserve(4096);
        if self.stream.read_buf(&mut self.input).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Takes one whole message off the input, if there is one.
    fn parse(&mut self) -> io::Result<Option<Bytes>> {
        while let Some(unit) = next_unit(self.proto, &self.input)? {
            let data = self.input.split_to(unit.used).freeze();
            if let Some(payload) = unit.payload {
                return Ok(Some(data.slice(payload)));
            }
        }
        Ok(None)
    }

    /// Hands the connection over to a [`crate::driver`] thread: the socket, left non-blocking
    /// and no longer registered with tokio, and whatever was read past the last message.
    pub fn detach(self) -> io::Result<Detached> {
        Ok(Detached {
            stream: self.stream.into_std()?,
            proto: self.proto,
            mask: self.mask,
            input: self.input.to_vec(),
        })
    }
}

/// A connected client taken out of tokio, for an event loop of its own.
pub struct Detached {
    /// The non-blocking socket.
    pub stream: std::net::TcpStream,
    /// Its protocol.
    pub proto: Proto,
    /// Its masking key.
    pub mask: [u8; 4],
    /// Bytes read and not yet taken as messages.
    pub input: Vec<u8>,
}

/// Where the server's answer to [`UPGRADE`] ends in `input`, once it is whole; an error
/// when it is a refusal or too long to be an answer.
pub fn upgraded(input: &[u8]) -> io::Result<Option<usize>> {
    let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") else {
        if input.len() > MAX_HANDSHAKE {
            return Err(broken("handshake answer too long"));
        }
        return Ok(None);
    };
    if !input.starts_with(b"HTTP/1.1 101") {
        return Err(broken("upgrade refused"));
    }
    Ok(Some(end + 4))
}

/// What [`next_unit`] takes off the front of a server's byte stream.
pub struct Unit {
    /// Bytes it spans.
    pub used: usize,
    /// Where its message is; none for a ping or pong, which are skipped.
    pub payload: Option<Range<usize>>,
}

/// The first whole frame (or line) of `input`, if there is one; a close frame is an error.
pub fn next_unit(proto: Proto, input: &[u8]) -> io::Result<Option<Unit>> {
    if proto == Proto::Text {
        return Ok(input.iter().position(|&b| b == b'\n').map(|end| Unit {
            used: end + 1,
            payload: Some(0..end),
        }));
    }
    let Some((header, len)) = frame_length(input) else {
        return Ok(None);
    };
    let used = header + len;
    if input.len() < used {
        return Ok(None);
    }
    let (fin, opcode) = (input[0] & 0x80 != 0, input[0] & 0x0f);
    match opcode {
        1 | 2 if fin => Ok(Some(Unit {
            used,
            payload: Some(header..used),
        })),
        8 => Err(io::ErrorKind::ConnectionReset.into()),
        9 | 10 => Ok(Some(Unit {
            used,
            payload: None,
        })),
        _ => Err(broken("fragmented or unknown frame")),
    }
}

/// Writes `message` into `out` (cleared first) as `proto` frames it: a line, or a masked
/// WebSocket text frame (the payload is UTF-8 in every scenario).
pub fn encode(proto: Proto, mask: [u8; 4], message: &[u8], out: &mut Vec<u8>) {
    out.clear();
    match proto {
        Proto::Text => {
            out.extend_from_slice(message);
            out.push(b'\n');
        }
        Proto::Ws => {
            out.push(0x81);
            let len = message.len();
            if len < 126 {
                out.push(0x80 | len as u8);
            } else if let Ok(len) = u16::try_from(len) {
                out.push(0x80 | 126);
                out.extend_from_slice(&len.to_be_bytes());
            } else {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
            out.extend_from_slice(&mask);
            out.extend(message.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
    }
}

/// Finds a marker in a byte stream read in pieces, keeping only how much of it the last
/// piece ended with. The marker's first byte must occur nowhere else in it: then a mismatch
/// can only restart the match at the byte that broke it.
struct Marker {
    marker: &'static [u8],
    matched: usize,
}

impl Marker {
    fn new(marker: &'static [u8]) -> Self {
        debug_assert!(
            marker.first().is_some_and(|m| !marker[1..].contains(m)),
            "a marker's first byte must be unique in it"
        );
        Self { marker, matched: 0 }
    }

    /// How many times the marker ends in `piece`.
    fn feed(&mut self, piece: &[u8]) -> usize {
        let mut found = 0;
        for &b in piece {
            if b == self.marker[self.matched] {
                self.matched += 1;
            } else {
                self.matched = usize::from(b == self.marker[0]);
            }
            if self.matched == self.marker.len() {
                found += 1;
                self.matched = 0;
            }
        }
        found
    }
}

/// Leaves the choice of a bound socket's port to `connect` (`IP_BIND_ADDRESS_NO_PORT`).
/// Otherwise `bind` picks a port unique to the source address whatever the destination, so
/// tens of thousands of bound clients (and their TIME_WAIT remains, for a minute after)
/// would take every ephemeral port, from every source address, from everyone else.
pub fn defer_port(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is an open socket owned by `socket`, and the option value is a
    // c_int whose size is passed along with it.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The header length and payload length of the server frame at the start of `input`, once
/// its header is complete. Servers never mask, so there is no key to skip.
fn frame_length(input: &[u8]) -> Option<(usize, usize)> {
    let short = usize::from(*input.get(1)? & 0x7f);
    match short {
        126 => Some((
            4,
            usize::from(u16::from_be_bytes(input.get(2..4)?.try_into().ok()?)),
        )),
        127 => Some((
            10,
            u64::from_be_bytes(input.get(2..10)?.try_into().ok()?) as usize,
        )),
        n => Some((2, n)),
    }
}

fn broken(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::{Marker, Proto, frame_length, next_unit, upgraded};

    #[test]
    fn a_marker_is_found_across_pieces() {
        let mut watch = Marker::new(b"bcast");
        assert_eq!(watch.feed(b"\x81\x05bc"), 0);
        assert_eq!(watch.feed(b"ast\x81\x05bbcast"), 2);
        assert_eq!(watch.feed(b"bcas"), 0);
        assert_eq!(
            watch.feed(b"bcast"),
            1,
            "a broken match restarts at its last byte"
        );
    }

    #[test]
    fn frame_lengths() {
        assert_eq!(frame_length(&[0x81]), None);
        assert_eq!(frame_length(&[0x81, 5]), Some((2, 5)));
        assert_eq!(frame_length(&[0x81, 126, 1, 0]), Some((4, 256)));
        assert_eq!(frame_length(&[0x81, 126, 1]), None);
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(frame_length(&long), Some((10, 70_000)));
    }

    #[test]
    fn units_of_a_server_stream() {
        let unit = |proto, input: &[u8]| {
            next_unit(proto, input)
                .unwrap()
                .map(|u| (u.used, u.payload))
        };
        assert_eq!(unit(Proto::Ws, b"\x81\x02hi\x81"), Some((4, Some(2..4))));
        assert_eq!(unit(Proto::Ws, b"\x89\x01p\x81\x02hi"), Some((3, None)));
        assert_eq!(unit(Proto::Ws, b"\x81\x05hi"), None);
        assert!(next_unit(Proto::Ws, b"\x88\x00").is_err());
        assert!(next_unit(Proto::Ws, b"\x01\x02hi").is_err(), "a fragment");
        assert_eq!(unit(Proto::Text, b"hi\nthere"), Some((3, Some(0..2))));
        assert_eq!(unit(Proto::Text, b"hi"), None);
    }

    #[test]
    fn upgrade_answers() {
        let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81";
        assert_eq!(upgraded(answer).unwrap(), Some(answer.len() - 1));
        assert_eq!(upgraded(&answer[..20]).unwrap(), None);
        assert!(upgraded(b"HTTP/1.1 400 Bad Request\r\n\r\n").is_err());
        assert!(upgraded(&[b'x'; 9000]).is_err(), "too long");
    }
}
