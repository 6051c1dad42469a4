//! The end-to-end tests, one module per feature area, in one test binary: each binary links
//! wasmtime, so one binary instead of one per file saves most of the suite's link time and
//! disk. Helpers every area uses are in `wasmgate_tests`; what needs the test harness is here.
//!
//! Every test shares this process, and libtest runs them on parallel threads (as many as the
//! machine has cores). A test must not change the process for the others (no environment
//! variables, no global subscriber), and what it measures of the process goes through
//! [`in_own_process`].

mod admin;
mod app_routing;
mod bind_advertise;
mod chat_browser;
mod cli;
mod client_js;
mod conformance;
mod data_http;
mod data_kv;
mod data_sql;
mod gatewayworker;
mod heartbeat;
mod hostile_clients;
mod hostile_http;
mod hostile_links;
mod hostile_plugins;
mod hot_reload;
mod internal_links;
mod internal_tls;
mod limits;
mod lost_machines;
mod lost_peers;
mod metrics;
mod nats_cluster;
mod partial_queries;
mod plugins_built;
mod polyglot_reload;
mod presence;
mod protocol;
mod protocols;
mod push;
mod push_load;
mod reuse_port;
mod runtime;
mod scaffold;
mod shutdown;
mod simulated_hosts;
mod topology;

use std::process::Command;
use std::time::Duration;

/// The real command, for the tests that run it as its own process.
const BIN: &str = env!("CARGO_BIN_EXE_wasmgate-node");

/// The helper that holds thousands of clients for the cluster tests (`wasmgate_tests::crowd`).
const CROWD: &str = env!("CARGO_BIN_EXE_crowd");

/// How long a client must stay silent to show that a message was not sent to it.
const QUIET: Duration = Duration::from_millis(300);

/// Set in the process [`in_own_process`] starts, to the test it runs.
const OWN_PROCESS: &str = "WASMGATE_TEST_OWN_PROCESS";

/// Runs `body` in a process that runs no other test: this binary started again with only
/// `test` (its path, `module::name`) selected. For a test that measures the process itself,
/// such as its resident set, which the tests running beside it here would change.
fn in_own_process(test: &str, body: impl FnOnce()) {
    if std::env::var_os(OWN_PROCESS).is_some_and(|selected| selected == test) {
        return body();
    }
    let output = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([test, "--exact", "--nocapture"])
        .env(OWN_PROCESS, test)
        .output()
        .expect("starting the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Into this test's captured output: shown if it fails, or with `--nocapture`.
    print!("{stdout}");
    eprint!("{stderr}");
    // The panic's own words, in the failure message too: a CI log may keep only that.
    let why = stdout
        .lines()
        .chain(stderr.lines())
        .skip_while(|line| !line.contains("panicked at"))
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        output.status.success(),
        "{test} failed in its own process: {why}"
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{test} did not run in its own process: no test has that path"
    );
}
