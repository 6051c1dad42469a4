//! `idle`: C connections that each make one `echo` round trip and then stay silent → the
//! resident memory the server needs per idle connection.
//!
//! One process may hold at most 20,000 descriptors on these machines, so the connections
//! are opened by helper processes (this binary's `idle-clients` command), each holding at
//! most `per_process` of them from a source address of its own (127.0.0.2, 127.0.0.3, …;
//! each source address has its own range of ephemeral ports). More than one server
//! process (`listeners`) is needed past about 19,000 connections for the same reason.
//!
//! The figure is the growth of the server processes' RSS from before the first connection
//! to a second after the last one answered, divided by C: the kernel's socket buffers are not
//! in it, since they are not the process's memory.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures_util::{StreamExt, TryStreamExt, stream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{REPLY_TIMEOUT, answer, connect_all};
use crate::client::Proto;
use crate::stats::Figure;
use crate::target::Running;

/// Time for the server to settle after the last connection, before its memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// Longest a helper process holds its connections if nobody tells it to stop.
const MAX_HOLD: Duration = Duration::from_secs(600);

/// Round trips run at once by a helper process before its clients go idle.
const GREETING: usize = 256;

/// The parameters of an `idle` run.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    /// Connections in total, spread evenly over the server's listeners.
    pub connections: usize,
    /// Most connections one helper process holds.
    pub per_process: usize,
}

impl Idle {
    /// One run against `running`.
    pub async fn run(&self, running: &Running, proto: Proto) -> anyhow::Result<Vec<Figure>> {
        ensure!(self.per_process > 0, "per_process must be at least 1");
        let before = running.rss()?;
        let mut helpers = Vec::new();
        let listeners = running.addrs.len();
        for (l, &addr) in running.addrs.iter().enumerate() {
            let mut share =
                self.connections / listeners + usize::from(l < self.connections % listeners);
            while share > 0 {
                let count = share.min(self.per_process);
                share -= count;
                let source = Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(helpers.len())?);
                helpers.push(Helper::start(addr, proto, count, source)?);
            }
        }
        for helper in &mut helpers {
            helper.ready().await?;
        }
        tokio::time::sleep(SETTLE).await;
        let after = running.rss()?;
        for helper in helpers {
            helper.stop().await;
        }
        let per_connection = after.saturating_sub(before) as f64 / self.connections as f64;
        Ok(vec![
            Figure::new("bytes/conn", per_connection).target("≤ 2048 B"),
            Figure::new("RSS MiB", after as f64 / (1024.0 * 1024.0)),
        ])
    }
}

/// A helper process holding idle connections.
struct Helper {
    child: Child,
    source: Ipv4Addr,
}

impl Helper {
    fn start(
        addr: SocketAddr,
        proto: Proto,
        count: usize,
        source: Ipv4Addr,
    ) -> anyhow::Result<Self> {
        let child = Command::new(std::env::current_exe()?)
            .args([
                "idle-clients",
                "--addr",
                &addr.to_string(),
                "--proto",
                proto.scheme(),
            ])
            .args([
                "--count",
                &count.to_string(),
                "--source",
                &source.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting an idle-clients helper")?;
        Ok(Self { child, source })
    }

    /// Waits until every connection of the helper has made its round trip.
    async fn ready(&mut self) -> anyhow::Result<()> {
        let stdout = self.child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut line);
        // Generous: a helper connects thousands of clients.
        let wait = REPLY_TIMEOUT * 12;
        tokio::time::timeout(wait, read).await.with_context(|| {
            format!("idle clients from {} not ready in {wait:?}", self.source)
        })??;
        if line.trim() != "ready" {
            bail!("idle clients from {} failed", self.source);
        }
        Ok(())
    }

    /// Tells the helper to close its connections and waits until it has.
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(REPLY_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The `idle-clients` command: opens `count` connections to `addr` from `source`, makes one
/// round trip on each, prints `ready`, then holds them, reading nothing, until its standard
/// input closes (or [`MAX_HOLD`] passes).
pub async fn hold(
    addr: SocketAddr,
    proto: Proto,
    count: usize,
    source: Ipv4Addr,
) -> anyhow::Result<()> {
    let clients = connect_all(&[addr], proto, count, Some(IpAddr::V4(source))).await?;
    let clients: Vec<_> = stream::iter(clients)
        .map(|mut client| async move {
            client.send(b"echo hi").await?;
            answer(&mut client).await?;
            Ok::<_, anyhow::Error>(client)
        })
        .buffer_unordered(GREETING)
        .try_collect()
        .await?;
    println!("ready");
    let holding: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(client.hold()))
        .collect();
    let mut stdin = tokio::io::stdin();
    let mut sink = [0; 64];
    let _ = tokio::time::timeout(MAX_HOLD, async {
        while stdin.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    for task in holding {
        task.abort();
    }
    Ok(())
}
