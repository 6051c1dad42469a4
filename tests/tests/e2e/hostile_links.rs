//! Internal links under hostile load: a client that floods its gateway (in events or in
//! bytes), a message too large for a frame, peers that stop answering (frozen with SIGSTOP) and
//! gateways the registers no longer list are each cut off alone, and a worker host that stops
//! hands its clients over without losing an event, while a bystander client's replies keep
//! arriving.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wasmgate::config::Protocol;
use wasmgate::gateway::BoundGateway;
use wasmgate::local::LocalGateways;
use wasmgate::worker::WorkerHost;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Cluster, Node, PluginsDir, SECRET, free_port};
use wasmgate_tests::plugins;

use crate::BIN;

/// The links' ping interval in the process tests: a frozen peer is dropped within three.
pub(crate) const PING: Duration = Duration::from_millis(300);

/// Asks `question` and returns how long the answer took; fails if it never comes.
async fn timed_ask(client: &mut TestClient, question: &str, expected: &str) -> Duration {
    let started = Instant::now();
    client
        .send(question)
        .await
        .expect("the client is connected");
    let answer = client
        .recv_within(Duration::from_secs(10))
        .await
        .unwrap_or_else(|_| panic!("{question:?} was not answered within 10 s"));
    assert_eq!(answer, expected);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_does_not_delay_a_bystander() {
    // One instance: the flooder and the bystander share the link and the instance.
    let cluster = Cluster::start(("commands", plugins::COMMANDS), &[Protocol::Ws], 1, 1).await;
    let addr = cluster.gateways[0].client_addr;
    let mut flooder = TestClient::ws(addr, "/").await.unwrap();
    let mut bystander = TestClient::ws(addr, "/").await.unwrap();
    assert_eq!(bystander.ask("join room").await, "joined room");
    // Queries go to the gateway and back over the same link as the events: a link reader
    // that waited on the instance would stall their replies, and everything behind them.
    for _ in 0..3000 {
        flooder.send("count room").await.unwrap();
    }
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let took = timed_ask(&mut bystander, &format!("echo {i}"), &i.to_string()).await;
        slowest = slowest.max(took);
        let took = timed_ask(&mut bystander, "count room", "count room 1").await;
        slowest = slowest.max(took);
    }
    assert!(
        slowest < Duration::from_millis(500),
        "the bystander waited {slowest:?} behind the flood"
    );
    // The flooder is slowed, not dropped: its replies all arrive, in order.
    for _ in 0..3000 {
        let reply = flooder.recv_within(Duration::from_secs(30)).await;
        assert_eq!(reply.as_deref(), Ok("count room 1"));
    }
    cluster.stop().await;
}

pub(crate) fn register(port: u16) -> Node {
    Node::start(
        BIN,
        &format!("secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
}

/// A gateway of the `commands` app whose links ping every [`PING`].
fn gateway(port: u16, register: u16) -> Node {
    gateway_of("commands", port, register, &pinging())
}

/// A gateway of `app` on `port`, registering at `register`, with `extra` keys in its section.
pub(crate) fn gateway_of(app: &str, port: u16, register: u16, extra: &str) -> Node {
    Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:{port}\"\napp = \"{app}\"\n\
             register = \"127.0.0.1:{register}\"\n{extra}\n"
        ),
    )
}

/// The key that makes a role's links ping every [`PING`].
pub(crate) fn pinging() -> String {
    format!("link_ping_interval = \"{}ms\"", PING.as_millis())
}

pub(crate) fn worker(name: &str, plugins: &Path, register: u16) -> Node {
    Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[worker]\nname = \"{name}\"\nplugins = {plugins:?}\ninstances = 1\n\
             register = \"127.0.0.1:{register}\"\n{}\n",
            pinging()
        ),
    )
}

/// A register and a gateway of the `misbehave` app pinging every [`PING`], for worker hosts
/// to link to; stopped on drop.
pub(crate) struct MisbehaveGateway {
    /// The plugins directory worker hosts load.
    pub plugins: PluginsDir,
    /// The register's port.
    pub register: u16,
    /// The gateway's client port.
    pub port: u16,
    _nodes: [Node; 2],
}

impl MisbehaveGateway {
    pub(crate) fn start() -> Self {
        let plugins = PluginsDir::with(&[("misbehave", plugins::MISBEHAVE)]);
        let (r, g) = (free_port(), free_port());
        let register = register(r);
        let gateway = gateway_of("misbehave", g, r, &pinging());
        Self {
            plugins,
            register: r,
            port: g,
            _nodes: [register, gateway],
        }
    }
}

/// Connects once the gateway listens, and returns once a worker host answers.
pub(crate) async fn client(port: u16) -> TestClient {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..400 {
        if let Ok(mut c) = TestClient::ws(addr, "/").await {
            c.send("echo ready").await.unwrap();
            if c.recv_within(Duration::from_secs(1)).await.as_deref() == Ok("ready") {
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway on port {port} never served a client");
}

/// Sends `echo` until answered within `wait` each time, for at most `within`; returns how long
/// it took. An event already handed to a peer that then froze is re-sent to the next one
/// once the peer is given up (at least once), so the reply to an earlier echo of this client
/// (one of `earlier`) may come first; any other reply fails the test.
async fn served_within(
    client: &mut TestClient,
    what: &str,
    earlier: &[&str],
    within: Duration,
) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        client.send(&format!("echo {what}")).await.unwrap();
        while let Ok(reply) = client.recv_within(Duration::from_millis(200)).await {
            if reply == what {
                return started.elapsed();
            }
            assert!(
                earlier.contains(&reply.as_str()),
                "unexpected reply {reply:?}"
            );
        }
    }
    panic!("{what:?} was not served within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_host_is_routed_around() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let r = free_port();
    let _register = register(r);
    let g = free_port();
    let gateway = gateway(g, r);
    let w1 = worker("w1", plugins.path(), r);
    let w2 = worker("w2", plugins.path(), r);
    w1.wait_for_line(&["linked to gateway"]).await;
    w2.wait_for_line(&["linked to gateway"]).await;
    // Both worker hosts linked: the two clients go one to each (least connections).
    let mut a = client(g).await;
    let mut b = client(g).await;
    w1.signal("STOP").await;
    // The client bound to the frozen host is re-bound within three ping intervals (its events
    // held by the host are re-sent to the other); the other, the bystander, is not delayed.
    let limit = PING * 3 + Duration::from_secs(2);
    // `client` may have sent "echo ready" more than once on a slow machine.
    let took_a = served_within(&mut a, "a", &["ready"], limit).await;
    let took_b = served_within(&mut b, "b", &["ready"], limit).await;
    w1.signal("CONT").await;
    assert!(
        took_a.min(took_b) < Duration::from_millis(200),
        "the bystander waited: {took_a:?} {took_b:?}"
    );
    gateway
        .wait_for_line(&["internal link closed", "silent"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_gateway_is_unlinked() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let r = free_port();
    let _register = register(r);
    let (g1, g2) = (free_port(), free_port());
    let frozen = gateway(g1, r);
    let _gateway2 = gateway(g2, r);
    let worker = worker("w", plugins.path(), r);
    let mut a = client(g1).await;
    let mut bystander = client(g2).await;
    assert_eq!(a.ask("join g").await, "joined g");
    assert_eq!(bystander.ask("join g").await, "joined g");
    // Both gateways answer the worker host's queries.
    for _ in 0..200 {
        if bystander.ask("count g").await == "count g 2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    frozen.signal("STOP").await;
    // A query to every gateway waits for the frozen one (up to its 1 s timeout) only until
    // the worker host drops that link: within three ping intervals.
    let started = Instant::now();
    loop {
        let took = timed_ask(&mut bystander, "count g", "count g 1").await;
        if took < Duration::from_millis(200) {
            break;
        }
        assert!(
            started.elapsed() < PING * 3 + Duration::from_secs(3),
            "queries still wait for the frozen gateway after {:?}",
            started.elapsed()
        );
    }
    // A broadcast reaches the bystander without waiting on the frozen gateway.
    let started = Instant::now();
    bystander.send("pub g still here").await.unwrap();
    assert_eq!(bystander.recv().await, "still here");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(200), "{took:?}");
    frozen.signal("CONT").await;
    worker.wait_for_line(&["gateway link down", "silent"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stream_past_the_limits_fails_the_writes_not_the_link() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let r = free_port();
    let _register = register(r);
    let g = free_port();
    let gateway = gateway(g, r);
    let worker = worker("w", plugins.path(), r);
    let mut writer = client(g).await;
    let mut bystander = client(g).await;
    // 24 session values of 800 KB (19 MB in all), the stream that used to close the link once
    // the session outgrew an internal frame: each write is refused at the call, over TCP links.
    let value = "v".repeat(800_000);
    for i in 0..24 {
        let reply = writer.ask(&format!("set k{i} {value}")).await;
        assert!(reply.starts_with("error invalid-argument"), "{reply}");
        let took = timed_ask(&mut bystander, &format!("echo {i}"), &i.to_string()).await;
        assert!(
            took < Duration::from_secs(1),
            "the bystander waited {took:?}"
        );
    }
    assert_eq!(writer.ask("echo still linked").await, "still linked");
    // The link was never closed: neither end logged it.
    assert!(
        !gateway.logs().contains("internal link closed"),
        "{}",
        gateway.logs()
    );
    assert!(
        !worker.logs().contains("gateway link down"),
        "{}",
        worker.logs()
    );
}

/// A worker host killed while it holds a client's close event: the gateway sends the close
/// to another worker host, whose `on-close` runs for it. (The chat hears departures through
/// presence, whose reports a lost host takes with it: ARCHITECTURE.md, "Presence".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_hosts_clients_get_on_close_from_another() {
    let cluster = MisbehaveGateway::start();
    let (plugins, r, g) = (&cluster.plugins, cluster.register, cluster.port);
    let doomed = worker("w1", plugins.path(), r);
    let w2 = worker("w2", plugins.path(), r);
    doomed.wait_for_line(&["linked to gateway"]).await;
    w2.wait_for_line(&["linked to gateway"]).await;
    // Least connections: one client on each worker host.
    let mut first = client(g).await;
    let second = client(g).await;
    doomed.wait_for_line(&["on-connect "]).await;
    let on_doomed = doomed
        .logs()
        .lines()
        .filter_map(|line| line.split("on-connect ").nth(1))
        .filter_map(|rest| rest.get(..20))
        .next_back()
        .expect("a client on the doomed host")
        .to_owned();
    doomed.signal("STOP").await;
    // Whoever is served by the live host answers; the other leaves while its host is frozen.
    first.send("echo probe").await.unwrap();
    let first_is_live = first
        .recv_within(Duration::from_secs(1))
        .await
        .is_ok_and(|m| m == "probe");
    let (leaver, mut bystander) = if first_is_live {
        (second, first)
    } else {
        (first, second)
    };
    drop(leaver);
    doomed.kill().await;
    // The close event went to the frozen host and died with it: the gateway sends it again to
    // the live host, whose `on-close` runs.
    w2.wait_for_line(&["on-close ", &on_doomed]).await;
    assert_eq!(bystander.ask("echo still").await, "still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_events_hold_up_other_clients_for_one_timeout_at_most() {
    let timeout = Duration::from_secs(1);
    let plugins = PluginsDir::with(&[("misbehave", plugins::MISBEHAVE)]);
    let r = free_port();
    let _register = register(r);
    let g = free_port();
    let _gateway = gateway_of("misbehave", g, r, "");
    // One instance: the looping client and the bystander share it.
    let _worker = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[worker]\nplugins = {:?}\ninstances = 1\nprocess_timeout = \"{}ms\"\n\
             register = \"127.0.0.1:{r}\"\n",
            plugins.path(),
            timeout.as_millis()
        ),
    );
    let mut looper = client(g).await;
    let mut bystander = client(g).await;
    for _ in 0..3 {
        looper.send("loop").await.unwrap();
    }
    // A loop never answers, so there is nothing to await: give the three a moment to reach
    // the instance ahead of the bystander's event, which is what made it wait for all three.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = timed_ask(&mut bystander, "echo me", "me").await;
    // Behind all three loops it would wait three timeouts; one timeout plus a restart of
    // the instance is what it may wait, with room for a loaded machine's scheduling.
    assert!(
        took < timeout * 5 / 2,
        "the bystander waited {took:?} behind another client's loops (process_timeout {timeout:?})"
    );
}

/// Two gateways, each announced to its own register, and a worker host that learns both lists
/// (through channels when `in_process`, else over TCP): stopping the first register de-lists
/// the first gateway only. Returns the tokens that stop the first register and everything.
struct Delisting {
    first_register: CancellationToken,
    shutdown: CancellationToken,
    gateways: Vec<(SocketAddr, Arc<wasmgate::gateway::Gateway>)>,
    _plugins: PluginsDir,
}

impl Delisting {
    async fn start(in_process: bool) -> Self {
        let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
        let secret = wasmgate::transport::Trust::plain(SECRET.as_bytes().into());
        let shutdown = CancellationToken::new();
        let first_register = shutdown.child_token();
        let mut registers = Vec::new();
        for stop in [first_register.clone(), shutdown.clone()] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            registers.push(listener.local_addr().unwrap());
            tokio::spawn(wasmgate::register::run(
                listener,
                Default::default(),
                secret.clone(),
                stop,
            ));
        }
        let local = LocalGateways::default();
        let mut gateways = Vec::new();
        for (i, register) in registers.iter().enumerate() {
            let mut config = parse(&format!(
                "[[gateway]]\nname = \"gw{i}\"\nlisten = \"ws://127.0.0.1:0\"\napp = \"commands\"\n\
                 register = \"{register}\"\n"
            ));
            let bound = BoundGateway::bind(config.gateway.remove(0), secret.clone(), None)
                .await
                .unwrap();
            gateways.push((bound.client_addr(), bound.gateway()));
            tokio::spawn(bound.run(local.clone(), None, shutdown.clone()));
        }
        let cache = wasmgate_tests::tools::workspace()
            .join("target")
            .join("test-plugin-cache");
        let config = parse(&format!(
            "[worker]\nplugins = {:?}\ninstances = 1\ncache = {cache:?}\nregister = [\"{}\", \"{}\"]\n",
            plugins.path(),
            registers[0],
            registers[1],
        ));
        let worker_local = if in_process {
            local
        } else {
            LocalGateways::default()
        };
        let worker = WorkerHost::new(config.worker.unwrap(), secret, worker_local, None).unwrap();
        let (_, grants) = tokio::sync::watch::channel(Arc::new(worker.grants().clone()));
        tokio::spawn(worker.run(grants, shutdown.clone()));
        for (_, gateway) in &gateways {
            tokio::time::timeout(Duration::from_secs(60), gateway.router.wait_for_links(1))
                .await
                .expect("the worker host did not link to both gateways");
        }
        Self {
            first_register,
            shutdown,
            gateways,
            _plugins: plugins,
        }
    }
}

fn parse(text: &str) -> wasmgate::config::Config {
    wasmgate::config::Config::from_toml(text, Path::new("wasmgate.toml")).unwrap()
}

async fn a_gateway_no_longer_listed_is_unlinked(in_process: bool) {
    let cluster = Delisting::start(in_process).await;
    let (delisted_addr, delisted) = &cluster.gateways[0];
    let mut a = TestClient::ws(*delisted_addr, "/").await.unwrap();
    let mut bystander = TestClient::ws(cluster.gateways[1].0, "/").await.unwrap();
    assert_eq!(a.ask("join g").await, "joined g");
    assert_eq!(bystander.ask("join g").await, "joined g");
    bystander.send("pub g before").await.unwrap();
    assert_eq!(bystander.recv().await, "before");
    assert_eq!(a.recv().await, "before");
    // The only register that lists the first gateway goes: once the other register's list
    // is trusted to remove gateways (its settle window, 5 s), the worker host unlinks it.
    cluster.first_register.cancel();
    let started = Instant::now();
    while !delisted.router.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the worker host is still linked to the de-listed gateway"
        );
        assert_eq!(bystander.ask("echo served").await, "served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Broadcasts no longer reach it; the bystander is served as before.
    bystander.send("pub g after").await.unwrap();
    assert_eq!(bystander.recv().await, "after");
    a.assert_silent(Duration::from_millis(500)).await;
    assert_eq!(bystander.ask("echo still").await, "still");
    cluster.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_no_longer_listed_is_unlinked_in_process() {
    a_gateway_no_longer_listed_is_unlinked(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_no_longer_listed_is_unlinked_over_tcp() {
    a_gateway_no_longer_listed_is_unlinked(false).await;
}

/// Reads the replies numbered `wanted` of `rounds` pairs of "sleep 20" and "echo <round>",
/// which must come in order.
async fn replies_in_order(
    client: &mut TestClient,
    rounds: usize,
    wanted: impl std::ops::RangeBounds<usize>,
) {
    let expected = (0..rounds).flat_map(|i| ["slept 20".to_owned(), i.to_string()]);
    for (n, expected) in expected.enumerate().filter(|(n, _)| wanted.contains(n)) {
        let reply = client.recv_within(Duration::from_secs(15)).await;
        assert_eq!(reply.as_deref(), Ok(expected.as_str()), "reply {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_host_that_stops_hands_its_clients_over_without_losing_an_event() {
    let plugins = PluginsDir::with(&[("misbehave", plugins::MISBEHAVE)]);
    let r = free_port();
    let _register = register(r);
    let g = free_port();
    let _gateway = gateway_of("misbehave", g, r, "");
    // Only A at first: both clients are bound to it.
    let mut a = worker("a", plugins.path(), r);
    let mut clients = [client(g).await, client(g).await];
    let b = worker("b", plugins.path(), r);
    b.wait_for_line(&["linked to gateway"]).await;
    // B has no client: least connections sends the bystander there.
    let mut bystander = client(g).await;
    assert_eq!(bystander.ask("echo on b").await, "on b");

    // Both clients send 80 events at once: a window's worth (64) is queued on A, the rest wait
    // at the gateway. A is asked to stop once it runs them; no reply may be lost or reordered.
    let rounds = 40;
    for client in &mut clients {
        for i in 0..rounds {
            client.send("sleep 20").await.unwrap();
            client.send(&format!("echo {i}")).await.unwrap();
        }
    }
    let [first, second] = &mut clients;
    replies_in_order(first, rounds, 0..1).await;
    let stopping = async {
        let status = a.terminate().await;
        assert!(status.success(), "{status:?}\n{}", a.logs());
    };
    let reading = async {
        replies_in_order(first, rounds, 1..).await;
        replies_in_order(second, rounds, 0..).await;
    };
    tokio::join!(stopping, reading);
    // The clients are on B now, and the bystander was never held up.
    for client in &mut clients {
        assert_eq!(client.ask("echo after").await, "after");
    }
    let took = timed_ask(&mut bystander, "echo still", "still").await;
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert!(
        !a.logs().contains("closing the links anyway"),
        "{}",
        a.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_queue_is_bounded_in_bytes_and_the_flooder_waits() {
    // Long ping intervals: the frozen worker host stays linked, so its queue fills.
    let slow_pings = "link_ping_interval = \"60s\"";
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let r = free_port();
    let _register = register(r);
    let (g, m) = (free_port(), free_port());
    let budget = 2 << 20;
    let gateway = gateway_of(
        "commands",
        g,
        r,
        &format!(
            "{slow_pings}\nlink_queue_bytes = \"2MiB\"\n[metrics]\nlisten = \"127.0.0.1:{m}\""
        ),
    );
    let worker = |name: &str| {
        Node::start(
            BIN,
            &format!(
                "secret = \"{SECRET}\"\n[worker]\nname = \"{name}\"\nplugins = {:?}\ninstances = 1\n\
                 register = \"127.0.0.1:{r}\"\n{slow_pings}\n",
                plugins.path()
            ),
        )
    };
    // The flooder is bound to A, the bystander to B.
    let a = worker("a");
    let mut flooder = client(g).await;
    let b = worker("b");
    b.wait_for_line(&["linked to gateway"]).await;
    let mut bystander = client(g).await;
    assert_eq!(bystander.ask("echo on b").await, "on b");

    // A stops reading; the flooder sends 60 messages of 512 KiB (30 MiB, within its window
    // of 64 events): the queue towards A holds about 2 MiB of them, the flooder waits.
    a.signal("STOP").await;
    let payload = "x".repeat(512 << 10);
    // Published to a group nobody is in: the flooder gets no reply it would have to read.
    let flooding = tokio::spawn(async move {
        for _ in 0..60 {
            flooder
                .send(&format!("pub nobody {payload}"))
                .await
                .unwrap();
        }
        flooder
    });
    let metrics = format!("127.0.0.1:{m}").parse().unwrap();
    let queued = || async {
        wasmgate_tests::prometheus::scrape(metrics)
            .await
            .value("wasmgate_link_queued_bytes", &[("towards", "worker")])
            .unwrap_or(0.0)
    };
    let started = Instant::now();
    while queued().await < f64::from(budget / 2) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the queue towards the frozen worker host never filled"
        );
        let took = timed_ask(&mut bystander, "echo b", "b").await;
        assert!(took < Duration::from_millis(500), "{took:?}");
    }
    // Full: it stays within the budget (plus the one message that may exceed it) while the
    // bystander is served as usual.
    for _ in 0..10 {
        let now = queued().await;
        assert!(
            now <= f64::from(budget + (512 << 10) + 4096),
            "{now} bytes queued"
        );
        let took = timed_ask(&mut bystander, "echo b", "b").await;
        assert!(took < Duration::from_millis(500), "{took:?}");
    }
    assert!(!flooding.is_finished(), "the flooder was not held up");
    // A reads again: the flooder's events all run, in order, on the same link.
    a.signal("CONT").await;
    let mut flooder = tokio::time::timeout(Duration::from_secs(60), flooding)
        .await
        .expect("the flooder was held up for good")
        .unwrap();
    let done = flooder.send("echo done").await;
    assert!(done.is_ok());
    let reply = flooder.recv_within(Duration::from_secs(30)).await;
    assert_eq!(reply.as_deref(), Ok("done"));
    assert!(
        !gateway.logs().contains("internal link closed"),
        "{}",
        gateway.logs()
    );
}
