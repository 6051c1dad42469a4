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

/// A group or uid name: never empty. (Unlike GatewayWorker, `"0"` is a valid name.)
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Checks `value` as the argument `argument`.
    pub fn new(argument: &str, value: impl Into<String>) -> Result<Self, OpError> {
        let value = value.into();
        if value.is_empty() {
            return Err(invalid(argument, "must not be empty"));
        }
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

impl Argument<Session> for Session {
    fn into_argument(self, _: &str) -> Result<Session, OpError> {
        Ok(self)
    }
}

/// A session as a list of pairs (the WIT's `session`); a key listed twice keeps its last
/// value.
impl Argument<Session> for Vec<(String, String)> {
    fn into_argument(self, _: &str) -> Result<Session, OpError> {
        Ok(self.into_iter().collect())
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
