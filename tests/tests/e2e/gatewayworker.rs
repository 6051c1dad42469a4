//! GatewayWorker compatibility, against doubles written from the reference's §9: the
//! register's newline-JSON listener (`gatewayworker_listen`) as PHP BusinessWorkers,
//! GatewayClient and PHP Gateways use it, and a gateway's internal port speaking
//! GatewayProtocol (`gatewayworker = true`) as GatewayClient pushes to it; a native WebSocket
//! client is the bystander whose replies must keep arriving.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Node, PluginsDir, SECRET, connect_ws, free_port};
use wasmgate_tests::plugins;

use crate::{BIN, QUIET};

/// How long a double waits for a line, a close or a list it expects.
const WAIT: Duration = Duration::from_secs(10);

/// A PHP member of the register, speaking newline-JSON (reference §9.3).
struct PhpMember {
    lines: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl PhpMember {
    /// Connects to the register's GatewayWorker listener once it listens.
    async fn connect(port: u16) -> Self {
        for _ in 0..2400 {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await {
                let (read, write) = stream.into_split();
                return Self {
                    lines: BufReader::new(read),
                    write,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the register never listened on {port}");
    }

    /// Sends one line, as GatewayWorker builds it.
    async fn send(&mut self, line: &str) {
        self.write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    /// `worker_connect` with `secret`, as BusinessWorker and GatewayClient send it.
    async fn worker_connect(&mut self, secret: &str) {
        let line = format!(r#"{{"event":"worker_connect","secret_key":"{secret}"}}"#);
        self.send(&line).await;
    }

    /// A PHP Gateway announcing `127.0.0.1:port`, as Gateway's `registerAddress` link does.
    async fn gateway_connect(register: u16, port: u16) -> Self {
        let mut gateway = Self::connect(register).await;
        let address = format!("127.0.0.1:{port}");
        let line = format!(
            r#"{{"event":"gateway_connect","address":"{address}","secret_key":"{SECRET}"}}"#
        );
        gateway.send(&line).await;
        gateway
    }

    /// The next line; `None` once the register closed the connection.
    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let read = timeout(WAIT, self.lines.read_line(&mut line))
            .await
            .expect("the register neither sent a line nor closed in time");
        match read {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line),
        }
    }

    /// Reads `broadcast_addresses` lines until one lists exactly `ports` on 127.0.0.1.
    async fn wait_for_addresses(&mut self, ports: &[u16]) {
        let mut ports = ports.to_vec();
        ports.sort_unstable();
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let expected = format!(
            "{{\"event\":\"broadcast_addresses\",\"addresses\":{}}}\n",
            serde_json::to_string(&addresses).unwrap()
        );
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let line = self.line().await.expect("the register closed a worker");
            if line == expected {
                return;
            }
            seen.push(line);
        }
        panic!("never got {expected:?}; got {seen:?}");
    }

    /// Asserts that the register closes the connection without a line.
    async fn assert_closed_silently(&mut self) {
        assert_eq!(self.line().await, None, "the register answered");
    }
}

/// A node with every role: the register with its GatewayWorker listener on `compat`
/// (`extra` keys added to `[register]`), a WebSocket gateway on `ws` of the `commands` app
/// whose internal port `internal` speaks GatewayProtocol too, and a worker host.
fn node(plugins: &PluginsDir, compat: u16, ws: u16, internal: u16, extra: &str) -> (Node, u16) {
    let dir = plugins.path();
    let worker = format!("[worker]\nplugins = {dir:?}\ninstances = 1\n");
    node_with(compat, ws, internal, extra, &worker)
}

/// [`node`] with `worker` as its worker host's section (or none, when empty).
fn node_with(compat: u16, ws: u16, internal: u16, extra: &str, worker: &str) -> (Node, u16) {
    let register = free_port();
    let node = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n\
             [register]\nlisten = \"127.0.0.1:{register}\"\n\
             gatewayworker_listen = \"127.0.0.1:{compat}\"\n{extra}\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{ws}\"\napp = \"commands\"\n\
             internal_port = {internal}\ngatewayworker = true\n\
             {worker}"
        ),
    );
    (node, register)
}

/// A connected client that a worker host answers, with nothing left to read.
async fn answered_client(port: u16) -> TestClient {
    let mut client = connect_ws(port).await;
    client.ask_until("echo ready", "ready").await;
    // The asks the gateway held for a worker host are answered too: let them all arrive.
    while client.recv_within(QUIET).await.is_ok() {}
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_workers_get_the_gatewayworker_ports_and_follow_the_gateways() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (compat, ws, internal) = (free_port(), free_port(), free_port());
    let (_node, register) = node(&plugins, compat, ws, internal, "");
    let mut bystander = answered_client(ws).await;

    // A wrong key is closed without a word, as GatewayWorker's register does.
    let mut wrong = PhpMember::connect(compat).await;
    wrong.worker_connect("not the secret").await;
    wrong.assert_closed_silently().await;
    let mut keyless = PhpMember::connect(compat).await;
    keyless.send(r#"{"event":"worker_connect"}"#).await;
    keyless.assert_closed_silently().await;

    // The right key: the list of GatewayWorker ports, first line (GatewayClient reads one).
    let mut worker = PhpMember::connect(compat).await;
    worker.worker_connect(SECRET).await;
    worker.wait_for_addresses(&[internal]).await;
    worker.send(r#"{"event":"ping"}"#).await;
    assert_eq!(bystander.ask("echo 1").await, "1");

    // A wasmgate gateway joins from another process, then a PHP Gateway: both listed.
    let (ws2, internal2) = (free_port(), free_port());
    let other = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:{ws2}\"\n\
             app = \"commands\"\nregister = \"127.0.0.1:{register}\"\n\
             internal_port = {internal2}\ngatewayworker = true\n"
        ),
    );
    worker.wait_for_addresses(&[internal, internal2]).await;
    let php_port = free_port();
    let mut php_gateway = PhpMember::gateway_connect(compat, php_port).await;
    worker
        .wait_for_addresses(&[internal, internal2, php_port])
        .await;
    // The register never answers a gateway.
    php_gateway.send(r#"{"event":"ping"}"#).await;
    assert_eq!(bystander.ask("echo 2").await, "2");

    // A GatewayClient asking now gets the whole list at once.
    let mut client = PhpMember::connect(compat).await;
    client.worker_connect(SECRET).await;
    client
        .wait_for_addresses(&[internal, internal2, php_port])
        .await;

    // Each leaves the list when its connection ends.
    drop(php_gateway);
    worker.wait_for_addresses(&[internal, internal2]).await;
    other.kill().await;
    worker.wait_for_addresses(&[internal]).await;
    assert_eq!(bystander.ask("echo 3").await, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_do_not_authenticate_are_closed() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (compat, ws, internal) = (free_port(), free_port(), free_port());
    let auth = Duration::from_secs(1);
    let (node, _) = node(
        &plugins,
        compat,
        ws,
        internal,
        "gatewayworker_auth_timeout = \"1s\"\ngatewayworker_max_line = \"1KiB\"",
    );
    let mut bystander = answered_client(ws).await;
    // A member that authenticated stays past the timeout.
    let mut worker = PhpMember::connect(compat).await;
    worker.worker_connect(SECRET).await;
    worker.wait_for_addresses(&[internal]).await;

    // Silence (a TCP probe) and pings alone are both cut at the auth timeout.
    let started = Instant::now();
    let mut silent = PhpMember::connect(compat).await;
    let mut pinging = PhpMember::connect(compat).await;
    pinging.send(r#"{"event":"ping"}"#).await;
    silent.assert_closed_silently().await;
    pinging.assert_closed_silently().await;
    let waited = started.elapsed();
    assert!(
        waited >= auth - Duration::from_millis(100),
        "closed after {waited:?}, before the auth timeout"
    );
    node.wait_for_line(&["Register auth timeout"]).await;

    // A bad request gets GatewayWorker's error line, then the close; an unknown event and an
    // overlong line are closed.
    let mut bad = PhpMember::connect(compat).await;
    bad.send("not json").await;
    assert_eq!(
        bad.line().await.as_deref(),
        Some("Bad request for Register service\n")
    );
    bad.assert_closed_silently().await;
    let mut unknown = PhpMember::connect(compat).await;
    unknown.send(r#"{"event":"subscribe"}"#).await;
    unknown.assert_closed_silently().await;
    let mut long = PhpMember::connect(compat).await;
    long.send(&"x".repeat(2048)).await;
    long.assert_closed_silently().await;

    // The authenticated worker is still there, and still told of changes.
    worker.send(r#"{"event":"ping"}"#).await;
    let php_port = free_port();
    let _php_gateway = PhpMember::gateway_connect(compat, php_port).await;
    worker.wait_for_addresses(&[internal, php_port]).await;
    assert_eq!(bystander.ask("echo still").await, "still");
}

/// A GatewayProtocol packet as `GatewayProtocol::encode` packs it (`pack("NCNnNnNCnN")`,
/// reference §9.1), towards a gateway: its own ip and port 0, the client's unknown.
fn packet(cmd: u8, connection_id: u32, flag: u8, ext_data: &[u8], body: &[u8]) -> Vec<u8> {
    let len = 28 + ext_data.len() + body.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    out.push(cmd);
    out.extend_from_slice(&[0; 12]); // local_ip, local_port, client_ip, client_port
    out.extend_from_slice(&connection_id.to_be_bytes());
    out.push(flag);
    out.extend_from_slice(&[0; 2]); // gateway_port
    out.extend_from_slice(&u32::try_from(ext_data.len()).unwrap().to_be_bytes());
    out.extend_from_slice(ext_data);
    out.extend_from_slice(body);
    out
}

/// `sendToGroup('room', body)` (`CMD_SEND_TO_GROUP`, nobody excluded) with header `flag`.
fn to_room(flag: u8, body: &[u8]) -> Vec<u8> {
    packet(22, 0, flag, br#"{"group":["room"],"exclude":null}"#, body)
}

/// GatewayClient's authorisation packet (`CMD_GATEWAY_CLIENT_CONNECT`, 202).
fn authorise(secret: &str) -> Vec<u8> {
    let body = format!(r#"{{"secret_key":"{secret}"}}"#);
    packet(202, 0, 1, b"", body.as_bytes())
}

/// The connection id a client id ends with (reference §5).
async fn connection_id(client: &mut TestClient) -> u32 {
    let id = client.ask("whoami").await;
    u32::from_str_radix(&id[12..], 16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_client_commands_reach_the_clients() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (compat, ws, internal) = (free_port(), free_port(), free_port());
    let (_node, _) = node(&plugins, compat, ws, internal, "");
    let mut bystander = answered_client(ws).await;
    let mut target = answered_client(ws).await;
    let id = connection_id(&mut target).await;

    // A wrong key closes the connection before any command runs.
    let mut wrong = TcpStream::connect(("127.0.0.1", internal)).await.unwrap();
    let mut sent = authorise("not the secret");
    sent.extend(packet(5, id, 1, b"", b"never"));
    wrong.write_all(&sent).await.unwrap();
    let mut rest = Vec::new();
    // Closed (a reset, with unread input, is a close too), and nothing answered.
    let _ = timeout(WAIT, wrong.read_to_end(&mut rest))
        .await
        .expect("the port did not close the connection");
    assert!(rest.is_empty(), "the port answered {rest:?}");

    // One GatewayClient request buffer: the 202 packet, then the commands (§9.4).
    let mut php = TcpStream::connect(("127.0.0.1", internal)).await.unwrap();
    let mut sent = authorise(SECRET);
    sent.extend(packet(5, id, 1, b"", b"to you"));
    sent.extend(packet(20, id, 1, b"room", b""));
    sent.extend(packet(12, id, 1, b"u7", b""));
    php.write_all(&sent).await.unwrap();
    assert_eq!(target.recv().await, "to you");
    php.write_all(&to_room(1, b"to room")).await.unwrap();
    assert_eq!(target.recv().await, "to room");
    php.write_all(&packet(14, 0, 1, br#"["u7"]"#, b"to u7"))
        .await
        .unwrap();
    assert_eq!(target.recv().await, "to u7");
    // To all but the target: only the bystander gets it.
    let exclude = format!(r#"{{"exclude":{{"{id}":{id}}}}}"#);
    php.write_all(&packet(6, 0, 1, exclude.as_bytes(), b"not you"))
        .await
        .unwrap();
    assert_eq!(bystander.recv().await, "not you");
    // A query: the reply is a u32 length, then the PHP-serialized answer.
    php.write_all(&packet(11, id, 1, b"", b"")).await.unwrap();
    let mut answer = [0u8; 8];
    timeout(WAIT, php.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer, b"\x00\x00\x00\x04i:1;");
    // Sessions: PHP's serialized arrays in, the stored session out (203), a plugin reads it.
    let session = br#"a:3:{s:4:"name";s:5:"alice";s:3:"age";i:30;s:4:"tags";a:1:{i:0;s:1:"x";}}"#;
    php.write_all(&packet(204, id, 1, session, b""))
        .await
        .unwrap();
    let update = br#"a:2:{s:4:"name";s:3:"bob";s:4:"tags";a:1:{i:1;s:1:"y";}}"#;
    php.write_all(&packet(9, id, 1, update, b"")).await.unwrap();
    php.write_all(&packet(203, id, 1, b"", b"")).await.unwrap();
    // In wasmgate's key order; `tags` merged recursively, as PHP's gateway merges.
    let stored =
        br#"a:3:{s:3:"age";i:30;s:4:"name";s:3:"bob";s:4:"tags";a:2:{i:0;s:1:"x";i:1;s:1:"y";}}"#;
    let mut answer = vec![0u8; 4 + stored.len()];
    timeout(WAIT, php.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &answer[..4],
        &u32::try_from(stored.len()).unwrap().to_be_bytes()
    );
    assert_eq!(&answer[4..], stored);
    assert_eq!(target.ask("get name").await, "value name bob");
    target.assert_silent(QUIET).await;
    assert_eq!(bystander.ask("echo still").await, "still");
    // A kick with PHP's `null` message (serialized, flag 0) closes the target.
    php.write_all(&packet(7, id, 0, b"", b"N;")).await.unwrap();
    target.assert_closed().await;
    assert_eq!(bystander.ask("echo after").await, "after");
}

/// The gateway address and connection a client id holds (reference §5): what GatewayClient
/// decodes to know where to send.
fn decode_client_id(id: &str) -> (std::net::SocketAddrV4, u32) {
    assert_eq!(id.len(), 20, "{id:?} is not a client id");
    let bytes: Vec<u8> = (0..10)
        .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let ip = std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
    let port = u16::from_be_bytes([bytes[4], bytes[5]]);
    let connection = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
    (std::net::SocketAddrV4::new(ip, port), connection)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_client_sends_to_the_address_inside_a_client_id_beside_a_worker_hosts_link() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (compat, ws, internal) = (free_port(), free_port(), free_port());
    // The worker host runs in another process: its link to the gateway is TCP, to the same
    // internal port the PHP side dials.
    let (_gateway, register) = node_with(compat, ws, internal, "", "");
    let dir = plugins.path();
    let _worker = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[worker]\nplugins = {dir:?}\ninstances = 1\n\
             register = \"127.0.0.1:{register}\"\n"
        ),
    );
    let mut bystander = answered_client(ws).await;
    let mut target = answered_client(ws).await;
    let (address, connection) = decode_client_id(&target.ask("whoami").await);

    // The register lists that same address to PHP members.
    let mut lookup = PhpMember::connect(compat).await;
    lookup.worker_connect(SECRET).await;
    lookup.wait_for_addresses(&[address.port()]).await;

    // GatewayClient's `sendToClient($client_id, …)`: one request buffer to the decoded address.
    let mut php = TcpStream::connect(address).await.unwrap();
    let mut sent = authorise(SECRET);
    sent.extend(packet(5, connection, 1, b"", b"found you"));
    php.write_all(&sent).await.unwrap();
    assert_eq!(target.recv().await, "found you");
    assert_eq!(bystander.ask("echo native").await, "native");
    // A second GatewayClient request on a fresh socket, while the first is still open.
    let mut again = TcpStream::connect(address).await.unwrap();
    let mut sent = authorise(SECRET);
    sent.extend(packet(5, connection, 1, b"", b"and again"));
    again.write_all(&sent).await.unwrap();
    assert_eq!(target.recv().await, "and again");
    target.assert_silent(QUIET).await;
    assert_eq!(bystander.ask("echo still").await, "still");
}

/// One query's reply (reference §9.1): a u32 big-endian length, then the PHP-serialized
/// value, which is returned as text.
async fn reply_to(php: &mut TcpStream, query: Vec<u8>) -> String {
    php.write_all(&query).await.unwrap();
    let mut len = [0u8; 4];
    timeout(WAIT, php.read_exact(&mut len))
        .await
        .expect("no reply in time")
        .unwrap();
    let len = u32::from_be_bytes(len) as usize;
    assert!(len < 1 << 20, "a reply of {len} bytes");
    let mut body = vec![0u8; len];
    timeout(WAIT, php.read_exact(&mut body))
        .await
        .expect("the reply was cut short")
        .unwrap();
    String::from_utf8(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_client_queries_are_answered_in_gatewayworkers_format() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (compat, ws, internal) = (free_port(), free_port(), free_port());
    let (node, _) = node(&plugins, compat, ws, internal, "");
    let mut bystander = answered_client(ws).await;
    let by = connection_id(&mut bystander).await;
    let mut a_client = answered_client(ws).await;
    let a = connection_id(&mut a_client).await;
    let mut b_client = answered_client(ws).await;
    let b = connection_id(&mut b_client).await;
    assert!(by < a && a < b, "connection ids in connection order");

    let mut php = TcpStream::connect(("127.0.0.1", internal)).await.unwrap();
    let session = br#"a:1:{s:4:"name";s:5:"alice";}"#;
    let mut sent = authorise(SECRET);
    for (cmd, id, ext) in [
        (20, a, &b"room"[..]),
        (20, a, b"5"),
        (12, a, b"u7"),
        (20, b, b"room"),
        (12, b, b"42"),
        (204, a, session),
    ] {
        sent.extend(packet(cmd, id, 1, ext, b""));
    }
    php.write_all(&sent).await.unwrap();
    let a_session = format!(
        "s:{}:\"{}\";",
        session.len(),
        std::str::from_utf8(session).unwrap()
    );

    // 24: one group's count; '' counts every client.
    assert_eq!(
        reply_to(&mut php, packet(24, 0, 1, b"room", b"")).await,
        "i:2;"
    );
    assert_eq!(reply_to(&mut php, packet(24, 0, 1, b"", b"")).await, "i:3;");
    // 28: counts by group, keyed as PHP keys them ("5" is the integer 5).
    assert_eq!(
        reply_to(&mut php, packet(28, 0, 1, br#"["room","5","none"]"#, b"")).await,
        r#"a:3:{s:4:"room";i:2;i:5;i:1;s:4:"none";i:0;}"#
    );
    // 15 and 16: the connection ids bound to uids.
    assert_eq!(
        reply_to(&mut php, packet(15, 0, 1, b"u7", b"")).await,
        format!("a:1:{{i:0;i:{a};}}")
    );
    assert_eq!(
        reply_to(&mut php, packet(15, 0, 1, b"nobody", b"")).await,
        "a:0:{}"
    );
    assert_eq!(
        reply_to(&mut php, packet(16, 0, 1, br#"["u7",42,"x"]"#, b"")).await,
        format!(r#"a:3:{{s:2:"u7";a:1:{{i:0;i:{a};}}i:42;a:1:{{i:0;i:{b};}}s:1:"x";a:0:{{}}}}"#)
    );
    // 26: the groups with members.
    assert_eq!(
        reply_to(&mut php, packet(26, 0, 1, b"", b"")).await,
        r#"a:2:{i:0;i:5;i:1;s:4:"room";}"#
    );
    // 23 and 10: sessions as the gateway holds them, '' for none.
    assert_eq!(
        reply_to(&mut php, packet(23, 0, 1, b"room", b"")).await,
        format!(r#"a:2:{{i:{a};{a_session}i:{b};s:0:"";}}"#)
    );
    assert_eq!(
        reply_to(&mut php, packet(23, 0, 1, b"", b"")).await,
        "a:0:{}"
    );
    assert_eq!(
        reply_to(&mut php, packet(10, 0, 1, b"", b"")).await,
        format!(r#"a:3:{{i:{by};s:0:"";i:{a};{a_session}i:{b};s:0:"";}}"#)
    );
    // 25: CMD_SELECT, the conditions OR-ed.
    let select = br#"{"fields":["uid","groups","session"],"where":{"groups":["5"]}}"#;
    assert_eq!(
        reply_to(&mut php, packet(25, 0, 1, select, b"")).await,
        format!(
            r#"a:1:{{i:{a};a:3:{{s:3:"uid";s:2:"u7";s:6:"groups";a:2:{{i:5;s:1:"5";s:4:"room";s:4:"room";}}s:7:"session";{a_session}}}}}"#
        )
    );
    let select = format!(r#"{{"fields":["uid"],"where":{{"uid":["42"],"connection_id":[{by}]}}}}"#);
    assert_eq!(
        reply_to(&mut php, packet(25, 0, 1, select.as_bytes(), b"")).await,
        format!(r#"a:2:{{i:{by};a:1:{{s:3:"uid";N;}}i:{b};a:1:{{s:3:"uid";s:2:"42";}}}}"#)
    );
    let select = br#"{"fields":["groups"],"where":null}"#;
    assert_eq!(
        reply_to(&mut php, packet(25, 0, 1, select, b"")).await,
        format!(
            r#"a:3:{{i:{by};a:1:{{s:6:"groups";N;}}i:{a};a:1:{{s:6:"groups";a:2:{{i:5;s:1:"5";s:4:"room";s:4:"room";}}}}i:{b};a:1:{{s:6:"groups";a:1:{{s:4:"room";s:4:"room";}}}}}}"#
        )
    );
    assert_eq!(bystander.ask("echo still").await, "still");

    // The raw flag: two WebSocket frames PHP encoded itself arrive as two messages.
    php.write_all(&packet(5, a, 3, b"", b"\x81\x02hi\x81\x02yo"))
        .await
        .unwrap();
    assert_eq!(a_client.recv().await, "hi");
    assert_eq!(a_client.recv().await, "yo");
    php.write_all(&to_room(3, b"\x81\x03all")).await.unwrap();
    assert_eq!(a_client.recv().await, "all");
    assert_eq!(b_client.recv().await, "all");
    // A raw body that is not whole frames is refused, logged and counted; nothing is sent.
    php.write_all(&packet(5, a, 3, b"", b"\x81\x05hi"))
        .await
        .unwrap();
    node.wait_for_line(&["a raw send refused"]).await;
    assert_eq!(reply_to(&mut php, packet(11, a, 1, b"", b"")).await, "i:1;");
    a_client.assert_silent(QUIET).await;
    b_client.assert_silent(QUIET).await;
    assert_eq!(bystander.ask("echo after").await, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_client_group_uid_session_and_close_commands_take_effect() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (compat, ws, internal, metrics) = (free_port(), free_port(), free_port(), free_port());
    let scraped = format!("\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"");
    let (node, _) = node(&plugins, compat, ws, internal, &scraped);
    let mut bystander = answered_client(ws).await;
    let mut a_client = answered_client(ws).await;
    let a = connection_id(&mut a_client).await;
    let mut b_client = answered_client(ws).await;
    let b = connection_id(&mut b_client).await;
    let mut php = TcpStream::connect(("127.0.0.1", internal)).await.unwrap();
    let mut sent = authorise(SECRET);
    for (cmd, id, ext) in [(20, a, &b"room"[..]), (20, b, b"room"), (12, a, b"u7")] {
        sent.extend(packet(cmd, id, 1, ext, b""));
    }
    php.write_all(&sent).await.unwrap();
    assert_eq!(
        reply_to(&mut php, packet(24, 0, 1, b"room", b"")).await,
        "i:2;"
    );

    // 6 with `''` (`sendToAll`): everyone; in its `{"connections":…}` form (with a client
    // list): those only.
    php.write_all(&packet(6, 0, 1, b"", b"everyone"))
        .await
        .unwrap();
    for client in [&mut bystander, &mut a_client, &mut b_client] {
        assert_eq!(client.recv().await, "everyone");
    }
    let only_a = format!(r#"{{"connections":{{"{a}":{a}}}}}"#);
    php.write_all(&packet(6, 0, 1, only_a.as_bytes(), b"only a"))
        .await
        .unwrap();
    assert_eq!(a_client.recv().await, "only a");
    // 22 with an exclude map: the group but the excluded.
    let not_a = format!(r#"{{"group":["room"],"exclude":{{"{a}":{a}}}}}"#);
    php.write_all(&packet(22, 0, 1, not_a.as_bytes(), b"room but a"))
        .await
        .unwrap();
    assert_eq!(b_client.recv().await, "room but a");
    a_client.assert_silent(QUIET).await;
    bystander.assert_silent(QUIET).await;

    // 21: a leaves the room; the count and a send to the room say so.
    php.write_all(&packet(21, a, 1, b"room", b""))
        .await
        .unwrap();
    assert_eq!(
        reply_to(&mut php, packet(24, 0, 1, b"room", b"")).await,
        "i:1;"
    );
    php.write_all(&to_room(1, b"room without a")).await.unwrap();
    assert_eq!(b_client.recv().await, "room without a");
    // 13: GatewayWorker ignores its uid; wasmgate unbinds only the uid named (migrating.md).
    php.write_all(&packet(13, a, 1, b"other", b""))
        .await
        .unwrap();
    assert_eq!(
        reply_to(&mut php, packet(15, 0, 1, b"u7", b"")).await,
        format!("a:1:{{i:0;i:{a};}}")
    );
    php.write_all(&packet(13, a, 1, b"u7", b"")).await.unwrap();
    assert_eq!(
        reply_to(&mut php, packet(15, 0, 1, b"u7", b"")).await,
        "a:0:{}"
    );
    php.write_all(&packet(14, 0, 1, br#"["u7"]"#, b"to u7"))
        .await
        .unwrap();
    // 27: the group is gone, for everyone in it.
    php.write_all(&packet(27, 0, 1, b"room", b""))
        .await
        .unwrap();
    assert_eq!(
        reply_to(&mut php, packet(26, 0, 1, b"", b"")).await,
        "a:0:{}"
    );
    php.write_all(&to_room(1, b"no room")).await.unwrap();
    assert_eq!(
        reply_to(&mut php, packet(24, 0, 1, b"room", b"")).await,
        "i:0;"
    );
    a_client.assert_silent(QUIET).await;
    b_client.assert_silent(QUIET).await;
    assert_eq!(bystander.ask("echo groups").await, "groups");

    // 203: serialized null for a client the gateway does not hold, an empty array for one
    // without a session, the session itself otherwise.
    assert_eq!(
        reply_to(&mut php, packet(203, 0xffff_fff0, 1, b"", b"")).await,
        "N;"
    );
    assert_eq!(
        reply_to(&mut php, packet(203, b, 1, b"", b"")).await,
        "a:0:{}"
    );
    let session = br#"a:1:{s:4:"name";s:5:"alice";}"#;
    php.write_all(&packet(204, a, 1, session, b""))
        .await
        .unwrap();
    assert_eq!(
        reply_to(&mut php, packet(203, a, 1, b"", b""))
            .await
            .as_bytes(),
        session
    );
    // A session with a key that is not UTF-8 is refused whole, visibly, set or update.
    let bad_key = b"a:1:{s:1:\"\xff\";s:1:\"x\";}";
    php.write_all(&packet(204, a, 1, bad_key, b""))
        .await
        .unwrap();
    php.write_all(&packet(9, a, 1, bad_key, b"")).await.unwrap();
    assert_eq!(
        reply_to(&mut php, packet(203, a, 1, b"", b""))
            .await
            .as_bytes(),
        session
    );
    node.wait_for_line(&["WARN", "a session refused"]).await;
    let counted = wasmgate_tests::prometheus::scrape(([127, 0, 0, 1], metrics).into()).await;
    let refused = [("listener", "gateway"), ("reason", "bad_session")];
    assert_eq!(
        counted.count("wasmgate_gatewayworker_refused_total", &refused),
        2.0
    );

    // An unknown code (2 and 17 are unused, 99 was never one) is ignored, the connection
    // kept: the next query is answered.
    for code in [2, 17, 99] {
        php.write_all(&packet(code, a, 1, b"", b"unknown"))
            .await
            .unwrap();
    }
    assert_eq!(reply_to(&mut php, packet(11, a, 1, b"", b"")).await, "i:1;");
    a_client.assert_silent(QUIET).await;

    // 7 with a goodbye: the message, then a normal close.
    php.write_all(&packet(7, a, 1, b"", b"bye")).await.unwrap();
    assert_eq!(a_client.recv().await, "bye");
    let close = a_client.close_frame().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Normal);
    // 8: closed at once, without a close frame.
    php.write_all(&packet(8, b, 1, b"", b"")).await.unwrap();
    assert_eq!(b_client.close_frame().await, None);
    assert_eq!(reply_to(&mut php, packet(11, b, 1, b"", b"")).await, "i:0;");
    assert_eq!(bystander.ask("echo still").await, "still");
}

/// A GatewayProtocol packet as a BusinessWorker reads it (reference §9.1).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    cmd: u8,
    local: std::net::SocketAddrV4,
    client: std::net::SocketAddrV4,
    connection_id: u32,
    flag: u8,
    gateway_port: u16,
    ext_data: Vec<u8>,
    body: Vec<u8>,
    /// The whole packet as it came.
    bytes: Vec<u8>,
}

/// A PHP BusinessWorker, from the spec: it links to a gateway with `CMD_WORKER_CONNECT` and
/// reads the events the gateway routes to it.
struct PhpWorker {
    stream: TcpStream,
    pings: usize,
}

impl PhpWorker {
    /// Links to `address` as worker `key` ("name:id").
    async fn link(address: std::net::SocketAddrV4, key: &str) -> Self {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let body = format!(r#"{{"worker_key":"{key}","secret_key":"{SECRET}"}}"#);
        stream
            .write_all(&packet(200, 0, 1, b"", body.as_bytes()))
            .await
            .unwrap();
        Self { stream, pings: 0 }
    }

    /// The next packet, `CMD_PING` included.
    async fn packet(&mut self) -> Event {
        let mut header = [0u8; 28];
        timeout(WAIT, self.stream.read_exact(&mut header))
            .await
            .expect("no packet in time")
            .expect("the gateway closed the worker's link");
        let u32_at = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().unwrap());
        let u16_at = |at: usize| u16::from_be_bytes(header[at..at + 2].try_into().unwrap());
        let len = u32_at(0) as usize;
        let ext_len = u32_at(24) as usize;
        assert!(
            (28..1 << 20).contains(&len) && ext_len <= len - 28,
            "{header:?}"
        );
        let mut rest = vec![0u8; len - 28];
        timeout(WAIT, self.stream.read_exact(&mut rest))
            .await
            .unwrap()
            .unwrap();
        let addr = |ip: u32, port: u16| std::net::SocketAddrV4::new(ip.into(), port);
        Event {
            cmd: header[4],
            local: addr(u32_at(5), u16_at(9)),
            client: addr(u32_at(11), u16_at(15)),
            connection_id: u32_at(17),
            flag: header[21],
            gateway_port: u16_at(22),
            ext_data: rest[..ext_len].to_vec(),
            body: rest[ext_len..].to_vec(),
            bytes: [&header[..], &rest].concat(),
        }
    }

    /// The next client event; `CMD_PING`s on the way are counted, and checked byte for byte.
    async fn event(&mut self) -> Event {
        loop {
            let packet = self.packet().await;
            if packet.cmd != 201 {
                return packet;
            }
            self.count_ping(&packet);
        }
    }

    /// Checks a `CMD_PING` byte for byte (every field zero but cmd and flag 1) and counts it.
    fn count_ping(&mut self, packet: &Event) {
        let mut ping = vec![0, 0, 0, 28, 201];
        ping.extend_from_slice(&[0; 16]);
        ping.push(1);
        ping.extend_from_slice(&[0; 6]);
        assert_eq!(packet.bytes, ping, "CMD_PING");
        self.pings += 1;
    }

    /// Sends one packet, as `Lib\Gateway` does on the worker's link.
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }
}

/// An event packet as GatewayWorker's gateway builds it (reference §9.1, §9.2).
fn event_bytes(event: &Event, cmd: u8, flag: u8, ext_data: &[u8], body: &[u8]) -> Vec<u8> {
    let len = 28 + ext_data.len() + body.len();
    let mut out = u32::try_from(len).unwrap().to_be_bytes().to_vec();
    out.push(cmd);
    out.extend_from_slice(&event.local.ip().octets());
    out.extend_from_slice(&event.local.port().to_be_bytes());
    out.extend_from_slice(&event.client.ip().octets());
    out.extend_from_slice(&event.client.port().to_be_bytes());
    out.extend_from_slice(&event.connection_id.to_be_bytes());
    out.push(flag);
    out.extend_from_slice(&event.gateway_port.to_be_bytes());
    out.extend_from_slice(&u32::try_from(ext_data.len()).unwrap().to_be_bytes());
    out.extend_from_slice(ext_data);
    out.extend_from_slice(body);
    out
}

/// A node whose register lists two gateways to PHP members: `wasm` serving the `commands`
/// app with a worker host, and `php` whose app `php:events` PHP BusinessWorkers named
/// `events` serve. Returns the node and the two internal ports (wasm's, php's).
fn mixed_node(plugins: &PluginsDir, compat: u16, wasm: u16, php: u16) -> (Node, u16, u16) {
    let (register, wasm_internal, php_internal) = (free_port(), free_port(), free_port());
    let dir = plugins.path();
    let node = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n\
             [register]\nlisten = \"127.0.0.1:{register}\"\n\
             gatewayworker_listen = \"127.0.0.1:{compat}\"\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{wasm}\"\napp = \"commands\"\n\
             internal_port = {wasm_internal}\ngatewayworker = true\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{php}\"\napp = \"php:events\"\n\
             internal_port = {php_internal}\ngatewayworker = true\n\
             link_ping_interval = \"200ms\"\n\
             [worker]\nplugins = {dir:?}\ninstances = 1\n"
        ),
    );
    (node, wasm_internal, php_internal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_php_business_worker_serves_its_listener_beside_a_wasm_app() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (compat, wasm, php) = (free_port(), free_port(), free_port());
    let (_node, wasm_internal, php_internal) = mixed_node(&plugins, compat, wasm, php);
    let mut bystander = answered_client(wasm).await;

    // The BusinessWorker finds the gateways through the register, as PHP's does.
    let mut register = PhpMember::connect(compat).await;
    register.worker_connect(SECRET).await;
    register
        .wait_for_addresses(&[wasm_internal, php_internal])
        .await;
    let gateway = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, php_internal);
    let mut worker = PhpWorker::link(gateway, "events:0").await;

    // A WebSocket client of the PHP app: CMD_ON_CONNECT, then CMD_ON_WEBSOCKET_CONNECT with
    // the handshake serialized; both carry the client's and the gateway's addresses.
    let mut client = connect_ws(php).await;
    let connect = worker.event().await;
    assert_eq!(connect.cmd, 1);
    assert_eq!(connect.local, gateway);
    assert_eq!(*connect.client.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_eq!(connect.gateway_port, php);
    assert_eq!(connect.bytes, event_bytes(&connect, 1, 1, b"", b""));
    let handshake = worker.event().await;
    assert_eq!(handshake.cmd, 205);
    let body = String::from_utf8(handshake.body.clone()).unwrap();
    assert!(
        body.starts_with(r#"a:3:{s:3:"get";a:0:{}s:6:"server";a:"#),
        "{body}"
    );
    assert!(
        body.contains(&format!(r#"s:11:"SERVER_PORT";i:{php};"#)),
        "{body}"
    );
    assert_eq!(
        handshake.bytes,
        event_bytes(&connect, 205, 0, b"", &handshake.body)
    );
    let id = connect.connection_id;

    // A message: CMD_ON_MESSAGE; the worker answers the current client and writes its
    // session back, as BusinessWorker does after a handler changed `$_SESSION`.
    client.send("hello").await.unwrap();
    let message = worker.event().await;
    assert_eq!(message.bytes, event_bytes(&connect, 3, 1, b"", b"hello"));
    let session = br#"a:1:{s:4:"seen";s:1:"1";}"#;
    let mut answer = packet(5, id, 1, b"", b"you said hello");
    answer.extend(packet(204, id, 1, session, b""));
    worker.send(&answer).await;
    assert_eq!(client.recv().await, "you said hello");
    assert_eq!(bystander.ask("echo wasm").await, "wasm");
    // The next event carries the session the worker wrote.
    client.send("again").await.unwrap();
    let message = worker.event().await;
    assert_eq!(
        message.bytes,
        event_bytes(&connect, 3, 1, session, b"again")
    );

    // Keep-alives arrive every link_ping_interval.
    while worker.pings < 2 {
        let packet = worker.packet().await;
        worker.count_ping(&packet);
    }

    // The client leaves: CMD_ON_CLOSE with the session at close time.
    drop(client);
    let close = worker.event().await;
    assert_eq!(close.bytes, event_bytes(&connect, 4, 1, session, b""));
    assert_eq!(bystander.ask("echo still").await, "still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spanning_a_wasm_app_and_a_php_app_gets_each_send_once_from_either_side() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (compat, wasm, php) = (free_port(), free_port(), free_port());
    let (_node, wasm_internal, php_internal) = mixed_node(&plugins, compat, wasm, php);
    let mut bystander = answered_client(wasm).await;
    let mut wasm_member = answered_client(wasm).await;
    assert_eq!(wasm_member.ask("join room").await, "joined room");

    // The BusinessWorker links to every gateway the register lists, as PHP's does.
    let mut register = PhpMember::connect(compat).await;
    register.worker_connect(SECRET).await;
    register
        .wait_for_addresses(&[wasm_internal, php_internal])
        .await;
    let at = |port| std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
    let mut worker = PhpWorker::link(at(php_internal), "events:0").await;
    let mut to_wasm_gateway = PhpWorker::link(at(wasm_internal), "events:0").await;

    // A client of the PHP app; its worker puts it in the group and binds a uid.
    let mut php_member = connect_ws(php).await;
    let connect = worker.event().await;
    assert_eq!(connect.cmd, 1);
    let id = connect.connection_id;
    let mut joined = packet(20, id, 1, b"room", b"");
    joined.extend(packet(12, id, 1, b"alice", b""));
    worker.send(&joined).await;
    assert_eq!(worker.event().await.cmd, 205);
    // Its next event comes after the join on the same link: the group is whole now.
    php_member.send("ready").await.unwrap();
    assert_eq!(worker.event().await.body, b"ready");

    // From the PHP side: `Gateway::sendToGroup('room', …)` goes to every linked gateway.
    let group = to_room(1, b"from php");
    worker.send(&group).await;
    to_wasm_gateway.send(&group).await;
    assert_eq!(wasm_member.recv().await, "from php");
    assert_eq!(php_member.recv().await, "from php");
    // From the wasm side: a plugin's send-to-group reaches the PHP app's client too.
    wasm_member.send("pub room from wasm").await.unwrap();
    assert_eq!(wasm_member.recv().await, "from wasm");
    assert_eq!(php_member.recv().await, "from wasm");
    // A uid bound by PHP is one a plugin can send to.
    bystander.send("touid alice to alice").await.unwrap();
    assert_eq!(php_member.recv().await, "to alice");
    // Exactly once: nothing else arrives anywhere.
    wasm_member.assert_silent(QUIET).await;
    php_member.assert_silent(QUIET).await;
    assert_eq!(bystander.ask("echo still").await, "still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_worker_that_reads_nothing_is_dropped() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (compat, wasm, php) = (free_port(), free_port(), free_port());
    let (node, _, php_internal) = mixed_node(&plugins, compat, wasm, php);
    let mut bystander = answered_client(wasm).await;

    // A worker that links, then never reads: a small receive buffer, so the gateway's writes
    // block once its own buffer is full.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket
        .connect(([127, 0, 0, 1], php_internal).into())
        .await
        .unwrap();
    let body = format!(r#"{{"worker_key":"events:0","secret_key":"{SECRET}"}}"#);
    stuck
        .write_all(&packet(200, 0, 1, b"", body.as_bytes()))
        .await
        .unwrap();
    // A client of the PHP app sends more than the socket buffers can hold.
    let mut client = connect_ws(php).await;
    let big = "x".repeat(512 * 1024);
    for _ in 0..32 {
        if client.send(&big).await.is_err() {
            break;
        }
    }
    // Three link_ping_intervals (200 ms) without a read: the link is closed and counted.
    node.wait_for_line(&["the worker read nothing for"]).await;
    let mut rest = Vec::new();
    let _ = timeout(WAIT, stuck.read_to_end(&mut rest))
        .await
        .expect("the gateway kept the stalled worker's link");
    assert_eq!(bystander.ask("echo still").await, "still");
}

/// Where a composer `vendor` directory with GatewayWorker (`workerman/gateway-worker`, and
/// optionally `workerman/gatewayclient`) is found for the interop test; its sources are not
/// ours to ship.
const GATEWAYWORKER_VENDOR: &str = "WASMGATE_GATEWAYWORKER_VENDOR";

/// What the interop test needs: `php` on PATH and GatewayWorker's sources.
fn php_and_gatewayworker() -> Result<std::path::PathBuf, wasmgate_tests::tools::Skip> {
    use wasmgate_tests::tools::Skip;
    let php = std::process::Command::new("php").arg("--version").output();
    if !php.is_ok_and(|out| out.status.success()) {
        return Err(Skip::new("no `php` on PATH"));
    }
    let vendor = std::env::var_os(GATEWAYWORKER_VENDOR)
        .map(std::path::PathBuf::from)
        .ok_or_else(|| {
            Skip::new(format!(
                "{GATEWAYWORKER_VENDOR} names no composer vendor directory with GatewayWorker"
            ))
        })?;
    if !vendor.join("autoload.php").is_file() {
        return Err(Skip::new(format!(
            "{GATEWAYWORKER_VENDOR}: no autoload.php in {}",
            vendor.display()
        )));
    }
    Ok(vendor)
}

/// A PHP process, stopped (its whole process group: Workerman forks) when dropped.
struct PhpProcess(std::process::Child);

impl PhpProcess {
    fn start(dir: &std::path::Path, script: &str) -> Self {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("php")
            .arg(script)
            .arg("start")
            .current_dir(dir)
            .process_group(0)
            .spawn()
            .expect("php starts");
        Self(child)
    }
}

impl Drop for PhpProcess {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        let _ = self.0.wait();
    }
}

/// Runs a real PHP BusinessWorker (GatewayWorker's own code, with a small `Events` class)
/// against wasmgate's register and gateway, and a real GatewayClient push; skipped loudly
/// where PHP or GatewayWorker's sources are missing (they are not shipped with wasmgate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_php_business_worker_and_gateway_client_work_unchanged() {
    let test = "gatewayworker::a_real_php_business_worker_and_gateway_client_work_unchanged";
    let Some(vendor) = wasmgate_tests::tools::or_skip(php_and_gatewayworker(), test) else {
        return;
    };
    let (register, compat, ws, internal) = (free_port(), free_port(), free_port(), free_port());
    let _node = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n\
             [register]\nlisten = \"127.0.0.1:{register}\"\n\
             gatewayworker_listen = \"127.0.0.1:{compat}\"\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{ws}\"\napp = \"php:events\"\n\
             internal_port = {internal}\ngatewayworker = true\n"
        ),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let autoload = vendor.join("autoload.php");
    // The Events class is the one a GatewayWorker user writes; nothing in it knows wasmgate.
    let worker = format!(
        "<?php\n\
         require {autoload:?};\n\
         use Workerman\\Worker;\n\
         use GatewayWorker\\BusinessWorker;\n\
         use GatewayWorker\\Lib\\Gateway;\n\
         class Events {{\n\
             public static function onMessage($client_id, $message) {{\n\
                 $_SESSION['seen'] = ($_SESSION['seen'] ?? 0) + 1;\n\
                 Gateway::sendToCurrentClient(\"php:$message:\" . $_SESSION['seen']);\n\
             }}\n\
         }}\n\
         $worker = new BusinessWorker();\n\
         $worker->name = 'events';\n\
         $worker->count = 1;\n\
         $worker->registerAddress = '127.0.0.1:{compat}';\n\
         $worker->secretKey = '{SECRET}';\n\
         $worker->eventHandler = 'Events';\n\
         Worker::$pidFile = __DIR__ . '/worker.pid';\n\
         Worker::$logFile = __DIR__ . '/worker.log';\n\
         Worker::runAll();\n"
    );
    std::fs::write(dir.path().join("worker.php"), worker).expect("write worker.php");
    let _worker = PhpProcess::start(dir.path(), "worker.php");

    // Held until the BusinessWorker links, then answered by it, with its session kept.
    let mut client = connect_ws(ws).await;
    client.ask_until("hi", "php:hi:1").await;
    assert_eq!(client.ask("again").await.split(':').next_back(), Some("2"));

    // A PHP backend pushes through the register, as it does to GatewayWorker.
    let push = format!(
        "<?php\n\
         require {autoload:?};\n\
         $gateway = class_exists('GatewayClient\\\\Gateway') ? 'GatewayClient\\\\Gateway' : 'GatewayWorker\\\\Lib\\\\Gateway';\n\
         $gateway::$registerAddress = '127.0.0.1:{compat}';\n\
         $gateway::$secretKey = '{SECRET}';\n\
         $gateway::sendToAll('pushed');\n\
         echo $gateway::getAllClientIdCount(), \"\\n\";\n"
    );
    std::fs::write(dir.path().join("push.php"), push).expect("write push.php");
    let pushed = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            std::process::Command::new("php")
                .arg("push.php")
                .current_dir(dir)
                .output()
                .expect("php runs")
        }
    })
    .await
    .expect("push script");
    assert!(pushed.status.success(), "{pushed:?}");
    assert_eq!(String::from_utf8_lossy(&pushed.stdout).trim(), "1");
    assert_eq!(client.recv().await, "pushed");
}
