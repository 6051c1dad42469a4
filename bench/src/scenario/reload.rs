//! `reload`: hot reload under `echo` load → how long after the new file lands the new
//! version answers, and how many messages went unanswered.
//!
//! The reference plugin answers `echo <payload>` with the payload; the `echo` example
//! plugin answers every message with the message itself, so a reply says which version
//! served it. The run deploys `echo` (never compiled before: a cold reload), then the
//! reference plugin again (compiled at start, so in the runtime's cache: a cached reload),
//! each written aside and renamed into place. The baseline has no plugins: it runs the same
//! load for the same phases, so the throughput during reloads still has a ratio.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::task::JoinSet;

use super::{connect_all, padded};
use crate::client::Proto;
use crate::stats::Figure;
use crate::target::{self, Running, Server};

/// A message not answered within this is counted lost.
const LOST_AFTER: Duration = Duration::from_secs(5);

/// Longest a new version may take to answer before the run fails.
const RELOAD_LIMIT: Duration = Duration::from_secs(30);

/// The parameters of a `reload` run.
#[derive(Debug, Clone, Copy)]
pub struct Reload {
    /// Clients under `echo` load.
    pub clients: usize,
    /// Payload bytes per message.
    pub payload: usize,
    /// Steady load before, between and after the two reloads.
    pub settle: Duration,
}

/// Which version the run waits for, and when a client first saw it answer.
struct Watch {
    /// 0: none; 1: the `echo` example; 2: the reference plugin.
    awaited: AtomicU8,
    /// When the awaited version first answered, in µs since `origin`; 0 until then.
    seen: AtomicU64,
    stop: AtomicBool,
    origin: Instant,
}

impl Watch {
    /// Notes a reply that came from the `echo` example (`prefixed`) or the reference plugin.
    fn answered(&self, prefixed: bool) {
        let version = if prefixed { 1 } else { 2 };
        if self.awaited.load(Ordering::Acquire) == version {
            let now = (self.origin.elapsed().as_micros() as u64).max(1);
            let _ = self
                .seen
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Deploys `plugin` as `version` and returns how long until it first answered.
    async fn reload(
        &self,
        running: &Running,
        plugin: &str,
        version: u8,
    ) -> anyhow::Result<Duration> {
        self.seen.store(0, Ordering::Release);
        self.awaited.store(version, Ordering::Release);
        target::deploy(&running.plugins(), plugin)?;
        let landed = self.origin.elapsed();
        let deadline = Instant::now() + RELOAD_LIMIT;
        loop {
            let seen = self.seen.load(Ordering::Acquire);
            if seen != 0 {
                self.awaited.store(0, Ordering::Release);
                return Ok(Duration::from_micros(seen).saturating_sub(landed));
            }
            if Instant::now() > deadline {
                bail!("{plugin} never answered within {RELOAD_LIMIT:?} of landing");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Reload {
    /// One run against `running`.
    pub async fn run(
        &self,
        running: &Running,
        proto: Proto,
        server: Server,
    ) -> anyhow::Result<Vec<Figure>> {
        let clients = connect_all(&running.addrs, proto, self.clients, None).await?;
        let watch = Arc::new(Watch {
            awaited: AtomicU8::new(0),
            seen: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            origin: Instant::now(),
        });
        let mut tasks = JoinSet::new();
        for mut client in clients {
            let watch = watch.clone();
            let filler = padded("", self.payload);
            tasks.spawn(async move {
                let (mut answered, mut lost) = (0u64, 0u64);
                let mut message = Vec::new();
                for seq in 0u64.. {
                    if watch.stop.load(Ordering::Acquire) {
                        break;
                    }
                    let body = format!("{seq:010} ");
                    message.clear();
                    message.extend_from_slice(b"echo ");
                    message.extend_from_slice(body.as_bytes());
                    message.extend_from_slice(&filler);
                    client.send(&message).await?;
                    // Skip answers that come after they were counted lost.
                    let wait = async {
                        loop {
                            let reply = client.recv().await?;
                            let prefixed = reply.starts_with(b"echo ");
                            let rest = if prefixed { &reply[5..] } else { &reply[..] };
                            if rest.starts_with(body.as_bytes()) {
                                return Ok::<_, std::io::Error>(prefixed);
                            }
                        }
                    };
                    match tokio::time::timeout(LOST_AFTER, wait).await {
                        Ok(prefixed) => {
                            watch.answered(prefixed.context("the connection failed")?);
                            answered += 1;
                        }
                        Err(_) => lost += 1,
                    }
                }
                Ok::<_, anyhow::Error>((answered, lost))
            });
        }
        let started = Instant::now();
        let mut figures = Vec::new();
        tokio::time::sleep(self.settle).await;
        if let Server::Wasmgate(_) = server {
            let cold = watch
                .reload(running, wasmgate_tests::plugins::ECHO, 1)
                .await?;
            tokio::time::sleep(self.settle).await;
            let cached = watch
                .reload(running, wasmgate_tests::plugins::COMMANDS, 2)
                .await?;
            figures.push(Figure::new("cold reload ms", millis(cold)).target("≤ 1000 ms"));
            figures.push(Figure::new("cached reload ms", millis(cached)).target("≤ 100 ms"));
        } else {
            tokio::time::sleep(self.settle).await;
        }
        tokio::time::sleep(self.settle).await;
        watch.stop.store(true, Ordering::Release);
        let elapsed = started.elapsed().as_secs_f64();
        let (mut answered, mut lost) = (0, 0);
        while let Some(done) = tasks.join_next().await {
            let (a, l) = done??;
            answered += a;
            lost += l;
        }
        figures.push(Figure::new("lost", lost as f64).target("0"));
        figures.insert(0, Figure::new("msgs/s", answered as f64 / elapsed));
        Ok(figures)
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
