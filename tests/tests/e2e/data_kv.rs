//! Key-value storage (`wasi:keyvalue`) end to end: the reference protocol's `kvset`, `kvget`
//! and `incr` (the conformance suite's section, for the Rust, Python and JavaScript builds)
//! against a real `redis-server` (installed by the test through apt, started on a
//! free loopback port; skipped loudly where it cannot be installed), an app without the grant,
//! values over the cap, the embedded store across a restart of a real process, and a Redis
//! server that dies under a running app. Every test keeps a bystander whose replies must keep
//! arriving.

use std::time::{Duration, Instant};

use wasmgate::config::Protocol;
use wasmgate::metrics;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Cluster, Node, SECRET, connect_ws, free_port};
use wasmgate_tests::polyglot::{self, Language};
use wasmgate_tests::redis::RedisServer;
use wasmgate_tests::{plugins, tools};

use crate::BIN;
use crate::conformance::key_value;

/// A real Redis server, or `None` after reporting `test` as skipped.
async fn redis(test: &str) -> Option<RedisServer> {
    let binary = tokio::task::spawn_blocking(tools::redis_server)
        .await
        .unwrap();
    let binary = tools::or_skip(binary, test)?;
    tools::or_skip(RedisServer::start(binary).await, test)
}

/// A cluster serving the Rust commands plugin as `app`, with `worker` as extra worker keys
/// (grants); a WebSocket and a text gateway, one worker host, two instances.
async fn cluster(app: &str, worker: &str) -> Cluster {
    let gateways = [Protocol::Ws, Protocol::Text];
    Cluster::start_with_worker((app, plugins::COMMANDS), &gateways, 1, 2, worker).await
}

/// A WebSocket client that uses the store, and a text client beside it.
async fn clients(cluster: &Cluster) -> (TestClient, TestClient) {
    let plugin = TestClient::ws(cluster.gateways[0].client_addr, "/")
        .await
        .unwrap();
    let bystander = TestClient::text(cluster.gateways[1].client_addr)
        .await
        .unwrap();
    (plugin, bystander)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_protocol_against_redis_rust() {
    against_redis(
        plugins::COMMANDS,
        "data_kv::reference_protocol_against_redis_rust",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_protocol_against_redis_python() {
    polyglot_against_redis(
        Language::Python,
        "data_kv::reference_protocol_against_redis_python",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_protocol_against_redis_javascript() {
    let test = "data_kv::reference_protocol_against_redis_javascript";
    polyglot_against_redis(Language::JavaScript, test).await;
}

async fn polyglot_against_redis(language: Language, test: &str) {
    let built = tokio::task::spawn_blocking(move || polyglot::commands(language))
        .await
        .unwrap();
    if let Some(plugin) = tools::or_skip(built, test) {
        against_redis(plugin.to_str().unwrap(), test).await;
    }
}

/// The conformance suite's key-value section against a real Redis server, for one build of
/// the reference plugin.
async fn against_redis(plugin: &str, test: &str) {
    let Some(server) = redis(test).await else {
        return;
    };
    let grant = format!("[worker.grants.commands]\nkv = \"{}\"\n", server.url());
    let gateways = [Protocol::Ws, Protocol::Text];
    let cluster = Cluster::start_with_worker(("commands", plugin), &gateways, 1, 2, &grant).await;
    let mut a = TestClient::ws(cluster.gateways[0].client_addr, "/")
        .await
        .unwrap();
    let mut b = TestClient::text(cluster.gateways[1].client_addr)
        .await
        .unwrap();
    let mut c = TestClient::ws(cluster.gateways[0].client_addr, "/")
        .await
        .unwrap();
    key_value(&mut a, &mut b, &mut c).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_without_the_grant_is_refused_with_words() {
    let app = "kvdenied";
    let cluster = cluster(app, "").await;
    let (mut plugin, mut bystander) = clients(&cluster).await;
    let denied = format!(
        "error kv app {app} has no kv grant: add kv = \"embedded\" (or kv = \
         \"redis://host:port/db\") to [worker.grants.{app}]"
    );
    let before = metrics::data_calls(app, "kv", "denied");
    assert_eq!(plugin.ask("kvset k v").await, denied);
    assert_eq!(bystander.ask("echo still here").await, "still here");
    assert_eq!(plugin.ask("kvget k").await, denied);
    assert_eq!(plugin.ask("incr n").await, denied);
    assert_eq!(
        metrics::data_calls(app, "kv", "denied") - before,
        3,
        "each refused call is counted as denied"
    );
    assert_eq!(
        plugin.ask("echo served").await,
        "served",
        "no trap: same client, next event"
    );
    assert_eq!(bystander.ask("echo still here").await, "still here");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_and_keys_over_the_caps_fail_and_change_nothing() {
    let app = "kvcaps";
    let worker = format!(
        "max_kv_value_size = \"16B\"\nmax_kv_key_size = \"8B\"\n[worker.grants.{app}]\nkv = \"embedded\"\n"
    );
    let cluster = cluster(app, &worker).await;
    let (mut plugin, mut bystander) = clients(&cluster).await;
    let before = metrics::data_calls(app, "kv", "too_large");
    assert_eq!(
        plugin.ask("kvset k 0123456789abcdef").await,
        "ok",
        "16 bytes fit"
    );
    assert_eq!(
        plugin.ask("kvset k 0123456789abcdefX").await,
        "error kv the value is 17 bytes, over max_kv_value_size (16 bytes)"
    );
    assert_eq!(bystander.ask("echo still here").await, "still here");
    assert_eq!(plugin.ask("kvget k").await, "value k 0123456789abcdef");
    assert_eq!(
        plugin.ask("kvget ninebytes").await,
        "error kv the key is 9 bytes, over max_kv_key_size (8 bytes)"
    );
    assert_eq!(metrics::data_calls(app, "kv", "too_large") - before, 2);
    cluster.stop().await;
}

/// The configuration of a one-process node serving the commands plugin as `kv` on
/// `ws://127.0.0.1:<gateway>` with the embedded store in `data`.
fn node_config(plugins: &std::path::Path, data: &std::path::Path, gateway: u16) -> String {
    let r = free_port();
    format!(
        "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nlisten = \"ws://127.0.0.1:{gateway}\"\napp = \"kv\"\nregister = \"127.0.0.1:{r}\"\n\
         [worker]\nplugins = {plugins:?}\ndata = {data:?}\ninstances = 2\nregister = \"127.0.0.1:{r}\"\n\
         [worker.grants.kv]\nkv = \"embedded\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_survives_a_restart_of_the_process() {
    let plugins = wasmgate_tests::cluster::PluginsDir::with(&[("kv", plugins::COMMANDS)]);
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut node = Node::start(BIN, &node_config(plugins.path(), data.path(), port));
    let mut writer = connect_ws(port).await;
    let mut bystander = connect_ws(port).await;
    assert_eq!(writer.ask("kvset greeting hello again").await, "ok");
    assert_eq!(writer.ask("incr visits").await, "incr visits 1");
    assert_eq!(bystander.ask("echo here").await, "here");
    assert!(node.terminate().await.success());
    node.wait_for_line(&["embedded key-value store opened", "worker host"])
        .await;
    let file = data.path().join("kv").join("kv.sqlite");
    assert!(
        file.is_file(),
        "one file per app under data: {}",
        file.display()
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(file.parent().unwrap())
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "the app's directory is private");

    let port = free_port();
    let _node = Node::start(BIN, &node_config(plugins.path(), data.path(), port));
    let mut reader = connect_ws(port).await;
    let mut bystander = connect_ws(port).await;
    assert_eq!(
        reader.ask("kvget greeting").await,
        "value greeting hello again"
    );
    assert_eq!(reader.ask("incr visits").await, "incr visits 2");
    assert_eq!(bystander.ask("echo here").await, "here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_server_that_dies_fails_the_call_and_the_next_event_is_served() {
    let Some(mut server) = redis("data_kv::a_redis_server_that_dies").await else {
        return;
    };
    let app = "kvdown";
    let grant = format!("[worker.grants.{app}]\nkv = \"{}\"\n", server.url());
    let cluster = cluster(app, &grant).await;
    let (mut plugin, mut bystander) = clients(&cluster).await;
    assert_eq!(plugin.ask("kvset k v").await, "ok");
    assert_eq!(plugin.ask("kvget k").await, "value k v");
    server.kill().await;
    assert!(!server.ping().await, "the server is down");

    let before = metrics::data_calls(app, "kv", "error");
    let asked = Instant::now();
    plugin.send("kvget k").await.unwrap();
    let reply = plugin
        .recv_within(Duration::from_secs(9))
        .await
        .expect("the call fails within the store's timeouts, before process_timeout");
    assert!(
        reply.starts_with("error kv key-value store unavailable"),
        "{reply:?} after {:?}",
        asked.elapsed()
    );
    assert_eq!(metrics::data_calls(app, "kv", "error") - before, 1);
    assert_eq!(bystander.ask("echo still here").await, "still here");
    assert_eq!(
        plugin.ask("echo next").await,
        "next",
        "the next event is served"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_frozen_server_is_cut_at_process_timeout_and_the_store_recovers() {
    let Some(server) = redis("data_kv::a_call_to_a_frozen_server").await else {
        return;
    };
    let app = "kvfrozen";
    let worker = format!(
        "process_timeout = \"1s\"\n[worker.grants.{app}]\nkv = \"{}\"\n",
        server.url()
    );
    let cluster = cluster(app, &worker).await;
    let (mut plugin, mut bystander) = clients(&cluster).await;
    assert_eq!(plugin.ask("kvset k before").await, "ok");
    // Frozen: the connection stays open and nothing answers, so the call parks in the host
    // until the callback's deadline (1 s, under the 5 s reply timeout) drops it.
    server.signal("STOP").await;
    let before = metrics::data_calls(app, "kv", "timeout");
    let asked = Instant::now();
    plugin.send("kvget k").await.unwrap();
    assert_eq!(bystander.ask("echo still here").await, "still here");
    let reply = plugin.recv_within(Duration::from_secs(3)).await;
    assert!(reply.is_err(), "the cut callback sends nothing: {reply:?}");
    assert!(
        metrics::data_calls(app, "kv", "timeout") > before,
        "the dropped call is counted as timeout after {:?}",
        asked.elapsed()
    );
    server.signal("CONT").await;
    // A fresh instance, the same shared connection: the abandoned reply is discarded and
    // the next call gets its own answer.
    assert_eq!(plugin.ask("kvset k after").await, "ok");
    assert_eq!(plugin.ask("kvget k").await, "value k after");
    assert_eq!(bystander.ask("echo still here").await, "still here");
    cluster.stop().await;
}
