//! `wasmgate:plugin/sql` end to end, through the reference plugin's `sqlput`, `sqlget` and
//! `sqlslow`: a denial without a grant, a slow statement cut at `process_timeout` (SQLite and
//! PostgreSQL) with the next event served, and a real PostgreSQL server (Debian's, started
//! by the test; skipped loudly where it cannot be installed), also while it is down; and the
//! conformance suite's `sql` section against PostgreSQL for the Rust, Python and JavaScript
//! builds of the reference plugin. Every test keeps a bystander client whose replies must
//! keep arriving.

use std::time::{Duration, Instant};

use wasmgate::config::Protocol;
use wasmgate::metrics;
use wasmgate_tests::client::TestClient;
use wasmgate_tests::cluster::Cluster;
use wasmgate_tests::polyglot::{self, Language};
use wasmgate_tests::postgres::Postgres;
use wasmgate_tests::{plugins, tools};

use crate::conformance;

/// A one-instance cluster of the reference plugin with `worker` added to `[worker]`; two
/// clients on the same instance: the one under test and a bystander.
async fn cluster(worker: &str) -> (Cluster, TestClient, TestClient) {
    let app = ("commands", plugins::COMMANDS);
    let cluster = Cluster::start_with_worker(app, &[Protocol::Ws], 1, 1, worker).await;
    let ws = cluster.gateways[0].client_addr;
    let a = TestClient::ws(ws, "/").await.unwrap();
    let bystander = TestClient::ws(ws, "/").await.unwrap();
    (cluster, a, bystander)
}

/// `[worker]` keys: a one-second `process_timeout`, one connection per database (so a
/// statement that was not really stopped would hold up the next call), and `main` granted.
fn worker(main: &str) -> String {
    format!(
        "process_timeout = \"1s\"\n[worker.sql]\nmax_connections = 1\n\
         [worker.grants.commands]\nsql = {{ main = {main:?} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_not_granted_is_refused_with_the_config_key() {
    let (cluster, mut a, mut bystander) = cluster("").await;
    let denied = metrics::data_calls("commands", "sql", "denied");
    let reply = a.ask("sqlput k v").await;
    assert!(
        reply.starts_with("error sql access-denied ")
            && reply.contains("`main`")
            && reply.contains("[worker.grants.commands] sql"),
        "{reply}"
    );
    assert!(
        a.ask("sqlget k")
            .await
            .starts_with("error sql access-denied ")
    );
    assert_eq!(bystander.ask("echo still here").await, "still here");
    assert!(metrics::data_calls("commands", "sql", "denied") >= denied + 2);
    // Nothing was created for a database that was refused.
    assert!(!cluster.data().join("commands").exists());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_rows_in_a_private_file() {
    let (cluster, mut a, mut bystander) = cluster(&worker("sqlite")).await;
    assert_eq!(a.ask("sqlget k").await, "none");
    assert_eq!(a.ask("sqlput k first value").await, "stored k");
    assert_eq!(bystander.ask("sqlget k").await, "sqlvalue k first value");
    assert_eq!(a.ask("sqlput k second").await, "stored k");
    assert_eq!(bystander.ask("sqlget k").await, "sqlvalue k second");
    use std::os::unix::fs::PermissionsExt;
    let file = cluster.data().join("commands").join("main.sqlite");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    cluster.stop().await;
}

/// `sqlslow` runs far past the 1 s `process_timeout`: its callback is cut, the statement
/// stopped, and with one connection per database the next `sqlput` still gets through.
async fn slow_statement_is_cut(main: &str) {
    let (cluster, mut a, mut bystander) = cluster(&worker(main)).await;
    assert_eq!(a.ask("sqlput k v").await, "stored k");
    let timeouts = metrics::data_calls("commands", "sql", "timeout");
    let started = Instant::now();
    a.send("sqlslow").await.unwrap();
    // The bystander shares the instance: it is served once the slow callback is cut.
    assert_eq!(bystander.ask("echo after").await, "after");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the bystander waited {waited:?} behind a 1 s process_timeout"
    );
    assert!(
        a.recv_within(Duration::from_millis(100)).await.is_err(),
        "the cut callback replied"
    );
    assert_eq!(a.ask("sqlput k again").await, "stored k");
    assert_eq!(a.ask("sqlget k").await, "sqlvalue k again");
    assert!(metrics::data_calls("commands", "sql", "timeout") > timeouts);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_slow_statement_is_cut_at_process_timeout() {
    slow_statement_is_cut("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_slow_statement_is_cut_at_process_timeout() {
    let started = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let Some(pg) = tools::or_skip(
        started,
        "data_sql::postgres_a_slow_statement_is_cut_at_process_timeout",
    ) else {
        return;
    };
    slow_statement_is_cut(&pg.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_rows_and_a_server_down_is_an_error() {
    let started = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let Some(pg) = tools::or_skip(
        started,
        "data_sql::postgres_stores_rows_and_a_server_down_is_an_error",
    ) else {
        return;
    };
    let (cluster, mut a, mut bystander) = cluster(&worker(&pg.url())).await;
    assert_eq!(a.ask("sqlget k").await, "none");
    assert_eq!(a.ask("sqlput k first value").await, "stored k");
    assert_eq!(bystander.ask("sqlget k").await, "sqlvalue k first value");
    assert_eq!(a.ask("sqlput k 🌍 second").await, "stored k");
    assert_eq!(bystander.ask("sqlget k").await, "sqlvalue k 🌍 second");

    let errors = metrics::data_calls("commands", "sql", "error");
    tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let reply = a.ask("sqlget k").await;
    assert!(reply.starts_with("error sql io "), "{reply}");
    assert_eq!(bystander.ask("echo still here").await, "still here");
    assert!(a.ask("sqlput k v").await.starts_with("error sql "));
    assert!(metrics::data_calls("commands", "sql", "error") > errors);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_postgres_rust() {
    let test = "data_sql::conformance_against_postgres_rust";
    conformance_against_postgres(plugins::COMMANDS, test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_postgres_python() {
    let test = "data_sql::conformance_against_postgres_python";
    polyglot_against_postgres(Language::Python, test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_postgres_javascript() {
    let test = "data_sql::conformance_against_postgres_javascript";
    polyglot_against_postgres(Language::JavaScript, test).await;
}

async fn polyglot_against_postgres(language: Language, test: &str) {
    let built = tokio::task::spawn_blocking(move || polyglot::commands(language))
        .await
        .unwrap();
    if let Some(plugin) = tools::or_skip(built, test) {
        conformance_against_postgres(plugin.to_str().unwrap(), test).await;
    }
}

/// The conformance suite's `sql` section for one build of the reference plugin, its `main`
/// a fresh PostgreSQL server; the rows it wrote are then read back with `psql`.
async fn conformance_against_postgres(plugin: &str, test: &str) {
    let started = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let Some(pg) = tools::or_skip(started, test) else {
        return;
    };
    let grant = format!(
        "[worker.grants.commands]\nsql = {{ main = {:?} }}\n",
        pg.url()
    );
    let gateways = [Protocol::Ws, Protocol::Text];
    let cluster = Cluster::start_with_worker(("commands", plugin), &gateways, 1, 2, &grant).await;
    let ws = cluster.gateways[0].client_addr;
    let mut a = TestClient::ws(ws, "/").await.unwrap();
    let mut b = TestClient::text(cluster.gateways[1].client_addr)
        .await
        .unwrap();
    let mut c = TestClient::ws(ws, "/").await.unwrap();
    let mut bystander = TestClient::ws(ws, "/").await.unwrap();
    conformance::sql(&mut a, &mut b, &mut c).await;
    assert_eq!(bystander.ask("echo still here").await, "still here");
    let rows = tokio::task::spawn_blocking(move || {
        pg.query("select k || '=' || v from commands_kv order by k")
    })
    .await
    .unwrap();
    assert_eq!(
        rows, "greeting=héllo 🌍\nother=x",
        "the rows are in PostgreSQL"
    );
    cluster.stop().await;
}
