//! `on-close` for the clients of a lost machine (issue 15): each client's keeper, a worker
//! host other than its gateway's own when there is one, runs its `on-close` once the gateway
//! is lost, also when the gateway's machine took its own worker host along, and also after the
//! first keeper was lost while the gateway lived (ARCHITECTURE.md, "Delivery"). Real processes,
//! killed with SIGKILL; a watcher client on a surviving gateway hears every `on-close` (the
//! misbehave plugin's `watch`), and a bystander there keeps being served.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Node, PluginsDir, SECRET, free_port};
use wasmgate_tests::nats::{NatsCluster, PASSWORD, USER};
use wasmgate_tests::prometheus::scrape;
use wasmgate_tests::{plugins, tools};

use crate::hostile_links::{client, gateway_of, pinging, register};
use crate::{BIN, QUIET};

/// How long a worker host waits for a gateway whose link is down before declaring it lost.
const LOST_AFTER: Duration = Duration::from_secs(3);

/// Clients of the gateway that is lost.
const DOOMED: usize = 6;

/// How the processes of a test find each other.
enum Engine {
    /// The register mesh, the register in the first machine's process.
    Mesh { register: u16 },
    /// A 3-node NATS cluster; machine `i` talks to node `i`.
    Nats(NatsCluster),
}

impl Engine {
    /// The section that makes machine `i` part of the cluster, and the line each of its
    /// roles adds to its own section.
    fn keys(&self, i: usize) -> (String, String) {
        match self {
            Self::Mesh { register } => {
                let section = match i {
                    0 => format!("[register]\nlisten = \"127.0.0.1:{register}\"\n"),
                    _ => String::new(),
                };
                (section, format!("register = \"127.0.0.1:{register}\""))
            }
            Self::Nats(nats) => (
                format!(
                    "[cluster]\nnats = [\"{}\"]\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
                    nats.url(i)
                ),
                String::new(),
            ),
        }
    }
}

/// One simulated machine: a process with a gateway of the misbehave app and a worker host
/// (whose links ping every `PING` and declare a gateway lost after [`LOST_AFTER`]), with
/// `/metrics`.
struct Machine {
    node: Node,
    port: u16,
    metrics: SocketAddr,
}

impl Machine {
    fn start(engine: &Engine, i: usize, plugins: &Path) -> Self {
        let (port, metrics) = (free_port(), free_port());
        let (section, member) = engine.keys(i);
        let ping = pinging();
        let node = Node::start(
            BIN,
            &format!(
                "secret = \"{SECRET}\"\n{section}[[gateway]]\nlisten = \"ws://127.0.0.1:{port}\"\n\
                 app = \"misbehave\"\n{member}\n{ping}\n[worker]\nplugins = {plugins:?}\ninstances = 2\n\
                 {member}\n{ping}\ngateway_lost_after = \"{}s\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
                LOST_AFTER.as_secs()
            ),
        );
        Self {
            node,
            port,
            metrics: ([127, 0, 0, 1], metrics).into(),
        }
    }
}

/// A worker-host process alone, as [`Machine`]'s but declaring a gateway lost after
/// `lost_after`, with `/metrics` on the address returned.
fn worker(register: u16, plugins: &Path, lost_after: Duration) -> (Node, SocketAddr) {
    let metrics = free_port();
    let node = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[worker]\nplugins = {plugins:?}\ninstances = 2\n\
             register = \"127.0.0.1:{register}\"\n{}\ngateway_lost_after = \"{}s\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
            pinging(),
            lost_after.as_secs()
        ),
    );
    (node, ([127, 0, 0, 1], metrics).into())
}

/// Waits (bounded) until `node` has linked to `gateways` gateways.
async fn linked_to(node: &Node, gateways: usize) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while node.logs().matches("linked to gateway").count() < gateways {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not linked to {gateways} gateways:\n{}", node.logs()));
}

/// Waits (bounded) until the worker hosts scraped at `metrics` keep `clients` clients in all.
async fn keeping(metrics: &[SocketAddr], clients: usize) {
    let mut kept = 0.0;
    for _ in 0..600 {
        kept = 0.0;
        for at in metrics {
            kept += scrape(*at).await.count("wasmgate_clients_kept", &[]);
        }
        if kept == clients as f64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the worker hosts keep {kept} clients, not {clients}");
}

/// `count` clients of the gateway on `port`, with their ids.
async fn clients_of(port: u16, count: usize) -> Vec<(TestClient, String)> {
    let mut clients = Vec::new();
    for _ in 0..count {
        let mut c = client(port).await;
        let id = c.ask("whoami").await;
        clients.push((c, id));
    }
    clients
}

/// Waits until `watcher` heard `closed <id>` once for each client of `doomed`, each within
/// [`LOST_AFTER`] four times over, the bystander answering after each; then that nothing more
/// comes: one `on-close` per client.
async fn each_closed_once(
    watcher: &mut TestClient,
    bystander: &mut TestClient,
    doomed: Vec<(TestClient, String)>,
) {
    let expected: HashSet<String> = doomed.into_iter().map(|(_, id)| id).collect();
    let mut closed = HashSet::new();
    while closed.len() < expected.len() {
        let told = watcher
            .recv_within(LOST_AFTER * 4)
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<_> = expected.difference(&closed).collect();
                panic!("no on-close ran for {missing:?}")
            });
        let id = told.strip_prefix("closed ").expect("only closes are told");
        assert!(closed.insert(id.to_owned()), "on-close ran twice for {id}");
        assert_eq!(bystander.ask("echo still").await, "still");
    }
    assert_eq!(closed, expected);
    watcher.assert_silent(QUIET * 4).await;
}

/// Machines A and B, each one process with a gateway and a worker host; B's clients are
/// bound to either host (sticky least-connections), and kept by A's, the host off their
/// gateway's machine. B is killed whole (SIGKILL): A's worker host runs `on-close` for each
/// of B's clients, once, while a bystander on A is served. Before keepers, a worker host ran
/// `on-close` only for the clients whose events it had run: those bound to B's own host got
/// none.
async fn a_lost_machines_clients_get_on_close_elsewhere(engine: Engine) {
    let plugins = PluginsDir::with(&[("misbehave", plugins::MISBEHAVE)]);
    let a = Machine::start(&engine, 0, plugins.path());
    let b = Machine::start(&engine, 1, plugins.path());
    linked_to(&a.node, 2).await;
    linked_to(&b.node, 2).await;
    let mut watcher = client(a.port).await;
    assert_eq!(watcher.ask("watch").await, "watching");
    let mut bystander = client(a.port).await;
    let doomed = clients_of(b.port, DOOMED).await;
    // Each host keeps the other machine's clients.
    keeping(&[a.metrics], DOOMED).await;
    keeping(&[b.metrics], 2).await;

    b.node.kill().await;
    each_closed_once(&mut watcher, &mut bystander, doomed).await;
    a.node
        .wait_for_line(&["gateway lost", "running on-close"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_machines_clients_get_on_close_on_another_in_the_register_mesh() {
    let engine = Engine::Mesh {
        register: free_port(),
    };
    a_lost_machines_clients_get_on_close_elsewhere(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_machines_clients_get_on_close_on_another_with_nats() {
    let test = "lost_machines::a_lost_machines_clients_get_on_close_on_another_with_nats";
    let binary = tokio::task::spawn_blocking(tools::nats_server)
        .await
        .unwrap();
    let Some(binary) = tools::or_skip(binary, test) else {
        return;
    };
    let Some(nats) = tools::or_skip(NatsCluster::start(binary).await, test) else {
        return;
    };
    a_lost_machines_clients_get_on_close_elsewhere(Engine::Nats(nats)).await;
}

/// Register mesh; gateway A (the watcher's and the bystander's) beside the register, gateway
/// G, worker hosts W1 and W2 in processes of their own. G's clients connect while W1 is the
/// only host (it keeps them all); W2 joins and takes its share; W1 is killed, and G tells W2
/// of the rest. Then G is killed: W2 runs `on-close` for each of G's clients, once. Without
/// the gateway telling the next keeper, the clients W1 kept got none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_keepers_clients_are_told_to_the_next_and_closed_with_their_gateway() {
    let plugins = PluginsDir::with(&[("misbehave", plugins::MISBEHAVE)]);
    let r = free_port();
    let _register = register(r);
    let (ga, gg) = (free_port(), free_port());
    let _a = gateway_of("misbehave", ga, r, &pinging());
    let g = gateway_of("misbehave", gg, r, &pinging());
    let (w1, w1_metrics) = worker(r, plugins.path(), LOST_AFTER);
    linked_to(&w1, 2).await;
    let mut watcher = client(ga).await;
    assert_eq!(watcher.ask("watch").await, "watching");
    let mut bystander = client(ga).await;
    let doomed = clients_of(gg, DOOMED).await;
    keeping(&[w1_metrics], DOOMED + 2).await;

    let (w2, w2_metrics) = worker(r, plugins.path(), LOST_AFTER);
    linked_to(&w2, 2).await;
    w1.kill().await;
    keeping(&[w2_metrics], DOOMED + 2).await;

    g.kill().await;
    each_closed_once(&mut watcher, &mut bystander, doomed).await;
    w2.wait_for_line(&["gateway lost", "running on-close"])
        .await;
}

/// Register mesh; gateway A (the watcher's and the bystander's) beside the register, gateway
/// G on a fixed internal port, one worker host that declares a gateway lost only after a
/// minute. G is killed and started again at the same addresses: when it links, the worker
/// host runs `on-close` for the clients of G's first run, once each, long before the minute is
/// over, and the new run's client is served. Before runs were told, they got none until the
/// minute passed, if ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_within_the_grace_has_its_previous_clients_closed() {
    const GRACE: Duration = Duration::from_secs(60);
    let plugins = PluginsDir::with(&[("misbehave", plugins::MISBEHAVE)]);
    let r = free_port();
    let _register = register(r);
    let (ga, gg, internal) = (free_port(), free_port(), free_port());
    let _a = gateway_of("misbehave", ga, r, &pinging());
    let g_keys = format!("{}\ninternal_port = {internal}", pinging());
    let g = gateway_of("misbehave", gg, r, &g_keys);
    let (host, metrics) = worker(r, plugins.path(), GRACE);
    linked_to(&host, 2).await;
    let mut watcher = client(ga).await;
    assert_eq!(watcher.ask("watch").await, "watching");
    let mut bystander = client(ga).await;
    let doomed = clients_of(gg, DOOMED).await;
    keeping(&[metrics], DOOMED + 2).await;

    g.kill().await;
    let _g = gateway_of("misbehave", gg, r, &g_keys);
    let mut next = client(gg).await;
    tokio::time::timeout(
        GRACE / 2,
        each_closed_once(&mut watcher, &mut bystander, doomed),
    )
    .await
    .expect("the first run's clients closed as the gateway linked again");
    assert_eq!(next.ask("echo next run").await, "next run");
    host.wait_for_line(&["gateway restarted", "running on-close"])
        .await;
}
