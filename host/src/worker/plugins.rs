//! The plugins directory: every `NAME.wasm` in it is the app `NAME`.
//!
//! Compiling is CPU-heavy (seconds for Python or JavaScript components), so it runs on the
//! blocking pool. A file that fails to load is logged with its path and skipped; the other
//! apps still start.

use std::path::Path;
use std::sync::Arc;

use super::runtime::{PluginCode, Runtime};

/// Loads every `*.wasm` file of `dir`.
pub async fn load_dir(runtime: &Arc<Runtime>, dir: &Path) -> Vec<Arc<PluginCode>> {
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot read the plugins directory: {e}");
            return Vec::new();
        }
    };
    let mut codes = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "wasm") {
            continue;
        }
        match load_file(runtime, &path).await {
            Ok(code) => {
                tracing::info!(plugin = code.name(), version = code.version(), file = %path.display(), "plugin loaded");
                codes.push(code);
            }
            Err(e) => tracing::error!(file = %path.display(), "plugin not loaded: {e:#}"),
        }
    }
    codes
}

/// Reads and compiles one plugin file; its app name is the file name without `.wasm`.
pub async fn load_file(runtime: &Arc<Runtime>, path: &Path) -> anyhow::Result<Arc<PluginCode>> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| anyhow::anyhow!("file name is not valid UTF-8"))?
        .to_owned();
    let bytes = tokio::fs::read(path).await?;
    let runtime = runtime.clone();
    let code = tokio::task::spawn_blocking(move || runtime.load(&name, &bytes)).await??;
    Ok(code)
}
