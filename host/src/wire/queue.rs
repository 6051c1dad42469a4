//! The queue in front of every internal link, bounded in messages and in bytes.
//!
//! A count bound alone lets a link pin `count × largest message` (4,096 events of 1 MiB is
//! 4 GiB), so each message also takes its weight (about its encoded size) from a byte budget
//! until the link's writer takes it off the queue. A sender that finds either bound reached
//! waits ([`LinkSender::send`]) or is refused ([`LinkSender::try_send`]), exactly as with a full
//! count: the overflow behaviour of each caller stays what it was. A message heavier than the
//! whole budget waits for an empty queue and then goes alone, so every message that fits in a
//! frame can be sent.

use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};

pub use tokio::sync::mpsc::error::{SendError, TryRecvError, TrySendError};

use super::codec::Outgoing;
use super::messages::{EventKind, ToGateway, ToWorker};

/// Bytes a message is taken to hold besides its payloads (ids, tags, lengths).
const OVERHEAD: usize = 64;

/// What a queued message counts against its queue's byte budget.
pub trait Weigh {
    /// About its encoded size; cheap for the messages every client event makes.
    fn weight(&self) -> usize;
}

impl Weigh for ToWorker {
    fn weight(&self) -> usize {
        match self {
            // The hot path: payload and session by their lengths, without encoding them.
            ToWorker::Event { client, kind, .. } => {
                let session: usize = client.session.iter().map(|(k, v)| k.len() + v.len()).sum();
                let uid = client.uid.as_ref().map_or(0, String::len);
                OVERHEAD + session + uid + event_bytes(kind)
            }
            ToWorker::Ping | ToWorker::Pong | ToWorker::Left | ToWorker::Marked(_) => OVERHEAD,
            other => encoded(other),
        }
    }
}

impl Weigh for ToGateway {
    fn weight(&self) -> usize {
        match self {
            ToGateway::Ping | ToGateway::Pong | ToGateway::Leaving | ToGateway::Mark(_) => OVERHEAD,
            ToGateway::Done(acks) => OVERHEAD + acks.len() * 16,
            other => encoded(other),
        }
    }
}

fn event_bytes(kind: &EventKind) -> usize {
    match kind {
        EventKind::Message(payload) => payload.len(),
        EventKind::WebSocketConnect(request) => {
            request.path.len()
                + request.query.len()
                + request
                    .headers
                    .iter()
                    .map(|(n, v)| n.len() + v.len())
                    .sum::<usize>()
        }
        EventKind::UidOnline(uid) | EventKind::UidOffline(uid) => uid.len(),
        EventKind::Connect | EventKind::Close => 0,
    }
}

/// Commands and replies: their encoded size (the sender checks it against the frame limit
/// anyway).
fn encoded<M: Serialize>(message: &M) -> usize {
    OVERHEAD + postcard::experimental::serialized_size(message).unwrap_or(0)
}

/// Which way a link queue carries messages: the label of its bytes in
/// `wasmgate_link_queued_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Towards {
    /// Gateway → worker host (client events, query replies).
    Worker,
    /// Worker host or push client → gateway (commands, queries, acknowledgements).
    Gateway,
}

impl Towards {
    /// The label of its bytes in `wasmgate_link_queued_bytes`.
    pub fn label(self) -> &'static str {
        match self {
            Towards::Worker => "worker",
            Towards::Gateway => "gateway",
        }
    }

    /// The byte budgets of this process's live queues this way, with their sizes.
    fn queues(self) -> &'static Mutex<Vec<(Weak<Semaphore>, usize)>> {
        static WORKER: Mutex<Vec<(Weak<Semaphore>, usize)>> = Mutex::new(Vec::new());
        static GATEWAY: Mutex<Vec<(Weak<Semaphore>, usize)>> = Mutex::new(Vec::new());
        match self {
            Towards::Worker => &WORKER,
            Towards::Gateway => &GATEWAY,
        }
    }

    /// Bytes queued now on this process's link queues this way: read from the queues' budgets
    /// at each scrape, rather than kept in a gauge that every message would update (a shared
    /// atomic that showed in the per-message profile).
    pub fn queued_bytes(self) -> u64 {
        let mut queues = self.queues().lock().unwrap_or_else(|e| e.into_inner());
        queues.retain(|(bytes, _)| bytes.strong_count() > 0);
        queues
            .iter()
            .filter_map(|(bytes, budget)| Some(budget - bytes.upgrade()?.available_permits()))
            .map(|queued| queued as u64)
            .sum()
    }
}

/// A link queue of at most `count` messages and about `bytes` bytes (at least one message).
pub fn channel<M: Weigh>(
    count: usize,
    bytes: usize,
    towards: Towards,
) -> (LinkSender<M>, LinkReceiver<M>) {
    let (tx, rx) = mpsc::channel(count);
    let budget = bytes.clamp(1, u32::MAX as usize);
    let bytes = Arc::new(Semaphore::new(budget));
    let mut queues = towards.queues().lock().unwrap_or_else(|e| e.into_inner());
    queues.retain(|(bytes, _)| bytes.strong_count() > 0);
    queues.push((Arc::downgrade(&bytes), budget));
    drop(queues);
    (
        LinkSender {
            tx,
            bytes: bytes.clone(),
            budget,
        },
        LinkReceiver { rx, bytes, budget },
    )
}

/// A message in the queue with the bytes it holds of the budget.
struct Weighed<M> {
    message: M,
    /// The bytes of the budget it holds until it leaves the queue.
    _bytes: OwnedSemaphorePermit,
}

/// The sending half of a link queue.
pub struct LinkSender<M> {
    tx: mpsc::Sender<Weighed<M>>,
    bytes: Arc<Semaphore>,
    budget: usize,
}

impl<M> Clone for LinkSender<M> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            bytes: self.bytes.clone(),
            budget: self.budget,
        }
    }
}

impl<M: Weigh> LinkSender<M> {
    /// Queues `message` once the queue has room for it, in messages and in bytes.
    pub async fn send(&self, message: M) -> Result<(), SendError<M>> {
        let weight = message.weight();
        self.send_weighing(message, weight).await
    }

    /// [`send`](Self::send) for a message whose weight the caller already knows (its size
    /// from [`check_frame`](super::codec::check_frame)).
    pub async fn send_weighing(&self, message: M, weight: usize) -> Result<(), SendError<M>> {
        let weight = self.clamped(weight);
        // The common case, a queue with room, with nothing to wait for.
        let message = match self.try_send_clamped(message, weight) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(message)) => return Err(SendError(message)),
            Err(TrySendError::Full(message)) => message,
        };
        // Boxed: waiting for room is rare, and its futures would otherwise make every send's
        // (and every event's forward) future several times larger.
        Box::pin(self.send_waiting(message, weight)).await
    }

    /// Queues `message` once the queue has room for `weight` bytes of it.
    async fn send_waiting(&self, message: M, weight: u32) -> Result<(), SendError<M>> {
        let bytes = tokio::select! {
            permit = self.bytes.clone().acquire_many_owned(weight) => match permit {
                Ok(permit) => permit,
                Err(_) => return Err(SendError(message)),
            },
            () = self.tx.closed() => return Err(SendError(message)),
        };
        self.tx
            .send(Weighed {
                message,
                _bytes: bytes,
            })
            .await
            .map_err(|SendError(w)| SendError(w.message))
    }

    /// [`try_send`](Self::try_send) for a message whose weight the caller already knows.
    pub fn try_send_weighing(&self, message: M, weight: usize) -> Result<(), TrySendError<M>> {
        let weight = self.clamped(weight);
        self.try_send_clamped(message, weight)
    }

    /// Queues `message` if the queue has room for it now.
    pub fn try_send(&self, message: M) -> Result<(), TrySendError<M>> {
        let weight = message.weight();
        self.try_send_weighing(message, weight)
    }

    fn try_send_clamped(&self, message: M, weight: u32) -> Result<(), TrySendError<M>> {
        if self.tx.is_closed() {
            return Err(TrySendError::Closed(message));
        }
        let bytes = match self.bytes.clone().try_acquire_many_owned(weight) {
            Ok(bytes) => bytes,
            Err(TryAcquireError::Closed) => return Err(TrySendError::Closed(message)),
            Err(TryAcquireError::NoPermits) => return Err(TrySendError::Full(message)),
        };
        self.tx
            .try_send(Weighed {
                message,
                _bytes: bytes,
            })
            .map_err(|e| match e {
                TrySendError::Full(w) => TrySendError::Full(w.message),
                TrySendError::Closed(w) => TrySendError::Closed(w.message),
            })
    }

    fn clamped(&self, weight: usize) -> u32 {
        // A message over the whole budget waits for an empty queue, then goes alone.
        weight.clamp(1, self.budget) as u32
    }
}

impl<M> LinkSender<M> {
    /// Whether the receiving half is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the receiving half is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// The receiving half of a link queue.
pub struct LinkReceiver<M> {
    rx: mpsc::Receiver<Weighed<M>>,
    bytes: Arc<Semaphore>,
    budget: usize,
}

impl<M> LinkReceiver<M> {
    /// The next message; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<M> {
        self.rx.recv().await.map(|w| w.message)
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Result<M, TryRecvError> {
        self.rx.try_recv().map(|w| w.message)
    }

    /// Bytes the queued messages hold now.
    pub fn queued_bytes(&self) -> usize {
        self.budget - self.bytes.available_permits()
    }
}

impl<M: Send> Outgoing<M> for LinkReceiver<M> {
    fn recv(&mut self) -> impl Future<Output = Option<M>> + Send {
        LinkReceiver::recv(self)
    }

    fn try_next(&mut self) -> Option<M> {
        self.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sized(usize);

    impl Weigh for Sized {
        fn weight(&self) -> usize {
            self.0
        }
    }

    #[tokio::test]
    async fn bytes_bound_the_queue_as_well_as_messages() {
        let (tx, mut rx) = channel(100, 1000, Towards::Worker);
        tx.try_send(Sized(600)).ok().unwrap();
        assert!(matches!(
            tx.try_send(Sized(600)),
            Err(TrySendError::Full(_))
        ));
        tx.try_send(Sized(400)).ok().unwrap();
        assert_eq!(rx.queued_bytes(), 1000);
        // A sender waits until the bytes are taken off.
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(Sized(500)).await.is_ok() }
        });
        assert_eq!(rx.recv().await.unwrap().0, 600);
        assert!(waiting.await.unwrap());
        assert_eq!(rx.queued_bytes(), 900);
    }

    #[tokio::test]
    async fn a_message_over_the_budget_goes_alone() {
        let (tx, mut rx) = channel(100, 1000, Towards::Worker);
        tx.try_send(Sized(10)).ok().unwrap();
        assert!(matches!(
            tx.try_send(Sized(5000)),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(rx.recv().await.unwrap().0, 10);
        tx.try_send(Sized(5000)).ok().unwrap();
        assert_eq!(rx.recv().await.unwrap().0, 5000);
    }

    #[tokio::test]
    async fn a_closed_queue_refuses() {
        let (tx, rx) = channel::<Sized>(1, 1000, Towards::Worker);
        drop(rx);
        assert!(tx.send(Sized(1)).await.is_err());
        assert!(matches!(
            tx.try_send(Sized(1)),
            Err(TrySendError::Closed(_))
        ));
    }
}
