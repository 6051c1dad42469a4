//! `echo`: C clients in a closed loop, each sending `echo <payload>` and waiting for the
//! payload to come back before sending again → messages per second and round-trip latency.

use std::time::Duration;

use anyhow::ensure;
use tokio::task::JoinSet;

use super::{Window, answer, connect_all, cpu_per, padded};
use crate::client::Proto;
use crate::stats::{self, Figure, Histogram};
use crate::target::{Layout, Running};

/// The parameters of an `echo` run.
#[derive(Debug, Clone, Copy)]
pub struct Echo {
    /// Clients, each with one message in flight.
    pub clients: usize,
    /// Payload bytes per message.
    pub payload: usize,
    /// Unmeasured time first, so connections and caches are warm.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
}

impl Echo {
    /// One run against `running`; issue 14's targets depend on wasmgate's `layout`.
    pub async fn run(
        &self,
        running: &Running,
        proto: Proto,
        layout: Layout,
    ) -> anyhow::Result<Vec<Figure>> {
        let clients = connect_all(&running.addrs, proto, self.clients, None).await?;
        let message = padded("echo ", self.payload);
        let payload = self.payload;
        let window = Window::after(self.warmup, self.duration);
        let cpu = window.cpu_of(running);
        let mut tasks = JoinSet::new();
        for mut client in clients {
            let message = message.clone();
            tasks.spawn(async move {
                let mut latency = stats::histogram();
                let mut answered = 0u64;
                loop {
                    let sent = std::time::Instant::now();
                    if sent >= window.end {
                        break;
                    }
                    client.send(&message).await?;
                    let reply = answer(&mut client).await?;
                    ensure!(reply.len() == payload, "a reply of {} bytes", reply.len());
                    if window.contains(sent) {
                        answered += 1;
                        stats::record(&mut latency, sent.elapsed().as_micros() as u64);
                    }
                }
                Ok::<_, anyhow::Error>((answered, latency))
            });
        }
        let (answered, latency) = gather(tasks).await?;
        let cpu = cpu.await??;
        // Issue 14's targets; its CPU target is for the single process.
        let (throughput, cpu_target) = match layout {
            Layout::Single => ("≥ 0.8×", Some("≤ 1.3×")),
            Layout::Split => ("≥ 0.6×", None),
        };
        let mut figures =
            vec![Figure::new("msgs/s", answered as f64 / window.seconds()).target(throughput)];
        figures.extend(cpu_per("msg", cpu, answered, cpu_target));
        figures.extend(stats::latencies(&latency, Some("≤ 2×")));
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
