//! A cluster over several simulated machines (network namespaces joined by a bridge, see
//! `wasmgate_tests::netns`), in each of its two engines: on each of hosts A, B and C one
//! process runs a gateway and a worker host, beside a register (register mesh: on A and C) or a
//! node of a 3-node NATS cluster (NATS). 30,000 clients, held by helper processes on a fourth
//! host (`wasmgate_tests::crowd`), are spread over the three gateways. What a cluster promises
//! when one machine dies under load is proven here, with real processes talking over the
//! simulated network: one scenario, the engine a parameter.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Node, PluginsDir};
use wasmgate_tests::crowd::{Crowd, Spec};
use wasmgate_tests::delivery::{self, Allowance, Sequence, Verdict, Verdicts};
use wasmgate_tests::nats::{NatsCluster, PASSWORD, USER};
use wasmgate_tests::netns::{Host, HostThread, SimulatedHosts};
use wasmgate_tests::prometheus::{Scrape, scrape};
use wasmgate_tests::{plugins, tools};

use crate::{BIN, CROWD};

/// Off loopback, a cluster needs a real secret.
const SECRET: &str = "simulated-hosts-cluster-secret";

/// The app every client talks to: the misbehave plugin has group commands and `watch`, which
/// tells its watchers of every `on-close`.
const APP: &str = "misbehave";

/// The same ports on every host: each has its own addresses.
const GATEWAY_PORT: u16 = 8000;
const INTERNAL_PORT: u16 = 2900;
const REGISTER_PORT: u16 = 1236;
const METRICS_PORT: u16 = 9100;

/// Clients each gateway holds, all in group `room`.
const CLIENTS_PER_GATEWAY: usize = 10_000;

/// Descriptors a process needs: a gateway holds its clients and, after the loss, half of B's.
const DESCRIPTORS: u64 = 16_000;

/// Messages each publisher sends to `room`, and each prober to `probes`, before the loss is
/// risked: all must arrive exactly once.
const EXACT: u32 = 10;

/// Messages sent to group `local`, whose members are all on A.
const LOCAL: u32 = 5;

/// Messages in all, and the one before which host B is killed.
const MESSAGES: u32 = 50;
const KILL_AT: u32 = 25;

/// Probing publishers per surviving gateway: with least-connections binding, five clients of
/// one gateway in a row cover its three worker-host links, so at least one is bound to B's
/// worker host (the group publishers may be, or not).
const PROBERS_PER_GATEWAY: usize = 5;

/// The stream's pace: the loss falls in the middle of a steady stream, not after a burst.
const PACE: Duration = Duration::from_millis(10);

/// 200 ms of the stream after the kill: by then the loss is seen and routed around.
const SETTLED: u32 = KILL_AT + 20;

/// `max_events_in_flight`'s default, which the test's gateways keep.
const WINDOW: usize = 64;

/// The repeats the loss of B may cause (see [`Allowance`]).
const ACROSS_THE_LOSS: Allowance = Allowance {
    below: SETTLED,
    run: WINDOW,
};

/// How long the crowds may take to connect and join.
const READY: Duration = Duration::from_secs(150);

/// How long every member may take to receive what was sent, or a survivor to answer.
const DELIVERY: Duration = Duration::from_secs(60);

/// How long B's clients may wait for their `on-close`: `gateway_lost_after` is 3 s here.
const ON_CLOSE: Duration = Duration::from_secs(30);

/// The engine a cluster runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    /// Registers on A and C, every process listing both.
    RegisterMesh,
    /// A NATS node on each host, each process using its own host's.
    Nats,
}

/// Host `i`'s process: its gateway (`g<i>`) and worker host, its `/metrics`, and the engine's
/// part: the NATS node of its host, or else a register on A and C, both listed. Every client
/// comes from the clients' host, as from behind a proxy.
fn config(i: usize, hosts: &[Host; 3], nats: Option<&NatsCluster>, plugins: &Path) -> String {
    let addr = hosts[i].addr;
    let (engine, register) = match nats {
        Some(nats) => (
            format!(
                "[cluster]\nnats = [\"{}\"]\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
                nats.url(i)
            ),
            String::new(),
        ),
        None => (
            if i == 1 {
                String::new()
            } else {
                format!("[register]\nlisten = \"{addr}:{REGISTER_PORT}\"\n")
            },
            format!(
                "register = [\"{}:{REGISTER_PORT}\", \"{}:{REGISTER_PORT}\"]\n",
                hosts[0].addr, hosts[2].addr
            ),
        ),
    };
    format!(
        "secret = \"{SECRET}\"\n{engine}\
         [[gateway]]\nname = \"g{i}\"\nlisten = \"ws://{addr}:{GATEWAY_PORT}\"\napp = \"{APP}\"\n\
         lan_ip = \"{addr}\"\ninternal_port = {INTERNAL_PORT}\n{register}\
         max_connections = 30000\nmax_connections_per_ip = 0\n\
         [worker]\nplugins = {plugins:?}\ngateway_lost_after = \"3s\"\n{register}\
         [metrics]\nlisten = \"{addr}:{METRICS_PORT}\"\n"
    )
}

/// Where host `host`'s gateway takes clients.
fn gateway(host: &Host) -> SocketAddr {
    SocketAddr::new(host.addr.into(), GATEWAY_PORT)
}

/// A client of `gateway`, opened from the clients' host, that asked `asked.0` (if anything)
/// and was answered `asked.1`.
async fn client(
    outside: &HostThread,
    gateway: SocketAddr,
    asked: Option<(&'static str, &'static str)>,
) -> TestClient {
    outside
        .run(async move {
            let mut client = TestClient::ws(gateway, "/").await.expect("connect");
            if let Some((ask, answer)) = asked {
                assert_eq!(client.ask(ask).await, answer);
            }
            client
        })
        .await
}

/// Reads numbered messages from `publishers` until each one's first `count` are in (or one
/// is skipped), at most [`DELIVERY`]; what arrived from each.
async fn heard(client: &mut TestClient, publishers: &[String], count: u32) -> Vec<Sequence> {
    let mut seen = vec![Sequence::default(); publishers.len()];
    let deadline = tokio::time::Instant::now() + DELIVERY;
    while !seen.iter().all(|s| s.settled(count)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(message) = client.recv_within(left).await else {
            break;
        };
        let (publisher, n) = delivery::parse(&message).unwrap_or_else(|| panic!("{message:?}"));
        let p = publishers.iter().position(|p| p == publisher);
        seen[p.unwrap_or_else(|| panic!("{message:?} is not a probe"))].saw(n);
    }
    seen
}

/// The ids of the clients `node` holds now (`wasmgate connections --json`).
async fn client_ids(node: &Node) -> HashSet<String> {
    let listed = tokio::process::Command::new(BIN)
        .args(["connections", "--json", "-c"])
        .arg(node.config_file())
        .output()
        .await
        .expect("wasmgate connections");
    assert!(listed.status.success(), "{listed:?}");
    let clients: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let clients = clients.as_array().expect("a list of clients");
    clients
        .iter()
        .map(|c| c["client_id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Host `host`'s metrics, scraped from the clients' host.
async fn metrics(outside: &HostThread, host: &Host) -> Scrape {
    let addr = SocketAddr::new(host.addr.into(), METRICS_PORT);
    outside.run(scrape(addr)).await
}

/// What `host`'s gateway has received and delivered: (commands over NATS, messages to clients).
async fn traffic(outside: &HostThread, host: &Host, i: usize) -> (f64, f64) {
    let m = metrics(outside, host).await;
    let gateway = format!("g{i}");
    (
        m.count(
            "wasmgate_nats_commands_received_total",
            &[("gateway", &gateway)],
        ),
        m.count("wasmgate_messages_sent_total", &[]),
    )
}

/// The last warnings each surviving process logged, for a failure message: what the cluster
/// saw of the loss (links lost, events re-sent, gateways forgotten).
fn warnings(d: &Deployment) -> String {
    let mut told = String::new();
    for (name, node) in [("A", &d.nodes[0]), ("C", &d.nodes[2])] {
        let logs = node.logs();
        let warned: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(" WARN ") && !l.contains("cannot connect"))
            .collect();
        told += &format!("\n{name}'s last warnings:");
        for line in &warned[warned.len().saturating_sub(10)..] {
            told += &format!("\n  {line}");
        }
    }
    told
}

/// Message `n` of each publisher to `room` and of each prober (`q<k>`) to `probes`.
async fn publish(publishers: &mut [(&str, TestClient)], probers: &mut [TestClient], n: u32) {
    for (name, publisher) in publishers {
        let text = format!("pub room {}", delivery::message(name, n));
        publisher.send(&text).await.unwrap();
    }
    for (k, prober) in probers.iter_mut().enumerate() {
        let probe = delivery::message(&format!("q{k}"), n);
        prober.send(&format!("pub probes {probe}")).await.unwrap();
    }
}

/// Asks every crowd, at once, for its verdicts on `expected` (per crowd).
async fn check_all(
    crowds: &mut [Crowd],
    expected: &[Vec<(&str, u32)>],
    allowance: Allowance,
) -> Vec<Verdicts> {
    let checks = crowds
        .iter_mut()
        .zip(expected)
        .map(|(crowd, expected)| crowd.check(expected, allowance, DELIVERY));
    join_all(checks).await
}

/// The cluster under test: hosts A, B, C and the clients' host, each of the first three
/// running its process (and NATS node).
struct Deployment {
    simulated: SimulatedHosts,
    /// A, B and C.
    hosts: [Host; 3],
    /// The clients' host.
    outside: Host,
    nats: Option<NatsCluster>,
    nodes: Vec<Node>,
    _plugins: PluginsDir,
}

/// Starts the cluster in `engine` and waits until every worker host is linked to every
/// gateway; `None` after reporting `test` as skipped (no namespaces, too few descriptors, no
/// `nats-server`).
async fn deploy(engine: Engine, test: &str) -> Option<Deployment> {
    let simulated = tools::or_skip(SimulatedHosts::create(4), test)?;
    tools::or_skip(tools::descriptor_limit_allows(DESCRIPTORS), test)?;
    let [a, b, c, outside] = simulated.hosts() else {
        unreachable!("four hosts were made")
    };
    let (hosts, outside) = ([a.clone(), b.clone(), c.clone()], outside.clone());
    let nats = match engine {
        Engine::RegisterMesh => None,
        Engine::Nats => Some(NatsCluster::start_on_or_skip(&hosts, test).await?),
    };
    let plugins = PluginsDir::with(&[(APP, plugins::MISBEHAVE)]);
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let config = config(i, &hosts, nats.as_ref(), plugins.path());
            Node::start_on(&hosts[i], BIN, &config)
        })
        .collect();
    for node in &nodes {
        for host in &hosts {
            let gateway = format!("gateway={}:{INTERNAL_PORT}", host.addr);
            node.wait_for_line(&["linked to gateway", &gateway]).await;
        }
    }
    Some(Deployment {
        simulated,
        hosts,
        outside,
        nats,
        nodes,
        _plugins: plugins,
    })
}

/// The scenario, in `engine`: see the tests below.
async fn survives_the_loss_of_a_host_under_load(engine: Engine, test: &str) {
    let started = Instant::now();
    let Some(d) = deploy(engine, test).await else {
        return;
    };
    let [a, b, c] = &d.hosts;

    // The crowds: each gateway's clients from an address of their own, all in `room`; A's
    // also in `local`, which only they are in.
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut crowds: Vec<Crowd> = d
        .hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let spec = Spec {
                gateway: gateway(host),
                source: d.simulated.add_address(&d.outside),
                clients: CLIENTS_PER_GATEWAY,
                groups: names(if i == 0 {
                    &["room", "local"]
                } else {
                    &["room"]
                }),
                publishers: names(if i == 0 {
                    &["a", "c", "l"]
                } else {
                    &["a", "c"]
                }),
            };
            Crowd::start(CROWD, &d.outside, &spec)
        })
        .collect();
    for crowd in &mut crowds {
        assert_eq!(crowd.ready(READY).await, CLIENTS_PER_GATEWAY);
    }
    let outside = d.outside.thread();
    for (i, host) in d.hosts.iter().enumerate() {
        let held = metrics(&outside, host)
            .await
            .count("wasmgate_connections", &[("gateway", &format!("g{i}"))]);
        assert!(
            held >= CLIENTS_PER_GATEWAY as f64,
            "gateway g{i} holds {held} clients"
        );
    }
    let connected = started.elapsed();

    // In the test process: the publishers of `room` (one on each surviving gateway), the
    // probers with their two watchers, and a watcher of `on-close`.
    let (to_a, to_c) = (gateway(a), gateway(c));
    let mut publishers = vec![
        ("a", client(&outside, to_a, None).await),
        ("c", client(&outside, to_c, None).await),
    ];
    let mut watchers = Vec::new();
    let mut probers = Vec::new();
    for to in [to_a, to_c] {
        watchers.push(client(&outside, to, Some(("join probes", "joined probes"))).await);
        for _ in 0..PROBERS_PER_GATEWAY {
            // Its first event binds it to a worker host.
            probers.push(client(&outside, to, Some(("echo bound", "bound"))).await);
        }
    }
    let mut on_close = client(&outside, to_a, Some(("watch", "watching"))).await;
    let b_clients = client_ids(&d.nodes[1]).await;
    assert_eq!(b_clients.len(), CLIENTS_PER_GATEWAY, "gateway g1's clients");

    // Before any loss: every member receives each message exactly once, in order.
    for n in 0..EXACT {
        publish(&mut publishers, &mut probers, n).await;
    }
    let in_room = vec![("a", EXACT), ("c", EXACT)];
    let verdicts = check_all(&mut crowds, &vec![in_room.clone(); 3], Allowance::NONE).await;
    for (i, verdicts) in verdicts.iter().enumerate() {
        assert!(
            verdicts.all_in(&[Verdict::Once]),
            "before any loss, a member of g{i} missed a message of `room` or got one twice: \
             {verdicts}{}",
            warnings(&d)
        );
    }

    // A group whose members are all on A: they receive each message once, and gateways B and
    // C deliver nothing; with NATS they receive nothing either (membership-aware fan-out).
    let before: Vec<(f64, f64)> = join_all([1, 2].map(|i| traffic(&outside, &d.hosts[i], i))).await;
    let (_, c_publisher) = &mut publishers[1];
    for n in 0..LOCAL {
        let text = format!("pub local {}", delivery::message("l", n));
        c_publisher.send(&text).await.unwrap();
    }
    let local = [("a", EXACT), ("c", EXACT), ("l", LOCAL)];
    let verdicts = crowds[0].check(&local, Allowance::NONE, DELIVERY).await;
    assert!(
        verdicts.all_in(&[Verdict::Once]),
        "a member of `local` missed one of its messages or got one twice: {verdicts}"
    );
    let after: Vec<(f64, f64)> = join_all([1, 2].map(|i| traffic(&outside, &d.hosts[i], i))).await;
    for ((i, before), after) in [1, 2].into_iter().zip(before).zip(after) {
        assert_eq!(
            after.1, before.1,
            "gateway g{i} delivered messages of a group it has no member of"
        );
        if d.nats.is_some() {
            assert_eq!(
                after.0, before.0,
                "gateway g{i} received commands for a group it has no member of"
            );
        }
    }
    if d.nats.is_some() {
        let (to_a_commands, _) = traffic(&outside, a, 0).await;
        assert!(
            to_a_commands >= f64::from(LOCAL),
            "gateway g0 received {to_a_commands}"
        );
    }
    let exact = started.elapsed();

    // The stream, and every process of host B killed in the middle of it.
    let mut killed = 0;
    for n in EXACT..MESSAGES {
        if n == KILL_AT {
            killed = d.simulated.kill_everything_on(b);
        }
        publish(&mut publishers, &mut probers, n).await;
        tokio::time::sleep(PACE).await;
    }
    let on_b = if d.nats.is_some() { 2 } else { 1 };
    assert_eq!(killed, on_b, "host B's processes killed");

    // A publisher whose events ran on B's worker host loses none of them: they are sent to
    // another, and at most the run B had run but not acknowledged is seen twice.
    let probe_names: Vec<String> = (0..probers.len()).map(|k| format!("q{k}")).collect();
    for (w, watcher) in watchers.iter_mut().enumerate() {
        let heard = heard(watcher, &probe_names, MESSAGES).await;
        for (k, seen) in heard.iter().enumerate() {
            let verdict = seen.verdict(MESSAGES, ACROSS_THE_LOSS);
            assert!(
                matches!(verdict, Verdict::Once | Verdict::RepeatedAcrossLoss),
                "watcher {w} saw prober {k}'s messages {verdict:?}: {seen:?}{}",
                warnings(&d)
            );
        }
    }
    // Every client of A and C keeps its connection and receives every message, in order,
    // repeated only as the loss allows; none of a group it is not in. B's are cut.
    let in_room = vec![("a", MESSAGES), ("c", MESSAGES)];
    let mut expected = vec![in_room.clone(); 3];
    expected[0].push(("l", LOCAL));
    let verdicts = check_all(&mut crowds, &expected, ACROSS_THE_LOSS).await;
    for i in [0, 2] {
        assert!(
            verdicts[i].all_in(&[Verdict::Once, Verdict::RepeatedAcrossLoss]),
            "a client of g{i} was cut, missed a message, or got one out of order, twice beyond \
             what the lost host had run, or of a group it is not in: {}{}",
            verdicts[i],
            warnings(&d)
        );
    }
    assert!(
        verdicts[1].all_in(&[Verdict::Cut]),
        "a client of the dead host's gateway was not cut off: {}",
        verdicts[1]
    );
    let streamed = started.elapsed();

    // The survivors' clients are still served; B's come back through A and C and are served.
    for i in [0, 2] {
        let (served, open) = crowds[i].served(DELIVERY).await;
        assert_eq!(
            (served, open),
            (CLIENTS_PER_GATEWAY, CLIENTS_PER_GATEWAY),
            "g{i}'s clients"
        );
    }
    let (served, cut) = crowds[1].reconnect(&[to_a, to_c], DELIVERY).await;
    assert_eq!(
        (served, cut),
        (CLIENTS_PER_GATEWAY, CLIENTS_PER_GATEWAY),
        "B's clients served again through A and C"
    );
    if d.nats.is_some() {
        for (name, host) in [("A", a), ("C", c)] {
            let up = metrics(&outside, host)
                .await
                .count("wasmgate_nats_connected", &[]);
            assert_eq!(up, 1.0, "host {name}'s process lost NATS");
        }
    }

    // `on-close` ran, on A or C, for every client of B, whichever worker host ran its events.
    let mut closed = HashSet::new();
    let deadline = tokio::time::Instant::now() + ON_CLOSE;
    while closed.len() < b_clients.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(message) = on_close.recv_within(left).await else {
            break;
        };
        let id = message
            .strip_prefix("closed ")
            .unwrap_or_else(|| panic!("{message:?}"));
        if b_clients.contains(id) {
            closed.insert(id.to_owned());
        }
    }
    eprintln!(
        "{test}: {} clients connected and joined in {connected:.1?}, exactly-once and local \
         phases done at {exact:.1?}, the stream checked at {streamed:.1?}, all done at {:.1?}",
        3 * CLIENTS_PER_GATEWAY,
        started.elapsed()
    );
    assert_eq!(
        closed.len(),
        b_clients.len(),
        "{} of host B's clients got no on-close on A or C",
        b_clients.len() - closed.len()
    );
}

/// Register mesh, three hosts, 30,000 clients, host B killed (SIGKILL) while a group
/// broadcast runs: every client of A and C keeps its connection and receives every group
/// message, in order; a publisher whose events ran on B's worker host loses none of them (its
/// gateway sends what B had not finished to another host), and sees again at most the run B
/// had sent out but not acknowledged. B's clients lose their connection, reconnect to A or C
/// and are served, and each gets its `on-close` on A or C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_mesh_survives_the_loss_of_a_host_under_load() {
    let test = "simulated_hosts::register_mesh_survives_the_loss_of_a_host_under_load";
    survives_the_loss_of_a_host_under_load(Engine::RegisterMesh, test).await;
}

/// The same with NATS as the engine, B's NATS node killed with the rest of B; and before the
/// loss, a group whose members are all on A costs B's and C's gateways no command at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_survives_the_loss_of_a_host_under_load() {
    let test = "simulated_hosts::nats_survives_the_loss_of_a_host_under_load";
    survives_the_loss_of_a_host_under_load(Engine::Nats, test).await;
}
