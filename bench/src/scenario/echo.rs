//! `echo`: C clients in a closed loop, each sending `echo <payload>` and waiting for the
//! payload to come back before sending again → messages per second and round-trip latency.

use std::time::{Duration, Instant};

use anyhow::ensure;

use super::{Window, connect_all, cpu_per, padded};
use crate::client::Proto;
use crate::driver::{self, Handler, Out};
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
    /// The client's event loops.
    pub threads: usize,
}

/// One event loop's clients: each sends the message again as soon as its answer is back.
struct Loop {
    message: Vec<u8>,
    payload: usize,
    window: Window,
    /// When each connection sent its message in flight.
    sent: Vec<Instant>,
    answered: u64,
    latency: Histogram,
}

impl Loop {
    fn send(&mut self, conn: usize, out: &mut Out<'_>) -> anyhow::Result<()> {
        self.sent[conn] = Instant::now();
        Ok(out.send(&self.message)?)
    }
}

impl Handler for Loop {
    fn start(&mut self, conn: usize, out: &mut Out<'_>) -> anyhow::Result<()> {
        self.send(conn, out)
    }

    fn message(
        &mut self,
        conn: usize,
        payload: &[u8],
        now: Instant,
        out: &mut Out<'_>,
    ) -> anyhow::Result<()> {
        ensure!(
            payload.len() == self.payload,
            "a reply of {} bytes",
            payload.len()
        );
        let sent = self.sent[conn];
        if self.window.contains(sent) {
            self.answered += 1;
            stats::record(&mut self.latency, (now - sent).as_micros() as u64);
        }
        self.send(conn, out)
    }
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
        let window = Window::after(self.warmup, self.duration);
        let cpu = window.cpu_of(running);
        let message = padded("echo ", self.payload);
        let loops = driver::drive(clients, self.threads, window.end, |conns| Loop {
            message: message.clone(),
            payload: self.payload,
            window,
            sent: vec![window.start; conns],
            answered: 0,
            latency: stats::histogram(),
        })
        .await?;
        let mut answered = 0;
        let mut latency = stats::histogram();
        for done in loops {
            answered += done.answered;
            latency.add(&done.latency)?;
        }
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
