//! The command line as an operator uses it: `wasmgate start -d` in the directory that holds
//! `wasmgate.toml`, then `status`, `connections`, `reload`, `restart` and `stop` from there,
//! finding the server by its configuration file, never by a pid; and a bad configuration
//! refused with its key and file named.

use std::collections::HashMap;
use std::process::Output;
use std::time::{Duration, Instant};

use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{Node, SECRET, connect_ws, free_port};
use wasmgate_tests::daemon::{Daemon, alive, signal, wasmgate};
use wasmgate_tests::http_server::HttpServer;
use wasmgate_tests::polyglot::{self, Language};
use wasmgate_tests::prometheus::scrape;
use wasmgate_tests::{plugins, tools};

use crate::BIN;

#[tokio::test]
async fn a_daemon_is_inspected_reloaded_restarted_and_stopped_by_its_config_file() {
    let (r, g, m) = (free_port(), free_port(), free_port());
    let config = format!(
        "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nname = \"chat\"\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"commands\"\nregister = \"127.0.0.1:{r}\"\n\
         [worker]\nname = \"w1\"\nplugins = \"plugins\"\ninstances = 1\nregister = \"127.0.0.1:{r}\"\n\
         [metrics]\nlisten = \"127.0.0.1:{m}\"\n"
    );
    let (mut daemon, started) =
        Daemon::start(BIN, &config, &[("commands", plugins::COMMANDS)]).await;
    let out = stdout(&started);
    assert!(started.status.success(), "{started:?}");
    assert!(
        out.contains("start in DAEMON mode") && out.contains("Start success"),
        "{out}"
    );
    assert!(
        alive(daemon.pid),
        "the server outlives the command that started it"
    );

    let again = daemon.run(&["start", "-d"]).await;
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(stdout(&again).contains("already running"), "{again:?}");

    let addr = format!("127.0.0.1:{g}").parse().unwrap();
    let mut alice = TestClient::ws(addr, "/").await.unwrap();
    assert_eq!(alice.ask("bind alice").await, "bound alice");
    assert_eq!(alice.ask("join lobby").await, "joined lobby");
    let alice_id = alice.ask("whoami").await;
    let mut bob = TestClient::ws(addr, "/").await.unwrap();
    assert_eq!(bob.ask("join lobby").await, "joined lobby");
    let bob_id = bob.ask("whoami").await;

    let status = daemon.run(&["status"]).await;
    assert!(status.status.success(), "{status:?}");
    let screen = stdout(&status);
    let roles = table(&screen, "ROLES");
    let gateway = row(&roles, "role", "gateway");
    assert_eq!(
        [&gateway["name"], &gateway["listen"], &gateway["app"]],
        ["chat", &format!("ws://127.0.0.1:{g}"), "commands"]
    );
    assert_eq!(
        [
            &gateway["connections"],
            &gateway["groups"],
            &gateway["uids"],
            &gateway["links"],
            &gateway["serving"]
        ],
        ["2", "1", "1", "1", "1"],
        "{screen}"
    );
    let worker = row(&roles, "role", "worker");
    assert_eq!([&worker["name"], &worker["links"]], ["w1", "1"], "{screen}");
    let register = row(&roles, "role", "register");
    assert_eq!(register["listen"], format!("127.0.0.1:{r}"));
    let metrics = row(&roles, "role", "metrics");
    assert_eq!(metrics["listen"], format!("http://127.0.0.1:{m}/metrics"));
    let plugins = table(&screen, "PLUGINS");
    let plugin = row(&plugins, "plugin", "commands");
    assert_eq!([&plugin["worker"], &plugin["instances"]], ["w1", "1"]);
    let version = plugin["version"].clone();
    assert!(
        version.len() == 12 && version.chars().all(|c| c.is_ascii_hexdigit()),
        "{screen}"
    );
    // One app, one instance, the default 256 MiB, twice during a reload.
    assert!(screen.contains("worst case 512.0 MiB"), "{screen}");
    let traffic = &table(&screen, "TRAFFIC")[0];
    let messages_in: u64 = traffic["messages_in"].parse().unwrap();
    assert!(messages_in >= 5, "five commands were sent: {screen}");

    let listed = daemon.run(&["connections"]).await;
    assert!(listed.status.success(), "{listed:?}");
    let clients = table(&stdout(&listed), "WASMGATE CONNECTIONS");
    assert_eq!(clients.len(), 2, "{}", stdout(&listed));
    let a = row(&clients, "client_id", &alice_id);
    assert_eq!(
        [&a["gateway"], &a["uid"], &a["groups"]],
        ["chat", "alice", "lobby"]
    );
    assert!(a["remote"].starts_with("127.0.0.1:"), "{a:?}");
    let b = row(&clients, "client_id", &bob_id);
    assert_eq!([&b["uid"], &b["groups"]], ["-", "lobby"]);
    let json = daemon.run(&["connections", "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(2), "{json}");

    let reload = daemon.run(&["reload"]).await;
    assert!(reload.status.success(), "{reload:?}");
    assert!(stdout(&reload).contains("reloading"), "{reload:?}");
    // The reload re-reads the unchanged file.
    reloads_reach(m, "commands", "unchanged", 1.0).await;
    assert_eq!(alice.ask("echo still served").await, "still served");

    let old_pid = daemon.pid;
    let restart = daemon.restart().await;
    assert!(restart.status.success(), "{restart:?}");
    let out = stdout(&restart);
    assert!(
        out.contains("stop success") && out.contains("Start success"),
        "{out}"
    );
    assert!(!alive(old_pid), "the old process is gone");
    alice.assert_closed().await;
    let new_pid = daemon.pid;
    assert!(alive(new_pid));

    let stop = daemon.run(&["stop"]).await;
    assert!(stop.status.success(), "{stop:?}");
    assert!(stdout(&stop).contains("stop success"), "{stop:?}");
    assert!(!alive(new_pid), "stop returns once the process is gone");
    for leftover in ["wasmgate.sock", "wasmgate.pid"] {
        assert!(
            !daemon.dir().join(leftover).exists(),
            "{leftover} left behind"
        );
    }
    let status = daemon.run(&["status"]).await;
    assert_eq!(
        status.status.code(),
        Some(3),
        "LSB's not running: {status:?}"
    );
    assert!(stdout(&status).contains("not run"), "{status:?}");
    let stop = daemon.run(&["stop"]).await;
    assert!(
        stop.status.success(),
        "stopping a stopped server is fine: {stop:?}"
    );
}

/// Grants are read again at a reload, by SIGHUP as by `wasmgate reload`: an app whose grants
/// changed restarts its instances with them, while its clients stay connected; a file that
/// no longer reads leaves the running grants alone.
/// `status` shows each plugin version the worker host refused, with why, beside the ones
/// serving: a file that is not wasm, a component whose `on-worker-start` fails (with its
/// version), a symlink to `/dev/zero` put in later; a refused version is forgotten once its
/// file is gone. A client of the app that loaded is served throughout.
#[tokio::test]
async fn status_shows_refused_plugin_versions_and_why() {
    let g = free_port();
    let config = every_role(free_port(), g);
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), "not a component").unwrap();
    let plugins = [
        ("commands", plugins::COMMANDS),
        ("broken", junk.path().to_str().unwrap()),
        ("fail-start", plugins::MISBEHAVE),
    ];
    let (daemon, started) = Daemon::start(BIN, &config, &plugins).await;
    assert!(started.status.success(), "{started:?}");
    let addr = format!("127.0.0.1:{g}").parse().unwrap();
    let mut bystander = TestClient::ws(addr, "/").await.unwrap();
    assert_eq!(bystander.ask("echo before").await, "before");

    let plugin_dir = daemon.dir().join("plugins");
    std::os::unix::fs::symlink("/dev/zero", plugin_dir.join("zero.wasm")).unwrap();
    let screen = status_until(&daemon, |s| {
        refused_versions(s).iter().any(|r| r["plugin"] == "zero")
    })
    .await;
    let loaded = table(&screen, "PLUGINS");
    let worker = row(&loaded, "plugin", "commands")["worker"].clone();
    let refused = refused_versions(&screen);
    assert_eq!(refused.len(), 3, "{screen}");
    let broken = row(&refused, "plugin", "broken");
    assert_eq!(
        [&broken["worker"], &broken["version"]],
        [&worker, "-"],
        "{screen}"
    );
    assert!(
        broken["reason"].contains("not_a_WebAssembly_file"),
        "{screen}"
    );
    let failed = row(&refused, "plugin", "fail-start");
    assert_eq!(failed["version"].len(), 12, "{screen}");
    assert!(failed["reason"].contains("did_not_start"), "{screen}");
    let zero = row(&refused, "plugin", "zero");
    assert!(
        zero["reason"].contains("not_a_regular_file_but_a_device"),
        "{screen}"
    );
    assert_eq!(bystander.ask("echo during").await, "during");

    std::fs::remove_file(plugin_dir.join("broken.wasm")).unwrap();
    let screen = status_until(&daemon, |s| refused_versions(s).len() == 2).await;
    assert!(
        refused_versions(&screen)
            .iter()
            .all(|r| r["plugin"] != "broken"),
        "{screen}"
    );
    assert_eq!(bystander.ask("echo after").await, "after");
    assert!(daemon.run(&["stop"]).await.status.success());
}

/// A configuration with every role: the register on port `r`, a WebSocket gateway on `g`
/// serving `commands`, a worker host with one instance per plugin in `plugins/`.
/// `status` on a node with a worker host shows every gateway of the cluster, another
/// process's too, with its clients and their total, and every worker host's plugins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_whole_cluster() {
    let (r, g) = (free_port(), free_port());
    let (daemon, started) =
        Daemon::start(BIN, &every_role(r, g), &[("commands", plugins::COMMANDS)]).await;
    assert!(started.status.success(), "{started:?}");
    let other = free_port();
    let _elsewhere = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:{other}\"\n\
             app = \"commands\"\nregister = \"127.0.0.1:{r}\"\n"
        ),
    );
    let mut there = connect_ws(other).await;
    assert_eq!(there.ask("join far").await, "joined far");
    let mut here = TestClient::ws(format!("127.0.0.1:{g}").parse().unwrap(), "/")
        .await
        .unwrap();
    assert_eq!(here.ask("echo here").await, "here");

    let app_there = format!("commands:{other}");
    let screen = status_until(&daemon, |s| {
        s.contains(" CLUSTER GATEWAYS")
            && table(s, "CLUSTER GATEWAYS")
                .iter()
                .any(|g| g["apps"] == app_there && g["connections"] == "1")
    })
    .await;
    let gateways = table(&screen, "CLUSTER GATEWAYS");
    assert_eq!(gateways.len(), 3, "two gateways and their total: {screen}");
    assert_eq!(
        row(&gateways, "internal", "total")["connections"],
        "2",
        "{screen}"
    );
    let far = row(&gateways, "apps", &app_there);
    assert_eq!([&far["groups"], &far["links"]], ["1", "1"], "{screen}");
    let near = row(&gateways, "apps", &format!("commands:{g}"));
    assert_eq!(near["connections"], "1", "{screen}");
    let workers = table(&screen, "CLUSTER WORKER HOSTS");
    assert_eq!(
        row(&workers, "plugin", "commands")["faults"],
        "0",
        "{screen}"
    );
    assert_eq!(there.ask("echo still").await, "still");
    assert!(daemon.run(&["stop"]).await.status.success());
}

fn every_role(r: u16, g: u16) -> String {
    format!(
        "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"commands\"\n\
         [worker]\nplugins = \"plugins\"\ninstances = 1\n"
    )
}

/// The refused plugin versions `status` shows (none: no such table).
fn refused_versions(screen: &str) -> Vec<HashMap<String, String>> {
    if screen.contains(" REFUSED PLUGIN VERSIONS") {
        table(screen, "REFUSED PLUGIN VERSIONS")
    } else {
        Vec::new()
    }
}

/// Runs `status` until `done` holds of its screen (bounded: a watched directory's change
/// reaches the worker host within a second or so); returns that screen.
async fn status_until(daemon: &Daemon, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let screen = stdout(&daemon.run(&["status"]).await);
        if done(&screen) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "status never got there:\n{screen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_reload_applies_changed_grants_and_keeps_the_clients() {
    let (r, g, m) = (free_port(), free_port(), free_port());
    let config = format!(
        "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"m\"\n\
         [metrics]\nlisten = \"127.0.0.1:{m}\"\n\
         [worker]\nplugins = \"plugins\"\ninstances = 1\n"
    );
    let (daemon, started) = Daemon::start(BIN, &config, &[("m", plugins::MISBEHAVE)]).await;
    assert!(started.status.success(), "{started:?}");
    let addr = format!("127.0.0.1:{g}").parse().unwrap();
    let mut alice = TestClient::ws(addr, "/").await.unwrap();
    assert_eq!(alice.ask("env GREETING").await, "unset");

    let file = daemon.dir().join("wasmgate.toml");
    let granted = format!("{config}[worker.grants.m]\nenv = {{ GREETING = \"hi\" }}\n");
    std::fs::write(&file, &granted).unwrap();
    signal(daemon.pid, "HUP").await;
    reloads_reach(m, "m", "installed", 2.0).await;
    assert_eq!(
        alice.ask("env GREETING").await,
        "hi",
        "the same client, granted"
    );

    // (`wasmgate reload` itself would refuse this file before asking the server.)
    std::fs::write(&file, format!("{granted}typo = 1\n")).unwrap();
    signal(daemon.pid, "HUP").await;
    reloads_reach(m, "m", "unchanged", 1.0).await;
    assert_eq!(
        alice.ask("env GREETING").await,
        "hi",
        "an unreadable file changes nothing"
    );
}

/// A data grant follows a reload too: the key-value store the app lacked is there after
/// `kv = "embedded"` is added and the server hung up on, for the same client.
#[tokio::test]
async fn a_reload_grants_a_key_value_store() {
    reloads_change_grants(&[
        ("", &[("kvset k v", "no kv grant")]),
        (
            "kv = \"embedded\"",
            &[("kvset k v", "ok"), ("kvget k", "value k v")],
        ),
    ])
    .await;
}

/// `status` lists every store and database granted, and says which are files of this worker
/// host (the embedded key-value store, SQLite) rather than servers other hosts share.
#[tokio::test]
async fn status_says_which_data_is_this_hosts_own() {
    let (r, g) = (free_port(), free_port());
    let config = format!(
        "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"commands\"\n\
         [worker]\nplugins = \"plugins\"\ninstances = 1\n\
         [worker.grants.commands]\nkv = \"embedded\"\n\
         sql = {{ main = \"sqlite\", reports = \"postgres://app@127.0.0.1:1/reports\" }}\n\
         [worker.grants.other]\nkv = \"redis://127.0.0.1:1/0\"\n"
    );
    let (daemon, started) = Daemon::start(BIN, &config, &[("commands", plugins::COMMANDS)]).await;
    assert!(started.status.success(), "{started:?}");
    let addr = format!("127.0.0.1:{g}").parse().unwrap();
    let mut client = TestClient::ws(addr, "/").await.unwrap();
    assert_eq!(
        client.ask("kvset k v").await,
        "ok",
        "the embedded store serves"
    );
    let screen = stdout(&daemon.run(&["status"]).await);
    let data = table(&screen, "DATA");
    assert_eq!(data.len(), 4, "{screen}");
    let kv = row(&data, "backend", "embedded");
    assert_eq!(
        (kv["app"].as_str(), kv["shared"].as_str()),
        ("commands", "no")
    );
    assert!(kv["file"].ends_with("data/commands/kv.sqlite"), "{screen}");
    let main = row(&data, "name", "main");
    assert_eq!(
        (main["backend"].as_str(), main["shared"].as_str()),
        ("sqlite", "no")
    );
    assert!(
        main["file"].ends_with("data/commands/main.sqlite"),
        "{screen}"
    );
    let reports = row(&data, "name", "reports");
    assert_eq!(
        (reports["backend"].as_str(), reports["file"].as_str()),
        ("postgres", "-")
    );
    assert!(
        !screen.contains("app@"),
        "no connection URL is shown:\n{screen}"
    );
    let redis = row(&data, "app", "other");
    assert_eq!(
        (redis["backend"].as_str(), redis["shared"].as_str()),
        ("redis", "yes")
    );
    assert_eq!(client.ask("echo still").await, "still");
}

/// A database and an outbound host follow reloads both ways: granted, they serve the same
/// client; revoked, they are refused; granted again, the database still holds what was
/// written (the revoke closed nothing on disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_grants_and_revokes_a_database_and_an_outbound_host() {
    let server = HttpServer::start().await;
    let fetch = format!("fetch {}", server.url("/hello"));
    let granted = format!(
        "sql = {{ main = \"sqlite\" }}\nallowed_outbound_hosts = [\"{}\"]\n",
        server.origin()
    );
    let refused = [
        ("sqlget k", "error sql access-denied"),
        (fetch.as_str(), "error fetch HTTP-request-denied"),
    ];
    reloads_change_grants(&[
        ("", &refused),
        (
            &granted,
            &[
                ("sqlput k v", "stored k"),
                ("sqlget k", "sqlvalue k v"),
                (&fetch, "fetched 200 hello"),
            ],
        ),
        ("", &refused),
        (&granted, &[("sqlget k", "sqlvalue k v")]),
    ])
    .await;
    assert_eq!(server.requests(), 1, "only the granted fetch arrived");
}

/// Starts the `commands` app, then for each of `steps` (its `[worker.grants.commands]` keys;
/// "" for none, and the first as started) writes them into the file and hangs up on the server
/// (SIGHUP), then asks one client, connected from the start, each question and expects an
/// answer containing its text; a bystander, connected from the start too, is answered after
/// every reload: a change of grants drops nobody.
async fn reloads_change_grants(steps: &[(&str, &[(&str, &str)])]) {
    let (r, g, m) = (free_port(), free_port(), free_port());
    let config = format!(
        "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"commands\"\n\
         [metrics]\nlisten = \"127.0.0.1:{m}\"\n\
         [worker]\nplugins = \"plugins\"\ninstances = 1\n"
    );
    let with = |grants: &str| format!("{config}[worker.grants.commands]\n{grants}\n");
    let first = with(steps[0].0);
    let (daemon, started) = Daemon::start(BIN, &first, &[("commands", plugins::COMMANDS)]).await;
    assert!(started.status.success(), "{started:?}");
    let addr = format!("127.0.0.1:{g}").parse().unwrap();
    let mut client = TestClient::ws(addr, "/").await.unwrap();
    let mut bystander = TestClient::ws(addr, "/").await.unwrap();
    for (i, (grants, questions)) in steps.iter().enumerate() {
        if i > 0 {
            std::fs::write(daemon.dir().join("wasmgate.toml"), with(grants)).unwrap();
            signal(daemon.pid, "HUP").await;
            // The start installed the first version; each reload with new grants one more.
            reloads_reach(m, "commands", "installed", (i + 1) as f64).await;
        }
        for (question, answer) in *questions {
            let reply = client.ask(question).await;
            assert!(
                reply.contains(answer),
                "with grants {grants:?}, {question:?} got {reply:?}"
            );
        }
        assert_eq!(bystander.ask(&format!("echo {i}")).await, i.to_string());
    }
}

/// `start -d` returns once the plugins present at start serve: with a Python plugin and a
/// cold compile cache that takes seconds, and a client that connects meanwhile is held and
/// answered, not closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_returns_once_a_cold_python_plugin_serves() {
    const TEST: &str = "cli::start_returns_once_a_cold_python_plugin_serves";
    let built = tokio::task::spawn_blocking(|| polyglot::commands(Language::Python))
        .await
        .unwrap();
    let Some(plugin) = tools::or_skip(built, TEST) else {
        return;
    };
    let (r, g) = (free_port(), free_port());
    let config = format!(
        "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"commands\"\n\
         [worker]\nplugins = \"plugins\"\ninstances = 1\ncache = \"cold-cache\"\n"
    );
    let addr = format!("127.0.0.1:{g}").parse().unwrap();
    let early = tokio::spawn(async move {
        let mut client = loop {
            if let Ok(client) = TestClient::ws(addr, "/").await {
                break client;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let connected = Instant::now();
        client.send("echo early").await.unwrap();
        (
            connected,
            client.recv_within(Duration::from_secs(120)).await,
        )
    });
    let (daemon, started) =
        Daemon::start(BIN, &config, &[("commands", plugin.to_str().unwrap())]).await;
    let returned = Instant::now();
    assert!(started.status.success(), "{started:?}");
    let status = stdout(&daemon.run(&["status"]).await);
    let plugins = table(&status, "PLUGINS");
    let log = std::fs::read_to_string(daemon.dir().join("wasmgate.log")).unwrap_or_default();
    assert!(
        !plugins.is_empty(),
        "ready before the plugin served:\n{status}\n{log}"
    );
    assert_eq!(row(&plugins, "plugin", "commands")["instances"], "1");
    let mut client = TestClient::ws(addr, "/").await.unwrap();
    assert_eq!(client.ask("echo now").await, "now");
    let (connected, reply) = tokio::time::timeout(Duration::from_secs(150), early)
        .await
        .expect("the early client is answered")
        .unwrap();
    assert!(
        connected < returned,
        "the early client connected while the plugin compiled"
    );
    assert_eq!(reply.as_deref().ok(), Some("early"));
}

/// Roles of one file started alone are found by the plain commands: `status` shows each,
/// `stop` stops each; the start's hint names the role, and so does every label.
#[tokio::test]
async fn roles_started_alone_are_found_without_naming_them() {
    let (r, g) = (free_port(), free_port());
    let config = every_role(r, g);
    let (daemon, started) = Daemon::start_role(
        BIN,
        &config,
        &[("commands", plugins::COMMANDS)],
        Some("register"),
    )
    .await;
    assert!(
        stdout(&started).contains("\"wasmgate stop --role register\""),
        "{started:?}"
    );
    let mut pids = vec![daemon.pid];
    for role in ["gateway", "worker"] {
        let out = daemon.run(&["start", "-d", "--role", role]).await;
        assert!(out.status.success(), "{role}: {out:?}");
        assert!(
            stdout(&out).contains(&format!("wasmgate[wasmgate.toml][{role}]")),
            "{out:?}"
        );
        let pid = std::fs::read_to_string(daemon.dir().join(format!("wasmgate-{role}.pid")));
        pids.push(pid.unwrap().trim().parse().unwrap());
    }
    let mut client = TestClient::ws(format!("127.0.0.1:{g}").parse().unwrap(), "/")
        .await
        .unwrap();
    assert_eq!(client.ask("echo split").await, "split");

    let status = daemon.run(&["status"]).await;
    assert!(status.status.success(), "{status:?}");
    let screen = stdout(&status);
    for role in ["gateway", "register", "worker"] {
        assert!(
            screen.contains(&format!("wasmgate[wasmgate.toml][{role}]")),
            "{screen}"
        );
    }
    let stop = daemon.run(&["stop"]).await;
    assert!(stop.status.success(), "{stop:?}");
    for pid in pids {
        assert!(!alive(pid), "plain stop stops every role of the file");
    }
}

/// Roles in one file find that file's register wherever it listens: moving `[register]
/// listen` off the default port needs no `register = …` beside it.
#[tokio::test]
async fn roles_use_the_register_of_their_file() {
    let (r, g) = (free_port(), free_port());
    let config = format!(
        "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"commands\"\n\
         [worker]\nplugins = \"plugins\"\ninstances = 1\n"
    );
    let (_daemon, started) = Daemon::start(BIN, &config, &[("commands", plugins::COMMANDS)]).await;
    assert!(started.status.success(), "{started:?}");
    let mut client = TestClient::ws(format!("127.0.0.1:{g}").parse().unwrap(), "/")
        .await
        .unwrap();
    assert_eq!(client.ask("echo served").await, "served");
}

/// Roles that reach none of their registers say so: `status` lists the unreachable register
/// in each role's rows (and `--json`), the log has an error naming it (not before a few
/// seconds); once a register listens there, the rows go and the gateway serves.
#[tokio::test]
async fn status_shows_a_register_nobody_listens_on() {
    let (r, g, m) = (free_port(), free_port(), free_port());
    let register = format!("127.0.0.1:{r}");
    let config = format!(
        "secret = \"{SECRET}\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\n\
         app = \"commands\"\nregister = \"{register}\"\n\
         [worker]\nplugins = \"plugins\"\ninstances = 1\nregister = \"{register}\"\n\
         start_timeout = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:{m}\"\n"
    );
    let metrics = format!("127.0.0.1:{m}").parse().unwrap();
    let (daemon, started) = Daemon::start(BIN, &config, &[("commands", plugins::COMMANDS)]).await;
    assert!(started.status.success(), "{started:?}");
    let screen = status_until(&daemon, |s| {
        s.contains(" REGISTERS UNREACHABLE")
            && table(s, "REGISTERS UNREACHABLE").iter().all(|o| {
                o["none_reachable"].starts_with("yes_for_") && o["none_reachable"] != "yes_for_0s"
            })
    })
    .await;
    let outages = table(&screen, "REGISTERS UNREACHABLE");
    assert_eq!(outages.len(), 2, "{screen}");
    for role in ["gateway", "worker"] {
        assert_eq!(
            row(&outages, "role", role)["register"],
            register,
            "{screen}"
        );
    }
    let json = daemon.run(&["status", "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        json["gateways"][0]["registers"]["unreachable"][0]["register"], register,
        "{json}"
    );
    assert!(
        json["worker"]["registers"]["none_reachable_secs"].as_u64() >= Some(1),
        "{json}"
    );

    // The error comes once no register has been reachable for 5 s, naming it.
    let log_path = daemon.dir().join("wasmgate.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    let errors = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let errors: Vec<String> = log
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains("no register reachable"))
            .map(str::to_owned)
            .collect();
        if errors.len() >= 2 || Instant::now() > deadline {
            break errors;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(errors.len(), 2, "one per role: {errors:?}");
    assert!(errors.iter().all(|e| e.contains(&register)), "{errors:?}");
    let during = scrape(metrics).await;
    for role in ["gateway", "worker"] {
        let labels = [("role", role)];
        assert_eq!(during.count("wasmgate_registers_unreachable", &labels), 1.0);
        assert!(during.count("wasmgate_register_outage_seconds", &labels) >= 5.0);
    }
    // Without a register the worker host never finds its own gateway: the start said so.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("waiting for gateways of this process not linked yet"),
        "{log}"
    );

    let _register = Node::start(
        BIN,
        &format!("secret = \"{SECRET}\"\n[register]\nlisten = \"{register}\"\n"),
    );
    status_until(&daemon, |s| !s.contains(" REGISTERS UNREACHABLE")).await;
    let after = scrape(metrics).await;
    assert_eq!(after.count("wasmgate_registers_unreachable", &[]), 0.0);
    assert_eq!(after.count("wasmgate_register_outage_seconds", &[]), 0.0);
    let mut client = TestClient::ws(format!("127.0.0.1:{g}").parse().unwrap(), "/")
        .await
        .unwrap();
    assert_eq!(client.ask("echo found").await, "found");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("a register is reachable again"), "{log}");
}

/// Waits, boundedly, until `plugin`'s reloads with `outcome` reach `count`: nothing outside
/// the process says when a reload is done except this counter.
async fn reloads_reach(metrics_port: u16, plugin: &str, outcome: &str, count: f64) {
    let labels = [("plugin", plugin), ("outcome", outcome)];
    let mut seen = 0.0;
    for _ in 0..400 {
        seen = scrape(format!("127.0.0.1:{metrics_port}").parse().unwrap())
            .await
            .count("wasmgate_plugin_reloads_total", &labels);
        if seen >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("plugin reloads with outcome {outcome}: {seen}, never {count}");
}

#[tokio::test]
async fn a_bad_configuration_is_refused_naming_its_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    for (config, key) in [
        ("[worker]\nplugin = \"plugins\"\n", "plugin"),
        ("[log]\nlevel = \"loud\"\n", "log.level"),
    ] {
        std::fs::write(dir.path().join("prod.toml"), config).unwrap();
        let out = wasmgate(BIN, dir.path(), &["start", "-c", "prod.toml"]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "EX_CONFIG: {out:?}");
        assert!(err.contains(key) && err.contains("prod.toml"), "{err}");
        assert!(!dir.path().join("prod.sock").exists(), "nothing started");
    }
    let out = wasmgate(BIN, dir.path(), &["start", "-c", "missing.toml"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(66), "EX_NOINPUT: {out:?}");
    assert_eq!(err.matches("No such file").count(), 1, "said once: {err}");
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rows of the table under the rule whose title starts with `title`, each a map from
/// column name to cell.
fn table(screen: &str, title: &str) -> Vec<HashMap<String, String>> {
    let mut lines = screen
        .lines()
        .skip_while(|l| !(l.starts_with("---") && l.contains(&format!(" {title}"))))
        .skip(1);
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_else(|| panic!("no {title} table in:\n{screen}"))
        .split_whitespace()
        .collect();
    lines
        .take_while(|l| !l.starts_with("---"))
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cells.len(), header.len(), "{l:?} under {header:?}");
            header
                .iter()
                .zip(cells)
                .map(|(h, c)| (h.to_string(), c.to_owned()))
                .collect()
        })
        .collect()
}

/// The one row of `rows` whose `column` is `value`.
fn row<'a>(
    rows: &'a [HashMap<String, String>],
    column: &str,
    value: &str,
) -> &'a HashMap<String, String> {
    let mut found = rows.iter().filter(|r| r[column] == value);
    let first = found.next();
    assert!(
        found.next().is_none(),
        "several rows with {column} = {value}"
    );
    first.unwrap_or_else(|| panic!("no row with {column} = {value} in {rows:?}"))
}
