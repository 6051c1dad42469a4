//! The baseline's hand-off shapes: a client's commands answered by worker tasks of the same
//! process ([`local`]), or by a worker process over one TCP link ([`linked`], [`serve_worker`]),
//! as wasmgate's gateway hands each event to a worker host in one process or across
//! processes. Each keeps only what that path needs at the least: a queue, a frame with the
//! client's id, and batching on the link (everything queued at a wake-up in one write).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::Hub;

/// A command handed to a worker, and where its reply goes (`None`: it has none).
pub struct Job {
    /// The client's id.
    pub client: u64,
    /// The command.
    pub message: Bytes,
    /// Where the reply goes; `None` for a client's arrival or departure, which the worker
    /// takes and answers nothing to, as wasmgate's worker host runs `on-connect` and
    /// `on-close` (the reference plugin's do nothing the bench asks of them).
    pub reply: Option<mpsc::Sender<Option<Bytes>>>,
}

/// Jobs queued for one worker at most.
const WORKER_QUEUE: usize = 1024;

/// Jobs a link's writer takes per write at most.
const LINK_BATCH: usize = 256;

/// Starts worker tasks in this process, one per core (as wasmgate's default `instances`),
/// and returns their queues.
pub fn local(hub: &Arc<Hub>) -> Vec<mpsc::Sender<Job>> {
    let count = std::thread::available_parallelism().map_or(2, |n| n.get());
    (0..count)
        .map(|_| {
            let (queue, mut jobs) = mpsc::channel::<Job>(WORKER_QUEUE);
            let hub = hub.clone();
            tokio::spawn(async move {
                while let Some(job) = jobs.recv().await {
                    let Some(waiter) = job.reply else {
                        continue;
                    };
                    let reply = hub.command(job.client, &job.message);
                    // The client is gone if nobody waits: nothing to do.
                    let _ = waiter.send(reply).await;
                }
            });
            queue
        })
        .collect()
}

/// Links to the worker process at `worker` (already listening) and returns the one queue to it: a writer task
/// sends the jobs, a reader task hands each reply to the client that waits for it.
pub async fn linked(worker: SocketAddr) -> io::Result<Vec<mpsc::Sender<Job>>> {
    let socket = TcpStream::connect(worker).await?;
    socket.set_nodelay(true)?;
    let (read, write) = socket.into_split();
    let waiting = Arc::new(Waiting::default());
    let (queue, jobs) = mpsc::channel(WORKER_QUEUE);
    tokio::spawn(send_jobs(write, jobs, waiting.clone()));
    tokio::spawn(hand_replies(read, waiting));
    Ok(vec![queue])
}

/// The clients waiting for a reply over a link: one command in flight each.
#[derive(Default)]
struct Waiting(Mutex<HashMap<u64, mpsc::Sender<Option<Bytes>>>>);

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Option<Bytes>>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes the queued jobs, all those queued at each wake-up in one write.
async fn send_jobs(
    mut link: OwnedWriteHalf,
    mut jobs: mpsc::Receiver<Job>,
    waiting: Arc<Waiting>,
) -> io::Result<()> {
    let mut batch = Vec::with_capacity(LINK_BATCH);
    let mut out = BytesMut::new();
    while jobs.recv_many(&mut batch, LINK_BATCH).await > 0 {
        {
            let mut waiting = waiting.lock();
            for job in batch.drain(..) {
                // A frame without a body is an arrival or a departure: nothing comes back.
                let Some(waiter) = job.reply else {
                    put_frame(&mut out, job.client, None);
                    continue;
                };
                put_frame(&mut out, job.client, Some(&job.message));
                waiting.insert(job.client, waiter);
            }
        }
        link.write_all(&out).await?;
        out.clear();
    }
    Ok(())
}

/// Reads replies and hands each to the client waiting for it.
async fn hand_replies(mut link: OwnedReadHalf, waiting: Arc<Waiting>) -> io::Result<()> {
    let mut input = BytesMut::with_capacity(1 << 16);
    while link.read_buf(&mut input).await? > 0 {
        while let Some((client, reply)) = take_frame(&mut input) {
            if let Some(waiter) = waiting.lock().remove(&client) {
                // Its one slot is free: it waits for this reply and sent nothing since.
                let _ = waiter.try_send(reply);
            }
        }
    }
    Ok(())
}

/// A worker process: answers the jobs of every link to `listener` until the process ends,
/// each link's replies to what one read brought in one write.
pub async fn serve_worker(listener: TcpListener) -> io::Result<()> {
    let hub = Arc::new(Hub::default());
    loop {
        let (mut link, _) = listener.accept().await?;
        link.set_nodelay(true)?;
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut input = BytesMut::with_capacity(1 << 16);
            let mut out = BytesMut::new();
            while link.read_buf(&mut input).await? > 0 {
                while let Some((client, message)) = take_frame(&mut input) {
                    // Without a body: a client's arrival or departure, answered with nothing.
                    let Some(message) = message else {
                        continue;
                    };
                    let reply = hub.command(client, &message);
                    put_frame(&mut out, client, reply.as_deref());
                }
                link.write_all(&out).await?;
                out.clear();
            }
            Ok::<_, io::Error>(())
        });
    }
}

/// Appends a frame: the client's id, whether a body follows, its length and the body.
fn put_frame(out: &mut BytesMut, client: u64, body: Option<&[u8]>) {
    out.put_u64_le(client);
    out.put_u8(u8::from(body.is_some()));
    let body = body.unwrap_or_default();
    out.put_u32_le(body.len() as u32);
    out.put_slice(body);
}

/// Takes the first whole frame off `input`, if there is one.
fn take_frame(input: &mut BytesMut) -> Option<(u64, Option<Bytes>)> {
    const HEADER: usize = 8 + 1 + 4;
    let header = input.get(..HEADER)?;
    let len = u32::from_le_bytes(header[9..HEADER].try_into().ok()?) as usize;
    if input.len() < HEADER + len {
        return None;
    }
    let client = input.get_u64_le();
    let some = input.get_u8() == 1;
    input.advance(4);
    let body = input.split_to(len).freeze();
    Some((client, some.then_some(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_whole_and_wait_for_their_rest() {
        let mut out = BytesMut::new();
        put_frame(&mut out, 7, Some(b"echo hi"));
        put_frame(&mut out, 9, None);
        let mut input = BytesMut::from(&out[..out.len() - 1]);
        assert_eq!(
            take_frame(&mut input),
            Some((7, Some(Bytes::from("echo hi"))))
        );
        assert_eq!(
            take_frame(&mut input),
            None,
            "the second frame is not whole yet"
        );
        input.extend_from_slice(&out[out.len() - 1..]);
        assert_eq!(take_frame(&mut input), Some((9, None)));
        assert!(input.is_empty());
    }

    /// A linked worker answers each command, and nothing to an arrival: were the arrival
    /// answered, its reply would take the waiting slot of the command after it.
    #[tokio::test]
    async fn a_linked_worker_process_answers_through_the_link() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_worker(listener));
        let queues = linked(addr).await.unwrap();
        let (reply, mut replied) = mpsc::channel(1);
        for (client, text) in [(1, "echo one"), (2, "echo two")] {
            let arrival = Job {
                client,
                message: Bytes::new(),
                reply: None,
            };
            let job = Job {
                client,
                message: Bytes::from(text),
                reply: Some(reply.clone()),
            };
            queues[0].send(arrival).await.unwrap();
            queues[0].send(job).await.unwrap();
            let answer = replied.recv().await.unwrap();
            assert_eq!(answer, Some(Bytes::from(&text[5..])));
        }
    }
}
