//! `connect`: K connectors, each in a loop: connect, complete the handshake, send one `echo`
//! and wait for it, close → connections per second and the time each took.
//!
//! The echo is what makes the figure honest: wasmgate answers it only after `on-connect`
//! has run in the plugin (a client's events are delivered in order), so a connection counts
//! once the whole server has taken it in, not when the kernel accepted it.
//!
//! The connectors are state machines on the client's event loops rather than tasks, for the
//! reason [`crate::driver`] gives: a task per connector cost the client as much CPU per
//! connection as the server under test spent.
//!
//! They connect from [`SOURCES`] loopback addresses in turn. From one address the client
//! closes every connection first, so its ports wait in TIME_WAIT, and Linux lets `connect`
//! reuse such a port only a second after its last use: from one address, towards one server
//! port, about 14,000 connections per second (half the 28,232 ephemeral ports, the half
//! `connect` prefers). Every server measured here reached that cap, so the rows measured the
//! client's ports; with several source addresses each has its own ports.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use mio::{Events, Interest, Poll, Registry, Token};

use super::{REPLY_TIMEOUT, Window, cpu_per};
use crate::client::{self, Proto};
use crate::stats::{self, Figure, Histogram};
use crate::target::Running;

/// Source addresses the connectors take in turn (127.0.0.2 on): enough ports for more
/// connections per second than any server here makes.
const SOURCES: u8 = 8;

/// The parameters of a `connect` run.
#[derive(Debug, Clone, Copy)]
pub struct Connect {
    /// Connections being opened at once.
    pub concurrency: usize,
    /// Unmeasured time first.
    pub warmup: std::time::Duration,
    /// Measured time.
    pub duration: std::time::Duration,
    /// The client's event loops.
    pub threads: usize,
}

impl Connect {
    /// One run against `running`.
    pub async fn run(&self, running: &Running, proto: Proto) -> anyhow::Result<Vec<Figure>> {
        let window = Window::after(self.warmup, self.duration);
        let cpu = window.cpu_of(running);
        let threads = self.threads.clamp(1, self.concurrency.max(1));
        let loops: Vec<_> = (0..threads)
            .map(|t| {
                let addrs: Vec<SocketAddr> = (t..self.concurrency)
                    .step_by(threads)
                    .map(|i| running.addrs[i % running.addrs.len()])
                    .collect();
                tokio::task::spawn_blocking(move || connectors(&addrs, proto, window))
            })
            .collect();
        let mut connected = 0;
        let mut latency = stats::histogram();
        for done in loops {
            let (n, h) = done.await.context("a connector loop panicked")??;
            connected += n;
            latency.add(&h)?;
        }
        let cpu = cpu.await??;
        let mut figures =
            vec![Figure::new("conns/s", connected as f64 / window.seconds()).target("≥ 1.0×")];
        figures.extend(cpu_per("conn", cpu, connected, None));
        figures.extend(stats::latencies(&latency, None));
        Ok(figures)
    }
}

/// One thread's connectors, one to each of `addrs`, until the window ends: how many
/// connections were made inside it and how long each took.
fn connectors(
    addrs: &[SocketAddr],
    proto: Proto,
    window: Window,
) -> anyhow::Result<(u64, Histogram)> {
    let mut poll = Poll::new()?;
    let mut slots = addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| Slot::open(addr, source(i), poll.registry(), Token(i)))
        .collect::<io::Result<Vec<_>>>()?;
    let mut events = Events::with_capacity(1024);
    let mut scratch = [0; 4096];
    let mut latency = stats::histogram();
    let mut connected = 0;
    let mut progress = Instant::now();
    loop {
        let now = Instant::now();
        if now >= window.end {
            return Ok((connected, latency));
        }
        if now - progress >= REPLY_TIMEOUT {
            bail!("no connection completed within {REPLY_TIMEOUT:?}");
        }
        let wait = (window.end - now).min(REPLY_TIMEOUT - (now - progress));
        match poll.poll(&mut events, Some(wait)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            done => done?,
        }
        for event in &events {
            let i = event.token().0;
            let slot = &mut slots[i];
            if !slot.advance(proto, &mut scratch)? {
                continue;
            }
            progress = Instant::now();
            if window.contains(slot.start) {
                connected += 1;
                stats::record(&mut latency, (progress - slot.start).as_micros() as u64);
            }
            *slot = Slot::open(slot.addr, source(i), poll.registry(), Token(i))?;
        }
    }
}

/// Where a connector is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Connecting,
    /// The upgrade request is sent.
    Upgrading,
    /// The `echo` is sent.
    Echoing,
}

/// The source address of connector `i`.
fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        2 + (i % usize::from(SOURCES)) as u8,
    ))
}

/// One connector's connection.
struct Slot {
    addr: SocketAddr,
    stream: mio::net::TcpStream,
    step: Step,
    /// When its `connect` began.
    start: Instant,
    input: Vec<u8>,
}

impl Slot {
    /// Starts connecting to `addr` from `source`; the connection is complete when it turns
    /// writable.
    fn open(
        addr: SocketAddr,
        source: IpAddr,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Self> {
        let start = Instant::now();
        // Non-blocking from its `socket` call: one system call per connection, not two.
        let stream = socket2::Type::STREAM.nonblocking();
        let socket = socket2::Socket::new(socket2::Domain::IPV4, stream, None)?;
        client::defer_port(&socket)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut stream = mio::net::TcpStream::from_std(socket.into());
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Self {
            addr,
            stream,
            step: Step::Connecting,
            start,
            input: Vec::new(),
        })
    }

    /// Takes the connection as far as its readiness allows; whether the echo came back.
    fn advance(&mut self, proto: Proto, scratch: &mut [u8]) -> anyhow::Result<bool> {
        if self.step == Step::Connecting {
            if let Some(e) = self.stream.take_error()? {
                return Err(e).context("connecting");
            }
            match self.stream.peer_addr() {
                // Not connected yet: a readiness event from before the handshake ended.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
                Err(e) => return Err(e).context("connecting"),
                Ok(_) => {}
            }
            self.stream.set_nodelay(true)?;
            if proto == Proto::Ws {
                self.write(client::UPGRADE)?;
                self.step = Step::Upgrading;
            } else {
                self.echo(proto)?;
            }
            // The server sends nothing before it has the request.
            return Ok(false);
        }
        if !self.fill(scratch)? {
            return Ok(false);
        }
        if self.step == Step::Upgrading {
            let Some(end) = client::upgraded(&self.input)? else {
                return Ok(false);
            };
            self.input.drain(..end);
            self.echo(proto)?;
        }
        let Some(unit) = client::next_unit(proto, &self.input)? else {
            return Ok(false);
        };
        let reply = unit.payload.map(|p| &self.input[p]);
        ensure!(reply == Some(b"hi"), "echo answered {reply:?}");
        Ok(true)
    }

    fn echo(&mut self, proto: Proto) -> io::Result<()> {
        let mut frame = Vec::with_capacity(16);
        client::encode(proto, [0x5a, 0xc3, 0x3c, 0xa5], b"echo hi", &mut frame);
        self.write(&frame)?;
        self.step = Step::Echoing;
        Ok(())
    }

    /// Writes a request whole: a fresh connection's send buffer always takes one.
    fn write(&mut self, request: &[u8]) -> io::Result<()> {
        let n = self.stream.write(request)?;
        if n < request.len() {
            return Err(io::Error::other("a new connection took part of a request"));
        }
        Ok(())
    }

    /// Reads what has come; whether anything did.
    fn fill(&mut self, scratch: &mut [u8]) -> anyhow::Result<bool> {
        let mut any = false;
        loop {
            match self.stream.read(scratch) {
                Ok(0) => bail!("the server closed a connection"),
                Ok(n) => {
                    self.input.extend_from_slice(&scratch[..n]);
                    any = true;
                    // As in the driver: a short read emptied the socket.
                    if n < scratch.len() {
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(any),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading a reply"),
            }
        }
    }
}
