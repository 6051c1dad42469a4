//! The internal links refuse strangers and survive garbage: a wrong secret is refused, and a
//! malformed frame closes only the link that sent it.

use std::time::Duration;

use tokio::net::TcpStream;
use wasmgate::config::Protocol;
use wasmgate::wire::codec::{FrameReader, FrameWriter};
use wasmgate::wire::handshake::{Peer, connect_handshake};
use wasmgate::wire::messages::ToWorker;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Cluster, SECRET};
use wasmgate_tests::plugins;

async fn dial(
    cluster: &Cluster,
) -> (
    FrameReader<tokio::net::tcp::OwnedReadHalf>,
    FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
) {
    let socket = TcpStream::connect(cluster.gateways[0].internal_addr)
        .await
        .unwrap();
    let (r, w) = socket.into_split();
    (FrameReader::new(r), FrameWriter::new(w))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused() {
    let cluster = Cluster::start(("commands", plugins::COMMANDS), &[Protocol::Ws], 1, 1).await;
    let (mut reader, mut writer) = dial(&cluster).await;
    let refused =
        connect_handshake(&mut reader, &mut writer, b"not the secret", Peer::Worker).await;
    assert!(refused.is_err(), "a wrong secret was accepted");
    let (mut reader, mut writer) = dial(&cluster).await;
    connect_handshake(&mut reader, &mut writer, SECRET.as_bytes(), Peer::Worker)
        .await
        .expect("the right secret is accepted");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_only_its_link() {
    let cluster = Cluster::start(("commands", plugins::COMMANDS), &[Protocol::Ws], 1, 1).await;
    let mut client = TestClient::ws(cluster.gateways[0].client_addr, "/")
        .await
        .unwrap();
    assert_eq!(client.ask("echo before").await, "before");

    let (mut reader, mut writer) = dial(&cluster).await;
    connect_handshake(&mut reader, &mut writer, SECRET.as_bytes(), Peer::Client)
        .await
        .unwrap();
    // A well-framed payload that is no `ToGateway` (its variant index is out of range).
    writer.send(&u64::MAX).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match reader.recv::<ToWorker>().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the gateway kept a link that sent garbage");
    assert_eq!(
        client.ask("echo after").await,
        "after",
        "clients are unaffected"
    );
    assert_eq!(
        cluster.gateways[0].gateway.router.len(),
        1,
        "the worker host's link is unaffected"
    );
    cluster.stop().await;
}
