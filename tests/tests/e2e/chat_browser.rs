//! The chat demo end to end: its plugin (`examples/chat`) in a real cluster, spoken to in JSON by
//! test clients (also across a hot reload, which it survives because it keeps its state in
//! sessions, groups and its history database), each room's history kept in SQLite across a
//! restart of the server process, and its page (`examples/chat/web`), served by wasmgate's
//! `[web]` server, driven in headless Chromium by `tests/browser/chat.cjs`.
//!
//! The browser tests install what they need when it is missing (Debian's `chromium` and
//! `chromium-driver` with apt-get, `playwright-core` with npm into `target/tools/browser`) and
//! are skipped loudly when they cannot. Their screenshots go to `target/chat-browser/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wasmgate::config::{Protocol, WebConfig};
use wasmgate::web::BoundWeb;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Cluster, Node, PluginsDir, SECRET, connect_ws, free_port};
use wasmgate_tests::daemon::Daemon;
use wasmgate_tests::postgres::Postgres;
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

    /// Says `text` to the room and waits for it to come back (so it was stored, too).
    async fn says(&mut self, text: &str) {
        self.send(json!({"type": "say", "text": text})).await;
        assert_eq!(self.next("say").await["text"], text);
    }

    /// The messages of the history, which must be the next event after the welcome: before
    /// the online list, before anything said live.
    async fn history(&mut self) -> Vec<Value> {
        let event = self.recv().await;
        assert_eq!(
            event["type"], "history",
            "the history comes right after the welcome: {event}"
        );
        event["messages"].as_array().unwrap().clone()
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
    ada.says("before Bob").await;
    // This cluster grants the chat no database: its history calls are refused (and logged),
    // and the chat goes on without history: the online list follows the welcome at once.
    let mut bob = Person::login(connect().await, "Bob", "lobby").await;
    let first = bob.recv().await;
    assert_eq!(
        first["type"], "users",
        "no history without a database: {first}"
    );
    assert_eq!(first["users"].as_array().unwrap().len(), 2, "{first}");
    // Those already in the room hear the join, and no list: the page keeps its own.
    let joined = ada.recv().await;
    assert_eq!(
        (&joined["type"], &joined["user"]["name"]),
        (&json!("join"), &json!("Bob"))
    );
    let mut eve = Person::login(connect().await, "Eve", "elsewhere").await;
    assert_eq!(eve.online().await, ["Eve"]);

    ada.send(json!({"type": "say", "text": "hi all"})).await;
    // Ada's next event is her say: the join brought no list after it.
    let heard = [ada.recv().await, bob.next("say").await];
    for said in heard {
        assert_eq!(said["type"], "say", "{said}");
        assert_eq!(
            (&said["from"]["name"], &said["text"]),
            (&json!("Ada"), &json!("hi all"))
        );
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

    // Leaving and closing both tell those who stay, once each, with no list to rescan.
    bob.send(json!({"type": "leave"})).await;
    assert_eq!(ada.next("leave").await["user"]["name"], "Bob");
    bob.send(json!({"type": "say", "text": "still here?"}))
        .await;
    assert_eq!(bob.next("error").await["text"], "log in first");
    bob.send(json!({"type": "login", "name": "Bob", "room": "lobby"}))
        .await;
    assert_eq!(ada.next("join").await["user"]["name"], "Bob");
    drop(bob);
    assert_eq!(ada.next("leave").await["user"]["name"], "Bob");
    ada.send(json!({"type": "say", "text": "alone"})).await;
    let said = ada.recv().await;
    assert_eq!(said["text"], "alone", "one leave per departure: {said}");
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
    assert_eq!(ada.next("leave").await["user"]["name"], "Bob");
}

/// Each room's history over WebSocket: someone joining gets the room's last 50 messages,
/// oldest first, right after the welcome and before anything live; another room's are not in
/// it; a restart of the server process keeps it, while nicknames (session-only) are free
/// again. Eve, in another room, keeps hearing herself throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_keeps_its_last_50_messages_across_a_restart() {
    let g = free_port();
    let mut daemon = start_with_history(g, "").await;
    let [mut eve, mut ada, mut bob] = fifty_five_said_the_last_50_shown(g).await;
    // The table is bounded: 50 per room, and 10,000 in all, the oldest going first.
    let file = daemon.dir().join("data/chat/history.sqlite");
    let db = rusqlite::Connection::open(&file).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let count = |room: &str| -> i64 {
        let sql = "select count(*) from chat_history where room like ?1";
        db.query_row(sql, [room], |row| row.get(0)).unwrap()
    };
    assert_eq!((count("lobby"), count("side")), (50, 5));
    db.execute_batch(
        "begin; with recursive n(i) as (select 1 union all select i + 1 from n where i < 10000) \
         insert into chat_history select 'old', i, 'Zed', 'ancient', i from n; commit;",
    )
    .unwrap();
    ada.says("live").await;
    assert_eq!(bob.next("say").await["text"], "live");
    assert_eq!((count("%"), count("lobby"), count("side")), (10_000, 50, 5));
    let oldest: i64 = db
        .query_row("select min(at) from chat_history", [], |row| row.get(0))
        .unwrap();
    assert_eq!(oldest, 56, "the 55 oldest went");
    drop(db);
    eve.says("before the restart").await;

    let restarted = daemon.restart().await;
    assert!(restarted.status.success(), "{restarted:?}");
    ada.client.assert_closed().await;
    let mut eve = Person::login(connect_ws(g).await, "Eve", "side").await;
    let side = eve.history().await;
    assert_eq!(
        texts(&side),
        [
            "side 11",
            "side 22",
            "side 33",
            "side 44",
            "side 55",
            "before the restart"
        ]
    );
    eve.says("still here").await;
    let mut cy = Person::login(connect_ws(g).await, "Ada", "lobby").await;
    let mut expected = numbered(7..=55);
    expected.push("live".into());
    assert_eq!(
        texts(&cy.history().await),
        expected,
        "kept across the restart"
    );
    cy.says("a new Ada").await;
    eve.says("and still here").await;
}

/// The same history on PostgreSQL (the statements are portable), and a database that goes
/// down meanwhile: the chat goes on without history, for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_keeps_its_history_on_postgres_and_chats_on_when_it_is_down() {
    let started = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let test = "chat_browser::a_room_keeps_its_history_on_postgres_and_chats_on_when_it_is_down";
    let Some(pg) = tools::or_skip(started, test) else {
        return;
    };
    let grant = format!(
        "[worker.grants.chat]\nsql = {{ history = \"{}\" }}\n",
        pg.url()
    );
    let cluster =
        Cluster::start_with_worker(("chat", plugins::CHAT), &[Protocol::Ws], 1, 2, &grant).await;
    let g = cluster.gateways[0].client_addr.port();
    let [mut eve, mut ada, mut bob] = fifty_five_said_the_last_50_shown(g).await;

    let counted = "select room, count(*) from chat_history group by room order by room";
    assert_eq!(pg.query(counted), "lobby|50\nside|5", "50 kept per room");
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
    ada.says("is anyone storing this?").await;
    assert_eq!(bob.next("say").await["text"], "is anyone storing this?");
    let mut cy = Person::login(connect_ws(g).await, "Cy", "lobby").await;
    let first = cy.recv().await;
    assert_eq!(
        first["type"], "users",
        "no history while it is down: {first}"
    );
    eve.says("still here").await;
    cluster.stop().await;
}

/// Eve (a bystander) talks in `side` while Ada says `m1` … `m55` in `lobby`, each stored
/// once she hears it back; then Bob joins the lobby and gets the last 50, oldest first, by Ada,
/// stamped when they were said. Returns Eve, Ada and Bob.
async fn fifty_five_said_the_last_50_shown(port: u16) -> [Person; 3] {
    let since = now_ms();
    let mut eve = Person::login(connect_ws(port).await, "Eve", "side").await;
    assert_eq!(eve.history().await, [] as [Value; 0], "a new room has none");
    let mut ada = Person::login(connect_ws(port).await, "Ada", "lobby").await;
    let none = ada.history().await;
    assert_eq!(none, [] as [Value; 0], "other rooms' are not in it");
    for i in 1..=55 {
        ada.says(&format!("m{i}")).await;
        if i % 11 == 0 {
            eve.says(&format!("side {i}")).await;
        }
    }
    let mut bob = Person::login(connect_ws(port).await, "Bob", "lobby").await;
    let said = bob.history().await;
    assert_eq!(texts(&said), numbered(6..=55), "the last 50, oldest first");
    assert!(said.iter().all(|m| m["name"] == "Ada"), "{said:?}");
    let times: Vec<i64> = said.iter().map(|m| m["time"].as_i64().unwrap()).collect();
    assert!(
        times.is_sorted() && times[0] >= since && times[49] <= now_ms(),
        "times in order, when they were said: {times:?}"
    );
    [eve, ada, bob]
}

/// Every role in one process, started from a directory as an operator starts it (`wasmgate
/// start -d`), its gateway on `ws://127.0.0.1:<g>`, the chat granted its history as the demo
/// grants it (an SQLite file under `data/` beside the configuration), then `extra` sections.
async fn start_with_history(g: u16, extra: &str) -> Daemon {
    let r = free_port();
    let config = format!(
        "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"chat\"\n\
         [worker]\nplugins = \"plugins\"\ninstances = 2\n\
         [worker.grants.chat]\nsql = {{ history = \"sqlite\" }}\n{extra}"
    );
    let (daemon, started) = Daemon::start(BIN, &config, &[("chat", plugins::CHAT)]).await;
    assert!(started.status.success(), "{started:?}");
    daemon
}

/// The texts of history messages, in order.
fn texts(messages: &[Value]) -> Vec<String> {
    let text = |m: &Value| m["text"].as_str().unwrap().to_owned();
    messages.iter().map(text).collect()
}

/// `m<i>` for each `i` of `range`.
fn numbered(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// Milliseconds since the Unix epoch, as the plugin stamps messages.
fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    since.as_millis().try_into().unwrap()
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
    const SHOTS: [&str; 2] = ["chat-two-people.png", "chat-ada-alone.png"];
    let Some(browser) = Browser::install("chat_browser::two_people_chat_in_chromium").await else {
        return;
    };
    let cluster = Cluster::start(("chat", plugins::CHAT), &[Protocol::Ws], 1, 2).await;
    let web = BoundWeb::bind(&WebConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        root: web_root(),
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

    let shots = screenshots(&SHOTS);
    browser.run("people", &page, &shots).await;
    for shot in SHOTS {
        assert_png(&shots.join(shot));
    }

    stop_web.cancel();
    served.await.unwrap().unwrap();
    cluster.stop().await;
}

/// The history in the page: what was said before someone joins is shown to them, after a
/// reload of the page, and after a restart of the server process (page, plugin and database
/// all served by one `wasmgate` started from a directory, as an operator runs the demo).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_reload_and_a_restart_in_chromium() {
    const SHOTS: [&str; 2] = ["history-after-reload.png", "history-after-restart.png"];
    let test = "chat_browser::history_survives_a_reload_and_a_restart_in_chromium";
    let Some(browser) = Browser::install(test).await else {
        return;
    };
    let (g, w) = (free_port(), free_port());
    let web = format!(
        "[web]\nlisten = \"127.0.0.1:{w}\"\nroot = {:?}\n",
        web_root()
    );
    let mut daemon = start_with_history(g, &web).await;
    let page = format!("http://127.0.0.1:{w}/?ws=ws://127.0.0.1:{g}");
    let shots = screenshots(&SHOTS);
    let mut eve = Person::login(connect_ws(g).await, "Eve", "side").await;
    eve.says("before the browser").await;

    browser.run("history-before-restart", &page, &shots).await;
    eve.says("while Ada and Bob talked").await;
    let restarted = daemon.restart().await;
    assert!(restarted.status.success(), "{restarted:?}");
    let mut eve = Person::login(connect_ws(g).await, "Eve", "side").await;
    browser.run("history-after-restart", &page, &shots).await;
    eve.says("after the restart").await;
    for shot in SHOTS {
        assert_png(&shots.join(shot));
    }
}

/// Chromium and playwright-core, installed (or found) for a browser test.
pub(crate) struct Browser {
    /// The browser binary (`CHROMIUM` for the scripts).
    pub(crate) chromium: PathBuf,
    /// Where playwright-core is installed (`NODE_PATH` for the scripts).
    pub(crate) modules: PathBuf,
}

impl Browser {
    /// Installs what a browser test needs; `None` (the test `test` skipped loudly and
    /// counted) when that is impossible here.
    pub(crate) async fn install(test: &str) -> Option<Self> {
        let tools = tokio::task::spawn_blocking(|| {
            let chromium = tools::chromium()?;
            let package = tools::workspace().join("tests/browser/package.json");
            let modules = tools::npm_install("browser", &package)?;
            Ok(Self { chromium, modules })
        })
        .await
        .unwrap();
        tools::or_skip(tools, test)
    }

    /// Runs `scenario` of `tests/browser/chat.cjs` on `page`, screenshots into `shots`;
    /// fails the test with the script's output unless every step saw what it expected.
    async fn run(&self, scenario: &str, page: &str, shots: &Path) {
        self.run_script("chat.cjs", &[page, shots.to_str().unwrap(), scenario])
            .await;
    }

    /// Runs `tests/browser/<script>` with `args`; fails the test with the script's output
    /// unless it exits 0 within [`BROWSER_TIMEOUT`].
    pub(crate) async fn run_script(&self, script: &str, args: &[&str]) {
        let scenario = format!("{script} {}", args.last().copied().unwrap_or_default());
        let script = tools::workspace().join("tests/browser").join(script);
        let browser = tokio::process::Command::new("node")
            .arg(&script)
            .args(args)
            .env("NODE_PATH", &self.modules)
            .env("CHROMIUM", &self.chromium)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(BROWSER_TIMEOUT, browser)
            .await
            .unwrap_or_else(|_| panic!("the browser scenario {scenario} did not end in time"))
            .unwrap();
        assert!(
            output.status.success(),
            "the browser scenario {scenario} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The chat's page, as the demo serves it.
fn web_root() -> PathBuf {
    tools::workspace().join("examples/chat/web")
}

/// `target/chat-browser/`, without the screenshots `names` from an earlier run (only those:
/// the browser tests run side by side).
fn screenshots(names: &[&str]) -> PathBuf {
    screenshots_in("chat-browser", names)
}

/// `target/<dir>/`, without the screenshots `names` from an earlier run.
pub(crate) fn screenshots_in(dir: &str, names: &[&str]) -> PathBuf {
    let shots = tools::workspace().join("target").join(dir);
    std::fs::create_dir_all(&shots).unwrap();
    for name in names {
        match std::fs::remove_file(shots.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{name}: {e}"),
            _ => {}
        }
    }
    shots
}

/// A screenshot was written and is a PNG of a plausible size for a rendered page.
pub(crate) fn assert_png(path: &Path) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("no screenshot {}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    assert!(bytes.len() > 10_000, "{} is nearly empty", path.display());
}
