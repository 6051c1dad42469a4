//! The gateway's state: its clients, their groups, uid bindings and sessions.
//!
//! This module alone owns that state, and executes every [`Command`] and answers every
//! [`Query`] against it. It is plain synchronous code behind one mutex that is never held
//! across an `.await`: delivering a message to a client is a non-blocking push onto that
//! client's bounded outbox, so a broadcast holds the lock only for as long as it takes to
//! queue, never while a socket writes. A client whose outbox is full is a slow reader: it is
//! disconnected (see [`super::outbox`]) rather than buffered without bound.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::outbox::{Close, Outbound, Outbox};
use crate::client_id::ClientId;
use crate::ops::{Command, GroupMembers, Query, Reply, Session};
use crate::wire::messages::ClientContext;

struct ClientEntry {
    remote: SocketAddr,
    listener: u16,
    outbox: Outbox,
    uid: Option<String>,
    groups: BTreeSet<String>,
    /// Shared with the events in flight; a write copies it only while one still holds it.
    session: Arc<Session>,
    session_version: u64,
}

#[derive(Default)]
struct Clients {
    next_index: u32,
    by_index: HashMap<u32, ClientEntry>,
    groups: HashMap<String, HashSet<u32>>,
    uids: HashMap<String, HashSet<u32>>,
}

/// The clients of one gateway and everything attached to them.
pub struct GatewayState {
    address: SocketAddrV4,
    clients: Mutex<Clients>,
}

impl GatewayState {
    /// Empty state for the gateway whose internal address is `address` (it is part of every
    /// client id it hands out).
    pub fn new(address: SocketAddrV4) -> Self {
        Self {
            address,
            clients: Mutex::new(Clients::default()),
        }
    }

    /// The gateway's internal address.
    pub fn address(&self) -> SocketAddrV4 {
        self.address
    }

    /// Adds a client and returns its id. Indexes start at 1, wrap, and skip ids in use.
    pub fn add(&self, remote: SocketAddr, listener: u16, outbox: Outbox) -> ClientId {
        let mut c = self.lock();
        let index = loop {
            c.next_index = c.next_index.wrapping_add(1);
            if c.next_index != 0 && !c.by_index.contains_key(&c.next_index) {
                break c.next_index;
            }
        };
        c.by_index.insert(
            index,
            ClientEntry {
                remote,
                listener,
                outbox,
                uid: None,
                groups: BTreeSet::new(),
                session: Arc::default(),
                session_version: 0,
            },
        );
        ClientId::new(self.address, index)
    }

    /// The context to send with an event of `client`; none if it is gone.
    pub fn context(&self, client: ClientId) -> Option<ClientContext> {
        let c = self.lock();
        c.by_index.get(&client.index).map(|e| context_of(client, e))
    }

    /// Removes a client, its groups and its uid; returns its last context for `on-close`.
    pub fn remove(&self, client: ClientId) -> Option<ClientContext> {
        let mut c = self.lock();
        let entry = c.by_index.remove(&client.index)?;
        for group in &entry.groups {
            remove_member(&mut c.groups, group, client.index);
        }
        if let Some(uid) = &entry.uid {
            remove_member(&mut c.uids, uid, client.index);
        }
        Some(context_of(client, &entry))
    }

    /// The number of connected clients.
    pub fn client_count(&self) -> usize {
        self.lock().by_index.len()
    }

    /// Executes a command against the clients this gateway holds; commands about clients of
    /// other gateways are ignored.
    pub fn execute(&self, command: Command) {
        let mut guard = self.lock();
        let c = &mut *guard;
        match command {
            Command::SendToAll { data, exclude } => {
                let exclude = self.local_indexes(&exclude);
                for (index, entry) in &c.by_index {
                    if !exclude.contains(index) {
                        entry.outbox.push(Outbound::Data(data.clone()));
                    }
                }
            }
            Command::SendToClients { clients, data } => {
                let targets = self.local_indexes(&clients);
                c.send_to(targets.into_iter(), &data);
            }
            Command::CloseClient { client, farewell } => {
                if let Some(e) = self.entry(c, client) {
                    e.outbox.push(Outbound::Close(Close::Normal(farewell)));
                }
            }
            Command::RejectClient { client, reason } => {
                if let Some(e) = self.entry(c, client) {
                    e.outbox.push(Outbound::Close(Close::Rejected(reason)));
                }
            }
            Command::DestroyClient { client } => {
                if let Some(e) = self.entry(c, client) {
                    e.outbox.destroy();
                }
            }
            Command::BindUid { client, uid } => {
                let Some(e) = self.entry(c, client) else {
                    return;
                };
                if let Some(old) = e.uid.replace(uid.clone()) {
                    remove_member(&mut c.uids, &old, client.index);
                }
                c.uids.entry(uid).or_default().insert(client.index);
            }
            Command::UnbindUid { client, uid } => {
                let Some(e) = self.entry(c, client) else {
                    return;
                };
                if e.uid.as_deref() == Some(uid.as_str()) {
                    e.uid = None;
                    remove_member(&mut c.uids, &uid, client.index);
                }
            }
            Command::SendToUid { uids, data } => {
                let targets: BTreeSet<u32> = uids
                    .iter()
                    .filter_map(|u| c.uids.get(u))
                    .flatten()
                    .copied()
                    .collect();
                c.send_to(targets.into_iter(), &data);
            }
            Command::JoinGroup { client, group } => {
                let Some(e) = self.entry(c, client) else {
                    return;
                };
                e.groups.insert(group.clone());
                c.groups.entry(group).or_default().insert(client.index);
            }
            Command::LeaveGroup { client, group } => {
                let Some(e) = self.entry(c, client) else {
                    return;
                };
                if e.groups.remove(&group) {
                    remove_member(&mut c.groups, &group, client.index);
                }
            }
            Command::Ungroup { group } => {
                for index in c.groups.remove(&group).unwrap_or_default() {
                    if let Some(e) = c.by_index.get_mut(&index) {
                        e.groups.remove(&group);
                    }
                }
            }
            Command::SendToGroup {
                groups,
                data,
                exclude,
            } => {
                let exclude = self.local_indexes(&exclude);
                let targets: BTreeSet<u32> = groups
                    .iter()
                    .filter_map(|g| c.groups.get(g))
                    .flatten()
                    .filter(|i| !exclude.contains(i))
                    .copied()
                    .collect();
                c.send_to(targets.into_iter(), &data);
            }
            Command::SetSession { client, session } => {
                if let Some(e) = self.entry(c, client) {
                    e.session = Arc::new(session);
                    e.session_version += 1;
                }
            }
            Command::UpdateSession { client, changes } => {
                if let Some(e) = self.entry(c, client) {
                    Arc::make_mut(&mut e.session).extend(changes);
                    e.session_version += 1;
                }
            }
        }
    }

    /// Answers a query from the clients this gateway holds.
    pub fn answer(&self, query: &Query) -> Reply {
        let c = self.lock();
        let local = |id: &ClientId| -> Option<&ClientEntry> {
            (id.gateway == self.address)
                .then(|| c.by_index.get(&id.index))
                .flatten()
        };
        match query {
            Query::IsOnline(id) => Reply::Online(local(id).is_some()),
            Query::UidOf(id) => Reply::Uid(local(id).and_then(|e| e.uid.clone())),
            Query::SessionOf(id) => Reply::Session(local(id).map(|e| Session::clone(&e.session))),
            Query::UidsOnline(uids) => Reply::UidsOnline(
                uids.iter()
                    .map(|u| (u.clone(), c.uids.contains_key(u)))
                    .collect(),
            ),
            Query::ClientsOfUids(uids) => Reply::ClientsOfUids(
                uids.iter()
                    .map(|u| (u.clone(), self.ids(c.uids.get(u))))
                    .collect(),
            ),
            Query::AllUids => Reply::Uids(c.uids.keys().cloned().collect()),
            Query::GroupCounts(groups) => Reply::GroupCounts(
                groups
                    .iter()
                    .map(|g| {
                        let n = if g.is_empty() {
                            c.by_index.len()
                        } else {
                            c.groups.get(g).map_or(0, HashSet::len)
                        };
                        (g.clone(), n as u32)
                    })
                    .collect(),
            ),
            Query::ClientsOfGroup(g) if g.is_empty() => {
                Reply::Clients(c.by_index.keys().map(|i| self.id(*i)).collect())
            }
            Query::ClientsOfGroup(g) => Reply::Clients(self.ids(c.groups.get(g))),
            Query::SessionsOfGroup(g) => {
                let session_of = |i: &u32| {
                    c.by_index
                        .get(i)
                        .map(|e| (self.id(*i), Session::clone(&e.session)))
                };
                Reply::Sessions(if g.is_empty() {
                    c.by_index.keys().filter_map(session_of).collect()
                } else {
                    c.groups
                        .get(g)
                        .into_iter()
                        .flatten()
                        .filter_map(session_of)
                        .collect()
                })
            }
            Query::UidsOfGroup(g) => Reply::Uids(c.uids_of(c.groups.get(g))),
            Query::AllGroups => Reply::Groups(
                c.groups
                    .iter()
                    .map(|(group, members)| GroupMembers {
                        group: group.clone(),
                        clients: self.ids(Some(members)),
                        uids: c.uids_of(Some(members)),
                    })
                    .collect(),
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clients> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the gateway, so recover the guard.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn id(&self, index: u32) -> ClientId {
        ClientId::new(self.address, index)
    }

    fn ids(&self, members: Option<&HashSet<u32>>) -> Vec<ClientId> {
        members.into_iter().flatten().map(|i| self.id(*i)).collect()
    }

    fn local_indexes(&self, ids: &[ClientId]) -> HashSet<u32> {
        ids.iter()
            .filter(|id| id.gateway == self.address)
            .map(|id| id.index)
            .collect()
    }

    fn entry<'a>(&self, c: &'a mut Clients, id: ClientId) -> Option<&'a mut ClientEntry> {
        if id.gateway != self.address {
            return None;
        }
        c.by_index.get_mut(&id.index)
    }

    /// How many clients, groups and uids this gateway holds (for `status` and `/metrics`).
    pub fn summary(&self) -> StateSummary {
        let c = self.lock();
        StateSummary {
            clients: c.by_index.len(),
            groups: c.groups.len(),
            uids: c.uids.len(),
        }
    }

    /// Every client with its address, uid and groups (for `wasmgate connections`); copies
    /// them all under the lock, so it is for an operator's request, not for a hot path.
    pub fn clients(&self) -> Vec<ClientSummary> {
        let c = self.lock();
        c.by_index
            .iter()
            .map(|(index, e)| ClientSummary {
                id: self.id(*index),
                remote: e.remote,
                uid: e.uid.clone(),
                groups: e.groups.iter().cloned().collect(),
            })
            .collect()
    }
}

/// The sizes of a gateway's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSummary {
    /// Connected clients.
    pub clients: usize,
    /// Groups with at least one member.
    pub groups: usize,
    /// Uids bound to at least one client.
    pub uids: usize,
}

/// One client as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSummary {
    /// Its id.
    pub id: ClientId,
    /// Its address.
    pub remote: SocketAddr,
    /// Its uid, if bound.
    pub uid: Option<String>,
    /// Its groups, sorted.
    pub groups: Vec<String>,
}

impl Clients {
    fn send_to(&self, targets: impl Iterator<Item = u32>, data: &Bytes) {
        for index in targets {
            if let Some(e) = self.by_index.get(&index) {
                e.outbox.push(Outbound::Data(data.clone()));
            }
        }
    }

    fn uids_of(&self, members: Option<&HashSet<u32>>) -> Vec<String> {
        let uids: BTreeSet<&String> = members
            .into_iter()
            .flatten()
            .filter_map(|i| self.by_index.get(i)?.uid.as_ref())
            .collect();
        uids.into_iter().cloned().collect()
    }
}

fn context_of(id: ClientId, e: &ClientEntry) -> ClientContext {
    ClientContext {
        id,
        remote: e.remote,
        listener: e.listener,
        uid: e.uid.clone(),
        session: e.session.clone(),
        session_version: e.session_version,
    }
}

fn remove_member(index: &mut HashMap<String, HashSet<u32>>, key: &str, member: u32) {
    if let Some(members) = index.get_mut(key) {
        members.remove(&member);
        if members.is_empty() {
            index.remove(key);
        }
    }
}
