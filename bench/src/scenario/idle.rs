//! `idle`: C connections that each make one `echo` round trip and then stay silent → the
//! resident memory the server needs per idle connection; then one send-to-all, which every
//! one of them must receive.
//!
//! One process may hold at most 20,000 descriptors on these machines, so the connections
//! are opened by helper processes (this binary's `idle-clients` command), each holding at
//! most `per_process` of them from a source address of its own (127.0.0.2, 127.0.0.3, …;
//! each source address has its own range of ephemeral ports towards a server port). More
//! than one server process is needed past about 19,000 connections for the same reason:
//! each on a port of its own, or all on one port (`SO_REUSEPORT`), where the kernel picks
//! the process of each connection; the established client sockets of each process show how
//! it spread them.
//!
//! The memory figure is the growth of the server processes' RSS from before the first
//! connection to a second after the last one answered, divided by C: the kernel's socket
//! buffers are not in it, since they are not the process's memory.
//!
//! The broadcast is `all <marker>` from one more client; each helper counts its connections
//! that received the marker and says so once all have (or when asked, at the deadline).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::{StreamExt, TryStreamExt, stream};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Notify;

use super::{REPLY_TIMEOUT, answer, connect_all};
use crate::client::{Client, Proto};
use crate::stats::Figure;
use crate::target::Running;

/// Time for the server to settle after the last connection, before its memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// Longest a helper process holds its connections if nobody tells it to stop.
const MAX_HOLD: Duration = Duration::from_secs(600);

/// Round trips run at once by a helper process before its clients go idle.
const GREETING: usize = 256;

/// The payload of the broadcast. Its first byte occurs nowhere else in it, as the helpers'
/// search for it needs.
const MARKER: &str = "wasmgate-bench-broadcast";

/// Longest the broadcast may take to reach every connection before the helpers are asked
/// how many it reached.
const BROADCAST_TIMEOUT: Duration = Duration::from_secs(30);

/// The parameters of an `idle` run.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    /// Connections in total, spread evenly over the server's listeners.
    pub connections: usize,
    /// Most connections one helper process holds.
    pub per_process: usize,
}

impl Idle {
    /// One run against `running`, named `name` in what it prints; then a broadcast, if
    /// `broadcast`.
    pub async fn run(
        &self,
        name: &str,
        running: &Running,
        proto: Proto,
        broadcast: bool,
    ) -> anyhow::Result<Vec<Figure>> {
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
        let held = running.connections()?;
        let per_connection = after.saturating_sub(before) as f64 / self.connections as f64;
        let mut figures = vec![
            Figure::new("bytes/conn", per_connection).target(match proto {
                Proto::Ws => "≤ 2048 B",
                Proto::Text => "≤ 1024 B",
            }),
            Figure::new("RSS MiB", after as f64 / (1024.0 * 1024.0)),
        ];
        if held.len() > 1 {
            eprintln!("{name}: connections per server process: {held:?}");
            let (fewest, most) = (held.iter().min(), held.iter().max());
            figures.extend([
                Figure::new("server processes", held.len() as f64),
                Figure::new("conns in busiest proc", most.copied().unwrap_or(0) as f64),
                Figure::new("conns in least busy", fewest.copied().unwrap_or(0) as f64),
            ]);
        }
        let outcome = if broadcast {
            self.broadcast(name, running.addrs[0], proto, &mut helpers)
                .await
                .map(|found| figures.extend(found))
        } else {
            Ok(())
        };
        for helper in helpers {
            helper.stop().await;
        }
        outcome.map(|()| figures)
    }

    /// Sends `all <marker>` and counts the held connections it reached, as figures.
    async fn broadcast(
        &self,
        name: &str,
        addr: SocketAddr,
        proto: Proto,
        helpers: &mut [Helper],
    ) -> anyhow::Result<Vec<Figure>> {
        let mut sender = Client::connect(addr, proto, None).await?;
        let sent = Instant::now();
        sender.send(format!("all {MARKER}").as_bytes()).await?;
        let deadline = sent + BROADCAST_TIMEOUT;
        let mut answered = 0;
        for helper in helpers.iter_mut() {
            answered += helper.answered(deadline).await?;
        }
        // Helpers are read in turn, so the last line read is also the last one written.
        let took = sent.elapsed();
        eprintln!(
            "{name}: answered the broadcast: {answered} / {}",
            self.connections
        );
        let mut figures = vec![Figure::new("answered broadcast", answered as f64).target("all")];
        if answered == self.connections {
            figures.push(Figure::new("broadcast ms", took.as_secs_f64() * 1e3));
        }
        Ok(figures)
    }
}

/// A helper process holding idle connections.
struct Helper {
    child: Child,
    source: Ipv4Addr,
    count: usize,
    input: Option<ChildStdin>,
    output: Lines<BufReader<ChildStdout>>,
}

impl Helper {
    fn start(
        addr: SocketAddr,
        proto: Proto,
        count: usize,
        source: Ipv4Addr,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
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
        let output = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let input = child.stdin.take();
        Ok(Self {
            child,
            source,
            count,
            input,
            output,
        })
    }

    /// The helper's next line.
    async fn line(&mut self) -> anyhow::Result<String> {
        self.output
            .next_line()
            .await?
            .with_context(|| format!("idle clients from {} ended", self.source))
    }

    /// Waits until every connection of the helper has made its round trip.
    async fn ready(&mut self) -> anyhow::Result<()> {
        // Generous: a helper connects thousands of clients.
        let wait = REPLY_TIMEOUT * 12;
        let line = tokio::time::timeout(wait, self.line())
            .await
            .with_context(|| {
                format!("idle clients from {} not ready in {wait:?}", self.source)
            })??;
        if line.trim() != "ready" {
            bail!("idle clients from {} failed", self.source);
        }
        Ok(())
    }

    /// How many of the helper's connections received the broadcast: once all have, or
    /// as many as have at `deadline`.
    async fn answered(&mut self, deadline: Instant) -> anyhow::Result<usize> {
        let line = match tokio::time::timeout_at(deadline.into(), self.line()).await {
            Ok(line) => line?,
            Err(_) => {
                let input = self.input.as_mut().context("no stdin")?;
                input.write_all(b"report\n").await?;
                tokio::time::timeout(REPLY_TIMEOUT, self.line())
                    .await
                    .with_context(|| format!("idle clients from {} silent", self.source))??
            }
        };
        let answered = line
            .strip_prefix("answered ")
            .and_then(|n| n.trim().parse::<usize>().ok())
            .with_context(|| format!("idle clients from {} said {line:?}", self.source))?;
        Ok(answered.min(self.count))
    }

    /// Tells the helper to close its connections and waits until it has.
    async fn stop(mut self) {
        drop(self.input.take());
        if tokio::time::timeout(REPLY_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The `idle-clients` command: opens `count` connections to `addr` from `source`, makes one
/// round trip on each, prints `ready`, then holds them, reading nothing but the broadcast's
/// marker, until its standard input closes (or [`MAX_HOLD`] passes). It prints `answered
/// <n>` once all `count` connections received the marker, and whenever a line `report`
/// comes in.
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
    let answered = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Notify::new());
    let holding: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let (answered, all) = (answered.clone(), all.clone());
            let mut once = false;
            tokio::spawn(client.hold(MARKER.as_bytes(), move || {
                if !std::mem::replace(&mut once, true)
                    && answered.fetch_add(1, Ordering::AcqRel) + 1 == count
                {
                    all.notify_one();
                }
            }))
        })
        .collect();
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    let hold_until = tokio::time::sleep(MAX_HOLD);
    tokio::pin!(hold_until);
    let mut told = false;
    loop {
        tokio::select! {
            () = &mut hold_until => break,
            () = all.notified(), if !told => {
                told = true;
                println!("answered {}", answered.load(Ordering::Acquire));
            }
            command = commands.next_line() => match command {
                Ok(Some(c)) if c.trim() == "report" => {
                    println!("answered {}", answered.load(Ordering::Acquire));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
        }
    }
    for task in holding {
        task.abort();
    }
    Ok(())
}
