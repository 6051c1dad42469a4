//! The arguments and answers of the gateway operations, and the one place their values are
//! checked: [`Argument`] turns what a caller gives (a plugin's strings, an HTTP body's fields,
//! a Rust caller's typed values) into what an operation takes, or names the argument and says
//! what is wrong with it.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::command::Session;
use super::error::OpError;
use crate::client_id::ClientId;

/// A value an operation accepts as its argument `T`.
pub trait Argument<T> {
    /// Converts and checks the value given for the argument `name`.
    fn into_argument(self, name: &str) -> Result<T, OpError>;
}

fn invalid(argument: impl Into<String>, reason: impl fmt::Display) -> OpError {
    OpError::InvalidArgument {
        argument: argument.into(),
        reason: reason.to_string(),
    }
}

/// Converts each item of a list, naming a bad one by its index: `groups[2]`.
fn each<S, T>(
    items: impl IntoIterator<Item = S>,
    name: &str,
    f: impl Fn(S, &str) -> Result<T, OpError>,
) -> Result<Vec<T>, OpError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| f(item, &format!("{name}[{i}]")))
        .collect()
}

// ---- Client ids -----------------------------------------------------------------------------

impl Argument<ClientId> for ClientId {
    fn into_argument(self, _: &str) -> Result<ClientId, OpError> {
        Ok(self)
    }
}

impl Argument<ClientId> for &str {
    fn into_argument(self, name: &str) -> Result<ClientId, OpError> {
        self.parse().map_err(|e| invalid(name, e))
    }
}

impl Argument<ClientId> for String {
    fn into_argument(self, name: &str) -> Result<ClientId, OpError> {
        self.as_str().into_argument(name)
    }
}

impl Argument<Vec<ClientId>> for &[ClientId] {
    fn into_argument(self, _: &str) -> Result<Vec<ClientId>, OpError> {
        Ok(self.to_vec())
    }
}

impl<const N: usize> Argument<Vec<ClientId>> for &[ClientId; N] {
    fn into_argument(self, _: &str) -> Result<Vec<ClientId>, OpError> {
        Ok(self.to_vec())
    }
}

impl Argument<Vec<ClientId>> for Vec<ClientId> {
    fn into_argument(self, _: &str) -> Result<Vec<ClientId>, OpError> {
        Ok(self)
    }
}

impl Argument<Vec<ClientId>> for Vec<String> {
    fn into_argument(self, name: &str) -> Result<Vec<ClientId>, OpError> {
        each(self, name, |id, name| id.into_argument(name))
    }
}

/// Clients that must not receive a send; none unless given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Excluded(pub Vec<ClientId>);

impl<T: Argument<Vec<ClientId>>> Argument<Excluded> for T {
    fn into_argument(self, name: &str) -> Result<Excluded, OpError> {
        self.into_argument(name).map(Excluded)
    }
}

// ---- Groups and uids ------------------------------------------------------------------------

/// The longest group or uid name, in bytes. Part of the API (a longer name is refused at the
/// call, the same on every gateway), so what one client's names pin in a gateway is bounded.
pub const MAX_NAME_BYTES: usize = 256;

/// A group or uid name: never empty, at most [`MAX_NAME_BYTES`]. (Unlike GatewayWorker, `"0"`
/// is a valid name.)
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Checks `value` as the argument `argument`.
    pub fn new(argument: &str, value: impl Into<String>) -> Result<Self, OpError> {
        let value = value.into();
        check_name(&value).map_err(|reason| invalid(argument, reason))?;
        Ok(Self(value))
    }

    /// The names as strings, in order.
    pub fn strings(names: Vec<Name>) -> Vec<String> {
        names.into_iter().map(String::from).collect()
    }

    /// The names as strings, each once.
    pub fn distinct(names: Vec<Name>) -> Vec<String> {
        let mut names = Self::strings(names);
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// Why `name` cannot be a group or uid; the gateway checks what it stores with this too.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{} bytes, longer than the {MAX_NAME_BYTES} a group or uid may have",
            name.len()
        ));
    }
    Ok(())
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

impl Argument<Name> for Name {
    fn into_argument(self, _: &str) -> Result<Name, OpError> {
        Ok(self)
    }
}

impl Argument<Name> for &str {
    fn into_argument(self, name: &str) -> Result<Name, OpError> {
        Name::new(name, self)
    }
}

impl Argument<Name> for String {
    fn into_argument(self, name: &str) -> Result<Name, OpError> {
        Name::new(name, self)
    }
}

impl<S: AsRef<str>> Argument<Vec<Name>> for &[S] {
    fn into_argument(self, name: &str) -> Result<Vec<Name>, OpError> {
        each(self, name, |n, name| Name::new(name, n.as_ref()))
    }
}

impl<S: AsRef<str>, const N: usize> Argument<Vec<Name>> for &[S; N] {
    fn into_argument(self, name: &str) -> Result<Vec<Name>, OpError> {
        self.as_slice().into_argument(name)
    }
}

impl Argument<Vec<Name>> for Vec<String> {
    fn into_argument(self, name: &str) -> Result<Vec<Name>, OpError> {
        each(self, name, |n, name| Name::new(name, n))
    }
}

/// A group name where the empty name means "every client" (the count queries).
impl Argument<String> for &str {
    fn into_argument(self, _: &str) -> Result<String, OpError> {
        Ok(self.to_owned())
    }
}

impl Argument<String> for String {
    fn into_argument(self, _: &str) -> Result<String, OpError> {
        Ok(self)
    }
}

// ---- Payloads and sessions ------------------------------------------------------------------

impl<B: Into<Bytes>> Argument<Bytes> for B {
    fn into_argument(self, _: &str) -> Result<Bytes, OpError> {
        Ok(self.into())
    }
}

impl<B: Into<Bytes>> Argument<Option<Bytes>> for Option<B> {
    fn into_argument(self, _: &str) -> Result<Option<Bytes>, OpError> {
        Ok(self.map(Into::into))
    }
}

/// The most bytes one client's session may hold, keys and values together. Part of the API: a
/// `set-session` (or a change set) larger than this is refused at the call, and the gateway
/// refuses any write that would take a session past it.
pub const MAX_SESSION_BYTES: usize = 64 * 1024;

/// What `session` counts against [`MAX_SESSION_BYTES`].
pub fn session_bytes(session: &Session) -> usize {
    session.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// What `session`, which counts `bytes`, counts once `changes` are merged into it.
pub fn session_bytes_after(session: &Session, bytes: usize, changes: &Session) -> usize {
    changes
        .iter()
        .fold(bytes, |n, (k, v)| match session.get(k) {
            Some(old) => n.saturating_sub(old.len()) + v.len(),
            None => n + k.len() + v.len(),
        })
}

/// Why a session of `bytes` bytes cannot be stored, if it cannot.
pub fn check_session_bytes(bytes: usize) -> Result<(), String> {
    if bytes > MAX_SESSION_BYTES {
        return Err(format!(
            "{bytes} bytes, more than the {MAX_SESSION_BYTES} a session may hold"
        ));
    }
    Ok(())
}

impl Argument<Session> for Session {
    fn into_argument(self, name: &str) -> Result<Session, OpError> {
        check_session_bytes(session_bytes(&self)).map_err(|reason| invalid(name, reason))?;
        Ok(self)
    }
}

/// A session as a list of pairs (the WIT's `session`); a key listed twice keeps its last
/// value.
impl Argument<Session> for Vec<(String, String)> {
    fn into_argument(self, name: &str) -> Result<Session, OpError> {
        self.into_iter().collect::<Session>().into_argument(name)
    }
}

// ---- Answers --------------------------------------------------------------------------------

/// Answers keyed by what was asked about (a uid, a group, a client), in the order the
/// gateways gave them; serialised as a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed<K, V>(pub Vec<(K, V)>);

impl<K, V> Keyed<K, V> {
    /// The pairs.
    pub fn into_vec(self) -> Vec<(K, V)> {
        self.0
    }
}

impl<K: Ord, V> Keyed<K, V> {
    /// The pairs as a map: a key answered twice keeps its last value.
    pub fn into_map(self) -> BTreeMap<K, V> {
        self.0.into_iter().collect()
    }
}

impl<K: Serialize, V: Serialize> Serialize for Keyed<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded() {
        let longest = "n".repeat(MAX_NAME_BYTES);
        assert!(Name::new("group", longest.as_str()).is_ok());
        let err = Name::new("group", format!("{longest}n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "group: 257 bytes, longer than the 256 a group or uid may have"
        );
        let err = vec!["a".to_owned(), longest + "n"]
            .into_argument("uids")
            .map(|_: Vec<Name>| ())
            .unwrap_err();
        assert!(err.to_string().starts_with("uids[1]: 257 bytes"), "{err}");
    }

    #[test]
    fn sessions_are_bounded() {
        let fits = vec![("k".to_owned(), "v".repeat(MAX_SESSION_BYTES - 1))];
        let session: Session = fits.into_argument("session").unwrap();
        assert_eq!(session_bytes(&session), MAX_SESSION_BYTES);
        let over = vec![("kk".to_owned(), "v".repeat(MAX_SESSION_BYTES - 1))];
        let err = Argument::<Session>::into_argument(over, "changes").unwrap_err();
        assert_eq!(
            err.to_string(),
            "changes: 65537 bytes, more than the 65536 a session may hold"
        );
    }
}
