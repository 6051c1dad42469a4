//! The register and its members together over loopback, and the merge rules on their own.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::link::{Timing, frame};
use super::member::spawn_registration_with;
use super::merge::{MergedLists, Report};
use super::server::run_with;
use super::{Announce, RegisterReach};
use crate::transport::{LinkRead, LinkWrite, Stream, Trust};
use crate::wire::{
    FrameReader, FrameWriter, FromRegister, HandshakeError, Peer, ToRegister, accept_handshake,
    connect_handshake,
};

/// Short enough that silence is noticed within a test, long enough for a loaded machine.
const QUICK: Timing = Timing {
    ping_interval: Duration::from_millis(100),
    silent_intervals: 10,
    settle: Duration::ZERO,
};

/// How long a test waits for an expected event before failing.
const WAIT: Duration = Duration::from_secs(10);

const SECRET: &[u8] = b"cluster secret";

fn secret() -> Trust {
    Trust::plain(Arc::from(SECRET))
}

fn gateway(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), port))
}

/// A gateway announcing `gateway(port)`, without a GatewayWorker port.
fn announce_gateway(port: u16) -> Announce {
    Announce::Gateway {
        internal: gateway(port),
        gatewayworker: None,
    }
}

fn list(addresses: &[SocketAddr]) -> BTreeSet<SocketAddr> {
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
        let task = tokio::spawn(run_with(
            listener,
            Default::default(),
            secret(),
            QUICK,
            stop.clone(),
        ));
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
) -> watch::Receiver<BTreeSet<SocketAddr>> {
    let addresses = registers.iter().map(|r| r.address).collect();
    spawn_registration_with(
        RegisterReach::new(addresses),
        secret(),
        announce,
        QUICK,
        stop.clone(),
    )
}

/// Waits until the list is `expected`, checking `invariant` on every version seen.
async fn wait_for_list(
    gateways: &mut watch::Receiver<BTreeSet<SocketAddr>>,
    expected: BTreeSet<SocketAddr>,
    invariant: impl Fn(&BTreeSet<SocketAddr>) -> bool,
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

async fn wait_for(gateways: &mut watch::Receiver<BTreeSet<SocketAddr>>, expected: &[SocketAddr]) {
    wait_for_list(gateways, list(expected), |_| true).await;
}

type RawLink = (FrameReader<LinkRead>, FrameWriter<LinkWrite>);

/// A hand-driven link to a register.
async fn raw_link(
    address: SocketAddr,
    secret: &[u8],
    role: Peer,
) -> Result<RawLink, HandshakeError> {
    let (mut reader, mut writer) = frame(Stream::Plain(TcpStream::connect(address).await.unwrap()));
    connect_handshake(&mut reader, &mut writer, secret, role).await?;
    Ok((reader, writer))
}

/// Waits until the register closes a hand-driven link.
async fn closed_by_peer(reader: &mut FrameReader<LinkRead>) {
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
    enroll(&[&register], announce_gateway(1), &stop);
    let mut worker = enroll(&[&register], Announce::Worker, &stop);
    wait_for(&mut worker, &[gateway(1)]).await;
    enroll(&[&register], announce_gateway(2), &stop);
    wait_for(&mut worker, &[gateway(1), gateway(2)]).await;
    // A second announcement of a known address changes nothing; its departure neither.
    let (mut reader, mut writer) = raw_link(register.address, SECRET, Peer::Gateway)
        .await
        .unwrap();
    writer
        .feed(&ToRegister::Gateway {
            address: gateway(2),
            gatewayworker: None,
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
    enroll(&[&register], announce_gateway(3), &stop);
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
    enroll(&[&register], announce_gateway(1), &leaving);
    enroll(&[&register], announce_gateway(2), &stop);
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
    let (mut reader, mut writer) = raw_link(register.address, SECRET, Peer::Gateway)
        .await
        .unwrap();
    writer
        .feed(&ToRegister::Gateway {
            address: gateway(1),
            gatewayworker: None,
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
    enroll(&[&b], announce_gateway(1), &stop);
    enroll(&[&a], announce_gateway(0), &stop);
    wait_for(&mut worker, &[gateway(0), gateway(1)]).await;
    a.kill().await;
    let keeps_gateway_1 = |l: &BTreeSet<SocketAddr>| l.contains(&gateway(1));
    wait_for_list(&mut worker, list(&[gateway(1)]), keeps_gateway_1).await;
    enroll(&[&b], announce_gateway(2), &stop);
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
        RegisterReach::new(vec![address]),
        secret(),
        Announce::Worker,
        slow_to_settle,
        stop.clone(),
    );
    enroll(&[&first], announce_gateway(1), &stop);
    wait_for(&mut worker, &[gateway(1)]).await;
    first.kill().await;
    // The restarted register knows no gateway until they re-register; the worker must
    // not forget gateway 1 meanwhile.
    let second = TestRegister::start_on(address).await;
    enroll(&[&second], announce_gateway(2), &stop);
    let keeps_gateway_1 = |l: &BTreeSet<SocketAddr>| l.contains(&gateway(1));
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
    let refused = raw_link(register.address, b"not the secret", Peer::Worker).await;
    assert!(
        matches!(refused, Err(HandshakeError::BadSecret)),
        "{:?}",
        refused.err()
    );

    let stop = CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();
    let mut intruder = spawn_registration_with(
        RegisterReach::new(vec![register.address]),
        Trust::plain(Arc::from(&b"not the secret"[..])),
        Announce::Worker,
        QUICK,
        stop.clone(),
    );
    enroll(&[&register], announce_gateway(1), &stop);
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
    enroll(&[&register], announce_gateway(1), &stop);
    wait_for(&mut worker, &[gateway(1)]).await;

    // Garbage after a good handshake.
    let (read_half, mut write_half) =
        Stream::Plain(TcpStream::connect(register.address).await.unwrap()).split();
    let mut reader = FrameReader::new(read_half);
    connect_handshake(
        &mut reader,
        &mut FrameWriter::new(&mut write_half),
        SECRET,
        Peer::Worker,
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
    enroll(&[&register], announce_gateway(2), &stop);
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
                let (mut reader, mut writer) = frame(Stream::Plain(stream));
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
        RegisterReach::new(vec![address]),
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
    let merged = lists.subscribe();
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
    let merged = lists.subscribe();
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
