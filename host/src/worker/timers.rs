//! The `timers` import: intervals and timeouts that fire `on-timer(id)` on the instance that
//! set them.
//!
//! Each timer is a tokio task that sends its id into the owning instance's bounded channel; the
//! instance's driver delivers it as an `on-timer` call between client events, so a timer never
//! runs concurrently with another callback of that instance. Dropping [`Timers`] (the instance
//! was replaced, trapped or stopped) cancels every timer it set.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

/// Ticks an instance may have waiting before interval tasks wait for it (and skip ticks).
pub const PENDING_TICKS: usize = 16;

/// The timers of one plugin instance.
pub struct Timers {
    next_id: u64,
    running: HashMap<u64, Timer>,
    fired: mpsc::Sender<u64>,
    caps: TimerCaps,
}

/// What one instance may ask of the timers.
#[derive(Debug, Clone, Copy)]
pub struct TimerCaps {
    /// Most timers set and not yet fired (timeouts) or cancelled (intervals).
    pub max_timers: usize,
    /// Shortest interval; shorter ones are stretched to it.
    pub min_interval: Duration,
}

/// A timer refused.
#[derive(Debug, thiserror::Error)]
#[error("cannot set a timer: {0} timers already set (max_timers)")]
pub struct TooManyTimers(pub usize);

struct Timer {
    task: AbortHandle,
    one_shot: bool,
}

impl Timers {
    /// Timers that report firing ids on `fired`, within `caps`.
    pub fn new(fired: mpsc::Sender<u64>, caps: TimerCaps) -> Self {
        Self {
            next_id: 1,
            running: HashMap::new(),
            fired,
            caps,
        }
    }

    /// Starts a timer firing every `period` (at least `min_interval`); returns its id.
    pub fn set_interval(&mut self, period: Duration) -> Result<u64, TooManyTimers> {
        let period = period
            .max(self.caps.min_interval)
            .max(Duration::from_millis(1));
        self.start(false, move |id, fired| async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            // A busy instance gets the next tick, not a burst of the ones it missed.
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                ticks.tick().await;
                if fired.send(id).await.is_err() {
                    return;
                }
            }
        })
    }

    /// Starts a timer firing once after `delay`; returns its id.
    pub fn set_timeout(&mut self, delay: Duration) -> Result<u64, TooManyTimers> {
        self.start(true, move |id, fired| async move {
            tokio::time::sleep(delay).await;
            let _ = fired.send(id).await;
        })
    }

    /// Cancels a timer; unknown ids are ignored.
    pub fn cancel(&mut self, id: u64) {
        if let Some(timer) = self.running.remove(&id) {
            timer.task.abort();
        }
    }

    /// Notes that `id` fired; returns false if it was cancelled meanwhile (the tick is then
    /// not delivered). A one-shot timer is forgotten.
    pub fn fired(&mut self, id: u64) -> bool {
        match self.running.get(&id) {
            Some(timer) if timer.one_shot => {
                self.running.remove(&id);
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    fn start<F, Fut>(&mut self, one_shot: bool, run: F) -> Result<u64, TooManyTimers>
    where
        F: FnOnce(u64, mpsc::Sender<u64>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.running.len() >= self.caps.max_timers {
            return Err(TooManyTimers(self.running.len()));
        }
        let id = self.next_id;
        self.next_id += 1;
        let task = tokio::spawn(run(id, self.fired.clone())).abort_handle();
        self.running.insert(id, Timer { task, one_shot });
        Ok(id)
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        for timer in self.running.values() {
            timer.task.abort();
        }
    }
}
