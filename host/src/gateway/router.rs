//! Which worker host handles a client's events, and how many of them may be in flight.
//!
//! The default (GatewayWorker's `routerBind`) binds each client to one worker-host link on its
//! first event, choosing the link with the fewest bound clients, and keeps sending that
//! client's events there, which is what keeps them in order. When the bound link goes away the
//! client is re-bound on its next event. While no worker host is linked (all are restarting)
//! an event waits up to `no_worker_hold` for one instead of being dropped; before the first
//! worker host ever linked (the cluster is starting, its plugins may be compiling) up to
//! [`STARTING_HOLD`], if that is longer.
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
//! A client's close event is remembered until the worker host is done with it (and with
//! every event before it); if the link goes away first, the close goes to another worker
//! host ([`Router::resend_closes`]), so `on-close` runs at least once for every client, and
//! twice if the link died after the callback ran but before its acknowledgement arrived.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use crate::client_id::{ClientId, ClientMap};
use crate::wire::codec::check_frame;
use crate::wire::messages::{EventKind, ToWorker};
use crate::wire::queue::{LinkSender, SendError, TrySendError};

/// One linked worker host, as the router sees it.
pub struct WorkerLink {
    /// Unique among this gateway's links.
    pub id: u64,
    /// The worker host's outbound queue (events and query replies).
    pub queue: LinkSender<ToWorker>,
    bound: AtomicUsize,
    /// The windows of the clients bound to this link.
    windows: Mutex<ClientMap<Arc<Semaphore>>>,
    /// Close events sent and not yet done, with how many of the client's events (the close
    /// included) the worker host has still to finish.
    closes: Mutex<ClientMap<(u32, ToWorker)>>,
    /// Each client's window size on this link.
    window: u32,
    /// The worker host is leaving ([`Router::retire`]).
    leaving: AtomicBool,
    /// `Left` was sent.
    left: AtomicBool,
}

impl WorkerLink {
    /// Gives back `events` slots of `client`'s window (the worker host is done with them).
    pub fn done(&self, client: ClientId, events: u32) {
        // Under the closes lock, as a close's count of events in flight is taken, so that the
        // two agree on which events it includes.
        let mut closes = self.closes.lock().unwrap_or_else(|e| e.into_inner());
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = windows.get(&client) {
            window.add_permits(events as usize);
        }
        drop(windows);
        if let Some((outstanding, _)) = closes.get_mut(&client) {
            *outstanding = outstanding.saturating_sub(events);
            if *outstanding == 0 {
                closes.remove(&client);
            }
        }
        drop(closes);
        self.answer_leaving();
    }

    fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::SeqCst)
    }

    /// Events sent (or about to be: a slot is taken before the send) and not yet done.
    fn in_flight(&self) -> usize {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows
            .values()
            .map(|w| (self.window as usize).saturating_sub(w.available_permits()))
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

    fn close(&self) {
        let windows = std::mem::take(&mut *self.windows.lock().unwrap_or_else(|e| e.into_inner()));
        for window in windows.into_values() {
            window.close();
        }
    }
}

/// Longest an event waits for the first worker host this gateway ever links: as long as a
/// worker host's default `start_timeout`, since a cold Python or JavaScript plugin compiles
/// for seconds before its host links.
pub const STARTING_HOLD: Duration = Duration::from_secs(60);

/// The worker-host links of one gateway.
pub struct Router {
    links: RwLock<Vec<Arc<WorkerLink>>>,
    next_id: AtomicU64,
    count: watch::Sender<usize>,
    window: u32,
    hold: Duration,
}

/// No worker host took the event in time.
#[derive(Debug, thiserror::Error)]
#[error("no worker host is linked to this gateway")]
pub struct NoWorker;

/// A client's binding to a worker-host link and its window there; unbinds on drop.
#[derive(Default)]
pub struct Binding(Option<Bound>);

struct Bound {
    link: Arc<WorkerLink>,
    client: ClientId,
    window: Arc<Semaphore>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.link.bound.fetch_sub(1, Ordering::Relaxed);
        let mut windows = self.link.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows
            .get(&self.client)
            .is_some_and(|w| Arc::ptr_eq(w, &self.window))
        {
            windows.remove(&self.client);
        }
    }
}

impl Router {
    /// A router with no links yet: each client may have `window` events in flight, and an
    /// event waits at most `hold` for a worker host while none is linked.
    pub fn new(window: u32, hold: Duration) -> Self {
        Self {
            links: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(1),
            count: watch::channel(0).0,
            window,
            hold,
        }
    }

    /// Adds a link whose outbound queue is `queue`.
    pub fn add(&self, queue: LinkSender<ToWorker>) -> Arc<WorkerLink> {
        let link = Arc::new(WorkerLink {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            queue,
            bound: AtomicUsize::new(0),
            windows: Mutex::default(),
            closes: Mutex::default(),
            window: self.window,
            leaving: AtomicBool::new(false),
            left: AtomicBool::new(false),
        });
        let mut links = self.links.write().unwrap_or_else(|e| e.into_inner());
        links.push(link.clone());
        self.count.send_replace(links.len());
        link
    }

    /// Removes a link; clients bound to it are re-bound on their next event, and a client
    /// waiting on its window there re-binds at once.
    pub fn remove(&self, link: &WorkerLink) {
        link.close();
        self.unlist(link.id);
    }

    /// A worker host is leaving: no client is bound to `link` any more, and those bound to
    /// it move on their next event once their events there are done; the host is told
    /// `Left` when none is left.
    pub fn retire(&self, link: &WorkerLink) {
        link.leaving.store(true, Ordering::SeqCst);
        self.unlist(link.id);
        link.answer_leaving();
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

    /// Sends `client`'s event to its bound worker host, binding it first if needed, once its
    /// window has room. An event too large for an internal frame is dropped alone (a close
    /// event goes without the session that made it too large).
    pub async fn forward(&self, binding: &mut Binding, message: ToWorker) -> Result<(), NoWorker> {
        let Some(mut message) = fit(message) else {
            return Ok(());
        };
        let ToWorker::Event { client, .. } = &message else {
            unreachable!("only client events are routed")
        };
        let client = client.id;
        loop {
            if let Some(bound) = binding.0.take_if(|b| b.link.is_leaving()) {
                // Its earlier events finish on the leaving host before the next one goes to
                // another: a closed window means that host is gone, nothing to wait for.
                let _ = bound.window.acquire_many(self.window).await;
                let link = bound.link.clone();
                drop(bound);
                // The acknowledgements went to this wait, not back to the window: count again.
                link.answer_leaving();
            }
            let bound = match binding.0.take() {
                Some(bound) if !bound.link.queue.is_closed() && !bound.window.is_closed() => bound,
                _ => self.bind(client).await.inspect_err(|_| {
                    crate::metrics::event_dropped("no_worker");
                })?,
            };
            // Borrowed from the binding, not cloned: this runs for every client event.
            let Bound { window, link, .. } = binding.0.insert(bound);
            // A closed window: the link went away while we waited; re-bind.
            let Ok(slot) = window.acquire().await else {
                continue;
            };
            slot.forget();
            // Checked after the slot is taken, as `retire` marks before counting the slots:
            // either this event counts as in flight there, or it goes elsewhere.
            if link.is_leaving() {
                window.add_permits(1);
                link.answer_leaving();
                continue;
            }
            let ToWorker::Event { kind, ack_now, .. } = &mut message else {
                unreachable!("only client events are routed")
            };
            // A client that used up half its window waits on this acknowledgement soon.
            *ack_now = window.available_permits() * 2 < self.window as usize;
            // Remembered before it is sent, so that no acknowledgement can overtake it.
            let close = *kind == EventKind::Close;
            if close {
                let in_flight = self.window - window.available_permits() as u32;
                link.closes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(client, (in_flight, message.clone()));
            }
            match link.queue.send(message).await {
                Ok(()) => return Ok(()),
                // The link closed while we waited: re-bind and try the next one.
                Err(SendError(m)) => {
                    if close {
                        link.closes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&client);
                    }
                    self.remove(link);
                    message = m;
                }
            }
        }
    }

    /// Sends the close events `link` (gone) had not finished to other worker hosts, in the
    /// background; each waits for one as any event does.
    pub fn resend_closes(self: &Arc<Self>, link: &WorkerLink) {
        let closes: Vec<_> =
            std::mem::take(&mut *link.closes.lock().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .map(|(_, close)| close)
                .collect();
        if closes.is_empty() {
            return;
        }
        tracing::warn!(
            clients = closes.len(),
            "a worker-host link ended with close events unfinished: sending them to another"
        );
        let router = self.clone();
        tokio::spawn(async move {
            for close in closes {
                let _ = router.forward(&mut Binding::default(), close).await;
            }
        });
    }

    async fn bind(&self, client: ClientId) -> Result<Bound, NoWorker> {
        let link = self.pick().await?;
        link.bound.fetch_add(1, Ordering::Relaxed);
        let window = Arc::new(Semaphore::new(self.window as usize));
        link.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client, window.clone());
        Ok(Bound {
            link,
            client,
            window,
        })
    }

    async fn pick(&self) -> Result<Arc<WorkerLink>, NoWorker> {
        let mut count = self.count.subscribe();
        let pick = async {
            loop {
                if let Some(link) = self.least_bound() {
                    return link;
                }
                if count.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        // Link ids start at 1: none handed out yet means none ever linked.
        let hold = match self.next_id.load(Ordering::Relaxed) {
            1 => self.hold.max(STARTING_HOLD),
            _ => self.hold,
        };
        tokio::time::timeout(hold, pick).await.map_err(|_| NoWorker)
    }

    fn least_bound(&self) -> Option<Arc<WorkerLink>> {
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        links
            .iter()
            .filter(|l| !l.queue.is_closed())
            .min_by_key(|l| l.bound.load(Ordering::Relaxed))
            .cloned()
    }
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
        let id = ClientId::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1), 1);
        ToWorker::Event {
            client: crate::wire::messages::ClientContext {
                id,
                remote: "127.0.0.1:2".parse().unwrap(),
                listener: 0,
                uid: None,
                session: Arc::default(),
                session_version: 0,
            },
            kind: EventKind::Connect,
            ack_now: false,
        }
    }

    /// Until a first worker host links, an event waits [`STARTING_HOLD`]; once one has
    /// linked and gone, only `hold`.
    #[tokio::test(start_paused = true)]
    async fn a_starting_cluster_is_waited_for_longer() {
        let router = Router::new(4, Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let waited = router.forward(&mut Binding::default(), event()).await;
        assert!(waited.is_err());
        assert_eq!(started.elapsed(), STARTING_HOLD);

        let (queue, _events) =
            crate::wire::queue::channel(4, 1 << 20, crate::wire::queue::Towards::Worker);
        let link = router.add(queue);
        router.remove(&link);
        let started = tokio::time::Instant::now();
        let waited = router.forward(&mut Binding::default(), event()).await;
        assert!(waited.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
