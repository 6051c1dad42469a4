//! Discovery: the register tells worker hosts where the gateways are, and nothing else.
//!
//! Gateways announce their internal (worker-facing) address; worker hosts and push clients
//! ask for the list of gateway addresses and get it again after every change. **The register
//! never carries client traffic**: worker hosts link to the gateways directly, so when every
//! register is down, running traffic goes on; only new gateways go unnoticed until a register
//! is back and everyone has re-registered with it. Several registers may be listed; members
//! register with every one, so one register down changes nothing.
//!
//! Both ends live here: [`run`] is the register, [`spawn_registration`] is what a gateway, a
//! worker host or a push client runs to stay registered.
//!
//! What differs from GatewayWorker's register, on purpose:
//! - links start with the [`crate::wire::handshake`] (no secret in clear) and carry postcard
//!   frames, not newline-JSON built by string concatenation;
//! - both ends ping and drop a link that stays silent, where GatewayWorker only notices a dead
//!   peer through a TCP error;
//! - a member merges the lists of all the registers it is linked to instead of letting each
//!   register's broadcast replace the previous one;
//! - a peer that connects and says nothing (a TCP probe) is dropped at debug level.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{debug, info, warn};

use crate::wire::handshake::HANDSHAKE_TIMEOUT;
use crate::wire::{
    FrameReader, FrameWriter, FromRegister, HandshakeError, Role, ToRegister, WireError,
    accept_handshake, connect_handshake,
};

/// How often a member pings each register.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// How many ping intervals without a single message end a link, on either end.
const SILENT_INTERVALS: u32 = 3;

/// Messages queued for one link's writer. The register sends a peer only pongs and whole
/// lists, so a peer that fills this has stopped reading: it is dropped rather than buffered
/// for, and the other links never notice.
const LINK_QUEUE: usize = 16;

/// The first delay before reconnecting to a register; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// The longest delay between two attempts to reach a register, so that a member is back
/// within seconds of a register restart.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The pause after a failed `accept` (e.g. out of file descriptors), so that the register
/// does not spin while the condition lasts.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How long a member trusts a newly linked register to add gateways but not to remove
/// them: a register that has just restarted knows only the gateways that have re-registered
/// so far. Longer than a gateway's longest retry delay plus a handshake, so by then every
/// live gateway is back in its list.
const SETTLE: Duration = Duration::from_secs(5);

/// The clocks of a register link; tests shorten them.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// How often a member pings; the register answers each ping.
    ping_interval: Duration,
    /// How many intervals without a single message end a link, on either end.
    silent_intervals: u32,
    /// See [`SETTLE`].
    settle: Duration,
}

impl Timing {
    /// The production values.
    const DEFAULT: Timing = Timing {
        ping_interval: PING_INTERVAL,
        silent_intervals: SILENT_INTERVALS,
        settle: SETTLE,
    };

    /// How long a link may stay silent.
    fn silence(&self) -> Duration {
        self.ping_interval * self.silent_intervals
    }
}

/// What a registering process is, and so what it tells the registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// A gateway that worker hosts reach at this internal address; it gets no list.
    Gateway(SocketAddrV4),
    /// A worker host, which wants the gateway list.
    Worker,
    /// A push client, which wants the gateway list but runs no plugins.
    Client,
}

impl Announce {
    /// The role it claims in the handshake.
    fn role(self) -> Role {
        match self {
            Announce::Gateway(_) => Role::Gateway,
            Announce::Worker => Role::Worker,
            Announce::Client => Role::Client,
        }
    }

    /// Its first message after the handshake.
    fn message(self) -> ToRegister {
        match self {
            Announce::Gateway(address) => ToRegister::Gateway { address },
            Announce::Worker | Announce::Client => ToRegister::Worker,
        }
    }
}

/// Why a register link ended; only ever logged, on the end where it happened.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// Reading or writing a frame failed, or the peer sent something that is not a message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The register could not be reached.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// The peer closed the link.
    #[error("the peer closed the link")]
    Closed,
    /// The peer sent nothing for too long.
    #[error("the peer was silent for {0:?}")]
    Silent(Duration),
    /// The peer does not read what we send.
    #[error("the peer stopped reading: {LINK_QUEUE} messages are waiting")]
    Backlogged,
    /// A peer that did not authenticate as a gateway announced a gateway address.
    #[error("a peer with role {0:?} announced a gateway address")]
    NotAGateway(Role),
}

/// The sending side of a link: a bounded queue in front of a task that owns the socket's
/// write half, so that a peer that does not read blocks only that task.
struct Outbox<M> {
    /// Messages for the writer task.
    queue: mpsc::Sender<M>,
    /// The writer task; aborted when the link is dropped, even if it is stuck in a write.
    writer: AbortOnDropHandle<Result<(), WireError>>,
}

impl<M: Serialize + Send + 'static> Outbox<M> {
    /// Starts the writer task of a link.
    fn spawn(writer: FrameWriter<OwnedWriteHalf>) -> Self {
        let (queue, messages) = mpsc::channel(LINK_QUEUE);
        let writer = AbortOnDropHandle::new(tokio::spawn(writer.forward(messages)));
        Self { queue, writer }
    }

    /// Queues a message without waiting; a full queue ends the link.
    fn push(&self, message: M) -> Result<(), LinkError> {
        match self.queue.try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(LinkError::Backlogged),
            // The writer has failed; `failed` reports why on the next turn of the loop.
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        }
    }

    /// Completes when the writer task has stopped, with the reason.
    async fn failed(&mut self) -> LinkError {
        self.queue.closed().await;
        match (&mut self.writer).await {
            Ok(Err(error)) => LinkError::Wire(error),
            Ok(Ok(())) | Err(_) => LinkError::Closed,
        }
    }
}

/// Splits a connected stream into the two framed halves of a link.
fn frame(stream: TcpStream) -> (FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>) {
    // Register messages are tiny and latency matters more than packet count; the writer
    // task batches on its own.
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    (FrameReader::new(reader), FrameWriter::new(writer))
}

// ---------------------------------------------------------------------------------------------
// The register.

/// The gateway addresses the register knows, each with the number of live links announcing
/// it: a restarted gateway may announce again before its old link is found dead, and the
/// address must stay listed until both are gone. Worker links watch it; an update wakes them
/// only when the set of addresses changes.
#[derive(Clone)]
struct GatewayTable(watch::Sender<BTreeMap<SocketAddrV4, usize>>);

impl GatewayTable {
    fn new() -> Self {
        Self(watch::Sender::new(BTreeMap::new()))
    }

    /// Counts one more link announcing `address`, until the returned entry is dropped.
    fn add(&self, address: SocketAddrV4) -> GatewayEntry {
        self.0.send_if_modified(|table| {
            let links = table.entry(address).or_insert(0);
            *links += 1;
            *links == 1
        });
        info!(%address, "gateway registered");
        GatewayEntry {
            table: self.clone(),
            address,
        }
    }

    /// A view of the table that reports a first change at once.
    fn subscribe(&self) -> watch::Receiver<BTreeMap<SocketAddrV4, usize>> {
        let mut receiver = self.0.subscribe();
        receiver.mark_changed();
        receiver
    }
}

/// One link's announcement of a gateway address; dropping it (the link ended, however) takes
/// the announcement back.
struct GatewayEntry {
    /// The table it counts in.
    table: GatewayTable,
    /// The announced address.
    address: SocketAddrV4,
}

impl Drop for GatewayEntry {
    fn drop(&mut self) {
        let address = self.address;
        let removed = self.table.0.send_if_modified(|table| {
            let Some(links) = table.get_mut(&address) else {
                return false;
            };
            *links -= 1;
            if *links == 0 {
                table.remove(&address);
                true
            } else {
                false
            }
        });
        if removed {
            info!(%address, "gateway unregistered");
        }
    }
}

/// Runs a register on `listener` until `shutdown` is cancelled, then closes every link.
///
/// Each link is served by its own task; one peer's failure (bad secret, garbage, silence, not
/// reading) ends that link only. Never fails today; the `Result` matches the other roles.
pub async fn run(
    listener: TcpListener,
    secret: Arc<[u8]>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(listener, secret, Timing::DEFAULT, shutdown).await
}

/// [`run`] with the given clocks.
async fn run_with(
    listener: TcpListener,
    secret: Arc<[u8]>,
    timing: Timing,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let table = GatewayTable::new();
    let links = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "register cannot accept a connection");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = sleep(ACCEPT_RETRY) => continue,
                    }
                }
            },
        };
        let (secret, table, shutdown) = (secret.clone(), table.clone(), shutdown.clone());
        links.spawn(async move {
            match serve_member(stream, &secret, &table, timing, &shutdown).await {
                Ok(()) => debug!(%peer, "register link closed"),
                Err(LinkError::Handshake(error)) if error.is_quiet() => {
                    debug!(%peer, %error, "register link dropped during the handshake");
                }
                Err(error) => warn!(%peer, %error, "register link dropped"),
            }
        });
    }
    drop(listener);
    links.close();
    links.wait().await;
    Ok(())
}

/// Serves one member's link: answers pings, records a gateway's address for as long as the
/// link lives, and keeps a worker host's list up to date.
async fn serve_member(
    stream: TcpStream,
    secret: &[u8],
    table: &GatewayTable,
    timing: Timing,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    let (mut reader, mut writer) = frame(stream);
    let role = accept_handshake(&mut reader, &mut writer, secret).await?;
    let mut outbox = Outbox::spawn(writer);
    let mut gateway: Option<GatewayEntry> = None;
    let mut watched: Option<watch::Receiver<BTreeMap<SocketAddrV4, usize>>> = None;
    let silence = timing.silence();
    let mut deadline = pin!(sleep(silence));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = &mut deadline => return Err(LinkError::Silent(silence)),
            error = outbox.failed() => return Err(error),
            list = next_list(&mut watched) => outbox.push(FromRegister::Gateways(list))?,
            message = reader.recv::<ToRegister>() => {
                let Some(message) = message? else {
                    return Ok(());
                };
                deadline.as_mut().reset(Instant::now() + silence);
                match message {
                    ToRegister::Ping => outbox.push(FromRegister::Pong)?,
                    ToRegister::Gateway { address } => {
                        if role != Role::Gateway {
                            return Err(LinkError::NotAGateway(role));
                        }
                        if gateway.as_ref().map(|entry| entry.address) != Some(address) {
                            gateway = Some(table.add(address));
                        }
                    }
                    ToRegister::Worker => {
                        if watched.is_none() {
                            info!(?role, "member registered for the gateway list");
                            watched = Some(table.subscribe());
                        }
                    }
                }
            }
        }
    }
}

/// The next version of the gateway list a worker link watches; never completes for a link
/// that watches nothing.
async fn next_list(
    watched: &mut Option<watch::Receiver<BTreeMap<SocketAddrV4, usize>>>,
) -> Vec<SocketAddrV4> {
    if let Some(receiver) = watched
        && receiver.changed().await.is_ok()
    {
        return receiver.borrow_and_update().keys().copied().collect();
    }
    std::future::pending().await
}

// ---------------------------------------------------------------------------------------------
// The registering side.

/// What one register has told this member.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Report {
    /// No link, or no list yet: it contributes nothing.
    Down,
    /// Its latest list, but the link is younger than [`SETTLE`]: it may add gateways, not
    /// remove them.
    Fresh(BTreeSet<SocketAddrV4>),
    /// Its latest list, authoritative.
    Settled(BTreeSet<SocketAddrV4>),
}

/// The gateway lists reported by each register a member is linked to, merged into the one
/// set the member acts on.
///
/// The set is the union of the lists of the registers currently linked: a register whose
/// link drops contributes nothing any more, so a gateway that has left is not kept alive by a
/// dead register. Two exceptions keep a register outage from making worker hosts drop
/// gateways that are still serving: while no register is linked, the last set stays; and
/// while some register is fresh (see [`SETTLE`]), nothing is removed.
struct MergedLists {
    /// Per register, by index.
    reports: Mutex<Vec<Report>>,
    /// Where the merged set is published.
    merged: watch::Sender<BTreeSet<SocketAddrV4>>,
}

impl MergedLists {
    fn new(registers: usize) -> Self {
        Self {
            reports: Mutex::new(vec![Report::Down; registers]),
            merged: watch::Sender::new(BTreeSet::new()),
        }
    }

    /// Records what register `index` reports and republishes the merged set if it changed.
    fn report(&self, index: usize, report: Report) {
        // The vector is never left half-written, so a panic elsewhere does not spoil it.
        let mut reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        reports[index] = report;
        let mut union = BTreeSet::new();
        let (mut linked, mut fresh) = (false, false);
        for report in reports.iter() {
            match report {
                Report::Down => continue,
                Report::Fresh(list) => {
                    fresh = true;
                    union.extend(list);
                }
                Report::Settled(list) => union.extend(list),
            }
            linked = true;
        }
        if !linked {
            return;
        }
        self.merged.send_if_modified(|current| {
            if fresh {
                union.extend(current.iter());
            }
            if *current == union {
                false
            } else {
                *current = union;
                true
            }
        });
    }
}

/// Registers this process with every register in `registers` and keeps it registered until
/// `shutdown` is cancelled, then closes the links (which unregisters a gateway).
///
/// Each register gets its own task: it connects, authenticates with `secret`, announces
/// `announce`, pings, and reconnects with jittered exponential backoff (100 ms doubling to
/// 2 s) whenever the register is down or the link fails. The returned channel carries the
/// gateway set merged from every register (see [`MergedLists`]); it stays empty for a
/// gateway, and its sender is gone once every task has stopped. Must be called from within a
/// tokio runtime.
pub fn spawn_registration(
    registers: Vec<SocketAddr>,
    secret: Arc<[u8]>,
    announce: Announce,
    shutdown: CancellationToken,
) -> watch::Receiver<BTreeSet<SocketAddrV4>> {
    spawn_registration_with(registers, secret, announce, Timing::DEFAULT, shutdown)
}

/// [`spawn_registration`] with the given clocks.
fn spawn_registration_with(
    registers: Vec<SocketAddr>,
    secret: Arc<[u8]>,
    announce: Announce,
    timing: Timing,
    shutdown: CancellationToken,
) -> watch::Receiver<BTreeSet<SocketAddrV4>> {
    let lists = Arc::new(MergedLists::new(registers.len()));
    let gateways = lists.merged.subscribe();
    for (index, register) in registers.into_iter().enumerate() {
        let member = Member {
            register,
            index,
            secret: secret.clone(),
            announce,
            timing,
            lists: lists.clone(),
        };
        tokio::spawn(member.stay_registered(shutdown.clone()));
    }
    gateways
}

/// This process's membership with one register.
struct Member {
    /// The register's address.
    register: SocketAddr,
    /// The register's slot in `lists`.
    index: usize,
    /// The cluster's shared secret.
    secret: Arc<[u8]>,
    /// What this process is.
    announce: Announce,
    /// The link's clocks.
    timing: Timing,
    /// Where the register's list goes.
    lists: Arc<MergedLists>,
}

impl Member {
    /// Links to the register again and again until `shutdown`.
    async fn stay_registered(self, shutdown: CancellationToken) {
        let register = self.register;
        let mut backoff = BACKOFF_MIN;
        // Warn once per outage, not on every retry.
        let mut outage_reported = false;
        loop {
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return,
                attempt = self.connect() => attempt,
            };
            match attempt {
                Ok((reader, writer)) => {
                    info!(%register, "linked to register");
                    outage_reported = false;
                    let up = Instant::now();
                    let outcome = self.serve(reader, writer, &shutdown).await;
                    self.lists.report(self.index, Report::Down);
                    match outcome {
                        Ok(()) => return,
                        Err(error) => info!(%register, %error, "link to register lost"),
                    }
                    // A link that held for a while means the register is healthy: come back
                    // fast. One that failed at once must not turn into a tight loop.
                    if up.elapsed() >= BACKOFF_MAX {
                        backoff = BACKOFF_MIN;
                    }
                }
                Err(error) if !outage_reported => {
                    warn!(%register, %error, "cannot register; retrying in the background");
                    outage_reported = true;
                }
                Err(error) => debug!(%register, %error, "still cannot register"),
            }
            let delay = rand::rng().random_range(backoff / 2..=backoff);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sleep(delay) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Opens and authenticates a link to the register.
    async fn connect(
        &self,
    ) -> Result<(FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>), LinkError> {
        let stream = match timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(self.register)).await {
            Ok(connected) => connected.map_err(LinkError::Connect)?,
            Err(_) => return Err(LinkError::Connect(io::ErrorKind::TimedOut.into())),
        };
        let (mut reader, mut writer) = frame(stream);
        connect_handshake(&mut reader, &mut writer, &self.secret, self.announce.role()).await?;
        Ok((reader, writer))
    }

    /// Announces this process on an open link, then pings and reports lists until the link
    /// fails or `shutdown` (`Ok`).
    async fn serve(
        &self,
        mut reader: FrameReader<OwnedReadHalf>,
        writer: FrameWriter<OwnedWriteHalf>,
        shutdown: &CancellationToken,
    ) -> Result<(), LinkError> {
        let mut outbox = Outbox::spawn(writer);
        outbox.push(self.announce.message())?;
        let interval = self.timing.ping_interval;
        let mut ping = interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let silence = self.timing.silence();
        let mut deadline = pin!(sleep(silence));
        let mut settling = pin!(sleep(self.timing.settle));
        let mut settled = false;
        let mut latest: Option<BTreeSet<SocketAddrV4>> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = &mut deadline => return Err(LinkError::Silent(silence)),
                error = outbox.failed() => return Err(error),
                _ = ping.tick() => outbox.push(ToRegister::Ping)?,
                () = &mut settling, if !settled => {
                    settled = true;
                    if let Some(list) = latest.take() {
                        self.lists.report(self.index, Report::Settled(list));
                    }
                }
                message = reader.recv::<FromRegister>() => {
                    let Some(message) = message? else {
                        return Err(LinkError::Closed);
                    };
                    deadline.as_mut().reset(Instant::now() + silence);
                    match message {
                        FromRegister::Gateways(list) => {
                            let list: BTreeSet<SocketAddrV4> = list.into_iter().collect();
                            let report = if settled {
                                Report::Settled(list)
                            } else {
                                latest = Some(list.clone());
                                Report::Fresh(list)
                            };
                            self.lists.report(self.index, report);
                        }
                        FromRegister::Pong => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    use super::*;

    /// Short enough that silence is noticed within a test, long enough for a loaded machine.
    const QUICK: Timing = Timing {
        ping_interval: Duration::from_millis(100),
        silent_intervals: 10,
        settle: Duration::ZERO,
    };

    /// How long a test waits for an expected event before failing.
    const WAIT: Duration = Duration::from_secs(10);

    const SECRET: &[u8] = b"cluster secret";

    fn secret() -> Arc<[u8]> {
        Arc::from(SECRET)
    }

    fn gateway(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), port)
    }

    fn list(addresses: &[SocketAddrV4]) -> BTreeSet<SocketAddrV4> {
        addresses.iter().copied().collect()
    }

    struct TestRegister {
        address: SocketAddr,
        stop: CancellationToken,
        task: JoinHandle<anyhow::Result<()>>,
    }

    impl TestRegister {
        async fn start() -> Self {
            Self::start_on("127.0.0.1:0".parse().unwrap()).await
        }

        async fn start_on(address: SocketAddr) -> Self {
            let listener = TcpListener::bind(address).await.unwrap();
            let address = listener.local_addr().unwrap();
            let stop = CancellationToken::new();
            let task = tokio::spawn(run_with(listener, secret(), QUICK, stop.clone()));
            Self {
                address,
                stop,
                task,
            }
        }

        /// Stops the register and waits until every one of its links is closed.
        async fn kill(self) {
            self.stop.cancel();
            self.task.await.unwrap().unwrap();
        }
    }

    /// Registers with `registers` until `stop` is cancelled.
    fn enroll(
        registers: &[&TestRegister],
        announce: Announce,
        stop: &CancellationToken,
    ) -> watch::Receiver<BTreeSet<SocketAddrV4>> {
        let addresses = registers.iter().map(|r| r.address).collect();
        spawn_registration_with(addresses, secret(), announce, QUICK, stop.clone())
    }

    /// Waits until the list is `expected`, checking `invariant` on every version seen.
    async fn wait_for_list(
        gateways: &mut watch::Receiver<BTreeSet<SocketAddrV4>>,
        expected: BTreeSet<SocketAddrV4>,
        invariant: impl Fn(&BTreeSet<SocketAddrV4>) -> bool,
    ) {
        let arrived = match timeout(
            WAIT,
            gateways.wait_for(|current| {
                assert!(invariant(current), "unexpected list {current:?}");
                *current == expected
            }),
        )
        .await
        {
            Ok(seen) => seen.map(drop).is_ok(),
            Err(_) => false,
        };
        assert!(
            arrived,
            "expected {expected:?}, still {:?}",
            *gateways.borrow()
        );
    }

    async fn wait_for(
        gateways: &mut watch::Receiver<BTreeSet<SocketAddrV4>>,
        expected: &[SocketAddrV4],
    ) {
        wait_for_list(gateways, list(expected), |_| true).await;
    }

    type RawLink = (FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>);

    /// A hand-driven link to a register.
    async fn raw_link(
        address: SocketAddr,
        secret: &[u8],
        role: Role,
    ) -> Result<RawLink, HandshakeError> {
        let (mut reader, mut writer) = frame(TcpStream::connect(address).await.unwrap());
        connect_handshake(&mut reader, &mut writer, secret, role).await?;
        Ok((reader, writer))
    }

    /// Waits until the register closes a hand-driven link.
    async fn closed_by_peer(reader: &mut FrameReader<OwnedReadHalf>) {
        let next = timeout(WAIT, reader.recv::<FromRegister>())
            .await
            .expect("link still open");
        assert!(!matches!(next, Ok(Some(_))), "unexpected message {next:?}");
    }

    #[tokio::test]
    async fn worker_sees_gateways_registered_before_and_after_it() {
        let register = TestRegister::start().await;
        let stop = CancellationToken::new();
        let _stop_all = stop.clone().drop_guard();
        enroll(&[&register], Announce::Gateway(gateway(1)), &stop);
        let mut worker = enroll(&[&register], Announce::Worker, &stop);
        wait_for(&mut worker, &[gateway(1)]).await;
        enroll(&[&register], Announce::Gateway(gateway(2)), &stop);
        wait_for(&mut worker, &[gateway(1), gateway(2)]).await;
        // A second announcement of a known address changes nothing; its departure neither.
        let (mut reader, mut writer) = raw_link(register.address, SECRET, Role::Gateway)
            .await
            .unwrap();
        writer
            .feed(&ToRegister::Gateway {
                address: gateway(2),
            })
            .unwrap();
        writer.send(&ToRegister::Ping).await.unwrap();
        assert_eq!(
            reader.recv::<FromRegister>().await.unwrap(),
            Some(FromRegister::Pong)
        );
        let mut client = enroll(&[&register], Announce::Client, &stop);
        wait_for(&mut client, &[gateway(1), gateway(2)]).await;
        drop((reader, writer));
        enroll(&[&register], Announce::Gateway(gateway(3)), &stop);
        wait_for_list(
            &mut worker,
            list(&[gateway(1), gateway(2), gateway(3)]),
            |l| l.contains(&gateway(2)),
        )
        .await;
    }

    #[tokio::test]
    async fn stopped_gateway_disappears() {
        let register = TestRegister::start().await;
        let stop = CancellationToken::new();
        let _stop_all = stop.clone().drop_guard();
        let leaving = CancellationToken::new();
        enroll(&[&register], Announce::Gateway(gateway(1)), &leaving);
        enroll(&[&register], Announce::Gateway(gateway(2)), &stop);
        let mut worker = enroll(&[&register], Announce::Worker, &stop);
        wait_for(&mut worker, &[gateway(1), gateway(2)]).await;
        leaving.cancel();
        wait_for(&mut worker, &[gateway(2)]).await;
    }

    #[tokio::test]
    async fn silent_gateway_is_dropped_and_pings_are_answered() {
        let register = TestRegister::start().await;
        let stop = CancellationToken::new();
        let _stop_all = stop.clone().drop_guard();
        let mut worker = enroll(&[&register], Announce::Worker, &stop);
        let (mut reader, mut writer) = raw_link(register.address, SECRET, Role::Gateway)
            .await
            .unwrap();
        writer
            .feed(&ToRegister::Gateway {
                address: gateway(1),
            })
            .unwrap();
        writer.send(&ToRegister::Ping).await.unwrap();
        assert_eq!(
            reader.recv::<FromRegister>().await.unwrap(),
            Some(FromRegister::Pong)
        );
        wait_for(&mut worker, &[gateway(1)]).await;
        // The raw gateway now says nothing while keeping its socket open.
        wait_for(&mut worker, &[]).await;
        closed_by_peer(&mut reader).await;
    }

    #[tokio::test]
    async fn one_register_down_changes_nothing() {
        let a = TestRegister::start().await;
        let b = TestRegister::start().await;
        let stop = CancellationToken::new();
        let _stop_all = stop.clone().drop_guard();
        let mut worker = enroll(&[&a, &b], Announce::Worker, &stop);
        // Gateway 1 is known to B only; gateway 0 to A only, so that A's death is visible.
        enroll(&[&b], Announce::Gateway(gateway(1)), &stop);
        enroll(&[&a], Announce::Gateway(gateway(0)), &stop);
        wait_for(&mut worker, &[gateway(0), gateway(1)]).await;
        a.kill().await;
        let keeps_gateway_1 = |l: &BTreeSet<SocketAddrV4>| l.contains(&gateway(1));
        wait_for_list(&mut worker, list(&[gateway(1)]), keeps_gateway_1).await;
        enroll(&[&b], Announce::Gateway(gateway(2)), &stop);
        wait_for_list(
            &mut worker,
            list(&[gateway(1), gateway(2)]),
            keeps_gateway_1,
        )
        .await;
    }

    #[tokio::test]
    async fn members_come_back_after_a_register_restart() {
        let first = TestRegister::start().await;
        let address = first.address;
        let stop = CancellationToken::new();
        let _stop_all = stop.clone().drop_guard();
        // This worker trusts a newly linked register for removals only after the test is over.
        let slow_to_settle = Timing {
            settle: WAIT,
            ..QUICK
        };
        let mut worker = spawn_registration_with(
            vec![address],
            secret(),
            Announce::Worker,
            slow_to_settle,
            stop.clone(),
        );
        enroll(&[&first], Announce::Gateway(gateway(1)), &stop);
        wait_for(&mut worker, &[gateway(1)]).await;
        first.kill().await;
        // The restarted register knows no gateway until they re-register; the worker must
        // not forget gateway 1 meanwhile.
        let second = TestRegister::start_on(address).await;
        enroll(&[&second], Announce::Gateway(gateway(2)), &stop);
        let keeps_gateway_1 = |l: &BTreeSet<SocketAddrV4>| l.contains(&gateway(1));
        wait_for_list(
            &mut worker,
            list(&[gateway(1), gateway(2)]),
            keeps_gateway_1,
        )
        .await;
    }

    #[tokio::test]
    async fn wrong_secret_is_refused() {
        let register = TestRegister::start().await;
        let refused = raw_link(register.address, b"not the secret", Role::Worker).await;
        assert!(
            matches!(refused, Err(HandshakeError::BadSecret)),
            "{:?}",
            refused.err()
        );

        let stop = CancellationToken::new();
        let _stop_all = stop.clone().drop_guard();
        let mut intruder = spawn_registration_with(
            vec![register.address],
            Arc::from(&b"not the secret"[..]),
            Announce::Worker,
            QUICK,
            stop.clone(),
        );
        enroll(&[&register], Announce::Gateway(gateway(1)), &stop);
        let mut worker = enroll(&[&register], Announce::Worker, &stop);
        wait_for(&mut worker, &[gateway(1)]).await;
        // Absence cannot be awaited; give the intruder a few retries' worth of time.
        let intruder_news = timeout(Duration::from_millis(500), intruder.changed()).await;
        assert!(
            intruder_news.is_err(),
            "the intruder got {:?}",
            *intruder.borrow()
        );
    }

    #[tokio::test]
    async fn malformed_input_closes_only_that_link() {
        let register = TestRegister::start().await;
        let stop = CancellationToken::new();
        let _stop_all = stop.clone().drop_guard();
        let mut worker = enroll(&[&register], Announce::Worker, &stop);
        enroll(&[&register], Announce::Gateway(gateway(1)), &stop);
        wait_for(&mut worker, &[gateway(1)]).await;

        // Garbage after a good handshake.
        let (read_half, mut write_half) = TcpStream::connect(register.address)
            .await
            .unwrap()
            .into_split();
        let mut reader = FrameReader::new(read_half);
        connect_handshake(
            &mut reader,
            &mut FrameWriter::new(&mut write_half),
            SECRET,
            Role::Worker,
        )
        .await
        .unwrap();
        write_half
            .write_all(&[0, 0, 0, 3, 0xee, 0xee, 0xee])
            .await
            .unwrap();
        closed_by_peer(&mut reader).await;

        // Garbage instead of the handshake.
        let mut stream = TcpStream::connect(register.address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let read = timeout(WAIT, stream.read_to_end(&mut rest))
            .await
            .expect("link still open");
        assert!(
            read.is_err() || rest.is_empty(),
            "unexpected answer {rest:?}"
        );

        // The worker's link was not disturbed.
        enroll(&[&register], Announce::Gateway(gateway(2)), &stop);
        wait_for(&mut worker, &[gateway(1), gateway(2)]).await;
    }

    #[tokio::test]
    async fn a_silent_register_is_left_and_retried() {
        // A fake register that authenticates members and then never says a word.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (accepted, mut accepts) = mpsc::unbounded_channel();
        let fake = AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let accepted = accepted.clone();
                tokio::spawn(async move {
                    let (mut reader, mut writer) = frame(stream);
                    accept_handshake(&mut reader, &mut writer, SECRET)
                        .await
                        .unwrap();
                    let _ = accepted.send(());
                    while let Ok(Some(_)) = reader.recv::<ToRegister>().await {}
                });
            }
        }));
        let stop = CancellationToken::new();
        let _stop_all = stop.clone().drop_guard();
        spawn_registration_with(
            vec![address],
            secret(),
            Announce::Worker,
            QUICK,
            stop.clone(),
        );
        for _ in 0..2 {
            timeout(WAIT, accepts.recv())
                .await
                .expect("no (re)connection")
                .unwrap();
        }
        drop(fake);
    }

    #[test]
    fn merged_list_is_the_union_of_linked_registers() {
        let lists = MergedLists::new(2);
        let merged = lists.merged.subscribe();
        lists.report(0, Report::Settled(list(&[gateway(1), gateway(2)])));
        lists.report(1, Report::Settled(list(&[gateway(2), gateway(3)])));
        assert_eq!(
            *merged.borrow(),
            list(&[gateway(1), gateway(2), gateway(3)])
        );
        lists.report(0, Report::Down);
        assert_eq!(*merged.borrow(), list(&[gateway(2), gateway(3)]));
        // Every register down: the last set stays.
        lists.report(1, Report::Down);
        assert_eq!(*merged.borrow(), list(&[gateway(2), gateway(3)]));
        lists.report(0, Report::Settled(list(&[])));
        assert_eq!(*merged.borrow(), list(&[]));
    }

    #[test]
    fn a_fresh_register_adds_but_does_not_remove() {
        let lists = MergedLists::new(2);
        let merged = lists.merged.subscribe();
        lists.report(0, Report::Settled(list(&[gateway(1), gateway(2)])));
        lists.report(0, Report::Down);
        // Register 1 has just restarted: gateway 1 has not re-registered with it yet.
        lists.report(1, Report::Fresh(list(&[gateway(3)])));
        assert_eq!(
            *merged.borrow(),
            list(&[gateway(1), gateway(2), gateway(3)])
        );
        lists.report(1, Report::Fresh(list(&[gateway(1), gateway(3)])));
        assert_eq!(
            *merged.borrow(),
            list(&[gateway(1), gateway(2), gateway(3)])
        );
        // Settled: gateway 2 did not come back, so it is gone.
        lists.report(1, Report::Settled(list(&[gateway(1), gateway(3)])));
        assert_eq!(*merged.borrow(), list(&[gateway(1), gateway(3)]));
    }
}
