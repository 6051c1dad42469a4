//! The admin page end to end: a cluster of two WebSocket gateways and two worker hosts
//! running the `commands` plugin, seen from an admin page served over links of its own found
//! through the register (as a process without a worker host serves it). Its JSON API is
//! checked over HTTP (the token, both gateways' clients, a search, a kick, a plugin fault in
//! the plugin table), and its page in headless Chromium by `tests/browser/admin.cjs`, which
//! writes screenshots to `target/admin-browser/`.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wasmgate::admin::BoundAdmin;
use wasmgate::config::{AdminConfig, Protocol};
use wasmgate::ops::GatewayApi;
use wasmgate::push::PushClient;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Cluster, Node, PluginsDir, SECRET, free_port};
use wasmgate_tests::plugins;

use crate::BIN;
use crate::chat_browser::{Browser, assert_png, screenshots_in};

const TOKEN: &str = "admin-token";

/// Longest the page or the API may take to show what a test waits for.
const SHOWN_WITHIN: Duration = Duration::from_secs(10);

/// A connected client of the `commands` plugin and its id.
struct Person {
    client: TestClient,
    id: String,
}

impl Person {
    /// Connects to gateway `gateway` of `cluster`, binds `uid` (if any), joins `group` (if
    /// any) and keeps `nick` in its session.
    async fn connect(cluster: &Cluster, gateway: usize, uid: Option<&str>, group: &str) -> Self {
        let addr = cluster.gateways[gateway].client_addr;
        let mut client = TestClient::ws(addr, "/").await.unwrap();
        let id = client.ask("whoami").await;
        if let Some(uid) = uid {
            assert_eq!(
                client.ask(&format!("bind {uid}")).await,
                format!("bound {uid}")
            );
            assert_eq!(client.ask(&format!("set nick {uid}-nick")).await, "ok");
        }
        assert_eq!(
            client.ask(&format!("join {group}")).await,
            format!("joined {group}")
        );
        Self { client, id }
    }
}

/// The cluster, three clients (Ada with uid `ada` on the first gateway, Bob with uid `bob`
/// and an anonymous bystander on the second) and the admin page over a push client's links.
struct Setup {
    cluster: Cluster,
    ada: Person,
    bob: Person,
    bystander: Person,
    admin: SocketAddr,
    stop: CancellationToken,
}

impl Setup {
    async fn start() -> Self {
        let cluster = Cluster::start(
            ("commands", plugins::COMMANDS),
            &[Protocol::Ws, Protocol::Ws],
            2,
            1,
        )
        .await;
        let ada = Person::connect(&cluster, 0, Some("ada"), "lobby").await;
        let bob = Person::connect(&cluster, 1, Some("bob"), "lobby").await;
        let bystander = Person::connect(&cluster, 1, None, "quiet").await;
        let links = PushClient::connect(vec![cluster.register], SECRET)
            .await
            .unwrap();
        let config = AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: Some(TOKEN.into()),
        };
        let bound = BoundAdmin::bind(&config).await.unwrap();
        let admin = bound.local_addr().unwrap();
        let stop = CancellationToken::new();
        let api = GatewayApi::clone(&links);
        let serving = stop.clone();
        tokio::spawn(async move {
            let _links = links;
            bound.serve(api, Default::default(), serving).await
        });
        Self {
            cluster,
            ada,
            bob,
            bystander,
            admin,
            stop,
        }
    }

    /// GETs `path` of the admin API with `authorization`; its status and JSON answer.
    async fn get(&self, path: &str, authorization: Option<&str>) -> (StatusCode, Value) {
        let mut request = reqwest::Client::new().get(format!("http://{}{path}", self.admin));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn api(&self, path: &str) -> Value {
        let (status, answer) = self.get(path, Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
        answer
    }

    /// Waits until `/api/cluster` satisfies `shown`; the last answer.
    async fn cluster_until(&self, what: &str, shown: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + SHOWN_WITHIN;
        loop {
            let cluster = self.api("/api/cluster").await;
            if shown(&cluster) {
                return cluster;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the admin API never showed {what}: {cluster}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes the plugin trap (in `on-websocket-connect`, asked for by the query string).
    async fn trap(&self) {
        let addr = self.cluster.gateways[0].client_addr;
        let mut crashing = TestClient::ws(addr, "/?crash=trap").await.unwrap();
        crashing.assert_closed().await;
    }

    /// The bystander's replies keep arriving.
    async fn bystander_served(&mut self) {
        assert_eq!(
            self.bystander.client.ask("echo still here").await,
            "still here"
        );
    }

    async fn stop(self) {
        self.stop.cancel();
        self.cluster.stop().await;
    }
}

/// Whether each worker host reports the `commands` plugin with at least one trap.
fn traps_shown(cluster: &Value) -> bool {
    let workers = cluster["workers"].as_array().unwrap();
    workers.len() == 2
        && workers.iter().any(|w| {
            w["plugins"].as_array().unwrap().iter().any(|p| {
                p["plugin"] == "commands"
                    && p["faults"]["trap"].as_u64() >= Some(1)
                    && p["recent_faults"][0]["kind"] == "trap"
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_the_whole_cluster_behind_its_token_and_kicks() {
    let mut setup = Setup::start().await;
    // The token: missing, wrong, and another scheme are all refused.
    for authorization in [None, Some("Bearer wrong"), Some(&*format!("Basic {TOKEN}"))] {
        for path in ["/api/cluster", "/api/clients", "/api/search?q=ada"] {
            let (status, answer) = setup.get(path, authorization).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {authorization:?}");
            assert_eq!(answer["error"]["code"], "unauthorized");
        }
    }

    // Both gateways, each with its listener and clients; both worker hosts with the plugin.
    let cluster = setup
        .cluster_until("two worker hosts", |c| {
            c["workers"].as_array().unwrap().len() == 2
        })
        .await;
    let gateways = cluster["gateways"].as_array().unwrap();
    let counts: Vec<u64> = gateways
        .iter()
        .map(|g| g["clients"].as_u64().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 3, "{cluster}");
    let mut sorted = counts.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2], "{cluster}");
    for gateway in gateways {
        assert_eq!(gateway["listeners"][0]["app"], "commands", "{gateway}");
        assert_eq!(gateway["worker_links"], 2, "{gateway}");
    }
    for worker in cluster["workers"].as_array().unwrap() {
        assert_eq!(worker["plugins"][0]["plugin"], "commands", "{worker}");
        assert_eq!(worker["plugins"][0]["instances"], 1, "{worker}");
    }
    assert_eq!(cluster["groups"], json!({"lobby": 2, "quiet": 1}));
    assert_eq!(cluster["uids"], json!(["ada", "bob"]));

    // Every client of both gateways, with its uid and groups.
    let clients = setup.api("/api/clients").await;
    let ids: Vec<&str> = clients
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    for person in [&setup.ada, &setup.bob, &setup.bystander] {
        assert!(
            ids.contains(&person.id.as_str()),
            "{} in {clients}",
            person.id
        );
    }
    let ada = clients
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == setup.ada.id.as_str())
        .unwrap();
    assert_eq!(
        (&ada["uid"], &ada["groups"]),
        (&json!("ada"), &json!(["lobby"]))
    );

    // Found by uid, by group and by id, with gateway and session.
    let found = setup.api("/api/search?q=ada").await;
    assert_eq!(found[0]["id"], setup.ada.id.as_str(), "{found}");
    assert_eq!(found[0]["session"], json!({"nick": "ada-nick"}));
    let gateway0 = setup.cluster.gateways[0].internal_addr.to_string();
    assert_eq!(found[0]["gateway"], gateway0.as_str());
    assert_eq!(
        setup
            .api("/api/search?q=lobby")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let by_id = setup.api(&format!("/api/search?q={}", setup.bob.id)).await;
    assert_eq!(by_id[0]["uid"], "bob", "{by_id}");

    // A trap appears in the plugin table.
    setup.trap().await;
    setup.cluster_until("the trap", traps_shown).await;
    setup.bystander_served().await;

    // The kick closes Ada's socket; everyone else is served.
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/kick", setup.admin))
        .bearer_auth(TOKEN)
        .json(&json!({"client_id": setup.ada.id}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    setup.ada.client.assert_closed().await;
    setup.bystander_served().await;
    assert_eq!(setup.bob.client.ask("echo bob here").await, "bob here");
    setup
        .cluster_until("Ada gone", |c| {
            c["gateways"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["clients"].as_u64().unwrap())
                .sum::<u64>()
                == 2
        })
        .await;
    setup.stop().await;
}

/// The admin page in Chromium: both gateways' clients listed, Ada found by uid with her
/// session, kicked with the button (her socket closes), the trap in the plugin table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_finds_and_kicks_in_chromium() {
    let Some(browser) = Browser::install("admin::the_page_lists_finds_and_kicks_in_chromium").await
    else {
        return;
    };
    let mut setup = Setup::start().await;
    setup.trap().await;
    let names = ["admin-cluster.png", "admin-found.png", "admin-kicked.png"];
    let shots = screenshots_in("admin-browser", &names);
    let page = format!("http://{}/#token={TOKEN}", setup.admin);
    let ids = [&setup.ada.id, &setup.bob.id, &setup.bystander.id].map(String::as_str);
    browser
        .run_script(
            "admin.cjs",
            &[
                &page,
                shots.to_str().unwrap(),
                ids[0],
                ids[1],
                ids[2],
                "ada",
            ],
        )
        .await;
    setup.ada.client.assert_closed().await;
    setup.bystander_served().await;
    assert_eq!(setup.bob.client.ask("echo bob here").await, "bob here");
    for name in names {
        assert_png(&shots.join(name));
    }
    setup.stop().await;
}

/// Two real processes: one runs a register, a gateway and a worker host; the other only a
/// gateway and the admin page, which links to both gateways through the register (it has no
/// worker host's links to use) and sees the worker host of the first process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_only_process_serves_the_whole_cluster() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (register, first, second, admin) = (free_port(), free_port(), free_port(), free_port());
    let _all = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{register}\"\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:{first}\"\napp = \"commands\"\n\
             register = \"127.0.0.1:{register}\"\n[worker]\nplugins = {:?}\n\
             register = \"127.0.0.1:{register}\"\n",
            plugins.path()
        ),
    );
    let gateway_only = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:{second}\"\n\
             app = \"commands\"\nregister = \"127.0.0.1:{register}\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n"
        ),
    );
    gateway_only.wait_for_line(&["admin page at"]).await;
    // None while its links are not up yet (503: no gateway reachable).
    let ask = || async {
        let url = format!("http://127.0.0.1:{admin}/api/cluster");
        let response = reqwest::get(url).await.unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        assert_eq!(response.status(), StatusCode::OK, "no token on loopback");
        Some(response.json::<Value>().await.unwrap())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let cluster = ask()
            .await
            .unwrap_or_else(|| json!({"gateways": [], "workers": []}));
        let gateways = cluster["gateways"].as_array().unwrap().len();
        let workers = cluster["workers"].as_array().unwrap();
        if gateways == 2 && workers.len() == 1 && workers[0]["plugins"][0]["plugin"] == "commands" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway-only process never showed both gateways and the worker host: {cluster}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A client of the gateway-only process is served by the other's worker host meanwhile.
    let addr = SocketAddr::from(([127, 0, 0, 1], second));
    let mut bystander = TestClient::ws(addr, "/").await.unwrap();
    assert_eq!(bystander.ask("echo served").await, "served");
}

/// A real process refuses an admin page off loopback without a token, naming the key.
#[tokio::test]
async fn an_open_admin_page_off_loopback_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("open.toml");
    let config = "[[gateway]]\nlisten = \"ws://127.0.0.1:0\"\napp = \"a\"\n[admin]\nlisten = \"0.0.0.0:0\"\n";
    std::fs::write(&file, config).unwrap();
    let run = tokio::process::Command::new(BIN)
        .args(["start", "-c"])
        .arg(&file)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SHOWN_WITHIN, run)
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG: {err}");
    assert!(err.contains("admin") && err.contains("token"), "{err}");
    assert!(!dir.path().join("open.sock").exists(), "nothing started");
}
