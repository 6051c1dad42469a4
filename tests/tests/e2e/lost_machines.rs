//! `on-close` for the clients of a lost machine (issue 15): each client's keeper, a worker
//! host other than its gateway's own when there is one, runs its `on-close` once the gateway
//! is lost, also when the gateway's machine took its own worker host along, and also after the
//! first keeper was lost while the gateway lived (ARCHITECTURE.md, "Delivery"). Real processes,
//! killed with SIGKILL; a watcher client on a surviving gateway hears every `on-close` (the
//! misbehave plugin's `watch`), and a bystander there keeps being served.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use wasmgate_tests::cluster::{Node, PluginsDir, SECRET, free_port};
use wasmgate_tests::nats::{NatsCluster, PASSWORD, USER};
use wasmgate_tests::plugins;
use wasmgate_tests::prometheus::scrape;

use crate::BIN;
use crate::hostile_links::{client, gateway_of, pinging, register};
use crate::lost_peers::{Watched, clients_of, linked_to};

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

/// A register mesh for worker hosts to link to: the register, gateway A (the watcher's and
/// the bystander's) and gateway G (the doomed clients', with `g_keys` in its section).
struct Mesh {
    register: u16,
    a: u16,
    g: u16,
    g_keys: String,
    _nodes: [Node; 2],
}

impl Mesh {
    /// The mesh, and G's process.
    fn start(g_keys: String) -> (Self, Node) {
        let r = free_port();
        let register = register(r);
        let (a, g) = (free_port(), free_port());
        let a_node = gateway_of("misbehave", a, r, &pinging());
        let g_node = gateway_of("misbehave", g, r, &g_keys);
        let mesh = Self {
            register: r,
            a,
            g,
            g_keys,
            _nodes: [register, a_node],
        };
        (mesh, g_node)
    }

    /// G started again, at the same addresses.
    fn restart_g(&self) -> Node {
        gateway_of("misbehave", self.g, self.register, &self.g_keys)
    }
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
    let mut watched = Watched::on(a.port).await;
    let doomed = clients_of(b.port, DOOMED).await;
    // Each host keeps the other machine's clients.
    keeping(&[a.metrics], DOOMED).await;
    keeping(&[b.metrics], 2).await;

    b.node.kill().await;
    watched.each_closed_once(doomed, LOST_AFTER * 4).await;
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
    let Some(nats) = NatsCluster::start_or_skip(test).await else {
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
    let (mesh, g) = Mesh::start(pinging());
    let (w1, w1_metrics) = worker(mesh.register, plugins.path(), LOST_AFTER);
    linked_to(&w1, 2).await;
    let mut watched = Watched::on(mesh.a).await;
    let doomed = clients_of(mesh.g, DOOMED).await;
    keeping(&[w1_metrics], DOOMED + 2).await;

    let (w2, w2_metrics) = worker(mesh.register, plugins.path(), LOST_AFTER);
    linked_to(&w2, 2).await;
    w1.kill().await;
    keeping(&[w2_metrics], DOOMED + 2).await;

    g.kill().await;
    watched.each_closed_once(doomed, LOST_AFTER * 4).await;
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
    let g_keys = format!("{}\ninternal_port = {}", pinging(), free_port());
    let (mesh, g) = Mesh::start(g_keys);
    let (host, metrics) = worker(mesh.register, plugins.path(), GRACE);
    linked_to(&host, 2).await;
    let mut watched = Watched::on(mesh.a).await;
    let doomed = clients_of(mesh.g, DOOMED).await;
    keeping(&[metrics], DOOMED + 2).await;

    g.kill().await;
    let _g = mesh.restart_g();
    let mut next = client(mesh.g).await;
    // Well within the grace: what is waited for is the link, not the loss.
    tokio::time::timeout(GRACE / 2, watched.each_closed_once(doomed, GRACE / 4))
        .await
        .expect("the first run's clients closed as the gateway linked again");
    assert_eq!(next.ask("echo next run").await, "next run");
    host.wait_for_line(&["gateway restarted", "running on-close"])
        .await;
}
