//! The demo: every role in one process on loopback, serving the reference `commands` plugin
//! (built from `examples/commands` by this crate's build script) on `ws://127.0.0.1:7272`.
//! Stop it with Ctrl-C.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use wasmgate::config::Config;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let plugins = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/demo/plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(
        wasmgate_tests::plugins::COMMANDS,
        plugins.join("commands.wasm"),
    )?;
    let mut config = Config::all_in_one("commands");
    if let Some(worker) = &mut config.worker {
        worker.plugins = plugins;
    }
    println!(
        "wasmgate demo: the `commands` plugin on ws://127.0.0.1:7272\n\
         try it with any WebSocket client, e.g. `websocat ws://127.0.0.1:7272`, and send\n\
         `echo hi`, `join room`, `pub room hello`, `set nick ada`, `get nick`, `whoami`\n"
    );
    tokio::runtime::Runtime::new()?.block_on(async {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
        wasmgate::server::run(config, Default::default(), shutdown).await
    })
}
