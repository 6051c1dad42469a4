//! Key-value storage (`wasi:keyvalue`) end to end: the reference protocol's `kvset`, `kvget`
//! and `incr` (the conformance suite's section, for the Rust, Python and JavaScript builds)
//! against a real `redis-server` (installed by the test through apt, started on a
//! free loopback port; skipped loudly where it cannot be installed), an app without the grant,
//! values over the cap, the embedded store across a restart of a real process, and a Redis
//! server that dies under a running app; the atomics' compare-and-swap and the batch calls
//! (the Rust plugin's `kvread`/`kvswap`, `kvsetmany`/`kvgetmany`) against Redis and the
//! embedded store, the latter in a real process whose `/metrics` counts each call. Every test
//! keeps a bystander whose replies must keep arriving.

use std::time::{Duration, Instant};

use wasmgate::config::Protocol;
use wasmgate::metrics;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Cluster, Node, SECRET, connect_ws, free_port};
use wasmgate_tests::polyglot::{self, Language};
use wasmgate_tests::prometheus::{Scrape, scrape};
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

/// Compare-and-swap (`kvread`, then `kvswap`) and the batch calls (`kvsetmany`, `kvgetmany`)
/// of the Rust plugin on an empty store: a swap over the value read writes; a write by another
/// client in between fails it, writes nothing and hands back the value now there, over which
/// a second swap writes. `a` and `b` may run on different instances.
async fn atomics_and_batch(a: &mut TestClient, b: &mut TestClient, bystander: &mut TestClient) {
    assert_eq!(a.ask("kvread slot").await, "none");
    assert_eq!(a.ask("kvswap slot first").await, "swapped slot");
    assert_eq!(b.ask("kvget slot").await, "value slot first");
    assert_eq!(a.ask("kvread slot").await, "read slot first");
    assert_eq!(a.ask("kvswap slot second").await, "swapped slot");
    assert_eq!(b.ask("kvget slot").await, "value slot second");

    assert_eq!(a.ask("kvread slot").await, "read slot second");
    assert_eq!(b.ask("kvset slot theirs").await, "ok");
    assert_eq!(a.ask("kvswap slot mine").await, "cas-failed slot theirs");
    assert_eq!(
        b.ask("kvget slot").await,
        "value slot theirs",
        "nothing written"
    );
    assert_eq!(bystander.ask("echo still here").await, "still here");
    assert_eq!(a.ask("kvswap slot mine").await, "swapped slot");
    assert_eq!(b.ask("kvget slot").await, "value slot mine");
    // A swap is spent: there is nothing left to swap until the next read.
    assert_eq!(
        a.ask("kvswap slot again").await,
        "error kv no kvread of slot to swap"
    );

    // Read as absent, then created by someone else; read as empty, then rewritten.
    assert_eq!(a.ask("kvread fresh").await, "none");
    assert_eq!(b.ask("kvset fresh x").await, "ok");
    assert_eq!(a.ask("kvswap fresh y").await, "cas-failed fresh x");
    assert_eq!(b.ask("kvset empty ").await, "ok");
    assert_eq!(a.ask("kvread empty").await, "read empty ");
    assert_eq!(
        a.ask_bytes(b"kvswap empty \xff\x00").await,
        b"swapped empty"
    );
    assert_eq!(b.ask_bytes(b"kvget empty").await, b"value empty \xff\x00");
    assert_eq!(a.ask_bytes(b"kvread empty").await, b"read empty \xff\x00");
    assert_eq!(b.ask("kvset empty ").await, "ok");
    assert_eq!(a.ask("kvswap empty z").await, "cas-failed empty ");
    assert_eq!(b.ask("kvget empty").await, "value empty ");

    assert_eq!(a.ask("kvsetmany b1=one b2= b3=x=y").await, "ok");
    assert_eq!(
        b.ask("kvgetmany b1 missing b2 b3 slot").await,
        "values b1=one missing b2= b3=x=y slot=mine"
    );
    assert_eq!(b.ask("kvget b3").await, "value b3 x=y");
    assert_eq!(bystander.ask("echo still here").await, "still here");
    assert_eq!(a.ask("kvsetmany b1=two b4=four").await, "ok");
    assert_eq!(b.ask("kvgetmany b1 b4").await, "values b1=two b4=four");
    assert_eq!(
        a.ask("kvsetmany b1").await,
        "error usage: kvsetmany <key>=<value> …"
    );
    assert_eq!(
        b.ask("kvget b1").await,
        "value b1 two",
        "a refused batch writes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomics_and_batch_against_redis() {
    let Some(server) = redis("data_kv::atomics_and_batch_against_redis").await else {
        return;
    };
    let app = "kvcas";
    let grant = format!("[worker.grants.{app}]\nkv = \"{}\"\n", server.url());
    let cluster = cluster(app, &grant).await;
    let (mut a, mut b) = clients(&cluster).await;
    let mut bystander = TestClient::ws(cluster.gateways[0].client_addr, "/")
        .await
        .unwrap();
    atomics_and_batch(&mut a, &mut b, &mut bystander).await;
    cluster.stop().await;
}

/// The app `kv`'s calls to `interface` with `outcome` in a scrape.
fn data_calls(scrape: &Scrape, interface: &str, outcome: &str) -> f64 {
    let labels = [
        ("app", "kv"),
        ("interface", interface),
        ("outcome", outcome),
    ];
    scrape.count("wasmgate_data_calls_total", &labels)
}

/// How many of the app `kv`'s `interface` calls `data_call_duration_seconds` timed.
fn data_calls_timed(scrape: &Scrape, interface: &str) -> f64 {
    let labels = [("app", "kv"), ("interface", interface)];
    scrape.count("wasmgate_data_call_duration_seconds_count", &labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomics_and_batch_on_the_embedded_store_each_call_counted() {
    let plugins = wasmgate_tests::cluster::PluginsDir::with(&[("kv", plugins::COMMANDS)]);
    let data = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    let config = format!(
        "{}sql = {{ main = \"sqlite\" }}\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
        node_config(plugins.path(), data.path(), port)
    );
    let _node = Node::start(BIN, &config);
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{metrics}").parse().unwrap();
    let mut a = connect_ws(port).await;
    let mut b = connect_ws(port).await;
    let mut bystander = connect_ws(port).await;
    atomics_and_batch(&mut a, &mut b, &mut bystander).await;

    // Each host call is counted once, by outcome, and timed: a failed swap is an answer
    // (`ok`), an increment of text an `error`; every command opens its bucket or database.
    let before = scrape(metrics).await;
    assert_eq!(a.ask("kvread m").await, "none"); // open, cas.new, current
    assert_eq!(b.ask("kvset m theirs").await, "ok"); // open, set
    assert_eq!(a.ask("kvswap m mine").await, "cas-failed m theirs"); // swap, current
    assert!(a.ask("incr m").await.starts_with("error kv ")); // open, increment (error)
    assert_eq!(a.ask("sqlput k v").await, "stored k"); // open, create, insert
    assert_eq!(b.ask("sqlget k").await, "sqlvalue k v"); // open, create, select
    assert_eq!(bystander.ask("echo still here").await, "still here");
    let after = scrape(metrics).await;
    let delta = |f: &dyn Fn(&Scrape) -> f64| f(&after) - f(&before);
    assert_eq!(delta(&|s| data_calls(s, "kv", "ok")), 8.0);
    assert_eq!(delta(&|s| data_calls(s, "kv", "error")), 1.0);
    assert_eq!(delta(&|s| data_calls_timed(s, "kv")), 9.0);
    assert_eq!(delta(&|s| data_calls(s, "sql", "ok")), 6.0);
    assert_eq!(delta(&|s| data_calls_timed(s, "sql")), 6.0);
    for outcome in ["denied", "timeout", "too_large"] {
        assert_eq!(delta(&|s| data_calls(s, "kv", outcome)), 0.0, "{outcome}");
    }
}
