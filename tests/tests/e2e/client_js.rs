//! The browser client library (`clients/js`), as a page loads it from wasmgate's `[web]` server
//! (`/_wasmgate/client.js`), driven in headless Chromium by `tests/browser/client.cjs` against
//! the `echo` plugin of a real server process that the test stops and starts again on the same
//! ports when the script asks. A bystander WebSocket client of the same server is answered
//! before the stop and after the start.
//!
//! Chromium and playwright-core are installed as for the chat's browser tests, and the tests
//! are skipped loudly when they cannot be.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{SECRET, connect_ws, free_port};
use wasmgate_tests::daemon::Daemon;
use wasmgate_tests::{plugins, tools};

use crate::BIN;
use crate::chat_browser::Browser;

/// Longest a whole scenario may take; each of its waits in the page is at most 10 s.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_survives_a_restart_and_sends_what_it_queued_meanwhile() {
    scenario(
        "restart",
        "client_js::a_page_survives_a_restart_and_sends_what_it_queued_meanwhile",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_hands_the_message_to_the_overflow_callback() {
    scenario(
        "overflow",
        "client_js::a_full_queue_hands_the_message_to_the_overflow_callback",
    )
    .await;
}

/// The gateway pings every second with `ping_data` and drops a client silent for about one
/// interval: the library answers for a page that asks it to, and ignores the pings otherwise.
/// (A shorter interval drops the answering page too when a busy machine stalls Chromium.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_is_answered_or_ignored_as_configured() {
    let test = "client_js::the_heartbeat_is_answered_or_ignored_as_configured";
    let heartbeat = "ping_interval = \"1s\"\nping_not_response_limit = 1\nping_data = \"ping\"\n";
    scenario_with("heartbeat", test, heartbeat, &[]).await;
}

/// Runs `name` of the script for `test` against a fresh echo server, stopping and starting
/// the server when the script asks (once each); fails with the script's output unless every
/// step held.
async fn scenario(name: &str, test: &str) {
    scenario_with(name, test, "", &["stop", "start"]).await;
}

/// [`scenario`] with `gateway` (keys of the gateway listener) added to the configuration,
/// and `requests` the stops and starts the script must ask for. Without any, the bystander
/// speaks every 100 ms while the script runs (so a heartbeat never drops it) and is answered.
async fn scenario_with(name: &str, test: &str, gateway: &str, requests: &[&str]) {
    let Some(browser) = Browser::install(test).await else {
        return;
    };
    let (g, w) = (free_port(), free_port());
    let mut daemon = echo_server(g, w, gateway).await;
    let mut bystander = answered(g).await;

    let script = tools::workspace().join("tests/browser/client.cjs");
    let mut node = tokio::process::Command::new("node")
        .arg(&script)
        .args([
            &format!("http://127.0.0.1:{w}/"),
            &format!("ws://127.0.0.1:{g}"),
            name,
        ])
        .env("NODE_PATH", &browser.modules)
        .env("CHROMIUM", &browser.chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting node");
    let mut asks = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut done = node.stdin.take().unwrap();
    let mut asked = Vec::new();
    let mut cadence = tokio::time::interval(Duration::from_millis(100));
    let steps = async {
        loop {
            let line = tokio::select! {
                line = asks.next_line() => match line.unwrap() {
                    Some(line) => line,
                    None => break,
                },
                _ = cadence.tick(), if requests.is_empty() => {
                    assert_eq!(bystander.ask("bystander").await, "bystander");
                    continue;
                }
            };
            match line.as_str() {
                "stop" => {
                    let stopped = daemon.stop().await;
                    assert!(stopped.status.success(), "{stopped:?}");
                    bystander.assert_closed().await;
                }
                "start" => {
                    let started = daemon.start_again().await;
                    assert!(started.status.success(), "{started:?}");
                    bystander = answered(g).await;
                }
                other => panic!("the script asked for {other:?}"),
            }
            asked.push(line);
            done.write_all(b"done\n").await.unwrap();
        }
    };
    tokio::time::timeout(SCENARIO_TIMEOUT, steps)
        .await
        .unwrap_or_else(|_| panic!("the scenario {name} did not end in time"));
    let output = tokio::time::timeout(SCENARIO_TIMEOUT, node.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the scenario {name} did not end in time"))
        .unwrap();
    assert!(
        output.status.success(),
        "the scenario {name} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(asked, requests, "the script's requests");
    assert_eq!(bystander.ask("still here").await, "still here");
}

/// A bystander connected to the echo server on port `g`, answered once.
async fn answered(g: u16) -> TestClient {
    let mut client = connect_ws(g).await;
    assert_eq!(client.ask("bystander").await, "bystander");
    client
}

/// Every role in one process started from a directory (`wasmgate start -d`): the `echo`
/// plugin behind `ws://127.0.0.1:<g>` (its listener with the keys `gateway`), and the
/// library's test page served on port `w`.
async fn echo_server(g: u16, w: u16, gateway: &str) -> Daemon {
    let r = free_port();
    let root = tools::workspace().join("tests/browser/client");
    let config = format!(
        "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"echo\"\n{gateway}\
         [worker]\nplugins = \"plugins\"\n\
         [web]\nlisten = \"127.0.0.1:{w}\"\nroot = {root:?}\n"
    );
    let (daemon, started) = Daemon::start(BIN, &config, &[("echo", plugins::ECHO)]).await;
    assert!(started.status.success(), "{started:?}");
    daemon
}
