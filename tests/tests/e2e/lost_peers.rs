//! Nothing lost with a peer (issue 12 item 13, issue 15): the events a killed worker host held
//! run on another host, in order and numbered as before, and the clients of a killed gateway
//! get their `on-close` on a worker host, while a bystander client keeps being served. Real
//! processes, killed with SIGKILL.

use std::collections::HashSet;
use std::time::Duration;

use wasmgate_tests::cluster::{Node, PluginsDir, SECRET, free_port};
use wasmgate_tests::plugins;

use crate::BIN;
use crate::hostile_links::{MisbehaveGateway, client, gateway_of, pinging, register, worker};

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
/// (SIGKILL): each of its clients' `on-close` runs on the worker host, which a watcher on A
/// hears, while a bystander on A keeps being served. Before this, no `on-close` ran for them.
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
    let mut watcher = client(ga).await;
    assert_eq!(watcher.ask("watch").await, "watching");
    let mut bystander = client(ga).await;
    let mut on_b = Vec::new();
    for _ in 0..ON_B {
        let mut c = client(gb).await;
        let id = c.ask("whoami").await;
        on_b.push((c, id));
    }

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
    watcher.assert_silent(LOST_AFTER * 2).await;

    b.kill().await;
    let mut closed = HashSet::new();
    tokio::time::timeout(LOST_AFTER * 4, async {
        while closed.len() < ON_B {
            let told = watcher.recv().await;
            let id = told.strip_prefix("closed ").expect("only closes are told");
            closed.insert(id.to_owned());
            assert_eq!(bystander.ask("echo still").await, "still");
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("on-close ran for {closed:?} of {ON_B} clients of the lost gateway")
    });
    let expected: HashSet<String> = on_b.into_iter().map(|(_, id)| id).collect();
    assert_eq!(closed, expected);
    host.wait_for_line(&["gateway lost"]).await;
}
