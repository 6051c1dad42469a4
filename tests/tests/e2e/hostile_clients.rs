//! Hostile clients cost only themselves: what a client may hold in its gateway is bounded
//! (session bytes, groups, name lengths), a legal message always reaches clients that read,
//! idle or half-sent connections cannot lock others out (`max_connections_per_ip`,
//! `idle_timeout`), a WebSocket handshake from a foreign origin is refused, and an impossible
//! heartbeat period is refused by the configuration. Each test keeps a bystander talking.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::Cluster;
use wasmgate_tests::daemon::wasmgate;
use wasmgate_tests::plugins;

use crate::BIN;

fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

async fn cluster(gateway: &str) -> Cluster {
    Cluster::start_with(("commands", plugins::COMMANDS), &[gateway.into()], 1, 1).await
}

/// Keeps `client` asking for echoes until `stop`; every reply must arrive. Returns how many
/// did.
fn keep_asking(mut client: TestClient, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut answered = 0;
        while !stop.is_cancelled() {
            assert_eq!(
                client.ask(&format!("echo {answered}")).await,
                answered.to_string()
            );
            answered += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        answered
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_writes_over_the_limit_are_refused_and_the_client_and_link_survive() {
    let cluster = cluster("listen = \"ws://127.0.0.1:0\"\nmax_groups_per_client = 2").await;
    let gateway = &cluster.gateways[0];
    let addr = gateway.client_addr;
    let mut bystander = TestClient::ws(addr, "/").await.unwrap();
    assert_eq!(bystander.ask("echo before").await, "before");
    let mut hog = TestClient::ws(addr, "/").await.unwrap();

    // One change set over 64 KiB is refused by the argument check.
    let reply = hog.ask(&format!("set big {}", "x".repeat(70_000))).await;
    assert_eq!(
        reply,
        "error invalid-argument changes: 70003 bytes, more than the 65536 a session may hold"
    );
    // Two that fit alone but not together: the second is refused where the whole session is
    // known, and the first is kept.
    let forty = "y".repeat(40_000);
    assert_eq!(hog.ask(&format!("set a {forty}")).await, "ok");
    let reply = hog.ask(&format!("set b {forty}")).await;
    assert!(
        reply.starts_with("error invalid-argument changes: the session would hold 80002 bytes"),
        "{reply}"
    );
    assert_eq!(hog.ask("get a").await, format!("value a {forty}"));
    assert_eq!(hog.ask("get b").await, "none");

    // Names over 256 bytes are refused at the call; joins past max_groups_per_client by the
    // gateway, which keeps the groups the client has.
    let reply = hog.ask(&format!("join {}", "g".repeat(257))).await;
    assert!(
        reply.starts_with("error invalid-argument group: 257 bytes"),
        "{reply}"
    );
    for g in ["g1", "g2", "g3"] {
        assert_eq!(hog.ask(&format!("join {g}")).await, format!("joined {g}"));
    }
    assert_eq!(hog.ask("count g2").await, "count g2 1");
    assert_eq!(hog.ask("count g3").await, "count g3 0");
    assert_eq!(count(&gateway.gateway.counters.groups_refused), 1);

    assert_eq!(hog.ask("echo still here").await, "still here");
    assert_eq!(bystander.ask("echo after").await, "after");
    assert_eq!(
        gateway.gateway.router.len(),
        1,
        "the link to the worker host stands"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_max_message_size_relayed_to_idle_clients_reaches_them_with_defaults() {
    let cluster = cluster("listen = \"ws://127.0.0.1:0\"").await;
    let gateway = &cluster.gateways[0];
    let addr = gateway.client_addr;
    let mut bystander = TestClient::ws(addr, "/").await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TestClient::ws(addr, "/").await.unwrap());
    }
    // A message of exactly the default max_message_size (1 MiB), relayed to everyone: its
    // payload and the queue's per-message charge are more than the default send_buffer.
    let payload = "x".repeat((1 << 20) - "all ".len());
    bystander.send(&format!("all {payload}")).await.unwrap();
    for client in idle.iter_mut().chain([&mut bystander]) {
        assert_eq!(client.recv().await.len(), payload.len());
    }
    // Back to back, as reported: five 1,000,000-byte broadcasts.
    let payload = "z".repeat(1_000_000);
    for _ in 0..5 {
        bystander.send(&format!("all {payload}")).await.unwrap();
    }
    for client in idle.iter_mut().chain([&mut bystander]) {
        for _ in 0..5 {
            assert_eq!(client.recv().await.len(), payload.len());
        }
    }
    assert_eq!(count(&gateway.gateway.counters.slow_readers), 0);
    assert_eq!(bystander.ask("echo after").await, "after");
    cluster.stop().await;
}

/// Connects from `ip` (any address of 127.0.0.0/8 is this machine).
async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(ip.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closes `socket` within `within`.
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0; 64];
    loop {
        match tokio::time::timeout(within, socket.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_unfinished_connections_cannot_lock_out_new_clients() {
    let cluster = cluster(
        "listen = \"text://127.0.0.1:0\"\nmax_connections = 4\nmax_connections_per_ip = 2\n\
         idle_timeout = \"2s\"",
    )
    .await;
    let gateway = &cluster.gateways[0];
    let addr = gateway.client_addr;
    let stop = CancellationToken::new();
    let bystander = keep_asking(TestClient::text(addr).await.unwrap(), stop.clone());

    // One address opens ten connections: two are served, the rest closed on accept.
    let mut hogs = Vec::new();
    for _ in 0..10 {
        hogs.push(connect_from("127.0.0.2", addr).await);
    }
    let mut served = Vec::new();
    for mut hog in hogs {
        if !closed_within(&mut hog, Duration::from_millis(500)).await {
            served.push(hog);
        }
    }
    assert_eq!(served.len(), 2, "max_connections_per_ip");
    assert_eq!(count(&gateway.gateway.counters.refused_per_ip), 8);
    // One stays silent, the other starts a line it never finishes.
    tokio::io::AsyncWriteExt::write_all(&mut served[1], b"echo never fini")
        .await
        .unwrap();

    // Another address is served meanwhile.
    let (r, w) = connect_from("127.0.0.3", addr).await.into_split();
    let mut newcomer = TestClient::Text(tokio::io::BufReader::new(r), w);
    assert_eq!(newcomer.ask("echo in").await, "in");

    // Neither hog sent a complete message: both are closed after idle_timeout.
    let started = Instant::now();
    for hog in &mut served {
        assert!(
            closed_within(hog, Duration::from_secs(10)).await,
            "not closed for idling"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(count(&gateway.gateway.counters.idle_timeouts), 2);
    // The address may connect again.
    let (r, w) = connect_from("127.0.0.2", addr).await.into_split();
    let mut back = TestClient::Text(tokio::io::BufReader::new(r), w);
    assert_eq!(back.ask("echo back").await, "back");
    assert_eq!(newcomer.ask("echo still").await, "still");

    stop.cancel();
    assert!(bystander.await.unwrap() > 0, "the bystander kept talking");
    cluster.stop().await;
}

/// A WebSocket handshake to `addr` carrying `origin`, if any.
async fn ws_with_origin(
    addr: SocketAddr,
    origin: Option<&'static str>,
) -> Result<TestClient, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{addr}/").into_client_request().unwrap();
    if let Some(origin) = origin {
        let value = HeaderValue::from_static(origin);
        request.headers_mut().insert("origin", value);
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(TestClient::Ws(Box::new(ws)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_from_an_origin_not_allowed_is_refused_with_403() {
    let cluster =
        cluster("listen = \"ws://127.0.0.1:0\"\nallowed_origins = [\"https://chat.example\"]")
            .await;
    let gateway = &cluster.gateways[0];
    let addr = gateway.client_addr;
    let mut bystander = ws_with_origin(addr, Some("https://CHAT.example"))
        .await
        .unwrap();
    assert_eq!(bystander.ask("echo before").await, "before");
    for origin in [Some("https://evil.example"), None] {
        match ws_with_origin(addr, origin).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{origin:?}");
            }
            Err(e) => panic!("{origin:?}: {e}"),
            Ok(_) => panic!("{origin:?} was let in"),
        }
    }
    // The 403 goes out before the gateway counts it: wait for the count, then check it.
    let refused = &gateway.gateway.counters.origins_refused;
    let counted = async {
        while count(refused) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), counted).await;
    assert_eq!(count(refused), 2);
    assert_eq!(gateway.gateway.state.client_count(), 1);
    assert_eq!(bystander.ask("echo after").await, "after");
    cluster.stop().await;
}

#[tokio::test]
async fn a_heartbeat_period_under_100ms_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("prod.toml"),
        "[[gateway]]\nlisten = \"ws://127.0.0.1:0\"\napp = \"a\"\nping_interval = \"1ns\"\n",
    )
    .unwrap();
    let out = wasmgate(BIN, dir.path(), &["start", "-c", "prod.toml"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG: {out:?}");
    assert!(
        err.contains("ping_interval") && err.contains("prod.toml"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_api_refuses_names_and_sessions_over_the_limits_with_400() {
    let cluster = Cluster::start_with_push(
        ("commands", plugins::COMMANDS),
        &[wasmgate::config::Protocol::Ws],
        1,
        1,
        "",
    )
    .await;
    let addr = cluster.gateways[0].client_addr;
    let mut bystander = TestClient::ws(addr, "/").await.unwrap();
    let id = bystander.ask("whoami").await;
    let http = reqwest::Client::new();
    let push = cluster.push.unwrap();
    let post = |operation: &str, body: serde_json::Value| {
        http.post(format!("http://{push}/api/{operation}"))
            .json(&body)
            .send()
    };
    let long = "g".repeat(257);
    let refused = post(
        "join_group",
        serde_json::json!({"client_id": id, "group": long}),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), 400);
    let text = refused.text().await.unwrap();
    assert!(text.contains("group: 257 bytes"), "{text}");
    let big = "v".repeat(70_000);
    let session = serde_json::json!({"client_id": id, "session": {"k": big}});
    let refused = post("set_session", session).await.unwrap();
    assert_eq!(refused.status(), 400);
    let text = refused.text().await.unwrap();
    assert!(text.contains("session: 70001 bytes"), "{text}");
    assert_eq!(bystander.ask("get k").await, "none");
    assert_eq!(bystander.ask("echo after").await, "after");
    cluster.stop().await;
}
