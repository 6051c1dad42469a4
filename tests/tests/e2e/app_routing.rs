//! App-aware routing between processes: worker hosts with different plugin sets announce
//! their apps, a gateway routes each client only to a host that serves its app, moves it when
//! its host drops the app, and holds then closes (logged, counted) a client whose app no
//! linked host serves.
//!
//! One front process runs the register and a gateway per app (`a`, `b`, and `c` that no host
//! ever serves, every one running the `commands` plugin); each worker host is a process of
//! its own with a plugins directory of its own.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Node, PluginsDir, SECRET, free_port};
use wasmgate_tests::plugins;
use wasmgate_tests::prometheus::scrape;

use crate::BIN;

/// The front's `no_worker_hold`: short, so that a test sees the hold end.
const HOLD: Duration = Duration::from_secs(1);

/// The register, a gateway per app, and `/metrics`.
struct Front {
    node: Node,
    register: u16,
    metrics: SocketAddr,
    /// Client ports of the gateways of `a`, `b` and `c`.
    a: u16,
    b: u16,
    c: u16,
}

impl Front {
    fn start() -> Self {
        let (register, a, b, c) = (free_port(), free_port(), free_port(), free_port());
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let gateway = |app: &str, port: u16| {
            format!(
                "[[gateway]]\nname = \"g{app}\"\nlisten = \"ws://127.0.0.1:{port}\"\napp = \"{app}\"\n\
                 register = \"127.0.0.1:{register}\"\nno_worker_hold = \"{}s\"\n",
                HOLD.as_secs()
            )
        };
        let config = format!(
            "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{register}\"\n[metrics]\n\
             listen = \"{metrics}\"\n{}{}{}",
            gateway("a", a),
            gateway("b", b),
            gateway("c", c)
        );
        Self {
            node: Node::start(BIN, &config),
            register,
            metrics,
            a,
            b,
            c,
        }
    }

    /// A worker host process serving the plugins in `plugins`.
    fn worker(&self, name: &str, plugins: &Path) -> Node {
        Node::start(
            BIN,
            &format!(
                "secret = \"{SECRET}\"\n[worker]\nname = \"{name}\"\nplugins = {plugins:?}\n\
                 instances = 1\nregister = \"127.0.0.1:{}\"\n",
                self.register
            ),
        )
    }

    /// Waits (bounded) until every gateway has `n` worker hosts linked.
    async fn linked(&self, n: usize) {
        for g in ["ga", "gb", "gc"] {
            self.gauge_is("wasmgate_gateway_worker_links", g, n).await;
        }
    }

    /// Waits (bounded) until the gauge `family` of gateway `g` reads `n`.
    async fn gauge_is(&self, family: &str, g: &str, n: usize) {
        for _ in 0..600 {
            // The front may not listen yet.
            if tokio::net::TcpStream::connect(self.metrics).await.is_ok() {
                let now = scrape(self.metrics).await;
                if now.value(family, &[("gateway", g)]) == Some(n as f64) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway {g}'s {family} never read {n}");
    }

    /// Clients closed so far because no linked worker host served their app.
    async fn unrouted(&self) -> f64 {
        scrape(self.metrics)
            .await
            .value(
                "wasmgate_clients_unrouted_total",
                &[("reason", "app_unserved")],
            )
            .unwrap_or(0.0)
    }
}

/// The front and two worker hosts with different plugin sets: `w1` serves `a`, `w2` serves
/// `a` and `b`.
struct Hosts {
    front: Front,
    only_a: PluginsDir,
    a_and_b: PluginsDir,
    w1: Node,
    w2: Node,
}

impl Hosts {
    /// Starts them; returns once both worker hosts are linked to every gateway.
    async fn start() -> Self {
        let only_a = PluginsDir::with(&[("a", plugins::COMMANDS)]);
        let a_and_b = PluginsDir::with(&[("a", plugins::COMMANDS), ("b", plugins::COMMANDS)]);
        let front = Front::start();
        let w1 = front.worker("w1", only_a.path());
        let w2 = front.worker("w2", a_and_b.path());
        front.linked(2).await;
        Self {
            front,
            only_a,
            a_and_b,
            w1,
            w2,
        }
    }
}

/// A WebSocket client of the gateway on `port`.
async fn client(port: u16) -> TestClient {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TestClient::ws(addr, "/")
        .await
        .expect("the gateway accepts")
}

/// Sends `n` echoes without waiting, then reads their answers, which must come back all and
/// in order.
async fn echoes(client: &mut TestClient, tag: &str, n: usize) {
    for i in 0..n {
        client.send(&format!("echo {tag}-{i}")).await.unwrap();
    }
    for i in 0..n {
        assert_eq!(
            client.recv().await,
            format!("{tag}-{i}"),
            "echo {i} of {tag}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_is_served_by_a_host_that_has_its_app() {
    // Kept whole: its worker hosts live as long as it does.
    let hosts = Hosts::start().await;
    let front = &hosts.front;
    // The gateways know who serves what (`status` and `/metrics` show it).
    for (g, n) in [("ga", 2), ("gb", 1), ("gc", 0)] {
        front.gauge_is("wasmgate_gateway_serving_links", g, n).await;
    }

    let mut bystander = client(front.a).await;
    echoes(&mut bystander, "bystander", 5).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client(front.a).await);
        clients.push(client(front.b).await);
    }
    // Least connections would have put every other `b` client on the host without `b`.
    for round in 0..3 {
        for (i, c) in clients.iter_mut().enumerate() {
            echoes(c, &format!("c{i}-r{round}"), 10).await;
        }
        echoes(&mut bystander, &format!("bystander-r{round}"), 5).await;
    }
    assert_eq!(front.unrouted().await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_follow_their_app_and_are_closed_when_no_host_has_it() {
    let Hosts {
        front,
        only_a,
        a_and_b,
        w1,
        w2,
    } = Hosts::start().await;
    let mut bystander = client(front.a).await;
    echoes(&mut bystander, "start", 5).await;

    // An app no host serves: its client is held, then closed with the reason, counted.
    let mut nobodys = client(front.c).await;
    let waiting = tokio::time::Instant::now();
    nobodys.assert_closed().await;
    assert!(waiting.elapsed() >= HOLD - Duration::from_millis(100));
    front
        .node
        .wait_for_line(&[
            "closing client",
            "no linked worker host serves the app \"c\"",
        ])
        .await;
    assert!(front.unrouted().await >= 1.0);
    echoes(&mut bystander, "after-c", 5).await;

    // `b` on both hosts, then gone from w2 while its clients keep talking: they move to w1,
    // every echo answered in order, none closed.
    let mut b_clients = Vec::new();
    for i in 0..3 {
        let mut c = client(front.b).await;
        echoes(&mut c, &format!("b{i}-start"), 5).await;
        b_clients.push(c);
    }
    only_a.deploy("b", plugins::COMMANDS);
    w1.wait_for_line(&["plugin version installed", "plugin=\"b\""])
        .await;
    let talking = tokio::spawn(async move {
        for round in 0..20 {
            for (i, c) in b_clients.iter_mut().enumerate() {
                echoes(c, &format!("b{i}-r{round}"), 10).await;
            }
        }
        b_clients
    });
    std::fs::remove_file(a_and_b.path().join("b.wasm")).unwrap();
    w2.wait_for_line(&["plugin file deleted", "plugin=\"b\""])
        .await;
    echoes(&mut bystander, "b-moved", 5).await;
    let mut b_clients = talking.await.expect("every b client kept being served");

    // `b` gone from every host: its clients are held, then closed and counted, even idle.
    let before = front.unrouted().await;
    std::fs::remove_file(only_a.path().join("b.wasm")).unwrap();
    for c in &mut b_clients {
        c.assert_closed().await;
    }
    front
        .node
        .wait_for_line(&[
            "closing client",
            "no linked worker host serves the app \"b\"",
        ])
        .await;
    assert!(front.unrouted().await >= before + 3.0);
    echoes(&mut bystander, "b-gone", 5).await;

    // `b` back on w1: new clients of it are served.
    only_a.deploy("b", plugins::COMMANDS);
    for _ in 0..600 {
        if w1.installed_versions("b").len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = client(front.b).await;
    echoes(&mut again, "b-back", 5).await;
    echoes(&mut bystander, "end", 5).await;
}
