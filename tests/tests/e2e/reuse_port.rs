//! Two gateway processes on one client port (`reuse_port = true`): the kernel spreads clients
//! over both, each serves its own, and when one is killed the other keeps its clients and
//! takes every new one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use wasmgate_tests::client::{Silence, TestClient};
use wasmgate_tests::cluster::{Node, PluginsDir, free_port};
use wasmgate_tests::plugins;

use crate::BIN;

const SECRET: &str = "a-secret-of-at-least-16-bytes";

/// Clients connected until both gateways hold some, at most this many.
const MAX_CLIENTS: usize = 200;

/// The gateway part of a client id: the hex of its gateway's internal address.
fn gateway_of(id: &str) -> String {
    id[..12].to_owned()
}

/// The gateway part of the ids of the gateway on 127.0.0.1 with this internal port.
fn gateway_hex(internal: u16) -> String {
    format!("7f000001{internal:04x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_share_one_client_port() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (r, port) = (free_port(), free_port());
    let internal = [free_port(), free_port()];
    let gateway = |internal: u16| {
        format!(
            "secret = \"{SECRET}\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:{port}\"\n\
             reuse_port = true\ninternal_port = {internal}\napp = \"commands\"\n\
             register = \"127.0.0.1:{r}\"\n"
        )
    };
    let _register = Node::start(
        BIN,
        &format!("secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n"),
    );
    let first = Node::start(BIN, &gateway(internal[0]));
    let second = Node::start(BIN, &gateway(internal[1]));
    let worker = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[worker]\nname = \"w\"\nplugins = {:?}\ninstances = 1\n\
             register = \"127.0.0.1:{r}\"\n",
            plugins.path()
        ),
    );
    for port in internal {
        worker
            .wait_for_line(&["linked to gateway", &format!("gateway=127.0.0.1:{port}")])
            .await;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Which gateway holds each client, by the gateway part of its id.
    let mut held: BTreeMap<String, Vec<TestClient>> = BTreeMap::new();
    for _ in 0..MAX_CLIENTS {
        let mut client = TestClient::ws(addr, "/").await.unwrap();
        let id = client.ask("whoami").await;
        held.entry(gateway_of(&id)).or_default().push(client);
        if held.len() == 2 && held.values().all(|c| c.len() >= 2) {
            break;
        }
    }
    assert_eq!(held.len(), 2, "both processes accept on the port");
    let mut lost = held.remove(&gateway_hex(internal[0])).unwrap();
    let mut kept = held.remove(&gateway_hex(internal[1])).unwrap();
    first.kill().await;
    for client in &mut lost {
        let end = client.recv_within(Duration::from_secs(10)).await;
        assert_eq!(
            end,
            Err(Silence::Closed),
            "a killed gateway's client is cut"
        );
    }
    for client in &mut kept {
        assert_eq!(client.ask("echo still here").await, "still here");
    }
    for _ in 0..10 {
        let mut client = TestClient::ws(addr, "/").await.unwrap();
        let id = client.ask("whoami").await;
        assert_eq!(
            gateway_of(&id),
            gateway_hex(internal[1]),
            "only the survivor accepts"
        );
    }
    drop(second);
}
