//! The client heartbeat, with GatewayWorker's exact semantics (`ping_interval`,
//! `ping_not_response_limit`, `ping_data`), so operators and client code ported from it see the
//! same timing.
//!
//! Each connection counts the ticks since its client last sent a complete message (only
//! application messages count: WebSocket pongs do not, as in GatewayWorker). The tick period
//! is `ping_interval / 2` when a limit is set, otherwise `ping_interval`. On each tick:
//! 1. with a limit `L > 0`, a counter that reached `2·L` destroys the connection (no flush);
//! 2. otherwise the counter goes up by one;
//! 3. a ping is sent unless the client spoke during the last period (counter 0), or a limit is
//!    set and the counter is odd — so pings go out every `ping_interval`.
//!
//! A silent client is therefore dropped between `(L + ½)·I` and `(L + 1)·I` after its last
//! message; limit 0 never drops anyone and only pings. GatewayWorker runs one timer per
//! process, so a connection's first tick falls anywhere in the period; here each connection
//! ticks on its own from its start, which keeps that same window.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::outbox::Outbound;

/// What the heartbeat sends, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ping {
    /// Nothing: the server only checks liveness.
    Silent,
    /// `ping_data` as an ordinary message, encoded by the client's protocol.
    Data(Bytes),
    /// A WebSocket ping frame carrying `ping_data` (WebSocket listeners with `ping_frame`).
    Frame(Bytes),
}

/// One listener's heartbeat settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// `ping_interval`; zero turns the heartbeat off.
    pub interval: Duration,
    /// `ping_not_response_limit`; zero never disconnects.
    pub limit: u32,
    /// What a ping is.
    pub ping: Ping,
}

/// What a tick asks the connection to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Beat {
    /// Nothing this time.
    Wait,
    /// Send this.
    Send(Outbound),
    /// The client was silent too long: drop it.
    Destroy,
}

/// One connection's heartbeat.
pub struct Heartbeat {
    config: HeartbeatConfig,
    /// Ticks since the client last spoke, starting at −1 as in GatewayWorker.
    silent: i64,
    timer: Option<Interval>,
}

impl Heartbeat {
    /// A heartbeat whose first tick is one period from now; none when the interval is zero.
    pub fn start(config: &HeartbeatConfig) -> Self {
        let timer = config.period().map(|period| {
            let mut timer = tokio::time::interval_at(Instant::now() + period, period);
            // A late tick (a loaded machine) must not be followed by a burst that would
            // destroy a client for the gateway's delay.
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
            timer
        });
        Self {
            config: config.clone(),
            silent: -1,
            timer,
        }
    }

    /// The client sent a complete message.
    pub fn heard(&mut self) {
        self.silent = -1;
    }

    /// Waits for the next tick and says what to do; never resolves when the heartbeat is off.
    pub async fn tick(&mut self) -> Beat {
        match &mut self.timer {
            Some(timer) => {
                timer.tick().await;
                self.beat()
            }
            None => std::future::pending().await,
        }
    }

    fn beat(&mut self) -> Beat {
        let limit = i64::from(self.config.limit);
        if limit > 0 && self.silent >= 2 * limit {
            return Beat::Destroy;
        }
        self.silent += 1;
        if self.silent == 0 || (limit > 0 && self.silent % 2 == 1) {
            return Beat::Wait;
        }
        match &self.config.ping {
            Ping::Silent => Beat::Wait,
            Ping::Data(data) => Beat::Send(Outbound::Data(data.clone())),
            Ping::Frame(data) => Beat::Send(Outbound::Ping(data.clone())),
        }
    }
}

impl HeartbeatConfig {
    /// The tick period, or none when the heartbeat is off.
    fn period(&self) -> Option<Duration> {
        if self.interval.is_zero() {
            None
        } else if self.limit > 0 {
            Some(self.interval / 2)
        } else {
            Some(self.interval)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(limit: u32, ping: Ping) -> Heartbeat {
        Heartbeat {
            config: HeartbeatConfig {
                interval: Duration::from_secs(10),
                limit,
                ping,
            },
            silent: -1,
            timer: None,
        }
    }

    fn beats(h: &mut Heartbeat, n: usize) -> Vec<Beat> {
        (0..n).map(|_| h.beat()).collect()
    }

    const DATA: Bytes = Bytes::from_static(b"ping");

    #[test]
    fn limit_one_destroys_on_the_fourth_half_interval_and_pings_once_before() {
        let mut h = heartbeat(1, Ping::Data(DATA));
        let ping = Beat::Send(Outbound::Data(DATA));
        assert_eq!(
            beats(&mut h, 4),
            [Beat::Wait, Beat::Wait, ping, Beat::Destroy]
        );
    }

    #[test]
    fn a_message_resets_the_count() {
        let mut h = heartbeat(1, Ping::Silent);
        for _ in 0..10 {
            assert_eq!(beats(&mut h, 3), vec![Beat::Wait; 3]);
            h.heard();
        }
        assert_eq!(beats(&mut h, 4)[3], Beat::Destroy);
    }

    #[test]
    fn limit_zero_pings_every_interval_after_the_first_and_never_destroys() {
        let mut h = heartbeat(0, Ping::Frame(DATA));
        let ping = Beat::Send(Outbound::Ping(DATA));
        let mut expected = vec![Beat::Wait];
        expected.extend(std::iter::repeat_n(ping.clone(), 99));
        assert_eq!(beats(&mut h, 100), expected);
        h.heard();
        assert_eq!(beats(&mut h, 2), [Beat::Wait, ping]);
    }

    #[test]
    fn limit_three_pings_every_interval_and_destroys_after_six_half_intervals() {
        let mut h = heartbeat(3, Ping::Data(DATA));
        let ping = Beat::Send(Outbound::Data(DATA));
        assert_eq!(
            beats(&mut h, 8),
            [
                Beat::Wait,
                Beat::Wait,
                ping.clone(),
                Beat::Wait,
                ping.clone(),
                Beat::Wait,
                ping,
                Beat::Destroy
            ]
        );
    }

    #[test]
    fn periods_follow_gatewayworker() {
        let config = |secs, limit| HeartbeatConfig {
            interval: Duration::from_secs(secs),
            limit,
            ping: Ping::Silent,
        };
        assert_eq!(config(0, 1).period(), None);
        assert_eq!(config(10, 0).period(), Some(Duration::from_secs(10)));
        assert_eq!(config(10, 2).period(), Some(Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_start_one_period_after_the_start() {
        let config = HeartbeatConfig {
            interval: Duration::from_secs(10),
            limit: 1,
            ping: Ping::Silent,
        };
        let started = Instant::now();
        let mut h = Heartbeat::start(&config);
        let mut last = Beat::Wait;
        while last != Beat::Destroy {
            last = h.tick().await;
        }
        assert_eq!(started.elapsed(), Duration::from_secs(20));
    }
}
