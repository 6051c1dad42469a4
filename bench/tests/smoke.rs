//! Runs every scenario of `wasmgate-bench` for about a second with a handful of clients, so
//! the tool keeps working as wasmgate changes. These check that each scenario completes
//! against both servers and reports its figures, not how fast anything is.

use std::process::Command;

use wasmgate_tests::tools::Skip;

const BIN: &str = env!("CARGO_BIN_EXE_wasmgate-bench");

/// Runs `wasmgate-bench <args>` for one short run and returns its table.
fn bench(args: &[&str]) -> String {
    let args = [
        args,
        &["--runs", "1", "--warmup", "0.2", "--duration", "0.8"],
    ]
    .concat();
    let stdout = succeed(&args);
    assert!(stdout.starts_with("| scenario | metric | wasmgate | baseline | ratio |"));
    stdout
}

/// Runs `wasmgate-bench <args>`, which must succeed, and returns what it printed.
fn succeed(args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(args)
        .output()
        .expect("wasmgate-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "wasmgate-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The row of `metric`, split into its cells.
fn row(table: &str, metric: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| l.split('|').nth(2).is_some_and(|m| m.trim() == metric))
        .unwrap_or_else(|| panic!("no {metric} row in\n{table}"));
    line.split('|').map(|c| c.trim().to_owned()).collect()
}

/// The row has a positive figure for both servers and a ratio.
fn compared(table: &str, metric: &str) {
    let cells = row(table, metric);
    for cell in &cells[3..5] {
        assert!(
            cell.parse::<f64>().is_ok_and(|v| v > 0.0),
            "{metric}: {cells:?}"
        );
    }
    assert!(cells[5].ends_with('×'), "{metric}: {cells:?}");
}

#[test]
fn echo_over_websocket_and_text() {
    let ws = bench(&["echo", "--clients", "4"]);
    for metric in ["msgs/s", "server CPU µs/msg", "client CPU µs/msg"] {
        compared(&ws, metric);
    }
    compared(
        &bench(&[
            "echo",
            "--clients",
            "4",
            "--proto",
            "text",
            "--layout",
            "split",
        ]),
        "p99 µs",
    );
}

#[test]
fn echo_against_the_other_websocket_libraries() {
    // The default `echo` baseline is fastwebsockets (`WsLib::cheapest`).
    for lib in ["tungstenite", "tokio-websockets"] {
        compared(
            &bench(&["echo", "--clients", "4", "--baseline-ws", lib]),
            "msgs/s",
        );
    }
}

#[test]
fn echo_against_the_hand_off_baseline_too() {
    let table = bench(&["echo", "--clients", "4", "--floor"]);
    let floor: Vec<&str> = table
        .lines()
        .filter(|l| l.contains("echo ws single 4 clients, hand-off baseline"))
        .collect();
    assert!(
        floor.iter().any(|l| l.contains("| msgs/s |")),
        "no hand-off row in\n{table}"
    );
    compared(&table, "msgs/s");
    // The design's floor: the hand-off baseline's CPU plus the sandboxed call, timed apart.
    let cpu = |scenario: &str| -> f64 {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {scenario} | server CPU µs/msg |")))
            .unwrap_or_else(|| panic!("no {scenario:?} CPU row in\n{table}"));
        line.split('|').nth(3).unwrap().trim().parse().unwrap()
    };
    let call = cpu("echo ws single 4 clients, sandboxed calls alone");
    let handed_off = cpu("echo ws single 4 clients, hand-off baseline");
    let floor = cpu("echo ws single 4 clients, hand-off baseline + sandboxed calls");
    assert!(call > 0.0, "a call measured at no cost:\n{table}");
    // The table shows two decimals, none from 100 up.
    let rounding = if floor >= 100.0 { 1.5 } else { 0.02 };
    assert!(
        (floor - (handed_off + call)).abs() < rounding,
        "the floor is not the hand-off baseline plus the call:\n{table}"
    );
    let split = bench(&["echo", "--clients", "4", "--floor", "--layout", "split"]);
    assert!(
        split.contains("| echo ws split 4 clients, hand-off baseline | msgs/s |"),
        "no linked hand-off row in\n{split}"
    );
    let refused = Command::new(BIN)
        .args([
            "echo",
            "--clients",
            "4",
            "--floor",
            "--baseline-ws",
            "tungstenite",
        ])
        .output()
        .expect("wasmgate-bench runs");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("fastwebsockets baseline only"));
}

#[test]
fn fanout() {
    compared(
        &bench(&["fanout", "--members", "8", "--window", "2"]),
        "deliveries/s",
    );
}

/// The wasmgate figure of `metric` in a table without a baseline.
fn alone(table: &str, metric: &str) -> f64 {
    let cells = row(table, metric);
    assert_eq!(
        cells[4], "—",
        "{metric}: no baseline in a cluster run: {cells:?}"
    );
    cells[3]
        .parse()
        .unwrap_or_else(|_| panic!("{metric}: {cells:?}"))
}

/// Members all on gateway 0 of three: in register-mesh mode every gateway still receives
/// each broadcast, with NATS the two empty gateways receive nothing.
#[test]
fn fanout_over_three_gateways_mesh_and_nats() {
    let cluster = |engine| {
        bench(&[
            "fanout",
            "--members",
            "6",
            "--window",
            "2",
            "--gateways",
            "3",
            "--engine",
            engine,
            "--spread",
            "one",
        ])
    };
    let mesh = cluster("mesh");
    assert!(alone(&mesh, "deliveries/s") > 0.0, "{mesh}");
    for gw in 0..3 {
        let received = alone(&mesh, &format!("gw{gw} commands in/s"));
        assert!(received > 0.0, "mesh: gw{gw} received nothing\n{mesh}");
    }
    if let Err(skip) = wasmgate_tests::tools::nats_server() {
        skip.report("smoke::fanout_over_three_gateways_mesh_and_nats (nats)");
        return;
    }
    let nats = cluster("nats");
    assert!(alone(&nats, "deliveries/s") > 0.0, "{nats}");
    assert!(alone(&nats, "gw0 commands in/s") > 0.0, "{nats}");
    for gw in 1..3 {
        let received = alone(&nats, &format!("gw{gw} commands in/s"));
        assert_eq!(received, 0.0, "nats: gw{gw} holds no member\n{nats}");
    }
}

#[test]
fn connect() {
    let table = bench(&["connect", "--concurrency", "2"]);
    compared(&table, "conns/s");
    compared(&table, "server CPU µs/conn");
}

#[test]
fn idle_over_several_helper_processes() {
    let table = bench(&["idle", "--connections", "40", "--per-process", "15"]);
    assert!(row(&table, "bytes/conn")[3].parse::<f64>().is_ok());
    assert_eq!(row(&table, "answered broadcast")[3..5], ["40", "40"]);
}

/// Two gateway processes on one port: the kernel's spread adds up to every connection, and
/// the broadcast reaches them all, whichever process holds them. The baseline's processes
/// share nothing, so it has no broadcast row.
#[test]
fn idle_over_gateway_processes_on_one_port() {
    let table = bench(&[
        "idle",
        "--connections",
        "40",
        "--per-process",
        "15",
        "--gateways",
        "2",
        "--reuse-port",
        "--layout",
        "split",
    ]);
    assert_eq!(row(&table, "server processes")[3..5], ["2", "2"]);
    for server in [3, 4] {
        let held = |metric| row(&table, metric)[server].parse::<usize>().unwrap();
        assert_eq!(
            held("conns in busiest proc") + held("conns in least busy"),
            40,
            "{table}"
        );
    }
    assert_eq!(row(&table, "answered broadcast")[3..5], ["40", "—"]);
}

#[test]
fn reload() {
    let table = bench(&["reload", "--clients", "2"]);
    assert_eq!(row(&table, "lost")[3], "0");
    for metric in ["cold reload ms", "cached reload ms"] {
        assert!(row(&table, metric)[3].parse::<f64>().is_ok_and(|v| v > 0.0));
    }
}

#[test]
fn cost() {
    let table = succeed(&["cost", "--runs", "1", "--calls", "20"]);
    let cells = |call: &str, backend: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {call} | {backend} |")))
            .unwrap_or_else(|| panic!("no {call} {backend} row in\n{table}"));
        line.split('|').map(|c| c.trim().to_owned()).collect()
    };
    assert_eq!(cells("send-to-client", "gateway link")[5], "1.00×");
    let measured = [("kv get", "embedded"), ("sql select, 1 row", "sqlite")];
    let served = [("kv get", "redis"), ("sql select, 1 row", "postgres")];
    for (call, backend) in measured.into_iter().chain(served) {
        let row = cells(call, backend);
        // A server that cannot be had here is skipped, with why (and counted as a skip); the
        // embedded backends never are.
        if let Some(why) = row[3].strip_prefix("skipped: ")
            && served.contains(&(call, backend))
        {
            Skip::new(why).report(&format!("smoke::cost {backend}"));
            continue;
        }
        assert!(row[3].parse::<f64>().is_ok_and(|ns| ns > 0.0), "{row:?}");
        assert!(row[5].ends_with('×'), "{row:?}");
    }
}
