//! A cluster over several simulated machines (network namespaces joined by a bridge, see
//! `wasmgate_tests::netns`): on each of hosts A, B and C one process runs a gateway and a
//! worker host; registers run on A and C; the clients are on a fourth host. What a cluster
//! promises when one machine dies under load is proven here, with real processes talking over
//! the simulated network.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::join_all;
use wasmgate_tests::client::{Silence, TestClient};
use wasmgate_tests::cluster::{Node, PluginsDir};
use wasmgate_tests::netns::{Host, HostThread, SimulatedHosts};
use wasmgate_tests::{plugins, tools};

use crate::BIN;

/// Off loopback, a cluster needs a real secret.
const SECRET: &str = "simulated-hosts-cluster-secret";

/// The same ports on every host: each has its own addresses.
const GATEWAY_PORT: u16 = 8000;
const INTERNAL_PORT: u16 = 2900;
const REGISTER_PORT: u16 = 1236;

/// Clients each gateway holds. Their other ends are all in this process, which may hold
/// 20,000 descriptors here and shares them with the tests running beside it; 3,000 clients
/// take about 20 s on two busy cores.
const CLIENTS_PER_GATEWAY: usize = 1_000;

/// Group messages sent before the loss, and in all.
const BEFORE_LOSS: usize = 40;
const MESSAGES: usize = 120;

/// Probing publishers per surviving gateway: with least-connections binding, five clients of
/// one gateway in a row cover its three worker-host links, so at least one is bound to B's
/// worker host (the group publishers above may be, or not).
const PROBERS_PER_GATEWAY: usize = 5;

/// 200 ms of the stream after the kill: by then the loss is seen and routed around.
const SETTLED: usize = BEFORE_LOSS + 20;

/// `max_events_in_flight`'s default, which the test's gateways keep.
const WINDOW: usize = 64;

/// How long the survivors may take to see the whole broadcast.
const DELIVERY: Duration = Duration::from_secs(20);

/// One host's process: its gateway and worker host, and a register if `register` says so.
/// Every client comes from the one address of the clients' host, as from behind a proxy.
fn start(host: &Host, register: bool, registers: &str, plugins: &PluginsDir) -> Node {
    let addr = host.addr;
    let register = if register {
        format!("[register]\nlisten = \"{addr}:{REGISTER_PORT}\"\n")
    } else {
        String::new()
    };
    Node::start_on(
        host,
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n{register}\
             [[gateway]]\nlisten = \"ws://{addr}:{GATEWAY_PORT}\"\napp = \"commands\"\n\
             lan_ip = \"{addr}\"\ninternal_port = {INTERNAL_PORT}\nregister = {registers}\n\
             max_connections_per_ip = 0\n\
             [worker]\nplugins = {:?}\nregister = {registers}\n",
            plugins.path()
        ),
    )
}

/// `count` clients of the gateway on `host`, opened from `outside`, each in group `room`.
async fn members(outside: &HostThread, host: &Host, count: usize) -> Vec<TestClient> {
    let gateway = SocketAddr::new(host.addr.into(), GATEWAY_PORT);
    let mut members = Vec::with_capacity(count);
    // In batches, so a connect storm does not meet the listen backlog.
    for _ in 0..count.div_ceil(50) {
        let batch = (0..50.min(count - members.len())).map(|_| {
            outside.run(async move {
                let mut client = TestClient::ws(gateway, "/").await.expect("connect");
                assert_eq!(client.ask("join room").await, "joined room");
                client
            })
        });
        members.extend(join_all(batch).await);
    }
    members
}

/// Reads group messages (`P<n>`, from publisher `P`) until every publisher's `last` arrived;
/// what arrived from each publisher, in order.
async fn broadcasts_seen(client: &mut TestClient, last: usize) -> [Vec<usize>; 2] {
    let mut seen = [Vec::new(), Vec::new()];
    let reading = async {
        while seen.iter().any(|s| s.last() != Some(&last)) {
            let message = client.recv().await;
            let (from, n) = message.split_at(1);
            let n: usize = n.parse().unwrap_or_else(|_| panic!("{message:?}"));
            seen[usize::from(from == "c")].push(n);
        }
    };
    let _ = tokio::time::timeout(DELIVERY, reading).await;
    seen
}

/// Reads the probers' messages (`q<k>-<n>`) until every one of `probers` sent its `last`;
/// what arrived from each, in order.
async fn probes_seen(client: &mut TestClient, probers: usize, last: usize) -> Vec<Vec<usize>> {
    let mut seen = vec![Vec::new(); probers];
    let reading = async {
        while seen.iter().any(|s| s.last() != Some(&last)) {
            let message = client.recv().await;
            let parsed = message.strip_prefix('q').and_then(|rest| {
                let (k, n) = rest.split_once('-')?;
                Some((k.parse::<usize>().ok()?, n.parse::<usize>().ok()?))
            });
            let (k, n) = parsed.unwrap_or_else(|| panic!("{message:?}"));
            seen[k].push(n);
        }
    };
    let _ = tokio::time::timeout(DELIVERY, reading).await;
    seen
}

/// Whether one publisher's messages as a survivor saw them are all there, in order, repeated
/// only as a lost host allows: its gateway sends the events the host had not finished to
/// another, and those it ran but had not yet acknowledged run twice. So at most one run of
/// repeats, no longer than the publisher's window (a gateway hands a host at most
/// `max_events_in_flight` of one client's events), of messages from around the loss.
fn complete_but_for_repeats_across_the_loss(seen: &[usize]) -> bool {
    let mut next = 0;
    let mut repeats = Vec::new();
    for &n in seen {
        match n.cmp(&next) {
            std::cmp::Ordering::Equal => next += 1,
            std::cmp::Ordering::Less => repeats.push(n),
            std::cmp::Ordering::Greater => return false,
        }
    }
    let one_run = repeats.windows(2).all(|w| w[1] == w[0] + 1);
    next == MESSAGES && one_run && repeats.len() <= WINDOW && repeats.iter().all(|&n| n < SETTLED)
}

/// Register mesh, three hosts, host B killed (SIGKILL) while a group broadcast runs: every
/// client of A and C keeps its connection and receives every group message, in order; a
/// publisher whose events ran on B's worker host loses none of them (its gateway sends what B
/// had not finished to another host), and sees again at most the run B had sent out but not
/// acknowledged. B's clients lose their connection, reconnect to A or C and are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_mesh_survives_the_loss_of_a_host_under_load() {
    let test = "simulated_hosts::register_mesh_survives_the_loss_of_a_host_under_load";
    let Some(simulated) = tools::or_skip(SimulatedHosts::create(4), test) else {
        return;
    };
    let [a, b, c, outside] = simulated.hosts() else {
        unreachable!("four hosts were made")
    };
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let registers = format!(
        "[\"{}:{REGISTER_PORT}\", \"{}:{REGISTER_PORT}\"]",
        a.addr, c.addr
    );
    let mut nodes = vec![
        start(a, true, &registers, &plugins),
        start(b, false, &registers, &plugins),
        start(c, true, &registers, &plugins),
    ];
    for node in &nodes {
        for host in [a, b, c] {
            let gateway = format!("gateway={}:{INTERNAL_PORT}", host.addr);
            node.wait_for_line(&["linked to gateway", &gateway]).await;
        }
    }

    let outside = outside.thread();
    let mut on_a = members(&outside, a, CLIENTS_PER_GATEWAY).await;
    let mut on_b = members(&outside, b, CLIENTS_PER_GATEWAY).await;
    let mut on_c = members(&outside, c, CLIENTS_PER_GATEWAY).await;
    // A publisher on each surviving gateway, so that which worker host each is bound to
    // (B's, maybe) varies from run to run.
    let to_a = SocketAddr::new(a.addr.into(), GATEWAY_PORT);
    let to_c = SocketAddr::new(c.addr.into(), GATEWAY_PORT);
    // Two watchers of the probes, one on each surviving gateway, and the probers.
    let mut watchers = Vec::new();
    let mut probers = Vec::new();
    for gateway in [to_a, to_c] {
        let watcher = outside
            .run(async move {
                let mut watcher = TestClient::ws(gateway, "/").await.expect("connect");
                assert_eq!(watcher.ask("join probes").await, "joined probes");
                watcher
            })
            .await;
        watchers.push(watcher);
        for _ in 0..PROBERS_PER_GATEWAY {
            let prober = outside
                .run(async move {
                    let mut prober = TestClient::ws(gateway, "/").await.expect("connect");
                    // Its first event binds it to a worker host.
                    assert_eq!(prober.ask("echo bound").await, "bound");
                    prober
                })
                .await;
            probers.push(prober);
        }
    }
    let mut publishers = Vec::new();
    for (name, gateway) in [("a", to_a), ("c", to_c)] {
        let publisher = outside
            .run(async move { TestClient::ws(gateway, "/").await.expect("connect") })
            .await;
        publishers.push((name, publisher));
    }
    for n in 0..MESSAGES {
        if n == BEFORE_LOSS {
            nodes.remove(1).kill().await;
        }
        for (name, publisher) in &mut publishers {
            publisher
                .send(&format!("pub room {name}{n}"))
                .await
                .unwrap();
        }
        for (k, prober) in probers.iter_mut().enumerate() {
            prober.send(&format!("pub probes q{k}-{n}")).await.unwrap();
        }
        // Pacing: the loss falls in the middle of a steady stream, not after a burst.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (i, watcher) in watchers.iter_mut().enumerate() {
        let seen = probes_seen(watcher, probers.len(), MESSAGES - 1).await;
        for (k, seen) in seen.iter().enumerate() {
            assert!(
                complete_but_for_repeats_across_the_loss(seen),
                "watcher {i} saw prober {k}'s messages with one missing, out of order or \
                 repeated beyond what the lost host had run: {seen:?}"
            );
        }
    }
    for (host, clients) in [("A", &mut on_a), ("C", &mut on_c)] {
        for (i, client) in clients.iter_mut().enumerate() {
            for seen in broadcasts_seen(client, MESSAGES - 1).await {
                assert!(
                    complete_but_for_repeats_across_the_loss(&seen),
                    "client {i} of host {host} missed a broadcast, or got one out of order or \
                     twice beyond what the lost host had run: {seen:?}"
                );
            }
        }
    }

    // B's clients were cut off; each comes back through A or C and is served.
    let survivors = [to_a, to_c];
    for (i, client) in on_b.iter_mut().enumerate() {
        // What it was sent before the loss, then the end of its connection.
        let cut = loop {
            match client.recv_within(DELIVERY).await {
                Ok(_) => continue,
                Err(silence) => break silence,
            }
        };
        assert!(
            matches!(cut, Silence::Closed),
            "client {i} of the dead host was not cut off"
        );
        let gateway = survivors[i % 2];
        let mut back = outside
            .run(async move { TestClient::ws(gateway, "/").await.expect("reconnect") })
            .await;
        assert_eq!(
            back.ask(&format!("echo back {i}")).await,
            format!("back {i}")
        );
    }
    for client in on_a.iter_mut().chain(on_c.iter_mut()).step_by(37) {
        assert_eq!(client.ask("echo still").await, "still");
    }
}
