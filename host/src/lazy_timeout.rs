//! Timeouts that cost nothing when the work is done at once.
//!
//! A tokio timeout inserts a timer into the runtime's wheel and takes it out again. That
//! showed in the per-message profile when every plugin callback and every link write carried
//! one, yet most of them finish in their first poll: those get no timer at all.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

use tokio::time::Instant;
use tokio::time::error::Elapsed;

/// Runs `work` until `deadline`, arming the timer only if its first poll does not finish it.
pub async fn until<F: Future>(deadline: Instant, work: F) -> Result<F::Output, Elapsed> {
    let mut work = pin!(work);
    if let Poll::Ready(done) = poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
        return Ok(done);
    }
    tokio::time::timeout_at(deadline, work).await
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
    async fn work_past_the_deadline_is_cut() {
        let deadline = Instant::now() + Duration::from_secs(1);
        let slow = tokio::time::sleep(Duration::from_secs(2));
        assert!(until(deadline, slow).await.is_err());
        assert_eq!(Instant::now(), deadline);
    }
}
