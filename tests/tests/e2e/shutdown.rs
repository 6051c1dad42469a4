//! A graceful stop that confirms: `wasmgate stop` closes every WebSocket client with 1001
//! ("going away") and runs `on-close` for each of them before the process exits, because the
//! gateways stop first and the worker host drains their close events before it stops.

use std::collections::BTreeSet;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{SECRET, free_port};
use wasmgate_tests::daemon::{Daemon, alive};
use wasmgate_tests::plugins;

use crate::BIN;

/// Clients connected when the server stops.
const CLIENTS: usize = 8;

#[tokio::test]
async fn stop_closes_every_client_with_1001_and_runs_on_close_for_each() {
    let (r, g) = (free_port(), free_port());
    let config = format!(
        "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"m\"\nregister = \"127.0.0.1:{r}\"\n\
         [worker]\nplugins = \"plugins\"\ninstances = 2\nregister = \"127.0.0.1:{r}\"\n"
    );
    let (daemon, started) = Daemon::start(BIN, &config, &[("m", plugins::MISBEHAVE)]).await;
    assert!(started.status.success(), "{started:?}");
    let addr = format!("127.0.0.1:{g}").parse().unwrap();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = TestClient::ws(addr, "/").await.unwrap();
        // Answered: the client is connected and its worker host knows it.
        assert_eq!(client.ask("echo hi").await, "hi");
        clients.push(client);
    }

    let stop = daemon.run(&["stop"]).await;
    assert!(stop.status.success(), "{stop:?}");
    assert!(!alive(daemon.pid), "stop returns once the process is gone");

    for client in &mut clients {
        let frame = client
            .close_frame()
            .await
            .expect("a close frame, not a cut");
        assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
    }
    let log = std::fs::read_to_string(daemon.dir().join("wasmgate.log")).unwrap();
    let closed: Vec<&str> = log
        .lines()
        .filter_map(|line| line.split("on-close ").nth(1))
        .map(str::trim)
        .collect();
    let distinct: BTreeSet<&str> = closed.iter().copied().collect();
    assert_eq!(
        (closed.len(), distinct.len()),
        (CLIENTS, CLIENTS),
        "on-close ran once for each client:\n{log}"
    );
}
