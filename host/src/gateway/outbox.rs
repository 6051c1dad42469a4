//! A client's outbound queue, bounded in bytes: the `send_buffer` limit.
//!
//! Everything a client is sent — a plugin's reply, a broadcast, a heartbeat ping, a close —
//! is pushed here without waiting, by whoever holds the gateway state's lock, and the client's
//! connection task drains it into the socket. A push that would take the queue past its
//! budget while the connection task waits for the socket to take more does not wait and does
//! not grow the queue: it marks the client a slow reader and kills its connection. So one
//! client that stops reading costs at most its budget, and everyone else's messages keep
//! flowing.
//!
//! A queue past its budget whose writer is not waiting on the socket belongs to a client that
//! reads: its writer has just not had a CPU since a burst arrived (a link delivers a burst of
//! broadcasts in one go, and on a busy machine the writers run later). Such a queue may grow
//! to [`UNWRITTEN_FACTOR`] times its budget before the client is dropped all the same, so a
//! busy gateway does not drop healthy clients and memory stays bounded.
//!
//! The budget counts payload bytes plus [`ITEM_COST`] per queued message, so a flood of empty
//! messages is bounded too. A broadcast's payload is one shared `Bytes`, so the bytes counted
//! for a client are an upper bound of what it really pins. An empty queue always takes one
//! message, whatever its size: a client that keeps up must receive every legal message, even
//! one larger than its budget (`max_message_size` may exceed `send_buffer`), so what one
//! client can pin is [`UNWRITTEN_FACTOR`] budgets or one message, whichever is larger; a
//! client whose socket is full, one budget.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use smallvec::SmallVec;

/// What a budget charges per queued message on top of its payload: the queue slot and the
/// payload's handle.
pub const ITEM_COST: usize = 64;

/// How many budgets a queue may hold while its writer has not found the socket full.
pub const UNWRITTEN_FACTOR: usize = 4;

/// How many recipients ahead of the one it queues for a broadcast fetches the queues of:
/// enough to cover a miss to memory while as many pushes run, few enough that the fetched
/// lines are still in the cache when their turn comes.
const FETCH_AHEAD: usize = 8;

/// What a client's connection task is asked to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A message.
    Data(Bytes),
    /// A WebSocket ping frame with this payload (the heartbeat); other protocols have none
    /// and write nothing.
    Ping(Bytes),
    /// A WebSocket pong frame, the answer to a client's ping.
    Pong(Bytes),
    /// Close the connection once what was queued before is written.
    Close(Close),
}

/// Why the gateway closes a client gracefully; it picks the WebSocket close code, so that
/// protocol decision lives here once. Text and frame clients just see the socket close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// A plugin closed it (`close-client`), after sending the farewell message if any: 1000.
    Normal(Option<Bytes>),
    /// `on-websocket-connect` refused it with this reason: 1008 (policy violation).
    Rejected(String),
    /// It sent a message larger than `max_message_size` (this many bytes): 1009 (too big).
    TooLarge(usize),
    /// The gateway is stopping: 1001 (going away), so the client reconnects elsewhere.
    GoingAway,
}

impl Close {
    /// The WebSocket close code (RFC 6455 §7.4.1).
    pub fn ws_code(&self) -> u16 {
        match self {
            Close::Normal(_) => 1000,
            Close::GoingAway => 1001,
            Close::Rejected(_) => 1008,
            Close::TooLarge(_) => 1009,
        }
    }

    /// The WebSocket close reason, cut to the 123 bytes a close frame can carry.
    pub fn ws_reason(&self) -> String {
        let mut reason = match self {
            Close::Normal(_) => String::new(),
            Close::GoingAway => "server shutting down".to_owned(),
            Close::Rejected(reason) => reason.clone(),
            Close::TooLarge(limit) => format!("message larger than {limit} bytes"),
        };
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason
    }
}

/// Why a client's connection was killed (dropped at once, nothing more written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// `destroy-client`.
    Destroyed,
    /// Its queue would have exceeded `send_buffer` while its socket was full: it does not
    /// read fast enough.
    SlowReader,
    /// The gateway is stopping: the connection ends with a going-away close, not a drop.
    Stopping,
}

struct Queue {
    items: VecDeque<Outbound>,
    /// What `items` costs against the budget.
    cost: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    budget: usize,
    /// Set while the connection task waits for the socket to take a write.
    socket_full: AtomicBool,
    /// The connection task, woken by a push and by a kill: one task reads the queue, so one
    /// waker does, where a `Notify` and a cancellation token each kept a waiter list (and a
    /// token's check takes a lock).
    waker: AtomicWaker,
    /// 0 until killed, then `1 + Kill as u8` of the first kill.
    killed: AtomicU8,
}

/// The sending side, held by the gateway state.
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

/// The receiving side, owned by the connection task (which also queues its own pings and
/// pongs through it).
pub struct OutboxReader(Arc<Shared>);

/// A queue for one client holding at most `budget` bytes (see the module doc for what counts).
pub fn outbox(budget: usize) -> (Outbox, OutboxReader) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            cost: 0,
        }),
        budget,
        socket_full: AtomicBool::new(false),
        waker: AtomicWaker::new(),
        killed: AtomicU8::new(0),
    });
    (Outbox(shared.clone()), OutboxReader(shared))
}

fn cost(message: &Outbound) -> usize {
    ITEM_COST
        + match message {
            Outbound::Data(data) | Outbound::Ping(data) | Outbound::Pong(data) => data.len(),
            Outbound::Close(Close::Normal(farewell)) => farewell.as_ref().map_or(0, Bytes::len),
            Outbound::Close(_) => 0,
        }
}

impl Outbox {
    /// Queues `message` without waiting; a queue that would exceed its budget while the
    /// socket is full (or [`UNWRITTEN_FACTOR`] budgets in any case) kills the client as a
    /// slow reader instead, unless it is empty. Returns whether the message was queued.
    pub fn push(&self, message: Outbound) -> bool {
        self.0.push(message)
    }

    /// Drops the connection at once, discarding what is queued.
    pub fn destroy(&self) {
        self.0.kill(Kill::Destroyed);
    }

    /// Ends the connection because the gateway stops, discarding what is queued.
    pub fn stop(&self) {
        self.0.kill(Kill::Stopping);
    }
}

/// Queues `data` for every one of `recipients`, as [`Outbox::push`] does for one; a broadcast.
///
/// A broadcast's recipients are queues nobody has touched since their last message, so
/// each push would start with a miss to memory, and the lock it takes is a locked
/// instruction that lets no later load start before it: one push at a time, every one
/// waiting for memory. So every recipient's queue is found first (independent loads, whose
/// misses the CPU overlaps), then the queues a few recipients ahead are prefetched while the
/// current one is pushed (a prefetch is a hint that a lock does not wait for). Recipients
/// whose queues are full are killed as slow readers, as a push would. A message for a few
/// allocates nothing.
pub fn push_each<'a>(recipients: impl IntoIterator<Item = &'a Outbox>, data: Bytes) {
    let recipients = recipients.into_iter();
    // Room for the most there can be: those a look-up misses are few, and growing by
    // doubling would copy the list a dozen times on the way to ten thousand.
    let mut queues = SmallVec::<[&Shared; 4]>::with_capacity(recipients.size_hint().1.unwrap_or(0));
    queues.extend(recipients.map(|o| &*o.0));
    for ahead in queues.iter().take(FETCH_AHEAD) {
        prefetch(ahead);
    }
    // The last recipient takes `data` itself: a clone of bytes made from a `Vec` allocates
    // their shared count, which a message for one client (most of them) need not pay.
    let Some((last, others)) = queues.split_last() else {
        return;
    };
    for (i, queue) in others.iter().enumerate() {
        if let Some(ahead) = queues.get(i + FETCH_AHEAD) {
            prefetch(ahead);
        }
        queue.push(Outbound::Data(data.clone()));
    }
    last.push(Outbound::Data(data));
}

/// Asks the CPU to bring `shared`'s lines into the cache (both: it straddles a line
/// boundary as often as not); a hint that changes nothing the program sees.
#[inline(always)]
fn prefetch(shared: &Shared) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let at = std::ptr::from_ref(shared).cast::<i8>();
        // SAFETY: SSE, which has the instruction, is part of every x86_64 CPU; a prefetch
        // reads nothing the program sees and never faults, whatever address it is given
        // (`wrapping_add` makes no pointer that is used to read).
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(at);
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = shared;
}

impl OutboxReader {
    /// Wakes `waker` at the next push or kill; registered before looking
    /// ([`Self::try_recv`], [`Self::killed`]), so that none between the look and the wait is
    /// missed.
    pub fn register(&self, waker: &Waker) {
        self.0.waker.register(waker);
    }

    /// The next queued message, if one is there. A queue drained empty gives its buffer
    /// back: most clients are idle most of the time, and it would hold the capacity of the
    /// largest burst it ever took.
    pub fn try_recv(&self) -> Option<Outbound> {
        let mut queue = self.0.lock();
        let message = queue.items.pop_front()?;
        queue.cost -= cost(&message);
        if queue.items.is_empty() {
            queue.items = VecDeque::new();
        }
        Some(message)
    }

    /// Why the connection was killed, if it was: the first reason.
    pub fn killed(&self) -> Option<Kill> {
        match self.0.killed.load(Ordering::Acquire) {
            0 => None,
            2 => Some(Kill::SlowReader),
            3 => Some(Kill::Stopping),
            _ => Some(Kill::Destroyed),
        }
    }

    /// Notes whether the connection task waits for the socket to take a write: only then is
    /// a queue over its budget a slow reader's.
    pub fn socket_full(&self, full: bool) {
        // Stored only when it changes: the pushers on other threads read this line.
        if self.0.socket_full.load(Ordering::Relaxed) != full {
            self.0.socket_full.store(full, Ordering::Release);
        }
    }

    /// Queues the connection's own message (a heartbeat ping, a pong), as [`Outbox::push`].
    pub fn push(&self, message: Outbound) -> bool {
        self.0.push(message)
    }
}

impl Shared {
    fn push(&self, message: Outbound) -> bool {
        // The atomic, not a lock: a broadcast asks this once per member.
        if self.killed.load(Ordering::Acquire) != 0 {
            return false;
        }
        let cost = cost(&message);
        {
            let mut queue = self.lock();
            let after = queue.cost + cost;
            if !queue.items.is_empty()
                && after > self.budget
                && (self.socket_full.load(Ordering::Acquire)
                    || after > self.budget.saturating_mul(UNWRITTEN_FACTOR))
            {
                drop(queue);
                self.kill(Kill::SlowReader);
                return false;
            }
            queue.cost += cost;
            queue.items.push_back(message);
        }
        self.waker.wake();
        true
    }

    fn kill(&self, why: Kill) {
        let first = 1 + why as u8;
        let _ = self
            .killed
            .compare_exchange(0, first, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue is consistent between statements, so a panic elsewhere cannot corrupt it.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What an empty outbox allocates, for the per-connection budget test.
#[cfg(test)]
pub(crate) const EMPTY_OUTBOX_SIZE: usize = std::mem::size_of::<Shared>();

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Outbound {
        Outbound::Data(Bytes::from(vec![b'x'; n]))
    }

    #[test]
    fn delivers_in_order_and_frees_budget_as_it_drains() {
        let (tx, rx) = outbox(2 * (ITEM_COST + 100));
        assert!(tx.push(data(100)));
        assert!(tx.push(data(100)));
        assert_eq!(rx.try_recv(), Some(data(100)));
        assert!(
            tx.push(data(100)),
            "draining one message makes room for one"
        );
        assert_eq!(rx.try_recv(), Some(data(100)));
        assert_eq!(rx.try_recv(), Some(data(100)));
        assert_eq!(rx.try_recv(), None);
        assert_eq!(
            rx.0.lock().items.capacity(),
            0,
            "drained empty, it holds nothing"
        );
    }

    /// An outbox of `budget` whose writer waits on a full socket.
    fn socket_full(budget: usize) -> (Outbox, OutboxReader) {
        let (tx, rx) = outbox(budget);
        rx.socket_full(true);
        (tx, rx)
    }

    #[test]
    fn a_push_over_budget_kills_as_slow_reader_and_later_pushes_fail() {
        let (tx, rx) = socket_full(ITEM_COST + 100);
        assert!(tx.push(data(100)));
        assert!(!tx.push(data(1)));
        assert_eq!(rx.killed(), Some(Kill::SlowReader));
        tx.destroy();
        assert_eq!(
            rx.killed(),
            Some(Kill::SlowReader),
            "the first reason stays"
        );
        assert!(!tx.push(data(1)));
        assert!(!rx.push(data(1)), "nor does the connection's own");
    }

    #[test]
    fn a_queue_whose_writer_has_not_run_grows_to_its_factor_then_kills() {
        let (tx, rx) = outbox(ITEM_COST + 100);
        for _ in 0..UNWRITTEN_FACTOR {
            assert!(tx.push(data(100)), "a busy gateway keeps a reading client");
        }
        assert!(!tx.push(data(1)), "memory stays bounded all the same");
        assert_eq!(rx.killed(), Some(Kill::SlowReader));
    }

    #[test]
    fn a_writer_no_longer_waiting_on_the_socket_is_not_slow() {
        let (tx, rx) = socket_full(ITEM_COST + 100);
        rx.socket_full(false);
        assert!(tx.push(data(100)));
        assert!(
            tx.push(data(100)),
            "over budget, but the socket takes writes"
        );
    }

    #[test]
    fn an_empty_queue_takes_one_message_larger_than_the_budget() {
        let (tx, rx) = socket_full(ITEM_COST + 100);
        assert!(tx.push(data(1000)), "a client that keeps up gets it");
        assert_eq!(rx.try_recv(), Some(data(1000)));
        assert!(tx.push(data(1000)));
        assert!(!tx.push(data(1)), "behind by one large message is full");
        assert_eq!(rx.killed(), Some(Kill::SlowReader));
    }

    #[test]
    fn empty_messages_still_cost() {
        let (tx, rx) = socket_full(10 * ITEM_COST);
        for _ in 0..10 {
            assert!(tx.push(data(0)));
        }
        assert!(!tx.push(data(0)));
        assert_eq!(rx.killed(), Some(Kill::SlowReader));
    }

    /// A broadcast reaches every recipient once, and past the ones it fetches ahead too; a
    /// full queue among them drops that reader, not the others.
    #[test]
    fn a_broadcast_queues_for_each_and_kills_only_the_full() {
        let queues: Vec<_> = (0..3 * FETCH_AHEAD)
            .map(|_| socket_full(ITEM_COST + 100))
            .collect();
        let slow = &queues[FETCH_AHEAD + 1];
        assert!(slow.0.push(data(100)));
        push_each(queues.iter().map(|(tx, _)| tx), Bytes::from_static(b"all"));
        assert_eq!(slow.1.killed(), Some(Kill::SlowReader));
        for (i, (_, rx)) in queues.iter().enumerate() {
            if i == FETCH_AHEAD + 1 {
                continue;
            }
            assert_eq!(
                rx.try_recv(),
                Some(Outbound::Data(Bytes::from_static(b"all"))),
                "recipient {i}"
            );
            assert_eq!(rx.try_recv(), None, "recipient {i} got it once");
            assert_eq!(rx.killed(), None, "recipient {i}");
        }
    }

    /// The one registered waker hears both a push and a kill.
    #[test]
    fn a_push_and_a_kill_wake_the_connection() {
        let (tx, rx) = outbox(1024);
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        rx.register(&waker);
        assert!(tx.push(data(1)));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        rx.register(&waker);
        tx.destroy();
        assert_eq!(woken.0.load(Ordering::SeqCst), 2);
        assert_eq!(rx.killed(), Some(Kill::Destroyed));
    }

    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = Close::Rejected("é".repeat(100));
        assert_eq!(long.ws_code(), 1008);
        assert!(long.ws_reason().len() <= 123);
        assert_eq!(
            Close::TooLarge(16).ws_reason(),
            "message larger than 16 bytes"
        );
        assert_eq!(Close::TooLarge(16).ws_code(), 1009);
    }
}
