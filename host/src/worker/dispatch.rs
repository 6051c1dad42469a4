//! Delivers client events to plugin instances, one client's events in order.
//!
//! Each gateway link hands its events straight to the [`Dispatcher`], which picks the app from
//! the client's listener and the instance from a hash of the client id, and queues the event
//! without waiting (a link's reader never waits on an instance). Each instance has one driver
//! task that runs its events (and its timers) one at a time. So a client's events reach one
//! instance in the order its gateway sent them, and different clients run in parallel across
//! instances. Within an instance the clients take turns, one event each ([`InstanceQueue`]):
//! a client that queued many events, or slow ones, delays another client by at most one of
//! its events, not by all of them. A new version of an app travels through the same queues as
//! the events (a swap closes the current round of turns), which is what keeps the order
//! across a hot reload.
//!
//! Instance queues are bounded in events and in bytes; an event over either bound is dropped,
//! counted and logged (close events excepted: `on-close` is owed to every client, and a
//! client has only one). The gateway's per-client window keeps one client far below both.
//!
//! The dispatcher publishes the apps it serves and their versions ([`EventSink::apps`]); the
//! links announce them to the gateways, which route a client only to a host that serves its
//! app. An event that arrives for an app not served here (it was unloaded while the event
//! was on its way) is handed back to its gateway, never dropped. An app leaves the list
//! under the same lock that removes it, so an event handed back for want of it always
//! follows the announcement that it left.
//!
//! The driver also keeps GatewayWorker's `$_SESSION` consistent without its extra round trip:
//! when a callback changed the session, the next event of that client may have left the
//! gateway before the change arrived there. The gateway stamps each event with how many
//! session changes it has applied; when that is behind what this host wrote, the driver uses
//! the session it wrote instead of the stale one in the event.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Notify, watch};
use tokio_util::task::TaskTracker;

use std::net::SocketAddrV4;

use super::bindings::{Client, WebsocketRequest};
use super::host_api::SessionChange;
use super::kept::{KeptClients, Owed};
use super::presence::{PresenceBook, Transition};
use super::runtime::{Call, EventClient, PluginInstance};
use crate::client_id::{ClientHasher, ClientId, ClientMap};
use crate::links::{Done, EventSink, Incoming, Served};
use crate::ops::{Command, Gateways, Session};
use crate::wire::messages::{
    ClientContext, EventKind, KeptClient, ListenerInfo, PresenceChange, ServedApp, WebSocketRequest,
};

/// Events one instance may have waiting; more are dropped.
const INSTANCE_QUEUE: usize = 16 * 1024;

/// Bytes of events one instance may have waiting (payloads, plus [`EVENT_OVERHEAD`] each);
/// more are dropped.
const INSTANCE_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// What an event costs in a queue besides its payload: its context and bookkeeping. A
/// session is shared with the gateway's table (in-process) or decoded once per event.
const EVENT_OVERHEAD: usize = 256;

/// Most clients' worth of room an emptied round keeps for the next events.
const KEPT_ROUND: usize = 64;

/// What an instance driver is asked to do next.
enum Work {
    /// Run a client event.
    Event(Incoming),
    /// Continue with this new version's instance; the current one finishes first and runs
    /// `on-worker-stop`.
    Swap(Box<PluginInstance>),
    /// Nothing queued yet.
    Idle,
    /// The queue is closed and empty: the instance stops.
    Done,
}

/// One round of turns: the clients with events queued before the next swap.
#[derive(Default)]
struct Round {
    /// The next event of each client that has any, in turn order: a client appears once.
    turns: VecDeque<Incoming>,
    /// The events of each client in `turns` behind the one there, in arrival order. Mostly
    /// empty, and an empty `VecDeque` allocates nothing: the common event costs no
    /// allocation.
    behind: ClientMap<VecDeque<Incoming>>,
    /// The version that takes over once this round is empty.
    swap: Option<Box<PluginInstance>>,
}

#[derive(Default)]
struct QueueState {
    rounds: VecDeque<Round>,
    events: usize,
    bytes: usize,
    closed: bool,
}

/// An instance's queue: clients take turns, one event each, in order per client; bounded in
/// events and bytes.
#[derive(Default)]
struct InstanceQueue {
    state: Mutex<QueueState>,
    ready: Notify,
}

/// Why an event was not queued.
#[derive(Debug)]
enum Refused {
    /// The queue holds [`INSTANCE_QUEUE`] events or [`INSTANCE_QUEUE_BYTES`] bytes.
    Full,
    /// The instance is stopping: the event, to be handed back.
    Closed(Box<Incoming>),
}

fn cost(event: &Incoming) -> usize {
    let payload = match &event.kind {
        EventKind::Message(data) => data.len(),
        _ => 0,
    };
    payload + EVENT_OVERHEAD
}

impl InstanceQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `event`; one refused for a full queue is dropped here (its `Done` acknowledges
    /// it).
    fn push(&self, event: Incoming) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed(Box::new(event)));
        }
        let cost = cost(&event);
        let full = state.events >= INSTANCE_QUEUE || state.bytes + cost > INSTANCE_QUEUE_BYTES;
        if full && !matches!(event.kind, EventKind::Close) {
            return Err(Refused::Full);
        }
        state.events += 1;
        state.bytes += cost;
        if state.rounds.back().is_none_or(|r| r.swap.is_some()) {
            state.rounds.push_back(Round::default());
        }
        let round = state.rounds.back_mut().expect("pushed above");
        match round.behind.entry(event.client.id) {
            Entry::Occupied(mut behind) => behind.get_mut().push_back(event),
            Entry::Vacant(slot) => {
                slot.insert(VecDeque::new());
                round.turns.push_back(event);
            }
        }
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Ends the current round of turns with a swap to `instance`: it comes after every event
    /// queued so far.
    fn push_swap(&self, instance: Box<PluginInstance>) {
        let mut state = self.lock();
        match state.rounds.back_mut() {
            Some(round) if round.swap.is_none() => round.swap = Some(instance),
            _ => state.rounds.push_back(Round {
                swap: Some(instance),
                ..Round::default()
            }),
        }
        drop(state);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    fn pop(&self) -> Work {
        let mut state = self.lock();
        loop {
            let last = state.rounds.len() == 1;
            let Some(round) = state.rounds.front_mut() else {
                break;
            };
            if let Some(event) = round.turns.pop_front() {
                let client = event.client.id;
                match round.behind.get_mut(&client).and_then(VecDeque::pop_front) {
                    Some(next) => round.turns.push_back(next),
                    None => {
                        round.behind.remove(&client);
                    }
                }
                state.events -= 1;
                state.bytes -= cost(&event);
                return Work::Event(event);
            }
            // The last round, drained and open, stays for the next events: an instance that
            // keeps up empties its queue at every event, and a new round would allocate its
            // tables again each time. One grown by a burst goes, to give its memory back.
            if last
                && round.swap.is_none()
                && round.turns.capacity() <= KEPT_ROUND
                && round.behind.capacity() <= KEPT_ROUND
            {
                break;
            }
            if let Some(instance) = state.rounds.pop_front().and_then(|round| round.swap) {
                return Work::Swap(instance);
            }
        }
        if state.closed { Work::Done } else { Work::Idle }
    }

    /// The next work, waiting while there is none.
    async fn next(&self) -> Work {
        loop {
            match self.pop() {
                Work::Idle => self.ready.notified().await,
                work => return work,
            }
        }
    }
}

/// The running instances of one app (their drivers' queues).
type App = Vec<Arc<InstanceQueue>>;

/// Routes events to the instances of the running apps.
pub struct Dispatcher {
    /// Looked up by every event (a fast hash: names come from the operator's files).
    apps: RwLock<foldhash::HashMap<String, App>>,
    /// The apps of `apps` with their versions, by name, as the links announce them.
    served: watch::Sender<Vec<ServedApp>>,
    gateways: Arc<dyn Gateways>,
    hasher: ClientHasher,
    drivers: TaskTracker,
    /// Events dropped or handed back, per app and reason, for the log.
    dropped: Mutex<HashMap<(String, &'static str), u64>>,
    /// This worker host's id, announced with its apps.
    host: u64,
    /// The uids whose presence this host decides.
    presence: PresenceBook,
    /// The clients this host keeps: it runs their `on-close` if their gateway is lost.
    kept: KeptClients,
}

impl Dispatcher {
    /// A dispatcher with no apps yet, of worker host `host` (its id); instances reach the
    /// gateways through `gateways`.
    pub fn new(gateways: Arc<dyn Gateways>, host: u64) -> Arc<Self> {
        Arc::new(Self {
            apps: RwLock::default(),
            served: watch::channel(Vec::new()).0,
            gateways,
            hasher: ClientHasher::default(),
            drivers: TaskTracker::new(),
            dropped: Mutex::new(HashMap::new()),
            host,
            presence: PresenceBook::default(),
            kept: KeptClients::default(),
        })
    }

    /// Serves `app` at `version` with `instances` from now on. A running version finishes
    /// the events already queued for it, then runs `on-worker-stop`.
    pub async fn install(&self, app: &str, version: &str, instances: Vec<PluginInstance>) {
        let presence = instances
            .first()
            .is_some_and(|i| i.code().exports_presence());
        let version = Some((version, presence));
        let running = self
            .apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(app)
            .filter(|drivers| drivers.len() == instances.len())
            .cloned();
        match running {
            Some(drivers) => {
                for (driver, instance) in drivers.iter().zip(instances) {
                    driver.push_swap(Box::new(instance));
                }
                self.announce(app, version);
            }
            None => {
                let drivers = instances
                    .into_iter()
                    .map(|instance| {
                        let queue = Arc::new(InstanceQueue::default());
                        self.drivers
                            .spawn(drive(instance, queue.clone(), self.gateways.clone()));
                        queue
                    })
                    .collect();
                self.dropped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|(dropped_app, _), _| dropped_app != app);
                let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
                let replaced = apps.insert(app.to_owned(), drivers);
                self.announce(app, version);
                drop(apps);
                for queue in replaced.into_iter().flatten() {
                    queue.close();
                }
            }
        }
    }

    /// Stops serving `app`: its instances finish what is queued and run `on-worker-stop`.
    pub fn remove(&self, app: &str) {
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        let removed = apps.remove(app);
        // Under the lock: an event that finds the app gone is handed back after this.
        self.announce(app, None);
        drop(apps);
        for queue in removed.into_iter().flatten() {
            queue.close();
        }
    }

    /// Stops every app and waits until every instance has finished its queue and run
    /// `on-worker-stop`. Call it once no link delivers events any more.
    pub async fn stop(&self) {
        let apps = std::mem::take(&mut *self.apps.write().unwrap_or_else(|e| e.into_inner()));
        for queue in apps.into_values().flatten() {
            queue.close();
        }
        self.drivers.close();
        self.drivers.wait().await;
    }
}

impl Dispatcher {
    /// Sets the version of `app` in the list the links announce, and whether it exports
    /// `presence` (`None`: not served).
    fn announce(&self, app: &str, version: Option<(&str, bool)>) {
        self.served.send_if_modified(|served| {
            let at = served.iter().position(|s| s.name == app);
            match (at, version) {
                (Some(at), Some((version, presence)))
                    if served[at].version == version && served[at].presence == presence =>
                {
                    false
                }
                (Some(at), Some((version, presence))) => {
                    served[at].version = version.to_owned();
                    served[at].presence = presence;
                    true
                }
                (None, Some((version, presence))) => {
                    served.push(ServedApp {
                        name: app.to_owned(),
                        version: version.to_owned(),
                        presence,
                    });
                    true
                }
                (Some(at), None) => {
                    served.remove(at);
                    true
                }
                (None, None) => false,
            }
        });
    }

    /// Hands `event` back to its gateway: no app of this host takes it. Logged (not counted
    /// as dropped: it runs elsewhere), as it means a gateway routed on an old list.
    fn give_back(&self, event: Incoming) {
        let app = event.listener.app.clone();
        event.give_back();
        if let Some(count) = self.tally(&app, "returned") {
            tracing::info!(%app, returned = count, "no plugin for this app (any more); events handed back to their gateway");
        }
    }

    /// Counts and logs an event no plugin will see because an instance queue is full.
    fn dropped(&self, app: &str) {
        crate::metrics::event_dropped("queue_full");
        if let Some(count) = self.tally(app, "queue_full") {
            tracing::warn!(%app, dropped = count, "an instance queue is full ({INSTANCE_QUEUE} events or {INSTANCE_QUEUE_BYTES} bytes); events dropped");
        }
    }

    /// Counts one more event of `app` that went `how`; the count when it is worth a log line
    /// (the 1st, 2nd, 4th, 8th …), so a problem is visible without flooding the log.
    fn tally(&self, app: &str, how: &'static str) -> Option<u64> {
        let mut tallies = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        let count = tallies.entry((app.to_owned(), how)).or_default();
        *count += 1;
        count.is_power_of_two().then_some(*count)
    }
}

impl EventSink for Dispatcher {
    /// Queues `event` for the instance that serves its client, without waiting.
    fn deliver(&self, event: Incoming) {
        // Queued under the read lock (a push never waits), which spares every event a
        // reference count on the queue.
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        let Some((app, instances)) = apps.get_key_value(&event.listener.app) else {
            drop(apps);
            self.give_back(event);
            return;
        };
        let slot = self.hasher.hash_one(event.client.id) as usize % instances.len();
        match instances[slot].push(event) {
            Ok(()) => {}
            Err(Refused::Full) => self.dropped(app),
            // Stopping while this event was on its way.
            Err(Refused::Closed(event)) => {
                drop(apps);
                self.give_back(*event);
            }
        }
    }

    fn apps(&self) -> Option<Served> {
        Some(Served {
            host: self.host,
            apps: self.served.subscribe(),
        })
    }

    fn presence(
        &self,
        gateway: SocketAddrV4,
        listener: Arc<ListenerInfo>,
        uid: String,
        change: PresenceChange,
    ) {
        if let Some(transition) = self.presence.change(gateway, listener, uid, change) {
            self.fire(transition);
        }
    }

    fn unlinked(&self, gateway: SocketAddrV4) {
        for transition in self.presence.unlinked(gateway) {
            self.fire(transition);
        }
    }

    fn linked(&self, gateway: SocketAddrV4, run: u64, listeners: &[Arc<ListenerInfo>]) {
        let owed = self.kept.linked(gateway, run, listeners);
        self.close_owed(gateway, owed, "gateway restarted");
    }

    fn keep(&self, gateway: SocketAddrV4, keep: Vec<KeptClient>, forget: Vec<ClientId>) {
        self.kept.keep(gateway, keep, forget);
    }

    fn gateway_lost(&self, gateway: SocketAddrV4) {
        let owed = self.kept.lost(gateway);
        self.close_owed(gateway, owed, "gateway lost");
    }
}

impl Dispatcher {
    /// Queues the `on-close` of the clients kept of `gateway`, gone (`why`), each on its
    /// client's instance behind its events there; no gateway waits for them.
    fn close_owed(&self, gateway: SocketAddrV4, owed: Vec<Owed>, why: &str) {
        if owed.is_empty() {
            return;
        }
        tracing::warn!(
            %gateway,
            clients = owed.len(),
            "{why}: running on-close for its clients kept here"
        );
        for (listener, client) in owed {
            crate::metrics::lost_gateway_close();
            self.deliver(Incoming {
                done: Done::detached(client.id),
                listener,
                client,
                kind: EventKind::Close,
            });
        }
    }

    /// Queues a presence callback on the instance of the client that made it, behind that
    /// client's events; no gateway waits for it.
    fn fire(&self, transition: Transition) {
        let Transition {
            uid,
            online,
            listener,
            client,
        } = transition;
        tracing::debug!(app = %listener.app, %uid, online, client = %client.id, "presence");
        let kind = match online {
            true => EventKind::UidOnline(uid),
            false => EventKind::UidOffline(uid),
        };
        self.deliver(Incoming {
            done: Done::detached(client.id),
            listener,
            client,
            kind,
        });
    }
}

/// What this host wrote to a client's session and has not yet seen come back.
struct SessionTrack {
    /// The gateway's session version when the writes started.
    base_version: u64,
    /// Writes sent since then.
    writes: u64,
    /// The session after those writes.
    session: Arc<Session>,
}

impl SessionTrack {
    /// Adds what one callback wrote, if it wrote anything.
    fn apply(&mut self, change: Option<SessionChange>) {
        if let Some(change) = change {
            self.writes += change.writes;
            self.session = change.session;
        }
    }
}

async fn drive(
    mut instance: PluginInstance,
    queue: Arc<InstanceQueue>,
    gateways: Arc<dyn Gateways>,
) {
    let mut sessions: ClientMap<SessionTrack> = ClientMap::default();
    let mut scratch = Scratch::new();
    loop {
        // `next` takes work off the queue only in the poll that returns it, so the branch
        // that loses the race loses nothing.
        tokio::select! {
            next = queue.next() => match next {
                Work::Event(event) => {
                    handle(&mut instance, &mut sessions, &mut scratch, &*gateways, event).await;
                }
                Work::Swap(new) => {
                    let mut old = std::mem::replace(&mut instance, *new);
                    old.stop().await;
                }
                Work::Idle | Work::Done => break,
            },
            id = instance.next_timer() => {
                let _ = instance.call(Call::Timer(id)).await;
            }
        }
    }
    instance.stop().await;
}

/// The records an instance driver writes each event's over, so that their strings' capacity
/// is reused: built anew, they allocated every string of every event.
struct Scratch {
    /// The last event's client.
    record: Client,
    /// The last WebSocket upgrade request (as long as the gateway's handshake limit lets one be).
    request: WebsocketRequest,
}

impl Scratch {
    /// Records with nothing in them, which allocate nothing.
    fn new() -> Self {
        Self {
            record: empty_record(),
            request: WebsocketRequest {
                path: String::new(),
                query: String::new(),
                headers: Vec::new(),
            },
        }
    }
}

async fn handle(
    instance: &mut PluginInstance,
    sessions: &mut ClientMap<SessionTrack>,
    scratch: &mut Scratch,
    gateways: &dyn Gateways,
    event: Incoming,
) {
    let Incoming {
        listener,
        client: context,
        kind,
        done,
    } = event;
    // Acknowledged to its gateway once the callback is over and its commands reached theirs.
    done.after(run_event(
        instance, sessions, scratch, gateways, &listener, context, kind,
    ))
    .await;
}

/// Runs the callback of one event; its records are written over `scratch`'s strings, and left
/// there for the next event.
async fn run_event(
    instance: &mut PluginInstance,
    sessions: &mut ClientMap<SessionTrack>,
    scratch: &mut Scratch,
    gateways: &dyn Gateways,
    listener: &ListenerInfo,
    context: ClientContext,
    kind: EventKind,
) {
    let Scratch {
        record,
        request: kept,
    } = scratch;
    let id = context.id;
    // Not the client's own event: its session is only read, and no write is tracked.
    if let EventKind::UidOnline(uid) | EventKind::UidOffline(uid) = &kind {
        let client = EventClient {
            record: refill(record, &context, listener, &context.session),
            id,
            session: context.session.clone(),
            event: None,
        };
        let call = match &kind {
            EventKind::UidOnline(_) => Call::UidOnline(uid, &client),
            _ => Call::UidOffline(uid, &client),
        };
        let _ = instance.call(call).await;
        *record = client.record;
        return;
    }
    let track = sessions
        .remove(&id)
        .filter(|t| context.session_version < t.base_version + t.writes);
    let session = match &track {
        Some(t) => t.session.clone(),
        None => context.session.clone(),
    };
    let mut client = EventClient {
        record: refill(record, &context, listener, &session),
        id,
        session,
        event: Some(context.event).filter(|&n| n > 0),
    };
    let mut track = track.unwrap_or(SessionTrack {
        base_version: context.session_version,
        writes: 0,
        session: client.session.clone(),
    });
    let outcome = match kind {
        EventKind::Connect => instance.call(Call::Connect(&client)).await,
        EventKind::WebSocketConnect(request) => {
            // Copied, not moved: the gateway's copy of the event shares the request.
            refill_request(kept, &request);
            let accepted = instance.call(Call::WebsocketConnect(&client, kept)).await;
            // Fail closed: a plugin that crashed deciding has not accepted the client.
            let refusal = match &accepted {
                Ok(outcome) => outcome.rejected.clone(),
                Err(e) => {
                    tracing::warn!(client = %id, "client refused: on-websocket-connect failed: {e}");
                    Some("server error".to_owned())
                }
            };
            if let Some(reason) = refusal {
                tracing::info!(client = %id, "plugin rejected the websocket client: {reason}");
                let rejected = gateways.command(Command::RejectClient { client: id, reason });
                if rejected.await.is_err() {
                    tracing::warn!(client = %id, "cannot reject the client: its gateway is not linked");
                }
                *record = client.record;
                return;
            }
            if let Ok(outcome) = accepted {
                track.apply(outcome.session);
            }
            client.session = track.session.clone();
            client.record.session = pairs(&track.session);
            instance.call(Call::Connect(&client)).await
        }
        EventKind::Message(data) => instance.call(Call::Message(&client, &data)).await,
        EventKind::Close => {
            let _ = instance.call(Call::Close(&client)).await;
            *record = client.record;
            return;
        }
        EventKind::UidOnline(_) | EventKind::UidOffline(_) => unreachable!("handled above"),
    };
    if let Ok(outcome) = outcome {
        track.apply(outcome.session);
    }
    if track.writes > 0 {
        sessions.insert(id, track);
    }
    *record = client.record;
}

/// `from` written over `kept`'s strings, whose capacity is reused as [`refill`] reuses the
/// record's (a tuple's `clone_from` would allocate each header anew).
fn refill_request(kept: &mut WebsocketRequest, from: &WebSocketRequest) {
    kept.path.clone_from(&from.path);
    kept.query.clone_from(&from.query);
    kept.headers.truncate(from.headers.len());
    for (i, (name, value)) in from.headers.iter().enumerate() {
        match kept.headers.get_mut(i) {
            Some((kept_name, kept_value)) => {
                kept_name.clone_from(name);
                kept_value.clone_from(value);
            }
            None => kept.headers.push((name.clone(), value.clone())),
        }
    }
}

/// A record with nothing in it, which allocates nothing.
fn empty_record() -> Client {
    Client {
        id: String::new(),
        remote_addr: String::new(),
        remote_port: 0,
        gateway_addr: String::new(),
        gateway_port: 0,
        listener: String::new(),
        uid: None,
        session: Vec::new(),
    }
}

/// The record a callback receives, written over the strings of `last` (the previous
/// event's): their capacity is reused, where a record built anew allocated each string per
/// event. Its session is the one copy an event makes of it, since wasmtime lowers the record
/// into the guest from owned values.
fn refill(
    last: &mut Client,
    context: &ClientContext,
    listener: &ListenerInfo,
    session: &Session,
) -> Client {
    let mut record = std::mem::replace(last, empty_record());
    record.id.clear();
    context.id.write_hex(&mut record.id);
    record.remote_addr.clear();
    write_ip(&mut record.remote_addr, context.remote.ip());
    record.remote_port = context.remote.port();
    record.gateway_addr.clear();
    write_ip(
        &mut record.gateway_addr,
        IpAddr::V4(*context.id.gateway.ip()),
    );
    record.gateway_port = listener.port;
    record.listener.clear();
    record.listener.push_str(&listener.name);
    record.uid.clone_from(&context.uid);
    record.session = pairs(session);
    record
}

/// A session as the record's list of pairs.
fn pairs(session: &Session) -> Vec<(String, String)> {
    session
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Writes an address as text. IPv4 is written out by hand: every event carries two
/// addresses to the plugin, and `Display`'s formatting machinery showed in the per-message
/// profile.
fn write_ip(text: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        text.push_str(&ip.to_string());
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use bytes::Bytes;

    use super::*;
    use crate::client_id::ClientId;
    use crate::links::Done;
    use crate::wire::messages::ListenerInfo;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "127.0.0.1",
            "::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut text = String::from("left over");
            text.clear();
            write_ip(&mut text, ip);
            assert_eq!(text, ip.to_string());
        }
    }

    #[test]
    fn a_refilled_record_keeps_nothing_of_the_last_event() {
        let long = event(0xabcdef, "x");
        let mut context = long.client.clone();
        context.remote = "[2001:db8::1]:443".parse().unwrap();
        context.uid = Some("someone".into());
        context.session = Arc::new(Session::from([("k".to_owned(), "v".to_owned())]));
        let mut record = empty_record();
        record = refill(&mut record, &context, &long.listener, &context.session);
        let short = event(7, "y");
        let listener = ListenerInfo {
            name: "other".into(),
            ..(*short.listener).clone()
        };
        let refilled = refill(&mut record, &short.client, &listener, &Session::new());
        assert_eq!(refilled.id, short.client.id.to_hex());
        assert_eq!(refilled.remote_addr, "127.0.0.1");
        assert_eq!(refilled.gateway_addr, "127.0.0.1");
        assert_eq!(refilled.listener, "other");
        assert_eq!(refilled.uid, None);
        assert!(refilled.session.is_empty());
    }

    #[test]
    fn a_refilled_request_is_the_new_one_whole() {
        let header = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        let long = WebSocketRequest {
            path: "/a/long/path".into(),
            query: "token=abc&room=1".into(),
            headers: vec![header("host", "example.com"), header("cookie", "a=b; c=d")],
        };
        let short = WebSocketRequest {
            path: "/".into(),
            query: String::new(),
            headers: vec![header("host", "h")],
        };
        let mut kept = Scratch::new().request;
        refill_request(&mut kept, &long);
        refill_request(&mut kept, &short);
        assert_eq!(kept.path, short.path);
        assert_eq!(kept.query, short.query);
        assert_eq!(kept.headers, short.headers);
        refill_request(&mut kept, &long);
        assert_eq!(
            kept.headers, long.headers,
            "a longer request gets every header"
        );
    }

    fn event(client: u32, text: &'static str) -> Incoming {
        let id = ClientId::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1), client);
        Incoming {
            listener: Arc::new(ListenerInfo {
                name: "l".into(),
                app: "app".into(),
                port: 1,
            }),
            client: ClientContext {
                id,
                remote: "127.0.0.1:2".parse().unwrap(),
                listener: 0,
                uid: None,
                session: Arc::default(),
                session_version: 0,
                event: 0,
            },
            kind: EventKind::Message(Bytes::from_static(text.as_bytes())),
            done: Done::detached(id),
        }
    }

    fn popped(queue: &InstanceQueue) -> Vec<String> {
        let mut out = Vec::new();
        while let Work::Event(e) = queue.pop() {
            let EventKind::Message(data) = e.kind else {
                unreachable!()
            };
            out.push(String::from_utf8(data.to_vec()).unwrap());
        }
        out
    }

    #[test]
    fn clients_take_turns_and_keep_their_order() {
        let queue = InstanceQueue::default();
        for text in ["a1", "a2", "a3"] {
            queue.push(event(1, text)).unwrap();
        }
        queue.push(event(2, "b1")).unwrap();
        queue.push(event(3, "c1")).unwrap();
        queue.push(event(2, "b2")).unwrap();
        assert_eq!(popped(&queue), ["a1", "b1", "c1", "a2", "b2", "a3"]);
        assert_eq!(queue.lock().events, 0);
        assert_eq!(queue.lock().bytes, 0);
    }

    /// A queue that empties keeps its round and its room for the next events; a round grown
    /// past [`KEPT_ROUND`] clients is let go.
    #[test]
    fn an_emptied_queue_keeps_its_round_until_a_burst_grew_it() {
        let queue = InstanceQueue::default();
        queue.push(event(1, "a1")).unwrap();
        assert_eq!(popped(&queue), ["a1"]);
        assert!(matches!(queue.pop(), Work::Idle));
        assert_eq!(queue.lock().rounds.len(), 1, "the drained round is kept");
        queue.push(event(2, "b1")).unwrap();
        queue.push(event(1, "a2")).unwrap();
        assert_eq!(queue.lock().rounds.len(), 1, "the kept round takes them");
        assert_eq!(popped(&queue), ["b1", "a2"]);

        for client in 0..=KEPT_ROUND as u32 * 2 {
            queue.push(event(client, "burst")).unwrap();
        }
        assert_eq!(popped(&queue).len(), KEPT_ROUND * 2 + 1);
        assert!(
            queue.lock().rounds.is_empty(),
            "a burst's round gives its memory back"
        );
    }

    #[test]
    fn a_full_queue_refuses_events_but_not_closes() {
        let queue = InstanceQueue::default();
        queue.lock().events = INSTANCE_QUEUE;
        assert!(matches!(queue.push(event(1, "x")), Err(Refused::Full)));
        let mut close = event(1, "");
        close.kind = EventKind::Close;
        assert!(queue.push(close).is_ok());
        queue.close();
        assert!(matches!(queue.push(event(1, "x")), Err(Refused::Closed(_))));
    }
}
