//! Hot reload with real files, real components and real sockets: the server is the real
//! command in its own process, its plugins directory a temporary one that the tests write to.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Node, PluginsDir, SECRET, free_port};
use wasmgate_tests::plugins;

const BIN: &str = env!("CARGO_BIN_EXE_wasmgate-node");

/// Every role in one process, the gateway on `ws://127.0.0.1:<port>` serving `app`.
fn server(dir: &Path, app: &str, instances: usize) -> (Node, u16) {
    let (r, g) = (free_port(), free_port());
    let node = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"{app}\"\nregister = \"127.0.0.1:{r}\"\n\
             [worker]\nplugins = {dir:?}\ninstances = {instances}\nregister = \"127.0.0.1:{r}\"\n"
        ),
    );
    (node, g)
}

/// Connects as soon as the gateway listens.
async fn connect(port: u16) -> TestClient {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..400 {
        if let Ok(c) = TestClient::ws(addr, "/").await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the gateway on port {port} never accepted a client");
}

/// Puts `src` in place as `dir/app.wasm` the recommended way: written aside, renamed in.
fn deploy(dir: &Path, app: &str, src: &str) {
    let tmp = dir.join(format!(".{app}.wasm.tmp"));
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{app}.wasm"))).unwrap();
}

/// Waits (bounded) until the server's log contains `needle`.
async fn logged(node: &Node, needle: &str) {
    for _ in 0..400 {
        if node.logs().contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the log never said {needle:?}; log:\n{}", node.logs());
}

/// Asks until the reply is `expected` (questions may go unanswered while no version runs);
/// a bounded number of tries.
async fn ask_until(client: &mut TestClient, question: &str, expected: &str) {
    for _ in 0..40 {
        client.send(question).await.unwrap();
        while let Ok(reply) = client.recv_within(Duration::from_millis(250)).await {
            if reply == expected {
                return;
            }
        }
    }
    panic!("{question:?} never got {expected:?}");
}

/// The version the log gives for the first installed version of `app`.
fn first_version(logs: &str, app: &str) -> String {
    let line = logs
        .lines()
        .find(|l| {
            l.contains("plugin version installed") && l.contains(&format!("plugin=\"{app}\""))
        })
        .expect("an installed version");
    let start = line.find("version=\"").expect("a version field") + "version=\"".len();
    line[start..start + 12].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_in_plugin_serves_and_a_replacement_swaps_under_load() {
    let dir = PluginsDir::with(&[]);
    let (node, port) = server(dir.path(), "app", 2);
    let mut probe = connect(port).await;

    // No plugin yet: messages go unanswered. Copy one in (a plain in-place copy).
    let copied = Instant::now();
    std::fs::copy(plugins::ECHO, dir.path().join("app.wasm")).unwrap();
    let served = loop {
        probe.send("echo first").await.unwrap();
        if let Ok(reply) = probe.recv_within(Duration::from_millis(100)).await {
            assert_eq!(reply, "echo first");
            break copied.elapsed();
        }
        assert!(
            copied.elapsed() < Duration::from_secs(10),
            "the plugin was never loaded"
        );
    };
    assert!(
        served < Duration::from_secs(2),
        "answered {served:?} after the copy"
    );
    // Drain answers to probes sent while the plugin was loading.
    probe.send("echo drained").await.unwrap();
    while probe.recv().await != "echo drained" {}

    // 50 clients in closed loops; swap echo (replies `echo N`) for commands (replies `N`).
    const CLIENTS: usize = 50;
    const AFTER_SWAP: usize = 20;
    let warm = Arc::new(AtomicUsize::new(0));
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        let mut client = connect(port).await;
        let warm = warm.clone();
        clients.spawn(async move {
            let (mut old, mut new) = (0, 0);
            for i in 0.. {
                let reply = client.ask(&format!("echo {i}")).await;
                if reply == format!("echo {i}") {
                    assert_eq!(new, 0, "an old-version reply after a new-version one");
                    old += 1;
                    if old == 10 {
                        warm.fetch_add(1, Ordering::SeqCst);
                    }
                } else {
                    assert_eq!(
                        reply,
                        i.to_string(),
                        "a reply to another message: lost or duplicated"
                    );
                    new += 1;
                    if new == AFTER_SWAP {
                        break;
                    }
                }
            }
            (old, new)
        });
    }
    while warm.load(Ordering::SeqCst) < CLIENTS {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    deploy(dir.path(), "app", plugins::COMMANDS);
    let mut answered = 0;
    while let Some(done) = clients.join_next().await {
        let (old, new) = done.expect("a client failed");
        assert!(old >= 10 && new == AFTER_SWAP);
        answered += old + new;
    }
    assert!(answered >= CLIENTS * (10 + AFTER_SWAP));
    let echo_version = first_version(&node.logs(), "app");
    logged(&node, "on-worker-stop ran").await;
    assert!(
        node.logs()
            .lines()
            .any(|l| l.contains("on-worker-stop ran") && l.contains(&echo_version)),
        "on-worker-stop did not run on the old version {echo_version}:\n{}",
        node.logs()
    );
    assert_eq!(probe.ask("echo still connected").await, "still connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_and_invalid_files_never_replace_a_working_plugin() {
    let dir = PluginsDir::with(&[("app", plugins::ECHO)]);
    let (node, port) = server(dir.path(), "app", 1);
    let mut client = connect(port).await;
    assert_eq!(client.ask("echo ready").await, "echo ready");

    // A slow writer: the file stays incomplete across several quiet periods.
    let bytes = std::fs::read(plugins::COMMANDS).unwrap();
    let path = dir.path().join("app.wasm");
    let mut file = std::fs::File::create(&path).unwrap();
    for chunk in bytes.chunks(bytes.len() / 3 + 1).take(2) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            client.ask("echo during").await,
            "echo during",
            "a partial file was served"
        );
    }
    let rest = &bytes[2 * (bytes.len() / 3 + 1)..];
    file.write_all(rest).unwrap();
    drop(file);
    ask_until(&mut client, "echo done", "done").await;
    assert!(
        node.logs().contains("plugin not loaded"),
        "partial files were not refused:\n{}",
        node.logs()
    );

    // An invalid file: refused, naming the file; the running version keeps serving.
    std::fs::write(&path, b"definitely not wasm").unwrap();
    logged(&node, "not a WebAssembly file").await;
    assert!(
        node.logs()
            .lines()
            .any(|l| l.contains("not a WebAssembly file") && l.contains("app.wasm"))
    );
    assert_eq!(client.ask("echo still").await, "still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_start_traps_is_refused() {
    // misbehave traps in on-worker-start when its app is named `trap-start`.
    let dir = PluginsDir::with(&[("trap-start", plugins::ECHO)]);
    let (node, port) = server(dir.path(), "trap-start", 2);
    let mut client = connect(port).await;
    assert_eq!(client.ask("echo before").await, "echo before");
    deploy(dir.path(), "trap-start", plugins::MISBEHAVE);
    logged(&node, "new plugin version refused").await;
    assert_eq!(
        client.ask("echo after").await,
        "echo after",
        "the old version stopped serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_timer_ticks_at_its_rate_and_stops_with_its_version() {
    // misbehave named `ticker` sets a 100 ms interval that sends `tick` to everyone.
    let dir = PluginsDir::with(&[("ticker", plugins::MISBEHAVE)]);
    let (_node, port) = server(dir.path(), "ticker", 1);
    let mut client = connect(port).await;
    let mut ticks = Vec::new();
    while ticks.len() < 16 {
        assert_eq!(client.recv().await, "tick");
        ticks.push(Instant::now());
    }
    let span = ticks[ticks.len() - 1] - ticks[1];
    let rate = (ticks.len() - 2) as f64 / span.as_secs_f64();
    assert!(
        (8.0..=12.0).contains(&rate),
        "{rate:.1} ticks/s, expected 10 ± 20 %"
    );

    // echo answers `instance` with `instance` (misbehave would say `calls N`).
    deploy(dir.path(), "ticker", plugins::ECHO);
    let swapped = Instant::now();
    'swap: loop {
        client.send("instance").await.unwrap();
        loop {
            match client.recv_within(Duration::from_millis(200)).await {
                Ok(m) if m == "instance" => break 'swap,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        assert!(
            swapped.elapsed() < Duration::from_secs(10),
            "the new version never answered"
        );
    }
    client.assert_silent(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_plugin_is_served_from_the_cache_after_a_restart() {
    let dir = PluginsDir::with(&[("app", plugins::COMMANDS)]);
    let (mut first, port) = server(dir.path(), "app", 1);
    let mut client = connect(port).await;
    assert_eq!(client.ask("echo one").await, "one");
    assert!(
        first.logs().contains("from_cache=false"),
        "{}",
        first.logs()
    );
    assert!(first.terminate().await.success());

    let (second, port) = server(dir.path(), "app", 1);
    let mut client = connect(port).await;
    assert_eq!(client.ask("echo two").await, "two");
    assert!(
        second.logs().contains("from_cache=true"),
        "{}",
        second.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_plugin_stops_its_app_and_keeps_its_clients() {
    let dir = PluginsDir::with(&[("app", plugins::ECHO)]);
    let (node, port) = server(dir.path(), "app", 1);
    let mut client = connect(port).await;
    assert_eq!(client.ask("echo here").await, "echo here");
    std::fs::remove_file(dir.path().join("app.wasm")).unwrap();
    logged(&node, "app stopped").await;
    logged(&node, "on-worker-stop ran").await;
    client.send("echo nobody").await.unwrap();
    client.assert_silent(Duration::from_millis(500)).await;
    logged(&node, "no plugin for this app").await;
    deploy(dir.path(), "app", plugins::COMMANDS);
    ask_until(&mut client, "echo back", "back").await;
}
