//! The heartbeat with GatewayWorker's semantics, on real sockets and real time: with a limit a
//! silent client is dropped and a talking one kept; with limit 0 clients are only pinged —
//! with `ping_data` as a message, or with WebSocket ping frames.
//!
//! Bounds are generous on the late side (a loaded machine only delays ticks) and exact on the
//! early side, where the semantics forbid a disconnect.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use wasmgate_tests::client::{RECV_TIMEOUT, Silence, TestClient};
use wasmgate_tests::cluster::Cluster;
use wasmgate_tests::plugins;

/// `ping_interval` of these tests.
const INTERVAL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_one_drops_a_silent_client_after_two_intervals_and_keeps_a_talking_one() {
    let cluster = Cluster::start_with(
        ("misbehave", plugins::MISBEHAVE),
        &[format!(
            "listen = \"ws://127.0.0.1:0\"\nping_interval = \"{}s\"\n\
             ping_not_response_limit = 1\nping_data = \"ping\"",
            INTERVAL.as_secs()
        )],
        1,
        1,
    )
    .await;
    let addr = cluster.gateways[0].client_addr;
    let started = Instant::now();
    let mut silent = TestClient::ws(addr, "/").await.unwrap();
    let mut talking = TestClient::ws(addr, "/").await.unwrap();

    let talk = async {
        // Well inside an interval, every time: the talker is never silent for a whole one.
        let mut n = 0;
        while started.elapsed() < 3 * INTERVAL {
            assert_eq!(talking.ask(&format!("echo {n}")).await, n.to_string());
            n += 1;
            tokio::time::sleep(INTERVAL / 8).await;
        }
        talking
    };
    let listen = async {
        // The one ping a silent client gets, half an interval before it is dropped.
        assert_eq!(silent.recv().await, "ping");
        let pinged = started.elapsed();
        assert_eq!(silent.recv_within(RECV_TIMEOUT).await, Err(Silence::Closed));
        (pinged, started.elapsed())
    };
    let (mut talking, (pinged, dropped)) = tokio::join!(talk, listen);
    assert!(
        pinged >= INTERVAL * 3 / 2 && dropped >= INTERVAL * 2,
        "pinged after {pinged:?}, dropped after {dropped:?}: too early"
    );
    assert!(
        dropped < INTERVAL * 2 + RECV_TIMEOUT,
        "dropped after {dropped:?}"
    );
    assert_eq!(
        talking.ask("echo alive").await,
        "alive",
        "the talking client was never pinged or dropped"
    );
    let counted = &cluster.gateways[0].gateway.counters.heartbeat_timeouts;
    assert_eq!(counted.load(std::sync::atomic::Ordering::Relaxed), 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_zero_only_pings_with_data_or_with_websocket_ping_frames() {
    let interval = Duration::from_secs(1);
    let cluster = Cluster::start_with(
        ("misbehave", plugins::MISBEHAVE),
        &[
            "listen = \"text://127.0.0.1:0\"\nping_interval = \"1s\"\nping_data = \"ping\"".into(),
            "listen = \"ws://127.0.0.1:0\"\nping_interval = \"1s\"\nping_frame = true\n\
             ping_data = \"hb\""
                .into(),
        ],
        1,
        1,
    )
    .await;
    let started = Instant::now();
    let mut text = TestClient::text(cluster.gateways[0].client_addr)
        .await
        .unwrap();
    let mut ws = TestClient::ws(cluster.gateways[1].client_addr, "/")
        .await
        .unwrap();
    const PINGS: u32 = 3;
    for _ in 0..PINGS {
        assert_eq!(text.recv().await, "ping");
    }
    let TestClient::Ws(stream) = &mut ws else {
        unreachable!()
    };
    for _ in 0..PINGS {
        let next = tokio::time::timeout(RECV_TIMEOUT, stream.next()).await;
        match next.expect("a ping in time") {
            Some(Ok(Message::Ping(data))) => assert_eq!(&data[..], b"hb"),
            other => panic!("expected a ping frame, got {other:?}"),
        }
    }
    // The first ping comes one interval after a client spoke (here: connected), then one
    // per interval; silence never drops anyone with limit 0.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= interval * (PINGS + 1),
        "{PINGS} pings within {elapsed:?}"
    );
    assert_eq!(text.ask("echo still").await, "still");
    assert_eq!(ws.ask("echo still").await, "still");
    cluster.stop().await;
}
