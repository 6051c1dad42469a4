//! Plugins and plugin files that misbehave against the host: a guest parked in a host call
//! (a sleep, a read of a FIFO) is stopped at `process_timeout` and never holds up a stop; a
//! plugin file that is not a regular file, or is too large, is refused without hanging the
//! start or the stop. Each runs the real command, with bystander clients of the same
//! instance and of another app whose replies must keep coming.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Node, SECRET, connect_ws, free_port};
use wasmgate_tests::plugins;

use crate::BIN;

/// Longest a stop may take here: the graceful stop's own bounds, with room for a loaded
/// machine, far below a guest that sleeps for a minute.
const STOP_BOUND: Duration = Duration::from_secs(12);

/// A node with one instance of app `m` on `ws://…:<m>` and app `other` on `ws://…:<other>`,
/// both from `plugins`, with `worker` as extra `[worker]` keys; returns (node, m, other).
fn start_node(plugins: &Path, worker: &str) -> (Node, u16, u16) {
    let (r, m, other) = (free_port(), free_port(), free_port());
    let node = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{m}\"\napp = \"m\"\nregister = \"127.0.0.1:{r}\"\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{other}\"\napp = \"other\"\nregister = \"127.0.0.1:{r}\"\n\
             [worker]\nplugins = {plugins:?}\ninstances = 1\nregister = \"127.0.0.1:{r}\"\n{worker}\n"
        ),
    );
    (node, m, other)
}

/// A plugins directory with misbehave as app `m` and `other` as app `other`.
fn plugins_dir(other: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugins::MISBEHAVE, dir.path().join("m.wasm")).unwrap();
    std::fs::copy(other, dir.path().join("other.wasm")).unwrap();
    dir
}

fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
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

/// Checks that `client` is served by a fresh instance: one that has handled at most one
/// other message (a bystander's, which may have reached the gateway before or after the
/// message that ended the old instance; the old one had counted at least three).
async fn assert_fresh_instance(client: &mut TestClient) {
    client.send("instance").await.unwrap();
    let fresh = client.recv_within(Duration::from_secs(5)).await;
    assert!(
        matches!(fresh.as_deref(), Ok("calls 1" | "calls 2")),
        "{fresh:?}"
    );
}

/// A guest parked in a host call with `command`: stopped at `process_timeout`, its instance
/// replaced; the bystander on the same instance waits at most about one `process_timeout`,
/// the one of another app not at all; SIGTERM then stops the process within bounds.
async fn parked_guest_is_stopped(command: &str, plugins: &Path, worker: &str) {
    let (mut node, m, other) = start_node(plugins, &format!("process_timeout = \"1s\"\n{worker}"));
    let mut parked = connect_ws(m).await;
    let mut same = connect_ws(m).await;
    let mut elsewhere = connect_ws(other).await;
    answers(&mut parked, "instance", "calls 1", Duration::from_secs(5)).await;
    answers(&mut same, "echo warm", "warm", Duration::from_secs(5)).await;

    let parked_at = Instant::now();
    parked.send(command).await.unwrap();
    answers(
        &mut elsewhere,
        "echo other",
        "other",
        Duration::from_secs(1),
    )
    .await;
    // Queued behind the parked call on the same instance: served once it is cut off.
    answers(&mut same, "echo same", "same", Duration::from_secs(4)).await;
    let waited = parked_at.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "the bystander waited {waited:?} behind a 1 s process_timeout"
    );
    node.wait_for_line(&["ran past process_timeout", "\"m\""])
        .await;
    node.wait_for_line(&["abandoned a host call", "plugin=\"m\""])
        .await;
    // The parked call never answers; its client is served by a fresh instance.
    assert_fresh_instance(&mut parked).await;
    answers(
        &mut elsewhere,
        "echo still",
        "still",
        Duration::from_secs(1),
    )
    .await;

    // The parked call is gone, so the stop has nothing to wait for; park another to be sure
    // a call in progress does not hold up the stop either.
    parked.send(command).await.unwrap();
    answers(&mut same, "echo queued", "queued", Duration::from_secs(4)).await;
    parked.send(command).await.unwrap();
    let stopping = Instant::now();
    let status = tokio::time::timeout(STOP_BOUND, node.terminate())
        .await
        .expect("SIGTERM did not stop the process");
    assert!(status.success(), "{status:?}\n{}", node.logs());
    assert!(stopping.elapsed() < STOP_BOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_asleep_in_a_host_call_is_stopped_at_process_timeout() {
    let dir = plugins_dir(plugins::MISBEHAVE);
    parked_guest_is_stopped("sleep 60000", dir.path(), "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_blocked_reading_a_fifo_is_stopped_and_does_not_block_the_stop() {
    let dir = plugins_dir(plugins::MISBEHAVE);
    let data = tempfile::tempdir().unwrap();
    // Nobody ever opens it for writing: a read blocks a thread for good.
    mkfifo(&data.path().join("fifo"));
    let grant = format!(
        "[worker.grants.m]\ndirs = [{{ host = {:?}, guest = \"/d\" }}]\n",
        data.path()
    );
    parked_guest_is_stopped("read /d/fifo", dir.path(), &grant).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_files_that_are_not_regular_or_too_large_are_refused() {
    let dir = plugins_dir(plugins::ECHO);
    // Read whole, this one never ends; the FIFO has no writer, so a plain open never returns.
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.wasm")).unwrap();
    mkfifo(&dir.path().join("fifo.wasm"));
    let mut big = std::fs::read(plugins::MISBEHAVE).unwrap();
    big.resize(300 << 10, 0);
    std::fs::write(dir.path().join("big.wasm"), big).unwrap();

    let (mut node, m, other) = start_node(dir.path(), "max_plugin_size = \"256KiB\"");
    let mut same = connect_ws(m).await;
    let mut elsewhere = connect_ws(other).await;
    answers(&mut same, "echo hi", "hi", Duration::from_secs(5)).await;
    answers(&mut elsewhere, "hi", "hi", Duration::from_secs(5)).await;
    node.wait_for_line(&["zero.wasm", "not a regular file but a device"])
        .await;
    node.wait_for_line(&["fifo.wasm", "not a regular file but a FIFO"])
        .await;
    node.wait_for_line(&["big.wasm", "larger than max_plugin_size (262144 bytes)"])
        .await;

    // A reload reads them all again: still refused, still nobody held up.
    let reload = Command::new("kill")
        .args(["-USR1", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(reload.success());
    node.wait_for_line(&["reloading every plugin"]).await;
    answers(&mut same, "echo again", "again", Duration::from_secs(5)).await;
    answers(&mut elsewhere, "again", "again", Duration::from_secs(5)).await;

    let status = tokio::time::timeout(STOP_BOUND, node.terminate())
        .await
        .expect("SIGTERM did not stop the process");
    assert!(status.success(), "{status:?}\n{}", node.logs());
}

/// The compile-cache entries of `app` in `cache`.
fn cache_entries(cache: &Path, app: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache.join(app))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

/// The compile-cache entry of `app`'s `version` (its first 12 hex digits) in `cache`.
fn cache_entry(cache: &Path, app: &str, version: &str) -> std::path::PathBuf {
    let entries: Vec<_> = std::fs::read_dir(cache.join(app))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(version) && name.ends_with(".cwasm")
        })
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.into_iter().next().unwrap()
}

/// The compile cache keeps `cache_versions` entries per app, the most recently used: a
/// version deployed again is served from it and stays, the one least recently used goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compile_cache_keeps_the_last_versions_of_each_app() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(plugins::ECHO, plugins.join("other.wasm")).unwrap();
    std::fs::copy(plugins::MISBEHAVE, plugins.join("m.wasm")).unwrap();
    let worker = format!("cache = {cache:?}\ncache_versions = 2");
    let (node, m, other) = start_node(&plugins, &worker);
    let mut bystander = connect_ws(other).await;
    // Answered once the worker host serves: the first version of m is in.
    answers(&mut bystander, "hi", "hi", Duration::from_secs(10)).await;
    // Misbehave (A), then commands (B), misbehave again (A, from the cache), chat (C).
    for (n, src) in [plugins::COMMANDS, plugins::MISBEHAVE, plugins::CHAT]
        .into_iter()
        .enumerate()
    {
        let tmp = plugins.join(".m.wasm.tmp");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, plugins.join("m.wasm")).unwrap();
        for _ in 0..400 {
            if node.installed_versions("m").len() == n + 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(node.installed_versions("m").len(), n + 2, "{}", node.logs());
        answers(&mut bystander, "hi", "hi", Duration::from_secs(5)).await;
        let entries = cache_entries(&cache, "m");
        assert!(entries.len() <= 2, "{entries:?}");
    }
    node.wait_for_line(&[
        "plugin version installed",
        "plugin=\"m\"",
        "from_cache=true",
    ])
    .await;
    let versions = node.installed_versions("m");
    let kept: Vec<String> = cache_entries(&cache, "m")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy()[..12].to_owned())
        .collect();
    let (a, b, c) = (&versions[0], &versions[1], &versions[3]);
    assert!(
        kept.contains(a) && kept.contains(c) && !kept.contains(b),
        "{versions:?} {kept:?}"
    );
    assert_eq!(
        cache_entries(&cache, "other").len(),
        1,
        "other apps keep theirs"
    );
    let mut client = connect_ws(m).await;
    client
        .send(r#"{"type":"login","name":"ann","room":"r"}"#)
        .await
        .unwrap();
    assert!(
        client.recv_within(Duration::from_secs(5)).await.is_ok(),
        "chat serves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_or_forged_cache_entry_is_recompiled_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(plugins::MISBEHAVE, plugins.join("m.wasm")).unwrap();
    std::fs::copy(plugins::ECHO, plugins.join("other.wasm")).unwrap();
    let worker = format!("cache = {cache:?}");

    // A first start fills the cache.
    let (mut node, m, _) = start_node(&plugins, &worker);
    let mut client = connect_ws(m).await;
    answers(&mut client, "instance", "calls 1", Duration::from_secs(5)).await;
    let (m_version, other_version) = (
        node.installed_versions("m"),
        node.installed_versions("other"),
    );
    assert!(node.terminate().await.success());

    // Someone puts echo's native code where m's belongs.
    let m_entry = cache_entry(&cache, "m", &m_version[0]);
    std::fs::copy(cache_entry(&cache, "other", &other_version[0]), &m_entry).unwrap();

    let (node, m, other) = start_node(&plugins, &worker);
    let mut client = connect_ws(m).await;
    let mut bystander = connect_ws(other).await;
    // Echo's code would answer "instance"; m's own code counts its calls.
    answers(&mut client, "instance", "calls 1", Duration::from_secs(5)).await;
    answers(&mut bystander, "hi", "hi", Duration::from_secs(5)).await;
    node.wait_for_line(&["compile cache entry rejected", "plugin=\"m\""])
        .await;
    node.wait_for_line(&[
        "plugin version installed",
        "plugin=\"m\"",
        "from_cache=false",
    ])
    .await;
    node.wait_for_line(&[
        "plugin version installed",
        "plugin=\"other\"",
        "from_cache=true",
    ])
    .await;
    drop(node);

    // A native file that was never written by wasmgate: same.
    std::fs::write(&m_entry, b"\x7fELF not ours").unwrap();
    let (node, m, other) = start_node(&plugins, &worker);
    let mut client = connect_ws(m).await;
    let mut bystander = connect_ws(other).await;
    answers(&mut client, "instance", "calls 1", Duration::from_secs(5)).await;
    answers(&mut bystander, "hi", "hi", Duration::from_secs(5)).await;
    node.wait_for_line(&["compile cache entry rejected", "plugin=\"m\""])
        .await;
    // The recompiled entry replaced the bad one and is trusted again.
    assert_ne!(std::fs::read(&m_entry).unwrap(), b"\x7fELF not ours");
}

/// A node with `limits` in `[worker]` and `/metrics` on, and three clients: two of app `m`
/// (sharing its one instance) and a bystander of app `other`.
async fn capped_node(plugins: &Path, limits: &str) -> (Node, SocketAddr, [TestClient; 3]) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (node, m, other) = start_node(
        plugins,
        &format!("{limits}\n[metrics]\nlisten = \"{metrics}\""),
    );
    let clients = [
        connect_ws(m).await,
        connect_ws(m).await,
        connect_ws(other).await,
    ];
    (node, metrics, clients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_and_log_output_are_capped_per_plugin() {
    let dir = plugins_dir(plugins::ECHO);
    let (node, metrics, [mut client, mut same, mut elsewhere]) =
        capped_node(dir.path(), "max_timers = 8\nlog_rate = \"4KiB\"").await;

    // Timers: eight are fine, the ninth ends the instance; the next event gets a fresh one.
    answers(&mut client, "timers 8", "timers 8", Duration::from_secs(5)).await;
    client.send("timers 1").await.unwrap();
    answers(&mut same, "echo next", "next", Duration::from_secs(5)).await;
    answers(&mut elsewhere, "hi", "hi", Duration::from_secs(1)).await;
    node.wait_for_line(&["max_timers", "plugin=\"m\""]).await;
    assert_fresh_instance(&mut client).await;

    // Log output: 200 lines of 100 bytes against 4 KiB a second; the excess is dropped with
    // one line for the burst, and the call itself is not held up.
    answers(
        &mut client,
        "print 200",
        "printed 200",
        Duration::from_secs(5),
    )
    .await;
    answers(&mut same, "echo after", "after", Duration::from_secs(5)).await;
    node.wait_for_line(&["over log_rate", "plugin=\"m\""]).await;
    let logs = node.logs();
    let printed = logs.lines().filter(|l| l.contains("stdout:")).count();
    assert!(
        (20..100).contains(&printed),
        "{printed} of 200 lines logged"
    );
    assert_eq!(
        logs.matches("over log_rate").count(),
        1,
        "one line per burst"
    );

    let scrape = wasmgate_tests::prometheus::scrape(metrics).await;
    let limit = |what| {
        scrape.count(
            "wasmgate_plugin_limits_total",
            &[("plugin", "m"), ("limit", what)],
        )
    };
    assert_eq!(limit("timer_refused"), 1.0);
    assert!(limit("log_dropped") >= 1.0);
    answers(&mut elsewhere, "bye", "bye", Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_past_max_resources_end_that_instance_only() {
    let dir = plugins_dir(plugins::ECHO);
    let (node, metrics, [mut client, mut same, mut elsewhere]) =
        capped_node(dir.path(), "max_resources = 64").await;

    // Under the cap the resources are held; the next batch overflows the table: that call
    // traps and the instance goes, while the bystanders on it and on another app are served.
    answers(
        &mut client,
        "resources 32",
        "resources 32",
        Duration::from_secs(5),
    )
    .await;
    client.send("resources 64").await.unwrap();
    answers(&mut same, "echo next", "next", Duration::from_secs(5)).await;
    answers(&mut elsewhere, "hi", "hi", Duration::from_secs(1)).await;
    node.wait_for_line(&["max_resources = 64", "plugin=\"m\""])
        .await;
    assert_fresh_instance(&mut client).await;
    // The fresh instance starts with an empty table.
    answers(
        &mut client,
        "resources 32",
        "resources 32",
        Duration::from_secs(5),
    )
    .await;

    let scrape = wasmgate_tests::prometheus::scrape(metrics).await;
    assert_eq!(
        scrape.count(
            "wasmgate_plugin_limits_total",
            &[("plugin", "m"), ("limit", "too_many_resources")],
        ),
        1.0
    );
    answers(&mut elsewhere, "bye", "bye", Duration::from_secs(1)).await;
}

/// A `Gateways` that accepts every command and answers no query.
struct Nowhere;

impl wasmgate::ops::Gateways for Nowhere {
    fn command(&self, _: wasmgate::ops::Command) -> wasmgate::ops::CommandFuture {
        Box::pin(async { Ok(()) })
    }

    fn query(&self, _: wasmgate::ops::Query) -> wasmgate::ops::QueryFuture {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn an_instance_whose_start_keeps_failing_is_not_restarted_in_a_tight_loop() {
    use std::sync::Arc;
    use wasmgate::worker::runtime::{Call, CallError, Limits, Runtime};

    let runtime = Runtime::new(Limits::default()).unwrap();
    let bytes = std::fs::read(plugins::MISBEHAVE).unwrap();
    let instance = |name: &str| {
        let code = runtime.load(name, &bytes).unwrap();
        runtime.instance(code, Arc::new(Nowhere), "w".into(), Default::default())
    };
    // Named `trap-start`, the plugin traps in on-worker-start, every time.
    let mut broken = instance("trap-start");
    let mut bystander = instance("m");
    let mut starts = 0;
    let mut delayed = 0;
    for _ in 0..50 {
        match broken.call(Call::Timer(1)).await {
            Err(CallError::Delayed { .. }) => delayed += 1,
            Err(CallError::Trap { .. }) => starts += 1,
            other => panic!("{other:?}"),
        }
        assert!(bystander.call(Call::Timer(1)).await.is_ok());
    }
    assert_eq!((starts, delayed), (1, 49), "tried again at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let dir = plugins_dir(plugins::MISBEHAVE);
    // A call parked for a minute, allowed by process_timeout: the graceful stop waits for it.
    let (mut node, m, other) = start_node(dir.path(), "process_timeout = \"60s\"");
    let mut parked = connect_ws(m).await;
    let mut elsewhere = connect_ws(other).await;
    answers(&mut parked, "echo warm", "warm", Duration::from_secs(5)).await;
    parked.send("sleep 60000").await.unwrap();
    answers(&mut elsewhere, "echo hi", "hi", Duration::from_secs(1)).await;

    let pid = node.pid().to_string();
    let first = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(first.success());
    node.wait_for_line(&["a second SIGINT or SIGTERM exits at once"])
        .await;
    let second = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), node.terminate())
        .await
        .expect("the second SIGTERM did not end the process");
    assert_eq!(status.code(), Some(143), "{status:?}\n{}", node.logs());
    assert!(second.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_on_worker_start_does_not_block_the_plugins_watcher() {
    let dir = wasmgate_tests::cluster::PluginsDir::with(&[
        ("m", plugins::MISBEHAVE),
        ("other", plugins::ECHO),
    ]);
    let (node, m, other) = start_node(dir.path(), "process_timeout = \"1s\"");
    let mut client = connect_ws(m).await;
    let mut elsewhere = connect_ws(other).await;
    answers(&mut client, "echo one", "one", Duration::from_secs(5)).await;

    // Named `slow-start`, the plugin sleeps for an hour in on-worker-start; right after it,
    // a new version of `m` arrives and must still be installed.
    dir.deploy("slow-start", plugins::MISBEHAVE);
    node.wait_for_line(&["slow-start: sleeping in on-worker-start"])
        .await;
    dir.deploy("m", plugins::ECHO);
    let deployed = Instant::now();
    // echo answers `echo two` with itself; misbehave would answer `two`.
    loop {
        client.send("echo two").await.unwrap();
        let reply = client.recv_within(Duration::from_secs(1)).await;
        if reply.as_deref() == Ok("echo two") {
            break;
        }
        assert!(
            deployed.elapsed() < Duration::from_secs(8),
            "the new version of m was not installed: {reply:?}\n{}",
            node.logs()
        );
        answers(&mut elsewhere, "hi", "hi", Duration::from_secs(1)).await;
    }
    node.wait_for_line(&["slow-start", "refused", "on-worker-start"])
        .await;
    answers(&mut elsewhere, "bye", "bye", Duration::from_secs(1)).await;
}

/// A plugin that crashes deciding whether to accept a WebSocket client (a trap, a loop past
/// `process_timeout`, memory past `memory_limit`) has not accepted it: the client is closed
/// with 1008 and `on-connect` never runs for it; a bystander of the same instance is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_on_websocket_connect_refuses_the_client() {
    let dir = plugins_dir(plugins::MISBEHAVE);
    let (node, m, _) = start_node(
        dir.path(),
        "process_timeout = \"1s\"\nmemory_limit = \"64MiB\"",
    );
    let mut bystander = connect_ws(m).await;
    answers(&mut bystander, "echo in", "in", Duration::from_secs(5)).await;
    let addr = format!("127.0.0.1:{m}").parse().unwrap();
    for crash in ["trap", "loop", "alloc"] {
        let mut refused = TestClient::ws(addr, &format!("/?crash={crash}"))
            .await
            .unwrap();
        let close = tokio::time::timeout(Duration::from_secs(10), refused.close_frame())
            .await
            .unwrap_or_else(|_| panic!("crash={crash}: the client was never closed"));
        let close = close.unwrap_or_else(|| panic!("crash={crash}: closed without a frame"));
        assert_eq!(u16::from(close.code), 1008, "crash={crash}");
        answers(
            &mut bystander,
            "echo still",
            "still",
            Duration::from_secs(5),
        )
        .await;
    }
    let connects = node.logs().matches("on-connect ").count();
    assert_eq!(
        connects,
        1,
        "on-connect ran only for the bystander:\n{}",
        node.logs()
    );
}
