//! Timeouts that cost nothing when the work is done at once.
//!
//! A tokio timeout inserts a timer into the runtime's wheel and takes it out again. That
//! showed in the per-message profile when every plugin callback and every link write carried
//! one, yet most of them finish in their first poll: those get no timer at all.
//!
//! It is a future of its own, not an `async fn`: an `async fn` that awaits the work it is
//! handed keeps the work twice in its state (the argument, and what it awaits), and a
//! plugin callback's future is kilobytes, copied on every event.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};

/// The work ran past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// The future of [`until`].
    pub struct Until<F> {
        #[pin]
        work: F,
        deadline: Instant,
        // Boxed: made only for work that did not finish in its first poll.
        timer: Option<Pin<Box<Sleep>>>,
    }
}

/// Runs `work` until `deadline`, arming the timer only if its first poll does not finish it.
pub fn until<F: Future>(deadline: Instant, work: F) -> Until<F> {
    Until {
        work,
        deadline,
        timer: None,
    }
}

impl<F: Future> Future for Until<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(done) = this.work.poll(cx) {
            return Poll::Ready(Ok(done));
        }
        let deadline = *this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn work_done_at_once_or_in_time_is_returned() {
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(until(deadline, async { 7 }).await, Ok(7));
        let later = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            8
        };
        assert_eq!(until(deadline, later).await, Ok(8));
    }

    #[tokio::test(start_paused = true)]
    async fn the_work_is_held_once() {
        let work = async {
            let block = [1u8; 4096];
            tokio::task::yield_now().await;
            block.len()
        };
        let work_size = std::mem::size_of_val(&work);
        let cut = until(Instant::now() + Duration::from_secs(1), work);
        let size = std::mem::size_of_val(&cut);
        assert!(size < work_size + 64, "{size} bytes around {work_size}");
        assert_eq!(cut.await, Ok(4096));
    }

    #[tokio::test(start_paused = true)]
    async fn work_past_the_deadline_is_cut() {
        let deadline = Instant::now() + Duration::from_secs(1);
        let slow = tokio::time::sleep(Duration::from_secs(2));
        assert!(until(deadline, slow).await.is_err());
        assert_eq!(Instant::now(), deadline);
    }
}
