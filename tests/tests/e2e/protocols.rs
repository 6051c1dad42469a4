//! Every client protocol end to end — `ws`, `wss` (a self-signed certificate made here with
//! rcgen), `text` and `frame` — feeding one app, and the WebSocket handshake reaching
//! `on-websocket-connect`, which may refuse the client; the gateway answering a WebSocket
//! client's pings, fragments and close.

use std::time::Duration;

use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wasmgate_tests::client::{TestClient, frame};
use wasmgate_tests::cluster::Cluster;
use wasmgate_tests::plugins;

/// A self-signed certificate for `localhost`, written to PEM files for the gateway.
struct SelfSigned {
    cert: CertificateDer<'static>,
    dir: tempfile::TempDir,
}

impl SelfSigned {
    fn new() -> Self {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), generated.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            generated.signing_key.serialize_pem(),
        )
        .unwrap();
        Self {
            cert: generated.cert.der().clone(),
            dir,
        }
    }

    /// The `[[gateway]]` keys of a wss listener serving this certificate.
    fn listener(&self) -> String {
        let path = |file: &str| self.dir.path().join(file);
        format!(
            "listen = \"wss://127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}",
            path("cert.pem"),
            path("key.pem")
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_protocols_feed_one_app() {
    let tls = SelfSigned::new();
    let cluster = Cluster::start_with(
        ("commands", plugins::COMMANDS),
        &[
            "listen = \"ws://127.0.0.1:0\"".into(),
            tls.listener(),
            "listen = \"text://127.0.0.1:0\"".into(),
            "listen = \"frame://127.0.0.1:0\"".into(),
        ],
        1,
        2,
    )
    .await;
    let addr = |i: usize| cluster.gateways[i].client_addr;
    let mut clients = [
        TestClient::ws(addr(0), "/").await.unwrap(),
        TestClient::wss(addr(1), "/", tls.cert.clone())
            .await
            .unwrap(),
        TestClient::text(addr(2)).await.unwrap(),
        TestClient::frame(addr(3)).await.unwrap(),
    ];
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(
            client.ask(&format!("echo hello {i}")).await,
            format!("hello {i}")
        );
        assert_eq!(client.ask("join all").await, "joined all");
    }
    // A message from each protocol reaches the clients of every other one.
    for sender in 0..clients.len() {
        clients[sender]
            .send(&format!("pub all from {sender}"))
            .await
            .unwrap();
        for client in clients.iter_mut() {
            assert_eq!(client.recv().await, format!("from {sender}"));
        }
    }
    assert_eq!(clients[3].ask("count all").await, "count all 4");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_split_across_segments_and_joined_in_one_are_whole_messages() {
    let cluster = Cluster::start_with(
        ("commands", plugins::COMMANDS),
        &["listen = \"frame://127.0.0.1:0\"".into()],
        1,
        1,
    )
    .await;
    let mut client = TestClient::frame(cluster.gateways[0].client_addr)
        .await
        .unwrap();

    // One message in three segments, cut inside the length prefix and inside the payload.
    // The pauses only make the segments arrive apart; correctness does not depend on them.
    let message = frame(b"echo split in three");
    for piece in [&message[..2], &message[2..7], &message[7..]] {
        client.send_raw(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.recv().await, "split in three");

    // Three messages (one of them empty) in one segment, then the tail of a fourth.
    let mut joined = [frame(b"echo one"), frame(b""), frame(b"echo two")].concat();
    let fourth = frame(b"echo three");
    joined.extend_from_slice(&fourth[..6]);
    client.send_raw(&joined).await.unwrap();
    assert_eq!(client.recv().await, "one");
    assert_eq!(
        client.recv().await,
        "error unknown command",
        "the empty frame is a message"
    );
    assert_eq!(client.recv().await, "two");
    client.send_raw(&fourth[6..]).await.unwrap();
    assert_eq!(client.recv().await, "three");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_handshake_reaches_on_websocket_connect_which_may_refuse() {
    let tls = SelfSigned::new();
    let cluster = Cluster::start_with(
        ("misbehave", plugins::MISBEHAVE),
        &["listen = \"ws://127.0.0.1:0\"".into(), tls.listener()],
        1,
        1,
    )
    .await;
    let ws = cluster.gateways[0].client_addr;
    let mut request = format!("ws://{ws}/chat?room=1&token=abc")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-test", "hello".parse().unwrap());
    let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut client = TestClient::Ws(Box::new(stream));
    assert_eq!(client.ask("session ws.path").await, "/chat");
    assert_eq!(client.ask("session ws.query").await, "room=1&token=abc");
    assert_eq!(client.ask("session ws.header.x-test").await, "hello");
    assert_eq!(client.ask("session ws.header.host").await, ws.to_string());

    // Refused over ws and over wss: a close frame with 1008 and the plugin's reason.
    let wss = cluster.gateways[1].client_addr;
    let refused = [
        TestClient::ws(ws, "/?reject=no-entry").await.unwrap(),
        TestClient::wss(wss, "/in?a=1&reject=banned", tls.cert.clone())
            .await
            .unwrap(),
    ];
    for (mut refused, reason) in refused.into_iter().zip(["no-entry", "banned"]) {
        let close = refused.close_frame().await.expect("a close frame");
        assert_eq!(close.code, CloseCode::Policy);
        assert_eq!(close.reason.as_str(), reason);
    }
    assert_eq!(
        client.ask("echo still here").await,
        "still here",
        "refusing one client leaves the others alone"
    );
    let mut secure = TestClient::wss(wss, "/s", tls.cert.clone()).await.unwrap();
    assert_eq!(secure.ask("session ws.path").await, "/s");
    cluster.stop().await;
}

/// A client frame as RFC 6455 wants it: masked (with a fixed key: the test needs no secrecy).
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![first, 0x80 | payload.len() as u8];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Reads one unmasked server frame with a short payload: its first byte and payload.
async fn server_frame(socket: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0; 2];
    socket.read_exact(&mut head).await.unwrap();
    assert!(head[1] < 126, "a short, unmasked frame: {head:?}");
    let mut payload = vec![0; usize::from(head[1])];
    socket.read_exact(&mut payload).await.unwrap();
    (head[0], payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pings_fragments_and_closes_are_answered_by_the_gateway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::start_with(
        ("commands", plugins::COMMANDS),
        &["listen = \"ws://127.0.0.1:0\"".into()],
        1,
        1,
    )
    .await;
    let addr = cluster.gateways[0].client_addr;
    let mut bystander = TestClient::ws(addr, "/").await.unwrap();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The upgrade and the first frames in one write: bytes after the request are frames.
    let mut hello = format!(
        "GET /raw HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    hello.extend(masked(0x01, b"ec")); // text, not final
    hello.extend(masked(0x89, b"p")); // a ping between fragments
    hello.extend(masked(0x80, b"ho whole")); // the last fragment
    socket.write_all(&hello).await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        response.push(socket.read_u8().await.unwrap());
    }
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    assert_eq!(
        server_frame(&mut socket).await,
        (0x8a, b"p".to_vec()),
        "pong"
    );
    assert_eq!(server_frame(&mut socket).await, (0x81, b"whole".to_vec()));
    assert_eq!(bystander.ask("echo meanwhile").await, "meanwhile");
    socket
        .write_all(&masked(0x88, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let (first, payload) = server_frame(&mut socket).await;
    assert_eq!((first, &payload[..2]), (0x88, &1000u16.to_be_bytes()[..]));
    let eof = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut [0; 8])).await;
    assert_eq!(
        eof.unwrap().unwrap(),
        0,
        "the gateway closes after its close frame"
    );
    assert_eq!(bystander.ask("echo after").await, "after");
    cluster.stop().await;
}
