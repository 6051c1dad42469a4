//! A cluster-wide query that misses a gateway says so: with two gateways in processes of their
//! own, one frozen with SIGSTOP, a count through the push API and through a plugin returns
//! within its bound, flagged partial and naming the frozen gateway, while the other gateway's client keeps its echoes;
//! once thawed, the answer is whole again.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmgate_tests::cluster::{Node, PluginsDir, SECRET, connect_ws, free_port};
use wasmgate_tests::plugins;

use crate::BIN;

/// The query's own bound (`links::QUERY_TIMEOUT`, 1 s) and room for a loaded machine.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// `get_all_client_count` through the push API on `push`: the answer, and how long it took.
async fn count(push: u16) -> (Value, Duration) {
    let asked = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{push}/api/get_all_client_count"))
        .json(&json!({}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("push API reachable");
    assert_eq!(response.status(), StatusCode::OK);
    (response.json().await.expect("JSON"), asked.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_missing_a_frozen_gateway_is_flagged_partial_and_names_it() {
    let plugins = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    let (r, push) = (free_port(), free_port());
    let (a, b, b_internal) = (free_port(), free_port(), free_port());
    let register_at = format!("register = \"127.0.0.1:{r}\"");
    let _register = Node::start(
        BIN,
        &format!("secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n"),
    );
    let gateway = |port: u16, keys: &str| {
        format!(
            "secret = \"{SECRET}\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:{port}\"\n\
             app = \"commands\"\n{register_at}\n{keys}\n"
        )
    };
    let _bystanders = Node::start(BIN, &gateway(a, ""));
    let frozen = Node::start(BIN, &gateway(b, &format!("internal_port = {b_internal}")));
    let _worker = Node::start(
        BIN,
        &format!(
            "secret = \"{SECRET}\"\n[worker]\nplugins = {:?}\ninstances = 1\n{register_at}\n\
             [push]\nlisten = \"127.0.0.1:{push}\"\n",
            plugins.path()
        ),
    );
    let mut bystander = connect_ws(a).await;
    let mut held = connect_ws(b).await;
    assert_eq!(held.ask("echo held").await, "held");
    let whole = json!({"result": 2});
    for _ in 0..200 {
        if count(push).await.0 == whole {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(push).await.0, whole);

    frozen.signal("STOP").await;
    let (answer, took) = count(push).await;
    let missing = format!("127.0.0.1:{b_internal}");
    assert_eq!(
        answer,
        json!({"result": 1, "partial": true, "missing_gateways": [missing]})
    );
    assert!(took < ANSWER_WITHIN, "the count took {took:?}");
    assert_eq!(bystander.ask("echo while frozen").await, "while frozen");
    // The same through a plugin: `answers.missing-gateways` after `get-all-client-count`.
    let asked = Instant::now();
    assert_eq!(
        bystander.ask("total").await,
        format!("total 1 partial {missing}")
    );
    assert!(asked.elapsed() < ANSWER_WITHIN, "{:?}", asked.elapsed());

    frozen.signal("CONT").await;
    assert_eq!(count(push).await.0, whole);
    assert_eq!(bystander.ask("total").await, "total 2");
    assert_eq!(bystander.ask("echo after").await, "after");
    assert_eq!(held.ask("echo thawed").await, "thawed");
}
