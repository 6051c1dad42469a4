//! The gateway's limits cut off only the client that crosses them: `max_connections`,
//! `max_message_size`, `handshake_timeout` and `send_buffer` (a client that never reads while
//! the others take a 10 MiB/s broadcast is dropped, and memory stays bounded).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wasmgate_tests::client::{TestClient, frame};
use wasmgate_tests::cluster::Cluster;
use wasmgate_tests::plugins;

fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Polls `done` every 20 ms until it holds; fails after `within`.
async fn until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_max_connections_is_refused_and_the_others_keep_working() {
    let cluster = Cluster::start_with(
        ("commands", plugins::COMMANDS),
        &["listen = \"ws://127.0.0.1:0\"\nmax_connections = 2".into()],
        1,
        1,
    )
    .await;
    let gateway = &cluster.gateways[0];
    let addr = gateway.client_addr;
    let mut a = TestClient::ws(addr, "/").await.unwrap();
    let mut b = TestClient::ws(addr, "/").await.unwrap();
    assert_eq!(a.ask("echo a").await, "a");
    assert_eq!(b.ask("join g").await, "joined g");
    assert!(
        TestClient::ws(addr, "/").await.is_err(),
        "a third client is refused"
    );
    assert_eq!(count(&gateway.gateway.counters.refused), 1);
    a.send("pub g still here").await.unwrap();
    assert_eq!(b.recv().await, "still here");
    assert_eq!(a.ask("echo a").await, "a");

    // The slot comes back once a client has left.
    drop(b);
    until(Duration::from_secs(10), "b's slot freed", || {
        gateway.gateway.state.client_count() == 1
    })
    .await;
    let mut c = loop {
        // The slot is released just after the client leaves the state: retry briefly.
        if let Ok(c) = TestClient::ws(addr, "/").await {
            break c;
        }
        assert!(count(&gateway.gateway.counters.refused) < 100);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(c.ask("echo c").await, "c");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_closes_only_its_sender() {
    let limit = "max_message_size = \"1KiB\"";
    let cluster = Cluster::start_with(
        ("commands", plugins::COMMANDS),
        &[
            format!("listen = \"ws://127.0.0.1:0\"\n{limit}"),
            format!("listen = \"text://127.0.0.1:0\"\n{limit}"),
            format!("listen = \"frame://127.0.0.1:0\"\n{limit}"),
        ],
        1,
        1,
    )
    .await;
    let addr = |i: usize| cluster.gateways[i].client_addr;
    let mut bystander = TestClient::ws(addr(0), "/").await.unwrap();
    let fits = format!("echo {}", "x".repeat(1019));
    assert_eq!(fits.len(), 1024);
    assert_eq!(bystander.ask(&fits).await.len(), 1019);

    let mut ws = TestClient::ws(addr(0), "/").await.unwrap();
    ws.send(&format!("echo {}", "x".repeat(2000)))
        .await
        .unwrap();
    let close = ws.close_frame().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Size);
    assert_eq!(close.reason.as_str(), "message larger than 1024 bytes");

    let mut text = TestClient::text(addr(1)).await.unwrap();
    text.send(&"y".repeat(2000)).await.unwrap();
    text.assert_closed().await;

    // Only the prefix of a 1 MiB frame: refused on its length, before any of it arrives.
    let mut framed = TestClient::frame(addr(2)).await.unwrap();
    framed.send_raw(&frame(&[0; 1 << 20])[..4]).await.unwrap();
    framed.assert_closed().await;

    for gateway in &cluster.gateways {
        assert_eq!(count(&gateway.gateway.counters.oversized), 1);
    }
    assert_eq!(bystander.ask(&fits).await.len(), 1019);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_does_not_finish_its_handshake_is_dropped() {
    let cluster = Cluster::start_with(
        ("commands", plugins::COMMANDS),
        &["listen = \"ws://127.0.0.1:0\"\nhandshake_timeout = \"1s\"".into()],
        1,
        1,
    )
    .await;
    let gateway = &cluster.gateways[0];
    let started = Instant::now();
    let mut mute = TcpStream::connect(gateway.client_addr).await.unwrap();
    let mut client = TestClient::ws(gateway.client_addr, "/").await.unwrap();
    assert_eq!(client.ask("echo meanwhile").await, "meanwhile");
    let read = tokio::time::timeout(Duration::from_secs(20), mute.read(&mut [0; 16]))
        .await
        .expect("the mute connection was not dropped");
    assert_eq!(read.unwrap(), 0, "closed without a word");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(count(&gateway.gateway.counters.failed_handshakes), 1);
    assert_eq!(
        gateway.gateway.state.client_count(),
        1,
        "it never became a client"
    );
    cluster.stop().await;
}

/// The broadcast: `BURST` messages of `PAYLOAD` bytes every `TICK`, 5 MiB/s: a burst is half
/// a `send_buffer`, so a reader whose writer runs late on a busy machine keeps up.
const PAYLOAD: usize = 64 * 1024;
const BURST: usize = 8;
const TICK: Duration = Duration::from_millis(100);

/// How much the process may grow while the slow client is connected and dropped. It holds the
/// whole cluster and its clients; the slow client alone may pin `send_buffer` (1 MiB) plus
/// what its writer encoded and could not write (64 KiB and one message) in the gateway.
/// Without the limit, its queue would
/// grow by the whole broadcast, 30 MiB over the measured phase.
const RSS_GROWTH_BOUND: u64 = 16 << 20;

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib << 10
}

/// Sends `ticks` bursts of the broadcast through `sender`; returns the peak RSS seen.
async fn broadcast(sender: &mut TestClient, ticks: usize) -> u64 {
    let message = format!("pub room {}", "x".repeat(PAYLOAD));
    let mut every = tokio::time::interval(TICK);
    let mut peak = 0;
    for _ in 0..ticks {
        every.tick().await;
        for _ in 0..BURST {
            sender.send(&message).await.unwrap();
        }
        peak = peak.max(rss());
    }
    peak
}

/// RSS is per process: measured where no other test's cluster is counted.
#[test]
fn a_client_that_never_reads_is_dropped_and_memory_stays_bounded() {
    crate::in_own_process(
        "limits::a_client_that_never_reads_is_dropped_and_memory_stays_bounded",
        slow_reader_and_memory,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_and_memory() {
    let cluster = Cluster::start_with(
        ("commands", plugins::COMMANDS),
        &["listen = \"ws://127.0.0.1:0\"".into()],
        1,
        1,
    )
    .await;
    let gateway = &cluster.gateways[0];
    let addr = gateway.client_addr;
    // The sender is not in the room: it does not read either.
    let mut sender = TestClient::ws(addr, "/").await.unwrap();
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut reader = TestClient::ws(addr, "/").await.unwrap();
        assert_eq!(reader.ask("join room").await, "joined room");
        readers.push(tokio::spawn(async move {
            let mut messages = 0u64;
            // A reader the gateway closes ends with what it got, for the assertion to show.
            while let Ok(message) = reader.recv_within(Duration::from_secs(10)).await {
                if message == "done" {
                    break;
                }
                messages += 1;
            }
            messages
        }));
    }
    // Warm up with every client reading, so buffers, the plugin's memory and the allocator
    // reach their working size before the baseline is taken.
    broadcast(&mut sender, 10).await;
    let baseline = rss();

    // A client with a tiny receive window that completes its handshake and never reads again.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream)
        .await
        .unwrap();
    futures_util::SinkExt::send(&mut slow, "join room".into())
        .await
        .unwrap();
    let peak = broadcast(&mut sender, 60).await;
    sender.send("pub room done").await.unwrap();
    let received: Vec<u64> = futures_util::future::try_join_all(readers).await.unwrap();
    let sent = (10 + 60) * BURST as u64;

    let grown = peak.saturating_sub(baseline);
    println!(
        "RSS baseline {} MiB, growth {} KiB",
        baseline >> 20,
        grown >> 10
    );
    assert!(
        grown < RSS_GROWTH_BOUND,
        "RSS grew by {} KiB (baseline {} MiB)",
        grown >> 10,
        baseline >> 20
    );
    let slow_readers = count(&gateway.gateway.counters.slow_readers);
    assert_eq!(
        (received, slow_readers),
        (vec![sent, sent], 1),
        "the readers missed nothing; only the slow client was cut off"
    );
    // What the slow client can still read is what the kernel buffered before the drop.
    let drained = async {
        let mut bytes = 0;
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut slow).await {
            bytes += message.len();
        }
        bytes
    };
    let drained = tokio::time::timeout(Duration::from_secs(20), drained)
        .await
        .expect("the slow client's connection was not closed");
    assert!(
        (drained as u64) < sent * PAYLOAD as u64 / 4,
        "the slow client got {drained} bytes"
    );
    cluster.stop().await;
}
