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
use tokio::time::Instant;

use super::outbox::Outbound;

/// How late a tick may run and the next still keep the schedule; a later one moves it (as
/// tokio's `MissedTickBehavior::Delay` does past the same margin).
const LATE: Duration = Duration::from_millis(5);

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

/// One connection's heartbeat: its count and when it next ticks. The connection keeps the
/// timer (one for its heartbeat and its `idle_timeout` together) and the listener the
/// settings, so this is all a connection holds for it.
pub struct Heartbeat {
    /// Ticks since the client last spoke, starting at −1 as in GatewayWorker.
    silent: i64,
    /// When the next tick is due; none when the heartbeat is off.
    next: Option<Instant>,
}

impl Heartbeat {
    /// A heartbeat whose first tick is one period after `now`; off when the interval is zero.
    pub fn start(config: &HeartbeatConfig, now: Instant) -> Self {
        Self {
            silent: -1,
            next: config.period().map(|period| now + period),
        }
    }

    /// The client sent a complete message.
    pub fn heard(&mut self) {
        self.silent = -1;
    }

    /// When the next tick is due; never when the heartbeat is off.
    pub fn next(&self) -> Option<Instant> {
        self.next
    }

    /// Runs the tick due by `now`, if one is, and says what to do. The next tick is due one
    /// period after this one, or one period after `now` if this one ran late: a late tick (a
    /// loaded machine) must not be followed by a burst that would destroy a client for the
    /// gateway's delay.
    pub fn tick(&mut self, config: &HeartbeatConfig, now: Instant) -> Option<Beat> {
        let due = self.next.filter(|due| *due <= now)?;
        let period = config.period()?;
        let late = now.saturating_duration_since(due) > LATE;
        self.next = Some(if late { now + period } else { due + period });
        Some(self.beat(config))
    }

    fn beat(&mut self, config: &HeartbeatConfig) -> Beat {
        let limit = i64::from(config.limit);
        if limit > 0 && self.silent >= 2 * limit {
            return Beat::Destroy;
        }
        self.silent += 1;
        if self.silent == 0 || (limit > 0 && self.silent % 2 == 1) {
            return Beat::Wait;
        }
        match &config.ping {
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

    /// Settings of `interval_secs` and `limit` that ping silently.
    fn silent(interval_secs: u64, limit: u32) -> HeartbeatConfig {
        HeartbeatConfig {
            interval: Duration::from_secs(interval_secs),
            limit,
            ping: Ping::Silent,
        }
    }

    /// A heartbeat with its settings, ticked by hand.
    struct Ticked(Heartbeat, HeartbeatConfig);

    impl Ticked {
        fn heard(&mut self) {
            self.0.heard();
        }
    }

    fn heartbeat(limit: u32, ping: Ping) -> Ticked {
        let config = HeartbeatConfig {
            interval: Duration::from_secs(10),
            limit,
            ping,
        };
        Ticked(Heartbeat::start(&config, Instant::now()), config)
    }

    fn beats(h: &mut Ticked, n: usize) -> Vec<Beat> {
        (0..n).map(|_| h.0.beat(&h.1)).collect()
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
        assert_eq!(silent(0, 1).period(), None);
        assert_eq!(silent(10, 0).period(), Some(Duration::from_secs(10)));
        assert_eq!(silent(10, 2).period(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn ticks_start_one_period_after_the_start_and_keep_their_schedule() {
        let config = silent(10, 1);
        let started = Instant::now();
        let mut h = Heartbeat::start(&config, started);
        let half = Duration::from_secs(5);
        assert_eq!(h.next(), Some(started + half));
        assert_eq!(h.tick(&config, started + half / 2), None, "not due yet");
        let mut destroyed = None;
        while destroyed.is_none() {
            let due = h.next().unwrap();
            // A tick a millisecond late keeps the schedule.
            let beat = h.tick(&config, due + Duration::from_millis(1)).unwrap();
            destroyed = (beat == Beat::Destroy).then_some(due);
        }
        assert_eq!(
            destroyed,
            Some(started + 4 * half),
            "limit 1: at 2 intervals"
        );
    }

    #[test]
    fn a_late_tick_moves_the_next_one_period_past_it() {
        let config = silent(10, 0);
        let started = Instant::now();
        let mut h = Heartbeat::start(&config, started);
        let late = started + Duration::from_secs(25);
        assert_eq!(h.tick(&config, late), Some(Beat::Wait));
        assert_eq!(h.next(), Some(late + Duration::from_secs(10)), "no burst");
    }

    #[test]
    fn an_interval_of_zero_never_ticks() {
        let config = silent(0, 1);
        let started = Instant::now();
        let mut h = Heartbeat::start(&config, started);
        assert_eq!(h.next(), None);
        assert_eq!(h.tick(&config, started + Duration::from_secs(3600)), None);
    }
}
