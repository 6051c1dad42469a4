//! The gateway's state: its clients, their groups, uid bindings and sessions.
//!
//! This module alone owns that state, and executes every [`Command`] and answers every
//! [`Query`] against it. It is plain synchronous code behind one mutex that is never held
//! across an `.await`: delivering a message to a client is a non-blocking push onto that
//! client's bounded outbox, so a broadcast holds the lock only for as long as it takes to
//! queue, never while a socket writes. A client whose outbox is full is a slow reader: it is
//! disconnected (see [`super::outbox`]) rather than buffered without bound.
//!
//! What one client can make the gateway hold is bounded here, whatever the command's origin
//! (a plugin, the push API, a peer that skipped the checks at the call): at most
//! `max_groups_per_client` groups, names of at most [`crate::ops::MAX_NAME_BYTES`] and a
//! session of at most [`crate::ops::MAX_SESSION_BYTES`]. A command over a limit is refused (nothing changes), counted,
//! and logged at WARN once per client.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::sync::Notify;

use super::counters::Counters;
use super::outbox::{self, Close, Outbound, Outbox};
use crate::client_id::{self, ClientHasher, ClientId};
use crate::ops::{
    ClusterView, Command, GatewayView, GroupMembers, Query, Reply, Session, check_name,
    check_session_bytes, session_bytes, session_bytes_after,
};
use crate::wire::messages::{ClientContext, KeptClient};

/// One client. A gateway holds tens of thousands, mostly idle, in a hash table whose slots
/// are sized by this entry: what every client has is inline; what only some acquire (a uid,
/// groups, a written session, an address other than IPv4) is in [`More`], boxed on first need.
struct ClientEntry {
    outbox: Outbox,
    more: Option<Box<More>>,
    /// Its address if IPv4, as nearly every client's is; any other is `more`'s.
    v4: Option<SocketAddrV4>,
    listener: u16,
    /// Whether a refused command of this client was logged yet.
    warned: bool,
    /// Whether its keeper is told of it (its first event is on its way): from then on its
    /// changes are marked for the keepers' task.
    kept: bool,
}

/// What a client holds beyond what every client has; kept once made, so that the session's
/// version never restarts.
struct More {
    /// Its address, if not IPv4.
    v6: Option<SocketAddrV6>,
    uid: Option<String>,
    groups: BTreeSet<String>,
    /// Shared with the events in flight; a write copies it only while one still holds it.
    session: Arc<Session>,
    /// What `session` counts against [`crate::ops::MAX_SESSION_BYTES`].
    session_bytes: usize,
    session_version: u64,
}

/// The session every client starts with, shared until one is written: an allocation per
/// client otherwise, held by every idle one.
static EMPTY_SESSION: LazyLock<Arc<Session>> = LazyLock::new(Arc::default);

impl ClientEntry {
    fn new(remote: SocketAddr, listener: u16, outbox: Outbox) -> Self {
        let (v4, more) = match remote {
            SocketAddr::V4(v4) => (Some(v4), None),
            SocketAddr::V6(v6) => (None, Some(More::boxed(Some(v6)))),
        };
        Self {
            outbox,
            more,
            v4,
            listener,
            warned: false,
            kept: false,
        }
    }

    fn remote(&self) -> SocketAddr {
        match (self.v4, self.more.as_ref().and_then(|m| m.v6)) {
            (Some(v4), _) => SocketAddr::V4(v4),
            (None, Some(v6)) => SocketAddr::V6(v6),
            // Not made: an entry without an IPv4 address is made with `more` holding the other.
            (None, None) => SocketAddr::from(([0; 16], 0)),
        }
    }

    /// What it holds beyond every client, made now if it was not yet.
    fn more(&mut self) -> &mut More {
        self.more.get_or_insert_with(|| More::boxed(None))
    }

    fn uid(&self) -> Option<&String> {
        self.more.as_ref()?.uid.as_ref()
    }

    fn groups(&self) -> impl Iterator<Item = &String> {
        self.more.iter().flat_map(|m| &m.groups)
    }

    fn session(&self) -> &Arc<Session> {
        self.more.as_ref().map_or(&EMPTY_SESSION, |m| &m.session)
    }

    fn session_bytes(&self) -> usize {
        self.more.as_ref().map_or(0, |m| m.session_bytes)
    }

    fn session_version(&self) -> u64 {
        self.more.as_ref().map_or(0, |m| m.session_version)
    }
}

impl More {
    fn boxed(v6: Option<SocketAddrV6>) -> Box<Self> {
        Box::new(Self {
            v6,
            uid: None,
            groups: BTreeSet::new(),
            session: EMPTY_SESSION.clone(),
            session_bytes: 0,
            session_version: 0,
        })
    }
}

/// Client indexes of this gateway, sorted and distinct: a sorted vector beats hashing a
/// command's short lists into a set, or a broadcast's thousands into a tree, and delivers in
/// the order the clients connected. A command for a few clients allocates nothing.
struct Indexes(SmallVec<[u32; 4]>);

impl Indexes {
    fn distinct(indexes: impl Iterator<Item = u32>) -> Self {
        let mut indexes: SmallVec<[u32; 4]> = indexes.collect();
        indexes.sort_unstable();
        indexes.dedup();
        Self(indexes)
    }

    fn contains(&self, index: &u32) -> bool {
        self.0.binary_search(index).is_ok()
    }
}

#[derive(Default)]
struct Clients {
    next_index: u32,
    /// Set by [`GatewayState::stop_clients`].
    stopping: bool,
    /// Looked up on every event and command: indexes are the gateway's own, so a fast hash.
    by_index: HashMap<u32, ClientEntry, ClientHasher>,
    groups: HashMap<String, Members>,
    uids: HashMap<String, Members>,
    /// Uids whose local set of clients went from empty to not or back since the presence
    /// task last looked, with the client that did it; kept only while a linked worker host
    /// wants presence for this gateway's app. Bounded by the uids bound and released.
    dirty: HashMap<String, ClientContext>,
    /// Groups and uids whose local holding (some member, or none) may have changed since
    /// the NATS task last looked; kept only when NATS is the engine (`gateway::nats`), which
    /// subscribes to the subjects of what the gateway holds. Bounded by the names held and
    /// released.
    membership: Option<HashSet<Held>>,
    /// Kept clients (see [`GatewayState::keep`]) whose keeper must hear of them since the
    /// keepers' task last looked: connected, uid changed, or gone. Bounded by the clients.
    keeping: HashSet<u32, ClientHasher>,
}

/// A group or uid name, as the NATS task subscribes to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Held {
    /// A group.
    Group(String),
    /// A uid.
    Uid(String),
}

/// The indexes of a group's or uid's members.
type Members = HashSet<u32, ClientHasher>;

/// What one client may hold in a gateway's state, beside the API's own limits on names and
/// sessions.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// `max_groups_per_client`.
    pub max_groups: usize,
}

/// The clients of one gateway and everything attached to them.
pub struct GatewayState {
    /// The advertised internal address.
    internal: SocketAddr,
    /// What client ids hold of it ([`client_id::gateway_key`]).
    address: SocketAddrV4,
    limits: ClientLimits,
    counters: Arc<Counters>,
    clients: Mutex<Clients>,
    /// Whether uid transitions are tracked for the presence task (`gateway::presence`).
    presence: AtomicBool,
    /// Wakes the presence task when a uid is marked.
    marked: Notify,
    /// Wakes the NATS task when a group or uid is held or released.
    membership_marked: Notify,
    /// Wakes the keepers' task (`gateway::keepers`) when a kept client is marked.
    keeping_marked: Notify,
}

impl GatewayState {
    /// Empty state for the gateway whose advertised internal address is `internal` (its key
    /// is part of every client id it hands out), holding clients to `limits` and counting
    /// refusals in `counters`.
    pub fn new(internal: SocketAddr, limits: ClientLimits, counters: Arc<Counters>) -> Self {
        // A restarted gateway keeps its address, so indexes restarting at 1 would hand a new
        // user the id a backend still holds for someone who left: start anywhere instead.
        let clients = Clients {
            next_index: rand::random(),
            ..Clients::default()
        };
        Self {
            internal,
            address: client_id::gateway_key(internal),
            limits,
            counters,
            clients: Mutex::new(clients),
            presence: AtomicBool::new(false),
            marked: Notify::new(),
            membership_marked: Notify::new(),
            keeping_marked: Notify::new(),
        }
    }

    /// The gateway as its client ids name it: its internal IPv4 address, or its IPv6
    /// address's tag ([`client_id::gateway_key`]).
    pub fn address(&self) -> SocketAddrV4 {
        self.address
    }

    /// The gateway's advertised internal address, where worker hosts reach it.
    pub fn internal(&self) -> SocketAddr {
        self.internal
    }

    /// Adds a client and returns its id. Indexes start at a random one per run, wrap, and
    /// skip 0 and ids in use.
    pub fn add(&self, remote: SocketAddr, listener: u16, outbox: Outbox) -> ClientId {
        let mut c = self.lock();
        let index = loop {
            c.next_index = c.next_index.wrapping_add(1);
            if c.next_index != 0 && !c.by_index.contains_key(&c.next_index) {
                break c.next_index;
            }
        };
        // A client that arrives while the gateway stops is stopped as it comes.
        if c.stopping {
            outbox.stop();
        }
        c.by_index
            .insert(index, ClientEntry::new(remote, listener, outbox));
        ClientId::new(self.address, index)
    }

    /// Ends every client's connection with a going-away close, and every later one's as it
    /// is added: the gateway is stopping. Through the outboxes, which the connection tasks
    /// watch anyway, so that a running connection watches no gateway-wide signal.
    pub fn stop_clients(&self) {
        let mut c = self.lock();
        c.stopping = true;
        for entry in c.by_index.values() {
            entry.outbox.stop();
        }
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
        client_id::shrink_if_sparse(&mut c.by_index);
        for group in entry.groups() {
            if remove_member(&mut c.groups, group, client.index) {
                self.touch(&mut c, || Held::Group(group.clone()));
            }
        }
        let context = context_of(client, &entry);
        if entry.kept {
            self.mark_kept(&mut c, client.index);
        }
        if let Some(uid) = entry.uid() {
            if remove_member(&mut c.uids, uid, client.index) {
                self.touch(&mut c, || Held::Uid(uid.clone()));
            }
            self.mark_if_released(&mut c, uid, &context);
        }
        Some(context)
    }

    /// Starts or stops tracking uid transitions for the presence task; starting marks every
    /// uid held (a host that just started to want presence is told of each).
    pub fn track_presence(&self, on: bool) {
        if self.presence.swap(on, Ordering::SeqCst) == on {
            return;
        }
        let mut c = self.lock();
        if !on {
            c.dirty = HashMap::new();
            return;
        }
        let Clients {
            by_index,
            uids,
            dirty,
            ..
        } = &mut *c;
        for (uid, members) in uids.iter() {
            let held_by = members.iter().find_map(|i| by_index.get_key_value(i));
            if let Some((index, e)) = held_by {
                dirty.insert(uid.clone(), context_of(self.id(*index), e));
            }
        }
        drop(c);
        self.marked.notify_one();
    }

    /// Starts keeping the groups and uids whose local holding changes, for the NATS task;
    /// marks every one held now, so that the task subscribes to them all.
    pub fn track_membership(&self) {
        let mut c = self.lock();
        let held = c.groups.keys().cloned().map(Held::Group);
        let held = held.chain(c.uids.keys().cloned().map(Held::Uid)).collect();
        c.membership = Some(held);
        drop(c);
        self.membership_marked.notify_one();
    }

    /// The groups and uids marked since the last call, each with whether some client of
    /// this gateway holds it now.
    pub fn take_membership(&self) -> Vec<(Held, bool)> {
        let mut c = self.lock();
        let Some(marked) = c.membership.as_mut().map(std::mem::take) else {
            return Vec::new();
        };
        marked
            .into_iter()
            .map(|held| {
                let now = match &held {
                    Held::Group(g) => c.groups.contains_key(g),
                    Held::Uid(u) => c.uids.contains_key(u),
                };
                (held, now)
            })
            .collect()
    }

    /// Waits until a group or uid is marked (at once if one was since the last wait).
    pub async fn membership_marked(&self) {
        self.membership_marked.notified().await;
    }

    /// Marks the group or uid `held` makes if membership is tracked.
    fn touch(&self, c: &mut Clients, held: impl FnOnce() -> Held) {
        if let Some(marked) = &mut c.membership {
            marked.insert(held());
            self.membership_marked.notify_one();
        }
    }

    /// The uids marked since the last call, each with the client that last changed it.
    pub fn take_marked(&self) -> HashMap<String, ClientContext> {
        std::mem::take(&mut self.lock().dirty)
    }

    /// Waits until a uid is marked (returns at once if one was marked since the last wait).
    pub async fn marked(&self) {
        self.marked.notified().await;
    }

    /// Whether some client of this gateway is bound to `uid`.
    pub fn holds(&self, uid: &str) -> bool {
        self.lock().uids.contains_key(uid)
    }

    /// Has the keepers' task tell `client`'s keeper of it, and of its changes until it goes;
    /// called once its first event is on its way to a worker host, so that a client whose
    /// `on-connect` never left the gateway gets no `on-close` from a keeper either.
    pub fn keep(&self, client: ClientId) {
        let mut c = self.lock();
        let Some(e) = self.entry(&mut c, client) else {
            return;
        };
        e.kept = true;
        self.mark_kept(&mut c, client.index);
    }

    fn mark_kept(&self, c: &mut Clients, index: u32) {
        if c.keeping.insert(index) && c.keeping.len() == 1 {
            self.keeping_marked.notify_one();
        }
    }

    /// The kept clients marked since the last call, each as its keeper holds it, or `None`
    /// if it is gone.
    pub fn take_keeping(&self) -> Vec<(ClientId, Option<KeptClient>)> {
        let mut c = self.lock();
        let marked = std::mem::take(&mut c.keeping);
        marked
            .into_iter()
            .map(|index| {
                (
                    self.id(index),
                    c.by_index.get(&index).map(|e| kept_of(self.id(index), e)),
                )
            })
            .collect()
    }

    /// `clients` as their keepers hold them, those still here.
    pub fn kept(&self, clients: &[ClientId]) -> Vec<KeptClient> {
        let c = self.lock();
        clients
            .iter()
            .filter_map(|id| Some(kept_of(*id, c.by_index.get(&id.index)?)))
            .collect()
    }

    /// Every kept client, with its listener: what the keepers' task places anew when the
    /// hosts that may keep change.
    pub fn kept_ids(&self) -> Vec<(ClientId, u16)> {
        let c = self.lock();
        let kept = c.by_index.iter().filter(|(_, e)| e.kept);
        kept.map(|(i, e)| (self.id(*i), e.listener)).collect()
    }

    /// Waits until a kept client is marked (at once if one was since the last wait).
    pub async fn keeping_marked(&self) {
        self.keeping_marked.notified().await;
    }

    /// Marks `uid` if it is tracked and no client holds it any more.
    fn mark_if_released(&self, c: &mut Clients, uid: &str, by: &ClientContext) {
        if self.presence.load(Ordering::Relaxed) && !c.uids.contains_key(uid) {
            c.dirty.insert(uid.to_owned(), by.clone());
            self.marked.notify_one();
        }
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
                let recipients = (c.by_index.iter())
                    .filter(|(index, _)| !exclude.contains(index))
                    .map(|(_, entry)| &entry.outbox);
                outbox::push_each(recipients, data);
            }
            Command::SendToClients { clients, data } => {
                let targets = self.local_indexes(&clients);
                c.send_to(targets.0.into_iter(), data);
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
                if let Err(why) = check_name(&uid) {
                    let counter = &self.counters.names_refused;
                    return self.refuse(e, client, counter, "bind_uid", &why);
                }
                let old = e.more().uid.replace(uid.clone());
                let kept = e.kept && old.as_ref() != Some(&uid);
                // Only what presence needs: a context, if it is tracked at all.
                let context = self
                    .presence
                    .load(Ordering::Relaxed)
                    .then(|| context_of(client, e));
                if kept {
                    self.mark_kept(c, client.index);
                }
                if let Some(old) = old {
                    if remove_member(&mut c.uids, &old, client.index) {
                        self.touch(c, || Held::Uid(old.clone()));
                    }
                    if let Some(context) = &context {
                        self.mark_if_released(c, &old, context);
                    }
                }
                let members = c.uids.entry(uid.clone()).or_default();
                let first = members.is_empty();
                members.insert(client.index);
                if first {
                    self.touch(c, || Held::Uid(uid.clone()));
                }
                if let (true, Some(context)) = (first, context) {
                    c.dirty.insert(uid, context);
                    self.marked.notify_one();
                }
            }
            Command::UnbindUid { client, uid } => {
                let Some(e) = self.entry(c, client) else {
                    return;
                };
                if e.uid() == Some(&uid) {
                    let context = self
                        .presence
                        .load(Ordering::Relaxed)
                        .then(|| context_of(client, e));
                    e.more().uid = None;
                    if e.kept {
                        self.mark_kept(c, client.index);
                    }
                    if remove_member(&mut c.uids, &uid, client.index) {
                        self.touch(c, || Held::Uid(uid.clone()));
                    }
                    if let Some(context) = context {
                        self.mark_if_released(c, &uid, &context);
                    }
                }
            }
            Command::SendToUid { uids, data } => {
                let targets =
                    Indexes::distinct(uids.iter().filter_map(|u| c.uids.get(u)).flatten().copied());
                c.send_to(targets.0.into_iter(), data);
            }
            Command::JoinGroup { client, group } => {
                let Some(e) = self.entry(c, client) else {
                    return;
                };
                if let Err(why) = check_name(&group) {
                    let counter = &self.counters.names_refused;
                    return self.refuse(e, client, counter, "join_group", &why);
                }
                let max = self.limits.max_groups;
                let groups = e.more.as_ref().map(|m| &m.groups);
                let member = groups.is_some_and(|g| g.contains(&group));
                if groups.map_or(0, BTreeSet::len) >= max && !member {
                    let why = format!("already in max_groups_per_client ({max}) groups");
                    let counter = &self.counters.groups_refused;
                    return self.refuse(e, client, counter, "join_group", &why);
                }
                e.more().groups.insert(group.clone());
                let members = c.groups.entry(group.clone()).or_default();
                let first = members.is_empty();
                members.insert(client.index);
                if first {
                    self.touch(c, || Held::Group(group));
                }
            }
            Command::LeaveGroup { client, group } => {
                let Some(e) = self.entry(c, client) else {
                    return;
                };
                let left = e.more.as_mut().is_some_and(|m| m.groups.remove(&group));
                if left && remove_member(&mut c.groups, &group, client.index) {
                    self.touch(c, || Held::Group(group));
                }
            }
            Command::Ungroup { group } => {
                let Some(members) = c.groups.remove(&group) else {
                    return;
                };
                for index in members {
                    if let Some(more) = c.by_index.get_mut(&index).and_then(|e| e.more.as_mut()) {
                        more.groups.remove(&group);
                    }
                }
                self.touch(c, || Held::Group(group));
            }
            Command::SendToGroup {
                groups,
                data,
                exclude,
            } => {
                let exclude = self.local_indexes(&exclude);
                let targets = Indexes::distinct(
                    groups
                        .iter()
                        .filter_map(|g| c.groups.get(g))
                        .flatten()
                        .filter(|i| !exclude.contains(i))
                        .copied(),
                );
                c.send_to(targets.0.into_iter(), data);
            }
            Command::SetSession { client, session } => {
                let Some(e) = self.entry(c, client) else {
                    return;
                };
                let bytes = session_bytes(&session);
                if let Err(why) = check_session_bytes(bytes) {
                    let counter = &self.counters.sessions_refused;
                    return self.refuse(e, client, counter, "set_session", &why);
                }
                let more = e.more();
                more.session = Arc::new(session);
                more.session_bytes = bytes;
                more.session_version += 1;
            }
            Command::UpdateSession { client, changes } => {
                let Some(e) = self.entry(c, client) else {
                    return;
                };
                // Looked at before `more()`: a refused update makes nothing.
                let bytes = session_bytes_after(e.session(), e.session_bytes(), &changes);
                if let Err(why) = check_session_bytes(bytes) {
                    let counter = &self.counters.sessions_refused;
                    return self.refuse(e, client, counter, "update_session", &why);
                }
                let more = e.more();
                Arc::make_mut(&mut more.session).extend(changes);
                more.session_bytes = bytes;
                more.session_version += 1;
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
            Query::UidOf(id) => Reply::Uid(local(id).and_then(|e| e.uid().cloned())),
            Query::SessionOf(id) => Reply::Session(local(id).map(|e| Session::clone(e.session()))),
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
                            c.groups.get(g).map_or(0, Members::len)
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
                        .map(|e| (self.id(*i), Session::clone(e.session())))
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
            // What the state holds of the cluster view; the gateway adds the rest
            // (`Gateway::answer`).
            Query::Cluster => {
                let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                Reply::Cluster(ClusterView {
                    gateways: vec![GatewayView {
                        address: self.internal,
                        listeners: Vec::new(),
                        clients: count(c.by_index.len()),
                        groups: count(c.groups.len()),
                        uids: count(c.uids.len()),
                        worker_links: 0,
                    }],
                    workers: Vec::new(),
                })
            }
        }
    }

    /// Counts a command refused for `client`, and logs the first of its refusals.
    fn refuse(
        &self,
        e: &mut ClientEntry,
        client: ClientId,
        counter: &std::sync::atomic::AtomicU64,
        operation: &str,
        why: &str,
    ) {
        let refused = Counters::bump(counter);
        if !std::mem::replace(&mut e.warned, true) {
            tracing::warn!(
                client = %client,
                operation,
                refused,
                "refused: {why} (further refusals for this client are only counted)"
            );
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

    fn ids(&self, members: Option<&Members>) -> Vec<ClientId> {
        members.into_iter().flatten().map(|i| self.id(*i)).collect()
    }

    /// The indexes of the ids that are this gateway's, each once.
    fn local_indexes(&self, ids: &[ClientId]) -> Indexes {
        Indexes::distinct(
            ids.iter()
                .filter(|id| id.gateway == self.address)
                .map(|id| id.index),
        )
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
                remote: e.remote(),
                uid: e.uid().cloned(),
                groups: e.groups().cloned().collect(),
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
    /// Queues `data` for the clients of `targets` still here, in one pass
    /// ([`outbox::push_each`] looks them all up before it pushes).
    fn send_to(&self, targets: impl Iterator<Item = u32>, data: Bytes) {
        let recipients = targets.filter_map(|index| Some(&self.by_index.get(&index)?.outbox));
        outbox::push_each(recipients, data);
    }

    fn uids_of(&self, members: Option<&Members>) -> Vec<String> {
        let uids: BTreeSet<&String> = members
            .into_iter()
            .flatten()
            .filter_map(|i| self.by_index.get(i)?.uid())
            .collect();
        uids.into_iter().cloned().collect()
    }
}

fn context_of(id: ClientId, e: &ClientEntry) -> ClientContext {
    ClientContext {
        id,
        remote: e.remote(),
        listener: e.listener,
        uid: e.uid().cloned(),
        session: e.session().clone(),
        session_version: e.session_version(),
        event: 0,
    }
}

fn kept_of(id: ClientId, e: &ClientEntry) -> KeptClient {
    KeptClient {
        id,
        remote: e.remote(),
        listener: e.listener,
        uid: e.uid().cloned(),
    }
}

/// Takes `member` out of `key`'s members; true if that left `key` without any.
fn remove_member(index: &mut HashMap<String, Members>, key: &str, member: u32) -> bool {
    let Some(members) = index.get_mut(key) else {
        return false;
    };
    members.remove(&member);
    let emptied = members.is_empty();
    if emptied {
        index.remove(key);
    }
    emptied
}

/// What one client's slot in the state's table costs (its index and its entry), for the
/// per-connection budget test.
#[cfg(test)]
pub(crate) const CLIENT_SLOT_SIZE: usize = std::mem::size_of::<(u32, ClientEntry)>();

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::gateway::outbox::outbox;
    use crate::ops::{MAX_NAME_BYTES, MAX_SESSION_BYTES};

    fn state(max_groups: usize) -> GatewayState {
        let address = "127.0.0.1:2300".parse().unwrap();
        GatewayState::new(address, ClientLimits { max_groups }, Arc::default())
    }

    fn client(state: &GatewayState) -> ClientId {
        let (tx, _rx) = outbox(1024);
        state.add("127.0.0.1:1".parse().unwrap(), 0, tx)
    }

    fn groups(state: &GatewayState, id: ClientId) -> Vec<String> {
        let all = state.clients();
        all.into_iter().find(|c| c.id == id).unwrap().groups
    }

    /// The marks taken now, sorted, as `(name, held)` with a `g:` or `u:` prefix.
    fn marks(s: &GatewayState) -> Vec<(String, bool)> {
        let mut marks: Vec<_> = s
            .take_membership()
            .into_iter()
            .map(|(held, now)| match held {
                Held::Group(g) => (format!("g:{g}"), now),
                Held::Uid(u) => (format!("u:{u}"), now),
            })
            .collect();
        marks.sort();
        marks
    }

    #[test]
    fn only_the_first_member_and_the_last_one_leaving_mark_a_group_or_uid() {
        let s = state(8);
        let (a, b) = (client(&s), client(&s));
        let join = |c, g: &str| Command::JoinGroup {
            client: c,
            group: g.into(),
        };
        s.execute(join(a, "before"));
        assert_eq!(marks(&s), [], "nothing is kept before tracking starts");
        s.track_membership();
        assert_eq!(marks(&s), [("g:before".into(), true)]);
        s.execute(join(a, "g"));
        s.execute(join(b, "g"));
        let bind = |c, u: &str| Command::BindUid {
            client: c,
            uid: u.into(),
        };
        s.execute(bind(a, "u"));
        s.execute(bind(b, "u"));
        assert_eq!(marks(&s), [("g:g".into(), true), ("u:u".into(), true)]);
        s.execute(Command::LeaveGroup {
            client: a,
            group: "g".into(),
        });
        s.execute(bind(a, "v"));
        assert_eq!(
            marks(&s),
            [("u:v".into(), true)],
            "others still hold g and u"
        );
        s.remove(b);
        assert_eq!(marks(&s), [("g:g".into(), false), ("u:u".into(), false)]);
        s.execute(Command::Ungroup {
            group: "before".into(),
        });
        s.execute(Command::UnbindUid {
            client: a,
            uid: "v".into(),
        });
        assert_eq!(
            marks(&s),
            [("g:before".into(), false), ("u:v".into(), false)]
        );
    }

    /// An address other than IPv4 is kept whole beside the entry, scope and mapped IPv4
    /// included, and an IPv4 one inline.
    #[test]
    fn every_clients_address_is_kept_as_it_came() {
        let s = state(8);
        for remote in [
            "127.0.0.1:1",
            "[::1]:2",
            "[fe80::1%7]:3",
            "[::ffff:10.0.0.1]:4",
        ] {
            let remote: SocketAddr = remote.parse().unwrap();
            let id = s.add(remote, 0, outbox(1024).0);
            assert_eq!(s.context(id).unwrap().remote, remote);
        }
    }

    #[test]
    fn ids_do_not_restart_at_one_with_each_run() {
        let firsts: BTreeSet<u32> = (0..4).map(|_| client(&state(1)).index).collect();
        assert!(firsts.len() > 1, "every run started at {firsts:?}");
    }

    #[test]
    fn a_join_beyond_max_groups_is_refused_and_counted() {
        let s = state(2);
        let id = client(&s);
        for g in ["a", "b", "c", "a"] {
            s.execute(Command::JoinGroup {
                client: id,
                group: g.into(),
            });
        }
        assert_eq!(
            groups(&s, id),
            ["a", "b"],
            "a group it is in may be joined again"
        );
        assert_eq!(s.counters.groups_refused.load(Ordering::Relaxed), 1);
        s.execute(Command::LeaveGroup {
            client: id,
            group: "a".into(),
        });
        s.execute(Command::JoinGroup {
            client: id,
            group: "c".into(),
        });
        assert_eq!(groups(&s, id), ["b", "c"]);
    }

    #[test]
    fn names_over_the_limit_are_refused_even_from_a_peer_that_skips_the_checks() {
        let s = state(8);
        let id = client(&s);
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        s.execute(Command::JoinGroup {
            client: id,
            group: long.clone(),
        });
        s.execute(Command::BindUid {
            client: id,
            uid: long,
        });
        assert_eq!(s.summary().groups, 0);
        assert_eq!(s.summary().uids, 0);
        assert_eq!(s.counters.names_refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_session_write_past_the_limit_is_refused_and_the_session_kept() {
        let s = state(8);
        let id = client(&s);
        let half = |key: &str| -> Session {
            [(key.to_owned(), "v".repeat(MAX_SESSION_BYTES / 2 - 1))].into()
        };
        let update = |changes| Command::UpdateSession {
            client: id,
            changes,
        };
        s.execute(update(half("a")));
        s.execute(update(half("b")));
        s.execute(update(half("a")));
        assert_eq!(
            s.context(id).unwrap().session_version,
            3,
            "replacing a key fits"
        );
        s.execute(update(half("cc")));
        s.execute(Command::SetSession {
            client: id,
            session: [("k".to_owned(), "v".repeat(MAX_SESSION_BYTES))].into(),
        });
        let kept = s.context(id).unwrap();
        assert_eq!(kept.session_version, 3);
        assert_eq!(kept.session.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(s.counters.sessions_refused.load(Ordering::Relaxed), 2);
    }
}
