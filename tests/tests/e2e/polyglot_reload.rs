//! Hot reload across languages: the `commands` app is served by the Rust build of the reference
//! plugin, then its file is replaced by the Python build, then by the JavaScript build, while
//! clients stay connected. The connection, the session, the groups and the uid bindings live
//! on the gateway, so none of them notice the swaps; the plugin's language is invisible to them.
//!
//! The server is the real command in its own process, its plugins directory a temporary one.
//! Skipped loudly where the Python or JavaScript toolchain cannot be installed.

use std::time::{Duration, Instant};

use wasmgate_tests::cluster::{Node, PluginsDir, connect_ws};
use wasmgate_tests::polyglot::{self, Language};
use wasmgate_tests::{plugins, tools};

use crate::BIN;

/// Longest a swap may take: compiling a Python or JavaScript component in a debug build takes
/// about 10 s, twice that on a busy machine.
const SWAP_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_then_python_then_javascript_under_live_clients() {
    const TEST: &str = "polyglot_reload::rust_then_python_then_javascript_under_live_clients";
    let built = tokio::task::spawn_blocking(|| {
        Language::ALL
            .into_iter()
            .map(|language| Ok((language, polyglot::commands(language)?)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .unwrap();
    let Some(builds) = tools::or_skip(built, TEST) else {
        return;
    };

    let dir = PluginsDir::with(&[("commands", plugins::COMMANDS)]);
    // One instance: the old version's `on-worker-stop` then marks the moment every later
    // event goes to the new one.
    let (node, port) = Node::all_in_one(BIN, dir.path(), "commands", 1);
    let mut ada = connect_ws(port).await;
    let mut bob = connect_ws(port).await;
    let id = ada.ask("whoami").await;
    assert_eq!(ada.ask("set lang rust").await, "ok");
    assert_eq!(ada.ask("join polyglot").await, "joined polyglot");
    assert_eq!(ada.ask("bind ada").await, "bound ada");
    let mut before = "rust".to_owned();

    for (language, path) in builds {
        let old = node.installed_versions("commands");
        dir.deploy("commands", path.to_str().unwrap());
        // Keep asking while the new version compiles: every question is answered, in order,
        // by whichever version holds the client at that moment.
        let mut asked = 0;
        let started = Instant::now();
        while node.installed_versions("commands").len() == old.len() {
            assert_eq!(ada.ask(&format!("echo {asked}")).await, asked.to_string());
            asked += 1;
            assert!(
                started.elapsed() < SWAP_TIMEOUT,
                "{language:?} was never installed:\n{}",
                node.logs()
            );
        }
        let previous = old.last().expect("a version ran before");
        node.wait_for_line(&["on-worker-stop ran", previous]).await;

        // The new version serves the same connection, with the same session, group and uid.
        let lang = language.name();
        assert_eq!(ada.ask("whoami").await, id, "{lang}: another connection");
        assert_eq!(ada.ask("get lang").await, format!("value lang {before}"));
        assert_eq!(ada.ask(&format!("set lang {lang}")).await, "ok");
        assert_eq!(ada.ask("get lang").await, format!("value lang {lang}"));
        assert_eq!(bob.ask("count polyglot").await, "count polyglot 1");
        bob.send(&format!("touid ada from bob to {lang}"))
            .await
            .unwrap();
        assert_eq!(ada.recv().await, format!("from bob to {lang}"));
        bob.send("pub polyglot to the group").await.unwrap();
        assert_eq!(ada.recv().await, "to the group");
        assert_eq!(
            ada.ask(&format!("echo ada {asked}")).await,
            format!("ada {asked}")
        );
        assert_eq!(bob.ask("echo bob").await, "bob");
        before = lang.to_owned();
    }
    assert_eq!(
        node.installed_versions("commands").len(),
        3,
        "Rust, Python and JavaScript, each installed once:\n{}",
        node.logs()
    );
}
