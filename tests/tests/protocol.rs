//! The reference protocol end to end: real register, gateways (WebSocket and text) and worker
//! hosts in this process, the real `commands` component, checked from the clients' side.

use std::time::Duration;

use wasmgate::config::Protocol;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::Cluster;
use wasmgate_tests::plugins;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_over_websocket_and_text() {
    let cluster = Cluster::start(
        ("commands", plugins::COMMANDS),
        &[Protocol::Ws, Protocol::Text],
        1,
        2,
    )
    .await;
    let ws = cluster.gateways[0].client_addr;
    let text = cluster.gateways[1].client_addr;
    let mut a = TestClient::ws(ws, "/").await.unwrap();
    let mut b = TestClient::text(text).await.unwrap();
    let mut c = TestClient::ws(ws, "/").await.unwrap();

    assert_eq!(a.ask("echo hello world").await, "hello world");
    assert_eq!(b.ask("echo over text").await, "over text");
    let a_id = a.ask("whoami").await;
    assert_eq!(a_id.len(), 20, "{a_id}");
    assert_ne!(b.ask("whoami").await, a_id);

    assert_eq!(a.ask("join g").await, "joined g");
    assert_eq!(b.ask("join g").await, "joined g");
    c.send("pub g to the group").await.unwrap();
    assert_eq!(a.recv().await, "to the group");
    assert_eq!(b.recv().await, "to the group");
    c.assert_silent(QUIET).await;
    assert_eq!(
        c.ask("count g").await,
        "count g 2",
        "counted across both gateways"
    );

    c.send("all to everyone").await.unwrap();
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(client.recv().await, "to everyone");
    }

    assert_eq!(a.ask("bind u1").await, "bound u1");
    assert_eq!(b.ask("bind u1").await, "bound u1");
    c.send("touid u1 psst").await.unwrap();
    assert_eq!(a.recv().await, "psst");
    assert_eq!(b.recv().await, "psst");
    assert_eq!(a.ask("unbind u1").await, "unbound u1");
    c.send("touid u1 again").await.unwrap();
    assert_eq!(b.recv().await, "again");
    a.assert_silent(QUIET).await;

    assert_eq!(a.ask("set color blue").await, "ok");
    assert_eq!(a.ask("get color").await, "value color blue");
    assert_eq!(a.ask("get size").await, "none");
    // Back to back: the second event may leave the gateway before the first one's session
    // write arrives there; it must still see the value.
    a.send("set size xl").await.unwrap();
    a.send("get size").await.unwrap();
    assert_eq!(a.recv().await, "ok");
    assert_eq!(a.recv().await, "value size xl");

    assert_eq!(b.ask("leave g").await, "left g");
    assert_eq!(c.ask("count g").await, "count g 1");
    c.send(&format!("kick {a_id}")).await.unwrap();
    a.assert_closed().await;
    assert_eq!(
        c.ask("count g").await,
        "count g 0",
        "a kicked client leaves its groups"
    );
    assert_eq!(c.ask("unknown").await, "error unknown command");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_leaves_its_groups_and_uid() {
    let cluster = Cluster::start(("commands", plugins::COMMANDS), &[Protocol::Ws], 1, 1).await;
    let addr = cluster.gateways[0].client_addr;
    let mut a = TestClient::ws(addr, "/").await.unwrap();
    let mut b = TestClient::ws(addr, "/").await.unwrap();
    assert_eq!(a.ask("join room").await, "joined room");
    assert_eq!(a.ask("bind alice").await, "bound alice");
    assert_eq!(b.ask("count room").await, "count room 1");
    drop(a);
    // The close travels asynchronously; poll the observable effect with a bound.
    let mut count = String::new();
    for _ in 0..100 {
        count = b.ask("count room").await;
        if count == "count room 0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count, "count room 0");
    b.send("touid alice anyone").await.unwrap();
    b.assert_silent(QUIET).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_messages_are_answered_in_order() {
    let cluster = Cluster::start(("commands", plugins::COMMANDS), &[Protocol::Ws], 2, 2).await;
    let mut client = TestClient::ws(cluster.gateways[0].client_addr, "/")
        .await
        .unwrap();
    for i in 0..1000 {
        client.send(&format!("echo {i}")).await.unwrap();
    }
    for i in 0..1000 {
        assert_eq!(client.recv().await, i.to_string());
    }
    cluster.stop().await;
}
