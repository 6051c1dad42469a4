//! Hostile peers of the HTTP listeners and of the cluster secret, against real processes:
//! a client holding a half-sent push request does not keep `wasmgate stop` from finishing;
//! a start without a usable secret off loopback is refused (exit 78, the key named); on
//! loopback, processes of one file started separately share a generated secret, and an
//! empty-key handshake is refused. Each keeps a bystander client whose replies must arrive.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wasmgate::wire::codec::{FrameReader, FrameWriter};
use wasmgate::wire::handshake::{Peer, connect_handshake};
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{SECRET, free_port};
use wasmgate_tests::daemon::{Daemon, alive, wasmgate};
use wasmgate_tests::plugins;

use crate::BIN;

/// Longest a stop may take here: the push listener's `stop_timeout` (5 s by default) plus the
/// gateways' and the worker host's own stop.
const STOP: &str = "20s";

#[tokio::test]
async fn a_half_sent_push_request_does_not_block_stop() {
    let (r, g, p) = (free_port(), free_port(), free_port());
    let config = format!(
        "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"commands\"\nregister = \"127.0.0.1:{r}\"\n\
         [worker]\nplugins = \"plugins\"\ninstances = 1\nregister = \"127.0.0.1:{r}\"\n\
         [push]\nlisten = \"127.0.0.1:{p}\"\n"
    );
    let (daemon, started) = Daemon::start(BIN, &config, &[("commands", plugins::COMMANDS)]).await;
    assert!(started.status.success(), "{started:?}");
    let mut bystander = TestClient::ws(format!("127.0.0.1:{g}").parse().unwrap(), "/")
        .await
        .unwrap();
    assert_eq!(bystander.ask("echo hi").await, "hi");

    let mut holder = TcpStream::connect(("127.0.0.1", p)).await.unwrap();
    holder
        .write_all(b"POST /api/send_to_all HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .unwrap();
    // Another backend's push is served meanwhile, and reaches the bystander.
    let pushed = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{p}/api/send_to_all"))
        .body(r#"{"data": "pushed"}"#)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 200);
    assert_eq!(bystander.recv().await, "pushed");

    let began = Instant::now();
    let stopped = daemon.run(&["stop", "--timeout", STOP]).await;
    assert!(
        stopped.status.success(),
        "stop did not finish while a request was half sent: {stopped:?}"
    );
    assert!(!alive(daemon.pid));
    println!("stopped in {:?}", began.elapsed());
    drop(holder);
}

#[tokio::test]
async fn separate_processes_on_loopback_share_a_generated_secret_and_strangers_are_refused() {
    let (r, g, i) = (free_port(), free_port(), free_port());
    // No secret: every internal address is on loopback.
    let config = format!(
        "[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"commands\"\ninternal_port = {i}\n\
         register = \"127.0.0.1:{r}\"\n\
         [worker]\nplugins = \"plugins\"\ninstances = 1\nregister = \"127.0.0.1:{r}\"\n"
    );
    let (register, started) = Daemon::start_role(
        BIN,
        &config,
        &[("commands", plugins::COMMANDS)],
        Some("register"),
    )
    .await;
    assert!(started.status.success(), "{started:?}");
    let dir = register.dir();
    let secret = dir.join("wasmgate.secret");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the generated secret is owner-only");
    let mut others = Vec::new();
    for role in ["gateway", "worker"] {
        let out = wasmgate(BIN, dir, &["start", "-d", "--role", role]).await;
        assert!(out.status.success(), "{role}: {out:?}");
        others.push(role);
    }
    let mut bystander = TestClient::ws(format!("127.0.0.1:{g}").parse().unwrap(), "/")
        .await
        .unwrap();
    // The worker host, a process of its own, linked with the secret the register's made.
    bystander.ask_until("echo linked", "linked").await;

    // The reported attack: an empty key links as a push client or as a worker host.
    for peer in [Peer::Client, Peer::Worker] {
        let socket = TcpStream::connect(("127.0.0.1", i)).await.unwrap();
        let (reader, writer) = socket.into_split();
        let (mut reader, mut writer) = (FrameReader::new(reader), FrameWriter::new(writer));
        let linked = connect_handshake(&mut reader, &mut writer, b"", peer).await;
        assert!(linked.is_err(), "an empty key linked as {peer:?}");
    }

    // A start off loopback without a usable secret is refused before it binds anything
    // (192.0.2.1 is TEST-NET-1: never an address of this machine).
    let port = free_port();
    for (secret, said) in [("", "no `secret`"), ("secret = \"change-me\"\n", "9 bytes")] {
        std::fs::write(
            dir.join("open.toml"),
            format!("{secret}[register]\nlisten = \"192.0.2.1:{port}\"\n"),
        )
        .unwrap();
        let refused = wasmgate(BIN, dir, &["start", "-c", "open.toml"]).await;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(78), "{refused:?}");
        assert!(
            stderr.contains(said) && stderr.contains("192.0.2.1"),
            "{stderr}"
        );
        let detached = wasmgate(BIN, dir, &["start", "-d", "-c", "open.toml"]).await;
        assert_eq!(detached.status.code(), Some(78), "{detached:?}");
    }
    assert!(
        !dir.join("open.secret").exists(),
        "nothing generated off loopback"
    );
    // (Earlier `echo linked`s held while no worker host was linked may answer first.)
    bystander.ask_until("echo still", "still").await;

    for role in others {
        let out = wasmgate(BIN, dir, &["stop", "--role", role, "--timeout", STOP]).await;
        assert!(out.status.success(), "{role}: {out:?}");
    }
    drop(register);
}
