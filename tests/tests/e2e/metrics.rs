//! `/metrics` as Prometheus scrapes it: the text parses strictly, every family is declared with
//! its type, and the numbers follow what clients and plugins do, exactly.

use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::{SECRET, free_port};
use wasmgate_tests::daemon::Daemon;
use wasmgate_tests::plugins;
use wasmgate_tests::prometheus::scrape;

use crate::BIN;

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_follow_the_clients() {
    let (r, chat, rough, m) = (free_port(), free_port(), free_port(), free_port());
    let config = format!(
        "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nname = \"chat\"\nlisten = \"ws://127.0.0.1:{chat}\"\napp = \"commands\"\nregister = \"127.0.0.1:{r}\"\n\
         [[gateway]]\nname = \"rough\"\nlisten = \"ws://127.0.0.1:{rough}\"\napp = \"misbehave\"\nregister = \"127.0.0.1:{r}\"\n\
         [worker]\nplugins = \"plugins\"\ninstances = 1\nprocess_timeout = \"500ms\"\nregister = \"127.0.0.1:{r}\"\n\
         [metrics]\nlisten = \"127.0.0.1:{m}\"\n"
    );
    let apps = [
        ("commands", plugins::COMMANDS),
        ("misbehave", plugins::MISBEHAVE),
    ];
    let (_daemon, started) = Daemon::start(BIN, &config, &apps).await;
    assert!(started.status.success(), "{started:?}");
    let metrics = format!("127.0.0.1:{m}").parse().unwrap();

    let before = scrape(metrics).await;
    let mut client = TestClient::ws(format!("127.0.0.1:{chat}").parse().unwrap(), "/")
        .await
        .unwrap();
    for i in 0..5 {
        assert_eq!(client.ask(&format!("echo m{i}")).await, format!("m{i}"));
    }
    assert_eq!(client.ask("join lobby").await, "joined lobby");
    assert_eq!(client.ask("bind alice").await, "bound alice");
    let id = client.ask("whoami").await;
    let during = scrape(metrics).await;
    // Every family a dashboard needs is there with its type (labelled ones from their first
    // sample on).
    for (family, kind) in [
        ("wasmgate_connections_opened_total", "counter"),
        ("wasmgate_connections_closed_total", "counter"),
        ("wasmgate_messages_received_total", "counter"),
        ("wasmgate_messages_sent_total", "counter"),
        ("wasmgate_received_bytes_total", "counter"),
        ("wasmgate_sent_bytes_total", "counter"),
        ("wasmgate_connections", "gauge"),
        ("wasmgate_groups", "gauge"),
        ("wasmgate_uids", "gauge"),
        ("wasmgate_plugin_calls_total", "counter"),
        ("wasmgate_plugin_call_duration_seconds", "histogram"),
        ("wasmgate_plugin_reloads_total", "counter"),
        ("wasmgate_plugin_loaded_timestamp_seconds", "gauge"),
        ("wasmgate_slow_clients_dropped_total", "counter"),
        ("wasmgate_heartbeat_timeouts_total", "counter"),
        ("wasmgate_gateway_worker_links", "gauge"),
        ("wasmgate_links_to_gateways", "gauge"),
        ("wasmgate_build_info", "gauge"),
    ] {
        assert_eq!(
            during.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }

    let delta = |name: &str, labels: &[(&str, &str)]| {
        during.count(name, labels) - before.count(name, labels)
    };
    // Eight commands of 61 bytes in all; eight replies: five of 2 bytes, `joined lobby`,
    // `bound alice` and the client id.
    assert_eq!(delta("wasmgate_messages_received_total", &[]), 8.0);
    assert_eq!(delta("wasmgate_received_bytes_total", &[]), 61.0);
    assert_eq!(delta("wasmgate_messages_sent_total", &[]), 8.0);
    assert_eq!(
        delta("wasmgate_sent_bytes_total", &[]),
        (10 + 12 + 11 + id.len()) as f64
    );
    assert_eq!(delta("wasmgate_connections_opened_total", &[]), 1.0);
    let on_chat = [("gateway", "chat")];
    for gauge in ["wasmgate_connections", "wasmgate_groups", "wasmgate_uids"] {
        assert_eq!(during.value(gauge, &on_chat), Some(1.0), "{gauge}");
    }
    assert_eq!(
        during.value("wasmgate_connections", &[("gateway", "rough")]),
        Some(0.0)
    );
    assert_eq!(
        during.value("wasmgate_gateway_worker_links", &on_chat),
        Some(1.0)
    );
    let worker = [("role", "worker")];
    assert_eq!(
        during.value("wasmgate_links_to_gateways", &worker),
        Some(2.0)
    );
    let messages = [("plugin", "commands"), ("event", "on-message")];
    let ok = [messages[0], messages[1], ("outcome", "ok")];
    assert_eq!(delta("wasmgate_plugin_calls_total", &ok), 8.0);
    let timed = "wasmgate_plugin_call_duration_seconds_count";
    assert_eq!(delta(timed, &messages), 8.0);
    let all_under_inf = [messages[0], messages[1], ("le", "+Inf")];
    assert_eq!(
        delta(
            "wasmgate_plugin_call_duration_seconds_bucket",
            &all_under_inf
        ),
        8.0
    );
    let connect = [
        ("plugin", "commands"),
        ("event", "on-connect"),
        ("outcome", "ok"),
    ];
    assert_eq!(delta("wasmgate_plugin_calls_total", &connect), 1.0);
    let loaded = [("plugin", "commands")];
    assert!(during.count("wasmgate_plugin_loaded_timestamp_seconds", &loaded) > 1.7e9);
    let installed = [("plugin", "commands"), ("outcome", "installed")];
    assert_eq!(
        during.value("wasmgate_plugin_reloads_total", &installed),
        Some(1.0)
    );

    // The gateway forgets a client before closing its socket, so once the client sees the
    // close, the numbers show it gone.
    client.send(&format!("kick {id}")).await.unwrap();
    client.assert_closed().await;
    let after = scrape(metrics).await;
    for gauge in ["wasmgate_connections", "wasmgate_groups", "wasmgate_uids"] {
        assert_eq!(after.value(gauge, &on_chat), Some(0.0), "{gauge}");
    }
    assert_eq!(
        after.count("wasmgate_connections_closed_total", &[])
            - before.count("wasmgate_connections_closed_total", &[]),
        1.0
    );

    // A trap and a timeout are counted as what they are; the echo behind each proves the
    // call before it has ended.
    let mut rough = TestClient::ws(format!("127.0.0.1:{rough}").parse().unwrap(), "/")
        .await
        .unwrap();
    rough.send("trap").await.unwrap();
    assert_eq!(rough.ask("echo after trap").await, "after trap");
    rough.send("loop").await.unwrap();
    assert_eq!(rough.ask("echo after loop").await, "after loop");
    let faults = scrape(metrics).await;
    let outcome = |o| {
        faults.count(
            "wasmgate_plugin_calls_total",
            &[
                ("plugin", "misbehave"),
                ("event", "on-message"),
                ("outcome", o),
            ],
        )
    };
    assert_eq!(
        [outcome("trap"), outcome("timeout"), outcome("ok")],
        [1.0, 1.0, 2.0]
    );
    let labels = faults.label_names();
    for unbounded in ["client_id", "uid", "group"] {
        assert!(
            !labels.contains(unbounded),
            "a {unbounded} label: {labels:?}"
        );
    }
}
