//! Which worker host handles a client's events, and how many of them may be in flight.
//!
//! The default (GatewayWorker's `routerBind`) binds each client to one worker-host link on its
//! first event, choosing among the hosts that serve the client's app (each announces its apps,
//! [`Router::announce`]) the link with the fewest bound clients, and keeps sending that
//! client's events there, which is what keeps them in order. When the bound link goes away the
//! client is re-bound on its next event. While no linked worker host serves the app (all are
//! restarting, or none has its plugin) an event waits up to `no_worker_hold` for one instead
//! of being dropped; before the first worker host ever linked (the cluster is starting, its
//! plugins may be compiling) up to [`STARTING_HOLD`] (or the `start_timeout` of the worker
//! host in the gateway's process, [`Router::with_starting_hold`]), if that is longer. Past
//! the wait the client is closed ([`Unrouted`]).
//!
//! A host that stops serving a client's app displaces the client ([`Binding::poll_displaced`]):
//! once its events there are done the client moves to a host that serves the app, or is held
//! and closed as above. An event that reached the host after the app left it is handed back
//! ([`Router::returned`]) and goes to the new host ahead of the client's later events; the
//! handed-back events of a client whose connection already ended go with its close event.
//!
//! Each client has a window of `max_events_in_flight` events on its link: an event takes one
//! slot, the worker host's `Done` gives it back once the event ran (or was dropped). A client
//! whose window is full waits, and its connection stops reading its socket: a flood slows the
//! flooder, never the link or the other clients on it. A link that goes away closes the
//! windows of its clients, which re-bind.
//!
//! A worker host that stops gracefully says it is leaving ([`Router::retire`]): it gets no
//! new client, and each client bound to it moves to another host once its events there are
//! done, so its order holds across the move; when nothing sent to it is left unrun, the
//! gateway answers `Left` and the host may close its link without losing an event.
//!
//! Every event sent is remembered until the worker host is done with it (it ran, or was
//! handed back or dropped there): at most a window's worth per client, which the window lets
//! be in flight anyway. If the link goes away first ([`Router::lost`]), each client's
//! unfinished events go to the host it moves to, in order and ahead of its new ones, so none
//! is lost with a worker host; one that ran there but whose acknowledgement did not come
//! back runs twice, with the same event number ([`ClientContext::event`]) for the plugin to
//! tell. A client whose connection already ended gets its last events (its close among them)
//! sent in the background, so `on-close` runs at least once for every client.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use smallvec::SmallVec;
use tokio::sync::{Semaphore, watch};

use crate::client_id::{ClientHasher, ClientId, ClientMap, shrink_if_sparse};
use crate::wire::codec::check_frame;
use crate::wire::messages::{ClientContext, EventKind, ServedApp, ToWorker};
use crate::wire::queue::{LinkSender, SendError, TrySendError};

/// A client's events sent on a link and not yet done, oldest first. Inline while there is
/// one, as there mostly is (a client that waits for each answer), so that keeping it costs
/// no allocation per event.
type Sent = SmallVec<[ToWorker; 1]>;
/// One linked worker host, as the router sees it.
pub struct WorkerLink {
    /// Unique among this gateway's links.
    pub id: u64,
    /// The worker host's outbound queue (events and query replies).
    pub queue: LinkSender<ToWorker>,
    bound: AtomicUsize,
    /// The windows of the clients bound to this link.
    windows: Mutex<Windows>,
    /// The events sent and not yet done, by client, in the order sent: at most a window's
    /// worth each. Another host gets them if this link is lost ([`Router::lost`]).
    unacked: Mutex<ClientMap<Sent>>,
    /// Each client's window size on this link.
    window: u32,
    /// The worker host is leaving ([`Router::retire`]).
    leaving: AtomicBool,
    /// `Left` was sent.
    left: AtomicBool,
    /// Whether the worker host serves the app of each of this gateway's listeners (by
    /// listener index), as it last announced; nothing until its first announcement.
    serves: Box<[AtomicBool]>,
    /// Events the worker host handed back, by client, in order: bounded by the client's
    /// window, as the client takes them before it sends anything else there.
    returned: Mutex<ClientMap<Vec<ToWorker>>>,
    /// Clients with events in `returned`, which spares every event a lock.
    returning: AtomicUsize,
    /// The worker host's id, as it announced it: ranks it for deciding uids' presence.
    host: AtomicU64,
    /// Whether the app of each listener exports `presence` there, by listener index.
    presence: Box<[AtomicBool]>,
    /// The link was removed (it ended or failed), though its queue may still be flushing.
    gone: AtomicBool,
    /// Where the worker host runs, if it may keep clients: not a PHP BusinessWorker, which
    /// runs no `on-close` for a lost gateway, nor a host in the gateway's own process, which
    /// would be lost with it.
    place: Option<Place>,
}

/// Where a worker host of another process runs, seen from the gateway: a client's keeper
/// (see [`Keepers`]) is picked as far from the gateway as a host serving its app is, so that
/// it outlives the gateway's machine. Ordered nearest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    /// On the gateway's machine: its link comes from loopback, or from the very address it
    /// reached (a host that dials its own machine's address is routed from it).
    Machine,
    /// Anywhere else.
    Elsewhere,
}

impl Place {
    /// Where the peer of a link over TCP runs, from the link's two ends. Behind NAT a host
    /// elsewhere may look near (it is then picked only after the others), never the reverse
    /// unless its own machine's address is translated.
    pub fn of_peer(peer: IpAddr, local: IpAddr) -> Self {
        let peer = peer.to_canonical();
        if peer.is_loopback() || peer == local.to_canonical() {
            Self::Machine
        } else {
            Self::Elsewhere
        }
    }
}

impl WorkerLink {
    /// Gives back `events` slots of `client`'s window (the worker host is done with its
    /// oldest `events` events: one client's run in the order sent). Once a client's close
    /// event is done, returns the events of it that were handed back (its close among them if
    /// it was): its connection is gone, someone else must send them.
    fn done(&self, client: ClientId, events: u32) -> Option<Vec<ToWorker>> {
        let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = windows.get(&client) {
            window.0.slots.add_permits(events as usize);
        }
        drop(windows);
        let mut closed = false;
        if let Entry::Occupied(mut sent) = unacked.entry(client) {
            let finished = sent.get().len().min(events as usize);
            closed = sent.get_mut().drain(..finished).any(|e| is_close(&e));
            if sent.get().is_empty() {
                sent.remove();
                shrink_if_sparse(&mut *unacked);
            }
        }
        drop(unacked);
        let orphans = if closed {
            self.take_returned(client)
        } else {
            None
        };
        self.answer_leaving();
        orphans
    }

    /// Whether the worker host serves the app of `listener`.
    fn serves(&self, listener: u16) -> bool {
        self.serves
            .get(usize::from(listener))
            .is_some_and(|s| s.load(Ordering::SeqCst))
    }

    /// Whether the worker host handed back events of `client` not yet taken.
    fn has_returned(&self, client: ClientId) -> bool {
        self.returning.load(Ordering::SeqCst) > 0
            && self
                .returned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&client)
    }

    /// Takes the events of `client` the worker host handed back.
    fn take_returned(&self, client: ClientId) -> Option<Vec<ToWorker>> {
        if self.returning.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let taken = self
            .returned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client);
        if taken.is_some() {
            self.returning.fetch_sub(1, Ordering::SeqCst);
        }
        taken
    }

    /// Whether the host may decide presence for the app of `listener`: linked, not leaving,
    /// and running that app with `presence`.
    fn decides_presence(&self, listener: u16) -> bool {
        !self.is_gone()
            && !self.is_leaving()
            && self
                .presence
                .get(usize::from(listener))
                .is_some_and(|p| p.load(Ordering::SeqCst))
    }

    /// Whether the host may keep clients of `listener`: a wasmgate worker host, linked, not
    /// leaving, serving that listener's app.
    fn keeps(&self, listener: u16) -> bool {
        self.place.is_some() && !self.is_gone() && !self.is_leaving() && self.serves(listener)
    }

    /// Whether the link ended: what was reported on it is forgotten there (or lost with its
    /// host). A leaving host's link is not gone until it closes.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst) || self.queue.is_closed()
    }

    /// Whether this is the same link as `other`.
    pub fn is(&self, other: &WorkerLink) -> bool {
        self.id == other.id
    }

    fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::SeqCst)
    }

    /// Events sent (or about to be: a slot is taken before the send) and not yet done.
    fn in_flight(&self) -> usize {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows
            .iter()
            .map(|w| (self.window as usize).saturating_sub(w.0.slots.available_permits()))
            .sum()
    }

    /// Once a leaving worker host has nothing of ours left to run, tells it so (once).
    fn answer_leaving(&self) {
        if !self.is_leaving() || self.in_flight() > 0 || self.left.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Err(TrySendError::Full(left)) = self.queue.try_send(ToWorker::Left) {
            let queue = self.queue.clone();
            tokio::spawn(async move { queue.send(left).await });
        }
    }

    /// Marks the link gone and closes the windows of the clients bound to it; returns them.
    #[expect(
        clippy::mutable_key_type,
        reason = "a window hashes and compares by its client, which never changes"
    )]
    fn close(&self) -> Vec<Arc<Window>> {
        self.gone.store(true, Ordering::SeqCst);
        let windows = std::mem::take(&mut *self.windows.lock().unwrap_or_else(|e| e.into_inner()));
        let windows: Vec<_> = windows.into_iter().map(|w| w.0).collect();
        for window in &windows {
            window.slots.close();
        }
        windows
    }

    /// Wakes the connections of the clients bound here, idle ones too, to look whether they
    /// must move.
    fn wake_bound(&self) {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        for window in windows.iter() {
            window.0.mover.wake();
        }
    }
}

/// A client's window on its link: the slots of its events in flight, and its connection,
/// woken when the link changes.
struct Window {
    /// The client; kept here rather than in its [`Bound`], which every idle connection holds.
    client: ClientId,
    slots: Semaphore,
    /// The connection waiting in [`Binding::poll_displaced`]: a waker registered on each poll
    /// rather than a watch receiver's future, which a connection would hold all its life.
    mover: AtomicWaker,
}

impl Window {
    fn new(client: ClientId, slots: u32) -> Self {
        Self {
            client,
            slots: Semaphore::new(slots as usize),
            mover: AtomicWaker::new(),
        }
    }
}

/// The windows of a link's clients, found by client: a set of pointers (8 bytes a slot) where
/// a map would hold each client's id beside its window's pointer (24), for every bound client.
type Windows = HashSet<ByClient, ClientHasher>;

/// A window as its link's [`Windows`] hold it: equal to and found by its client.
struct ByClient(Arc<Window>);

impl PartialEq for ByClient {
    fn eq(&self, other: &Self) -> bool {
        self.0.client == other.0.client
    }
}

impl Eq for ByClient {}

impl Hash for ByClient {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.client.hash(state);
    }
}

impl Borrow<ClientId> for ByClient {
    fn borrow(&self) -> &ClientId {
        &self.0.client
    }
}

/// Longest an event waits for the first worker host this gateway ever links: as long as a
/// worker host's default `start_timeout`, since a cold Python or JavaScript plugin compiles
/// for seconds before its host links. A gateway whose process runs a worker host waits that
/// host's own `start_timeout` instead.
pub const STARTING_HOLD: Duration = Duration::from_secs(60);

/// The worker-host links of one gateway.
pub struct Router {
    links: RwLock<Vec<Arc<WorkerLink>>>,
    next_id: AtomicU64,
    /// The number of links; also marked when a host's apps change, which wakes the clients
    /// waiting for a host that serves theirs.
    count: watch::Sender<usize>,
    /// The app of each of the gateway's listeners, by listener index.
    apps: Vec<String>,
    window: u32,
    hold: Duration,
    /// How long an event waits before any worker host ever linked (if longer than `hold`).
    starting_hold: Duration,
    /// Ranks hosts for keeping clients: seeded per gateway, as only this gateway picks the
    /// keepers of its clients.
    keep_hasher: ClientHasher,
}

/// No worker host took a client's event within the hold: the client is closed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unrouted {
    /// No worker host is linked at all.
    #[error("no worker host is linked to this gateway")]
    NoWorker,
    /// Worker hosts are linked, but none serves the client's app.
    #[error("no linked worker host serves the app {0:?}")]
    AppUnserved(String),
}

impl Unrouted {
    /// The metric label of this reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoWorker => "no_worker",
            Self::AppUnserved(_) => "app_unserved",
        }
    }
}

/// A client's binding to a worker-host link and its window there; unbinds on drop.
#[derive(Default)]
pub struct Binding(Option<Bound>);

struct Bound {
    link: Arc<WorkerLink>,
    window: Arc<Window>,
}

impl Bound {
    /// Whether the client's next event must go elsewhere: the link is gone or leaving, its
    /// host does not serve the app of `listener`, or handed back events of the client.
    fn displaced(&self, listener: u16) -> bool {
        self.link.is_leaving()
            || self.link.queue.is_closed()
            || self.window.slots.is_closed()
            || !self.link.serves(listener)
            || self.link.has_returned(self.window.client)
    }
}

impl Binding {
    /// Ready once the client must move from its worker host (see [`Router::reroute`]): the
    /// host stopped serving the app of `listener`, handed back events of it, or its link was
    /// lost. Never while the client is not bound.
    pub fn poll_displaced(&self, listener: u16, cx: &mut Context<'_>) -> Poll<()> {
        let Some(bound) = &self.0 else {
            return Poll::Pending;
        };
        // Registered before looking: a change after the look wakes the task.
        bound.window.mover.register(cx.waker());
        if bound.displaced(listener) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.link.bound.fetch_sub(1, Ordering::Relaxed);
        let mut windows = self.link.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows
            .get(&self.window.client)
            .is_some_and(|w| Arc::ptr_eq(&w.0, &self.window))
        {
            windows.remove(&self.window.client);
            shrink_if_sparse(&mut *windows);
        }
    }
}

impl Router {
    /// A router with no links yet for listeners whose apps are `apps` (by listener index):
    /// each client may have `window` events in flight, and an event waits at most `hold` for
    /// a worker host that serves its app.
    pub fn new(window: u32, hold: Duration, apps: Vec<String>) -> Self {
        Self {
            links: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(1),
            count: watch::channel(0).0,
            apps,
            window,
            hold,
            starting_hold: STARTING_HOLD,
            keep_hasher: ClientHasher::default(),
        }
    }

    /// This router, holding events before a first worker host links for `starting` instead
    /// of [`STARTING_HOLD`]: the `start_timeout` of the worker host of the same process, which
    /// is what its start waits for.
    pub fn with_starting_hold(self, starting: Duration) -> Self {
        Self {
            starting_hold: starting,
            ..self
        }
    }

    /// Adds a link whose outbound queue is `queue`, to a worker host at `place` (`None`: one
    /// that may keep no clients, see [`Keepers`]); no client is routed to it before its host
    /// announces its apps.
    pub fn add(&self, queue: LinkSender<ToWorker>, place: Option<Place>) -> Arc<WorkerLink> {
        let link = Arc::new(WorkerLink {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            queue,
            bound: AtomicUsize::new(0),
            windows: Mutex::default(),
            unacked: Mutex::default(),
            window: self.window,
            leaving: AtomicBool::new(false),
            left: AtomicBool::new(false),
            serves: self.apps.iter().map(|_| AtomicBool::new(false)).collect(),
            returned: Mutex::default(),
            returning: AtomicUsize::new(0),
            host: AtomicU64::new(0),
            presence: self.apps.iter().map(|_| AtomicBool::new(false)).collect(),
            gone: AtomicBool::new(false),
            place,
        });
        let mut links = self.links.write().unwrap_or_else(|e| e.into_inner());
        links.push(link.clone());
        self.count.send_replace(links.len());
        link
    }

    /// Removes a link whose worker host has everything sent to it (the gateway stops and
    /// flushed it); clients bound to it are re-bound on their next event, and a client
    /// waiting on its window there re-binds at once.
    pub fn remove(&self, link: &WorkerLink) {
        link.close();
        self.unlist(link.id);
    }

    /// Removes a link that was lost with what it held: each client's events not done there
    /// go to the host the client moves to, in order, ahead of its new events (those the host
    /// handed back first, then the others sent after them); those of a client whose
    /// connection ended are sent in the background. Only the first call for a link does so.
    pub fn lost(self: &Arc<Self>, link: &WorkerLink) {
        let mut unacked = link.unacked.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock `forward` checks it under, and with each client's events put where
        // it looks first before anyone can see the link gone: an event is either taken here
        // or sent elsewhere after these.
        if link.gone.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut resent = 0;
        let mut orphans = Vec::new();
        for (client, unfinished) in std::mem::take(&mut *unacked) {
            let mut events = link.take_returned(client).unwrap_or_default();
            // A handed-back event is done or among the unfinished: not sent twice.
            let after = events.last().map_or(0, event_number);
            events.extend(unfinished.into_iter().filter(|e| event_number(e) > after));
            resent += events.len();
            if events.last().is_some_and(is_close) {
                orphans.push(events);
            } else {
                let mut returned = link.returned.lock().unwrap_or_else(|e| e.into_inner());
                returned.insert(client, events);
                link.returning.fetch_add(1, Ordering::SeqCst);
            }
        }
        drop(unacked);
        let windows = link.close();
        self.unlist(link.id);
        // Wakes the clients bound there, idle ones too: their events must not wait for them.
        for window in windows {
            window.mover.wake();
        }
        if resent > 0 {
            crate::metrics::events_resent(resent);
            tracing::warn!(
                link = link.id,
                events = resent,
                "a worker-host link was lost with events unfinished: sending them to another"
            );
        }
        self.resend(orphans);
    }

    /// A worker host is leaving: no client is bound to `link` any more, and those bound to
    /// it move on their next event once their events there are done; the host is told
    /// `Left` when none is left.
    pub fn retire(&self, link: &WorkerLink) {
        link.leaving.store(true, Ordering::SeqCst);
        self.unlist(link.id);
        link.answer_leaving();
    }

    /// The worker host of `link` (whose id is `host`) serves `apps` now: clients of those
    /// apps may be routed to it, and those of other apps bound to it move.
    pub fn announce(&self, link: &WorkerLink, host: u64, apps: &[ServedApp]) {
        link.host.store(host, Ordering::SeqCst);
        let listeners = link.serves.iter().zip(link.presence.iter()).zip(&self.apps);
        for ((serves, presence), app) in listeners {
            let served = apps.iter().find(|a| a.name == *app);
            serves.store(served.is_some(), Ordering::SeqCst);
            presence.store(served.is_some_and(|a| a.presence), Ordering::SeqCst);
        }
        link.wake_bound();
        self.count.send_modify(|_| {});
    }

    /// The worker host of `link` handed back an event it did not run; the client takes it
    /// along when it moves.
    pub fn returned(&self, link: &WorkerLink, client: ClientContext, kind: EventKind) {
        let id = client.id;
        let event = ToWorker::Event {
            client,
            kind,
            ack_now: false,
        };
        let mut returned = link.returned.lock().unwrap_or_else(|e| e.into_inner());
        let events = returned.entry(id).or_default();
        if events.is_empty() {
            link.returning.fetch_add(1, Ordering::SeqCst);
        }
        events.push(event);
        drop(returned);
        // Only that client's move changes.
        let windows = link.windows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = windows.get(&id) {
            window.0.mover.wake();
        }
    }

    /// The worker host of `link` is done with these events (see [`WorkerLink::done`]).
    pub fn done(self: &Arc<Self>, link: &WorkerLink, done: Vec<(ClientId, u32)>) {
        let orphans: Vec<_> = done
            .into_iter()
            .filter_map(|(client, events)| link.done(client, events))
            .collect();
        self.resend(orphans);
    }

    /// The linked worker host that decides the presence of `uid` in the app of `listener`:
    /// of those that run it with `presence` and are not leaving, the one a hash of its id and
    /// the uid ranks first (rendezvous hashing), so that every gateway picks the same one
    /// and a host coming or going moves only its own share of uids.
    pub fn presence_owner(&self, listener: u16, uid: &str) -> Option<Arc<WorkerLink>> {
        let app = self.apps.get(usize::from(listener))?;
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        links
            .iter()
            .filter(|l| l.decides_presence(listener))
            .max_by_key(|l| rank(l.host.load(Ordering::SeqCst), app, uid))
            .cloned()
    }

    /// The hosts that may keep clients now, by listener: of those serving the listener's app,
    /// the ones at the farthest [`Place`] any is at.
    pub fn keepers(&self) -> Keepers {
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        let by_listener = (0..self.apps.len())
            .map(|listener| {
                let listener = u16::try_from(listener).unwrap_or(u16::MAX);
                let able = || links.iter().filter(move |l| l.keeps(listener));
                let farthest = able().filter_map(|l| l.place).max();
                able().filter(|l| l.place == farthest).cloned().collect()
            })
            .collect();
        Keepers {
            by_listener,
            hasher: self.keep_hasher.clone(),
        }
    }

    /// Whether some linked worker host wants presence for the app of `listener`.
    pub fn wants_presence(&self, listener: u16) -> bool {
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        links.iter().any(|l| l.decides_presence(listener))
    }

    /// Marked whenever a link comes, goes, or its host's apps change.
    pub fn changes(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// The number of linked worker hosts that serve the app of some listener.
    pub fn serving(&self) -> usize {
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        links
            .iter()
            .filter(|l| l.serves.iter().any(|s| s.load(Ordering::SeqCst)))
            .count()
    }

    fn unlist(&self, id: u64) {
        let mut links = self.links.write().unwrap_or_else(|e| e.into_inner());
        links.retain(|l| l.id != id);
        self.count.send_replace(links.len());
    }

    /// The number of linked worker hosts.
    pub fn len(&self) -> usize {
        *self.count.borrow()
    }

    /// Waits until at least `n` worker hosts are linked.
    pub async fn wait_for_links(&self, n: usize) {
        let mut count = self.count.subscribe();
        let _ = count.wait_for(|c| *c >= n).await;
    }

    /// Whether no worker host is linked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends `message` as [`Self::forward`] would, if that needs no wait: the client is bound
    /// to a host that serves its app (or is bound here, to the least bound one, if it is its
    /// first event and a host is linked) and neither its window nor the link's queue is full.
    /// This is nearly every event of a client that is served, and it costs no future; any
    /// other case gives the event back for `forward`.
    #[expect(
        clippy::result_large_err,
        reason = "the event given back is the one taken: it moves either way"
    )]
    pub fn try_forward(&self, binding: &mut Binding, message: ToWorker) -> Result<(), ToWorker> {
        let ToWorker::Event { client, .. } = &message else {
            return Err(message);
        };
        let (client, listener) = (client.id, client.listener);
        if binding.0.is_none() {
            // As `bind` does once a host is there: the first event of every connection would
            // otherwise take `forward`'s boxed future (most of a kilobyte) for a wait it
            // rarely has.
            let Some(link) = self.least_bound(listener).filter(|l| !l.is_leaving()) else {
                return Err(message);
            };
            binding.0 = Some(self.bind_to(link, client));
        }
        let Some(bound) = binding.0.as_ref().filter(|b| !b.displaced(listener)) else {
            return Err(message);
        };
        let Ok(slot) = bound.window.slots.try_acquire() else {
            return Err(message);
        };
        let Some(mut message) = fit(message) else {
            return Ok(());
        };
        let ToWorker::Event { ack_now, .. } = &mut message else {
            unreachable!("only client events are routed")
        };
        *ack_now = bound.window.slots.available_permits() * 2 < self.window as usize;
        let link = &bound.link;
        // Held across the send, so that no acknowledgement can overtake the copy kept.
        let mut unacked = link.unacked.lock().unwrap_or_else(|e| e.into_inner());
        if link.gone.load(Ordering::SeqCst) {
            return Err(message);
        }
        let kept = message.clone();
        link.queue.try_send(message).map_err(|e| e.into_inner())?;
        slot.forget();
        unacked.entry(client).or_default().push(kept);
        Ok(())
    }

    /// Sends `client`'s event to its bound worker host, binding it first if needed, once its
    /// window has room. An event too large for an internal frame is dropped alone (a close
    /// event goes without the session that made it too large).
    pub async fn forward(
        self: &Arc<Self>,
        binding: &mut Binding,
        message: ToWorker,
    ) -> Result<(), Unrouted> {
        let Some(mut message) = fit(message) else {
            return Ok(());
        };
        let ToWorker::Event { client, .. } = &message else {
            unreachable!("only client events are routed")
        };
        let (client, listener) = (client.id, client.listener);
        loop {
            self.leave_if_displaced(binding, client, listener).await?;
            let bound = match binding.0.take() {
                Some(bound) => bound,
                // Boxed as a move is (see `leave_if_displaced`): once per client and move.
                None => Box::pin(self.bind(client, listener))
                    .await
                    .inspect_err(|e| {
                        crate::metrics::event_dropped(e.reason());
                    })?,
            };
            // Borrowed from the binding, not cloned: this runs for every client event.
            let Bound { window, link, .. } = binding.0.insert(bound);
            // A closed window: the link went away while we waited; re-bind.
            let Ok(slot) = window.slots.acquire().await else {
                continue;
            };
            slot.forget();
            // Checked after the slot is taken, as `retire` marks before counting the slots:
            // either this event counts as in flight there, or it goes elsewhere.
            if link.is_leaving() || !link.serves(listener) {
                window.slots.add_permits(1);
                link.answer_leaving();
                continue;
            }
            let ToWorker::Event { ack_now, .. } = &mut message else {
                unreachable!("only client events are routed")
            };
            // A client that used up half its window waits on this acknowledgement soon.
            *ack_now = window.slots.available_permits() * 2 < self.window as usize;
            let number = event_number(&message);
            // Remembered before it is sent, so that no acknowledgement can overtake it.
            {
                let mut unacked = link.unacked.lock().unwrap_or_else(|e| e.into_inner());
                if link.gone.load(Ordering::SeqCst) {
                    // Lost meanwhile: the client moves, with what the link held first.
                    continue;
                }
                unacked.entry(client).or_default().push(message.clone());
            }
            // Tried at once first; the wait is boxed: a send's future would more than double
            // this one, which a connection boxes for its first event.
            let sent = match link.queue.try_send(message) {
                Ok(()) => Ok(()),
                Err(TrySendError::Closed(m)) => Err(m),
                Err(TrySendError::Full(m)) => {
                    Box::pin(link.queue.send(m)).await.map_err(|SendError(m)| m)
                }
            };
            match sent {
                Ok(()) => return Ok(()),
                // The link closed while we waited: re-bind and try the next one.
                Err(m) => {
                    let mut unacked = link.unacked.lock().unwrap_or_else(|e| e.into_inner());
                    let ours = unacked.get_mut(&client).and_then(|sent| {
                        let last = sent.last().is_some_and(|e| event_number(e) == number);
                        last.then(|| {
                            sent.pop();
                            sent.is_empty()
                        })
                    });
                    match ours {
                        Some(true) => {
                            unacked.remove(&client);
                            shrink_if_sparse(&mut *unacked);
                        }
                        Some(false) => {}
                        // Taken by `lost`, with the client's others: it goes with them.
                        None => return Ok(()),
                    }
                    drop(unacked);
                    self.lost(link);
                    message = m;
                }
            }
        }
    }

    /// Moves a displaced client ([`Binding::poll_displaced`]) to a worker host that serves the app
    /// of `listener`, with the events its old host handed back, waiting for one up to the
    /// hold; an error means none took it, and the client is to be closed.
    pub async fn reroute(
        self: &Arc<Self>,
        binding: &mut Binding,
        client: ClientId,
        listener: u16,
    ) -> Result<(), Unrouted> {
        self.leave_if_displaced(binding, client, listener).await?;
        if binding.0.is_none() {
            binding.0 = Some(self.bind(client, listener).await?);
        }
        Ok(())
    }

    /// Unbinds a displaced client once its events on its host are done, and sends the
    /// events that host handed back on (to the host it binds to next), so that its order
    /// holds across the move.
    async fn leave_if_displaced(
        self: &Arc<Self>,
        binding: &mut Binding,
        client: ClientId,
        listener: u16,
    ) -> Result<(), Unrouted> {
        let Some(bound) = binding.0.take_if(|b| b.displaced(listener)) else {
            return Ok(());
        };
        // Boxed: a move is rare, and its waits would otherwise be part of every event's
        // forward (which is boxed per event: past about a kilobyte an allocation leaves the
        // allocator's fast path).
        Box::pin(self.leave(binding, bound, client)).await
    }

    /// Moves the client off the host it is bound to (see [`Self::leave_if_displaced`]).
    async fn leave(
        self: &Arc<Self>,
        binding: &mut Binding,
        bound: Bound,
        client: ClientId,
    ) -> Result<(), Unrouted> {
        if bound.link.queue.is_closed() || bound.window.slots.is_closed() {
            // That host is gone: what it held goes first, whoever sees the loss first.
            self.lost(&bound.link);
        } else {
            let _ = bound.window.slots.acquire_many(self.window).await;
        }
        let link = bound.link.clone();
        drop(bound);
        // The acknowledgements went to this wait, not back to the window: count again.
        link.answer_leaving();
        for event in link.take_returned(client).into_iter().flatten() {
            // Boxed: a move within a move is rare, and the common event pays nothing for it.
            Box::pin(self.forward(binding, event)).await?;
        }
        Ok(())
    }

    /// Sends the last events of clients whose connections are gone to other worker hosts,
    /// in the background: each client's in order, as any event.
    fn resend(self: &Arc<Self>, clients: Vec<Vec<ToWorker>>) {
        if clients.is_empty() {
            return;
        }
        let router = self.clone();
        tokio::spawn(async move {
            for events in clients {
                let mut binding = Binding::default();
                for event in events {
                    if router.forward(&mut binding, event).await.is_err() {
                        break;
                    }
                }
            }
        });
    }

    async fn bind(&self, client: ClientId, listener: u16) -> Result<Bound, Unrouted> {
        let link = self.pick(listener).await?;
        Ok(self.bind_to(link, client))
    }

    /// Binds `client` to `link`: its window, counted on the link.
    fn bind_to(&self, link: Arc<WorkerLink>, client: ClientId) -> Bound {
        link.bound.fetch_add(1, Ordering::Relaxed);
        let window = Arc::new(Window::new(client, self.window));
        link.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(ByClient(window.clone()));
        Bound { link, window }
    }

    async fn pick(&self, listener: u16) -> Result<Arc<WorkerLink>, Unrouted> {
        let mut count = self.count.subscribe();
        let pick = async {
            loop {
                if let Some(link) = self.least_bound(listener) {
                    return link;
                }
                if count.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        // Link ids start at 1: none handed out yet means none ever linked.
        let hold = match self.next_id.load(Ordering::Relaxed) {
            1 => self.hold.max(self.starting_hold),
            _ => self.hold,
        };
        tokio::time::timeout(hold, pick).await.map_err(|_| {
            match self.apps.get(usize::from(listener)) {
                Some(app) if !self.is_empty() => Unrouted::AppUnserved(app.clone()),
                _ => Unrouted::NoWorker,
            }
        })
    }

    fn least_bound(&self, listener: u16) -> Option<Arc<WorkerLink>> {
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        links
            .iter()
            .filter(|l| !l.queue.is_closed() && l.serves(listener))
            .min_by_key(|l| l.bound.load(Ordering::Relaxed))
            .cloned()
    }
}

/// The worker hosts that may keep this gateway's clients at one moment ([`Router::keepers`]).
///
/// A client's *keeper* is the one worker host told of its connection (id, address, listener,
/// uid), which runs its `on-close` if the gateway is lost (ARCHITECTURE.md, "Delivery"). It is
/// picked by rendezvous hashing of the client's id and the hosts' ids among the hosts serving
/// its app at the farthest place from the gateway, so that a host joining or leaving moves
/// only its own share of clients, and a host on another machine keeps them when there is one.
/// A host in the gateway's own process keeps none: it would be lost with the gateway.
pub struct Keepers {
    by_listener: Vec<Vec<Arc<WorkerLink>>>,
    hasher: ClientHasher,
}

impl Keepers {
    /// The keeper of `client` of `listener`, if any host may keep it. Of two links of one
    /// host (one about to be found gone), the newer.
    pub fn pick(&self, listener: u16, client: ClientId) -> Option<&Arc<WorkerLink>> {
        let links = self.by_listener.get(usize::from(listener))?;
        links.iter().max_by_key(|l| {
            let host = l.host.load(Ordering::SeqCst);
            (self.hasher.hash_one((host, client)), l.id)
        })
    }
}

/// Equal when the same links may keep the clients of each listener: then no client's keeper
/// changed.
impl PartialEq for Keepers {
    fn eq(&self, other: &Self) -> bool {
        let same = |a: &Vec<Arc<WorkerLink>>, b: &Vec<Arc<WorkerLink>>| {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.is(b))
        };
        self.by_listener.len() == other.by_listener.len()
            && self
                .by_listener
                .iter()
                .zip(&other.by_listener)
                .all(|(a, b)| same(a, b))
    }
}

/// A host's rank for a uid: the same in every gateway process (SHA-256, not a seeded hash).
fn rank(host: u64, app: &str, uid: &str) -> [u8; 8] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(host.to_le_bytes())
        .chain_update(app.as_bytes())
        .chain_update([0])
        .chain_update(uid.as_bytes())
        .finalize();
    let mut rank = [0; 8];
    rank.copy_from_slice(&digest[..8]);
    rank
}

/// The number of a client event ([`ClientContext::event`]); 0 for anything else.
fn event_number(event: &ToWorker) -> u64 {
    match event {
        ToWorker::Event { client, .. } => client.event,
        _ => 0,
    }
}

fn is_close(event: &ToWorker) -> bool {
    matches!(
        event,
        ToWorker::Event {
            kind: EventKind::Close,
            ..
        }
    )
}

/// The event as it can travel: itself if it fits in an internal frame; a close event without
/// its session if only that does not fit; otherwise nothing (dropped, logged and counted).
fn fit(message: ToWorker) -> Option<ToWorker> {
    let Err(e) = check_frame(&message) else {
        return Some(message);
    };
    let ToWorker::Event {
        mut client,
        kind,
        ack_now,
    } = message
    else {
        return None;
    };
    if kind == EventKind::Close {
        tracing::warn!(client = %client.id, "close event sent without the session: {e}");
        client.session = Arc::default();
        return Some(ToWorker::Event {
            client,
            kind,
            ack_now,
        });
    }
    crate::metrics::event_dropped("too_large");
    tracing::warn!(client = %client.id, "event dropped: {e}");
    None
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    fn event() -> ToWorker {
        event_of(EventKind::Connect)
    }

    fn event_of(kind: EventKind) -> ToWorker {
        let id = ClientId::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1), 1);
        ToWorker::Event {
            client: crate::wire::messages::ClientContext {
                id,
                remote: "127.0.0.1:2".parse().unwrap(),
                listener: 0,
                uid: None,
                session: Arc::default(),
                session_version: 0,
                event: 0,
            },
            kind,
            ack_now: false,
        }
    }

    fn message(text: &'static str) -> ToWorker {
        event_of(EventKind::Message(bytes::Bytes::from_static(
            text.as_bytes(),
        )))
    }

    /// What an event carries: its text, for a message.
    fn text(event: ToWorker) -> String {
        match event {
            ToWorker::Event {
                kind: EventKind::Message(data),
                ..
            } => String::from_utf8(data.to_vec()).unwrap(),
            other => panic!("not a message: {other:?}"),
        }
    }

    /// What a host serving `app` announces.
    fn served() -> [ServedApp; 1] {
        [ServedApp {
            name: "app".into(),
            version: "v1".into(),
            presence: false,
        }]
    }

    /// A host that drops the client's app hands an event back: the client's next event goes
    /// to a host that serves the app, after the one handed back; a host that never announced
    /// the app gets nothing.
    #[tokio::test]
    async fn a_client_moves_with_its_handed_back_events_first() {
        let router = Arc::new(Router::new(4, Duration::from_secs(5), vec!["app".into()]));
        let served = served();
        let link = || {
            let (queue, events) =
                crate::wire::queue::channel(16, 1 << 20, crate::wire::queue::Towards::Worker);
            (router.add(queue, Some(Place::Elsewhere)), events)
        };
        let (unserving, mut nothing) = link();
        router.announce(&unserving, 1, &[]);
        let (first, mut first_events) = link();
        router.announce(&first, 2, &served);
        let mut binding = Binding::default();
        router.forward(&mut binding, message("1")).await.unwrap();
        router.forward(&mut binding, message("2")).await.unwrap();
        assert_eq!(text(first_events.try_recv().unwrap()), "1");

        let (second, mut second_events) = link();
        router.announce(&second, 3, &served);
        router.announce(&first, 2, &[]);
        let ToWorker::Event { client, kind, .. } = first_events.try_recv().unwrap() else {
            unreachable!()
        };
        let id = client.id;
        router.returned(&first, client, kind);
        router.done(&first, vec![(id, 2)]);
        tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| binding.poll_displaced(0, cx)),
        )
        .await
        .expect("the client is told to move");
        router.forward(&mut binding, message("3")).await.unwrap();
        assert_eq!(text(second_events.try_recv().unwrap()), "2");
        assert_eq!(text(second_events.try_recv().unwrap()), "3");
        assert!(first_events.try_recv().is_err());
        assert!(nothing.try_recv().is_err());
    }

    /// Message `text`, numbered `event` as its client's gateway numbers it.
    fn numbered(text: &'static str, event: u64) -> ToWorker {
        let mut message = message(text);
        if let ToWorker::Event { client, .. } = &mut message {
            client.event = event;
        }
        message
    }

    /// A lost link's events not done go, in order, to the host the client moves to, ahead of
    /// its next event; those done there are not sent again.
    #[tokio::test]
    async fn a_lost_hosts_unfinished_events_go_first_to_the_next() {
        let router = Arc::new(Router::new(8, Duration::from_secs(5), vec!["app".into()]));
        let served = served();
        let (queue, mut lost_events) =
            crate::wire::queue::channel(16, 1 << 20, crate::wire::queue::Towards::Worker);
        let doomed = router.add(queue, Some(Place::Elsewhere));
        router.announce(&doomed, 1, &served);
        let mut binding = Binding::default();
        for (n, text) in ["1", "2", "3"].into_iter().enumerate() {
            router
                .forward(&mut binding, numbered(text, n as u64 + 1))
                .await
                .unwrap();
        }
        let ToWorker::Event { client, .. } = lost_events.try_recv().unwrap() else {
            unreachable!()
        };
        router.done(&doomed, vec![(client.id, 1)]);

        let (queue, mut next_events) =
            crate::wire::queue::channel(16, 1 << 20, crate::wire::queue::Towards::Worker);
        let next = router.add(queue, Some(Place::Elsewhere));
        router.announce(&next, 2, &served);
        router.lost(&doomed);
        tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| binding.poll_displaced(0, cx)),
        )
        .await
        .expect("the client is told to move");
        router.reroute(&mut binding, client.id, 0).await.unwrap();
        router
            .forward(&mut binding, numbered("4", 4))
            .await
            .unwrap();
        let got: Vec<String> = std::iter::from_fn(|| next_events.try_recv().ok())
            .map(text)
            .collect();
        assert_eq!(got, ["2", "3", "4"]);
    }

    /// A worker host linked to `router` from elsewhere, serving its app, and what the
    /// gateway sends it.
    fn serving(router: &Router) -> (Arc<WorkerLink>, crate::wire::queue::LinkReceiver<ToWorker>) {
        let (queue, events) =
            crate::wire::queue::channel(16, 1 << 20, crate::wire::queue::Towards::Worker);
        let link = router.add(queue, Some(Place::Elsewhere));
        router.announce(&link, 1, &served());
        (link, events)
    }

    /// A client's event goes at once while a host serves its app and its window has room
    /// (the first binds it there); one that would wait (no host yet, window full) is given
    /// back whole, and goes once it need not wait.
    #[tokio::test]
    async fn an_event_that_needs_no_wait_is_sent_at_once_and_others_are_given_back() {
        let router = Arc::new(Router::new(2, Duration::from_secs(5), vec!["app".into()]));
        let mut binding = Binding::default();
        let unbound = router.try_forward(&mut binding, numbered("1", 1));
        let first = unbound.expect_err("no host linked yet: the client waits for one");
        let (link, mut events) = serving(&router);
        router
            .try_forward(&mut binding, first)
            .expect("a host serves the app: the client is bound at once");
        assert_eq!(link.bound.load(Ordering::Relaxed), 1);
        router
            .try_forward(&mut binding, numbered("2", 2))
            .expect("room in the window");
        let full = router.try_forward(&mut binding, numbered("3", 3));
        let third = full.expect_err("the window of 2 is full");
        let ToWorker::Event { client, .. } = events.try_recv().unwrap() else {
            unreachable!()
        };
        assert_eq!(text(events.try_recv().unwrap()), "2");
        router.done(&link, vec![(client.id, 1)]);
        router
            .try_forward(&mut binding, third)
            .expect("room again once one is done");
        assert_eq!(text(events.try_recv().unwrap()), "3");
    }

    /// A link from loopback, or from the address it reached, comes from the gateway's
    /// machine, IPv4 written as IPv6 included; one from another address does not.
    #[test]
    fn a_link_from_the_address_it_reached_or_loopback_is_on_the_gateways_machine() {
        let place =
            |peer: &str, local: &str| Place::of_peer(peer.parse().unwrap(), local.parse().unwrap());
        assert_eq!(place("127.0.0.1", "198.18.0.2"), Place::Machine);
        assert_eq!(place("::1", "::"), Place::Machine);
        assert_eq!(place("198.18.0.2", "198.18.0.2"), Place::Machine);
        assert_eq!(place("::ffff:198.18.0.2", "198.18.0.2"), Place::Machine);
        assert_eq!(place("198.18.0.1", "198.18.0.2"), Place::Elsewhere);
        assert_eq!(
            place("::ffff:198.18.0.1", "::ffff:198.18.0.2"),
            Place::Elsewhere
        );
    }

    /// Until a first worker host links, an event waits [`STARTING_HOLD`]; once one has
    /// linked and gone, only `hold`.
    #[tokio::test(start_paused = true)]
    async fn a_starting_cluster_is_waited_for_longer() {
        let router = Arc::new(Router::new(4, Duration::from_secs(5), vec!["app".into()]));
        let started = tokio::time::Instant::now();
        let waited = router.forward(&mut Binding::default(), event()).await;
        assert!(waited.is_err());
        assert_eq!(started.elapsed(), STARTING_HOLD);

        let (queue, _events) =
            crate::wire::queue::channel(4, 1 << 20, crate::wire::queue::Towards::Worker);
        let link = router.add(queue, Some(Place::Elsewhere));
        router.remove(&link);
        let started = tokio::time::Instant::now();
        let waited = router.forward(&mut Binding::default(), event()).await;
        assert!(waited.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    /// Beside a worker host whose `start_timeout` is given, a starting cluster is waited for
    /// that long, longer or shorter than [`STARTING_HOLD`], but never less than `hold`.
    #[tokio::test(start_paused = true)]
    async fn a_starting_cluster_is_waited_for_as_long_as_its_start_timeout() {
        for (start_timeout, waited_for) in [(150, 150), (20, 20), (2, 5)] {
            let router = Arc::new(
                Router::new(4, Duration::from_secs(5), vec!["app".into()])
                    .with_starting_hold(Duration::from_secs(start_timeout)),
            );
            let started = tokio::time::Instant::now();
            let waited = router.forward(&mut Binding::default(), event()).await;
            assert_eq!(waited.err(), Some(Unrouted::NoWorker));
            assert_eq!(started.elapsed(), Duration::from_secs(waited_for));
        }
    }
}
