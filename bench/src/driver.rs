//! The load client's event loops: many connections per thread, driven by readiness.
//!
//! A tokio task per connection cost the client about 7 µs of CPU per `echo` (a wake-up, a
//! trip through the scheduler, often to the other worker thread, and a timer per message),
//! as much as the native server it drove. On two shared cores every cycle the client spends
//! is one the server does not get, so such a client caps both servers and pulls every ratio
//! towards 1. Here each thread owns a share of the connections and one epoll set (mio,
//! already under tokio): a ready connection is read into the thread's scratch buffer, each
//! message in it goes to the scenario's [`Handler`], and what the handler sends is written
//! straight back. An echo costs two system calls and no allocation, channel or task.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mio::{Events, Interest, Poll, Token};

use crate::client::{self, Client, Detached, Proto};
use crate::scenario::REPLY_TIMEOUT;

/// The thread's read buffer: more than any scenario's replies to one connection at once.
const SCRATCH: usize = 64 * 1024;

/// Readiness events taken per wait.
const EVENTS: usize = 1024;

/// What a scenario does with its connections' messages; one per thread.
pub trait Handler: Send + 'static {
    /// Connection `conn` (numbered within its thread) joins the loop, before any message.
    fn start(&mut self, conn: usize, out: &mut Out<'_>) -> anyhow::Result<()>;

    /// `payload` arrived on `conn`; `now` was taken right after the read that brought it.
    fn message(
        &mut self,
        conn: usize,
        payload: &[u8],
        now: Instant,
        out: &mut Out<'_>,
    ) -> anyhow::Result<()>;
}

/// Sends on one connection from inside a [`Handler`].
pub struct Out<'a> {
    conn: &'a mut Conn,
    frame: &'a mut Vec<u8>,
}

impl Out<'_> {
    /// Frames and writes `message`; what the socket does not take now is written when it
    /// is writable again, in order.
    pub fn send(&mut self, message: &[u8]) -> io::Result<()> {
        client::encode(self.conn.proto, self.conn.mask, message, self.frame);
        if !self.conn.unsent.is_empty() {
            self.conn.unsent.extend_from_slice(self.frame);
            return Ok(());
        }
        let written = match (&self.conn.stream).write(self.frame) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        self.conn.unsent.extend_from_slice(&self.frame[written..]);
        Ok(())
    }
}

/// One connection of a loop. The buffers stay empty (unallocated) unless a frame arrives
/// in pieces or a write is short.
struct Conn {
    stream: mio::net::TcpStream,
    proto: Proto,
    mask: [u8; 4],
    /// The start of a message whose end has not arrived yet.
    partial: Vec<u8>,
    /// Bytes the socket did not take yet.
    unsent: Vec<u8>,
}

impl Conn {
    fn new(client: Detached) -> Self {
        Self {
            stream: mio::net::TcpStream::from_std(client.stream),
            proto: client.proto,
            mask: client.mask,
            partial: client.input,
            unsent: Vec::new(),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        while !self.unsent.is_empty() {
            match (&self.stream).write(&self.unsent) {
                Ok(n) => drop(self.unsent.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Runs `clients` over `threads` event loops until `until`, each loop with the handler
/// `handler(n)` makes for its `n` connections, and returns the handlers. A loop fails when
/// a connection fails or closes, or when none of its connections received anything for
/// [`REPLY_TIMEOUT`].
pub async fn drive<H: Handler>(
    clients: Vec<Client>,
    threads: usize,
    until: Instant,
    handler: impl Fn(usize) -> H,
) -> anyhow::Result<Vec<H>> {
    let threads = threads.clamp(1, clients.len().max(1));
    let mut shares: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, client) in clients.into_iter().enumerate() {
        shares[i % threads].push(Conn::new(client.detach()?));
    }
    let loops: Vec<_> = shares
        .into_iter()
        .map(|conns| {
            let handler = handler(conns.len());
            tokio::task::spawn_blocking(move || run(conns, handler, until))
        })
        .collect();
    let mut handlers = Vec::with_capacity(loops.len());
    for done in loops {
        handlers.push(done.await.context("a client loop panicked")??);
    }
    Ok(handlers)
}

/// One thread's loop.
fn run<H: Handler>(mut conns: Vec<Conn>, mut handler: H, until: Instant) -> anyhow::Result<H> {
    let mut poll = Poll::new()?;
    for (i, conn) in conns.iter_mut().enumerate() {
        poll.registry().register(
            &mut conn.stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
    }
    let mut frame = Vec::with_capacity(256);
    for (i, conn) in conns.iter_mut().enumerate() {
        handler.start(
            i,
            &mut Out {
                conn,
                frame: &mut frame,
            },
        )?;
    }
    let mut events = Events::with_capacity(EVENTS);
    let mut scratch = vec![0; SCRATCH];
    let mut heard = Instant::now();
    loop {
        let now = Instant::now();
        if now >= until {
            return Ok(handler);
        }
        if now - heard >= REPLY_TIMEOUT {
            bail!(
                "no message on any of {} connections within {REPLY_TIMEOUT:?}",
                conns.len()
            );
        }
        let wait = (until - now).min(REPLY_TIMEOUT - (now - heard));
        match poll.poll(&mut events, Some(wait + Duration::from_millis(1))) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            done => done?,
        }
        for event in &events {
            let i = event.token().0;
            let conn = &mut conns[i];
            if event.is_writable() {
                conn.flush()?;
            }
            if (event.is_readable() || event.is_read_closed())
                && receive(i, conn, &mut scratch, &mut frame, &mut handler)?
            {
                heard = Instant::now();
            }
        }
    }
}

/// Reads what `conn` has and hands each whole message to `handler`; whether any came.
fn receive<H: Handler>(
    i: usize,
    conn: &mut Conn,
    scratch: &mut [u8],
    frame: &mut Vec<u8>,
    handler: &mut H,
) -> anyhow::Result<bool> {
    let mut any = false;
    loop {
        // The common case reads into the thread's buffer; only a connection holding the
        // start of a message reads after it, in its own.
        let mut partial = std::mem::take(&mut conn.partial);
        let kept = partial.len();
        let (asked, read) = if kept == 0 {
            (scratch.len(), (&conn.stream).read(scratch))
        } else {
            partial.resize(kept + SCRATCH, 0);
            (SCRATCH, (&conn.stream).read(&mut partial[kept..]))
        };
        let n = match read {
            Ok(0) => bail!("the server closed a connection"),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                partial.truncate(kept);
                conn.partial = partial;
                return Ok(any);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                partial.truncate(kept);
                conn.partial = partial;
                continue;
            }
            Err(e) => return Err(e).context("reading a reply"),
        };
        let now = Instant::now();
        let input = if kept == 0 {
            &scratch[..n]
        } else {
            &partial[..kept + n]
        };
        let mut at = 0;
        while let Some(unit) = client::next_unit(conn.proto, &input[at..])? {
            if let Some(payload) = unit.payload {
                let payload = &input[at + payload.start..at + payload.end];
                handler.message(
                    i,
                    payload,
                    now,
                    &mut Out {
                        conn: &mut *conn,
                        frame: &mut *frame,
                    },
                )?;
                any = true;
            }
            at += unit.used;
        }
        let rest = input[at..].to_vec();
        conn.partial = rest;
        // A TCP read that returns less than it was asked for emptied the socket, and data
        // arriving after it raises a new edge: no need to spend a read on `WouldBlock`.
        if n < asked {
            return Ok(any);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers each of `rounds` client frames of `sent` bytes with a server frame of
    /// `reply`, written one byte at a time so that every frame reaches the client in pieces.
    async fn trickling_server(listener: tokio::net::TcpListener, sent: usize, reply: &[u8]) {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.set_nodelay(true).unwrap();
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            request.push(socket.read_u8().await.unwrap());
        }
        socket
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .unwrap();
        let mut frame = vec![0x81, reply.len() as u8];
        frame.extend_from_slice(reply);
        let mut incoming = vec![0; sent];
        while socket.read_exact(&mut incoming).await.is_ok() {
            for &b in &frame {
                if socket.write_all(&[b]).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Sends `ask` again for each answer, and keeps the answers.
    struct Asker {
        answers: Vec<Vec<u8>>,
    }

    impl Handler for Asker {
        fn start(&mut self, _: usize, out: &mut Out<'_>) -> anyhow::Result<()> {
            Ok(out.send(b"ask")?)
        }

        fn message(
            &mut self,
            _: usize,
            payload: &[u8],
            _: Instant,
            out: &mut Out<'_>,
        ) -> anyhow::Result<()> {
            self.answers.push(payload.to_vec());
            Ok(out.send(b"ask")?)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_arriving_in_pieces_come_out_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A masked "ask": 2 header bytes, 4 of key, 3 of payload.
        let server = tokio::spawn(trickling_server(listener, 9, b"the answer"));
        let client = Client::connect(addr, Proto::Ws, None).await.unwrap();
        let until = Instant::now() + Duration::from_millis(300);
        let done = drive(vec![client], 1, until, |_| Asker {
            answers: Vec::new(),
        })
        .await
        .unwrap();
        server.abort();
        let answers = &done[0].answers;
        assert!(answers.len() >= 3, "only {} answers", answers.len());
        assert!(answers.iter().all(|a| a == b"the answer"), "{answers:?}");
    }
}
