//! A link within one process whose messages are handed to the receiving end's code as they
//! are sent, in the sender's task, instead of waiting in a queue for the receiver's task.
//!
//! A queue between two tasks costs each message a push, a pop, a byte permit and, when the
//! reader sleeps, a wake-up of another task, often on the other core. Towards a worker host of
//! the gateway's own process none of that buys anything: what the worker host's end does with
//! each message (route an event to an instance's queue, note listeners, presence or kept
//! clients, answer a query's waiter) never waits. So the receiving end installs that code
//! ([`HandOff::serve`]) and every send runs it, under one lock: messages are taken in the
//! order they were sent, exactly as from a queue, and none can overtake another.
//!
//! Messages sent before the receiver serves (the gateway's listeners come first) wait in a
//! short queue of at most the count given, and are taken, in order, before any later one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use super::link_error::LinkError;

/// What the receiving end does with each message; an error ends the link.
type Take<M> = Box<dyn FnMut(M) -> Result<(), LinkError> + Send>;

/// What both ends share.
struct Shared<M> {
    state: Mutex<State<M>>,
    /// The receiving end serves: nothing waits in `early` any more.
    serving: CancellationToken,
    /// The receiving end is gone, or its code failed: senders are refused. Read by every
    /// send (and by the router for every event), so a plain flag beside the token that
    /// wakes those who wait for it, whose check takes a lock.
    over: AtomicBool,
    ended: CancellationToken,
    /// Every sender is gone.
    unsent: CancellationToken,
}

struct State<M> {
    take: Option<Take<M>>,
    /// Sent before the receiver served, oldest first.
    early: VecDeque<M>,
    /// Most messages `early` holds.
    room: usize,
    /// Why the receiving end's code failed.
    failed: Option<LinkError>,
}

impl<M> Shared<M> {
    fn lock(&self) -> MutexGuard<'_, State<M>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn end(&self) {
        self.over.store(true, Ordering::Release);
        self.ended.cancel();
    }

    fn is_over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }
}

/// A hand-off link: at most `early` messages wait until the receiver serves.
pub fn hand_off<M>(early: usize) -> (Handing<M>, HandOff<M>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            take: None,
            early: VecDeque::new(),
            room: early.max(1),
            failed: None,
        }),
        serving: CancellationToken::new(),
        over: AtomicBool::new(false),
        ended: CancellationToken::new(),
        unsent: CancellationToken::new(),
    });
    (Handing(shared.clone()), HandOff(shared))
}

/// The sending end (shared by every clone of its `LinkSender`); its drop tells the receiver
/// that nothing more will come.
pub struct Handing<M>(Arc<Shared<M>>);

impl<M> Handing<M> {
    /// Has the receiving end take `message` now (or queues it, before it serves).
    pub fn try_send(&self, message: M) -> Result<(), TrySendError<M>> {
        let mut state = self.0.lock();
        if self.0.is_over() {
            return Err(TrySendError::Closed(message));
        }
        let State {
            take,
            early,
            room,
            failed,
        } = &mut *state;
        match take {
            Some(take) => {
                if let Err(e) = take(message) {
                    *failed = Some(e);
                    self.0.end();
                }
                Ok(())
            }
            None if early.len() < *room => {
                early.push_back(message);
                Ok(())
            }
            None => Err(TrySendError::Full(message)),
        }
    }

    /// Resolves once the receiver serves or is gone: then nothing is full.
    pub async fn room(&self) {
        tokio::select! {
            () = self.0.serving.cancelled() => {}
            () = self.0.ended.cancelled() => {}
        }
    }

    /// Whether the receiving end is gone.
    pub fn is_closed(&self) -> bool {
        self.0.is_over()
    }

    /// Waits until the receiving end is gone.
    pub async fn closed(&self) {
        self.0.ended.cancelled().await
    }
}

impl<M> Drop for Handing<M> {
    fn drop(&mut self) {
        self.0.unsent.cancel();
    }
}

/// The receiving end.
pub struct HandOff<M>(Arc<Shared<M>>);

impl<M> HandOff<M> {
    /// Takes every message with `take`, in the senders' tasks from now on, those sent
    /// before first; resolves once every sender is gone, or with the error of `take`.
    pub async fn serve(
        &mut self,
        mut take: impl FnMut(M) -> Result<(), LinkError> + Send + 'static,
    ) -> Result<(), LinkError> {
        {
            let mut state = self.0.lock();
            while let Some(message) = state.early.pop_front() {
                if let Err(e) = take(message) {
                    self.0.end();
                    return Err(e);
                }
            }
            state.early = VecDeque::new();
            state.take = Some(Box::new(take));
        }
        self.0.serving.cancel();
        tokio::select! {
            () = self.0.unsent.cancelled() => Ok(()),
            () = self.0.ended.cancelled() => Err(self.0.lock().failed.take().unwrap_or(LinkError::Closed)),
        }
    }
}

impl<M> Drop for HandOff<M> {
    fn drop(&mut self) {
        self.0.end();
        let mut state = self.0.lock();
        state.take = None;
        state.early.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver's code that records what it takes and fails on `0`.
    fn recorder() -> (
        Arc<Mutex<Vec<u32>>>,
        impl FnMut(u32) -> Result<(), LinkError> + Send + 'static,
    ) {
        let taken = Arc::new(Mutex::new(Vec::new()));
        let seen = taken.clone();
        let take = move |n| {
            if n == 0 {
                return Err(LinkError::UnknownListener(0));
            }
            seen.lock().unwrap().push(n);
            Ok(())
        };
        (taken, take)
    }

    #[tokio::test]
    async fn a_message_is_taken_in_the_senders_call_after_those_sent_before_serving() {
        let (sender, mut receiver) = hand_off(2);
        sender.try_send(1).unwrap();
        sender.try_send(2).unwrap();
        assert!(matches!(sender.try_send(3), Err(TrySendError::Full(3))));
        let (taken, take) = recorder();
        let serving = receiver.serve(take);
        tokio::pin!(serving);
        // One poll installs the code; from then on no task of the receiver runs.
        assert!(futures_util::poll!(serving.as_mut()).is_pending());
        assert_eq!(*taken.lock().unwrap(), [1, 2]);
        sender.room().await;
        sender.try_send(3).unwrap();
        assert_eq!(*taken.lock().unwrap(), [1, 2, 3], "taken before the send returned");
        drop(sender);
        assert!(serving.await.is_ok(), "every sender gone ends the link");
    }

    #[tokio::test]
    async fn a_failure_of_the_receivers_code_ends_the_link_and_refuses_senders() {
        let (sender, mut receiver) = hand_off(4);
        let (taken, take) = recorder();
        let serving = receiver.serve(take);
        tokio::pin!(serving);
        assert!(futures_util::poll!(serving.as_mut()).is_pending());
        sender.try_send(0).unwrap();
        assert!(sender.is_closed());
        assert!(matches!(sender.try_send(1), Err(TrySendError::Closed(1))));
        assert!(matches!(
            serving.await,
            Err(LinkError::UnknownListener(0))
        ));
        assert!(taken.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_receiver_gone_refuses_senders() {
        let (sender, receiver) = hand_off::<u32>(4);
        sender.try_send(1).unwrap();
        drop(receiver);
        assert!(sender.is_closed());
        sender.closed().await;
        sender.room().await;
        assert!(matches!(sender.try_send(2), Err(TrySendError::Closed(2))));
    }
}
