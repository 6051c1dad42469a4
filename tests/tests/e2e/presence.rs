//! Presence events (`on-uid-online`, `on-uid-offline`) across gateways and worker hosts: a
//! uid's first binding in the cluster and its last unbinding are each told once, to one
//! worker host, whichever gateways the uid's clients are on (ARCHITECTURE.md, "Presence").
//!
//! The `commands` plugin exports `presence` and tells the group `presence` of every
//! transition (`online <uid> <client-id>`, `offline <uid> <client-id>`): a watcher client in
//! that group sees what the plugin was told, once per call.

use std::time::Duration;

use wasmgate::config::Protocol;
use wasmgate::ops::{Command, Query, Reply};
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Cluster, Node, PluginsDir, SECRET, connect_ws, free_port};
use wasmgate_tests::plugins;

use crate::{BIN, QUIET};

/// A client in the group `presence`, which the `commands` plugin tells of every transition.
async fn watcher(port: u16) -> TestClient {
    let mut watcher = connect_ws(port).await;
    assert_eq!(watcher.ask("join presence").await, "joined presence");
    watcher
}

/// A client that bound `uid`, and its id.
async fn bound(port: u16, uid: &str) -> (TestClient, String) {
    let mut client = connect_ws(port).await;
    let id = client.ask("whoami").await;
    assert_eq!(
        client.ask(&format!("bind {uid}")).await,
        format!("bound {uid}")
    );
    (client, id)
}

/// Waits for `n` messages `<what> <uid> <client-id>`, each within `wait`: nothing else, and
/// no uid twice.
async fn told_each_once(watcher: &mut TestClient, what: &str, n: usize, wait: Duration) {
    let mut uids = std::collections::BTreeSet::new();
    for _ in 0..n {
        let told = watcher.recv_within(wait).await.unwrap();
        let uid = told
            .strip_prefix(what)
            .and_then(|rest| rest.split(' ').nth(1))
            .unwrap_or_else(|| panic!("expected {what}, got {told:?}"));
        assert!(uids.insert(uid.to_owned()), "told twice: {told}");
    }
}

/// Two gateways, two worker hosts: two clients on different gateways bind `alice`; the
/// plugin is told `alice` is online once, nothing when the first closes, and offline once
/// when the second closes. A bystander uid comes online once and stays so; the bystander's
/// replies keep coming throughout.
#[tokio::test]
async fn one_online_and_one_offline_per_uid_across_two_gateways_and_two_worker_hosts() {
    let cluster = Cluster::start(
        ("commands", plugins::COMMANDS),
        &[Protocol::Ws, Protocol::Ws],
        2,
        1,
    )
    .await;
    let port = |i: usize| cluster.gateways[i].client_addr.port();
    let mut watcher = watcher(port(0)).await;

    let (mut bystander, bystander_id) = bound(port(1), "bob").await;
    assert_eq!(watcher.recv().await, format!("online bob {bystander_id}"));

    let (first, first_id) = bound(port(0), "alice").await;
    assert_eq!(watcher.recv().await, format!("online alice {first_id}"));
    let (second, second_id) = bound(port(1), "alice").await;
    // Neither the second binding nor the other worker host tells it again.
    watcher.assert_silent(QUIET).await;
    assert_eq!(bystander.ask("echo still here").await, "still here");

    drop(first);
    watcher.assert_silent(QUIET).await;
    assert_eq!(bystander.ask("echo still here").await, "still here");

    drop(second);
    assert_eq!(watcher.recv().await, format!("offline alice {second_id}"));
    watcher.assert_silent(QUIET).await;

    // The bystander uid was never touched: still online, told nothing more.
    assert_eq!(bystander.ask("echo still here").await, "still here");
    drop(bystander);
    assert_eq!(watcher.recv().await, format!("offline bob {bystander_id}"));
    watcher.assert_silent(QUIET).await;
    cluster.stop().await;
}

/// A plugin that does not export `presence` (`echo`) pays nothing for it: no linked host
/// announces presence for its app, so its gateway tracks no uid, and it serves as before.
#[tokio::test]
async fn an_app_without_the_presence_export_makes_its_gateways_track_nothing() {
    let cluster = Cluster::start(("echo", plugins::ECHO), &[Protocol::Ws], 1, 1).await;
    let gateway = &cluster.gateways[0].gateway;
    assert!(!gateway.router.wants_presence(0));
    let mut client = connect_ws(cluster.gateways[0].client_addr.port()).await;
    assert_eq!(client.ask("hello").await, "hello");
    // The echo plugin binds nothing: bind its client to a uid as the push API would.
    let Reply::Clients(ids) = gateway.state.answer(&Query::ClientsOfGroup(String::new())) else {
        panic!("every client is in the group \"\"");
    };
    let uid = "ada".to_owned();
    gateway.state.execute(Command::BindUid {
        client: ids[0],
        uid,
    });
    assert!(gateway.state.take_marked().is_empty());
    assert_eq!(client.ask("hello again").await, "hello again");
    cluster.stop().await;
}

/// A gateway process is killed while the only client bound to `carol` is on it: the worker
/// host that decides `carol` sees the gateway's link end and tells the plugin `carol` went
/// offline, with that client, as `on-close` runs for a lost gateway's clients. The watcher
/// and a bystander on the surviving gateway carry on.
#[tokio::test]
async fn a_lost_gateway_takes_its_uids_offline() {
    let register = free_port();
    let (front_port, doomed_port) = (free_port(), free_port());
    let gateway = |name: &str, port: u16| {
        format!(
            "[[gateway]]\nname = \"{name}\"\nlisten = \"ws://127.0.0.1:{port}\"\napp = \"commands\"\n\
             register = \"127.0.0.1:{register}\"\n"
        )
    };
    let front = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{register}\"\n{}",
            gateway("front", front_port)
        ),
    );
    let doomed = Node::start(
        BIN,
        &format!("secret = \"{SECRET}\"\n{}", gateway("doomed", doomed_port)),
    );
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let worker = |name: &str| {
        format!(
            "secret = \"{SECRET}\"\n[worker]\nname = \"{name}\"\nregister = \"127.0.0.1:{register}\"\n\
             plugins = {:?}\ninstances = 1\n",
            plugins.path()
        )
    };
    let hosts = [
        Node::start(BIN, &worker("w1")),
        Node::start(BIN, &worker("w2")),
    ];
    for host in &hosts {
        host.wait_for_line(&["linked to gateway"]).await;
    }

    let mut watcher = watcher(front_port).await;
    let (mut bystander, bystander_id) = bound(front_port, "bob").await;
    assert_eq!(watcher.recv().await, format!("online bob {bystander_id}"));
    let (carol, carol_id) = bound(doomed_port, "carol").await;
    assert_eq!(watcher.recv().await, format!("online carol {carol_id}"));
    watcher.assert_silent(QUIET).await;

    doomed.kill().await;
    let told = watcher.recv_within(Duration::from_secs(30)).await;
    assert_eq!(told, Ok(format!("offline carol {carol_id}")));
    watcher.assert_silent(QUIET).await;
    assert_eq!(bystander.ask("echo still here").await, "still here");
    drop((carol, hosts, front));
}

/// Worker hosts come and go under bound uids. Eight uids come online with one worker host
/// linked. That host is killed and a second one starts: every uid is told online again, once,
/// by the second (at least once, as the WIT says; nothing goes offline). A third host joins:
/// the uids it now decides move to it silently (nothing is told). Then every uid is unbound and
/// goes offline exactly once, from whichever host decides it: none was lost in either move. A
/// bystander's replies keep coming whenever a host is linked.
#[tokio::test]
async fn worker_hosts_lost_and_joining_move_uids_without_losing_a_transition() {
    const UIDS: usize = 8;
    let (register, port) = (free_port(), free_port());
    let front = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{register}\"\n\
             [[gateway]]\nname = \"front\"\nlisten = \"ws://127.0.0.1:{port}\"\n\
             app = \"commands\"\nregister = \"127.0.0.1:{register}\"\n"
        ),
    );
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let worker = |name: &str| {
        let config = format!(
            "secret = \"{SECRET}\"\n[worker]\nname = \"{name}\"\nregister = \"127.0.0.1:{register}\"\n\
             plugins = {:?}\ninstances = 1\n",
            plugins.path()
        );
        Node::start(BIN, &config)
    };
    // The front logs one line per announcement of a worker host's apps.
    let announced = |n: usize| {
        let front = &front;
        async move {
            for _ in 0..2400 {
                if front
                    .logs()
                    .matches("worker host serves these apps")
                    .count()
                    >= n
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the front never took {n} announcements");
        }
    };
    let first = worker("w1");
    announced(1).await;

    let mut watcher = watcher(port).await;
    let mut bystander = connect_ws(port).await;
    let mut holders = Vec::new();
    for n in 0..UIDS {
        let uid = format!("u{n}");
        let (client, id) = bound(port, &uid).await;
        assert_eq!(watcher.recv().await, format!("online {uid} {id}"));
        holders.push((uid, client));
    }

    first.kill().await;
    let second = worker("w2");
    // A new host compiles the plugin before it links: a few seconds in a debug build.
    told_each_once(&mut watcher, "online", UIDS, Duration::from_secs(30)).await;
    watcher.assert_silent(QUIET).await;
    bystander.ask_until("echo still here", "still here").await;

    let third = worker("w3");
    announced(3).await;
    watcher.assert_silent(QUIET).await;
    assert_eq!(bystander.ask("echo still here").await, "still here");

    for (uid, client) in &mut holders {
        client
            .ask_until(&format!("unbind {uid}"), &format!("unbound {uid}"))
            .await;
    }
    told_each_once(&mut watcher, "offline", UIDS, Duration::from_secs(5)).await;
    watcher.assert_silent(QUIET).await;
    assert_eq!(bystander.ask("echo still here").await, "still here");
    drop((second, third, front));
}
