//! One client's messages are answered in order, across worker hosts and instances: a real
//! register, gateway and two worker hosts in this process, the real `commands` component.
//! Every command and parsing rule of the reference protocol is tested in `conformance.rs`,
//! against each language's build of the plugin.

use wasmgate::config::Protocol;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::Cluster;
use wasmgate_tests::plugins;

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
