//! Pushing from other applications end to end: the HTTP push API served by a worker host, and
//! the Rust `PushClient` finding the gateways through the register, each against two WebSocket
//! gateways with real clients running the `commands` plugin.
//!
//! A push to some clients is checked on every client: the right ones receive it, and the
//! others receive the next thing meant for them first, which proves they got nothing before.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wasmgate::client_id::ClientId;
use wasmgate::config::Protocol;
use wasmgate::ops::{Session, Unreachable};
use wasmgate::push::PushClient;
use wasmgate::push::http::OPERATIONS;
use wasmgate_tests::client::{RECV_TIMEOUT, TestClient};
use wasmgate_tests::cluster::{Cluster, Node, PluginsDir, SECRET, connect_ws, free_port};
use wasmgate_tests::plugins;

use crate::{BIN, QUIET};

const TOKEN: &str = "push-token";
/// Bytes that are not UTF-8, so a WebSocket client gets them as a binary frame.
const BINARY: [u8; 4] = [0, 1, 2, 255];

/// How a request presents the token.
#[derive(Debug, Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    ApiKey(&'a str),
}

/// A cluster with the push API on its worker host, four WebSocket clients (0 and 1 on the
/// first gateway, 2 and 3 on the second) and their ids.
struct Fixture {
    cluster: Cluster,
    http: reqwest::Client,
    clients: Vec<TestClient>,
    ids: Vec<String>,
    /// The operations called successfully, to check that the tests reached each one.
    called: Mutex<BTreeSet<String>>,
}

impl Fixture {
    async fn start() -> Self {
        let cluster = Cluster::start_with_push(
            ("commands", plugins::COMMANDS),
            &[Protocol::Ws, Protocol::Ws],
            1,
            2,
            &format!("token = \"{TOKEN}\""),
        )
        .await;
        let (clients, ids) = connect_clients(&cluster).await;
        Self {
            cluster,
            http: reqwest::Client::new(),
            clients,
            ids,
            called: Mutex::new(BTreeSet::new()),
        }
    }

    /// POSTs `body` to `/api/<operation>`; returns the status and the JSON answer.
    async fn post(&self, operation: &str, body: String, auth: Auth<'_>) -> (StatusCode, Value) {
        let push = self.cluster.push.expect("push API started");
        let mut request = self
            .http
            .post(format!("http://{push}/api/{operation}"))
            .header("content-type", "application/json")
            .body(body);
        request = match auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::ApiKey(token) => request.header("x-api-key", token),
        };
        let response = request.send().await.expect("push API reachable");
        let status = response.status();
        (status, response.json().await.expect("a JSON answer"))
    }

    /// Calls `operation` with the token; asserts it succeeded and returns its result.
    async fn call(&self, operation: &str, body: Value) -> Value {
        let (status, answer) = self
            .post(operation, body.to_string(), Auth::Bearer(TOKEN))
            .await;
        assert_eq!(status, StatusCode::OK, "{operation} {body}: {answer}");
        self.called.lock().unwrap().insert(operation.to_owned());
        answer["result"].clone()
    }

    /// Calls `operation`, expecting `status` and an error whose message contains `names`.
    async fn refused(&self, operation: &str, body: &str, status: StatusCode, names: &str) {
        let (got, answer) = self.post(operation, body.into(), Auth::Bearer(TOKEN)).await;
        assert_eq!(got, status, "{operation} {body}: {answer}");
        let message = answer["error"]["message"]
            .as_str()
            .expect("an error message");
        assert!(message.contains(names), "{operation} {body}: {message:?}");
    }
}

/// Four WebSocket clients, two on each gateway, and their client ids.
async fn connect_clients(cluster: &Cluster) -> (Vec<TestClient>, Vec<String>) {
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for gateway in [0, 0, 1, 1] {
        let addr = cluster.gateways[gateway].client_addr;
        let mut client = TestClient::ws(addr, "/").await.unwrap();
        ids.push(client.ask("whoami").await);
        clients.push(client);
    }
    (clients, ids)
}

/// The next message of a WebSocket client as its frame (text or binary).
async fn recv_frame(client: &mut TestClient) -> Message {
    let TestClient::Ws(ws) = client else {
        panic!("not a WebSocket client")
    };
    loop {
        let frame = tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the connection open")
            .expect("a valid frame");
        if frame.is_text() || frame.is_binary() {
            return frame;
        }
    }
}

/// Asks `online` until it says false. A gateway forgets a client it closed just after writing
/// the close, so the client can see the close first; nothing outside the gateway marks the
/// moment, hence the polling, bounded by [`RECV_TIMEOUT`].
async fn until_offline<F: Future<Output = bool>>(online: impl Fn() -> F) {
    let offline = async {
        while online().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(RECV_TIMEOUT, offline)
        .await
        .expect("the closed client went offline");
}

/// The strings of a JSON array, as a set (merged answers come in any gateway order).
fn set(value: &Value) -> BTreeSet<String> {
    let items = value
        .as_array()
        .unwrap_or_else(|| panic!("{value} is not an array"));
    items
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn ids_set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_over_http_across_two_gateways() {
    let mut fx = Fixture::start().await;
    let ids = fx.ids.clone();
    sends_reach_the_right_clients(&mut fx, &ids).await;
    queries_count_across_gateways(&fx, &ids).await;
    sessions_reach_the_plugin(&mut fx, &ids).await;
    changes_and_closes_take_effect(&mut fx, &ids).await;
    let called = fx.called.lock().unwrap().clone();
    let all: BTreeSet<String> = OPERATIONS.iter().map(|o| o.to_string()).collect();
    assert_eq!(called, all, "every operation is exercised");
    fx.cluster.stop().await;
}

async fn sends_reach_the_right_clients(fx: &mut Fixture, ids: &[String]) {
    let done = fx
        .call(
            "send_to_all",
            json!({"data": "to all", "exclude_client_ids": [ids[1]]}),
        )
        .await;
    assert_eq!(done, Value::Null, "commands answer null");
    for i in [0, 2, 3] {
        assert_eq!(fx.clients[i].recv().await, "to all", "client {i}");
    }
    fx.call(
        "send_to_client",
        json!({"client_id": ids[2], "data": "to 2 ✓"}),
    )
    .await;
    assert_eq!(fx.clients[2].recv().await, "to 2 ✓");
    let b64 = base64::engine::general_purpose::STANDARD.encode(BINARY);
    fx.call(
        "send_to_clients",
        json!({"client_ids": [ids[1], ids[3], ids[3]], "b64data": b64}),
    )
    .await;
    for i in [1, 3] {
        let frame = recv_frame(&mut fx.clients[i]).await;
        assert_eq!(frame, Message::binary(BINARY.to_vec()), "client {i}");
    }

    for (i, uid) in [(0, "u1"), (2, "u1"), (1, "u2")] {
        fx.call("bind_uid", json!({"client_id": ids[i], "uid": uid}))
            .await;
    }
    fx.call(
        "send_to_uid",
        json!({"uids": ["u1", "u1"], "data": "to u1"}),
    )
    .await;
    for (i, group) in [(0, "g"), (3, "g"), (1, "h")] {
        fx.call("join_group", json!({"client_id": ids[i], "group": group}))
            .await;
    }
    fx.call(
        "send_to_group",
        json!({"groups": ["g", "h"], "data": "to g and h", "exclude_client_ids": [ids[3]]}),
    )
    .await;
    // Each client's next message: uid 1 once each, the groups once each, not 3 (excluded).
    assert_eq!(fx.clients[0].recv().await, "to u1");
    assert_eq!(fx.clients[0].recv().await, "to g and h");
    assert_eq!(fx.clients[1].recv().await, "to g and h");
    assert_eq!(fx.clients[2].recv().await, "to u1");
    for client in &mut fx.clients {
        client.assert_silent(QUIET).await;
    }
}

/// Memberships at this point: u1 = {0, 2}, u2 = {1}; g = {0, 3}, h = {1}.
async fn queries_count_across_gateways(fx: &Fixture, ids: &[String]) {
    let one = |op: &'static str, body: Value| fx.call(op, body);
    assert_eq!(one("is_online", json!({"client_id": ids[3]})).await, true);
    assert_eq!(one("is_uid_online", json!({"uid": "u1"})).await, true);
    assert_eq!(one("is_uid_online", json!({"uid": "nobody"})).await, false);
    assert_eq!(
        one("are_uids_online", json!({"uids": ["u2", "u3"]})).await,
        json!({"u2": true, "u3": false})
    );
    let u1 = one("get_client_ids_by_uid", json!({"uid": "u1"})).await;
    assert_eq!(set(&u1), ids_set(&[&ids[0], &ids[2]]));
    let by_uid = one("get_client_ids_by_uids", json!({"uids": ["u1", "u2"]})).await;
    assert_eq!(set(&by_uid["u1"]), ids_set(&[&ids[0], &ids[2]]));
    assert_eq!(set(&by_uid["u2"]), ids_set(&[&ids[1]]));
    let uid_of = |i: usize| one("get_uid_by_client_id", json!({"client_id": ids[i]}));
    assert_eq!(uid_of(1).await, "u2");
    assert_eq!(uid_of(3).await, Value::Null);
    assert_eq!(one("get_all_uids", json!({})).await, json!(["u1", "u2"]));
    assert_eq!(one("get_all_uid_count", json!({})).await, 2);

    let count = |group: &str| one("get_client_count_by_group", json!({"group": group}));
    assert_eq!(count("g").await, 2);
    assert_eq!(count("").await, 4, "the empty group counts everyone");
    assert_eq!(
        one(
            "get_client_counts_by_groups",
            json!({"groups": ["g", "h", "x"]})
        )
        .await,
        json!({"g": 2, "h": 1, "x": 0})
    );
    let g = one("get_client_ids_by_group", json!({"group": "g"})).await;
    assert_eq!(set(&g), ids_set(&[&ids[0], &ids[3]]));
    assert_eq!(
        one("get_uids_by_group", json!({"group": "g"})).await,
        json!(["u1"])
    );
    assert_eq!(
        one("get_uid_count_by_group", json!({"group": "g"})).await,
        1
    );
    assert_eq!(one("get_all_group_ids", json!({})).await, json!(["g", "h"]));
    let groups = one("get_all_group_client_ids", json!({})).await;
    assert_eq!(set(&groups["g"]), ids_set(&[&ids[0], &ids[3]]));
    assert_eq!(set(&groups["h"]), ids_set(&[&ids[1]]));
    assert_eq!(
        one("get_all_group_client_counts", json!({})).await,
        json!({"g": 2, "h": 1})
    );
    assert_eq!(
        one("get_all_group_uids", json!({})).await,
        json!({"g": ["u1"], "h": ["u2"]})
    );
    assert_eq!(
        one("get_all_group_uid_counts", json!({})).await,
        json!({"g": 1, "h": 1})
    );
    // No body at all reads as `{}`.
    let (status, answer) = fx
        .post("get_all_client_count", String::new(), Auth::Bearer(TOKEN))
        .await;
    assert_eq!((status, &answer["result"]), (StatusCode::OK, &json!(4)));
    assert_eq!(one("get_all_client_count", json!({})).await, 4);
    let all = one("get_all_client_ids", json!({})).await;
    assert_eq!(set(&all), ids_set(&ids.iter().collect::<Vec<_>>()));
}

async fn sessions_reach_the_plugin(fx: &mut Fixture, ids: &[String]) {
    fx.call(
        "set_session",
        json!({"client_id": ids[0], "session": {"nick": "ann", "room": "1"}}),
    )
    .await;
    fx.call(
        "update_session",
        json!({"client_id": ids[0], "changes": {"room": "2"}}),
    )
    .await;
    // The query travels the same link after the commands, so it sees them applied.
    assert_eq!(
        fx.call("get_session", json!({"client_id": ids[0]})).await,
        json!({"nick": "ann", "room": "2"})
    );
    assert_eq!(fx.clients[0].ask("get room").await, "value room 2");
    let sessions = fx
        .call("get_client_sessions_by_group", json!({"group": "g"}))
        .await;
    assert_eq!(sessions[&ids[0]], json!({"nick": "ann", "room": "2"}));
    assert_eq!(sessions[&ids[3]], json!({}));
    let all = fx.call("get_all_client_sessions", json!({})).await;
    assert_eq!(all.as_object().unwrap().len(), 4);
}

async fn changes_and_closes_take_effect(fx: &mut Fixture, ids: &[String]) {
    fx.call("leave_group", json!({"client_id": ids[0], "group": "g"}))
        .await;
    fx.call("ungroup", json!({"group": "h"})).await;
    assert_eq!(fx.call("get_all_group_ids", json!({})).await, json!(["g"]));
    fx.call("unbind_uid", json!({"client_id": ids[2], "uid": "u1"}))
        .await;
    let u1 = fx.call("get_client_ids_by_uid", json!({"uid": "u1"})).await;
    assert_eq!(set(&u1), ids_set(&[&ids[0]]));
    let count = fx
        .call("get_client_count_by_uid", json!({"uid": "u1"}))
        .await;
    assert_eq!(count, json!(1));

    fx.call(
        "close_client",
        json!({"client_id": ids[1], "farewell": "bye"}),
    )
    .await;
    assert_eq!(fx.clients[1].recv().await, "bye");
    fx.clients[1].assert_closed().await;
    until_offline(|| async { fx.call("is_online", json!({"client_id": ids[1]})).await == true })
        .await;
    fx.call("destroy_client", json!({"client_id": ids[3]}))
        .await;
    fx.clients[3].assert_closed().await;
    assert_eq!(fx.call("get_all_client_count", json!({})).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_send_nothing() {
    let mut fx = Fixture::start().await;
    let ids = fx.ids.clone();
    let leak = json!({"data": "leak"}).to_string();
    for auth in [Auth::None, Auth::Bearer("wrong"), Auth::ApiKey("wrong")] {
        let (status, answer) = fx.post("send_to_all", leak.clone(), auth).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}: {answer}");
        assert_eq!(answer["error"]["code"], "unauthorized");
    }

    let id = &ids[0];
    let bad = StatusCode::BAD_REQUEST;
    for (operation, body, names) in [
        ("send_to_group", json!({"data": "x"}), "groups"),
        (
            "send_to_group",
            json!({"groups": [1], "data": "x"}),
            "groups[0]",
        ),
        (
            "send_to_group",
            json!({"groups": ["g", ""], "data": "x"}),
            "groups[1]",
        ),
        (
            "send_to_group",
            json!({"groups": ["g"], "data": "x", "exclude": [id]}),
            "exclude",
        ),
        (
            "send_to_clients",
            json!({"client_ids": [id, "nope"], "data": "x"}),
            "client_ids[1]",
        ),
        ("send_to_client", json!({"client_id": id}), "data"),
        (
            "send_to_client",
            json!({"client_id": id, "b64data": "!"}),
            "b64data",
        ),
        (
            "send_to_client",
            json!({"client_id": id, "data": "x", "b64data": "eA=="}),
            "b64data",
        ),
        ("send_to_uid", json!({"uids": "u1", "data": "x"}), "uids"),
        ("bind_uid", json!({"client_id": id, "uid": ""}), "uid"),
        (
            "set_session",
            json!({"client_id": id, "session": {"k": 1}}),
            "session.k",
        ),
    ] {
        fx.refused(operation, &body.to_string(), bad, names).await;
    }
    fx.refused("send_to_all", "{\"data\": ", bad, "EOF").await;
    fx.refused(
        "send_to_everyone",
        "{}",
        StatusCode::NOT_FOUND,
        "send_to_everyone",
    )
    .await;
    // A client id naming a gateway that does not exist: that gateway is named.
    let nowhere = "7f000001ffff00000001";
    for (operation, body) in [
        ("send_to_client", json!({"client_id": nowhere, "data": "x"})),
        ("bind_uid", json!({"client_id": nowhere, "uid": "u"})),
    ] {
        let not_found = StatusCode::NOT_FOUND;
        fx.refused(operation, &body.to_string(), not_found, "127.0.0.1:65535")
            .await;
    }

    // The first thing every client receives is the next valid push (sent with X-API-Key).
    let (status, _) = fx
        .post(
            "send_to_all",
            json!({"data": "after"}).to_string(),
            Auth::ApiKey(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for client in &mut fx.clients {
        assert_eq!(client.recv().await, "after");
    }
    fx.cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_through_the_register() {
    let cluster = Cluster::start(
        ("commands", plugins::COMMANDS),
        &[Protocol::Ws, Protocol::Ws],
        1,
        2,
    )
    .await;
    let (mut c, raw_ids) = connect_clients(&cluster).await;
    let id: Vec<ClientId> = raw_ids.iter().map(|s| s.parse().unwrap()).collect();
    let push = PushClient::connect(vec![cluster.register], SECRET)
        .await
        .expect("linked to both gateways");

    push.send_to_all("to all", &[id[1]]).await.unwrap();
    for i in [0, 2, 3] {
        assert_eq!(c[i].recv().await, "to all", "client {i}");
    }
    push.send_to_client(id[2], "to 2").await.unwrap();
    assert_eq!(c[2].recv().await, "to 2");
    push.send_to_clients(&[id[1], id[3]], BINARY.to_vec())
        .await
        .unwrap();
    for i in [1, 3] {
        assert_eq!(
            recv_frame(&mut c[i]).await,
            Message::binary(BINARY.to_vec())
        );
    }
    push.bind_uid(id[0], "u1").await.unwrap();
    push.bind_uid(id[2], "u1").await.unwrap();
    push.send_to_uid(&["u1"], "to u1").await.unwrap();
    push.join_group(id[0], "g").await.unwrap();
    push.join_group(id[3], "g").await.unwrap();
    push.send_to_group(&["g"], "to g", &[id[3]]).await.unwrap();
    assert_eq!(c[0].recv().await, "to u1");
    assert_eq!(c[0].recv().await, "to g");
    assert_eq!(c[2].recv().await, "to u1");

    assert!(push.is_online(id[3]).await.unwrap());
    assert!(push.is_uid_online("u1").await.unwrap());
    assert_eq!(push.get_all_client_count().await.unwrap(), 4);
    assert_eq!(push.get_client_count_by_group("g").await.unwrap(), 2);
    assert_eq!(
        push.get_client_counts_by_groups(&["g", "x"])
            .await
            .unwrap()
            .into_vec(),
        [("g".to_owned(), 2), ("x".to_owned(), 0)]
    );
    let mut u1 = push.get_client_ids_by_uid("u1").await.unwrap();
    u1.sort();
    let mut expected = vec![id[0], id[2]];
    expected.sort();
    assert_eq!(u1, expected);
    assert_eq!(push.get_all_uid_count().await.unwrap(), 1);
    assert_eq!(push.get_uids_by_group("g").await.unwrap(), ["u1"]);
    assert_eq!(push.get_all_group_ids().await.unwrap(), ["g"]);
    assert_eq!(
        push.get_uid_by_client_id(id[2]).await.unwrap().as_deref(),
        Some("u1")
    );

    let session: Session = [("room".to_owned(), "2".to_owned())].into();
    push.set_session(id[0], session.clone()).await.unwrap();
    assert_eq!(push.get_session(id[0]).await.unwrap(), Some(session));
    assert_eq!(c[0].ask("get room").await, "value room 2");

    let empty = push.send_to_group(&[""], "x", &[]).await.unwrap_err();
    assert_eq!(empty.to_string(), "groups[0]: must not be empty");
    let nowhere: ClientId = "7f000001ffff00000001".parse().unwrap();
    assert_eq!(
        push.send_to_client(nowhere, "x").await,
        Err(Unreachable::NotLinked(nowhere.gateway).into())
    );
    assert_eq!(push.is_online(nowhere).await, Ok(false));

    push.close_client(id[1], Some("bye")).await.unwrap();
    assert_eq!(c[1].recv().await, "bye");
    c[1].assert_closed().await;
    until_offline(|| async { push.is_online(id[1]).await.unwrap() }).await;
    for i in [0, 2, 3] {
        c[i].assert_silent(QUIET).await;
    }
    drop(push);
    cluster.stop().await;
}

#[tokio::test]
async fn the_rust_client_without_a_gateway_says_so() {
    let unused = wasmgate_tests::cluster::free_port();
    let register = std::net::SocketAddr::from(([127, 0, 0, 1], unused));
    let short = Duration::from_millis(300);
    let err = PushClient::connect_within(vec![register], SECRET, short)
        .await
        .expect_err("no register, no gateway");
    assert_eq!(err, wasmgate::push::ConnectError::NoGateway(short));
    let err = PushClient::connect(vec![], SECRET).await.unwrap_err();
    assert_eq!(err, wasmgate::push::ConnectError::NoRegister);
}

/// POSTs `body` to the push API on `push` (loopback, no token); the status and the answer.
async fn post_to(push: u16, operation: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{push}/api/{operation}"))
        .json(&body)
        .send()
        .await
        .expect("push API reachable");
    let status = response.status();
    (status, response.json().await.expect("a JSON answer"))
}

/// A gateway that stops answering, then is gone, is named in what the push API answers about
/// its clients, while the other gateway's clients are served as before: a query about one of
/// its clients waits at most one second and names it; an all-gateway query answers for the
/// others, flagged partial, naming the silent one; once it is gone its clients are
/// offline, and binding one of them is a 404 naming the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_gone_gateway_is_named() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (register, a, push) = (free_port(), free_port(), free_port());
    let (b, b_internal) = (free_port(), free_port());
    let register_at = format!("register = \"127.0.0.1:{register}\"");
    let _main = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{register}\"\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{a}\"\napp = \"commands\"\n{register_at}\n\
             [worker]\nplugins = {:?}\ninstances = 1\n{register_at}\n\
             [push]\nlisten = \"127.0.0.1:{push}\"\n",
            plugins.path()
        ),
    );
    let other = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:{b}\"\n\
             app = \"commands\"\ninternal_port = {b_internal}\n{register_at}\n"
        ),
    );
    let mut bystander = connect_ws(a).await;
    let bystander_id = bystander.ask("whoami").await;
    let mut doomed = connect_ws(b).await;
    let doomed_id = doomed.ask("whoami").await;
    let gone = format!("127.0.0.1:{b_internal}");
    assert!(doomed_id.parse::<ClientId>().unwrap().gateway.to_string() == gone);
    let (status, answer) = post_to(push, "get_all_client_count", json!({})).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"result": 2})));

    other.signal("STOP").await;
    let (status, answer) = post_to(push, "get_all_client_count", json!({})).await;
    let partial = json!({"result": 1, "partial": true, "missing_gateways": [gone]});
    assert_eq!((status, answer), (StatusCode::OK, partial));
    let asked = std::time::Instant::now();
    let (status, answer) = post_to(push, "is_online", json!({"client_id": doomed_id})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains(&gone), "{message}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(bystander.ask("echo still").await, "still");

    other.kill().await;
    let doomed_online = || async {
        let (status, answer) = post_to(push, "is_online", json!({"client_id": doomed_id})).await;
        // While the link still stands the gateway is only silent: ask again.
        status != StatusCode::OK || answer["result"] == json!(true)
    };
    until_offline(doomed_online).await;
    let bind = json!({"client_id": doomed_id, "uid": "u"});
    let (status, answer) = post_to(push, "bind_uid", bind).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(answer["error"]["code"], "gateway_not_linked");
    assert!(answer["error"]["message"].as_str().unwrap().contains(&gone));

    let send = json!({"client_id": bystander_id, "data": "still served"});
    assert_eq!(
        post_to(push, "send_to_client", send).await.0,
        StatusCode::OK
    );
    assert_eq!(bystander.recv().await, "still served");
    let online = json!({"client_id": bystander_id});
    assert_eq!(
        post_to(push, "is_online", online).await.1,
        json!({"result": true})
    );
}
