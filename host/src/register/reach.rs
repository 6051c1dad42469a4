//! Which of its registers a member is linked to: what `status` shows, and what decides
//! whether an outage is logged as an error (only when no register at all is linked).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A member's registers and, for each, since when it has been unreachable; shared by the
/// member's links (one per register) and whoever reports on the role.
#[derive(Debug, Clone)]
pub struct RegisterReach {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    /// Per register, by index: its address and, while it cannot be reached, since when.
    registers: Vec<(SocketAddr, Option<Instant>)>,
    /// Whether the current outage of every register has been logged as an error already.
    escalated: bool,
}

/// One register a member cannot reach now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable {
    /// Its address.
    pub register: SocketAddr,
    /// How long it has been unreachable.
    pub down_for: Duration,
}

/// What a member's registers look like now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReachReport {
    /// The registers it cannot reach now.
    pub unreachable: Vec<Unreachable>,
    /// How long it has reached none of its registers; `None` while one is linked (or a first
    /// attempt is still under way).
    pub none_reachable_for: Option<Duration>,
}

impl RegisterReach {
    /// The registers a member is to link to, none of them found unreachable yet.
    pub fn new(registers: Vec<SocketAddr>) -> Self {
        let registers = registers.into_iter().map(|r| (r, None)).collect();
        Self {
            inner: Arc::new(Mutex::new(State {
                registers,
                escalated: false,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a single assignment, so a panic elsewhere leaves nothing half done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The registers' addresses, in the order the member's links are numbered.
    pub(super) fn addresses(&self) -> Vec<SocketAddr> {
        self.state().registers.iter().map(|(r, _)| *r).collect()
    }

    /// Register `index` is linked; true when this ends an outage logged as an error.
    pub(super) fn linked(&self, index: usize) -> bool {
        let mut state = self.state();
        state.registers[index].1 = None;
        std::mem::take(&mut state.escalated)
    }

    /// Register `index` could not be reached, or its link was lost: unreachable since now,
    /// unless it already was.
    pub(super) fn down(&self, index: usize) {
        self.state().registers[index]
            .1
            .get_or_insert_with(Instant::now);
    }

    /// The unreachable registers, once no register has been reachable for `after` and this
    /// has not been returned yet during this outage: the moment to log it as an error.
    pub(super) fn escalate(&self, after: Duration) -> Option<ReachReport> {
        let mut state = self.state();
        let report = state.report();
        match report.none_reachable_for {
            Some(down) if down >= after && !state.escalated => {
                state.escalated = true;
                Some(report)
            }
            _ => None,
        }
    }

    /// The registers unreachable now, and how long none has been reachable.
    pub fn report(&self) -> ReachReport {
        self.state().report()
    }
}

impl State {
    fn report(&self) -> ReachReport {
        let state = self;
        let now = Instant::now();
        let unreachable: Vec<Unreachable> = state
            .registers
            .iter()
            .filter_map(|(register, since)| {
                since.map(|since| Unreachable {
                    register: *register,
                    down_for: now.duration_since(since),
                })
            })
            .collect();
        // None is reachable since the last one went down.
        let none_reachable_for = (!state.registers.is_empty()
            && unreachable.len() == state.registers.len())
        .then(|| unreachable.iter().map(|u| u.down_for).min())
        .flatten();
        ReachReport {
            unreachable,
            none_reachable_for,
        }
    }
}

impl ReachReport {
    /// The unreachable registers' addresses, comma-separated, for a log line.
    pub fn addresses(&self) -> String {
        let addresses: Vec<String> = self
            .unreachable
            .iter()
            .map(|u| u.register.to_string())
            .collect();
        addresses.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> RegisterReach {
        RegisterReach::new(vec![
            "127.0.0.1:1236".parse().unwrap(),
            "127.0.0.1:1237".parse().unwrap(),
        ])
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_escalates_only_when_no_register_is_reachable() {
        let reach = two();
        assert_eq!(reach.report(), ReachReport::default());
        reach.down(0);
        tokio::time::advance(Duration::from_secs(1)).await;
        reach.down(0);
        assert!(!reach.linked(1));
        tokio::time::advance(Duration::from_secs(10)).await;
        let report = reach.report();
        assert_eq!(report.addresses(), "127.0.0.1:1236");
        assert_eq!(
            report.unreachable[0].down_for,
            Duration::from_secs(11),
            "since its first failure"
        );
        assert_eq!(report.none_reachable_for, None, "the other is linked");
        assert_eq!(reach.escalate(Duration::from_secs(5)), None);

        reach.down(1);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            reach.report().none_reachable_for,
            Some(Duration::from_secs(3)),
            "since the last one went down"
        );
        assert_eq!(reach.escalate(Duration::from_secs(5)), None, "not yet");
        tokio::time::advance(Duration::from_secs(2)).await;
        let escalated = reach.escalate(Duration::from_secs(5)).unwrap();
        assert_eq!(escalated.addresses(), "127.0.0.1:1236,127.0.0.1:1237");
        assert_eq!(
            reach.escalate(Duration::from_secs(5)),
            None,
            "once per outage"
        );

        assert!(reach.linked(0), "the escalated outage ended");
        assert_eq!(reach.report().none_reachable_for, None);
        reach.down(0);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            reach.escalate(Duration::from_secs(5)).is_some(),
            "a new outage"
        );
    }
}
