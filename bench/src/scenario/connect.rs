//! `connect`: K connectors, each in a loop: connect, complete the handshake, send one `echo`
//! and wait for it, close → connections per second and the time each took.
//!
//! The echo is what makes the figure honest: wasmgate answers it only after `on-connect`
//! has run in the plugin (a client's events are delivered in order), so a connection counts
//! once the whole server has taken it in, not when the kernel accepted it.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tokio::task::JoinSet;

use super::{REPLY_TIMEOUT, Window, answer, cpu_per};
use crate::client::{Client, Proto};
use crate::stats::{self, Figure, Histogram};
use crate::target::Running;

/// The parameters of a `connect` run.
#[derive(Debug, Clone, Copy)]
pub struct Connect {
    /// Connections being opened at once.
    pub concurrency: usize,
    /// Unmeasured time first.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
}

impl Connect {
    /// One run against `running`.
    pub async fn run(&self, running: &Running, proto: Proto) -> anyhow::Result<Vec<Figure>> {
        let window = Window::after(self.warmup, self.duration);
        let cpu = window.cpu_of(running);
        let mut tasks = JoinSet::new();
        for i in 0..self.concurrency {
            let addr = running.addrs[i % running.addrs.len()];
            tasks.spawn(async move {
                let mut latency = stats::histogram();
                let mut connected = 0u64;
                loop {
                    let start = Instant::now();
                    if start >= window.end {
                        break;
                    }
                    let mut client =
                        tokio::time::timeout(REPLY_TIMEOUT, Client::connect(addr, proto, None))
                            .await
                            .context("connect timed out")??;
                    client.send(b"echo hi").await?;
                    let reply = answer(&mut client).await?;
                    ensure!(reply == "hi", "echo answered {reply:?}");
                    drop(client);
                    if window.contains(start) {
                        connected += 1;
                        stats::record(&mut latency, start.elapsed().as_micros() as u64);
                    }
                }
                Ok::<_, anyhow::Error>((connected, latency))
            });
        }
        let (connected, latency) = gather(tasks).await?;
        let cpu = cpu.await??;
        let mut figures =
            vec![Figure::new("conns/s", connected as f64 / window.seconds()).target("≥ 1.0×")];
        figures.extend(cpu_per("conn", cpu, connected, None));
        figures.extend(stats::latencies(&latency, None));
        Ok(figures)
    }
}

/// Sums the counts and merges the histograms of every client task.
pub async fn gather(
    mut tasks: JoinSet<anyhow::Result<(u64, Histogram)>>,
) -> anyhow::Result<(u64, Histogram)> {
    let mut total = 0;
    let mut merged = stats::histogram();
    while let Some(done) = tasks.join_next().await {
        let (n, h) = done??;
        total += n;
        merged.add(&h)?;
    }
    Ok((total, merged))
}
