//! Links to every gateway, held by a worker host (which takes client events) or a push client
//! (which only asks), and the [`Gateways`] implementation both use.
//!
//! The set of gateways comes from the register(s); a link is opened to each new address and
//! closed when the address leaves the list, and a dropped link is re-dialled with backoff while
//! its gateway is listed. Commands about one client go to the gateway its id names (by key,
//! `client_id::gateway_key`: the address for IPv4, a tag for IPv6, mapped back here from the
//! list); everything else goes to every linked gateway. Queries carry an id, are answered on the same link, and
//! are merged with [`Reply::merge`] after at most [`QUERY_TIMEOUT`].
//!
//! A link's reader never waits on the worker host: events go to the [`EventSink`] without
//! waiting, so query replies and pings keep flowing whatever the instances are doing. What
//! bounds the events in flight is the gateway's per-client window: each event carries a
//! [`Done`] that, once dropped (the event ran or was dropped), tells the gateway its client
//! may send one more. Both ends ping; a link silent for [`SILENT_INTERVALS`] pings, or whose
//! writes stall as long, is dropped.
//!
//! A worker host's links tell each gateway which apps it serves ([`EventSink::apps`]), first
//! and whenever that changes, and hand back an event whose app it does not serve
//! ([`Incoming::give_back`]). Both travel with the acknowledgements, in an order the gateway
//! relies on: an announcement before the events handed back because of it, and an event
//! handed back before its `Done`. The other way, they hand the worker host the clients each
//! gateway makes it keep ([`EventSink::keep`]), each link starting afresh
//! ([`EventSink::linked`]), and tell it when a gateway is lost ([`EventSink::gateway_lost`]).
//!
//! An event's `Done` never reaches its gateway before the commands its callback sent to other
//! gateways reach theirs, or its NATS server ([`Done::after`], and the marks of
//! [`crate::ops::marks`]; ARCHITECTURE.md, "Delivery"): otherwise a host killed in between
//! would have the event acknowledged and those commands lost.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::client_id::{self, ClientId, ClientMap};
use crate::local::{LinkReader, LocalGateways};
use crate::ops::marks::{self, Marks, Noted};
use crate::ops::{
    Command, CommandFuture, Gateways, PluginReport, Query, QueryFuture, Reply, Unreachable,
    WorkerReport,
};
use crate::transport::Trust;
use crate::wire::LinkError;
use crate::wire::codec::{FrameReader, FrameWriter, WireError, check_frame};
use crate::wire::handshake::{self, Peer};
use crate::wire::messages::{
    ClientContext, EventKind, KeptClient, ListenerInfo, PresenceChange, ServedApp, ToGateway,
    ToWorker,
};
use crate::wire::queue::{self, LinkSender, Towards};

/// Longest a query waits for the gateways' answers.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// Messages queued for one gateway before senders wait (bytes are bounded too).
const LINK_QUEUE: usize = 16 * 1024;

/// Bytes queued for one gateway before senders wait, unless configured otherwise
/// (`[worker] link_queue_bytes`).
pub const DEFAULT_QUEUE_BYTES: usize = 64 << 20;

/// How often a link pings its gateway unless configured otherwise (`[worker]
/// link_ping_interval`).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);

/// Ping intervals without a message from the gateway, or with a write stalled, after which
/// its link is dropped.
pub const SILENT_INTERVALS: u32 = 3;

/// Most clients one `Done` message acknowledges, so that it stays a small frame.
const DONE_BATCH: usize = 4096;

/// Longest an acknowledgement the gateway did not ask for at once waits for others.
const ACK_DELAY: Duration = Duration::from_millis(1);

/// A client event as it arrives from a gateway, with what the dispatcher needs to route it.
#[derive(Debug)]
pub struct Incoming {
    /// The listener the client is on.
    pub listener: Arc<ListenerInfo>,
    /// The client.
    pub client: ClientContext,
    /// What happened.
    pub kind: EventKind,
    /// Tells the gateway, when dropped, that this event is finished.
    pub done: Done,
}

/// One event in flight; dropping it acknowledges the event to its gateway, which then lets
/// the client send another. Held until the event's callback returns ([`Done::after`]), or
/// dropped with the event.
pub struct Done {
    client: ClientId,
    /// The gateway asked for this acknowledgement at once ([`ToWorker::Event`]'s `ack_now`).
    now: bool,
    /// Taken when the acknowledgement is made (so at most once).
    acks: Option<Arc<Acks>>,
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Done").field(&self.client).finish()
    }
}

impl Incoming {
    /// Hands the event back to its gateway unrun, because this host does not serve its app:
    /// the gateway sends it to a host that does. Its acknowledgement follows it.
    pub fn give_back(self) {
        let Incoming {
            client, kind, done, ..
        } = self;
        if let Some(acks) = &done.acks {
            let mut returned = acks.returned.lock().unwrap_or_else(|e| e.into_inner());
            returned.push((client, kind));
        }
        // Dropped only now, so that whoever takes this acknowledgement finds the event too.
        drop(done);
    }
}

impl Done {
    /// An acknowledgement that goes nowhere, for events no gateway waits for: presence
    /// callbacks, which the worker host makes, and events made up in tests.
    pub fn detached(client: ClientId) -> Self {
        Self {
            client,
            now: false,
            acks: None,
        }
    }

    /// Runs `work`, the event's callback, then acknowledges the event once every command it
    /// sent to a gateway of another process has reached that gateway (its mark came back,
    /// or its link ended), and every command it published on NATS has reached the NATS
    /// server. An event from a gateway of this process is acknowledged at once: that gateway
    /// and its client die with the process, whatever was sent elsewhere.
    ///
    /// Not an `async fn`, which would hold `work` (a callback's future: kilobytes, moved on
    /// every event) once as its argument and again in what it awaits.
    pub fn after<F: Future>(mut self, work: F) -> impl Future<Output = F::Output> {
        if self.acks.as_ref().is_none_or(|acks| acks.marks.is_none()) {
            // Dropped, so acknowledged, once the work is over.
            return Either::Left(work.map(move |output| {
                drop(self);
                output
            }));
        }
        Either::Right(marks::noting(work).map(move |(output, noted)| {
            self.acknowledge(noted);
            output
        }))
    }

    /// Acknowledges the event once the gateways of `noted` (links with a mark each, asked
    /// for here) have confirmed what was sent to them, and after its client's parked ones.
    fn acknowledge(&mut self, mut noted: Noted) {
        let Some(acks) = self.acks.take() else {
            return;
        };
        let own = acks.marks.as_ref();
        // The callback's commands are queued by now (host imports await the queue), so a
        // mark asked for now follows them on each link.
        noted.retain_mut(|(marks, mark)| {
            if own.is_some_and(|own| Arc::ptr_eq(own, marks)) || marks.ended() {
                return false;
            }
            *mark = marks.ask();
            true
        });
        if (!noted.is_empty() || acks.parked.load(Ordering::Acquire) > 0)
            && acks.park(self.client, noted)
        {
            // Wakes the sender, which from now on also waits for marks to come back.
            acks.ready.notify_one();
            return;
        }
        let mut pending = acks.pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending.entry(self.client).or_default() += 1;
        drop(pending);
        if self.now {
            acks.now.notify_one();
        } else {
            acks.ready.notify_one();
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.acknowledge(Vec::new());
    }
}

/// Ends a link's [`Marks`] when the link is over, however it ends.
struct EndMarks(Arc<Marks>);

impl Drop for EndMarks {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Queues the marks asked for on a link, in its own task: a mark asked for while one is
/// being queued waits for the next, so one mark serves every acknowledgement parked at once.
async fn send_marks(marks: Arc<Marks>, queue: LinkSender<ToGateway>) {
    loop {
        marks.wanted().await;
        // Lets the acknowledgements dropped at the same moment ask for this mark too.
        tokio::task::yield_now().await;
        let mark = marks.take();
        if queue.send(ToGateway::Mark(mark)).await.is_err() {
            return;
        }
    }
}

/// Notes, for the acknowledgement of the running callback ([`Done::after`]), the links of
/// other processes a command goes to.
fn note<'a>(targets: impl IntoIterator<Item = &'a GatewayLink>) {
    for marks in targets.into_iter().filter_map(|link| link.marks.as_ref()) {
        marks::note(marks);
    }
}

/// How often a worker host looks whether its plugin report changed: soon enough that an
/// operator sees a fault within a page refresh, rare enough to cost nothing (the report is
/// built from a few small tables and sent only when it changed).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Makes a worker host's plugin report ([`GatewayLinks::report_with`]).
pub type Reporter = Arc<dyn Fn() -> WorkerReport + Send + Sync>;

/// Sends `reporter`'s report on a link when it starts and whenever its plugins changed; its
/// own task, so that a full link queue delays reports, never the reader.
async fn send_reports(reporter: Reporter, queue: LinkSender<ToGateway>) {
    let mut sent: Option<Vec<PluginReport>> = None;
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let report = reporter();
        if sent.as_ref() == Some(&report.plugins) {
            continue;
        }
        sent = Some(report.plugins.clone());
        if queue.send(ToGateway::Report(report)).await.is_err() {
            return;
        }
    }
}

/// The acknowledgements of one link not yet sent, by client (bounded by its clients), the
/// events handed back before them (bounded by the clients' windows), and those parked until
/// other gateways confirm their callbacks' commands (bounded by the clients' windows too).
#[derive(Default)]
struct Acks {
    pending: Mutex<ClientMap<u32>>,
    returned: Mutex<Vec<(ClientContext, EventKind)>>,
    /// Some may wait [`ACK_DELAY`].
    ready: Notify,
    /// One is asked for at once.
    now: Notify,
    /// The link's own marks; none in-process (nor for a detached `Done`): nothing is parked
    /// then.
    marks: Option<Arc<Marks>>,
    parking: Mutex<Parking>,
    /// How many are parked: the common case, none, is read without the lock.
    parked: AtomicUsize,
}

/// Acknowledgements waiting for marks, in the order their events finished.
#[derive(Default)]
struct Parking {
    queue: VecDeque<Parked>,
    /// How many of each client's are parked: a later one of the client parks behind them.
    by_client: ClientMap<u32>,
    /// The clients passed over in a release (kept to reuse its room).
    blocked: ClientMap<()>,
}

/// One acknowledgement waiting for marks.
struct Parked {
    client: ClientId,
    /// Each path with the mark it waits for; none when it only waits behind its client's.
    waits: Noted,
}

impl Acks {
    fn new(marks: Option<Arc<Marks>>) -> Self {
        Self {
            marks,
            ..Self::default()
        }
    }

    /// Parks `client`'s acknowledgement until every mark of `waits` passed and its client's
    /// earlier parked ones are released; false (not parked) if it has nothing to wait for.
    fn park(&self, client: ClientId, waits: Noted) -> bool {
        let mut parking = self.parking.lock().unwrap_or_else(|e| e.into_inner());
        if waits.is_empty() && !parking.by_client.contains_key(&client) {
            return false;
        }
        parking.queue.push_back(Parked { client, waits });
        *parking.by_client.entry(client).or_default() += 1;
        self.parked.fetch_add(1, Ordering::AcqRel);
        crate::metrics::ack_parked();
        true
    }

    /// Moves to `pending` every parked acknowledgement whose marks passed and whose client
    /// has none parked before it.
    fn release(&self) {
        if self.parked.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut parking = self.parking.lock().unwrap_or_else(|e| e.into_inner());
        let Parking {
            queue,
            by_client,
            blocked,
        } = &mut *parking;
        blocked.clear();
        let before = queue.len();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        queue.retain(|parked| {
            if blocked.contains_key(&parked.client) {
                return true;
            }
            if !parked.waits.iter().all(|(marks, mark)| marks.passed(*mark)) {
                blocked.insert(parked.client, ());
                return true;
            }
            *pending.entry(parked.client).or_default() += 1;
            if let Some(left) = by_client.get_mut(&parked.client) {
                *left -= 1;
                if *left == 0 {
                    by_client.remove(&parked.client);
                }
            }
            false
        });
        self.parked
            .fetch_sub(before - queue.len(), Ordering::AcqRel);
    }
}

/// Sends the acknowledgements of a link, batched; its own task, so that a full link queue
/// delays acknowledgements, never the reader. An acknowledgement waits at most
/// [`ACK_DELAY`] for others to share its message, unless its gateway asked for it at once:
/// a client far from the end of its window loses nothing by the wait, and one `Done` per
/// event would cost a message and a task wake-up per event.
///
/// A worker host's `apps` go first, then whenever they change. What is taken is taken in the
/// order acknowledgements, events handed back, apps, and sent in the reverse order: a `Done`
/// taken was dropped after its event was handed back, and an event handed back for want of
/// its app was handed back after the app left the list.
async fn send_acks(
    acks: Arc<Acks>,
    queue: LinkSender<ToGateway>,
    served: Option<Served>,
    mut passed: watch::Receiver<()>,
) {
    let host = served.as_ref().map_or(0, |s| s.host);
    let mut apps = served.map(|s| s.apps);
    if let Some(apps) = &mut apps {
        let first = apps.borrow_and_update().clone();
        if queue
            .send(ToGateway::Apps { host, apps: first })
            .await
            .is_err()
        {
            return;
        }
    }
    // Swapped with the shared map rather than taken from it, so that neither side allocates
    // and grows a fresh map for every batch.
    let mut taken = ClientMap::default();
    loop {
        // `changed` marks what it saw as seen: remembered here, as `has_changed` will not.
        let mut announce = false;
        tokio::select! {
            () = acks.ready.notified() => tokio::select! {
                () = tokio::time::sleep(ACK_DELAY) => {}
                () = acks.now.notified() => {}
            },
            () = acks.now.notified() => {}
            () = apps_changed(&mut apps) => announce = true,
            // Only while some are parked: a parking wakes `ready` to enable this.
            () = marks_passed(&mut passed), if acks.parked.load(Ordering::Acquire) > 0 => {}
        }
        acks.release();
        std::mem::swap(
            &mut taken,
            &mut *acks.pending.lock().unwrap_or_else(|e| e.into_inner()),
        );
        let mut pending = taken.drain();
        let returned =
            std::mem::take(&mut *acks.returned.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(apps) = &mut apps
            && (announce || apps.has_changed().unwrap_or(false))
        {
            let now = apps.borrow_and_update().clone();
            if queue
                .send(ToGateway::Apps { host, apps: now })
                .await
                .is_err()
            {
                return;
            }
        }
        for (client, kind) in returned {
            if queue
                .send(ToGateway::Returned { client, kind })
                .await
                .is_err()
            {
                return;
            }
        }
        loop {
            let chunk: Vec<_> = pending.by_ref().take(DONE_BATCH).collect();
            if chunk.is_empty() {
                break;
            }
            if queue.send(ToGateway::Done(chunk)).await.is_err() {
                return;
            }
        }
    }
}

/// Resolves when a mark came back or a link ended (never once the links are gone).
async fn marks_passed(passed: &mut watch::Receiver<()>) {
    if passed.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves when `apps` changes; never without a list to follow (or once its sender is gone).
async fn apps_changed(apps: &mut Option<watch::Receiver<Vec<ServedApp>>>) {
    let changed = match apps {
        Some(apps) => apps.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        std::future::pending::<()>().await;
    }
}

/// What a worker host announces on every link.
pub struct Served {
    /// Its id, drawn at start: gateways rank hosts by it to pick the one that decides a
    /// uid's presence.
    pub host: u64,
    /// The apps it serves, with their versions, as they change.
    pub apps: watch::Receiver<Vec<ServedApp>>,
}

/// Where links deliver client events: the worker host's dispatcher.
pub trait EventSink: Send + Sync + 'static {
    /// Takes one event without waiting: a link's reader calls it, and must go on reading
    /// replies and pings whatever the consumer is doing. A consumer that cannot keep the
    /// event drops it (its [`Done`] with it), counted and logged, or hands it back
    /// ([`Incoming::give_back`]) when it does not serve the event's app.
    fn deliver(&self, event: Incoming);

    /// The apps served, which every link announces to its gateway; `None` for a consumer
    /// that gateways route no client to.
    fn apps(&self) -> Option<Served>;

    /// Gateway `gateway` reports a change in its holding of `uid` on `listener`, without
    /// waiting, as [`Self::deliver`].
    fn presence(
        &self,
        gateway: SocketAddrV4,
        listener: Arc<ListenerInfo>,
        uid: String,
        change: PresenceChange,
    );

    /// The link to `gateway` ended: what it reported of its uids no longer holds.
    fn unlinked(&self, gateway: SocketAddrV4);

    /// A link to `gateway`, at its run `run` (drawn at its start), began with `listeners`:
    /// it tells afresh which of its clients this host keeps.
    fn linked(&self, gateway: SocketAddrV4, run: u64, listeners: &[Arc<ListenerInfo>]);

    /// `gateway` makes this host the keeper of the clients of `keep` (or tells their new
    /// uid), and no longer of those of `forget`; their listeners were checked.
    fn keep(&self, gateway: SocketAddrV4, keep: Vec<KeptClient>, forget: Vec<ClientId>);

    /// `gateway` is lost: unlinked for the grace given to [`GatewayLinks::new`] and not
    /// linked again. Its clients' connections went with it; no close event of theirs will
    /// come.
    fn gateway_lost(&self, gateway: SocketAddrV4);
}

/// A push client takes no events: gateways only route clients to worker hosts.
pub struct NoEvents;

impl EventSink for NoEvents {
    fn deliver(&self, _: Incoming) {}

    fn apps(&self) -> Option<Served> {
        None
    }

    fn presence(&self, _: SocketAddrV4, _: Arc<ListenerInfo>, _: String, _: PresenceChange) {}

    fn unlinked(&self, _: SocketAddrV4) {}

    fn linked(&self, _: SocketAddrV4, _: u64, _: &[Arc<ListenerInfo>]) {}

    fn keep(&self, _: SocketAddrV4, _: Vec<KeptClient>, _: Vec<ClientId>) {}

    fn gateway_lost(&self, _: SocketAddrV4) {}
}

/// Which of the `listed` gateways to link: one per key (`client_id::gateway_key`), since a
/// client id names its gateway by key alone. Two addresses with one key (IPv6 tags that
/// collide on one port) cannot both be reached by id: the one already linked (`linked`)
/// keeps it, else the lowest; each refused address is returned with the one holding its key.
fn admit(
    listed: &BTreeSet<SocketAddr>,
    linked: impl Fn(&SocketAddr) -> bool,
) -> (BTreeSet<SocketAddr>, Vec<(SocketAddr, SocketAddr)>) {
    let mut holders: HashMap<SocketAddrV4, SocketAddr> = HashMap::new();
    let mut refused = Vec::new();
    let (first, then): (Vec<&SocketAddr>, Vec<&SocketAddr>) =
        listed.iter().partition(|addr| linked(addr));
    for &addr in first.into_iter().chain(then) {
        match holders.entry(client_id::gateway_key(addr)) {
            Entry::Vacant(free) => {
                free.insert(addr);
            }
            Entry::Occupied(held) => {
                refused.push((addr, *held.get()));
            }
        }
    }
    (holders.into_values().collect(), refused)
}

/// One gateway link.
struct GatewayLink {
    /// The gateway's advertised address, which it was dialled at.
    address: SocketAddr,
    queue: LinkSender<ToGateway>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    /// Over TCP, to a gateway of another process (else in-process).
    remote: bool,
    /// The gateway answered [`ToGateway::Leaving`]: nothing it sent is left to run.
    left: watch::Sender<bool>,
    /// Its marks, over TCP only: a gateway of this process needs no confirmation.
    marks: Option<Arc<Marks>>,
}

impl GatewayLink {
    /// Queues `command` (of `weight` bytes framed); false if the link is gone.
    async fn command(&self, command: Command, weight: usize) -> bool {
        self.queue
            .send_weighing(ToGateway::Command(command), weight)
            .await
            .is_ok()
    }
}

/// Every gateway this worker host (or push client) is linked to.
pub struct GatewayLinks {
    trust: Trust,
    local: LocalGateways,
    role: Peer,
    /// By the gateway's key (`client_id::gateway_key`): what client ids name. Looked up by
    /// every command (a fast hash: the keys come from the register's list).
    links: RwLock<foldhash::HashMap<SocketAddrV4, Arc<GatewayLink>>>,
    next_query: AtomicU64,
    linked: watch::Sender<BTreeSet<SocketAddr>>,
    ping_interval: Duration,
    queue_bytes: usize,
    /// How long a gateway may stay unlinked before it is declared lost.
    lost_after: Duration,
    /// How many times each gateway was linked: a gateway linked again since its link ended
    /// is not lost.
    linkings: Mutex<HashMap<SocketAddr, u64>>,
    /// The tasks that keep the links, so that a stop can wait for them.
    tasks: TaskTracker,
    /// [`Self::leave`] was called: a link made from now on says so at once.
    leaving: AtomicBool,
    /// A worker host's plugin report, sent on every link; none for a push client.
    reporter: OnceLock<Reporter>,
    /// When a partial answer was last logged.
    partial_log: Arc<PartialLog>,
    /// Told when a mark comes back or a link ends ([`Marks`]).
    passed: Arc<watch::Sender<()>>,
}

impl GatewayLinks {
    /// Links for a worker host (which takes client events) or a push client (which does
    /// not); gateways in `local` are reached through channels, the others over TCP. Each
    /// link pings every `ping_interval` and queues at most `queue_bytes` for its gateway; a
    /// gateway unlinked for `lost_after` is lost ([`EventSink::gateway_lost`]).
    /// Nothing is dialled until [`start`](Self::start).
    pub fn new(
        trust: Trust,
        role: Peer,
        local: LocalGateways,
        ping_interval: Duration,
        queue_bytes: usize,
        lost_after: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            ping_interval,
            queue_bytes,
            trust,
            lost_after,
            linkings: Mutex::default(),
            local,
            role,
            links: RwLock::default(),
            next_query: AtomicU64::new(1),
            linked: watch::channel(BTreeSet::new()).0,
            tasks: TaskTracker::new(),
            leaving: AtomicBool::new(false),
            reporter: OnceLock::new(),
            partial_log: Arc::default(),
            passed: Arc::new(watch::channel(()).0),
        })
    }

    /// Has every link report what `reporter` makes to its gateway (a worker host's plugin
    /// table, which the gateways answer to the admin page); set once, before
    /// [`start`](Self::start).
    pub fn report_with(&self, reporter: Reporter) {
        if self.reporter.set(reporter).is_err() {
            tracing::error!("a second plugin reporter was ignored");
        }
    }

    /// Tells every gateway of another process that this worker host is leaving, and waits, at
    /// most `grace`, until each has answered that everything it sent here is done (or its
    /// link ended); says whether they all did. Gateways of this process stop with it and
    /// send their clients' close events here, so their links are left as they are.
    pub async fn leave(&self, grace: Duration) -> bool {
        self.leaving.store(true, Ordering::SeqCst);
        let remote: Vec<_> = self.all_links().into_iter().filter(|l| l.remote).collect();
        let all_left = remote.iter().map(|link| async move {
            let mut left = link.left.subscribe();
            tokio::select! {
                _ = link.queue.closed() => {}
                _ = async {
                    if link.queue.send(ToGateway::Leaving).await.is_ok() {
                        let _ = left.wait_for(|l| *l).await;
                    }
                } => {}
            }
        });
        tokio::time::timeout(grace, futures_util::future::join_all(all_left))
            .await
            .is_ok()
    }

    /// Keeps a link to every gateway in `gateways` until `shutdown`, delivering client
    /// events to `events` ([`NoEvents`] for a push client). At `shutdown` links over TCP
    /// close at once; a link to a gateway of this process is read to its end, which the
    /// gateway marks once it has sent the close events of its clients ([`Self::stopped`]).
    pub fn start<S: EventSink>(
        self: &Arc<Self>,
        gateways: watch::Receiver<BTreeSet<SocketAddr>>,
        events: Arc<S>,
        shutdown: CancellationToken,
    ) {
        self.tasks
            .spawn(self.clone().follow(gateways, events, shutdown));
    }

    /// Waits, at most `grace`, until every link has ended after the `shutdown` given to
    /// [`Self::start`]; says whether they all did.
    pub async fn stopped(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// The marks of another path this worker host's commands take (NATS): an event whose
    /// callback sent on it is acknowledged on these links once a mark of it comes back too.
    pub fn other_path(&self) -> Arc<Marks> {
        Arc::new(Marks::new(self.passed.clone()))
    }

    /// The gateways currently linked (handshake done), as a watch.
    pub fn linked(&self) -> watch::Receiver<BTreeSet<SocketAddr>> {
        self.linked.subscribe()
    }

    async fn follow<S: EventSink>(
        self: Arc<Self>,
        mut gateways: watch::Receiver<BTreeSet<SocketAddr>>,
        events: Arc<S>,
        shutdown: CancellationToken,
    ) {
        let mut dialling: HashMap<SocketAddr, CancellationToken> = HashMap::new();
        let mut refused: BTreeSet<SocketAddr> = BTreeSet::new();
        loop {
            let listed = gateways.borrow_and_update().clone();
            let (wanted, colliding) = admit(&listed, |addr| dialling.contains_key(addr));
            for (addr, holder) in &colliding {
                if !refused.contains(addr) {
                    tracing::error!(
                        gateway = %addr,
                        linked = %holder,
                        key = %client_id::gateway_key(*addr),
                        "two gateways would hand out the same client ids (their IPv6 addresses' \
                         tags collide on one port): this one is not linked; give one of them \
                         another internal port"
                    );
                }
            }
            refused = colliding.into_iter().map(|(addr, _)| addr).collect();
            dialling.retain(|addr, stop| {
                let keep = wanted.contains(addr);
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for addr in wanted {
                dialling.entry(addr).or_insert_with(|| {
                    let stop = shutdown.child_token();
                    let keep = self.clone().keep_linked(
                        addr,
                        events.clone(),
                        stop.clone(),
                        shutdown.clone(),
                    );
                    self.tasks.spawn(keep);
                    stop
                });
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = gateways.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Dials `addr` until `stop` (the gateway left the list, or `shutdown`), re-dialling with
    /// backoff after failures.
    async fn keep_linked<S: EventSink>(
        self: Arc<Self>,
        addr: SocketAddr,
        events: Arc<S>,
        stop: CancellationToken,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = self.link(addr, events.clone(), &stop, &shutdown).await;
            if self.drop_link(addr) && !shutdown.is_cancelled() {
                self.declare_lost_unless_back(addr, events.clone(), shutdown.clone());
            }
            events.unlinked(client_id::gateway_key(addr));
            if stop.is_cancelled() {
                if !shutdown.is_cancelled() {
                    tracing::info!(gateway = %addr, "gateway no longer listed by the registers: unlinked");
                }
                return;
            }
            match result {
                Ok(()) => {
                    crate::metrics::link_closed("closed");
                    tracing::info!(gateway = %addr, "gateway closed the link");
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    crate::metrics::link_closed(e.reason());
                    tracing::warn!(gateway = %addr, "gateway link down: {e}");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Links to `addr` and serves the link until it ends, or until `stop`; at `shutdown`, a
    /// link in-process is read to its end instead.
    async fn link<S: EventSink>(
        &self,
        addr: SocketAddr,
        events: Arc<S>,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), LinkError> {
        let dial = async {
            Ok::<_, LinkError>(
                match self.local.dial(addr, self.role, self.queue_bytes).await {
                    Some((queue, inbound)) => (queue, LinkReader::Local(inbound), None),
                    None => {
                        let (reader, writer) = self.trust.dial(addr).await?.split();
                        let mut reader = FrameReader::new(reader);
                        let mut writer = FrameWriter::new(writer);
                        let secret = self.trust.secret();
                        handshake::connect_handshake(&mut reader, &mut writer, secret, self.role)
                            .await?;
                        let (queue, outgoing) =
                            queue::channel(LINK_QUEUE, self.queue_bytes, Towards::Gateway);
                        let stall = self.ping_interval * SILENT_INTERVALS;
                        let writing =
                            AbortOnDropHandle::new(tokio::spawn(writer.forward(outgoing, stall)));
                        (queue, LinkReader::Tcp(reader), Some(writing))
                    }
                },
            )
        };
        let (queue, mut reader, writing) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            linked = dial => linked?,
        };
        let marks = writing
            .is_some()
            .then(|| Arc::new(Marks::new(self.passed.clone())));
        let _end_marks = marks.clone().map(EndMarks);
        let _marking = marks
            .clone()
            .map(|marks| AbortOnDropHandle::new(tokio::spawn(send_marks(marks, queue.clone()))));
        let link = Arc::new(GatewayLink {
            address: addr,
            queue: queue.clone(),
            pending: Mutex::new(HashMap::new()),
            remote: writing.is_some(),
            left: watch::channel(false).0,
            marks: marks.clone(),
        });
        if link.remote && self.leaving.load(Ordering::SeqCst) {
            let _ = queue.try_send(ToGateway::Leaving);
        }
        self.links
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client_id::gateway_key(addr), link.clone());
        self.linked.send_modify(|l| {
            l.insert(addr);
        });
        *self
            .linkings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr)
            .or_default() += 1;
        tracing::info!(gateway = %addr, in_process = writing.is_none(), "linked to gateway");
        crate::metrics::gateway_link(self.role.name(), 1);
        let acks = Arc::new(Acks::new(marks));
        let _acking = AbortOnDropHandle::new(tokio::spawn(send_acks(
            acks.clone(),
            queue.clone(),
            events.apps(),
            self.passed.subscribe(),
        )));
        let _reporting = self.reporter.get().map(|reporter| {
            AbortOnDropHandle::new(tokio::spawn(send_reports(reporter.clone(), queue.clone())))
        });
        let read = read_loop(
            &mut reader,
            client_id::gateway_key(addr),
            &link,
            &queue,
            &acks,
            events,
            self.ping_interval,
        );
        // Senders may outlive the link (bindings, queries): the writer is aborted on return.
        match writing {
            Some(mut writing) => tokio::select! {
                _ = stop.cancelled() => Ok(()),
                r = read => r,
                w = &mut writing => Err(match w {
                    Ok(Err(e)) => LinkError::Wire(e),
                    Ok(Ok(())) | Err(_) => LinkError::Closed,
                }),
            },
            // In-process: at a stop, the gateway of this process ends the link after its last
            // event; a gateway that left the list while the process runs is unlinked at once,
            // or it would go on receiving broadcasts.
            None => {
                let delisted = async {
                    stop.cancelled().await;
                    if shutdown.is_cancelled() {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    () = delisted => Ok(()),
                    r = read => r,
                }
            }
        }
    }

    /// Declares `addr` lost ([`EventSink::gateway_lost`]) once it has stayed unlinked for
    /// `lost_after`, in the background: a gateway restarted, or frozen for a moment, links
    /// again before that and keeps its clients.
    fn declare_lost_unless_back<S: EventSink>(
        self: &Arc<Self>,
        addr: SocketAddr,
        events: Arc<S>,
        shutdown: CancellationToken,
    ) {
        let linkings = self.linkings(addr);
        let links = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = tokio::time::sleep(links.lost_after) => {}
            }
            if links.linkings(addr) == linkings {
                tracing::warn!(gateway = %addr, lost_after = ?links.lost_after, "gateway lost: not linked again within lost_after");
                events.gateway_lost(client_id::gateway_key(addr));
            }
        });
    }

    /// How many times `addr` was linked so far.
    fn linkings(&self, addr: SocketAddr) -> u64 {
        let linkings = self.linkings.lock().unwrap_or_else(|e| e.into_inner());
        linkings.get(&addr).copied().unwrap_or(0)
    }

    /// Forgets the link to `addr`; whether there was one.
    fn drop_link(&self, addr: SocketAddr) -> bool {
        let removed = self
            .links
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client_id::gateway_key(addr));
        if removed.is_some() {
            crate::metrics::gateway_link(self.role.name(), -1);
            self.linked.send_modify(|l| {
                l.remove(&addr);
            });
        }
        removed.is_some()
    }

    fn all_links(&self) -> Vec<Arc<GatewayLink>> {
        self.links
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The links a message goes to, with their gateways' addresses: the one its target names,
    /// or all.
    fn targets(&self, target: Option<ClientId>) -> Vec<(SocketAddr, Arc<GatewayLink>)> {
        match target {
            Some(client) => self
                .link_of(client)
                .map(|link| (link.address, link))
                .into_iter()
                .collect(),
            None => (self.links.read().unwrap_or_else(|e| e.into_inner()))
                .values()
                .map(|link| (link.address, link.clone()))
                .collect(),
        }
    }

    /// The link to the gateway of `client`, if there is one.
    fn link_of(&self, client: ClientId) -> Option<Arc<GatewayLink>> {
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        links.get(&client.gateway).cloned()
    }
}

async fn read_loop<S: EventSink>(
    reader: &mut LinkReader<ToWorker>,
    gateway: SocketAddrV4,
    link: &GatewayLink,
    queue: &LinkSender<ToGateway>,
    acks: &Arc<Acks>,
    events: Arc<S>,
    ping_interval: Duration,
) -> Result<(), LinkError> {
    let mut listeners: Vec<Arc<ListenerInfo>> = Vec::new();
    // The gateway's run, once its listeners came.
    let mut run = None;
    let mut ping = tokio::time::interval(ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut silent = 0;
    loop {
        let message = tokio::select! {
            _ = ping.tick() => {
                silent += 1;
                if silent > SILENT_INTERVALS {
                    return Err(LinkError::Silent(ping_interval * SILENT_INTERVALS));
                }
                // A full queue is the write timeout's business, not the ping's.
                let _ = queue.try_send(ToGateway::Ping);
                continue;
            }
            message = reader.recv() => message?,
        };
        silent = 0;
        let Some(message) = message else {
            return Ok(());
        };
        match message {
            ToWorker::Listeners {
                run: now,
                listeners: list,
            } => {
                listeners = list.into_iter().map(Arc::new).collect();
                if run.replace(now) != Some(now) {
                    events.linked(gateway, now, &listeners);
                }
            }
            ToWorker::Event {
                client,
                kind,
                ack_now,
            } => {
                if matches!(kind, EventKind::UidOnline(_) | EventKind::UidOffline(_)) {
                    return Err(LinkError::PresenceEvent);
                }
                let listener = listeners
                    .get(usize::from(client.listener))
                    .cloned()
                    .ok_or(LinkError::UnknownListener(client.listener))?;
                let done = Done {
                    client: client.id,
                    now: ack_now,
                    acks: Some(acks.clone()),
                };
                events.deliver(Incoming {
                    listener,
                    client,
                    kind,
                    done,
                });
            }
            ToWorker::Reply { id, reply } => {
                let waiter = link
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(reply);
                }
            }
            ToWorker::Ping => {
                let _ = queue.try_send(ToGateway::Pong);
            }
            ToWorker::Pong => {}
            ToWorker::Left => {
                link.left.send_replace(true);
            }
            ToWorker::Marked(mark) => {
                if let Some(marks) = &link.marks {
                    marks.echo(mark);
                }
            }
            ToWorker::Presence {
                listener,
                uid,
                change,
            } => {
                let listener = listeners
                    .get(usize::from(listener))
                    .cloned()
                    .ok_or(LinkError::UnknownListener(listener))?;
                events.presence(gateway, listener, uid, change);
            }
            ToWorker::Keep { keep, forget } => {
                if let Some(unknown) = keep
                    .iter()
                    .find(|c| usize::from(c.listener) >= listeners.len())
                {
                    return Err(LinkError::UnknownListener(unknown.listener));
                }
                events.keep(gateway, keep, forget);
            }
        }
    }
}

/// Checks that a command or query fits in a frame, and returns its size there (its weight in a
/// link queue); one that does not fit fails alone.
fn fits<M: serde::Serialize>(message: &M) -> Result<usize, Unreachable> {
    check_frame(message).map_err(|e: WireError| {
        crate::metrics::link_message_dropped("too_large");
        tracing::warn!("not sent to the gateways: {e}");
        Unreachable::NoGateway
    })
}

/// How often at most a partial answer is logged: a frozen gateway makes every query
/// partial, and a line a second says so without flooding the log.
const PARTIAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// When a partial answer was last logged, and how many went unlogged since.
#[derive(Debug, Default)]
struct PartialLog(Mutex<Option<(tokio::time::Instant, u64)>>);

impl PartialLog {
    /// Whether to log a partial answer now: `Some` with how many went unlogged before it,
    /// at most once per [`PARTIAL_LOG_EVERY`].
    fn due(&self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *last {
            Some((at, unlogged)) if now.duration_since(*at) < PARTIAL_LOG_EVERY => {
                *unlogged += 1;
                None
            }
            _ => {
                let unlogged = last.map_or(0, |(_, unlogged)| unlogged);
                *last = Some((now, 0));
                Some(unlogged)
            }
        }
    }
}

/// Merges the answers to a query asked of the gateways in `replies` (`None`: silent until
/// [`QUERY_TIMEOUT`]). Some answers make an answer; the silent gateways are logged by address
/// (at most once a second, through `log`), so an operator knows which one to look at.
fn merge_answers(
    target: Option<ClientId>,
    replies: Vec<(SocketAddr, Option<Reply>)>,
    log: &PartialLog,
) -> Result<Reply, Unreachable> {
    let total = replies.len();
    let (answered, silent): (Vec<_>, Vec<_>) = replies.into_iter().partition(|(_, r)| r.is_some());
    let mut answers = answered.into_iter().filter_map(|(_, reply)| reply);
    let Some(mut merged) = answers.next() else {
        return Err(match (target, silent.first()) {
            (Some(_), Some((addr, _))) => Unreachable::Silent(*addr),
            _ => not_linked(target),
        });
    };
    for reply in answers {
        merged = merged.merge(reply).map_err(|_| Unreachable::NoGateway)?;
    }
    if !silent.is_empty() {
        // Counted and flagged to the caller every time; logged at most once a second, since a
        // frozen gateway would otherwise log once per query.
        crate::metrics::QUERIES_PARTIAL.inc();
        crate::ops::partial::report_missing(silent.iter().map(|(addr, _)| *addr));
        if let Some(unlogged) = log.due() {
            let silent: Vec<String> = silent.iter().map(|(addr, _)| addr.to_string()).collect();
            tracing::warn!(
                partial_answers_since_last_line = unlogged,
                "partial answer: query answered by {} of {total} gateways; silent for {QUERY_TIMEOUT:?}: {}",
                total - silent.len(),
                silent.join(", ")
            );
        }
    }
    Ok(merged)
}

/// What it means that no link took a message: for a message about one client, that its
/// gateway is not linked; otherwise, that no gateway is.
fn not_linked(target: Option<ClientId>) -> Unreachable {
    match target {
        Some(client) => Unreachable::NotLinked(client.gateway),
        None => Unreachable::NoGateway,
    }
}

/// A command already queued: a future with nothing in it, which a box does not allocate.
struct Queued;

impl Future for Queued {
    type Output = Result<(), Unreachable>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl GatewayLinks {
    /// Sends `command` to the gateway of `client`, its one target: queued at once if its link
    /// has room, as nearly every command a callback sends is, with no list of targets and no
    /// allocation for the future; otherwise the future waits for room.
    fn command_one(&self, client: ClientId, command: Command) -> CommandFuture {
        let target = Some(client);
        let weight = match fits(&command) {
            Ok(weight) => weight,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let Some(link) = self.link_of(client) else {
            return Box::pin(std::future::ready(Err(not_linked(target))));
        };
        note([&*link]);
        match link
            .queue
            .try_send_weighing(ToGateway::Command(command), weight)
        {
            Ok(()) => Box::pin(Queued),
            Err(queue::TrySendError::Closed(_)) => {
                Box::pin(std::future::ready(Err(not_linked(target))))
            }
            Err(queue::TrySendError::Full(message)) => Box::pin(async move {
                match link.queue.send_weighing(message, weight).await {
                    Ok(()) => Ok(()),
                    Err(_) => Err(not_linked(target)),
                }
            }),
        }
    }
}

impl Gateways for GatewayLinks {
    fn command(&self, command: Command) -> CommandFuture {
        let target = command.target();
        if let Some(client) = target {
            return self.command_one(client, command);
        }
        let targets = self.targets(None);
        note(targets.iter().map(|(_, link)| &**link));
        let checked = fits(&command);
        Box::pin(async move {
            let weight = checked?;
            let mut sent = false;
            for (_, link) in targets {
                sent |= link.command(command.clone(), weight).await;
            }
            if sent { Ok(()) } else { Err(not_linked(None)) }
        })
    }

    fn query(&self, query: Query) -> QueryFuture {
        let target = query.target();
        let asks: Vec<_> = self
            .targets(target)
            .into_iter()
            .map(|(addr, link)| (self.next_query.fetch_add(1, Ordering::Relaxed), addr, link))
            .collect();
        let checked = fits(&query);
        let partial_log = self.partial_log.clone();
        Box::pin(async move {
            let weight = checked?;
            let asks = asks.into_iter().map(|(id, addr, link)| {
                let query = query.clone();
                async move {
                    let (tx, rx) = oneshot::channel();
                    link.pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, tx);
                    let answer = async {
                        let ask = ToGateway::Query { id, query };
                        link.queue.send_weighing(ask, weight).await.ok()?;
                        rx.await.ok()
                    };
                    let reply = tokio::time::timeout(QUERY_TIMEOUT, answer)
                        .await
                        .ok()
                        .flatten();
                    link.pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    (addr, reply)
                }
            });
            let replies = futures_util::future::join_all(asks).await;
            merge_answers(target, replies, &partial_log)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log sink the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn gateway(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new([127, 0, 0, 1].into(), port)
    }

    fn address(port: u16) -> SocketAddr {
        gateway(port).into()
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_answer_names_the_silent_gateways_at_most_once_a_second() {
        let logs = Captured::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        let replies = || {
            vec![
                (address(2300), Some(Reply::Clients(vec![]))),
                (address(2301), None),
                (address(2302), Some(Reply::Clients(vec![]))),
                (address(2303), None),
            ]
        };
        let log = PartialLog::default();
        let _guard = tracing::subscriber::set_default(subscriber);
        for _ in 0..3 {
            let merged = merge_answers(None, replies(), &log);
            assert_eq!(merged, Ok(Reply::Clients(vec![])));
        }
        tokio::time::advance(PARTIAL_LOG_EVERY).await;
        merge_answers(None, replies(), &log).unwrap();
        let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(lines.len(), 2, "once, then once a second later: {logs}");
        assert!(
            lines.iter().all(|l| l.contains("WARN")
                && l.contains("answered by 2 of 4 gateways")
                && l.contains("127.0.0.1:2301, 127.0.0.1:2303")),
            "{logs}"
        );
        assert!(
            lines[1].contains("partial_answers_since_last_line=2"),
            "{logs}"
        );
    }

    /// A link to a gateway of another process, with the receiving end of its queue.
    fn remote_link(
        passed: &Arc<watch::Sender<()>>,
    ) -> (Arc<GatewayLink>, queue::LinkReceiver<ToGateway>) {
        link_to(2301, Some(Arc::new(Marks::new(passed.clone()))))
    }

    /// A link to the gateway at `port`, of another process when it has `marks`, with the
    /// receiving end of its queue.
    fn link_to(
        port: u16,
        marks: Option<Arc<Marks>>,
    ) -> (Arc<GatewayLink>, queue::LinkReceiver<ToGateway>) {
        let (queue, outgoing) = queue::channel(64, 1 << 20, Towards::Gateway);
        let link = Arc::new(GatewayLink {
            address: address(port),
            queue,
            pending: Mutex::default(),
            remote: marks.is_some(),
            left: watch::channel(false).0,
            marks,
        });
        (link, outgoing)
    }

    fn done(client: ClientId, acks: &Arc<Acks>) -> Done {
        Done {
            client,
            now: false,
            acks: Some(acks.clone()),
        }
    }

    fn pending(acks: &Acks) -> Vec<(ClientId, u32)> {
        let mut pending: Vec<_> = acks.pending.lock().unwrap().drain().collect();
        pending.sort();
        pending
    }

    fn marks(link: &GatewayLink) -> &Arc<Marks> {
        link.marks.as_ref().unwrap()
    }

    fn send_to(client: ClientId) -> Command {
        Command::SendToClients {
            clients: vec![client],
            data: bytes::Bytes::from_static(b"hello"),
        }
    }

    #[tokio::test]
    async fn a_done_waits_until_the_other_gateway_echoes_a_mark_queued_after_the_commands() {
        let passed = Arc::new(watch::channel(()).0);
        let (own, _own_queue) = remote_link(&passed);
        let (other, mut other_queue) = remote_link(&passed);
        let _marker = AbortOnDropHandle::new(tokio::spawn(send_marks(
            marks(&other).clone(),
            other.queue.clone(),
        )));
        let acks = Arc::new(Acks::new(own.marks.clone()));
        let client = ClientId::new(gateway(2300), 1);
        let member = ClientId::new(gateway(2301), 1);
        done(client, &acks)
            .after(async {
                // Sent to its own gateway too: that link needs no mark, its `Done` follows.
                for link in [&own, &other] {
                    note([&**link]);
                    assert!(link.command(send_to(member), 64).await);
                }
            })
            .await;
        acks.release();
        assert!(
            pending(&acks).is_empty(),
            "parked until the mark comes back"
        );
        assert_eq!(acks.parked.load(Ordering::Acquire), 1);
        assert!(matches!(
            other_queue.recv().await,
            Some(ToGateway::Command(_))
        ));
        assert_eq!(other_queue.recv().await, Some(ToGateway::Mark(1)));
        marks(&other).echo(1);
        acks.release();
        assert_eq!(pending(&acks), vec![(client, 1)]);
        assert_eq!(acks.parked.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_lost_link_releases_the_dones_waiting_for_it() {
        let passed = Arc::new(watch::channel(()).0);
        let (own, _own_queue) = remote_link(&passed);
        let (other, _other_queue) = remote_link(&passed);
        let acks = Arc::new(Acks::new(own.marks.clone()));
        let client = ClientId::new(gateway(2300), 1);
        done(client, &acks).acknowledge(vec![(marks(&other).clone(), 0)]);
        acks.release();
        assert!(pending(&acks).is_empty());
        drop(EndMarks(marks(&other).clone()));
        acks.release();
        assert_eq!(pending(&acks), vec![(client, 1)]);
        // Commands noted on an ended link park nothing.
        done(client, &acks).acknowledge(vec![(marks(&other).clone(), 0)]);
        assert_eq!(pending(&acks), vec![(client, 1)]);
        assert_eq!(acks.parked.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_later_done_of_the_client_waits_behind_a_parked_one_and_other_clients_pass() {
        let passed = Arc::new(watch::channel(()).0);
        let (own, _own_queue) = remote_link(&passed);
        let (slow, _slow_queue) = remote_link(&passed);
        let (quick, _quick_queue) = remote_link(&passed);
        let acks = Arc::new(Acks::new(own.marks.clone()));
        let held = ClientId::new(gateway(2300), 1);
        let other = ClientId::new(gateway(2300), 2);
        done(held, &acks).acknowledge(vec![(marks(&slow).clone(), 0)]);
        // Waits for nothing of its own, and still not before the first.
        drop(done(held, &acks));
        done(held, &acks).acknowledge(vec![(marks(&quick).clone(), 0)]);
        drop(done(other, &acks));
        done(other, &acks).acknowledge(vec![(marks(&quick).clone(), 0)]);
        marks(&quick).echo(1);
        acks.release();
        assert_eq!(pending(&acks), vec![(other, 2)], "the held client's wait");
        marks(&slow).echo(1);
        acks.release();
        assert_eq!(pending(&acks), vec![(held, 3)]);
        assert_eq!(acks.parked.load(Ordering::Acquire), 0);
    }

    /// A future of kilobytes, as a plugin callback's is.
    async fn large_work() -> usize {
        let block = [1u8; 4096];
        tokio::task::yield_now().await;
        block.iter().map(|&b| usize::from(b)).sum()
    }

    #[tokio::test]
    async fn an_acknowledgement_holds_the_callbacks_future_once() {
        // It is moved on every event: held twice (as an `async fn` holds what it awaits), it
        // would be copied twice over.
        let work = large_work();
        let work_size = std::mem::size_of_val(&work);
        assert!(work_size >= 4096);
        let after = Done::detached(ClientId::new(gateway(2300), 1)).after(work);
        let size = std::mem::size_of_val(&after);
        assert!(size < work_size + 128, "{size} bytes around {work_size}");
        assert_eq!(after.await, 4096);
    }

    #[tokio::test]
    async fn an_event_of_a_gateway_in_process_is_acknowledged_at_once() {
        let passed = Arc::new(watch::channel(()).0);
        let (other, _other_queue) = remote_link(&passed);
        let acks = Arc::new(Acks::new(None));
        let client = ClientId::new(gateway(2300), 1);
        done(client, &acks)
            .after(async {
                note([&*other]);
                assert!(other.command(send_to(client), 64).await);
            })
            .await;
        assert_eq!(pending(&acks), vec![(client, 1)]);
    }

    #[tokio::test]
    async fn a_command_to_one_client_is_queued_in_the_call_and_its_future_holds_nothing() {
        let links = GatewayLinks::new(
            Trust::plain(Arc::from(&b"a secret of sixteen bytes"[..])),
            Peer::Worker,
            LocalGateways::default(),
            DEFAULT_PING_INTERVAL,
            DEFAULT_QUEUE_BYTES,
            Duration::from_secs(1),
        );
        let (link, mut outgoing) = link_to(2300, None);
        links.links.write().unwrap().insert(gateway(2300), link);
        let client = ClientId::new(gateway(2300), 1);
        let sent = links.command(send_to(client));
        // Queued before its future is polled: nothing is left for the future to do.
        assert!(matches!(outgoing.try_recv(), Ok(ToGateway::Command(_))));
        assert_eq!(std::mem::size_of_val(&*sent), 0);
        assert_eq!(sent.await, Ok(()));
        // A gateway not linked is named, as before.
        let stranger = ClientId::new(gateway(2399), 1);
        assert_eq!(
            links.command(send_to(stranger)).await,
            Err(Unreachable::NotLinked(gateway(2399)))
        );
    }

    /// Two IPv6 addresses whose tags collide on one port, found by search (28 bits of tag:
    /// a pair turns up within some tens of thousands of addresses).
    fn colliding_pair() -> (SocketAddr, SocketAddr) {
        let mut seen = HashMap::new();
        for n in 1u128.. {
            let addr = SocketAddr::from((std::net::Ipv6Addr::from(0xfd00_u128 << 112 | n), 2900));
            if let Some(earlier) = seen.insert(client_id::gateway_key(addr), addr) {
                return (earlier, addr);
            }
        }
        unreachable!("the search ends at the first collision")
    }

    #[test]
    fn of_two_gateways_with_one_key_only_one_is_linked() {
        let (a, b) = colliding_pair();
        let v4: SocketAddr = "10.0.0.1:2900".parse().unwrap();
        let bystander: SocketAddr = "[fd00::1:0:0]:2900".parse().unwrap();
        let listed = BTreeSet::from([a, b, v4, bystander]);
        let (low, high) = (a.min(b), a.max(b));
        let (wanted, refused) = admit(&listed, |_| false);
        assert_eq!(wanted, BTreeSet::from([low, v4, bystander]));
        assert_eq!(refused, vec![(high, low)]);
        // The one linked keeps its key, whichever sorts first.
        let (wanted, refused) = admit(&listed, |addr| *addr == high);
        assert_eq!(wanted, BTreeSet::from([high, v4, bystander]));
        assert_eq!(refused, vec![(low, high)]);
    }

    #[test]
    fn a_query_nobody_answered_names_the_clients_gateway() {
        let client = ClientId::new(gateway(2300), 7);
        let silent = merge_answers(
            Some(client),
            vec![(address(2300), None)],
            &PartialLog::default(),
        );
        assert_eq!(silent, Err(Unreachable::Silent(address(2300))));
        let unlinked = merge_answers(Some(client), vec![], &PartialLog::default());
        assert_eq!(unlinked, Err(Unreachable::NotLinked(gateway(2300))));
        assert_eq!(
            merge_answers(None, vec![], &PartialLog::default()),
            Err(Unreachable::NoGateway)
        );
    }
}
