//! The wasm runtime: compiles plugin components once and runs their callbacks in sandboxed,
//! reusable instances.
//!
//! Three lifetimes of state are kept apart: the [`Runtime`] (engine, linker, epoch ticker) lives
//! as long as the worker host; a [`PluginCode`] (compiled component and its `InstancePre`) lives
//! as long as one version of a plugin file; a [`PluginInstance`] (a `Store` with its WASI
//! context, limits and timers) serves many events in a row and is replaced only when it traps.
//!
//! Only this module knows about epochs, store limits and `InstancePre`. Callers ask "run
//! `on-message` for this client" and get either the outcome or a [`CallError`] that says what
//! the sandbox stopped: a trap, a call past `process_timeout` (wall-clock time, host calls
//! included), a grow past `memory_limit`.
//! Whatever happened, only that instance is lost; the next call gets a fresh one.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable, ResourceTableError};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use super::bindings::wasi::keyvalue as kv_wit;
use super::bindings::wasmgate::plugin as plugin_wit;
use super::bindings::{Client, Plugin, PluginIndices, WebsocketRequest, WorkerInfo, presence};
use super::guest_output::{GuestOutput, LogBudget, Stream};
use super::host_api::{HostApi, SessionChange};
use super::kv::{KvLimits, KvState, Stores};
use super::outbound_http::{self, HttpLimits, OutboundHttp};
use super::sql::{Databases, SqlCtx, SqlGrant};
use super::timers::{PENDING_TICKS, TimerCaps, Timers};
use crate::client_id::{ClientId, MalformedClientId};
use crate::config::Grants;
use crate::metrics;
use crate::ops::{Gateways, Session};

/// How often the epoch advances: the granularity of `process_timeout` and of the yields that
/// keep a busy guest from starving other tasks on its tokio worker.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How far past `process_timeout` the wall-clock timer around a call fires. The epoch
/// interrupts a guest that computes; the timer is for a guest parked inside a host call (a
/// sleep, a blocking read, a full link), where no epoch check runs. Firing slightly later
/// lets the epoch, which leaves the store usable for its error report, win when both apply.
const TIMER_SLACK: Duration = Duration::from_millis(50);

/// The sandbox limits applied to every instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a single callback may run (host calls it makes included) before its instance is
    /// interrupted and discarded.
    pub process_timeout: Duration,
    /// Most linear memory, in bytes, that one instance may hold across all its memories; a grow
    /// past it fails inside the guest, which normally aborts the call.
    pub memory_limit: usize,
    /// What one instance may ask of the timers.
    pub timers: TimerCaps,
    /// Most entries (open streams, files, pollables …) in one instance's resource table.
    pub max_resources: usize,
    /// Log bytes per second one plugin (all its instances) may write.
    pub log_rate: u64,
    /// What bounds one instance's outbound HTTP.
    pub http: HttpLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            process_timeout: Duration::from_secs(10),
            memory_limit: 256 << 20,
            timers: TimerCaps {
                max_timers: 1024,
                min_interval: Duration::from_millis(10),
            },
            max_resources: 65_536,
            log_rate: 256 << 10,
            http: HttpLimits::default(),
        }
    }
}

/// First delay before an instance whose start failed is started again; it doubles with each
/// failure in a row, up to [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);

/// Longest an instance whose start keeps failing waits between attempts.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);

/// Why a file could not become a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes do not start with the WebAssembly magic number.
    #[error("not a WebAssembly file (no `\\0asm` header)")]
    NotWasm,
    /// A core module rather than a component.
    #[error(
        "a core WebAssembly module, not a component: build for `wasm32-wasip2` \
         (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// The component failed to parse, validate or compile.
    #[error("invalid component: {0:#}")]
    Invalid(wasmtime::Error),
    /// The component does not fit the `wasmgate:plugin` world.
    #[error("component does not implement the `wasmgate:plugin/plugin` world: {0:#}")]
    WrongWorld(wasmtime::Error),
}

/// Refuses bytes that are not a WebAssembly component, before any compiling.
fn component_header(bytes: &[u8]) -> Result<(), LoadError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(LoadError::NotWasm);
    }
    // Bytes 4..8 are the version and layer: a core module has layer 0, a component 1.
    if bytes.get(6..8) == Some(&[0, 0]) {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

/// A component as [`Runtime::inspect`] found it.
#[derive(Debug)]
pub struct Inspection {
    /// The names of what it imports (`wasi:cli/environment@0.2.0`, …).
    pub imports: Vec<String>,
    /// The names of what it exports (`wasmgate:plugin/events@0.2.0`, …).
    pub exports: Vec<String>,
    /// Why a worker host would refuse it; `None` when it would load it.
    pub refused: Option<LoadError>,
}

/// What the sandbox stopped, or why a plugin refused to start.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The callback ran longer than `process_timeout`.
    #[error("{callback} ran past process_timeout ({limit:?}) and was interrupted")]
    Timeout {
        /// The callback, e.g. `on-message`.
        callback: &'static str,
        /// The limit it exceeded.
        limit: Duration,
    },
    /// The instance tried to grow its memory past `memory_limit`.
    #[error("{callback} hit memory_limit ({limit} bytes; asked for {requested})")]
    OutOfMemory {
        /// The callback.
        callback: &'static str,
        /// The limit.
        limit: usize,
        /// The total the failed grow would have reached.
        requested: usize,
    },
    /// The guest trapped (a panic, an uncaught exception, `unreachable`).
    #[error("{callback} trapped: {message}")]
    Trap {
        /// The callback.
        callback: &'static str,
        /// The trap as wasmtime describes it.
        message: String,
    },
    /// The guest opened more resources (streams, files, pollables …) than its table holds;
    /// the WASI call that would have opened one more trapped.
    #[error("{callback} trapped: more than max_resources = {limit} resources open")]
    TooManyResources {
        /// The callback.
        callback: &'static str,
        /// The limit.
        limit: usize,
    },
    /// `on-worker-start` returned an error.
    #[error("on-worker-start refused to start: {0}")]
    StartRefused(String),
    /// A grant from the configuration could not be given (e.g. a missing directory).
    #[error("cannot apply the app's grants: {0}")]
    Grant(String),
    /// The instance's start failed recently and is not tried again before a back-off.
    #[error("not started: its start failed {failures} times in a row; next try in {retry_in:?}")]
    Delayed {
        /// Failed starts in a row.
        failures: u32,
        /// How long until the next try.
        retry_in: Duration,
    },
}

/// Runs `call` of `plugin` for at most `limit` (plus [`TIMER_SLACK`]) of wall-clock time. On
/// expiry the call's future is dropped where it stood, and with it any host call it was
/// parked in; the store it borrowed is then unusable, so the caller must discard the instance.
///
/// Only a guest parked in a host call outlives the epoch deadline this far, and a blocking
/// one (a read of a FIFO or a device in a granted directory) keeps its thread of the
/// blocking pool until the read returns, which nothing here can force: such calls are
/// counted (`host_call_abandoned`) and logged, so an operator can see a grant to fix.
///
/// Most calls finish in their first poll (the guest never waited on the host), which the
/// epoch deadline bounds: only a call still pending after it gets a timer. Not an `async
/// fn`, which would hold the call twice in its state (see `lazy_timeout`).
fn within<T>(
    plugin: &str,
    limit: Duration,
    callback: &'static str,
    call: impl Future<Output = Result<T, CallError>>,
) -> impl Future<Output = Result<T, CallError>> {
    let deadline = tokio::time::Instant::now() + limit + TIMER_SLACK;
    crate::lazy_timeout::until(deadline, call).map(move |outcome| match outcome {
        Ok(result) => result,
        Err(_) => {
            metrics::plugin_limit(plugin, metrics::PluginLimit::HostCallAbandoned);
            tracing::warn!(
                plugin,
                callback,
                "abandoned a host call past process_timeout; a blocking one (a FIFO or device in a granted directory) still holds a thread"
            );
            Err(CallError::Timeout { callback, limit })
        }
    })
}

impl CallError {
    /// The error as the `outcome` label of the plugin-call metrics says it.
    fn outcome(&self) -> metrics::Outcome {
        match self {
            CallError::Trap { .. } | CallError::TooManyResources { .. } => metrics::Outcome::Trap,
            CallError::Timeout { .. } => metrics::Outcome::Timeout,
            CallError::OutOfMemory { .. } => metrics::Outcome::MemoryLimit,
            CallError::StartRefused(_) | CallError::Grant(_) | CallError::Delayed { .. } => {
                metrics::Outcome::StartFailed
            }
        }
    }
}

/// The wasm engine shared by every plugin of a worker host.
pub struct Runtime {
    engine: Engine,
    linker: Linker<PluginState>,
    limits: Limits,
    cache: Option<CompileCache>,
    kv: Arc<Stores>,
    ticker: EpochTicker,
    databases: Arc<Databases>,
}

impl Runtime {
    /// An engine with epoch interruption and the `wasmgate:plugin` imports linked: WASI p2
    /// with nothing granted, `gateway`, `timers`, `log`, `sql`, `wasi:keyvalue` and
    /// `wasi:http`'s outgoing handler, each of which refuses every call the app's grants do
    /// not allow. Embedded stores need [`Self::with_data`].
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        // The default on-demand instance allocator, not the pooling one. Pooling speeds up
        // instantiation, and instances here are long-lived: they are made at load, at reload
        // and after a trap. `cargo bench -p wasmgate-tests --bench plugin_call` on wasmtime 48
        // measured that pooling cut a Rust plugin's start from about 70 to 35 µs. Python
        // (~1.6 ms) and JavaScript (~0.9 ms) starts, calls and resident memory showed no
        // difference beyond the noise. The cost of pooling is that every pool is sized up
        // front: instances times apps (every file in the plugins directory, so no fixed
        // number), doubled while a reload overlaps two versions, times each component's
        // memories and core instances. Instantiation fails once a pool runs dry, and every
        // memory slot reserves its full address space (4 GiB plus guard) at start.
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // One interface at a time: each capability is implemented on its own part of the
        // state.
        let api: fn(&mut PluginState) -> &mut HostApi = |s| &mut s.api;
        plugin_wit::types::add_to_linker::<PluginState, HasSelf<HostApi>>(&mut linker, api)?;
        plugin_wit::gateway::add_to_linker::<PluginState, HasSelf<HostApi>>(&mut linker, api)?;
        plugin_wit::answers::add_to_linker::<PluginState, HasSelf<HostApi>>(&mut linker, api)?;
        plugin_wit::timers::add_to_linker::<PluginState, HasSelf<HostApi>>(&mut linker, api)?;
        plugin_wit::log::add_to_linker::<PluginState, HasSelf<HostApi>>(&mut linker, api)?;
        plugin_wit::event_info::add_to_linker::<PluginState, HasSelf<HostApi>>(&mut linker, api)?;
        super::sql::add_to_linker(&mut linker, |s| SqlCtx::new(&mut s.sql, &mut s.table))?;
        let kv: fn(&mut PluginState) -> &mut KvState = |s| &mut s.kv;
        kv_wit::store::add_to_linker::<PluginState, HasSelf<KvState>>(&mut linker, kv)?;
        kv_wit::atomics::add_to_linker::<PluginState, HasSelf<KvState>>(&mut linker, kv)?;
        kv_wit::batch::add_to_linker::<PluginState, HasSelf<KvState>>(&mut linker, kv)?;
        outbound_http::add_to_linker(&mut linker)?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Self {
            engine,
            linker,
            limits,
            cache: None,
            kv: Arc::new(Stores::new(None, KvLimits::default())),
            ticker,
            // Replaced by the worker host's; without it nothing is granted, so nothing opens.
            databases: Arc::new(Databases::new("data".into(), Default::default())),
        })
    }

    /// Keeps apps' embedded stores under `dir` (`[worker] data`) and checks key-value calls
    /// against `kv`. Without it, an app granted `kv = "embedded"` gets an error from every
    /// call.
    pub fn with_data(mut self, dir: PathBuf, kv: KvLimits) -> Self {
        self.kv = Arc::new(Stores::new(Some(dir), kv));
        self
    }

    /// Keeps compiled components in `dir`, so that loading a file whose bytes were compiled
    /// before, by an engine with the same configuration, skips the compiler. The directory
    /// is created private (0700) and must be owned by this user and writable by nobody else;
    /// every entry is authenticated with the directory's key (see [`CompileCache`]). When
    /// the directory is unusable, plugins are compiled every time, with an error logged.
    /// Each app keeps its `versions` most recently used entries.
    pub fn with_cache(mut self, dir: PathBuf, versions: usize) -> Self {
        match CompileCache::open(dir.clone(), versions) {
            Ok(cache) => self.cache = Some(cache),
            Err(e) => tracing::error!(
                dir = %dir.display(),
                "compile cache disabled, plugins compile at every load: {e}"
            ),
        }
        self
    }

    /// Serves the apps' SQL grants from `databases` (their pools outlive instances).
    pub fn with_sql(mut self, databases: Databases) -> Self {
        self.databases = Arc::new(databases);
        self
    }

    /// The limits every instance gets.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Compiles `bytes` as a version of plugin `name` (or takes it from the cache) and checks
    /// it against the world. Compiling is CPU-heavy (milliseconds for Rust plugins, seconds
    /// for Python or JavaScript): call this off the async path, e.g. in `spawn_blocking`.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Arc<PluginCode>, LoadError> {
        component_header(bytes)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let (component, from_cache) = self.compile(name, bytes, &digest)?;
        let linked = self.link(&component)?;
        let name: Arc<str> = name.into();
        Ok(Arc::new(PluginCode {
            log: Arc::new(LogBudget::new(name.clone(), self.limits.log_rate)),
            name,
            version: digest[..12].to_owned(),
            from_cache,
            linked,
        }))
    }

    /// What [`Self::load`] would make of `bytes`, for `wasmgate check`: compiled (never from
    /// or into the cache) and linked exactly as a load does, with the component's imports and
    /// exports for the report. `Err` when it is not a component at all.
    pub fn inspect(&self, bytes: &[u8]) -> Result<Inspection, LoadError> {
        component_header(bytes)?;
        let component = Component::from_binary(&self.engine, bytes).map_err(LoadError::Invalid)?;
        let ty = component.component_type();
        let names = |items: &mut dyn Iterator<Item = &str>| items.map(str::to_owned).collect();
        Ok(Inspection {
            imports: names(&mut ty.imports(&self.engine).map(|(name, _)| name)),
            exports: names(&mut ty.exports(&self.engine).map(|(name, _)| name)),
            refused: self.link(&component).err(),
        })
    }

    /// Links `component` against the host's imports and finds the world's exports in it,
    /// and the optional `presence` export.
    fn link(&self, component: &Component) -> Result<Linked, LoadError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(LoadError::WrongWorld)?;
        let indices = PluginIndices::new(&pre).map_err(LoadError::WrongWorld)?;
        let presence = presence::GuestIndices::new(&pre).ok();
        Ok(Linked {
            pre,
            indices,
            presence,
        })
    }

    /// The component for `bytes`, from the cache when it holds one; says which it was.
    fn compile(
        &self,
        name: &str,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, bool), LoadError> {
        let Some(cache) = &self.cache else {
            return Ok((self.compile_now(name, bytes)?, false));
        };
        let mut engine_hash = std::hash::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let entry = cache.entry(name, digest, engine_hash.finish());
        match cache.read(&entry) {
            Ok(Some(native)) => {
                // SAFETY: `native` was written by `Component::serialize` of an engine with
                // this configuration for exactly these bytes: its tag, keyed by this
                // install's private key, binds it to the plugin's digest and the engine hash
                // and was checked over every byte just now.
                match unsafe { Component::deserialize(&self.engine, &native) } {
                    Ok(component) => return Ok((component, true)),
                    Err(e) => tracing::warn!(
                        file = %entry.path.display(),
                        "ignoring unusable cache entry: {e:#}"
                    ),
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(
                    plugin = name,
                    file = %entry.path.display(),
                    "compile cache entry rejected, recompiling: {e}"
                );
                metrics::plugin_limit(name, metrics::PluginLimit::CacheRejected);
            }
        }
        let component = self.compile_now(name, bytes)?;
        if let Err(e) = component
            .serialize()
            .map_err(anyhow::Error::from)
            .and_then(|native| cache.write(&entry, &native))
            .and_then(|()| cache.prune(&entry))
        {
            tracing::warn!(dir = %cache.dir.display(), "cannot cache the compiled plugin: {e:#}");
        }
        Ok((component, false))
    }

    /// Compiles `bytes` to native code, saying so first: a Python or JavaScript plugin takes
    /// seconds, and a log silent that long looks hung.
    fn compile_now(&self, name: &str, bytes: &[u8]) -> Result<Component, LoadError> {
        tracing::info!(plugin = name, bytes = bytes.len(), "compiling plugin");
        Component::from_binary(&self.engine, bytes).map_err(LoadError::Invalid)
    }

    /// An instance of `code` that will reach the gateways through `gateways`. It starts
    /// (instantiation and `on-worker-start`) on [`PluginInstance::start`] or its first call.
    pub fn instance(
        &self,
        code: Arc<PluginCode>,
        gateways: Arc<dyn Gateways>,
        worker: Arc<str>,
        grants: Arc<Grants>,
    ) -> PluginInstance {
        debug_assert!(self.ticker.is_running());
        PluginInstance {
            code,
            gateways,
            worker,
            grants,
            databases: self.databases.clone(),
            kv: self.kv.clone(),
            limits: self.limits,
            live: None,
            failed_starts: 0,
            retry_at: None,
        }
    }
}

/// Why the compile cache cannot be used, or an entry of it was not trusted.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory or its key is not private to this user.
    #[error("{0} must be owned by this user and not writable (key: not readable) by others")]
    NotPrivate(PathBuf),
    /// The key file does not hold a key.
    #[error("{0} is not a key written by wasmgate")]
    BadKey(PathBuf),
    /// An entry's tag does not match its bytes, its plugin or this engine.
    #[error("its authentication tag does not match (tampered, swapped or foreign)")]
    Forged,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Length of the per-install key and of an entry's tag (HMAC-SHA256).
const TAG_LEN: usize = 32;

/// Compiled components on disk. They are native code, loaded without further checks, so an
/// entry is used only when its HMAC-SHA256 tag, keyed by a key only this user can read
/// (`key`, 0600, made at first use), matches its bytes, the plugin's content hash and the
/// engine's. A file dropped in by anyone else, or another plugin's entry renamed, fails the
/// check and is recompiled and overwritten.
struct CompileCache {
    dir: PathBuf,
    key: [u8; TAG_LEN],
    /// Entries kept per app.
    versions: usize,
}

/// Where one compiled component lives, and what its tag is bound to.
struct CacheEntry {
    path: PathBuf,
    binding: String,
}

impl CompileCache {
    /// Opens (creating them private if missing) the directory and its key; each app keeps
    /// `versions` entries.
    fn open(dir: PathBuf, versions: usize) -> Result<Self, CacheError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let me = rustix::process::getuid().as_raw();
        let meta = std::fs::metadata(&dir)?;
        if meta.uid() != me || meta.mode() & 0o022 != 0 {
            return Err(CacheError::NotPrivate(dir));
        }
        let path = dir.join("key");
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match made {
            Ok(mut file) => {
                let key: [u8; TAG_LEN] = rand::random();
                std::io::Write::write_all(&mut file, &key)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        let meta = std::fs::symlink_metadata(&path)?;
        if !meta.is_file() || meta.uid() != me || meta.mode() & 0o077 != 0 {
            return Err(CacheError::NotPrivate(path));
        }
        let key = std::fs::read(&path)?;
        let key = key.try_into().map_err(|_| CacheError::BadKey(path))?;
        Ok(Self { dir, key, versions })
    }

    /// The entry of app `app` for the plugin bytes hashing to `digest`, compiled by an engine
    /// whose compatibility hashes to `engine`. Each app's entries share a folder, so that
    /// its old versions can be found and pruned (app names are file names: no `/`, no
    /// leading `.`).
    fn entry(&self, app: &str, digest: &str, engine: u64) -> CacheEntry {
        let binding = format!("wasmgate-cache-v1 {digest} {engine:016x}");
        CacheEntry {
            path: self
                .dir
                .join(app)
                .join(format!("{digest}-{engine:016x}.cwasm")),
            binding,
        }
    }

    /// Deletes the app's entries beyond the `versions` most recently used (by modification
    /// time: a read touches its entry).
    fn prune(&self, entry: &CacheEntry) -> anyhow::Result<()> {
        let Some(folder) = entry.path.parent() else {
            return Ok(());
        };
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(folder)?
            .filter_map(|e| {
                let e = e.ok()?;
                let path = e.path();
                let used = e.metadata().ok()?.modified().ok()?;
                (path.extension()? == "cwasm").then_some((used, path))
            })
            .collect();
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        for (_, old) in entries.into_iter().skip(self.versions) {
            if old != entry.path {
                std::fs::remove_file(&old)?;
                tracing::debug!(file = %old.display(), "old compile-cache entry deleted");
            }
        }
        Ok(())
    }

    fn tag(&self, entry: &CacheEntry, native: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(entry.binding.as_bytes());
        mac.update(&[0]);
        mac.update(native);
        mac
    }

    /// The entry's native code if it is there and authentic; `None` if there is none.
    fn read(&self, entry: &CacheEntry) -> Result<Option<Vec<u8>>, CacheError> {
        let mut bytes = match std::fs::read(&entry.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(split) = bytes.len().checked_sub(TAG_LEN) else {
            return Err(CacheError::Forged);
        };
        let tag = bytes.split_off(split);
        // `verify_slice` compares in constant time.
        self.tag(entry, &bytes)
            .verify_slice(&tag)
            .map_err(|_| CacheError::Forged)?;
        // Marks it used, so that pruning keeps the versions in use.
        let touched = std::fs::File::options()
            .write(true)
            .open(&entry.path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        if let Err(e) = touched {
            tracing::debug!(file = %entry.path.display(), "cannot mark the cache entry used: {e}");
        }
        Ok(Some(bytes))
    }

    /// Writes `native` with its tag whole: to a temporary file first, then renamed over the
    /// entry, so a crash never leaves a partial entry and a rejected one is replaced.
    fn write(&self, entry: &CacheEntry, native: &[u8]) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        // Several worker hosts (of this process or others) may store the same entry at once:
        // each writes its own temporary file.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let write = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = entry
            .path
            .with_extension(format!("tmp{}-{write}", std::process::id()));
        let tag = self.tag(entry, native).finalize().into_bytes();
        if let Some(folder) = entry.path.parent() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(folder)?;
        }
        std::fs::write(&tmp, [native, &tag[..]].concat())?;
        std::fs::rename(&tmp, &entry.path)?;
        Ok(())
    }
}

/// One compiled version of a plugin, ready to instantiate cheaply.
pub struct PluginCode {
    name: Arc<str>,
    /// Shared by the version's instances: the log budget is per plugin, not per instance.
    log: Arc<LogBudget>,
    version: String,
    from_cache: bool,
    linked: Linked,
}

/// A component linked against the host, with where its exports are.
struct Linked {
    pre: wasmtime::component::InstancePre<PluginState>,
    indices: PluginIndices,
    /// `None`: the component does not export `presence`.
    presence: Option<presence::GuestIndices>,
}

impl PluginCode {
    /// The plugin's (app's) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A short hash of the component's bytes.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether the compiled code came from the cache rather than the compiler.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// Whether it exports `presence` (`on-uid-online`, `on-uid-offline`).
    pub fn exports_presence(&self) -> bool {
        self.linked.presence.is_some()
    }
}

/// The client an event is about: the record its callback receives, and the session the host
/// keeps for the event's `get-session` and writes, shared with the event rather than copied.
#[derive(Debug, Clone)]
pub struct EventClient {
    /// What the callback receives.
    pub record: Client,
    /// The client's id.
    pub id: ClientId,
    /// Its session, the same as the record's.
    pub session: Arc<Session>,
    /// The event's number at its gateway (`ClientContext::event`); none for an event the
    /// worker host made.
    pub event: Option<u64>,
}

impl TryFrom<Client> for EventClient {
    type Error = MalformedClientId;

    /// Parses the record's id and copies its session.
    fn try_from(record: Client) -> Result<Self, Self::Error> {
        Ok(Self {
            id: record.id.parse()?,
            session: Arc::new(record.session.iter().cloned().collect()),
            record,
            event: None,
        })
    }
}

/// One callback to run.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    /// `on-connect`.
    Connect(&'a EventClient),
    /// `on-websocket-connect`.
    WebsocketConnect(&'a EventClient, &'a WebsocketRequest),
    /// `on-message`.
    Message(&'a EventClient, &'a [u8]),
    /// `on-close`.
    Close(&'a EventClient),
    /// `on-timer`.
    Timer(u64),
    /// `on-uid-online`: the uid, and the client whose binding made it online.
    UidOnline(&'a str, &'a EventClient),
    /// `on-uid-offline`: the uid, and the client whose unbinding or close made it offline.
    UidOffline(&'a str, &'a EventClient),
}

impl Call<'_> {
    /// The callback's WIT name, for logs and errors.
    pub fn callback(&self) -> &'static str {
        match self {
            Call::Connect(_) => "on-connect",
            Call::WebsocketConnect(..) => "on-websocket-connect",
            Call::Message(..) => "on-message",
            Call::Close(_) => "on-close",
            Call::Timer(_) => "on-timer",
            Call::UidOnline(..) => "on-uid-online",
            Call::UidOffline(..) => "on-uid-offline",
        }
    }

    /// The client whose session the callback reads and writes as its own: presence
    /// callbacks get a client record, but the event is not that client's own.
    fn client(&self) -> Option<&EventClient> {
        match self {
            Call::Connect(c)
            | Call::WebsocketConnect(c, _)
            | Call::Message(c, _)
            | Call::Close(c) => Some(c),
            Call::Timer(_) | Call::UidOnline(..) | Call::UidOffline(..) => None,
        }
    }
}

/// What a callback left behind for the worker host.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CallOutcome {
    /// How the plugin changed the current client's session, if it did.
    pub session: Option<SessionChange>,
    /// Set when `on-websocket-connect` rejected the client, with the plugin's reason.
    pub rejected: Option<String>,
}

/// A plugin instance that serves events one at a time, replaced by a fresh one after a fault.
pub struct PluginInstance {
    code: Arc<PluginCode>,
    gateways: Arc<dyn Gateways>,
    worker: Arc<str>,
    grants: Arc<Grants>,
    databases: Arc<Databases>,
    kv: Arc<Stores>,
    limits: Limits,
    live: Option<Live>,
    /// Starts that failed in a row, and when the next may be tried: a plugin whose start
    /// always fails is not instantiated again for every event.
    failed_starts: u32,
    retry_at: Option<Instant>,
}

struct Live {
    store: Store<PluginState>,
    plugin: Plugin,
    presence: Option<presence::Guest>,
    timers_fired: mpsc::Receiver<u64>,
}

impl PluginInstance {
    /// The code this instance runs.
    pub fn code(&self) -> &Arc<PluginCode> {
        &self.code
    }

    /// Instantiates the plugin and runs `on-worker-start`, unless already started.
    pub async fn start(&mut self) -> Result<(), CallError> {
        if self.live.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        if let Some(retry_at) = self.retry_at.filter(|at| *at > now) {
            metrics::plugin_limit(self.code.name(), metrics::PluginLimit::RestartDelayed);
            return Err(CallError::Delayed {
                failures: self.failed_starts,
                retry_in: retry_at - now,
            });
        }
        // Instantiation and on-worker-start have a process_timeout each.
        let limit = self.limits.process_timeout * 2;
        let plugin = self.code.name.clone();
        // Boxed: a start is rare, and inline its future would make every call's as large.
        let instantiate = Box::pin(self.instantiate());
        match within(&plugin, limit, "on-worker-start", instantiate).await {
            Ok(live) => {
                self.live = Some(live);
                self.failed_starts = 0;
                self.retry_at = None;
                Ok(())
            }
            Err(e) => {
                let delay = FIRST_RESTART_DELAY
                    .saturating_mul(1 << self.failed_starts.min(16))
                    .min(MAX_RESTART_DELAY);
                self.failed_starts += 1;
                self.retry_at = Some(Instant::now() + delay);
                Err(e)
            }
        }
    }

    /// Runs one callback. After an error the instance is gone and the next call starts a
    /// fresh one; the error has been logged with the plugin's name and the callback.
    pub async fn call(&mut self, call: Call<'_>) -> Result<CallOutcome, CallError> {
        if let Err(e) = self.start().await {
            // One line per failed start, not one per event refused while it backs off.
            if !matches!(e, CallError::Delayed { .. }) {
                tracing::error!(
                    plugin = self.code.name(),
                    version = self.code.version(),
                    "{e}"
                );
            }
            return Err(e);
        }
        let live = self.live.as_mut().expect("started above");
        if let Call::Timer(id) = call
            && !live.store.data_mut().api.timers.fired(id)
        {
            return Ok(CallOutcome::default());
        }
        let run = within(
            self.code.name(),
            self.limits.process_timeout,
            call.callback(),
            live.run(call, self.limits),
        );
        match metrics::plugin_call(self.code.name(), call.callback(), run, CallError::outcome).await
        {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                tracing::error!(
                    plugin = self.code.name(),
                    version = self.code.version(),
                    "{e}"
                );
                let (plugin, callback) = (self.code.name(), call.callback());
                metrics::plugin_faulted(&self.worker, plugin, callback, CallError::outcome(&e));
                self.live = None;
                Err(e)
            }
        }
    }

    /// Waits for the next timer of this instance to fire. An instance that faulted is started
    /// again first (after its back-off), so that `on-worker-start` re-arms the timers it sets
    /// without waiting for a client event; a start that fails is logged and tried again
    /// after the next back-off.
    pub async fn next_timer(&mut self) -> u64 {
        loop {
            let Some(live) = self.live.as_mut() else {
                if let Some(retry_at) = self.retry_at {
                    tokio::time::sleep_until(retry_at.into()).await;
                }
                if let Err(e) = self.start().await {
                    tracing::error!(
                        plugin = self.code.name(),
                        version = self.code.version(),
                        "{e}"
                    );
                }
                continue;
            };
            return match live.timers_fired.recv().await {
                Some(id) => id,
                None => std::future::pending().await,
            };
        }
    }

    /// Runs `on-worker-stop` (if the instance is running) and discards the instance.
    pub async fn stop(&mut self) {
        let Some(mut live) = self.live.take() else {
            return;
        };
        let state = live.store.data_mut();
        state.call_started = Instant::now();
        live.store.set_epoch_deadline(1);
        let limits = self.limits;
        let stopping = async {
            let events = live.plugin.wasmgate_plugin_events();
            let result = events.call_on_worker_stop(&mut live.store).await;
            result.map_err(|e| classify(e, "on-worker-stop", live.store.data(), limits))
        };
        match within(
            self.code.name(),
            limits.process_timeout,
            "on-worker-stop",
            stopping,
        )
        .await
        {
            Ok(()) => tracing::info!(
                plugin = self.code.name(),
                version = self.code.version(),
                "on-worker-stop ran"
            ),
            Err(e) => {
                tracing::error!(
                    plugin = self.code.name(),
                    version = self.code.version(),
                    "{e}"
                );
            }
        }
    }

    async fn instantiate(&mut self) -> Result<Live, CallError> {
        let (fired_tx, timers_fired) = mpsc::channel(PENDING_TICKS);
        let api = HostApi::new(
            self.code.name.clone(),
            self.gateways.clone(),
            Timers::new(fired_tx, self.limits.timers),
            self.code.log.clone(),
        );
        let sql = SqlGrant::new(
            self.code.name.clone(),
            self.grants.sql.clone(),
            self.databases.clone(),
        );
        let kv = KvState::new(
            self.code.name.clone(),
            self.grants.kv.clone(),
            self.kv.clone(),
        );
        let state = PluginState::new(&self.code, api, sql, kv, self.limits, &self.grants)
            .map_err(|e| CallError::Grant(format!("{e:#}")))?;
        let mut store = Store::new(self.code.linked.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        let budget = self.limits.process_timeout;
        store.epoch_deadline_callback(move |ctx| {
            if ctx.data().call_started.elapsed() > budget {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Yield at every tick so a long callback never monopolises its tokio worker.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        // The deadline must be set before instantiating: it starts at 0, which would trap.
        store.data_mut().call_started = Instant::now();
        store.set_epoch_deadline(1);
        let start = "on-worker-start";
        let linked = &self.code.linked;
        let instantiated = async {
            let instance = linked.pre.instantiate_async(&mut store).await?;
            let plugin = linked.indices.load(&mut store, &instance)?;
            let presence = match &linked.presence {
                Some(indices) => Some(indices.load(&mut store, &instance)?),
                None => None,
            };
            wasmtime::Result::Ok((plugin, presence))
        };
        let (plugin, presence) = instantiated
            .await
            .map_err(|e| classify(e, start, store.data(), self.limits))?;
        let info = WorkerInfo {
            app: self.code.name.to_string(),
            version: self.code.version.clone(),
            worker: self.worker.to_string(),
        };
        store.data_mut().call_started = Instant::now();
        let started = plugin
            .wasmgate_plugin_events()
            .call_on_worker_start(&mut store, &info)
            .await;
        started
            .map_err(|e| classify(e, start, store.data(), self.limits))?
            .map_err(CallError::StartRefused)?;
        Ok(Live {
            store,
            plugin,
            presence,
            timers_fired,
        })
    }
}

impl Live {
    async fn run(&mut self, call: Call<'_>, limits: Limits) -> Result<CallOutcome, CallError> {
        let state = self.store.data_mut();
        if let Some(client) = call.client() {
            state
                .api
                .begin_client_event(client.id, client.session.clone(), client.event);
        }
        state.call_started = Instant::now();
        self.store.set_epoch_deadline(1);
        let events = self.plugin.wasmgate_plugin_events();
        let store = &mut self.store;
        let result = match call {
            Call::Connect(client) => events
                .call_on_connect(&mut *store, &client.record)
                .await
                .map(|()| None),
            Call::WebsocketConnect(client, request) => events
                .call_on_websocket_connect(&mut *store, &client.record, request)
                .await
                .map(|r| r.err()),
            Call::Message(client, data) => events
                .call_on_message(&mut *store, &client.record, data)
                .await
                .map(|()| None),
            Call::Close(client) => events
                .call_on_close(&mut *store, &client.record)
                .await
                .map(|()| None),
            Call::Timer(id) => events.call_on_timer(&mut *store, id).await.map(|()| None),
            // A version without `presence` is announced as such and sent none: nothing to do.
            Call::UidOnline(uid, client) | Call::UidOffline(uid, client) => match &self.presence {
                None => Ok(None),
                Some(presence) => {
                    let called = if matches!(call, Call::UidOnline(..)) {
                        presence
                            .call_on_uid_online(&mut *store, uid, &client.record)
                            .await
                    } else {
                        presence
                            .call_on_uid_offline(&mut *store, uid, &client.record)
                            .await
                    };
                    called.map(|()| None)
                }
            },
        };
        let session = self.store.data_mut().api.end_event();
        match result {
            Ok(rejected) => Ok(CallOutcome { session, rejected }),
            Err(e) => Err(classify(e, call.callback(), self.store.data(), limits)),
        }
    }
}

/// Names what stopped a call: the memory limiter's record beats the trap code, because a
/// failed grow usually surfaces as the guest's own abort (`unreachable`).
fn classify(
    error: wasmtime::Error,
    callback: &'static str,
    state: &PluginState,
    limits: Limits,
) -> CallError {
    if let Some(requested) = state.limiter.refused {
        return CallError::OutOfMemory {
            callback,
            limit: limits.memory_limit,
            requested,
        };
    }
    // wasmtime-wasi traps when the table is full, whichever WASI call was opening a resource.
    let full = error.chain().any(|e| {
        matches!(
            e.downcast_ref::<ResourceTableError>(),
            Some(ResourceTableError::Full)
        )
    });
    if full {
        metrics::plugin_limit(&state.api.plugin, metrics::PluginLimit::TooManyResources);
        return CallError::TooManyResources {
            callback,
            limit: limits.max_resources,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout {
            callback,
            limit: limits.process_timeout,
        },
        _ => CallError::Trap {
            callback,
            message: format!("{error:#}"),
        },
    }
}

/// Everything one instance's `Store` holds.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    call_started: Instant,
    /// How long a callback may run (`process_timeout`): outbound requests end by then.
    budget: Duration,
    api: HostApi,
    sql: SqlGrant,
    kv: KvState,
    http: OutboundHttp,
}

impl PluginState {
    fn new(
        code: &PluginCode,
        api: HostApi,
        sql: SqlGrant,
        kv: KvState,
        limits: Limits,
        grants: &Grants,
    ) -> wasmtime::Result<Self> {
        // Only what the app's grants list: by default no preopens, no environment; never
        // sockets or name lookups.
        let (plugin, log) = (&code.name, &code.log);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(GuestOutput::new(
            plugin.clone(),
            Stream::Stdout,
            log.clone(),
        ))
        .stderr(GuestOutput::new(
            plugin.clone(),
            Stream::Stderr,
            log.clone(),
        ))
        .allow_tcp(false)
        .allow_udp(false);
        for (key, value) in &grants.env {
            wasi.env(key, value);
        }
        for dir in &grants.dirs {
            wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadOnly)?;
        }
        let wasi = wasi.build();
        let http = OutboundHttp::new(plugin.clone(), &grants.allowed_outbound_hosts, limits.http);
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_resources);
        Ok(Self {
            wasi,
            table,
            limiter: MemoryLimiter {
                limit: limits.memory_limit,
                total: 0,
                refused: None,
            },
            call_started: Instant::now(),
            budget: limits.process_timeout,
            api,
            sql,
            kv,
            http,
        })
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let deadline = self.call_started + self.budget;
        self.http.view(&mut self.table, deadline)
    }
}

/// Caps the sum of an instance's linear memories (wasmtime's own `StoreLimits` caps each
/// memory separately, and Python or JavaScript components have several) and remembers a
/// refusal so the error can say "memory limit" rather than the guest's generic abort.
struct MemoryLimiter {
    limit: usize,
    total: usize,
    refused: Option<usize>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total + (desired - current);
        if total > self.limit {
            self.refused = Some(total);
            return Ok(false);
        }
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Table elements are pointer-sized; a million is far beyond any real plugin.
        Ok(desired <= 1_000_000)
    }
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn is_running(&self) -> bool {
        self.thread.is_some()
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
