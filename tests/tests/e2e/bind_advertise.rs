//! A gateway that binds its internal listener to every interface (as in a container or behind
//! NAT) and advertises the address its peers dial, IPv6 included: worker hosts find it through
//! the register and serve its clients, while a gateway configured as before keeps serving
//! beside it.

use std::net::SocketAddr;
use std::time::Duration;

use wasmgate::client_id::{ClientId, gateway_key, is_tag};
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Node, PluginsDir, free_port};
use wasmgate_tests::plugins;
use wasmgate_tests::tools::Skip;

use crate::BIN;

/// Long enough for internal addresses off loopback (a wildcard bind is one).
const SECRET: &str = "a-secret-of-at-least-16-bytes";

/// What [`served_through`] started, running until dropped.
struct Served {
    /// A client of the gateway under test, served.
    client: TestClient,
    /// A client of the plain gateway beside it, served.
    bystander: TestClient,
    _nodes: [Node; 4],
    _plugins: PluginsDir,
}

/// Starts a register, a gateway whose internal listener has `keys` (besides its defaults), a
/// plain gateway beside it (the bystander's), and a worker host; checks that both gateways'
/// clients are served and that the register handed out `advertised`.
async fn served_through(keys: &str, advertised: &str) -> Served {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (r, g, plain) = (free_port(), free_port(), free_port());
    let gateway = |port: u16, keys: &str| {
        format!(
            "secret = \"{SECRET}\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:{port}\"\n\
             app = \"commands\"\nregister = \"127.0.0.1:{r}\"\n{keys}\n"
        )
    };
    let register = Node::start(
        BIN,
        &format!("secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n"),
    );
    let tested = Node::start(BIN, &gateway(g, keys));
    let plain_gateway = Node::start(BIN, &gateway(plain, ""));
    let worker = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[worker]\nname = \"w\"\nplugins = {:?}\ninstances = 1\n\
             register = \"127.0.0.1:{r}\"\n",
            plugins.path()
        ),
    );
    let mut bystander = client(plain).await;
    assert_eq!(bystander.ask("echo before").await, "before");
    tested
        .wait_for_line(&["gateway listening", &format!("internal={advertised}")])
        .await;
    register
        .wait_for_line(&["gateway registered", &format!("address={advertised}")])
        .await;
    worker
        .wait_for_line(&["linked to gateway", &format!("gateway={advertised}")])
        .await;
    let mut c = client(g).await;
    assert_eq!(
        c.ask("echo through the advertised address").await,
        "through the advertised address"
    );
    assert_eq!(bystander.ask("echo after").await, "after");
    Served {
        client: c,
        bystander,
        _nodes: [register, tested, plain_gateway, worker],
        _plugins: plugins,
    }
}

/// A WebSocket client of the gateway on `port`, connected once it listens and a worker host
/// answers it (bounded).
pub(crate) async fn client(port: u16) -> TestClient {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..400 {
        if let Ok(mut c) = TestClient::ws(addr, "/").await
            && c.send("echo ready").await.is_ok()
            && c.recv_within(Duration::from_secs(10)).await.as_deref() == Ok("ready")
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway on port {port} never served a client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_bound_to_every_interface_is_reached_at_its_advertised_name() {
    served_through(
        "internal_bind = \"0.0.0.0\"\nadvertise = \"localhost\"",
        "127.0.0.1:",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_bound_to_every_ipv6_interface_is_reached_at_its_advertised_port() {
    // `::` takes IPv4 peers too unless the system makes IPv6 sockets IPv6-only.
    let v6only = std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only");
    if std::net::TcpListener::bind("[::1]:0").is_err() || v6only.is_ok_and(|v| v.trim() == "1") {
        Skip::new("no IPv6 loopback, or IPv6 sockets are IPv6-only (bindv6only)")
            .report("bind_advertise::a_gateway_bound_to_every_ipv6_interface");
        return;
    }
    let port = free_port();
    served_through(
        &format!(
            "internal_bind = \"::\"\ninternal_port = {port}\nadvertise = \"127.0.0.1:{port}\""
        ),
        &format!("127.0.0.1:{port}"),
    )
    .await;
}

/// A gateway on IPv6 loopback, advertising `[::1]:port`, beside an IPv4 gateway: the register
/// lists the IPv6 address and the worker host links to it there; its clients' ids are still
/// 20 hex characters, holding the address's tag (in 240.0.0.0/4) where an IPv4 gateway's hold
/// its address, so every reply (a command by id) reaches them through the tag; and a command
/// about one of them sent by a client of the IPv4 gateway (`kick <id>`) reaches it too, while
/// the bystander's ids keep GatewayWorker's layout. Before IPv6 could be advertised, the
/// configuration was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_advertising_ipv6_serves_clients_whose_ids_carry_its_tag() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        Skip::new("no IPv6 loopback").report(
            "bind_advertise::a_gateway_advertising_ipv6_serves_clients_whose_ids_carry_its_tag",
        );
        return;
    }
    let port = free_port();
    let advertised = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let Served {
        client: mut on_v6,
        mut bystander,
        _nodes,
        _plugins,
    } = served_through(
        &format!("internal_bind = \"::1\"\ninternal_port = {port}\nadvertise = \"{advertised}\""),
        &advertised.to_string(),
    )
    .await;
    let key = gateway_key(advertised);
    assert!(is_tag(*key.ip()), "{key}");
    let id: ClientId = on_v6.ask("whoami").await.parse().unwrap();
    assert_eq!(id.gateway, key, "{id}");
    let bystander_id: ClientId = bystander.ask("whoami").await.parse().unwrap();
    assert!(
        bystander_id.to_string().starts_with("7f000001"),
        "{bystander_id}"
    );
    bystander.send(&format!("kick {id}")).await.unwrap();
    on_v6.assert_closed().await;
    assert_eq!(bystander.ask("echo still").await, "still");
}
