//! Marks: how a worker host learns that the commands an event's callback sent have left its
//! hands, so that the event's acknowledgement never overtakes them (ARCHITECTURE.md,
//! "Delivery").
//!
//! A path commands travel on (a link to a gateway of another process, or the NATS
//! connection) has [`Marks`]: numbered confirmations asked for after the commands were queued
//! on it, and echoed back by whoever receives them in order (the gateway; the NATS server,
//! through a subject only this process subscribes to). The port's implementations note the
//! paths a command took ([`note`]); the acknowledgement of the event whose callback sent it
//! runs the callback within [`noting`] and waits for a mark of each path noted. This lives
//! beside the port, not in one implementation of it, because both implementations note (the
//! links and `nats::publish`) and only the links park acknowledgements.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_util::FutureExt;
use tokio::sync::{Notify, watch};

/// The paths the running callback's commands went on, each with the mark its
/// acknowledgement waits for (0 until asked).
pub type Noted = Vec<(Arc<Marks>, u64)>;

tokio::task_local! {
    static NOTED: RefCell<Noted>;
}

/// Runs `work` (an event's callback) and returns its output with the paths its commands were
/// sent on ([`note`]), each once.
pub fn noting<F: Future>(work: F) -> impl Future<Output = (F::Output, Noted)> {
    // Mapped, not awaited in an `async` block, which would hold `work` twice in its state.
    let noted = work.map(|output| (output, NOTED.with(RefCell::take)));
    NOTED.scope(RefCell::default(), noted)
}

/// Notes, for the acknowledgement of the running callback, that a command went on the path
/// of `marks`; once per path and callback, so no allocation per command. A no-op outside
/// [`noting`].
pub fn note(marks: &Arc<Marks>) {
    let _ = NOTED.try_with(|noted| {
        let mut noted = noted.borrow_mut();
        if !noted.iter().any(|(known, _)| Arc::ptr_eq(known, marks)) {
            noted.push((marks.clone(), 0));
        }
    });
}

/// The marks of one path. An acknowledgement that must know that everything queued on the
/// path so far has arrived asks for a mark ([`Marks::ask`]); the path's marker, woken by
/// [`Marks::wanted`], then takes a number ([`Marks::take`]) and sends the mark behind what was
/// queued, and whoever reads the path in order echoes it ([`Marks::echo`]).
pub struct Marks {
    /// The number of the mark the marker sends next.
    next: AtomicU64,
    /// The highest mark echoed.
    echoed: AtomicU64,
    /// The path ended: nothing sent on it will be confirmed, and nobody can deliver it.
    ended: AtomicBool,
    /// A mark was asked for.
    wanted: Notify,
    /// Told whenever a mark comes back or a path ends, to every acknowledgement that waits.
    passed: Arc<watch::Sender<()>>,
}

impl Marks {
    /// The marks of a new path; echoes and its end are told on `passed`.
    pub fn new(passed: Arc<watch::Sender<()>>) -> Self {
        Self {
            next: AtomicU64::new(1),
            echoed: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            wanted: Notify::new(),
            passed,
        }
    }

    /// The mark whose echo shows that everything queued on the path until now arrived; the
    /// marker sends it after this call.
    pub fn ask(&self) -> u64 {
        let mark = self.next.load(Ordering::SeqCst);
        self.wanted.notify_one();
        mark
    }

    /// Resolves when a mark was asked for since the marker last took one.
    pub async fn wanted(&self) {
        self.wanted.notified().await;
    }

    /// The number of the mark to send now (every ask made before this call is answered by it).
    pub fn take(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst)
    }

    /// Whether a mark was sent and not echoed yet.
    pub fn outstanding(&self) -> bool {
        self.echoed.load(Ordering::Acquire) + 1 < self.next.load(Ordering::SeqCst)
    }

    /// Whether `mark` was echoed, or the path ended.
    pub fn passed(&self, mark: u64) -> bool {
        self.echoed.load(Ordering::Acquire) >= mark || self.ended()
    }

    /// Whether the path ended.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// `mark` came back: everything sent before it arrived.
    pub fn echo(&self, mark: u64) {
        self.echoed.fetch_max(mark, Ordering::AcqRel);
        self.passed.send_replace(());
    }

    /// The path ended: what waits for it waits no more.
    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.passed.send_replace(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_callback_notes_each_path_once_and_only_within_noting() {
        let passed = Arc::new(watch::channel(()).0);
        let (a, b) = (
            Arc::new(Marks::new(passed.clone())),
            Arc::new(Marks::new(passed)),
        );
        note(&a);
        let ((), noted) = noting(async {
            for marks in [&a, &b, &a] {
                note(marks);
            }
        })
        .await;
        let paths: Vec<_> = noted.iter().map(|(m, _)| Arc::as_ptr(m)).collect();
        assert_eq!(paths, vec![Arc::as_ptr(&a), Arc::as_ptr(&b)]);
    }

    #[test]
    fn a_mark_passes_when_echoed_or_when_its_path_ends() {
        let passed = Arc::new(watch::channel(()).0);
        let marks = Marks::new(passed);
        let mark = marks.ask();
        assert!(!marks.outstanding(), "asked, not sent yet");
        assert_eq!(marks.take(), mark);
        assert!(marks.outstanding() && !marks.passed(mark));
        marks.echo(mark);
        assert!(marks.passed(mark) && !marks.outstanding());
        let later = marks.ask();
        assert!(!marks.passed(later));
        marks.end();
        assert!(marks.passed(later));
    }
}
