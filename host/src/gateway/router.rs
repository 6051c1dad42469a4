//! Which worker host handles a client's events.
//!
//! The default (GatewayWorker's `routerBind`) binds each client to one worker-host link on its
//! first event, choosing the link with the fewest bound clients, and keeps sending that
//! client's events there, which is what keeps them in order. When the bound link goes away the
//! client is re-bound on its next event. While no worker host is linked (at startup, or while
//! all are restarting) an event waits up to [`WAIT_FOR_WORKER`] for one instead of being dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::wire::messages::ToWorker;

/// How long an event waits for a worker host to be linked before its client is closed.
pub const WAIT_FOR_WORKER: Duration = Duration::from_secs(5);

/// One linked worker host, as the router sees it.
pub struct WorkerLink {
    /// Unique among this gateway's links.
    pub id: u64,
    /// The worker host's outbound queue (events and query replies).
    pub queue: mpsc::Sender<ToWorker>,
    bound: AtomicUsize,
}

/// The worker-host links of one gateway.
pub struct Router {
    links: RwLock<Vec<Arc<WorkerLink>>>,
    next_id: AtomicU64,
    count: watch::Sender<usize>,
}

/// No worker host took the event in time.
#[derive(Debug, thiserror::Error)]
#[error("no worker host is linked to this gateway")]
pub struct NoWorker;

/// A client's binding to a worker-host link; unbinds on drop.
#[derive(Default)]
pub struct Binding(Option<Arc<WorkerLink>>);

impl Drop for Binding {
    fn drop(&mut self) {
        if let Some(link) = self.0.take() {
            link.bound.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Default for Router {
    fn default() -> Self {
        Self {
            links: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(1),
            count: watch::channel(0).0,
        }
    }
}

impl Router {
    /// Adds a link whose outbound queue is `queue`.
    pub fn add(&self, queue: mpsc::Sender<ToWorker>) -> Arc<WorkerLink> {
        let link = Arc::new(WorkerLink {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            queue,
            bound: AtomicUsize::new(0),
        });
        let mut links = self.links.write().unwrap_or_else(|e| e.into_inner());
        links.push(link.clone());
        self.count.send_replace(links.len());
        link
    }

    /// Removes a link; clients bound to it are re-bound on their next event.
    pub fn remove(&self, id: u64) {
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

    /// Sends `message` to the client's bound worker host, binding it first if needed.
    pub async fn forward(
        &self,
        binding: &mut Binding,
        mut message: ToWorker,
    ) -> Result<(), NoWorker> {
        loop {
            let link = match &binding.0 {
                Some(link) if !link.queue.is_closed() => link.clone(),
                _ => {
                    *binding = Binding::default();
                    let link = self.pick().await?;
                    link.bound.fetch_add(1, Ordering::Relaxed);
                    binding.0 = Some(link.clone());
                    link
                }
            };
            match link.queue.send(message).await {
                Ok(()) => return Ok(()),
                // The link closed while we waited: rebind and try the next one.
                Err(mpsc::error::SendError(m)) => {
                    self.remove(link.id);
                    message = m;
                }
            }
        }
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
        tokio::time::timeout(WAIT_FOR_WORKER, pick)
            .await
            .map_err(|_| NoWorker)
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
