//! Load through the HTTP push API: 10,000 pushes to a group of 100 WebSocket clients spread
//! over two gateways. Every client must receive every push, in the order it was pushed. The
//! rate is printed (`cargo test -p wasmgate-tests --test e2e push_load -- --nocapture`).
//!
//! One backend pushing one request after another is the case the order guarantee covers:
//! each push is answered once queued, and pushes queued to a gateway are applied in order.

use std::time::{Duration, Instant};

use wasmgate::config::Protocol;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::Cluster;
use wasmgate_tests::plugins;

const CLIENTS: usize = 100;
const PUSHES: usize = 10_000;
/// Bound on the whole run, far above what it takes on a 2-core machine in a debug build.
const DEADLINE: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pushes_reach_a_group_of_a_hundred_in_order() {
    let cluster = Cluster::start_with_push(
        ("commands", plugins::COMMANDS),
        &[Protocol::Ws, Protocol::Ws],
        1,
        2,
        "",
    )
    .await;
    let mut readers = Vec::new();
    for i in 0..CLIENTS {
        let mut client = TestClient::ws(cluster.gateways[i % 2].client_addr, "/")
            .await
            .unwrap();
        assert_eq!(client.ask("join load").await, "joined load");
        readers.push(tokio::spawn(async move {
            for n in 0..PUSHES {
                let message = client.recv().await;
                assert_eq!(message, n.to_string(), "client {i} after {n} pushes");
            }
            client
        }));
    }

    let url = format!("http://{}/api/send_to_group", cluster.push.unwrap());
    let http = reqwest::Client::new();
    let run = async {
        let start = Instant::now();
        for n in 0..PUSHES {
            let response = http
                .post(&url)
                .body(format!(r#"{{"groups": ["load"], "data": "{n}"}}"#))
                .send()
                .await
                .unwrap();
            let status = response.status();
            // Reading the answer lets the connection be reused for the next push.
            let answer = response.text().await.unwrap();
            assert_eq!(status, 200, "push {n}: {answer}");
        }
        let accepted = start.elapsed();
        let mut clients = Vec::new();
        for reader in readers {
            clients.push(reader.await.expect("a client missed or reordered a push"));
        }
        (accepted, start.elapsed(), clients)
    };
    let (accepted, delivered, mut clients) = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the load did not finish in time");
    for client in &mut clients {
        client.assert_silent(Duration::from_millis(100)).await;
    }
    let rate = |d: Duration| PUSHES as f64 / d.as_secs_f64();
    println!(
        "push load: {PUSHES} pushes to a group of {CLIENTS} clients on 2 gateways: \
         answered in {accepted:.2?} ({:.0} pushes/s), all {} messages delivered in \
         {delivered:.2?} ({:.0} pushes/s end to end)",
        rate(accepted),
        PUSHES * CLIENTS,
        rate(delivered),
    );
    cluster.stop().await;
}
