//! The plugins directory: every `NAME.wasm` in it is the app `NAME`, loaded at start and
//! reloaded whenever the file changes, without a restart.
//!
//! A new version replaces the running one only once it has compiled, matched the world and
//! started (`on-worker-start` succeeded) in every instance; until then, and whenever any of
//! that fails, the running version keeps serving and the failure is logged with the file's
//! path. Deleting a file stops its app.
//!
//! When a file counts as written: a rename into place (`mv new.wasm app.wasm`, the
//! recommended way to deploy) and the close of a file written in place (`cp`) load at once;
//! other writes wait for [`QUIET`] without further changes. A file caught mid-write fails to
//! compile and is never served, so the worst a slow writer causes is a logged refusal
//! followed by the complete version.
//!
//! Compiling runs on the blocking pool; with the runtime's cache, an unchanged file (after a
//! restart, or a forced reload) costs no compile.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::dispatch::Dispatcher;
use super::runtime::{PluginInstance, Runtime};
use crate::config::{GrantTable, Grants, WorkerConfig};
use crate::metrics::{self, Reload};
use crate::ops::Gateways;

/// How long a file written in place must stay unchanged before it is loaded.
pub const QUIET: Duration = Duration::from_millis(250);

/// The plugins directory and what it takes to start its apps.
pub struct PluginDir {
    dir: PathBuf,
    runtime: Arc<Runtime>,
    gateways: Arc<dyn Gateways>,
    dispatcher: Arc<Dispatcher>,
    worker: Arc<str>,
    instances: usize,
    max_plugin_size: u64,
    grants: BTreeMap<String, Arc<Grants>>,
    no_grants: Arc<Grants>,
    /// What each app runs: its version and the grants its instances were given.
    running: HashMap<String, (String, Arc<Grants>)>,
    /// File events, from a watcher set up before the first scan so no change falls between.
    fs_events: mpsc::Receiver<notify::Result<notify::Event>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl PluginDir {
    /// The apps of `config.plugins`, each started with `config.instances` instances that
    /// reach the gateways through `gateways` and installed in `dispatcher`.
    pub fn new(
        config: &WorkerConfig,
        runtime: Arc<Runtime>,
        gateways: Arc<dyn Gateways>,
        dispatcher: Arc<Dispatcher>,
    ) -> Self {
        let dir = config.plugins.clone();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::error!(dir = %dir.display(), "cannot create the plugins directory: {e}");
        }
        let (fs_tx, fs_events) = mpsc::channel(1024);
        let watcher = notify::recommended_watcher(move |event| {
            // notify calls this on its own thread, outside the runtime.
            let _ = fs_tx.blocking_send(event);
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        let watcher = watcher
            .inspect_err(|e| {
                tracing::error!(dir = %dir.display(), "cannot watch the plugins directory; reload only on demand: {e}")
            })
            .ok();
        Self {
            dir,
            runtime,
            gateways,
            dispatcher,
            worker: config.name.clone().into(),
            instances: config.instances.max(1),
            max_plugin_size: config.max_plugin_size.as_u64(),
            grants: shared(&config.grants),
            no_grants: Arc::new(Grants::default()),
            running: HashMap::new(),
            fs_events,
            _watcher: watcher,
        }
    }

    /// Loads every app in the directory; `loading` holds the apps listed and not yet loaded.
    pub async fn scan(&mut self, loading: &watch::Sender<Option<BTreeSet<String>>>) {
        let apps = self.apps_on_disk();
        loading.send_replace(Some(apps.iter().cloned().collect()));
        for app in apps {
            self.sync(&app).await;
            loading.send_modify(|left| {
                left.iter_mut().for_each(|left| {
                    left.remove(&app);
                })
            });
        }
        if self.running.is_empty() {
            tracing::warn!(dir = %self.dir.display(), "no plugins loaded yet; watching the directory");
        }
    }

    /// Follows the directory until `shutdown`, and re-reads all of it whenever `reload`
    /// sends grants (changed or not); an app whose grants changed restarts its instances
    /// with them even when its file did not change.
    pub async fn watch(
        mut self,
        mut reload: watch::Receiver<Arc<GrantTable>>,
        shutdown: CancellationToken,
    ) {
        let mut due: HashMap<String, Instant> = HashMap::new();
        loop {
            let next = due.values().min().copied();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Ok(()) = reload.changed() => {
                    self.grants = shared(&reload.borrow_and_update());
                    tracing::info!("reloading every plugin");
                    let now = Instant::now();
                    for app in self.apps_on_disk().into_iter().chain(self.running.keys().cloned()) {
                        due.insert(app, now);
                    }
                }
                Some(event) = self.fs_events.recv() => match event {
                    Ok(event) => note(&event, &mut due),
                    Err(e) => tracing::warn!("plugins directory watch error: {e}"),
                },
                _ = sleep_until(next), if next.is_some() => {
                    let now = Instant::now();
                    let ready: Vec<String> = due.iter().filter(|(_, at)| **at <= now).map(|(app, _)| app.clone()).collect();
                    for app in ready {
                        due.remove(&app);
                        self.sync(&app).await;
                    }
                }
            }
        }
    }

    /// Brings `app` in line with its file: installs a new version, removes a deleted one,
    /// or does nothing if the file is unchanged or unusable.
    async fn sync(&mut self, app: &str) {
        let path = self.dir.join(format!("{app}.wasm"));
        let started = Instant::now();
        let (file, limit) = (path.clone(), self.max_plugin_size);
        let read = tokio::task::spawn_blocking(move || read_plugin(&file, limit)).await;
        let read = read.unwrap_or_else(|e| Err(FileError::Io(std::io::Error::other(e))));
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.running.remove(app).is_some() {
                    tracing::info!(plugin = app, file = %path.display(), "plugin file deleted; app stopped");
                    metrics::plugin_removed(&self.worker, app);
                    self.dispatcher.remove(app);
                } else {
                    metrics::refused_plugin_gone(&self.worker, app);
                }
                return;
            }
            Err(e) => {
                tracing::error!(file = %path.display(), "plugin not loaded, the running version (if any) keeps serving: {e}");
                metrics::plugin_refused(&self.worker, app, None, e.to_string());
                return;
            }
        };
        let runtime = self.runtime.clone();
        let name = app.to_owned();
        let code = match tokio::task::spawn_blocking(move || runtime.load(&name, &bytes)).await {
            Ok(Ok(code)) => code,
            Ok(Err(e)) => {
                tracing::error!(file = %path.display(), "plugin not loaded, the running version (if any) keeps serving: {e}");
                metrics::plugin_refused(&self.worker, app, None, e.to_string());
                return;
            }
            Err(e) => {
                tracing::error!(file = %path.display(), "plugin compile task failed: {e}");
                metrics::plugin_refused(
                    &self.worker,
                    app,
                    None,
                    format!("compile task failed: {e}"),
                );
                return;
            }
        };
        let grants = self.grants.get(app).unwrap_or(&self.no_grants).clone();
        if let Some((version, given)) = self.running.get(app)
            && version == code.version()
        {
            if **given == *grants {
                tracing::debug!(plugin = app, version, "plugin unchanged");
                metrics::plugin_reloaded(app, Reload::Unchanged);
                return;
            }
            tracing::info!(
                plugin = app,
                version,
                "grants changed: restarting the app's instances with them"
            );
        }
        let mut instances = Vec::with_capacity(self.instances);
        for _ in 0..self.instances {
            let mut instance = self.runtime.instance(
                code.clone(),
                self.gateways.clone(),
                self.worker.clone(),
                grants.clone(),
            );
            if let Err(e) = instance.start().await {
                tracing::error!(
                    file = %path.display(),
                    version = code.version(),
                    "new plugin version refused, the running version (if any) keeps serving: {e}"
                );
                let reason = format!("its instance did not start: {e}");
                metrics::plugin_refused(&self.worker, app, Some(code.version()), reason);
                for mut started in instances {
                    PluginInstance::stop(&mut started).await;
                }
                return;
            }
            instances.push(instance);
        }
        tracing::info!(
            plugin = app,
            version = code.version(),
            from_cache = code.from_cache(),
            took_ms = started.elapsed().as_millis() as u64,
            "plugin version installed"
        );
        metrics::plugin_installed(&self.worker, app, code.version(), instances.len());
        self.running
            .insert(app.to_owned(), (code.version().to_owned(), grants));
        self.dispatcher
            .install(app, code.version(), instances)
            .await;
    }

    fn apps_on_disk(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries.filter_map(|e| app_name(&e.ok()?.path())).collect()
    }
}

/// Why a plugin file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A FIFO, device, socket or directory (possibly behind a symlink): reading one could
    /// block forever or never end.
    #[error("not a regular file but a {0}: only regular files (or symlinks to them) are loaded")]
    NotRegular(&'static str),
    /// Larger than `max_plugin_size`.
    #[error("larger than max_plugin_size ({limit} bytes)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The file could not be opened or read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads a plugin file, refusing anything but a regular file of at most `limit` bytes. The
/// file is opened without blocking (a FIFO would wait for a writer) and its type checked on
/// the open handle, so it cannot be swapped between the check and the read; the read itself
/// stops after `limit` bytes whatever the size claimed.
fn read_plugin(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "device"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_dir() {
            "directory"
        } else {
            "special file"
        };
        return Err(FileError::NotRegular(what));
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge { limit });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { limit });
    }
    Ok(bytes)
}

/// The grant table with each app's grants shared by its instances.
fn shared(table: &GrantTable) -> BTreeMap<String, Arc<Grants>> {
    table
        .iter()
        .map(|(app, g)| (app.clone(), Arc::new(g.clone())))
        .collect()
}

/// Records when the apps an event touches should be looked at again.
fn note(event: &notify::Event, due: &mut HashMap<String, Instant>) {
    let now = Instant::now();
    let complete = match event.kind {
        // The file is whole: a writer closed it, it was renamed into place, or deleted.
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(_))
        | EventKind::Remove(_) => true,
        // Being written: wait for quiet.
        EventKind::Create(_) | EventKind::Modify(_) => false,
        // Reads (ours included) change nothing.
        _ => return,
    };
    for app in event.paths.iter().filter_map(|p| app_name(p)) {
        let at = due.entry(app).or_insert(now + QUIET);
        *at = if complete { now.min(*at) } else { now + QUIET };
    }
}

/// The app a path names: `dir/NAME.wasm` → `NAME`; hidden and temporary files are not apps.
fn app_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let app = name.strip_suffix(".wasm")?;
    (!app.is_empty() && !app.starts_with('.')).then(|| app.to_owned())
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_wasm_files_are_apps() {
        assert_eq!(app_name(Path::new("/p/chat.wasm")).as_deref(), Some("chat"));
        assert_eq!(app_name(Path::new("/p/.chat.wasm.tmp")), None);
        assert_eq!(app_name(Path::new("/p/.chat.wasm")), None);
        assert_eq!(app_name(Path::new("/p/chat.cwasm")), None);
        assert_eq!(app_name(Path::new("/p/readme.txt")), None);
    }
}
