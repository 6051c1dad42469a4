//! The distributed core as separate OS processes running the real command: a register, several
//! gateways and worker hosts, gateways joining late, a worker host dying, registers restarting.

use std::path::Path;
use std::time::Duration;

use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Node, PluginsDir, SECRET, free_port};
use wasmgate_tests::plugins;

use crate::{BIN, QUIET};

fn registers_list(registers: &[u16]) -> String {
    let list: Vec<String> = registers
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    format!("[{}]", list.join(", "))
}

fn register(port: u16) -> Node {
    Node::start(
        BIN,
        &format!("secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
}

fn gateway(port: u16, registers: &[u16]) -> Node {
    Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:{port}\"\napp = \"commands\"\nregister = {}\n",
            registers_list(registers)
        ),
    )
}

fn worker(name: &str, plugins: &Path, registers: &[u16]) -> Node {
    Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[worker]\nname = \"{name}\"\nplugins = {plugins:?}\ninstances = 1\nregister = {}\n",
            registers_list(registers)
        ),
    )
}

/// Connects once the gateway listens, and returns once a worker host answers.
async fn client(port: u16) -> TestClient {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..200 {
        if let Ok(mut c) = TestClient::ws(addr, "/").await {
            assert_eq!(c.ask("echo ready").await, "ready");
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway on port {port} never accepted a client");
}

/// Asks until the answer is `expected` (membership changes travel asynchronously between
/// processes); fails after a bounded number of tries.
async fn ask_until(client: &mut TestClient, question: &str, expected: &str) {
    let mut last = String::new();
    for _ in 0..200 {
        last = client.ask(question).await;
        if last == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{question:?}: expected {expected:?}, last answer {last:?}");
}

/// Sends `echo` until answered. Events a dying worker host had not acknowledged as done are
/// re-sent to the next one (at least once), so the replies and broadcasts of this client's
/// earlier events may arrive again first: they are skipped, and only the answer counts. Each
/// attempt is numbered, and once one is answered the earlier attempts still on their way are
/// awaited too (a few seconds at most), so that a late answer does not arrive where the
/// caller expects its next reply.
async fn served(client: &mut TestClient, what: &str) {
    let tag = format!("{what}#");
    let mut outstanding = 0;
    let mut answered = false;
    for attempt in 0..20 {
        client
            .send(&format!("echo {tag}{attempt}"))
            .await
            .expect("the connection is still open");
        outstanding += 1;
        while let Ok(reply) = client.recv_within(Duration::from_secs(1)).await {
            if reply.starts_with(&tag) {
                outstanding -= 1;
                answered = true;
                break;
            }
        }
        if answered {
            break;
        }
    }
    assert!(answered, "{what:?} was never answered");
    let late = tokio::time::Instant::now() + Duration::from_secs(5);
    while outstanding > 0 {
        let left = late.saturating_duration_since(tokio::time::Instant::now());
        match client.recv_within(left).await {
            Ok(reply) if reply.starts_with(&tag) => outstanding -= 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_and_worker_hosts_as_separate_processes() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let r = free_port();
    let _register = register(r);
    let (g1, g2, g3) = (free_port(), free_port(), free_port());
    let _gateway1 = gateway(g1, &[r]);
    let _gateway2 = gateway(g2, &[r]);
    let worker1 = worker("w1", plugins.path(), &[r]);
    let _worker2 = worker("w2", plugins.path(), &[r]);

    let mut a = client(g1).await;
    let mut b = client(g2).await;
    assert_eq!(a.ask("join g").await, "joined g");
    assert_eq!(b.ask("join g").await, "joined g");
    // Each gateway binds its first two clients to different worker hosts (least connections);
    // wait until both worker hosts are linked to both gateways.
    let mut c = client(g1).await;
    let mut d = client(g2).await;
    for x in [&mut a, &mut b, &mut c, &mut d] {
        ask_until(x, "count g", "count g 2").await;
    }

    c.send("pub g across").await.unwrap();
    assert_eq!(a.recv().await, "across");
    assert_eq!(b.recv().await, "across");
    d.send("all everyone").await.unwrap();
    for x in [&mut a, &mut b, &mut c, &mut d] {
        assert_eq!(x.recv().await, "everyone");
        x.assert_silent(QUIET).await;
    }

    // A gateway started later is used by both worker hosts, without a restart.
    let _gateway3 = gateway(g3, &[r]);
    let mut e = client(g3).await;
    let mut f = client(g3).await;
    assert_eq!(e.ask("join g").await, "joined g");
    for x in [&mut a, &mut b, &mut c, &mut d, &mut e, &mut f] {
        ask_until(x, "count g", "count g 3").await;
    }
    f.send("pub g late").await.unwrap();
    for x in [&mut a, &mut b, &mut e] {
        assert_eq!(x.recv().await, "late");
    }

    // A worker host dies: no client connection is lost and the other serves them all.
    worker1.kill().await;
    for (i, x) in [&mut a, &mut b, &mut c, &mut d, &mut e, &mut f]
        .into_iter()
        .enumerate()
    {
        served(x, &format!("after-kill-{i}")).await;
    }
    assert_eq!(a.ask("count g").await, "count g 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_restart_and_cover_for_each_other() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (ra, rb) = (free_port(), free_port());
    let register_a = register(ra);
    let register_b = register(rb);
    let (g1, g2, g3) = (free_port(), free_port(), free_port());
    let _gateway1 = gateway(g1, &[ra, rb]);
    let _worker = worker("w", plugins.path(), &[ra, rb]);
    let mut a = client(g1).await;
    assert_eq!(a.ask("join g").await, "joined g");

    // Register A dies: traffic goes on, and a gateway started now is found through B.
    register_a.kill().await;
    assert_eq!(a.ask("echo still here").await, "still here");
    let _gateway2 = gateway(g2, &[ra, rb]);
    let mut b = client(g2).await;
    assert_eq!(b.ask("join g").await, "joined g");
    ask_until(&mut a, "count g", "count g 2").await;

    // A comes back and B dies: everyone re-registers with A, which finds the next gateway.
    let _register_a = register(ra);
    register_b.kill().await;
    assert_eq!(
        a.ask("echo through the restart").await,
        "through the restart"
    );
    let _gateway3 = gateway(g3, &[ra, rb]);
    let mut c = client(g3).await;
    assert_eq!(c.ask("join g").await, "joined g");
    ask_until(&mut a, "count g", "count g 3").await;
    a.send("pub g all three").await.unwrap();
    for x in [&mut a, &mut b, &mut c] {
        assert_eq!(x.recv().await, "all three");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (r, g) = (free_port(), free_port());
    let mut node = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"commands\"\nregister = \"127.0.0.1:{r}\"\n\
             [worker]\nplugins = {:?}\nregister = \"127.0.0.1:{r}\"\n",
            plugins.path()
        ),
    );
    let mut a = client(g).await;
    let status = node.terminate().await;
    assert!(status.success(), "exit status {status}");
    a.assert_closed().await;
    assert!(
        node.logs().contains("on-worker-stop ran"),
        "logs:\n{}",
        node.logs()
    );
}
