//! The chat demo end to end: its plugin (`examples/chat`) in a real cluster, spoken to in JSON by
//! test clients (also across a hot reload, which it survives because it keeps its state in
//! sessions and groups), and its page (`examples/chat/web`), served by wasmgate's `[web]` server, driven
//! in headless Chromium by `tests/browser/chat.cjs`.
//!
//! The browser test installs what it needs when it is missing (Debian's `chromium` and
//! `chromium-driver` with apt-get, `playwright-core` with npm into `target/tools/browser`) and is
//! skipped loudly when it cannot. Its screenshots go to `target/chat-browser/`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wasmgate::config::{Protocol, WebConfig};
use wasmgate::web::BoundWeb;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Cluster, Node, PluginsDir, connect_ws};
use wasmgate_tests::{plugins, tools};

use crate::BIN;

/// Longest the whole browser session may take; each of its steps waits at most 10 s.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);

/// A logged-in chat user: a WebSocket client and its client id.
struct Person {
    client: TestClient,
    id: String,
}

impl Person {
    async fn send(&mut self, request: Value) {
        self.client.send(&request.to_string()).await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        let text = self.client.recv().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// The next event of `kind`, skipping others (join and leave notices, list updates).
    async fn next(&mut self, kind: &str) -> Value {
        loop {
            let event = self.recv().await;
            if event["type"] == kind {
                return event;
            }
        }
    }

    /// The names in the next online list.
    async fn online(&mut self) -> Vec<String> {
        let users = self.next("users").await;
        users["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Logs `client`, just connected, in as `name` to `room`.
    async fn login(client: TestClient, name: &str, room: &str) -> Self {
        let mut person = Self {
            client,
            id: String::new(),
        };
        let hello = person.recv().await;
        assert_eq!(
            hello["type"], "hello",
            "the server-side welcome comes first"
        );
        person
            .send(json!({"type": "login", "name": name, "room": room}))
            .await;
        let welcome = person.next("welcome").await;
        assert_eq!(welcome["you"]["name"], name);
        assert_eq!(welcome["room"], room);
        person.id = welcome["you"]["id"].as_str().unwrap().to_owned();
        person
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_lists_messages_and_whispers_over_websocket() {
    // Two instances: consecutive events of different clients land on different instances,
    // which works only because the plugin keeps its state in sessions and groups.
    let cluster = Cluster::start(("chat", plugins::CHAT), &[Protocol::Ws], 1, 2).await;
    let addr = cluster.gateways[0].client_addr;
    let connect = || async { TestClient::ws(addr, "/").await.unwrap() };
    let mut ada = Person::login(connect().await, "Ada", "lobby").await;
    assert_eq!(ada.online().await, ["Ada"]);
    let mut bob = Person::login(connect().await, "Bob", "lobby").await;
    assert_eq!(bob.online().await, ["Ada", "Bob"]);
    assert_eq!(ada.next("join").await["user"]["name"], "Bob");
    assert_eq!(ada.online().await, ["Ada", "Bob"]);
    let mut eve = Person::login(connect().await, "Eve", "elsewhere").await;
    assert_eq!(eve.online().await, ["Eve"]);

    ada.send(json!({"type": "say", "text": "hi all"})).await;
    for person in [&mut ada, &mut bob] {
        let said = person.next("say").await;
        assert_eq!(said["from"]["name"], "Ada");
        assert_eq!(said["text"], "hi all");
    }

    // A whisper goes to its recipient and back to its sender only; not across rooms.
    bob.send(json!({"type": "whisper", "to": ada.id, "text": "psst"}))
        .await;
    for person in [&mut ada, &mut bob] {
        let whisper = person.next("whisper").await;
        assert_eq!(
            (&whisper["from"]["name"], &whisper["to"]["name"]),
            (&json!("Bob"), &json!("Ada"))
        );
    }
    eve.send(json!({"type": "whisper", "to": ada.id, "text": "hey"}))
        .await;
    let refused = eve.next("error").await;
    assert!(
        refused["text"].as_str().unwrap().contains("#elsewhere"),
        "{refused}"
    );
    eve.send(json!({"type": "say", "text": "only here"})).await;
    assert_eq!(eve.next("say").await["text"], "only here");

    // Refusals: a taken nickname, a bad room, talking before logging in, bad JSON.
    let mut late = connect().await;
    late.recv().await;
    for (request, error) in [
        (
            json!({"type": "login", "name": "ADA", "room": "lobby"}),
            "already in #lobby",
        ),
        (
            json!({"type": "login", "name": "x", "room": "no spaces"}),
            "room name",
        ),
        (json!({"type": "say", "text": "hi"}), "log in first"),
        (json!({"type": "shout"}), "not a chat request"),
    ] {
        let reply: Value = serde_json::from_str(&late.ask(&request.to_string()).await).unwrap();
        assert_eq!(reply["type"], "error");
        assert!(
            reply["text"].as_str().unwrap().contains(error),
            "{request}: {reply}"
        );
    }

    // Leaving and closing both update the list of those who stay.
    bob.send(json!({"type": "leave"})).await;
    assert_eq!(ada.next("leave").await["user"]["name"], "Bob");
    assert_eq!(ada.online().await, ["Ada"]);
    bob.send(json!({"type": "say", "text": "still here?"}))
        .await;
    assert_eq!(bob.next("error").await["text"], "log in first");
    bob.send(json!({"type": "login", "name": "Bob", "room": "lobby"}))
        .await;
    assert_eq!(ada.online().await, ["Ada", "Bob"]);
    drop(bob);
    assert_eq!(ada.next("leave").await["user"]["name"], "Bob");
    assert_eq!(ada.online().await, ["Ada"]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_survives_a_hot_reload() {
    let dir = PluginsDir::with(&[("chat", plugins::CHAT)]);
    // One instance: the old version's `on-worker-stop` then marks the moment every later
    // event goes to the new one.
    let (node, port) = Node::all_in_one(BIN, dir.path(), "chat", 1);
    let mut ada = Person::login(connect_ws(port).await, "Ada", "lobby").await;
    let mut bob = Person::login(connect_ws(port).await, "Bob", "lobby").await;
    assert_eq!(bob.online().await, ["Ada", "Bob"]);

    // A new version: the same code with one more custom section, so that its bytes, and so
    // its version, differ. Its instances start with nothing in memory.
    let mut bytes = std::fs::read(plugins::CHAT).unwrap();
    bytes.extend(custom_section("wasmgate-test", b"a second version"));
    let next = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(next.path(), &bytes).unwrap();
    let old = node.installed_versions("chat");
    dir.deploy("chat", next.path().to_str().unwrap());
    node.wait_for_line(&["on-worker-stop ran", &old[0]]).await;
    assert_eq!(node.installed_versions("chat").len(), 2);

    // Names, rooms and the room's members were never in the plugin: nothing is lost.
    ada.send(json!({"type": "say", "text": "still there?"}))
        .await;
    let said = bob.next("say").await;
    assert_eq!(
        (&said["from"]["name"], &said["text"]),
        (&json!("Ada"), &json!("still there?"))
    );
    bob.send(json!({"type": "whisper", "to": ada.id, "text": "yes"}))
        .await;
    assert_eq!(ada.next("whisper").await["from"]["name"], "Bob");
    bob.send(json!({"type": "leave"})).await;
    assert_eq!(ada.online().await, ["Ada"]);
}

/// A WebAssembly custom section (id 0) named `name`, to append to a component.
fn custom_section(name: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = leb128(name.len());
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut section = vec![0];
    section.extend(leb128(body.len()));
    section.extend(body);
    section
}

/// `n` as an unsigned LEB128 number.
fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_in_chromium() {
    const TEST: &str = "chat_browser::two_people_chat_in_chromium";
    let tools = tokio::task::spawn_blocking(|| {
        let chromium = tools::chromium()?;
        let package = tools::workspace().join("tests/browser/package.json");
        let modules = tools::npm_install("browser", &package)?;
        Ok((chromium, modules))
    })
    .await
    .unwrap();
    let Some((chromium, modules)) = tools::or_skip(tools, TEST) else {
        return;
    };

    let cluster = Cluster::start(("chat", plugins::CHAT), &[Protocol::Ws], 1, 2).await;
    let web = BoundWeb::bind(&WebConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        root: tools::workspace().join("examples/chat/web"),
    })
    .await
    .unwrap();
    let page = format!(
        "http://{}/?ws=ws://{}",
        web.local_addr().unwrap(),
        cluster.gateways[0].client_addr
    );
    let stop_web = CancellationToken::new();
    let served = tokio::spawn(web.run(Default::default(), stop_web.clone()));

    let shots = tools::workspace().join("target/chat-browser");
    std::fs::create_dir_all(&shots).unwrap();
    for old in std::fs::read_dir(&shots).unwrap() {
        std::fs::remove_file(old.unwrap().path()).unwrap();
    }
    let script = tools::workspace().join("tests/browser/chat.cjs");
    let browser = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&page)
        .arg(&shots)
        .env("NODE_PATH", &modules)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROWSER_TIMEOUT, browser)
        .await
        .expect("the browser session did not end in time")
        .unwrap();
    assert!(
        output.status.success(),
        "the browser session failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for shot in ["chat-two-people.png", "chat-ada-alone.png"] {
        assert_png(&shots.join(shot));
    }

    stop_web.cancel();
    served.await.unwrap().unwrap();
    cluster.stop().await;
}

/// A screenshot was written and is a PNG of a plausible size for a rendered page.
fn assert_png(path: &Path) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("no screenshot {}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    assert!(bytes.len() > 10_000, "{} is nearly empty", path.display());
}
