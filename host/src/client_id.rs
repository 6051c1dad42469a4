//! `ClientId`: where a client lives, encoded so that any worker host can reach it without a
//! lookup.
//!
//! The layout is GatewayWorker's: the owning gateway's internal IPv4 address (4 bytes), its
//! internal port (2 bytes) and a per-gateway connection index (4 bytes), printed as 20 lowercase
//! hex characters. Keeping the layout means ids look familiar to GatewayWorker users, PHP code
//! decodes them, and a worker host routes a per-client command by decoding the id alone.
//!
//! A gateway that advertises an IPv6 address has no 4 bytes to put there: its ids carry a
//! *tag* instead, 28 bits of SHA-256 of its address in 240.0.0.0/4, a range no gateway may
//! advertise (config refuses it), so a tag is never mistaken for an address. [`gateway_key`]
//! gives the 6 bytes for any advertised address; a peer maps them back to the address through
//! the gateway list it already has (ARCHITECTURE.md, "Bind address vs advertised address").

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The 6 bytes client ids give the gateway advertising `internal`: the address itself for
/// IPv4 (or an IPv4-mapped IPv6 address), else the address's tag ([`is_tag`]) with the port.
pub fn gateway_key(internal: SocketAddr) -> SocketAddrV4 {
    let ip = match internal.ip().to_canonical() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => {
            let digest = Sha256::digest(ip.octets());
            let bits = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
            Ipv4Addr::from(TAGS | (bits & !TAG_MASK))
        }
    };
    SocketAddrV4::new(ip, internal.port())
}

/// The range tags are drawn from, 240.0.0.0/4 ("reserved for future use": no host has it).
const TAGS: u32 = 0xf000_0000;

/// The bits of an address that say it is in [`TAGS`].
const TAG_MASK: u32 = 0xf000_0000;

/// Whether `ip` is in 240.0.0.0/4, where the tags of IPv6 gateways live: no gateway may
/// advertise such an address.
pub fn is_tag(ip: Ipv4Addr) -> bool {
    u32::from(ip) & TAG_MASK == TAGS
}

/// How the per-event maps keyed by [`ClientId`] hash: ids are made by gateways, not chosen by
/// clients, so a fast seeded hash does, where SipHash showed in the per-message profile.
pub type ClientHasher = foldhash::fast::RandomState;

/// A map keyed by client id on a per-event path.
pub type ClientMap<V> = HashMap<ClientId, V, ClientHasher>;

/// Tables of clients smaller than this many slots are left as they are: a few kilobytes at
/// most, and a map that a handful of busy clients fill and empty would otherwise be shrunk
/// and grown again and again.
const SHRINK_FLOOR: usize = 64;

/// Gives back most of a table of clients once it holds under an eighth of what it can,
/// called after a removal: such a table grows for the peak of a connect burst, and a hash
/// table never shrinks on its own. Amortized like growing: a shrink to twice the length is
/// paid for by the removals since the table last held that much, and the next one waits for
/// a quarter of that.
pub fn shrink_if_sparse(table: &mut impl Table) {
    let (len, capacity) = table.sizes();
    if capacity > SHRINK_FLOOR && len < capacity / 8 {
        table.shrink_to((len * 2).max(SHRINK_FLOOR));
    }
}

/// A hash table [`shrink_if_sparse`] shrinks: a map or a set.
pub trait Table {
    /// Its entries, and how many it holds before it grows.
    fn sizes(&self) -> (usize, usize);
    /// Shrinks it to hold at least `min` entries.
    fn shrink_to(&mut self, min: usize);
}

impl<K: Eq + Hash, V, S: BuildHasher> Table for HashMap<K, V, S> {
    fn sizes(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }

    fn shrink_to(&mut self, min: usize) {
        HashMap::shrink_to(self, min);
    }
}

impl<T: Eq + Hash, S: BuildHasher> Table for HashSet<T, S> {
    fn sizes(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }

    fn shrink_to(&mut self, min: usize) {
        HashSet::shrink_to(self, min);
    }
}

/// A client connection's cluster-wide id: its 20 hex characters in JSON, 10 bytes' worth of
/// fields on the internal links.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    /// The gateway holding the client: its internal (worker-facing) address, or for a
    /// gateway advertising IPv6 its tag and port ([`gateway_key`]).
    pub gateway: SocketAddrV4,
    /// The connection's index on that gateway.
    pub index: u32,
}

/// Why a string is not a client id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed client id {0:?}: expected 20 hex characters")]
pub struct MalformedClientId(pub String);

impl ClientId {
    /// The id of connection `index` on the gateway whose internal address is `gateway`.
    pub fn new(gateway: SocketAddrV4, index: u32) -> Self {
        Self { gateway, index }
    }

    /// The id as its 20 hex characters.
    pub fn to_hex(&self) -> String {
        let mut text = String::with_capacity(20);
        self.write_hex(&mut text);
        text
    }

    /// Appends the id's 20 hex characters to `text`. Written out by hand, not through
    /// `format!`: every event hands its client's id to the plugin as text, and the formatting
    /// machinery showed in the per-message profile.
    pub fn write_hex(&self, text: &mut String) {
        let fields = [
            (u32::from(*self.gateway.ip()), 8),
            (u32::from(self.gateway.port()), 4),
            (self.index, 8),
        ];
        for (value, digits) in fields {
            for shift in (0..digits).rev() {
                let nibble = (value >> (shift * 4)) & 0xf;
                text.push(char::from(HEX_DIGITS[nibble as usize]));
            }
        }
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Each byte's value as a hex digit (either case), or [`NOT_HEX`]: a table look-up per
/// digit, as `char::to_digit`'s branches showed in the per-message count of instructions.
static HEX_VALUES: [u8; 256] = {
    let mut values = [NOT_HEX; 256];
    let mut i = 0;
    while i < 16 {
        values[HEX_DIGITS[i] as usize] = i as u8;
        values[HEX_DIGITS[i].to_ascii_uppercase() as usize] = i as u8;
        i += 1;
    }
    values
};

const NOT_HEX: u8 = 0xff;

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({self})")
    }
}

impl FromStr for ClientId {
    type Err = MalformedClientId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Every host call about a client parses its id: one pass over the 20 digits, read as
        // one number and split, instead of a check pass and three `from_str_radix`.
        let malformed = || MalformedClientId(s.to_owned());
        if s.len() != 20 {
            return Err(malformed());
        }
        let mut value: u128 = 0;
        for byte in s.bytes() {
            let digit = HEX_VALUES[usize::from(byte)];
            if digit == NOT_HEX {
                return Err(malformed());
            }
            value = value << 4 | u128::from(digit);
        }
        let (ip, port, index) = ((value >> 48) as u32, (value >> 32) as u16, value as u32);
        Ok(Self::new(
            SocketAddrV4::new(Ipv4Addr::from(ip), port),
            index,
        ))
    }
}

impl Serialize for ClientId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            (self.gateway, self.index).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for ClientId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            let (gateway, index) = Deserialize::deserialize(deserializer)?;
            Ok(Self { gateway, index })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_gatewayworker_layout() {
        let id = ClientId::new("127.0.0.1:2300".parse().unwrap(), 8);
        assert_eq!(id.to_string(), "7f00000108fc00000008");
        assert_eq!("7f00000108fc00000008".parse::<ClientId>().unwrap(), id);
    }

    #[test]
    fn the_hand_written_text_is_the_formatted_one() {
        for (ip, port, index) in [
            (0, 0, 0),
            (u32::MAX, u16::MAX, u32::MAX),
            (0x0a00_0001, 0x1, 0x0fed_cba9),
        ] {
            let id = ClientId::new(SocketAddrV4::new(Ipv4Addr::from(ip), port), index);
            assert_eq!(id.to_hex(), format!("{ip:08x}{port:04x}{index:08x}"));
        }
    }

    #[test]
    fn an_ipv4_gateway_is_its_own_key_and_an_ipv6_one_gets_a_stable_tag() {
        let v4: SocketAddr = "10.1.2.3:2900".parse().unwrap();
        assert_eq!(gateway_key(v4), "10.1.2.3:2900".parse().unwrap());
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:2900".parse().unwrap();
        assert_eq!(gateway_key(mapped), "10.1.2.3:2900".parse().unwrap());
        // Every peer, of every version, must derive the same tag: frozen here.
        let v6: SocketAddr = "[::1]:2900".parse().unwrap();
        let key = gateway_key(v6);
        assert!(is_tag(*key.ip()) && key.port() == 2900, "{key}");
        assert_eq!(key, "252.60.205.16:2900".parse().unwrap());
        assert_eq!(ClientId::new(key, 8).to_hex(), "fc3ccd100b5400000008");
        let other: SocketAddr = "[fd00::1]:2900".parse().unwrap();
        assert_ne!(gateway_key(other), key);
        assert!(!is_tag(Ipv4Addr::new(239, 255, 255, 255)));
        assert!(is_tag(Ipv4Addr::new(255, 255, 255, 255)));
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "7f00000108fc0000000",
            "7f00000108fc0000000g",
            "7f00000108fc000000080",
            "+f00000108fc00000008",
            "7f00000108fc000000\u{e9}",
        ] {
            assert!(bad.parse::<ClientId>().is_err(), "{bad:?} accepted");
        }
        let id = ClientId::new("127.0.0.1:2300".parse().unwrap(), 8);
        assert_eq!("7F00000108FC00000008".parse::<ClientId>().unwrap(), id);
    }

    #[test]
    fn text_in_json_fields_on_the_wire() {
        let id = ClientId::new("127.0.0.1:2300".parse().unwrap(), 8);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"7f00000108fc00000008\"");
        assert_eq!(serde_json::from_str::<ClientId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<ClientId>("\"7f\"").is_err());
        let wire = postcard::to_stdvec(&id).unwrap();
        assert!(wire.len() <= 10, "{wire:?}");
        assert_eq!(postcard::from_bytes::<ClientId>(&wire).unwrap(), id);
    }
}
