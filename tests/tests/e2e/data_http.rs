//! Plugins' outbound HTTP (`wasi:http/outgoing-handler`) through the real command: a request
//! goes out only to an origin the app is granted, is cut with the callback at
//! `process_timeout`, its response body is capped, and an instance's requests in flight are
//! bounded (`max_http_requests`); each with a bystander whose replies keep coming, and each
//! counted in `/metrics`.

use std::path::Path;
use std::time::{Duration, Instant};

use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Node, SECRET, connect_ws, free_port};
use wasmgate_tests::http_server::{HttpServer, SLOW, Tripwire};
use wasmgate_tests::plugins;
use wasmgate_tests::prometheus::{Scrape, scrape};

use crate::BIN;

/// A node with one instance each of apps `m` and `other` (both the commands plugin), on
/// `ws://…:<m>` and `ws://…:<other>`, with `worker` as extra `[worker]` keys and `grants` as
/// `[worker.grants.*]` tables; returns (node, m, other, metrics).
fn start_node(plugins: &Path, worker: &str, grants: &str) -> (Node, u16, u16, u16) {
    let (r, m, other, metrics) = (free_port(), free_port(), free_port(), free_port());
    let node = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{m}\"\napp = \"m\"\nregister = \"127.0.0.1:{r}\"\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{other}\"\napp = \"other\"\nregister = \"127.0.0.1:{r}\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
             [worker]\nplugins = {plugins:?}\ninstances = 1\nregister = \"127.0.0.1:{r}\"\n{worker}\n{grants}\n"
        ),
    );
    (node, m, other, metrics)
}

fn commands_as_m_and_other() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for app in ["m", "other"] {
        std::fs::copy(plugins::COMMANDS, dir.path().join(format!("{app}.wasm"))).unwrap();
    }
    dir
}

/// Asks `client` `question` and expects `answer` within `wait`.
async fn answers(client: &mut TestClient, question: &str, answer: &str, wait: Duration) {
    let asked = Instant::now();
    client.send(question).await.unwrap();
    let reply = client.recv_within(wait).await;
    assert_eq!(
        reply.as_deref().ok(),
        Some(answer),
        "{question:?} unanswered after {:?}",
        asked.elapsed()
    );
}

/// `app`'s outbound HTTP calls with `outcome` in a scrape.
fn http_calls(scrape: &Scrape, app: &str, outcome: &str) -> f64 {
    scrape.count(
        "wasmgate_data_calls_total",
        &[("app", app), ("interface", "http"), ("outcome", outcome)],
    )
}

fn metrics_addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

const REPLY: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_granted_origins_are_reached_and_the_rest_is_refused_before_connecting() {
    let server = HttpServer::start().await;
    let tripwire = Tripwire::start().await;
    let dir = commands_as_m_and_other();
    let grants = format!(
        "[worker.grants.m]\nallowed_outbound_hosts = [\"{}\"]\n",
        server.origin()
    );
    let (node, m, other, metrics) = start_node(dir.path(), "", &grants);
    let mut granted = connect_ws(m).await;
    let mut bystander = connect_ws(m).await;
    let mut ungranted = connect_ws(other).await;

    answers(
        &mut granted,
        &format!("fetch {}", server.url("/hello")),
        "fetched 200 hello",
        REPLY,
    )
    .await;
    answers(&mut bystander, "echo 1", "1", REPLY).await;
    // Same host, another port: another origin.
    answers(
        &mut granted,
        &format!("fetch {}", tripwire.url("/hello")),
        "error fetch HTTP-request-denied",
        REPLY,
    )
    .await;
    answers(
        &mut granted,
        "fetch https://api.example.com/",
        "error fetch HTTP-request-denied",
        REPLY,
    )
    .await;
    answers(&mut bystander, "echo 2", "2", REPLY).await;
    // An app without the grant reaches nothing, not even what another app may.
    answers(
        &mut ungranted,
        &format!("fetch {}", server.url("/hello")),
        "error fetch HTTP-request-denied",
        REPLY,
    )
    .await;
    answers(&mut bystander, "echo 3", "3", REPLY).await;
    assert_eq!(tripwire.connections(), 0, "a denied request connected");
    assert_eq!(server.requests(), 1, "only the granted request arrived");

    // The operator is told which key to change.
    node.wait_for_line(&[
        "outbound HTTP request denied",
        &format!("\"{}\"", tripwire.url("")),
        "allowed_outbound_hosts",
        "[worker.grants.m]",
    ])
    .await;
    node.wait_for_line(&["outbound HTTP request denied", "[worker.grants.other]"])
        .await;
    let counted = scrape(metrics_addr(metrics)).await;
    assert_eq!(http_calls(&counted, "m", "ok"), 1.0);
    assert_eq!(http_calls(&counted, "m", "denied"), 2.0);
    assert_eq!(http_calls(&counted, "other", "denied"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_is_cut_at_process_timeout_and_the_next_event_is_served() {
    let server = HttpServer::start().await;
    let dir = commands_as_m_and_other();
    let grants = format!(
        "[worker.grants.m]\nallowed_outbound_hosts = [\"{}\"]\n",
        server.origin()
    );
    let timeout = Duration::from_secs(1);
    let (_node, m, other, metrics) = start_node(dir.path(), "process_timeout = \"1s\"", &grants);
    let mut slow = connect_ws(m).await;
    let mut same = connect_ws(m).await;
    let mut elsewhere = connect_ws(other).await;
    answers(&mut same, "echo warm", "warm", REPLY).await;

    let asked = Instant::now();
    slow.send(&format!("fetch {}", server.url("/slow")))
        .await
        .unwrap();
    // The instance is inside the fetch before the bystander's event reaches the gateway.
    server.received(1, Duration::from_secs(5)).await;
    answers(
        &mut elsewhere,
        "echo other",
        "other",
        Duration::from_secs(1),
    )
    .await;
    // Queued behind the fetch on the same (only) instance: served once it is cut.
    answers(&mut same, "echo same", "same", Duration::from_secs(4)).await;
    let waited = asked.elapsed();
    assert!(
        waited >= timeout && waited < SLOW / 2,
        "the bystander waited {waited:?} behind a fetch cut at {timeout:?}"
    );
    // The plugin either saw its request time out (it had no time left to do more than
    // answer) or was stopped where it stood; it never waits for the server's answer.
    if let Ok(reply) = slow.recv_within(Duration::from_millis(500)).await {
        assert!(
            reply == "error fetch HTTP-response-timeout"
                || reply == "error fetch connection-read-timeout",
            "{reply}"
        );
    }
    answers(&mut slow, "echo next", "next", REPLY).await;
    assert!(asked.elapsed() < SLOW, "{:?}", asked.elapsed());
    let counted = scrape(metrics_addr(metrics)).await;
    assert_eq!(http_calls(&counted, "m", "timeout"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_over_the_limit_is_refused() {
    let server = HttpServer::start().await;
    let dir = commands_as_m_and_other();
    let grants = format!(
        "[worker.grants.m]\nallowed_outbound_hosts = [\"{}\"]\n",
        server.origin()
    );
    let (node, m, _other, metrics) =
        start_node(dir.path(), "max_http_response_body = \"16KiB\"", &grants);
    let mut client = connect_ws(m).await;
    let mut bystander = connect_ws(m).await;

    let small = format!("fetched 200 {}", "x".repeat(16384));
    answers(
        &mut client,
        &format!("fetch {}", server.url("/big/16384")),
        &small,
        REPLY,
    )
    .await;
    // Announced by its length: refused before the body is read.
    answers(
        &mut client,
        &format!("fetch {}", server.url("/big/16385")),
        "error fetch HTTP-response-body-size",
        REPLY,
    )
    .await;
    answers(&mut bystander, "echo 1", "1", REPLY).await;
    // No length: cut when the excess arrives (far less than the 64 MiB the server would
    // send); wasi:http reports a body's error as text only.
    client
        .send(&format!("fetch {}", server.url("/drip/67108864")))
        .await
        .unwrap();
    let cut = client.recv_within(REPLY).await.unwrap();
    assert_eq!(
        cut,
        "error fetch internal-error HTTP response body size exceeds limit: 16384 bytes",
    );
    answers(&mut bystander, "echo 2", "2", REPLY).await;
    answers(
        &mut client,
        &format!("fetch {}", server.url("/hello")),
        "fetched 200 hello",
        REPLY,
    )
    .await;
    node.wait_for_line(&["max_http_response_body", "\"m\""])
        .await;
    let counted = scrape(metrics_addr(metrics)).await;
    assert_eq!(http_calls(&counted, "m", "too_large"), 2.0);
    assert_eq!(http_calls(&counted, "m", "ok"), 2.0);
}

/// `max_http_requests` bounds the requests one instance has in flight (sent, their bodies
/// not yet read or dropped): one more is refused with `connection-limit-reached` before it
/// connects, and once the plugin lets go of its responses it may send as many again. Another
/// app's instance, with the same grant and cap, fetches meanwhile as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_past_the_cap_are_refused_before_connecting() {
    let server = HttpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugins::MISBEHAVE, dir.path().join("m.wasm")).unwrap();
    std::fs::copy(plugins::COMMANDS, dir.path().join("other.wasm")).unwrap();
    let origin = server.origin();
    let grants = format!(
        "[worker.grants.m]\nallowed_outbound_hosts = [\"{origin}\"]\n\
         [worker.grants.other]\nallowed_outbound_hosts = [\"{origin}\"]\n"
    );
    let (node, m, other, metrics) = start_node(dir.path(), "max_http_requests = 2", &grants);
    let mut flooder = connect_ws(m).await;
    let mut bystander = connect_ws(other).await;
    let hello = server.url("/hello");
    let fetch = format!("fetch {hello}");

    let limit = "connection-limit-reached";
    let refused = format!("200 200 {limit} {limit}");
    answers(&mut flooder, &format!("flood 4 {hello}"), &refused, REPLY).await;
    answers(&mut bystander, &fetch, "fetched 200 hello", REPLY).await;
    assert_eq!(server.requests(), 3, "the refused requests never arrived");
    answers(&mut flooder, &format!("flood 2 {hello}"), "200 200", REPLY).await;
    answers(&mut bystander, &fetch, "fetched 200 hello", REPLY).await;
    assert_eq!(server.requests(), 6);

    node.wait_for_line(&["max_http_requests", "plugin=\"m\""])
        .await;
    let counted = scrape(metrics_addr(metrics)).await;
    assert_eq!(http_calls(&counted, "m", "ok"), 4.0);
    assert_eq!(http_calls(&counted, "m", "error"), 2.0);
    assert_eq!(http_calls(&counted, "other", "ok"), 2.0);
}
