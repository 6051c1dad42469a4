//! Nothing lost with a peer (issue 12 item 13, issue 15): the events a killed worker host held
//! run on another host, in order and numbered as before, also when it is the gateway's writes
//! that find the host gone, what their callbacks sent to other gateways is not lost with it,
//! and the clients of a killed gateway get their `on-close` on a worker host, while a
//! bystander client keeps being served. Real processes, killed with SIGKILL.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio::net::tcp::OwnedReadHalf;
use wasmgate::wire::codec::{FrameReader, FrameWriter};
use wasmgate::wire::handshake::{Peer, connect_handshake};
use wasmgate::wire::messages::{ServedApp, ToGateway};
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Cluster, Node, PluginsDir, SECRET, free_port};
use wasmgate_tests::plugins;
use wasmgate_tests::prometheus::scrape;

use crate::hostile_links::{MisbehaveGateway, client, gateway_of, pinging, register, worker};
use crate::{BIN, QUIET};

/// Events a client sends while its worker host is frozen, then killed.
const HELD: usize = 20;

/// How long the events of a lost host may take to run elsewhere.
const RESENT_WITHIN: Duration = Duration::from_secs(10);

/// A worker host frozen (SIGSTOP) with a client's events queued, then killed: each of those
/// events runs on the other host, in the order sent, under the number its gateway gave it.
/// Before this, the gateway kept only close events, and these were lost with the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_hosts_unfinished_events_run_on_another() {
    let cluster = MisbehaveGateway::start();
    let (plugins, r, g) = (&cluster.plugins, cluster.register, cluster.port);
    let doomed = worker("w1", plugins.path(), r);
    doomed.wait_for_line(&["linked to gateway"]).await;
    // The only host: the publisher is bound to it.
    let mut publisher = client(g).await;
    let w2 = worker("w2", plugins.path(), r);
    w2.wait_for_line(&["linked to gateway"]).await;
    doomed.signal("STOP").await;
    // Only the live host answers, so the bystander ends up there.
    let mut bystander = client(g).await;
    for i in 0..HELD {
        publisher.send(&format!("event {i}")).await.unwrap();
    }
    doomed.kill().await;
    // Its connect and `echo ready` were events 1 and 2.
    for i in 0..HELD {
        let reply = publisher
            .recv_within(RESENT_WITHIN)
            .await
            .unwrap_or_else(|silence| panic!("event {i} was lost with its host: {silence:?}"));
        assert_eq!(
            reply,
            format!("event {} {i}", i + 3),
            "an event lost, repeated, out of order or renumbered"
        );
    }
    assert_eq!(bystander.ask("echo still").await, "still");
    assert_eq!(
        publisher.ask("event after").await,
        format!("event {} after", HELD + 3)
    );
}

/// How long a worker host waits for a gateway whose link is down before declaring it lost.
const LOST_AFTER: Duration = Duration::from_secs(3);

/// Clients of the gateway that is frozen, then killed.
const ON_B: usize = 3;

/// Register mesh; gateways A and B, one worker host declaring a gateway lost after
/// [`LOST_AFTER`]. B frozen (SIGSTOP) long enough for its link to drop, then thawed within
/// the grace: its clients keep their connections and nobody's `on-close` runs. B killed
/// (SIGKILL): each of its clients' `on-close` runs on the worker host, once (it is their
/// keeper), which a watcher on A hears, while a bystander on A keeps being served. Before
/// this, no `on-close` ran for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_clients_get_on_close_on_a_worker_host() {
    let plugins = PluginsDir::with(&[("misbehave", plugins::MISBEHAVE)]);
    let r = free_port();
    let _register = register(r);
    let (ga, gb) = (free_port(), free_port());
    let _a = gateway_of("misbehave", ga, r, &pinging());
    let b = gateway_of("misbehave", gb, r, &pinging());
    let host = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[worker]\nplugins = {:?}\ninstances = 2\n\
             register = \"127.0.0.1:{r}\"\n{}\ngateway_lost_after = \"{}s\"\n",
            plugins.path(),
            pinging(),
            LOST_AFTER.as_secs()
        ),
    );
    let mut watched = Watched::on(ga).await;
    let mut on_b = clients_of(gb, ON_B).await;

    // Frozen past three pings, so the worker host drops its link, and back within the grace.
    let links_to_b = || host.logs().matches("linked to gateway").count();
    let linked = links_to_b();
    b.signal("STOP").await;
    host.wait_for_line(&["gateway link down"]).await;
    b.signal("CONT").await;
    tokio::time::timeout(LOST_AFTER, async {
        while links_to_b() == linked {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the thawed gateway links again within the grace");
    for (c, id) in &mut on_b {
        assert_eq!(c.ask("echo alive").await, "alive", "client {id} of B");
    }
    watched.watcher.assert_silent(LOST_AFTER * 2).await;

    b.kill().await;
    // Once each: nobody else kept them.
    watched.each_closed_once(on_b, LOST_AFTER * 4).await;
    host.wait_for_line(&["gateway lost"]).await;
}

/// Messages published while their way out of the worker host is stalled, of
/// [`PUBLISHED_BYTES`] each: 24 MiB in all, far more than the kernel holds for a loopback
/// socket (its send buffer, at most 4 MiB here, and what the stalled peer's receive buffer
/// took), so most of what the worker host sends is still in its own buffers when it is killed.
pub(crate) const PUBLISHED: usize = 64;

/// The size of each message published.
const PUBLISHED_BYTES: usize = 384 * 1024;

/// A worker host process with `[metrics]` on `metrics`, its links pinging every 5 s
/// (the default: a gateway frozen for a second keeps its links).
fn worker_with_metrics(name: &str, plugins: &PluginsDir, register: u16, metrics: u16) -> Node {
    Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[worker]\n\
             name = \"{name}\"\nplugins = {:?}\ninstances = 1\nregister = \"127.0.0.1:{register}\"\n",
            plugins.path()
        ),
    )
}

/// A watcher, told of every `on-close` (the misbehave plugin's `watch`), and a bystander, which
/// must stay served: two clients of one gateway.
pub(crate) struct Watched {
    /// The watcher.
    pub watcher: TestClient,
    bystander: TestClient,
}

impl Watched {
    /// The two, on the gateway whose client port is `port`.
    pub(crate) async fn on(port: u16) -> Self {
        let mut watcher = client(port).await;
        assert_eq!(watcher.ask("watch").await, "watching");
        let bystander = client(port).await;
        Self { watcher, bystander }
    }

    /// Waits until the watcher heard `closed <id>` once for each of `doomed`, each within
    /// `wait`, the bystander answering after each; then that nothing more comes for a while:
    /// one `on-close` per client.
    pub(crate) async fn each_closed_once(
        &mut self,
        doomed: Vec<(TestClient, String)>,
        wait: Duration,
    ) {
        let expected: HashSet<String> = doomed.into_iter().map(|(_, id)| id).collect();
        let mut closed = HashSet::new();
        while closed.len() < expected.len() {
            let told = self.watcher.recv_within(wait).await.unwrap_or_else(|_| {
                let missing: Vec<_> = expected.difference(&closed).collect();
                panic!("no on-close ran for {missing:?}")
            });
            let id = told.strip_prefix("closed ").expect("only closes are told");
            assert!(closed.insert(id.to_owned()), "on-close ran twice for {id}");
            assert_eq!(self.bystander.ask("echo still").await, "still");
        }
        self.watcher.assert_silent(QUIET * 4).await;
    }
}

/// `count` clients of the gateway whose client port is `port`, each with its id.
pub(crate) async fn clients_of(port: u16, count: usize) -> Vec<(TestClient, String)> {
    let mut clients = Vec::new();
    for _ in 0..count {
        let mut c = client(port).await;
        let id = c.ask("whoami").await;
        clients.push((c, id));
    }
    clients
}

/// Waits (bounded) until `node` has linked to `gateways` gateways.
pub(crate) async fn linked_to(node: &Node, gateways: usize) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while node.logs().matches("linked to gateway").count() < gateways {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not linked to {gateways} gateways:\n{}", node.logs()));
}

/// The number of a published message (`NNN <padding>`), checking that it arrived whole.
fn published(message: &str) -> usize {
    assert_eq!(message.len(), 4 + PUBLISHED_BYTES, "a message cut short");
    message[..3].parse().expect("a published message")
}

/// Has `publisher` publish [`PUBLISHED`] messages to group `g` in a task of its own (its
/// gateway stops reading it while its window is full), which gives it back at the end.
pub(crate) fn publish_all(mut publisher: TestClient) -> tokio::task::JoinHandle<TestClient> {
    tokio::spawn(async move {
        let padding = "x".repeat(PUBLISHED_BYTES);
        for n in 0..PUBLISHED {
            publisher
                .send(&format!("pub g {n:03} {padding}"))
                .await
                .unwrap();
        }
        publisher
    })
}

/// Reads `member` until it has every published message (repeats allowed) or stays silent
/// for 20 s, and asserts that none is missing.
pub(crate) async fn received_all(member: &mut TestClient) {
    let mut received = HashSet::new();
    while received.len() < PUBLISHED {
        match member.recv_within(Duration::from_secs(20)).await {
            Ok(message) => received.insert(published(&message)),
            Err(_) => break,
        };
    }
    let missing: Vec<_> = (0..PUBLISHED).filter(|n| !received.contains(n)).collect();
    assert!(missing.is_empty(), "the member never received {missing:?}");
}

/// Register mesh; gateways A and B, worker host W1 serving every client, W2 linked too. The
/// publisher on A publishes to a group with a member on each gateway while B is frozen
/// (SIGSTOP), so W1's commands to B stay unconfirmed; W1 is killed (SIGKILL) once its first
/// events ran, then B thawed: the member on B receives every message (repeats allowed: the
/// events A re-sends to W2 publish again), and a bystander on A is served throughout. Before
/// this, W1 acknowledged each event to A as soon as it ran, while its commands to B still sat
/// in its link queue: the test killed W1 once every message had run (its `Done`s at A), and
/// B never got what was queued (54 of the 64 messages, run before the change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_hosts_commands_to_a_frozen_gateway_are_not_lost() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let r = free_port();
    let _register = register(r);
    let (ga, gb) = (free_port(), free_port());
    // Outboxes that take every message of the test in a burst.
    let outbox = "send_buffer = \"256MiB\"";
    let _a = gateway_of(
        "commands",
        ga,
        r,
        &format!("{outbox}\nmax_events_in_flight = 4"),
    );
    let b = gateway_of("commands", gb, r, outbox);
    let metrics = free_port();
    let doomed = worker_with_metrics("w1", &plugins, r, metrics);
    // The only host so far: every client is bound to it.
    let mut watcher = client(ga).await;
    assert_eq!(watcher.ask("join g").await, "joined g");
    let mut member = client(gb).await;
    assert_eq!(member.ask("join g").await, "joined g");
    let mut bystander = client(ga).await;
    let publisher = client(ga).await;
    let heir = worker_with_metrics("w2", &plugins, r, free_port());
    linked_to(&heir, 2).await;

    b.signal("STOP").await;
    let publishing = publish_all(publisher);
    // W1 runs the first events (the watcher on A hears them). Killed once one of its
    // acknowledgements waits for B, or, where none waits, once every message ran.
    let mut ran = HashSet::new();
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics).into();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(message) = watcher.recv_within(Duration::from_millis(100)).await {
                ran.insert(published(&message));
            }
            if ran.len() == PUBLISHED {
                return;
            }
            let parked = scrape(metrics)
                .await
                .count("wasmgate_acks_parked_total", &[]);
            if !ran.is_empty() && parked > 0.0 {
                return;
            }
        }
    })
    .await
    .expect("W1 ran the publisher's events");
    assert_eq!(bystander.ask("echo frozen").await, "frozen");
    doomed.kill().await;
    b.signal("CONT").await;

    received_all(&mut member).await;
    let _publisher: TestClient = tokio::time::timeout(Duration::from_secs(30), publishing)
        .await
        .expect("the publisher's messages were all taken")
        .unwrap();
    // Its last event ran on W1 maybe unacknowledged: then it runs again on W2 first.
    bystander.send("echo still").await.unwrap();
    let mut reply = bystander.recv().await;
    if reply == "frozen" {
        reply = bystander.recv().await;
    }
    assert_eq!(reply, "still");
    drop(heir);
}

/// Clients bound to the worker host that stops reading, and the big messages each sends it.
const STALLED_CLIENTS: usize = 2;
const STALLED_MESSAGES: usize = 40;

/// Each message's payload: together, several times what the kernel buffers between the
/// gateway and that host hold (4 MiB of send buffer at most on Linux by default).
const STALLED_BYTES: usize = 100 * 1024;

/// A worker host that stops reading its link but keeps pinging: the gateway's writes to it
/// stall and its writer gives up (after three `link_ping_interval`s) while its reader still
/// hears the pings. The link is lost all the same: the events the host held run on another
/// host, in order, though their clients send nothing more. Before, only the reader's end took
/// a link out of the router: when the writer failed first (a reset seen on a write, as when a
/// machine dies under load), a client bound there waited for its own next event, which an
/// idle client never sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_host_whose_writes_stall_is_lost_and_its_events_run_on_another() {
    let table = "listen = \"ws://127.0.0.1:0\"\nlink_ping_interval = \"200ms\"".to_owned();
    let cluster = Cluster::start_with(("commands", plugins::COMMANDS), &[table], 1, 1).await;
    let gateway = &cluster.gateways[0];
    let _stalled = StalledWorker::link(gateway.internal_addr, "commands").await;
    tokio::time::timeout(RESENT_WITHIN, gateway.gateway.router.wait_for_links(2))
        .await
        .expect("the stalled host never linked");
    // Clients go to the host with fewer: one whose probe stays unanswered is bound there.
    let mut stalled = Vec::new();
    let mut bystanders = Vec::new();
    for _ in 0..4 * STALLED_CLIENTS {
        let mut c = TestClient::ws(gateway.client_addr, "/").await.unwrap();
        c.send("echo probe").await.unwrap();
        match c.recv_within(QUIET).await {
            Ok(reply) => {
                assert_eq!(reply, "probe");
                bystanders.push(c);
            }
            Err(_) if stalled.len() < STALLED_CLIENTS => stalled.push(c),
            Err(_) => {}
        }
    }
    assert_eq!(stalled.len(), STALLED_CLIENTS, "clients bound to the host");
    let payload = |i: usize| format!("{i:03}{}", "x".repeat(STALLED_BYTES));
    for c in &mut stalled {
        for i in 0..STALLED_MESSAGES {
            c.send(&format!("echo {}", payload(i))).await.unwrap();
        }
    }
    for (k, c) in stalled.iter_mut().enumerate() {
        let probe = c.recv_within(RESENT_WITHIN).await;
        assert_eq!(
            probe.as_deref(),
            Ok("probe"),
            "client {k}'s events stayed with the host whose link stalled"
        );
        for i in 0..STALLED_MESSAGES {
            let reply = c.recv_within(RESENT_WITHIN).await;
            assert!(
                reply.as_deref() == Ok(payload(i).as_str()),
                "client {k}'s message {i} was lost, repeated or out of order"
            );
        }
    }
    for b in &mut bystanders {
        assert_eq!(b.ask("echo still").await, "still");
    }
}

/// A worker host's side of a link, over TCP, that serves `app` as far as the gateway can
/// tell, pings every 50 ms and never reads: what the gateway writes piles up in the kernel
/// buffers (its receive buffer is the smallest the kernel allows).
struct StalledWorker {
    _reader: FrameReader<OwnedReadHalf>,
    pinging: tokio::task::JoinHandle<()>,
}

impl StalledWorker {
    async fn link(gateway: SocketAddr, app: &str) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1).unwrap();
        let (reader, writer) = socket.connect(gateway).await.unwrap().into_split();
        let (mut reader, mut writer) = (FrameReader::new(reader), FrameWriter::new(writer));
        connect_handshake(&mut reader, &mut writer, SECRET.as_bytes(), Peer::Worker)
            .await
            .unwrap();
        let apps = vec![ServedApp {
            name: app.to_owned(),
            version: "stalled".to_owned(),
            presence: false,
        }];
        writer
            .send(&ToGateway::Apps { host: 1, apps })
            .await
            .unwrap();
        let pinging = tokio::spawn(async move {
            while writer.send(&ToGateway::Ping).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self {
            _reader: reader,
            pinging,
        }
    }
}

impl Drop for StalledWorker {
    fn drop(&mut self) {
        self.pinging.abort();
    }
}
