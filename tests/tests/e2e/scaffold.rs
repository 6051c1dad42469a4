//! What plugin authors start with: `wasmgate new` for each language, then the project's one
//! documented build command (`./build.sh`), then `wasmgate start` with the generated
//! `wasmgate.toml` as its own process, then an echo round trip over WebSocket, beside a
//! bystander client that is answered too; and `wasmgate check` telling a plugin, a plain WASI
//! command and a file that is not WebAssembly apart.
//!
//! The builds use the tools the other tests install (componentize-py, componentize-js, the
//! `wasm32-wasip2` target) and are skipped loudly when those cannot be had.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use wasmgate_tests::cluster::{connect_ws, free_port};
use wasmgate_tests::{daemon, plugins, tools};

use crate::BIN;

/// Longest a running server is given to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rust_project_builds_starts_and_echoes() {
    new_project_echoes(
        "rust",
        "scaffold::a_new_rust_project_builds_starts_and_echoes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_python_project_builds_starts_and_echoes() {
    new_project_echoes(
        "python",
        "scaffold::a_new_python_project_builds_starts_and_echoes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_js_project_builds_starts_and_echoes() {
    new_project_echoes("js", "scaffold::a_new_js_project_builds_starts_and_echoes").await;
}

/// `wasmgate new hello-LANG --lang LANG` in a directory outside the repository, its
/// `./build.sh`, `wasmgate start` with its configuration (ports moved to free ones), and an
/// echo round trip for a client and a bystander.
async fn new_project_echoes(lang: &str, test: &str) {
    let Some(path) = tools::or_skip(tool_path(lang), test) else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let name = format!("hello-{lang}");
    let project = home.path().join(&name);
    let created = wasmgate(&["new", &name, "--lang", lang], home.path());
    assert!(created.status.success(), "{created:?}");
    assert!(
        String::from_utf8_lossy(&created.stdout).contains("./build.sh"),
        "{created:?}"
    );
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(
        readme.contains("./build.sh"),
        "the README documents the build"
    );

    let mut build = Command::new(project.join("build.sh"));
    build.current_dir(&project).env("PATH", path);
    if lang == "rust" {
        // Shared by every run, so that only the first compiles the SDK's dependencies.
        let target = tools::workspace().join("target/tools/new-rust");
        build.env("CARGO_TARGET_DIR", target);
    }
    let built = tokio::task::spawn_blocking(move || tools::run(&mut build, "./build.sh"))
        .await
        .unwrap();
    let Some(_) = tools::or_skip(built, test) else {
        return;
    };
    let wasm = project.join("plugins").join(format!("{name}.wasm"));
    let checked = wasmgate(&["check", wasm.to_str().unwrap()], &project);
    assert!(checked.status.success(), "{checked:?}");

    let (r, g) = (free_port(), free_port());
    let config = std::fs::read_to_string(project.join("wasmgate.toml")).unwrap();
    let config = config
        .replace("127.0.0.1:1236", &format!("127.0.0.1:{r}"))
        .replace("127.0.0.1:7272", &format!("127.0.0.1:{g}"));
    std::fs::write(project.join("wasmgate.toml"), config).unwrap();
    let log = std::fs::File::create(home.path().join("server.log")).unwrap();
    let mut server = tokio::process::Command::new(BIN)
        .arg("start")
        .current_dir(&project)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starting wasmgate");

    // Compiling a Python or JavaScript plugin takes seconds: longer than a client waits.
    wait_for_line(&home.path().join("server.log"), "plugin version installed").await;
    let mut bystander = connect_ws(g).await;
    let mut client = connect_ws(g).await;
    assert_eq!(bystander.ask("bystander").await, "bystander");
    assert_eq!(
        client.ask(&format!("hello from {lang}")).await,
        format!("hello from {lang}")
    );
    assert_eq!(bystander.ask("still here").await, "still here");

    daemon::signal(server.id().expect("running"), "TERM").await;
    let stopped = tokio::time::timeout(STOP_TIMEOUT, server.wait())
        .await
        .expect("the server did not stop")
        .unwrap();
    assert!(
        stopped.success(),
        "{stopped}: {}",
        std::fs::read_to_string(home.path().join("server.log")).unwrap()
    );
}

#[test]
fn check_tells_a_plugin_a_wasi_command_and_a_non_wasm_file_apart() {
    let here = tools::workspace();
    let plugin = wasmgate(&["check", plugins::ECHO], &here);
    let out = String::from_utf8_lossy(&plugin.stdout);
    assert_eq!(plugin.status.code(), Some(0), "{out}");
    assert!(
        out.contains("a valid plugin for this host (wasmgate:plugin@"),
        "{out}"
    );
    assert!(out.contains("exports:  wasmgate:plugin/events@"), "{out}");
    assert!(
        out.contains("every import is one this host provides"),
        "{out}"
    );

    let command = wasmgate(&["check", plugins::NOT_A_PLUGIN], &here);
    let out = String::from_utf8_lossy(&command.stdout);
    assert_eq!(command.status.code(), Some(1), "{out}");
    assert!(out.contains("NOT a plugin for this host"), "{out}");
    assert!(out.contains("a WASI command"), "{out}");
    assert!(
        out.contains("missing:  the export wasmgate:plugin/events@"),
        "{out}"
    );
    assert!(
        out.contains("refused:  no exported instance named"),
        "{out}"
    );

    let text = wasmgate(&["check", "Cargo.toml"], &here);
    let out = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.status.code(), Some(65), "{out}");
    assert!(
        out.contains("NOT a plugin: not a WebAssembly file"),
        "{out}"
    );

    let missing = wasmgate(&["check", "no-such.wasm"], &here);
    assert_eq!(missing.status.code(), Some(66), "{missing:?}");
}

/// Waits (at most two minutes) until the log file `log` has a line containing `needle`.
async fn wait_for_line(log: &Path, needle: &str) {
    for _ in 0..1200 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l.contains(needle)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the log never said {needle:?}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// `wasmgate ARGS` run in `dir`.
fn wasmgate(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("running wasmgate")
}

/// `PATH` with the build tools for `lang` in front, as a developer's shell would have them;
/// a skip when they cannot be installed here.
fn tool_path(lang: &str) -> Result<String, tools::Skip> {
    let examples = tools::workspace().join("examples");
    let tool_bin: Option<PathBuf> = match lang {
        "python" => Some(tools::python_venv(
            "componentize-py",
            &examples.join("commands-py/requirements.txt"),
        )?),
        "js" => Some(
            tools::npm_install(
                "componentize-js",
                &examples.join("commands-js/package.json"),
            )?
            .join(".bin"),
        ),
        _ => None,
    };
    let inherited = std::env::var("PATH").unwrap_or_default();
    Ok(match tool_bin {
        Some(bin) => format!("{}:{inherited}", bin.display()),
        None => inherited,
    })
}
