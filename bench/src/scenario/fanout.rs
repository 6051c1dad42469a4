//! `fanout`: M clients in one group and one publisher outside it that sends `pub <group>
//! <payload>` as fast as the group absorbs it → deliveries per second and delivery latency.
//!
//! "As fast as the group absorbs it" is a window: the publisher keeps at most `window`
//! broadcasts that some member has not received yet. A fixed rate would measure only
//! whether a server keeps up; an open loop would fill the send queues until the server cuts
//! members off as slow readers. Each payload carries its sequence number and the time it was
//! sent, so a member knows the latency and which broadcast it completes.
//!
//! Against a cluster run (`--gateways`, [`Running::cluster`]) the members are spread over
//! every gateway or all on the first ([`Spread`]), and each gateway's `/metrics` tells how
//! many commands it received in the window, over worker-host links or over NATS: in
//! register-mesh mode every gateway receives every broadcast, in NATS mode only the gateways
//! holding a member do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::{REPLY_TIMEOUT, Window, answer, connect_all, cpu_per};
use crate::client::{Client, Proto};
use crate::driver::{self, Handler, Out};
use crate::stats::{self, Figure, Histogram};
use crate::target::Running;

/// The group every member joins.
const GROUP: &str = "bench";

/// Broadcasts tracked at once; more than any sensible window.
const RING: usize = 1024;

/// Where the members connect in a run with several gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Spread {
    /// Round-robin over every gateway.
    All,
    /// All on the first gateway (with the publisher): the others hold no member.
    One,
}

/// The parameters of a `fanout` run.
#[derive(Debug, Clone, Copy)]
pub struct Fanout {
    /// Group members.
    pub members: usize,
    /// Broadcasts in flight at most.
    pub window: usize,
    /// Payload bytes per broadcast (at least 26: sequence number and timestamp).
    pub payload: usize,
    /// Where the members connect.
    pub spread: Spread,
    /// Unmeasured time first.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// The client's event loops.
    pub threads: usize,
}

/// One event loop's members.
struct Member {
    progress: Arc<Progress>,
    window: Window,
    origin: Instant,
    delivered: u64,
    latency: Histogram,
}

impl Handler for Member {
    fn start(&mut self, _: usize, _: &mut Out<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    fn message(
        &mut self,
        _: usize,
        payload: &[u8],
        now: Instant,
        _: &mut Out<'_>,
    ) -> anyhow::Result<()> {
        let (seq, sent) = stamp(payload)?;
        self.progress.received(seq);
        if self.window.contains(now) {
            self.delivered += 1;
            let micros = (now - self.origin).as_micros() as u64;
            stats::record(&mut self.latency, micros.saturating_sub(sent));
        }
        Ok(())
    }
}

/// How far the members have got, shared by them and the publisher.
struct Progress {
    /// Members that received each broadcast of the ring.
    received: Vec<AtomicUsize>,
    /// Broadcasts every member has received.
    completed: AtomicU64,
    /// Wakes the publisher when a broadcast completes.
    wake: Notify,
    members: usize,
}

impl Progress {
    fn received(&self, seq: u64) {
        let slot = &self.received[seq as usize % RING];
        if slot.fetch_add(1, Ordering::AcqRel) + 1 == self.members {
            slot.store(0, Ordering::Release);
            self.completed.fetch_add(1, Ordering::AcqRel);
            self.wake.notify_one();
        }
    }
}

impl Fanout {
    /// One run against `running`.
    pub async fn run(&self, running: &Running, proto: Proto) -> anyhow::Result<Vec<Figure>> {
        ensure!(self.window < RING, "the window must be below {RING}");
        let addrs = match self.spread {
            Spread::All => &running.addrs[..],
            Spread::One => &running.addrs[..1],
        };
        let mut members = connect_all(addrs, proto, self.members, None).await?;
        let mut joins = JoinSet::new();
        for mut member in members.drain(..) {
            joins.spawn(async move {
                member.send(format!("join {GROUP}").as_bytes()).await?;
                let reply = answer(&mut member).await?;
                ensure!(
                    reply == format!("joined {GROUP}"),
                    "join answered {reply:?}"
                );
                Ok::<_, anyhow::Error>(member)
            });
        }
        while let Some(joined) = joins.join_next().await {
            members.push(joined??);
        }
        let publisher = Client::connect(running.addrs[0], proto, None).await?;
        let progress = Arc::new(Progress {
            received: (0..RING).map(|_| AtomicUsize::new(0)).collect(),
            completed: AtomicU64::new(0),
            wake: Notify::new(),
            members: self.members,
        });
        let origin = Instant::now();
        let window = Window::after(self.warmup, self.duration);
        let cpu = window.cpu_of(running);
        let commands = commands_received(running.metrics.clone(), window);
        let loops = driver::drive(members, self.threads, window.end, |_| Member {
            progress: progress.clone(),
            window,
            origin,
            delivered: 0,
            latency: stats::histogram(),
        });
        let (published, loops) =
            tokio::join!(publish(publisher, &progress, self, window, origin), loops);
        published?;
        let mut delivered = 0;
        let mut latency = stats::histogram();
        for done in loops? {
            delivered += done.delivered;
            latency.add(&done.latency)?;
        }
        let cpu = cpu.await??;
        let commands = commands.await?;
        let mut figures =
            vec![Figure::new("deliveries/s", delivered as f64 / window.seconds()).target("≥ 1.3×")];
        figures.extend(cpu_per("delivery", cpu, delivered, Some("≤ 0.8×")));
        figures.extend(stats::latencies(&latency, None));
        if !commands.is_empty() {
            let broadcasts = delivered as f64 / self.members as f64;
            figures.push(Figure::new("broadcasts/s", broadcasts / window.seconds()));
            for (i, received) in commands.into_iter().enumerate() {
                figures.push(Figure::new(
                    format!("gw{i} commands in/s"),
                    received / window.seconds(),
                ));
            }
        }
        Ok(figures)
    }
}

/// How many commands each gateway whose `/metrics` is at `metrics` received inside `window`,
/// over worker-host links and over NATS, read from its counters at both ends; in a task of
/// its own, like [`Window::cpu_of`].
fn commands_received(
    metrics: Vec<SocketAddr>,
    window: Window,
) -> tokio::task::JoinHandle<Vec<f64>> {
    async fn read(metrics: &[SocketAddr]) -> Vec<f64> {
        let mut counts = Vec::new();
        for (i, &addr) in metrics.iter().enumerate() {
            let scrape = wasmgate_tests::prometheus::scrape(addr).await;
            let gateway = format!("gw{i}");
            let label = [("gateway", gateway.as_str())];
            counts.push(
                scrape.count("wasmgate_link_commands_received_total", &label)
                    + scrape.count("wasmgate_nats_commands_received_total", &label),
            );
        }
        counts
    }
    tokio::spawn(async move {
        tokio::time::sleep_until(window.start.into()).await;
        let before = read(&metrics).await;
        tokio::time::sleep_until(window.end.into()).await;
        let after = read(&metrics).await;
        after.iter().zip(&before).map(|(a, b)| a - b).collect()
    })
}

/// Publishes broadcasts until the window ends, never more than `window` ahead of the
/// slowest member.
async fn publish(
    mut publisher: Client,
    progress: &Progress,
    params: &Fanout,
    window: Window,
    origin: Instant,
) -> anyhow::Result<()> {
    let mut message = Vec::with_capacity(params.payload + 16);
    for seq in 0u64.. {
        loop {
            let woken = progress.wake.notified();
            if seq < progress.completed.load(Ordering::Acquire) + params.window as u64 {
                break;
            }
            // Members stop reading when the window ends: stop waiting for them then too.
            let now = Instant::now();
            if now >= window.end {
                return Ok(());
            }
            let until = (now + REPLY_TIMEOUT).min(window.end);
            if tokio::time::timeout_at(until.into(), woken).await.is_err() && until < window.end {
                bail!("a broadcast did not reach every member within {REPLY_TIMEOUT:?}");
            }
        }
        if Instant::now() >= window.end {
            return Ok(());
        }
        message.clear();
        let sent = (Instant::now() - origin).as_micros();
        message.extend_from_slice(format!("pub {GROUP} {seq:010} {sent:015} ").as_bytes());
        message.resize(GROUP.len() + 5 + params.payload.max(27), b'x');
        publisher.send(&message).await?;
    }
    Ok(())
}

/// The sequence number and send time (µs since the run's origin) a broadcast carries.
fn stamp(payload: &[u8]) -> anyhow::Result<(u64, u64)> {
    let text = std::str::from_utf8(payload.get(..26).context("a short broadcast")?)?;
    Ok((text[..10].parse()?, text[11..26].parse()?))
}

#[cfg(test)]
mod tests {
    use super::stamp;

    #[test]
    fn stamps_round_trip() {
        let payload = format!("{:010} {:015} xxxx", 42, 1_234_567);
        assert_eq!(stamp(payload.as_bytes()).unwrap(), (42, 1_234_567));
        assert!(stamp(b"short").is_err());
    }
}
