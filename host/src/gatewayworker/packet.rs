//! GatewayProtocol, the packets of a gateway's internal port (reference §9.1): a 28-byte
//! big-endian header, then `ext_data`, then the body; and the length-prefixed replies to
//! queries, which are not packets.
//!
//! [`PacketCodec`] reads the header first and refuses a packet over its limit before
//! allocating for it; "not enough bytes yet" is not an error (tokio-util's `Decoder`).

use std::net::Ipv4Addr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The header's length.
pub const HEADER_LEN: usize = 28;

/// Workerman's package limit, which GatewayWorker's internal port keeps.
pub const DEFAULT_MAX_PACKET: usize = 10 * 1024 * 1024;

/// Header flag: the body is a scalar sent as it is, not PHP-serialized.
pub const FLAG_BODY_IS_SCALAR: u8 = 0x01;
/// Header flag: write the body to the client without the client protocol's encoder (raw).
pub const FLAG_NOT_CALL_ENCODE: u8 = 0x02;

/// The command codes of §9.2.
#[allow(
    missing_docs,
    reason = "each is GatewayProtocol's constant of the same name"
)]
pub mod cmd {
    pub const ON_CONNECT: u8 = 1;
    pub const ON_MESSAGE: u8 = 3;
    pub const ON_CLOSE: u8 = 4;
    pub const SEND_TO_ONE: u8 = 5;
    pub const SEND_TO_ALL: u8 = 6;
    pub const KICK: u8 = 7;
    pub const DESTROY: u8 = 8;
    pub const UPDATE_SESSION: u8 = 9;
    pub const GET_ALL_CLIENT_SESSIONS: u8 = 10;
    pub const IS_ONLINE: u8 = 11;
    pub const BIND_UID: u8 = 12;
    pub const UNBIND_UID: u8 = 13;
    pub const SEND_TO_UID: u8 = 14;
    pub const GET_CLIENT_ID_BY_UID: u8 = 15;
    pub const BATCH_GET_CLIENT_ID_BY_UID: u8 = 16;
    pub const JOIN_GROUP: u8 = 20;
    pub const LEAVE_GROUP: u8 = 21;
    pub const SEND_TO_GROUP: u8 = 22;
    pub const GET_CLIENT_SESSIONS_BY_GROUP: u8 = 23;
    pub const GET_CLIENT_COUNT_BY_GROUP: u8 = 24;
    pub const SELECT: u8 = 25;
    pub const GET_GROUP_ID_LIST: u8 = 26;
    pub const UNGROUP: u8 = 27;
    pub const BATCH_GET_CLIENT_COUNT_BY_GROUP: u8 = 28;
    pub const WORKER_CONNECT: u8 = 200;
    pub const PING: u8 = 201;
    pub const GATEWAY_CLIENT_CONNECT: u8 = 202;
    pub const GET_SESSION_BY_CLIENT_ID: u8 = 203;
    pub const SET_SESSION: u8 = 204;
    pub const ON_WEBSOCKET_CONNECT: u8 = 205;
}

/// One GatewayProtocol packet; `pack_len` and `ext_len` are implied by the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The command code ([`cmd`]).
    pub cmd: u8,
    /// The gateway's `lanIp` (unspecified in packets towards a gateway).
    pub local_ip: Ipv4Addr,
    /// The gateway's `lanPort`.
    pub local_port: u16,
    /// The client's IPv4 address; unspecified for IPv6 or unknown.
    pub client_ip: Ipv4Addr,
    /// The client's port.
    pub client_port: u16,
    /// The connection on that gateway the packet is about.
    pub connection_id: u32,
    /// [`FLAG_BODY_IS_SCALAR`], [`FLAG_NOT_CALL_ENCODE`].
    pub flag: u8,
    /// The gateway's client-facing port (events only).
    pub gateway_port: u16,
    /// A session, uid, group or JSON options, depending on `cmd`.
    pub ext_data: Bytes,
    /// The payload.
    pub body: Bytes,
}

impl Packet {
    /// A packet of `cmd` with every other field zero or empty.
    pub fn new(cmd: u8) -> Self {
        Self {
            cmd,
            local_ip: Ipv4Addr::UNSPECIFIED,
            local_port: 0,
            client_ip: Ipv4Addr::UNSPECIFIED,
            client_port: 0,
            connection_id: 0,
            flag: 0,
            gateway_port: 0,
            ext_data: Bytes::new(),
            body: Bytes::new(),
        }
    }
}

/// Why bytes are not a packet.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// `pack_len` is over the limit.
    #[error("a packet of {len} bytes is over the limit of {limit}")]
    TooLarge {
        /// The length it declares.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// `pack_len` is shorter than the header, or `ext_len` longer than the packet.
    #[error("inconsistent lengths: pack_len {pack_len}, ext_len {ext_len}")]
    BadLength {
        /// The declared packet length.
        pack_len: usize,
        /// The declared `ext_data` length.
        ext_len: usize,
    },
    /// A packet longer than the header's fields can describe.
    #[error("a packet must be shorter than 4 GiB")]
    Unencodable,
    /// Reading or writing the socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Packets in both directions, bounded in size when read.
#[derive(Debug, Clone, Copy)]
pub struct PacketCodec {
    /// The largest `pack_len` read.
    pub max_packet: usize,
}

impl Default for PacketCodec {
    fn default() -> Self {
        Self {
            max_packet: DEFAULT_MAX_PACKET,
        }
    }
}

impl Decoder for PacketCodec {
    type Item = Packet;
    type Error = PacketError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, PacketError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let u32_at = |at: usize| u32::from_be_bytes(src[at..at + 4].try_into().expect("4 bytes"));
        let pack_len = u32_at(0) as usize;
        let ext_len = u32_at(24) as usize;
        if pack_len > self.max_packet {
            return Err(PacketError::TooLarge {
                len: pack_len,
                limit: self.max_packet,
            });
        }
        if pack_len < HEADER_LEN || ext_len > pack_len - HEADER_LEN {
            return Err(PacketError::BadLength { pack_len, ext_len });
        }
        if src.len() < pack_len {
            src.reserve(pack_len - src.len());
            return Ok(None);
        }
        let mut packet = src.split_to(pack_len);
        let mut header = packet.split_to(HEADER_LEN);
        header.advance(4);
        let parsed = Packet {
            cmd: header.get_u8(),
            local_ip: Ipv4Addr::from(header.get_u32()),
            local_port: header.get_u16(),
            client_ip: Ipv4Addr::from(header.get_u32()),
            client_port: header.get_u16(),
            connection_id: header.get_u32(),
            flag: header.get_u8(),
            gateway_port: header.get_u16(),
            ext_data: packet.split_to(ext_len).freeze(),
            body: packet.freeze(),
        };
        Ok(Some(parsed))
    }
}

impl Encoder<&Packet> for PacketCodec {
    type Error = PacketError;

    fn encode(&mut self, packet: &Packet, dst: &mut BytesMut) -> Result<(), PacketError> {
        let len = HEADER_LEN + packet.ext_data.len() + packet.body.len();
        let pack_len = u32::try_from(len).map_err(|_| PacketError::Unencodable)?;
        let ext_len = u32::try_from(packet.ext_data.len()).map_err(|_| PacketError::Unencodable)?;
        dst.reserve(len);
        dst.put_u32(pack_len);
        dst.put_u8(packet.cmd);
        dst.put_u32(packet.local_ip.into());
        dst.put_u16(packet.local_port);
        dst.put_u32(packet.client_ip.into());
        dst.put_u16(packet.client_port);
        dst.put_u32(packet.connection_id);
        dst.put_u8(packet.flag);
        dst.put_u16(packet.gateway_port);
        dst.put_u32(ext_len);
        dst.put_slice(&packet.ext_data);
        dst.put_slice(&packet.body);
        Ok(())
    }
}

/// A query's reply as the gateway sends it: a `u32` big-endian length, then `serialized`
/// (a PHP-serialized value).
pub fn reply(serialized: &[u8]) -> Result<Bytes, PacketError> {
    let len = u32::try_from(serialized.len()).map_err(|_| PacketError::Unencodable)?;
    let mut out = BytesMut::with_capacity(4 + serialized.len());
    out.put_u32(len);
    out.put_slice(serialized);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(packet: &Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        PacketCodec::default().encode(packet, &mut out).unwrap();
        out.to_vec()
    }

    /// GatewayClient's `sendToClient('7f00000108fc00000008', 'hello')` as
    /// `GatewayProtocol::encode` packs it (`pack("NCNnNnNCnN")`): a scalar body sets flag 1,
    /// the target gateway is in the client id, so its ip and port are 0 in the header.
    const SEND_TO_ONE_HELLO: &[u8] = b"\x00\x00\x00\x21\x05\x00\x00\x00\x00\x00\x00\
        \x00\x00\x00\x00\x00\x00\x00\x00\x00\x08\x01\x00\x00\x00\x00\x00\x00hello";

    #[test]
    fn a_send_to_one_is_byte_exact() {
        let packet = Packet {
            connection_id: 8,
            flag: FLAG_BODY_IS_SCALAR,
            body: Bytes::from_static(b"hello"),
            ..Packet::new(cmd::SEND_TO_ONE)
        };
        assert_eq!(encode(&packet), SEND_TO_ONE_HELLO);
        let mut src = BytesMut::from(SEND_TO_ONE_HELLO);
        assert_eq!(
            PacketCodec::default().decode(&mut src).unwrap(),
            Some(packet)
        );
        assert!(src.is_empty());
    }

    #[test]
    fn an_event_carries_every_field_in_place() {
        // CMD_ON_MESSAGE from gateway 127.0.0.1:2300 (client-facing port 8282) for client
        // 10.0.0.5:40000, connection 8, session `a:0:{}`, body "hi".
        let packet = Packet {
            cmd: cmd::ON_MESSAGE,
            local_ip: Ipv4Addr::new(127, 0, 0, 1),
            local_port: 2300,
            client_ip: Ipv4Addr::new(10, 0, 0, 5),
            client_port: 40000,
            connection_id: 8,
            flag: FLAG_BODY_IS_SCALAR,
            gateway_port: 8282,
            ext_data: Bytes::from_static(b"a:0:{}"),
            body: Bytes::from_static(b"hi"),
        };
        let expected: &[u8] = b"\x00\x00\x00\x24\x03\x7f\x00\x00\x01\x08\xfc\
            \x0a\x00\x00\x05\x9c\x40\x00\x00\x00\x08\x01\x20\x5a\x00\x00\x00\x06a:0:{}hi";
        assert_eq!(encode(&packet), expected);
        let mut src = BytesMut::from(expected);
        assert_eq!(
            PacketCodec::default().decode(&mut src).unwrap(),
            Some(packet)
        );
    }

    #[test]
    fn partial_input_waits_and_bad_lengths_are_refused_before_allocating() {
        let mut codec = PacketCodec::default();
        for cut in [
            0,
            1,
            HEADER_LEN - 1,
            HEADER_LEN,
            SEND_TO_ONE_HELLO.len() - 1,
        ] {
            let mut src = BytesMut::from(&SEND_TO_ONE_HELLO[..cut]);
            assert_eq!(codec.decode(&mut src).unwrap(), None, "cut at {cut}");
        }
        // Two packets back to back come out one by one.
        let mut src = BytesMut::from([SEND_TO_ONE_HELLO, SEND_TO_ONE_HELLO].concat().as_slice());
        assert!(codec.decode(&mut src).unwrap().is_some());
        assert!(codec.decode(&mut src).unwrap().is_some());
        assert!(src.is_empty());

        let mut header = SEND_TO_ONE_HELLO[..HEADER_LEN].to_vec();
        header[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut src = BytesMut::from(header.as_slice());
        assert!(matches!(
            codec.decode(&mut src),
            Err(PacketError::TooLarge { .. })
        ));
        assert!(
            src.capacity() < 1024,
            "nothing reserved for the claimed size"
        );
        header[..4].copy_from_slice(&27u32.to_be_bytes());
        assert!(matches!(
            codec.decode(&mut BytesMut::from(header.as_slice())),
            Err(PacketError::BadLength { .. })
        ));
        header[..4].copy_from_slice(&33u32.to_be_bytes());
        header[24..28].copy_from_slice(&6u32.to_be_bytes());
        assert!(matches!(
            codec.decode(&mut BytesMut::from(header.as_slice())),
            Err(PacketError::BadLength { .. })
        ));
    }

    #[test]
    fn a_reply_is_length_prefixed() {
        assert_eq!(reply(b"i:1;").unwrap().as_ref(), b"\x00\x00\x00\x04i:1;");
    }
}
