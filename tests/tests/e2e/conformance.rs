//! One conformance suite for the reference protocol (`examples/commands/README.md`), written
//! once and run against every build of the reference plugin: Rust (`examples/commands`), Python
//! (`examples/commands-py`) and JavaScript (`examples/commands-js`). All three must pass the same
//! assertions: a client cannot tell which language serves it.
//!
//! Each build runs in a real cluster in this process (a WebSocket and a text gateway, one
//! worker host with two instances), driven by real clients. The Python and JavaScript builds
//! need their toolchains from the registries; where those cannot be installed, their tests are
//! skipped loudly (see `wasmgate_tests::tools`).

use std::time::Duration;

use wasmgate::config::Protocol;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::Cluster;
use wasmgate_tests::http_server::{HttpServer, Tripwire};
use wasmgate_tests::polyglot::{self, Language};
use wasmgate_tests::{plugins, tools};

use crate::QUIET;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust() {
    conformance(plugins::COMMANDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python() {
    polyglot_conformance(Language::Python, "conformance::python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript() {
    polyglot_conformance(Language::JavaScript, "conformance::javascript").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_fails_closed() {
    fails_closed(plugins::COMMANDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fails_closed() {
    let test = "conformance::python_fails_closed";
    if let Some(plugin) = polyglot_build(Language::Python, test).await {
        fails_closed(plugin.to_str().unwrap()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_fails_closed() {
    let test = "conformance::javascript_fails_closed";
    if let Some(plugin) = polyglot_build(Language::JavaScript, test).await {
        fails_closed(plugin.to_str().unwrap()).await;
    }
}

async fn polyglot_conformance(language: Language, test: &str) {
    if let Some(plugin) = polyglot_build(language, test).await {
        conformance(plugin.to_str().unwrap()).await;
    }
}

/// The reference plugin's build in `language`, or `None` (a skip, counted) where its toolchain
/// cannot be installed.
async fn polyglot_build(language: Language, test: &str) -> Option<std::path::PathBuf> {
    let built = tokio::task::spawn_blocking(move || polyglot::commands(language))
        .await
        .unwrap();
    tools::or_skip(built, test)
}

/// A crash in `on-websocket-connect` — a trap (a panic, an uncaught exception), a loop past
/// `process_timeout`, memory past `memory_limit` — refuses the client with 1008, and
/// `on-connect` never runs for it; a bystander is served throughout.
///
/// The reference plugin's `on-connect` announces a client to the group its upgrade request
/// named (`?notify=<group>`, kept in the session before any crash): the bystander, in that
/// group, would hear of a refused client if `on-connect` ran for it.
async fn fails_closed(plugin: &str) {
    let limits = "process_timeout = \"1s\"\nmemory_limit = \"64MiB\"\n";
    let cluster =
        Cluster::start_with_worker(("commands", plugin), &[Protocol::Ws], 1, 1, limits).await;
    let ws = cluster.gateways[0].client_addr;
    let mut bystander = TestClient::ws(ws, "/").await.unwrap();
    assert_eq!(bystander.ask("join watch").await, "joined watch");
    // The announcement works: an accepted client is announced.
    let mut accepted = TestClient::ws(ws, "/?notify=watch").await.unwrap();
    let id = accepted.ask("whoami").await;
    assert_eq!(bystander.recv().await, format!("connected {id}"));

    for crash in ["trap", "loop", "alloc"] {
        let path = format!("/?notify=watch&crash={crash}");
        let mut refused = TestClient::ws(ws, &path).await.unwrap();
        let close = tokio::time::timeout(Duration::from_secs(10), refused.close_frame())
            .await
            .unwrap_or_else(|_| panic!("crash={crash}: the client was never closed"))
            .unwrap_or_else(|| panic!("crash={crash}: closed without a frame"));
        assert_eq!(u16::from(close.code), 1008, "crash={crash}: {close:?}");
        // The bystander's reply comes after anything `on-connect` would have sent it.
        assert_eq!(
            bystander.ask(&format!("echo after {crash}")).await,
            format!("after {crash}"),
            "crash={crash}: on-connect ran for the refused client"
        );
    }
    let mut last = TestClient::ws(ws, "/?notify=watch").await.unwrap();
    let id = last.ask("whoami").await;
    assert_eq!(bystander.recv().await, format!("connected {id}"));
    bystander.assert_silent(QUIET).await;
    cluster.stop().await;
}

/// The whole suite against one build of the reference plugin; its `main` database is the
/// embedded SQLite.
async fn conformance(plugin: &str) {
    // The app may use the embedded key-value store and SQLite, under the cluster's
    // temporary data, and reach the test's HTTP server (not its tripwire).
    let server = HttpServer::start().await;
    let tripwire = Tripwire::start().await;
    let grants = format!(
        "[worker.grants.commands]\nkv = \"embedded\"\nsql = {{ main = \"sqlite\" }}\n\
         allowed_outbound_hosts = [\"{}\"]\n",
        server.origin()
    );
    let gateways = [Protocol::Ws, Protocol::Text];
    let cluster = Cluster::start_with_worker(("commands", plugin), &gateways, 1, 2, &grants).await;
    let ws = cluster.gateways[0].client_addr;
    let text = cluster.gateways[1].client_addr;
    let mut a = TestClient::ws(ws, "/").await.unwrap();
    let mut b = TestClient::text(text).await.unwrap();
    let mut c = TestClient::ws(ws, "/").await.unwrap();

    replies_and_parsing(&mut a, &mut b).await;
    payloads_are_bytes(&mut a, &mut c).await;
    groups(&mut a, &mut b, &mut c).await;
    everyone(&mut a, &mut b, &mut c).await;
    uids(&mut a, &mut b, &mut c).await;
    sessions(&mut a, &mut b).await;
    sql(&mut a, &mut b, &mut c).await;
    key_value(&mut a, &mut b, &mut c).await;
    outbound_http(&mut a, &mut c, &server, &tripwire).await;
    kick_and_close(&mut a, b, &mut c).await;
    cluster.stop().await;
}

/// `kvset`, `kvget` and `incr` on the app's key-value store (`wasi:keyvalue`), starting empty:
/// what one client writes, another (on another protocol and instance) reads; values are bytes;
/// `incr` counts in decimal. `data_kv` runs it against Redis.
pub(crate) async fn key_value(a: &mut TestClient, b: &mut TestClient, c: &mut TestClient) {
    assert_eq!(a.ask("kvget missing").await, "none");
    assert_eq!(a.ask("kvset greeting hello  world ").await, "ok");
    assert_eq!(
        b.ask("kvget greeting").await,
        "value greeting hello  world "
    );
    assert_eq!(a.ask_bytes(b"kvset bin \xff\x00 x").await, b"ok");
    assert_eq!(c.ask_bytes(b"kvget bin").await, b"value bin \xff\x00 x");
    assert_eq!(
        a.ask("kvset empty ").await,
        "ok",
        "an empty value is a value"
    );
    assert_eq!(c.ask("kvget empty").await, "value empty ");
    assert_eq!(a.ask("incr hits").await, "incr hits 1");
    assert_eq!(b.ask("incr hits").await, "incr hits 2");
    assert_eq!(
        c.ask("kvget hits").await,
        "value hits 2",
        "a counter is decimal text"
    );
    let refused = a.ask("incr greeting").await;
    assert!(refused.starts_with("error kv "), "{refused:?}");
    assert_eq!(
        a.ask("kvget greeting").await,
        "value greeting hello  world "
    );
    assert_eq!(a.ask("kvset k").await, "error usage: kvset <key> <value>");
    assert_eq!(a.ask("kvget").await, "error usage: kvget <key>");
    assert_eq!(a.ask("incr").await, "error usage: incr <key>");
}

/// `fetch`: a granted origin answers with its status and body; any other is refused before a
/// connection is made, with an error reply; the other client is served throughout.
async fn outbound_http(
    a: &mut TestClient,
    c: &mut TestClient,
    server: &HttpServer,
    tripwire: &Tripwire,
) {
    let hello = format!("fetch {}", server.url("/hello"));
    assert_eq!(a.ask(&hello).await, "fetched 200 hello");
    let big = a.ask(&format!("fetch {}", server.url("/big/3000"))).await;
    assert_eq!(big, format!("fetched 200 {}", "x".repeat(3000)));
    assert_eq!(c.ask("echo still here").await, "still here");
    let denied = a.ask(&format!("fetch {}", tripwire.url("/hello"))).await;
    assert!(denied.starts_with("error fetch "), "{denied}");
    let elsewhere = a.ask("fetch https://api.example.com/").await;
    assert!(elsewhere.starts_with("error fetch "), "{elsewhere}");
    assert_eq!(tripwire.connections(), 0, "a denied request connected");
    assert_eq!(c.ask("echo served").await, "served");
    assert_eq!(a.ask("fetch").await, "error usage: fetch <url>");
}

/// `echo` and `whoami`, and every parsing rule of the README.
async fn replies_and_parsing(ws: &mut TestClient, text: &mut TestClient) {
    assert_eq!(ws.ask("echo hello world").await, "hello world");
    assert_eq!(text.ask("echo over  text ").await, "over  text ");
    assert_eq!(ws.ask("echo héllo wörld 🌍").await, "héllo wörld 🌍");
    assert_eq!(ws.ask("echo ").await, "", "an empty payload is a payload");

    let id = ws.ask("whoami").await;
    assert!(
        id.len() == 20 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "a client id is 20 hex characters: {id:?}"
    );
    assert_ne!(text.ask("whoami").await, id);

    for (message, usage) in [
        ("echo", "echo <payload>"),
        ("join", "join <group>"),
        ("leave", "leave <group>"),
        ("pub", "pub <group> <payload>"),
        ("pub room", "pub <group> <payload>"),
        ("all", "all <payload>"),
        ("bind", "bind <uid>"),
        ("unbind", "unbind <uid>"),
        ("touid", "touid <uid> <payload>"),
        ("touid alice", "touid <uid> <payload>"),
        ("count", "count <group>"),
        ("set", "set <key> <value>"),
        ("set key", "set <key> <value>"),
        ("get", "get <key>"),
        ("whoami now", "whoami"),
        ("whoami ", "whoami"),
        ("kick", "kick <client-id>"),
        ("sqlput", "sqlput <key> <value>"),
        ("sqlput k", "sqlput <key> <value>"),
        ("sqlget", "sqlget <key>"),
        ("sqlslow now", "sqlslow"),
    ] {
        assert_eq!(
            ws.ask(message).await,
            format!("error usage: {usage}"),
            "{message:?}"
        );
    }
    for message in ["", "nope", "ECHO x", " echo x", "echo\tx", "\u{feff}echo x"] {
        assert_eq!(
            ws.ask(message).await,
            "error unknown command",
            "{message:?}"
        );
    }
}

/// `sqlput` / `sqlget` on the database `main`, starting empty: rows written by one client (and
/// instance) are read by others; values keep their spaces and non-ASCII text. The suite grants
/// `main` as the embedded SQLite; `data_sql` runs this section against PostgreSQL.
pub(crate) async fn sql(a: &mut TestClient, b: &mut TestClient, c: &mut TestClient) {
    assert_eq!(a.ask("sqlget greeting").await, "none");
    assert_eq!(
        a.ask("sqlput greeting hello world").await,
        "stored greeting"
    );
    assert_eq!(
        b.ask("sqlget greeting").await,
        "sqlvalue greeting hello world"
    );
    assert_eq!(c.ask("sqlput greeting héllo 🌍").await, "stored greeting");
    assert_eq!(a.ask("sqlget greeting").await, "sqlvalue greeting héllo 🌍");
    assert_eq!(b.ask("sqlput other x").await, "stored other");
    assert_eq!(c.ask("sqlget greeting").await, "sqlvalue greeting héllo 🌍");
    assert_eq!(c.ask("sqlget missing").await, "none");
}

/// Payloads are bytes end to end, UTF-8 or not; words must be UTF-8.
async fn payloads_are_bytes(a: &mut TestClient, c: &mut TestClient) {
    let mut echo = b"echo ".to_vec();
    let payload = b"\xff\x00 \xc3 \xe2\x82 x";
    echo.extend_from_slice(payload);
    assert_eq!(a.ask_bytes(&echo).await, payload);

    assert_eq!(c.ask("join bytes").await, "joined bytes");
    let mut publish = b"pub bytes ".to_vec();
    publish.extend_from_slice(payload);
    a.send_bytes(&publish).await.unwrap();
    assert_eq!(c.recv_bytes().await, payload);
    assert_eq!(c.ask("leave bytes").await, "left bytes");

    for (message, usage) in [
        (&b"join \xff"[..], "join <group>"),
        (b"set \xc3 v", "set <key> <value>"),
        (b"set k \xe2\x82", "set <key> <value>"),
        (b"pub \xff x", "pub <group> <payload>"),
        (b"kick \xff", "kick <client-id>"),
    ] {
        assert_eq!(
            a.ask_bytes(message).await,
            format!("error usage: {usage}").as_bytes(),
            "{}",
            message.escape_ascii()
        );
    }
    assert_eq!(a.ask_bytes(b"\xff").await, b"error unknown command");
}

/// `join`, `pub`, `count` and `leave`, across both gateways.
async fn groups(a: &mut TestClient, b: &mut TestClient, c: &mut TestClient) {
    assert_eq!(a.ask("join g").await, "joined g");
    assert_eq!(b.ask("join g").await, "joined g");
    assert_eq!(
        c.ask("count g").await,
        "count g 2",
        "counted across gateways"
    );
    c.send("pub g to the group").await.unwrap();
    assert_eq!(a.recv().await, "to the group");
    assert_eq!(b.recv().await, "to the group");
    c.assert_silent(QUIET).await;
    a.send("pub g from a member").await.unwrap();
    assert_eq!(
        a.recv().await,
        "from a member",
        "a member sender gets it too"
    );
    assert_eq!(b.recv().await, "from a member");

    // The last word takes the rest of the message; `pub`'s group is one word.
    assert_eq!(c.ask("join my room").await, "joined my room");
    assert_eq!(a.ask("count my room").await, "count my room 1");
    a.send("pub my room x").await.unwrap();
    c.assert_silent(QUIET).await;
    assert_eq!(c.ask("leave my room").await, "left my room");
    assert_eq!(a.ask("count my room").await, "count my room 0");

    // An empty group goes to the gateway as it is: joining it is refused with the argument
    // named, the same words as the push API's 400; counting it counts every client.
    assert_eq!(
        a.ask("join ").await,
        "error invalid-argument group: must not be empty"
    );
    assert_eq!(
        a.ask("pub  x").await,
        "error invalid-argument groups[0]: must not be empty"
    );
    assert_eq!(
        a.ask("kick nobody").await,
        "error invalid-argument client_id: malformed client id \"nobody\": expected 20 hex characters"
    );
    assert_eq!(a.ask("count ").await, "count  3");

    assert_eq!(b.ask("leave g").await, "left g");
    assert_eq!(c.ask("count g").await, "count g 1");
    assert_eq!(c.ask("leave nothing").await, "left nothing");
    assert_eq!(a.ask("leave g").await, "left g");
    assert_eq!(c.ask("count g").await, "count g 0");
    c.send("pub g nobody").await.unwrap();
    a.assert_silent(QUIET).await;
}

/// `all` reaches every client of every gateway, the sender too.
async fn everyone(a: &mut TestClient, b: &mut TestClient, c: &mut TestClient) {
    b.send("all to everyone").await.unwrap();
    for client in [a, b, c] {
        assert_eq!(client.recv().await, "to everyone");
    }
}

/// `bind`, `touid` and `unbind`: a uid may have many clients.
async fn uids(a: &mut TestClient, b: &mut TestClient, c: &mut TestClient) {
    assert_eq!(a.ask("bind u1").await, "bound u1");
    assert_eq!(b.ask("bind u1").await, "bound u1");
    c.send("touid u1 psst").await.unwrap();
    assert_eq!(a.recv().await, "psst");
    assert_eq!(b.recv().await, "psst");
    c.assert_silent(QUIET).await;
    assert_eq!(a.ask("unbind u2").await, "unbound u2");
    c.send("touid u1 still bound").await.unwrap();
    assert_eq!(
        a.recv().await,
        "still bound",
        "unbinding another uid does nothing"
    );
    assert_eq!(b.recv().await, "still bound");
    assert_eq!(a.ask("unbind u1").await, "unbound u1");
    c.send("touid u1 again").await.unwrap();
    assert_eq!(b.recv().await, "again");
    a.assert_silent(QUIET).await;
    assert_eq!(c.ask("bind ü s").await, "bound ü s");
    a.send("touid ü s hi").await.unwrap();
    c.assert_silent(QUIET).await;
    assert_eq!(b.ask("unbind u1").await, "unbound u1");
}

/// `set` and `get`: the session travels with every event.
async fn sessions(a: &mut TestClient, b: &mut TestClient) {
    assert_eq!(a.ask("get color").await, "none");
    assert_eq!(a.ask("set color blue").await, "ok");
    assert_eq!(a.ask("get color").await, "value color blue");
    assert_eq!(a.ask("set color").await, "error usage: set <key> <value>");
    assert_eq!(a.ask("set nick Ada Lovelace").await, "ok");
    assert_eq!(a.ask("get nick").await, "value nick Ada Lovelace");
    assert_eq!(a.ask("set color red").await, "ok");
    assert_eq!(a.ask("get color").await, "value color red");
    assert_eq!(a.ask("set empty ").await, "ok");
    assert_eq!(a.ask("get empty").await, "value empty ");
    assert_eq!(b.ask("get color").await, "none", "sessions are per client");
    assert_eq!(b.ask("set color green").await, "ok");
    assert_eq!(b.ask("get color").await, "value color green");
    // Back to back: the second event may leave the gateway before the first one's session
    // write arrives there; it must still see the value.
    a.send("set size xl").await.unwrap();
    a.send("get size").await.unwrap();
    assert_eq!(a.recv().await, "ok");
    assert_eq!(a.recv().await, "value size xl");
}

/// `kick` closes another client, which leaves its groups and uid; so does closing oneself.
async fn kick_and_close(a: &mut TestClient, mut b: TestClient, c: &mut TestClient) {
    let a_id = a.ask("whoami").await;
    assert_eq!(a.ask("join k").await, "joined k");
    assert_eq!(a.ask("bind kicked").await, "bound kicked");
    assert_eq!(b.ask("join k").await, "joined k");
    assert_eq!(c.ask("count k").await, "count k 2");
    c.send(&format!("kick {a_id}")).await.unwrap();
    a.assert_closed().await;
    assert_eq!(
        c.ask("count k").await,
        "count k 1",
        "a kicked client leaves its groups"
    );
    c.send("touid kicked anyone").await.unwrap();
    c.assert_silent(QUIET).await;
    // A well-formed id whose gateway is not linked: the operation is refused, nobody closed.
    assert_eq!(
        c.ask("kick 00000000000000000000").await,
        "error unreachable"
    );
    assert_eq!(c.ask("echo not kicked").await, "not kicked");

    drop(b);
    // The close travels asynchronously: a closed client leaves its groups, eventually.
    c.ask_until("count k", "count k 0").await;
}
