//! Hot reload with real files, real components and real sockets: the server is the real
//! command in its own process, its plugins directory a temporary one that the tests write to.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use wasmgate_tests::cluster::{Node, PluginsDir, SECRET, connect_ws, free_port};
use wasmgate_tests::plugins;

use crate::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_in_plugin_serves_and_a_replacement_swaps_under_load() {
    let dir = PluginsDir::with(&[]);
    let (node, port) = Node::all_in_one(BIN, dir.path(), "app", 2);
    let mut probe = connect_ws(port).await;

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
        let mut client = connect_ws(port).await;
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
    dir.deploy("app", plugins::COMMANDS);
    let mut answered = 0;
    while let Some(done) = clients.join_next().await {
        let (old, new) = done.expect("a client failed");
        assert!(old >= 10 && new == AFTER_SWAP);
        answered += old + new;
    }
    assert!(answered >= CLIENTS * (10 + AFTER_SWAP));
    let echo_version = node.installed_versions("app")[0].clone();
    node.wait_for_line(&["on-worker-stop ran"]).await;
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
    let (node, port) = Node::all_in_one(BIN, dir.path(), "app", 1);
    let mut client = connect_ws(port).await;
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
    client.ask_until("echo done", "done").await;
    assert!(
        node.logs().contains("plugin not loaded"),
        "partial files were not refused:\n{}",
        node.logs()
    );

    // An invalid file: refused, naming the file; the running version keeps serving.
    std::fs::write(&path, b"definitely not wasm").unwrap();
    node.wait_for_line(&["not a WebAssembly file"]).await;
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
    let (node, port) = Node::all_in_one(BIN, dir.path(), "trap-start", 2);
    let mut client = connect_ws(port).await;
    assert_eq!(client.ask("echo before").await, "echo before");
    dir.deploy("trap-start", plugins::MISBEHAVE);
    node.wait_for_line(&["new plugin version refused"]).await;
    assert_eq!(
        client.ask("echo after").await,
        "echo after",
        "the old version stopped serving"
    );
}

/// Timers belong to their instance: a trap ends them with it, and the fresh instance, started
/// at once (not at the next client event), runs `on-worker-start` again, which re-arms them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_set_at_start_tick_again_after_a_trap() {
    let dir = PluginsDir::with(&[("ticker", plugins::MISBEHAVE)]);
    let (node, port) = Node::all_in_one(BIN, dir.path(), "ticker", 1);
    let mut client = connect_ws(port).await;
    client.send("echo ready").await.unwrap();
    while client.recv().await != "ready" {}
    assert_eq!(client.recv().await, "tick");
    client.send("trap").await.unwrap();
    node.wait_for_line(&["ticker", "trap"]).await;
    // Drain what was in flight, then nothing but ticks from the new instance, unasked.
    let trapped = Instant::now();
    let mut ticks = 0;
    while ticks < 3 {
        match client.recv_within(Duration::from_secs(3)).await {
            Ok(m) if m == "tick" => ticks += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => panic!(
                "no tick {:?} after the trap:\n{}",
                trapped.elapsed(),
                node.logs()
            ),
        }
    }
    client.send("instance").await.unwrap();
    loop {
        let m = client.recv().await;
        if m != "tick" {
            assert_eq!(m, "calls 1", "a fresh instance");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_timer_ticks_at_its_rate_and_stops_with_its_version() {
    // misbehave named `ticker` sets a 100 ms interval that sends `tick` to everyone.
    let dir = PluginsDir::with(&[("ticker", plugins::MISBEHAVE)]);
    let (_node, port) = Node::all_in_one(BIN, dir.path(), "ticker", 1);
    let mut client = connect_ws(port).await;
    // Wait until the worker host serves this client (ticks may arrive before the answer).
    client.send("echo ready").await.unwrap();
    while client.recv().await != "ready" {}
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
    dir.deploy("ticker", plugins::ECHO);
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
    // A cache of its own: the default one is shared by every server of this user.
    let cache = tempfile::tempdir().unwrap();
    let node = || {
        let (r, g) = (free_port(), free_port());
        let config = format!(
            "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"app\"\nregister = \"127.0.0.1:{r}\"\n\
             [worker]\nplugins = {:?}\nregister = \"127.0.0.1:{r}\"\ncache = {:?}\n",
            dir.path(),
            cache.path(),
        );
        (Node::start(BIN, &config), g)
    };
    let (mut first, port) = node();
    let mut client = connect_ws(port).await;
    assert_eq!(client.ask("echo one").await, "one");
    assert!(
        first.logs().contains("from_cache=false"),
        "{}",
        first.logs()
    );
    assert!(first.terminate().await.success());

    let (second, port) = node();
    let mut client = connect_ws(port).await;
    assert_eq!(client.ask("echo two").await, "two");
    assert!(
        second.logs().contains("from_cache=true"),
        "{}",
        second.logs()
    );
}

/// Deleting a plugin stops its app; its clients' events are held (`no_worker_hold`), not
/// dropped, and a version deployed within the hold answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_plugin_stops_its_app_and_holds_its_clients() {
    let dir = PluginsDir::with(&[("app", plugins::ECHO)]);
    let (r, g) = (free_port(), free_port());
    let node = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"app\"\nregister = \"127.0.0.1:{r}\"\n\
             no_worker_hold = \"60s\"\n\
             [worker]\nplugins = {:?}\ninstances = 1\nregister = \"127.0.0.1:{r}\"\n",
            dir.path()
        ),
    );
    let mut client = connect_ws(g).await;
    assert_eq!(client.ask("echo here").await, "echo here");
    std::fs::remove_file(dir.path().join("app.wasm")).unwrap();
    node.wait_for_line(&["app stopped"]).await;
    node.wait_for_line(&["on-worker-stop ran"]).await;
    client.send("echo nobody").await.unwrap();
    client.assert_silent(Duration::from_millis(500)).await;
    dir.deploy("app", plugins::COMMANDS);
    // A cold compile of the new version may take seconds in a debug build.
    let held = client.recv_within(Duration::from_secs(60)).await;
    assert_eq!(held.as_deref(), Ok("nobody"));
    assert_eq!(client.ask("echo back").await, "back");
}
