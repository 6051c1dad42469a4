//! Queries and their replies, and how the replies of several gateways combine.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::cluster::ClusterView;
use super::command::Session;
use crate::client_id::ClientId;

/// A request that expects an answer ([`Reply`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// Is this client connected? Answered by its gateway.
    IsOnline(ClientId),
    /// The uid bound to this client. Answered by its gateway.
    UidOf(ClientId),
    /// The client's session. Answered by its gateway.
    SessionOf(ClientId),
    /// For each uid, whether a client is bound to it.
    UidsOnline(Vec<String>),
    /// For each uid, the clients bound to it.
    ClientsOfUids(Vec<String>),
    /// Every bound uid.
    AllUids,
    /// For each group, its number of clients; the empty group name counts every client.
    GroupCounts(Vec<String>),
    /// The clients of a group; the empty group name lists every client.
    ClientsOfGroup(String),
    /// The sessions of the clients of a group; the empty group name lists every client.
    SessionsOfGroup(String),
    /// The distinct uids bound to the members of a group.
    UidsOfGroup(String),
    /// Every group with its clients and their uids.
    AllGroups,
    /// Each gateway's figures and the worker hosts' plugin reports it keeps (the admin page;
    /// not an operation plugins or the push API offer).
    Cluster,
}

impl Query {
    /// The one client this query is about, if any: it then goes only to that client's gateway.
    pub fn target(&self) -> Option<ClientId> {
        match self {
            Query::IsOnline(c) | Query::UidOf(c) | Query::SessionOf(c) => Some(*c),
            _ => None,
        }
    }
}

/// One gateway's members of a group, or the merged view across gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembers {
    /// The group's name.
    pub group: String,
    /// Its clients.
    pub clients: Vec<ClientId>,
    /// The distinct uids bound to its clients.
    pub uids: Vec<String>,
}

/// The answer to a [`Query`]; the variant matches the query's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// For `IsOnline`.
    Online(bool),
    /// For `UidOf`.
    Uid(Option<String>),
    /// For `SessionOf`: none if the client is offline.
    Session(Option<Session>),
    /// For `UidsOnline`.
    UidsOnline(Vec<(String, bool)>),
    /// For `ClientsOfUids`.
    ClientsOfUids(Vec<(String, Vec<ClientId>)>),
    /// For `AllUids` and `UidsOfGroup`: distinct uids.
    Uids(Vec<String>),
    /// For `GroupCounts`.
    GroupCounts(Vec<(String, u32)>),
    /// For `ClientsOfGroup`.
    Clients(Vec<ClientId>),
    /// For `SessionsOfGroup`.
    Sessions(Vec<(ClientId, Session)>),
    /// For `AllGroups`.
    Groups(Vec<GroupMembers>),
    /// For `Cluster`.
    Cluster(ClusterView),
}

/// Two replies of different kinds were merged: a peer answered the wrong question.
#[derive(Debug, thiserror::Error)]
#[error("mismatched replies cannot be merged")]
pub struct MismatchedReply;

impl Reply {
    /// Combines the answers of two gateways to the same query: counts add up, lists are
    /// joined, uid sets are unioned, and per-client answers (from a single gateway) keep the
    /// first that says something.
    pub fn merge(self, other: Reply) -> Result<Reply, MismatchedReply> {
        Ok(match (self, other) {
            (Reply::Online(a), Reply::Online(b)) => Reply::Online(a || b),
            (Reply::Uid(a), Reply::Uid(b)) => Reply::Uid(a.or(b)),
            (Reply::Session(a), Reply::Session(b)) => Reply::Session(a.or(b)),
            (Reply::UidsOnline(a), Reply::UidsOnline(b)) => {
                Reply::UidsOnline(zip_by_key(a, b, |x, y| x || y))
            }
            (Reply::ClientsOfUids(a), Reply::ClientsOfUids(b)) => {
                Reply::ClientsOfUids(zip_by_key(a, b, |mut x, y| {
                    x.extend(y);
                    x
                }))
            }
            (Reply::Uids(a), Reply::Uids(b)) => Reply::Uids(union(a, b)),
            (Reply::GroupCounts(a), Reply::GroupCounts(b)) => {
                Reply::GroupCounts(zip_by_key(a, b, |x, y| x + y))
            }
            (Reply::Clients(mut a), Reply::Clients(b)) => {
                a.extend(b);
                Reply::Clients(a)
            }
            (Reply::Sessions(mut a), Reply::Sessions(b)) => {
                a.extend(b);
                Reply::Sessions(a)
            }
            (Reply::Groups(a), Reply::Groups(b)) => {
                let mut merged: BTreeMap<String, GroupMembers> = BTreeMap::new();
                for g in a.into_iter().chain(b) {
                    let entry = merged.entry(g.group.clone()).or_default();
                    entry.group = g.group;
                    entry.clients.extend(g.clients);
                    entry.uids = union(std::mem::take(&mut entry.uids), g.uids);
                }
                Reply::Groups(merged.into_values().collect())
            }
            (Reply::Cluster(a), Reply::Cluster(b)) => Reply::Cluster(a.merge(b)),
            _ => return Err(MismatchedReply),
        })
    }
}

/// Combines two keyed lists that answer the same keys in the same order (every gateway is
/// asked the same list); a key missing on one side keeps the other side's value. A key asked
/// twice is answered twice by each side: its answers pair up in order, so each occurrence
/// merges with its counterpart rather than the first taking both.
fn zip_by_key<V>(
    a: Vec<(String, V)>,
    b: Vec<(String, V)>,
    f: impl Fn(V, V) -> V,
) -> Vec<(String, V)> {
    let mut b_by_key: BTreeMap<String, VecDeque<V>> = BTreeMap::new();
    for (k, v) in b {
        b_by_key.entry(k).or_default().push_back(v);
    }
    let mut out: Vec<(String, V)> = a
        .into_iter()
        .map(
            |(k, v)| match b_by_key.get_mut(&k).and_then(VecDeque::pop_front) {
                Some(w) => {
                    let merged = f(v, w);
                    (k, merged)
                }
                None => (k, v),
            },
        )
        .collect();
    for (k, rest) in b_by_key {
        out.extend(rest.into_iter().map(|v| (k.clone(), v)));
    }
    out
}

fn union(a: Vec<String>, b: Vec<String>) -> Vec<String> {
    let mut set: std::collections::BTreeSet<String> = a.into_iter().collect();
    set.extend(b);
    set.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_and_uids_union() {
        let a = Reply::GroupCounts(vec![("g".into(), 2), ("h".into(), 0)]);
        let b = Reply::GroupCounts(vec![("g".into(), 3), ("h".into(), 1)]);
        assert_eq!(
            a.merge(b).unwrap(),
            Reply::GroupCounts(vec![("g".into(), 5), ("h".into(), 1)])
        );
        let a = Reply::Uids(vec!["u1".into(), "u2".into()]);
        let b = Reply::Uids(vec!["u2".into(), "u3".into()]);
        assert_eq!(
            a.merge(b).unwrap(),
            Reply::Uids(vec!["u1".into(), "u2".into(), "u3".into()])
        );
    }

    #[test]
    fn a_key_asked_twice_merges_each_time() {
        let a = Reply::GroupCounts(vec![("g".into(), 1), ("h".into(), 5), ("g".into(), 1)]);
        let b = Reply::GroupCounts(vec![("g".into(), 2), ("h".into(), 0), ("g".into(), 2)]);
        assert_eq!(
            a.merge(b).unwrap(),
            Reply::GroupCounts(vec![("g".into(), 3), ("h".into(), 5), ("g".into(), 3)])
        );
        let a = Reply::UidsOnline(vec![("u".into(), false), ("u".into(), false)]);
        let b = Reply::UidsOnline(vec![("u".into(), true), ("u".into(), true)]);
        assert_eq!(
            a.merge(b).unwrap(),
            Reply::UidsOnline(vec![("u".into(), true), ("u".into(), true)])
        );
    }

    #[test]
    fn mismatched_replies_are_refused() {
        assert!(Reply::Online(true).merge(Reply::Uids(vec![])).is_err());
    }
}
