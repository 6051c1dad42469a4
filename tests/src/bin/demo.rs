//! The demo (README's first command): the chat example with every role in one process on
//! loopback. The `chat` plugin (built from `examples/chat` by this crate's build script) serves
//! `ws://127.0.0.1:7272`, and the page in `examples/chat/web` is served on
//! `http://127.0.0.1:7270/`. Each room's history is kept in `target/demo/data/chat/history.sqlite`,
//! so it survives a restart of the demo. Stop it with Ctrl-C.

use std::collections::BTreeMap;
use std::path::Path;

use tokio_util::sync::CancellationToken;
use wasmgate::config::{Config, Grants, SqlBackend, WebConfig};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace");
    let plugins = workspace.join("target/demo/plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(wasmgate_tests::plugins::CHAT, plugins.join("chat.wasm"))?;
    let mut config = Config::all_in_one("chat", &workspace.join("target/demo/wasmgate.toml"));
    let Some(worker) = &mut config.worker else {
        anyhow::bail!("the built-in configuration has a worker host");
    };
    worker.plugins = plugins;
    // The chat's history database (examples/chat/src/history.rs), an SQLite file under the
    // worker host's `data` directory: `target/demo/data` beside the configuration file.
    let history = Grants {
        sql: BTreeMap::from([("history".to_owned(), SqlBackend::Sqlite)]),
        ..Grants::default()
    };
    worker.grants.insert("chat".into(), history);
    let history_file = worker.data.join("chat/history.sqlite");
    let web = WebConfig {
        listen: "127.0.0.1:7270".parse()?,
        root: workspace.join("examples/chat/web"),
    };
    config.web = Some(web);
    println!(
        "wasmgate demo: the chat example\n\
         open http://127.0.0.1:7270/ in two browser windows, pick a nickname in each and chat;\n\
         the page talks to the `chat` plugin on ws://127.0.0.1:7272, which keeps each room's\n\
         history in {}. Ctrl-C stops it.\n",
        history_file.display()
    );
    tokio::runtime::Runtime::new()?.block_on(async {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
        wasmgate::process::run(config, Default::default(), shutdown).await
    })
}
