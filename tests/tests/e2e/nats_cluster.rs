//! NATS as the cluster engine (`[cluster] nats`), as separate OS processes: a 3-node
//! `nats-server` cluster (user and password required), three gateways each on a different
//! NATS node, two worker hosts, and no register. Gateways are found through announcements,
//! commands travel over NATS, and a gateway receives a group's or uid's commands only while
//! it holds a member (its `nats_commands_received_total` proves it).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use wasmgate::config::ClusterConfig;
use wasmgate::nats::Nats;
use wasmgate::push::PushClient;
use wasmgate::transport::Trust;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Node, PluginsDir, SECRET, free_port};
use wasmgate_tests::nats::{NatsCluster, PASSWORD, USER};
use wasmgate_tests::prometheus::scrape;
use wasmgate_tests::{plugins, tools};

use crate::lost_peers::{PUBLISHED, linked_to, publish_all, received_all};
use crate::{BIN, QUIET};

/// A gateway process.
struct Gateway {
    node: Node,
    port: u16,
    metrics: SocketAddr,
    name: String,
}

/// A NATS cluster, three gateways (gateway `i` on NATS node `i`) and two worker hosts
/// (worker `j` on NATS node `j`), all with `/metrics`.
struct Deployment {
    nats: NatsCluster,
    gateways: Vec<Gateway>,
    workers: Vec<(Node, SocketAddr)>,
    _plugins: PluginsDir,
}

/// The `[cluster]` section pointing at NATS node `i` only: the others are learnt from it.
fn cluster_section(nats: &NatsCluster, i: usize) -> String {
    format!(
        "[cluster]\nnats = [\"{}\"]\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
        nats.url(i)
    )
}

/// Starts the deployment, or `None` after reporting `test` as skipped (no `nats-server`).
async fn deploy(test: &str) -> Option<Deployment> {
    let nats = NatsCluster::start_or_skip(test).await?;
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let gateways = (0..3).map(|i| gateway(&nats, i, i, "")).collect();
    let workers = (0..2).map(|j| worker(&nats, j, plugins.path())).collect();
    Some(Deployment {
        nats,
        gateways,
        workers,
        _plugins: plugins,
    })
}

/// Gateway `g<i>` on NATS node `node`, with `/metrics` and the listener keys `extra`.
fn gateway(nats: &NatsCluster, i: usize, node: usize, extra: &str) -> Gateway {
    let (port, metrics) = (free_port(), free_port());
    let name = format!("g{i}");
    let node = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n{}[[gateway]]\nname = \"{name}\"\nlisten = \"ws://127.0.0.1:{port}\"\napp = \"commands\"\n{extra}\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
            cluster_section(nats, node)
        ),
    );
    let metrics = SocketAddr::from(([127, 0, 0, 1], metrics));
    Gateway {
        node,
        port,
        metrics,
        name,
    }
}

/// Worker host `w<j>` on NATS node `j`, with `/metrics`.
fn worker(nats: &NatsCluster, j: usize, plugins: &Path) -> (Node, SocketAddr) {
    let metrics = free_port();
    let node = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n{}[worker]\nname = \"w{j}\"\nplugins = {plugins:?}\ninstances = 1\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
            cluster_section(nats, j)
        ),
    );
    (node, SocketAddr::from(([127, 0, 0, 1], metrics)))
}

/// A client of `gateway`, returned once a worker host answers it.
async fn client_of(gateway: &Gateway) -> TestClient {
    let addr = SocketAddr::from(([127, 0, 0, 1], gateway.port));
    for _ in 0..600 {
        if let Ok(mut c) = TestClient::ws(addr, "/").await {
            served(&mut c, "ready").await;
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "gateway {} never accepted a client; its log:\n{}",
        gateway.name,
        gateway.node.logs()
    );
}

impl Deployment {
    /// A client of gateway `i`, returned once a worker host answers it.
    async fn client(&self, i: usize) -> TestClient {
        client_of(&self.gateways[i]).await
    }

    /// A push client on NATS node 0, once a command goes through (bounded).
    async fn push_client(&self) -> PushClient {
        let config = ClusterConfig {
            nats: vec![self.nats.url(0)],
            name: "wasmgate".into(),
            user: Some(USER.into()),
            password: Some(PASSWORD.into()),
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        };
        let nats = Nats::connect(&config).await.unwrap();
        let push = PushClient::link_nats(nats, Trust::plain(SECRET.as_bytes().into()));
        for _ in 0..100 {
            // Nobody is bound to this uid: the probe reaches no client.
            if push.send_to_uid(&["nobody"], "probe").await.is_ok() {
                return push;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("a push client never reached NATS");
    }

    /// Commands gateway `i` has received over NATS so far.
    async fn received(&self, i: usize) -> f64 {
        let g = &self.gateways[i];
        scrape(g.metrics).await.count(
            "wasmgate_nats_commands_received_total",
            &[("gateway", &g.name)],
        )
    }
}

/// Sends `echo` until answered (bounded): right after a start, or while a NATS connection
/// moves to another server, a reply may be refused as `unreachable` and so lost.
async fn served(client: &mut TestClient, what: &str) {
    for _ in 0..40 {
        client
            .send(&format!("echo {what}"))
            .await
            .expect("the connection is still open");
        while let Ok(reply) = client.recv_within(Duration::from_millis(500)).await {
            if reply == what {
                return;
            }
        }
    }
    panic!("{what:?} was never answered");
}

/// Each of `clients` receives `what` once, and nothing after it.
async fn each_once(clients: &mut [&mut TestClient], what: &str) {
    for c in clients.iter_mut() {
        assert_eq!(c.recv().await, what);
    }
    for c in clients.iter_mut() {
        c.assert_silent(QUIET).await;
    }
}

/// Has `sender` send `to` (a send such as `pub g` or `touid u`) until every one of `members`
/// receives one (bounded), then drains what else arrived. A gateway's new subscription
/// reaches the other NATS servers a moment after it is made (docs/cluster.md), so a send
/// published through another server right after a join may miss it; and after NATS trouble,
/// sends fail until connections are back.
async fn reaches(sender: &mut TestClient, to: &str, members: &mut [&mut TestClient]) {
    let mut n = 0;
    'arrived: loop {
        n += 1;
        assert!(n < 40, "{to:?} never reached every member");
        sender.send(&format!("{to} probe{n}")).await.unwrap();
        for x in members.iter_mut() {
            if x.recv_within(Duration::from_millis(500)).await.is_err() {
                continue 'arrived;
            }
        }
        break;
    }
    for x in members.iter_mut() {
        while x.recv_within(QUIET).await.is_ok() {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_on_three_nats_nodes_fan_out_only_to_gateways_with_members() {
    let test =
        "nats_cluster::three_gateways_on_three_nats_nodes_fan_out_only_to_gateways_with_members";
    let Some(mut d) = deploy(test).await else {
        return;
    };
    // Served on every gateway, with no register anywhere.
    let (mut a1, mut a2, mut by_a) = (d.client(0).await, d.client(0).await, d.client(0).await);
    let (mut b1, mut by_b) = (d.client(1).await, d.client(1).await);
    let mut c1 = d.client(2).await;

    // A group whose members are all on gateway A: B and C receive nothing for it.
    assert_eq!(a1.ask("join local").await, "joined local");
    assert_eq!(a2.ask("join local").await, "joined local");
    let (b_before, c_before) = (d.received(1).await, d.received(2).await);
    reaches(&mut b1, "pub local", &mut [&mut a1, &mut a2]).await;
    b1.send("pub local only-on-a").await.unwrap();
    each_once(&mut [&mut a1, &mut a2], "only-on-a").await;
    b1.assert_silent(QUIET).await;
    c1.assert_silent(QUIET).await;
    assert_eq!(by_a.ask("echo still").await, "still");
    assert_eq!(
        d.received(1).await,
        b_before,
        "gateway B received a command for A's group"
    );
    assert_eq!(
        d.received(2).await,
        c_before,
        "gateway C received a command for A's group"
    );
    assert!(d.received(0).await > 0.0);

    // A group spread over all three: each member once, non-members nothing.
    for c in [&mut a1, &mut b1, &mut c1] {
        assert_eq!(c.ask("join spread").await, "joined spread");
    }
    reaches(&mut by_b, "pub spread", &mut [&mut a1, &mut b1, &mut c1]).await;
    by_b.send("pub spread everywhere").await.unwrap();
    each_once(&mut [&mut a1, &mut b1, &mut c1], "everywhere").await;
    a2.assert_silent(QUIET).await;
    assert_eq!(by_b.ask("echo still").await, "still");

    // A push client of its own on NATS: a send naming two groups reaches a client in both
    // once (a1 is in `local` and `spread`; gateway A receives it on two subjects).
    let push = d.push_client().await;
    push.send_to_group(&["local", "spread"], "two-groups", &[])
        .await
        .unwrap();
    each_once(&mut [&mut a1, &mut a2, &mut b1, &mut c1], "two-groups").await;
    by_a.assert_silent(QUIET).await;

    // A uid bound on A and C: B receives nothing for it.
    assert_eq!(a2.ask("bind u1").await, "bound u1");
    assert_eq!(c1.ask("bind u1").await, "bound u1");
    let b_before = d.received(1).await;
    reaches(&mut by_a, "touid u1", &mut [&mut a2, &mut c1]).await;
    by_a.send("touid u1 to-u1").await.unwrap();
    each_once(&mut [&mut a2, &mut c1], "to-u1").await;
    a1.assert_silent(QUIET).await;
    b1.assert_silent(QUIET).await;
    assert_eq!(
        d.received(1).await,
        b_before,
        "gateway B received a command for a uid on A and C"
    );
    assert_eq!(by_a.ask("echo still").await, "still");

    // Send-to-all: every client once.
    by_b.send("all to-everyone").await.unwrap();
    each_once(
        &mut [&mut a1, &mut a2, &mut by_a, &mut b1, &mut by_b, &mut c1],
        "to-everyone",
    )
    .await;

    // The last member leaving unsubscribes: B no longer receives the spread group's sends.
    assert_eq!(b1.ask("leave spread").await, "left spread");
    let b_before = d.received(1).await;
    by_a.send("pub spread after-b-left").await.unwrap();
    each_once(&mut [&mut a1, &mut c1], "after-b-left").await;
    b1.assert_silent(QUIET).await;
    assert_eq!(
        d.received(1).await,
        b_before,
        "gateway B stayed subscribed to a group it left"
    );

    // A gateway killed without a word is forgotten after 15 silent periods; the others serve on.
    let c = d.gateways.remove(2);
    let internal = c.node.logs();
    c.node.kill().await;
    let internal = internal
        .lines()
        .find(|l| l.contains("gateway listening"))
        .and_then(|l| l.split("internal=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("gateway C logged its internal address")
        .to_owned();
    for (worker, _) in &d.workers {
        worker
            .wait_for_line(&["not heard for", "forgotten", &internal])
            .await;
    }
    assert_eq!(by_a.ask("echo after-c").await, "after-c");
    assert_eq!(by_b.ask("echo after-c").await, "after-c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_nats_node_keeps_clients_served_and_group_sends_arriving() {
    let test = "nats_cluster::killing_a_nats_node_keeps_clients_served_and_group_sends_arriving";
    let Some(mut d) = deploy(test).await else {
        return;
    };
    let (mut a, mut b, mut c) = (d.client(0).await, d.client(1).await, d.client(2).await);
    let mut bystander = d.client(2).await;
    for x in [&mut a, &mut b, &mut c] {
        assert_eq!(x.ask("join g").await, "joined g");
    }
    reaches(&mut bystander, "pub g", &mut [&mut a, &mut b, &mut c]).await;
    bystander.send("pub g before").await.unwrap();
    each_once(&mut [&mut a, &mut b, &mut c], "before").await;

    // Gateway B and worker host w1 were on NATS node 1: they move to the other two.
    d.nats.kill(1).await;
    served(&mut bystander, "bystander-after-kill").await;
    served(&mut b, "b-after-kill").await;
    // Sends made while a connection moves fail (`unreachable`); once moved, they arrive.
    reaches(&mut bystander, "pub g", &mut [&mut a, &mut b, &mut c]).await;
    bystander.send("pub g after").await.unwrap();
    each_once(&mut [&mut a, &mut b, &mut c], "after").await;
    served(&mut bystander, "bystander-at-end").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_fail_while_nats_is_down_and_subscriptions_return_with_it() {
    let test = "nats_cluster::commands_fail_while_nats_is_down_and_subscriptions_return_with_it";
    let Some(mut d) = deploy(test).await else {
        return;
    };
    let (mut a, mut c) = (d.client(0).await, d.client(2).await);
    let mut bystander = d.client(1).await;
    assert_eq!(a.ask("join g").await, "joined g");
    assert_eq!(c.ask("join g").await, "joined g");
    reaches(&mut bystander, "pub g", &mut [&mut a, &mut c]).await;
    bystander.send("pub g before").await.unwrap();
    each_once(&mut [&mut a, &mut c], "before").await;

    for i in 0..3 {
        d.nats.kill(i).await;
    }
    let failed = |s: &wasmgate_tests::prometheus::Scrape| {
        s.count(
            "wasmgate_nats_commands_failed_total",
            &[("reason", "disconnected")],
        )
    };
    let mut before = 0.0;
    for (_, metrics) in &d.workers {
        before += failed(&scrape(*metrics).await);
    }
    // The send fails at the worker host, counted; nothing arrives, and the reply that would
    // say so cannot travel either (it is a command too).
    bystander.send("pub g during").await.unwrap();
    let counted = async {
        loop {
            let mut now = 0.0;
            for (_, metrics) in &d.workers {
                now += failed(&scrape(*metrics).await);
            }
            if now > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), counted)
        .await
        .expect("a command refused while NATS was down was never counted");
    a.assert_silent(QUIET).await;
    c.assert_silent(QUIET).await;
    let logged = d
        .workers
        .iter()
        .any(|(w, _)| w.logs().contains("commands fail until NATS is reachable"));
    assert!(logged, "the outage was not logged by any worker host");

    // NATS back: the connections return and the gateways' subscriptions with them.
    d.nats.restart().await;
    served(&mut bystander, "bystander-after-outage").await;
    reaches(&mut bystander, "pub g", &mut [&mut a, &mut c]).await;
    bystander.send("pub g after").await.unwrap();
    each_once(&mut [&mut a, &mut c], "after").await;
}

/// NATS mode; gateway A on NATS node 0, gateway B on node 2, worker host W1 on node 1 serving
/// every client, W2 on node 0 linked too. The publisher on A publishes to a group whose member
/// is on B while node 1 is frozen (SIGSTOP), so what W1 publishes waits in its NATS client's
/// buffers and socket; W1 is killed (SIGKILL) once one of its acknowledgements waits for NATS
/// (or, where none waits, once every message ran on it), then node 1 is thawed: the member
/// receives every message (repeats allowed: the events A re-sends to W2 publish again), and a
/// bystander on A, served by W2, is served throughout. Before the acknowledgements waited for
/// NATS, W1 acknowledged every event as soon as it ran, and the member never received what
/// was still in W1's buffers when it died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_hosts_commands_on_their_way_to_nats_are_not_lost() {
    let test = "nats_cluster::a_killed_worker_hosts_commands_on_their_way_to_nats_are_not_lost";
    let Some(nats) = NatsCluster::start_or_skip(test).await else {
        return;
    };
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    // Outboxes that take every message of the test in a burst.
    let outbox = "send_buffer = \"256MiB\"";
    let a = gateway(&nats, 0, 0, &format!("{outbox}\nmax_events_in_flight = 4"));
    let b = gateway(&nats, 1, 2, outbox);
    let (doomed, metrics) = worker(&nats, 1, plugins.path());
    // The only host so far: every client is bound to it.
    let mut member = client_of(&b).await;
    assert_eq!(member.ask("join g").await, "joined g");
    let mut publisher = client_of(&a).await;
    reaches(&mut publisher, "pub g", &mut [&mut member]).await;
    let heir = worker(&nats, 0, plugins.path());
    linked_to(&heir.0, 2).await;
    // W2 has fewer clients on A: the bystander is bound to it.
    let mut bystander = client_of(&a).await;
    let calls = |scrape: &wasmgate_tests::prometheus::Scrape| {
        let messages = [("plugin", "commands"), ("event", "on-message")];
        scrape.count("wasmgate_plugin_calls_total", &messages)
    };
    let before = calls(&scrape(metrics).await);

    nats.signal(1, "STOP").await;
    let publishing = publish_all(publisher);
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let now = scrape(metrics).await;
            let ran = calls(&now) - before;
            let parked = now.count("wasmgate_acks_parked_total", &[]);
            if ran >= PUBLISHED as f64 || (ran > 0.0 && parked > 0.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("W1 ran the publisher's events");
    assert_eq!(bystander.ask("echo frozen").await, "frozen");
    doomed.kill().await;
    nats.signal(1, "CONT").await;

    received_all(&mut member).await;
    tokio::time::timeout(Duration::from_secs(30), publishing)
        .await
        .expect("the publisher's messages were all taken")
        .unwrap();
    assert_eq!(bystander.ask("echo still").await, "still");
}

/// A CA, and a server certificate (for 127.0.0.1) and client certificate it signed, as PEM
/// files in `dir`: `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`.
fn certificates(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    for (name, purpose) in [
        ("server", ExtendedKeyUsagePurpose::ServerAuth),
        ("client", ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_travel_over_nats_with_tls_and_client_certificates() {
    let test = "nats_cluster::commands_travel_over_nats_with_tls_and_client_certificates";
    let binary = tokio::task::spawn_blocking(tools::nats_server)
        .await
        .unwrap();
    let Some(binary) = tools::or_skip(binary, test) else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let file = |name: &str| certs.path().join(name).to_str().unwrap().to_owned();
    let tls = [
        "--tlsverify".to_owned(),
        "--tlscert".to_owned(),
        file("server.pem"),
        "--tlskey".to_owned(),
        file("server.key"),
        "--tlscacert".to_owned(),
        file("ca.pem"),
    ];
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let Some(nats) = tools::or_skip(NatsCluster::start_with(binary, 1, &tls).await, test) else {
        return;
    };
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let port = free_port();
    let url = nats.url(0).replace("nats://", "tls://");
    let _node = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[cluster]\nnats = [\"{url}\"]\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n\
             tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{port}\"\napp = \"commands\"\n\
             [worker]\nplugins = {:?}\ninstances = 1\n",
            file("ca.pem"),
            file("client.pem"),
            file("client.key"),
            plugins.path()
        ),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut member = wasmgate_tests::cluster::connect_ws(port).await;
    // Every reply is a command over NATS: an answer proves the TLS connection.
    served(&mut member, "over-tls").await;
    let mut sender = TestClient::ws(addr, "/").await.unwrap();
    served(&mut sender, "sender-ready").await;
    assert_eq!(member.ask("join g").await, "joined g");
    sender.send("pub g secured").await.unwrap();
    each_once(&mut [&mut member], "secured").await;
}

/// `wasmgate status` (`--json` if `json`) of `node`, bounded.
async fn status(node: &Node, json: bool) -> String {
    let mut command = tokio::process::Command::new(BIN);
    command.arg("status");
    if json {
        command.arg("--json");
    }
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        command.arg("-c").arg(node.config_file()).output(),
    )
    .await
    .expect("status did not answer")
    .expect("status runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The `nats` part of `node`'s `status --json`.
async fn nats_status(node: &Node) -> serde_json::Value {
    let status: serde_json::Value = serde_json::from_str(&status(node, true).await).unwrap();
    status["nats"].clone()
}

/// Polls `node`'s NATS status (bounded) until `done` says yes, and returns it.
async fn nats_status_until(
    node: &Node,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        last = nats_status(node).await;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("status never showed {what}; last: {last:#}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_nats_connection_its_subscriptions_and_its_loss() {
    let test = "nats_cluster::status_shows_the_nats_connection_its_subscriptions_and_its_loss";
    let Some(mut d) = deploy(test).await else {
        return;
    };
    let mut a = d.client(0).await;
    let mut bystander = d.client(1).await;
    assert_eq!(a.ask("join g").await, "joined g");
    assert_eq!(a.ask("bind alice").await, "bound alice");
    reaches(&mut bystander, "pub g", &mut [&mut a]).await;

    // Gateway A, configured with NATS node 0 only, is connected to it and holds one group
    // and one uid subject; what reached it is counted.
    let url0 = d.nats.url(0);
    let port0 = url0.rsplit(':').next().unwrap().to_owned();
    let g0 = &d.gateways[0].node;
    let nats = nats_status(g0).await;
    assert_eq!(nats["state"], "connected", "{nats:#}");
    assert_eq!(nats["servers"], serde_json::json!([url0]), "{nats:#}");
    let server = nats["server"].as_str().unwrap();
    assert!(
        server.starts_with(&format!("127.0.0.1:{port0}")),
        "{nats:#}"
    );
    assert_eq!(nats["connects"], 1, "{nats:#}");
    let gateway = &nats["gateways"][0];
    assert_eq!(gateway["name"], "g0", "{nats:#}");
    assert_eq!(gateway["group_subjects"], 1, "{nats:#}");
    assert_eq!(gateway["uid_subjects"], 1, "{nats:#}");
    assert!(
        gateway["commands_received"].as_u64().unwrap() >= 1,
        "{nats:#}"
    );
    let mut published = 0;
    for (worker, _) in &d.workers {
        let nats = nats_status(worker).await;
        assert_eq!(nats["state"], "connected", "{nats:#}");
        assert_eq!(nats["gateways"], serde_json::json!([]), "{nats:#}");
        published += nats["commands_published"].as_u64().unwrap();
    }
    assert!(published >= 1, "the worker hosts published nothing");
    let screen = status(g0, false).await;
    let section = screen
        .split_once("NATS")
        .unwrap_or_else(|| panic!("no NATS section:\n{screen}"))
        .1;
    let mut lines = section.lines().skip(1);
    assert!(lines.next().unwrap().starts_with("state"), "{screen}");
    assert!(lines.next().unwrap().starts_with("connected "), "{screen}");

    // Its server killed, it moves to another node of the cluster, and says so.
    d.nats.kill(0).await;
    let moved = nats_status_until(g0, "a reconnection to another node", |n| {
        n["state"] == "connected" && n["connects"] == 2
    })
    .await;
    let server = moved["server"].as_str().unwrap();
    assert!(
        !server.starts_with(&format!("127.0.0.1:{port0}")),
        "{moved:#}"
    );
    served(&mut bystander, "bystander-after-kill").await;
    served(&mut a, "a-after-kill").await;

    // Every node killed: disconnected since then, retried in the background.
    let before = unix_now();
    d.nats.kill(1).await;
    d.nats.kill(2).await;
    let down = nats_status_until(g0, "disconnected", |n| n["state"] == "disconnected").await;
    assert!(down["since"].as_u64().unwrap() >= before, "{down:#}");
    assert_eq!(down["server"], serde_json::Value::Null, "{down:#}");

    // Back: connected again, and clients served.
    d.nats.restart().await;
    nats_status_until(g0, "connected again", |n| n["state"] == "connected").await;
    served(&mut bystander, "bystander-at-end").await;
    served(&mut a, "a-at-end").await;
}
