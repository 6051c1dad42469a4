//! `wasi:keyvalue` (`store`, `atomics`, `batch` at `0.2.0-draft2`) for plugins, granted per app
//! by `[worker.grants.APP] kv`.
//!
//! One implementation of the interfaces over a [`Backend`], with two backends: [`embedded`]
//! (one SQLite file per app under `[worker] data`, run on a thread of its own) and [`redis`]
//! (a reconnecting connection per app and server). A backend is opened on an app's first
//! `open` and then shared by all its instances, across reloads, for the worker host's life;
//! [`Stores`] holds them.
//!
//! What this module refuses to do: trap. Every failure (no grant, a key or value over its
//! limit, a store that is down or busy) is the WIT `error` the guest sees, is logged at debug
//! level and counted in `data_calls` (`interface = "kv"`). A call cut by the callback's
//! deadline is dropped where it stood; the backends make that safe (the SQLite statement is
//! interrupted, a Redis reply is discarded) and it is counted as `timeout`.

pub mod backend;
pub mod embedded;
pub mod handles;
pub mod redis;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::OnceCell;
use wasmtime::component::{Resource, ResourceTable};

use super::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::config::KvGrant;
use crate::metrics;

pub use backend::{Backend, BackendError, LIST_PAGE, Reply};
pub use handles::{BucketHandle, CasHandle};

/// Most keys in one `get-many`, `set-many` or `delete-many`: with `max_kv_value_size` this
/// bounds what one call can ask the host to copy.
pub const MAX_BATCH: usize = 1000;

/// Most buckets and CAS handles one instance may hold open at once.
const MAX_HANDLES: usize = 1024;

/// The size limits every call is checked against.
#[derive(Debug, Clone, Copy)]
pub struct KvLimits {
    /// Longest key or bucket name, in bytes (`max_kv_key_size`).
    pub max_key: usize,
    /// Largest value, in bytes (`max_kv_value_size`).
    pub max_value: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self {
            max_key: 1 << 10,
            max_value: 1 << 20,
        }
    }
}

/// An app's backend once it is open; opened by the first caller while others wait.
type Opening = OnceCell<Arc<dyn Backend>>;

/// Every app's open backend, shared by its instances and kept across reloads.
pub struct Stores {
    data: Option<PathBuf>,
    limits: KvLimits,
    open: Mutex<HashMap<(String, KvGrant), Arc<Opening>>>,
}

impl Stores {
    /// Stores with embedded files under `data` (`None`: the embedded backend is refused).
    pub fn new(data: Option<PathBuf>, limits: KvLimits) -> Self {
        Self {
            data,
            limits,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The limits calls are checked against.
    pub fn limits(&self) -> KvLimits {
        self.limits
    }

    /// The backend `grant` gives `app`, opened on first use. A failed open is not remembered:
    /// the next call tries again (a Redis server that was down may be up).
    async fn backend(&self, app: &str, grant: &KvGrant) -> Result<Arc<dyn Backend>, BackendError> {
        let cell = self
            .open
            .lock()
            // Entries are inserted whole; a panic elsewhere cannot leave one half-written.
            .unwrap_or_else(|e| e.into_inner())
            .entry((app.to_owned(), grant.clone()))
            .or_default()
            .clone();
        let backend = cell
            .get_or_try_init(|| async {
                let backend: Arc<dyn Backend> = match grant {
                    KvGrant::Embedded => {
                        let data = self.data.as_ref().ok_or_else(|| {
                            BackendError::Unavailable("no [worker] data directory".into())
                        })?;
                        let file = embedded_file(data, app);
                        let store = embedded::Embedded::open(app, file.clone()).await?;
                        tracing::info!(
                            plugin = app,
                            file = %file.display(),
                            "embedded key-value store opened (private to this worker host: \
                             use kv = \"redis://…\" to share data between worker hosts)"
                        );
                        Arc::new(store)
                    }
                    KvGrant::Redis(url) => {
                        let store = redis::Redis::open(app, url).await?;
                        tracing::info!(plugin = app, "Redis key-value store connected");
                        Arc::new(store)
                    }
                };
                Ok::<_, BackendError>(backend)
            })
            .await?;
        Ok(backend.clone())
    }
}

/// One instance's view of the key-value capability: its app's grant, the shared stores and
/// the handles it holds.
pub struct KvState {
    app: Arc<str>,
    grant: Option<KvGrant>,
    stores: Arc<Stores>,
    handles: ResourceTable,
}

impl KvState {
    /// The capability as `grant` gives it to an instance of `app`.
    pub fn new(app: Arc<str>, grant: Option<KvGrant>, stores: Arc<Stores>) -> Self {
        let mut handles = ResourceTable::new();
        handles.set_max_capacity(MAX_HANDLES);
        Self {
            app,
            grant,
            stores,
            handles,
        }
    }

    fn meter(&self) -> Meter {
        Meter {
            app: self.app.clone(),
            started: Instant::now(),
            finished: false,
        }
    }

    fn check_key(&self, what: &str, key: &str) -> Result<(), Failure> {
        let max = self.stores.limits.max_key;
        if key.len() > max {
            return Err(Failure::TooLarge(format!(
                "{what} is {} bytes, over max_kv_key_size ({max} bytes)",
                key.len()
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Failure> {
        let max = self.stores.limits.max_value;
        if value.len() > max {
            return Err(Failure::TooLarge(format!(
                "the value is {} bytes, over max_kv_value_size ({max} bytes)",
                value.len()
            )));
        }
        Ok(())
    }

    fn check_read(&self, value: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, Failure> {
        if let Some(v) = &value {
            self.check_value(v)?;
        }
        Ok(value)
    }

    fn check_batch(&self, len: usize) -> Result<(), Failure> {
        if len > MAX_BATCH {
            return Err(Failure::TooLarge(format!(
                "{len} keys in one batch, over {MAX_BATCH}"
            )));
        }
        Ok(())
    }

    fn bucket(
        &self,
        bucket: &Resource<BucketHandle>,
    ) -> Result<(String, Arc<dyn Backend>), Failure> {
        let b = self
            .handles
            .get(bucket)
            .map_err(|e| Failure::Handle(e.to_string()))?;
        Ok((b.name.clone(), b.backend.clone()))
    }

    /// The bucket's name and backend, once `key` is known to fit `max_kv_key_size`.
    fn keyed(
        &self,
        bucket: &Resource<BucketHandle>,
        key: &str,
    ) -> Result<(String, Arc<dyn Backend>), Failure> {
        self.check_key("the key", key)?;
        self.bucket(bucket)
    }

    async fn open(&mut self, identifier: String) -> Result<Resource<BucketHandle>, Failure> {
        let Some(grant) = &self.grant else {
            return Err(Failure::Denied(format!(
                "app {app} has no kv grant: add kv = \"embedded\" (or kv = \"redis://host:port/db\") \
                 to [worker.grants.{app}]",
                app = self.app
            )));
        };
        self.check_key("the bucket name", &identifier)?;
        let backend = self.stores.backend(&self.app, grant).await?;
        self.handles
            .push(BucketHandle {
                name: identifier,
                backend,
            })
            .map_err(|e| Failure::Handle(e.to_string()))
    }

    async fn get(
        &mut self,
        bucket: &Resource<BucketHandle>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let (name, backend) = self.keyed(bucket, &key)?;
        let value = backend.get(name, key).await?;
        self.check_read(value)
    }

    async fn new_cas(
        &mut self,
        bucket: &Resource<BucketHandle>,
        key: String,
    ) -> Result<Resource<CasHandle>, Failure> {
        let (name, backend) = self.keyed(bucket, &key)?;
        let read = backend.get(name.clone(), key.clone()).await?;
        let read = self.check_read(read)?;
        self.handles
            .push(CasHandle {
                bucket: name,
                key,
                backend,
                read,
            })
            .map_err(|e| Failure::Handle(e.to_string()))
    }
}

/// Why a call failed, before it becomes the guest's `error`.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("bad handle: {0}")]
    Handle(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl Failure {
    fn outcome(&self) -> &'static str {
        match self {
            Failure::Denied(_) => "denied",
            Failure::TooLarge(_) => "too_large",
            Failure::Handle(_) | Failure::Backend(_) => "error",
        }
    }
}

/// Times one call and counts its outcome; a call dropped before it finished (the callback's
/// deadline) counts as `timeout`.
struct Meter {
    app: Arc<str>,
    started: Instant,
    finished: bool,
}

impl Meter {
    fn finish<T>(mut self, result: Result<T, Failure>) -> Result<T, store::Error> {
        self.finished = true;
        let took = self.started.elapsed();
        match result {
            Ok(value) => {
                metrics::data_call(&self.app, "kv", "ok", took);
                Ok(value)
            }
            Err(failure) => {
                metrics::data_call(&self.app, "kv", failure.outcome(), took);
                tracing::debug!(plugin = %self.app, "key-value call failed: {failure}");
                Err(store::Error::Other(failure.to_string()))
            }
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if !self.finished {
            metrics::data_call(&self.app, "kv", "timeout", self.started.elapsed());
        }
    }
}

impl store::Host for KvState {
    async fn open(&mut self, identifier: String) -> Result<Resource<BucketHandle>, store::Error> {
        let meter = self.meter();
        let result = KvState::open(self, identifier).await;
        meter.finish(result)
    }
}

impl store::HostBucket for KvState {
    async fn get(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        let meter = self.meter();
        let result = KvState::get(self, &bucket, key).await;
        meter.finish(result)
    }

    async fn set(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), store::Error> {
        let meter = self.meter();
        let result = async move {
            self.check_key("the key", &key)?;
            self.check_value(&value)?;
            let (name, backend) = self.bucket(&bucket)?;
            Ok(backend.set(name, key, value).await?)
        };
        meter.finish(result.await)
    }

    async fn delete(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<(), store::Error> {
        let meter = self.meter();
        let result = async move {
            let (name, backend) = self.keyed(&bucket, &key)?;
            Ok(backend.delete(name, key).await?)
        };
        meter.finish(result.await)
    }

    async fn exists(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<bool, store::Error> {
        let meter = self.meter();
        let result = async move {
            let (name, backend) = self.keyed(&bucket, &key)?;
            Ok(backend.exists(name, key).await?)
        };
        meter.finish(result.await)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<BucketHandle>,
        cursor: Option<String>,
    ) -> Result<store::KeyResponse, store::Error> {
        let meter = self.meter();
        let result = async move {
            let (name, backend) = self.bucket(&bucket)?;
            let (keys, cursor) = backend.list_keys(name, cursor).await?;
            Ok(store::KeyResponse { keys, cursor })
        };
        meter.finish(result.await)
    }

    async fn drop(&mut self, bucket: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.handles.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KvState {
    async fn increment(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        delta: i64,
    ) -> Result<i64, store::Error> {
        let meter = self.meter();
        let result = async move {
            let (name, backend) = self.keyed(&bucket, &key)?;
            Ok(backend.increment(name, key, delta).await?)
        };
        meter.finish(result.await)
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> Result<(), atomics::CasError> {
        let meter = self.meter();
        let handle = match self.handles.delete(cas) {
            Ok(handle) => handle,
            Err(e) => {
                let error = meter.finish::<()>(Err(Failure::Handle(e.to_string())));
                return Err(atomics::CasError::StoreError(error.unwrap_err()));
            }
        };
        if let Err(e) = self.check_value(&value) {
            let error = meter.finish::<()>(Err(e)).unwrap_err();
            return Err(atomics::CasError::StoreError(error));
        }
        let CasHandle {
            bucket,
            key,
            backend,
            read,
        } = handle;
        let swapped = backend
            .swap(bucket.clone(), key.clone(), read, value)
            .await
            .map_err(Failure::from);
        match swapped {
            Ok(true) => meter.finish(Ok(())).map_err(atomics::CasError::StoreError),
            Ok(false) => {
                // Someone else wrote first: hand back a fresh read for the retry.
                let current = backend
                    .get(bucket.clone(), key.clone())
                    .await
                    .map_err(Failure::from)
                    .and_then(|read| self.check_read(read));
                let fresh = current.and_then(|read| {
                    self.handles
                        .push(CasHandle {
                            bucket,
                            key,
                            backend,
                            read,
                        })
                        .map_err(|e| Failure::Handle(e.to_string()))
                });
                match meter.finish(fresh) {
                    Ok(fresh) => Err(atomics::CasError::CasFailed(fresh)),
                    Err(e) => Err(atomics::CasError::StoreError(e)),
                }
            }
            Err(e) => Err(atomics::CasError::StoreError(
                meter.finish::<()>(Err(e)).unwrap_err(),
            )),
        }
    }
}

impl atomics::HostCas for KvState {
    async fn new(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<Resource<CasHandle>, store::Error> {
        let meter = self.meter();
        let result = self.new_cas(&bucket, key).await;
        meter.finish(result)
    }

    async fn current(&mut self, cas: Resource<CasHandle>) -> Result<Option<Vec<u8>>, store::Error> {
        let meter = self.meter();
        let result = self
            .handles
            .get(&cas)
            .map(|c| c.read.clone())
            .map_err(|e| Failure::Handle(e.to_string()));
        meter.finish(result)
    }

    async fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.handles.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for KvState {
    async fn get_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, store::Error> {
        let meter = self.meter();
        let result = async move {
            self.check_batch(keys.len())?;
            for key in &keys {
                self.check_key("a key", key)?;
            }
            let (name, backend) = self.bucket(&bucket)?;
            let values = backend.get_many(name, keys.clone()).await?;
            let mut found = Vec::with_capacity(values.len());
            for (key, value) in keys.into_iter().zip(values) {
                found.push(self.check_read(value)?.map(|v| (key, v)));
            }
            Ok(found)
        };
        meter.finish(result.await)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), store::Error> {
        let meter = self.meter();
        let result = async move {
            self.check_batch(key_values.len())?;
            for (key, value) in &key_values {
                self.check_key("a key", key)?;
                self.check_value(value)?;
            }
            let (name, backend) = self.bucket(&bucket)?;
            Ok(backend.set_many(name, key_values).await?)
        };
        meter.finish(result.await)
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> Result<(), store::Error> {
        let meter = self.meter();
        let result = async move {
            self.check_batch(keys.len())?;
            for key in &keys {
                self.check_key("a key", key)?;
            }
            let (name, backend) = self.bucket(&bucket)?;
            Ok(backend.delete_many(name, keys).await?)
        };
        meter.finish(result.await)
    }
}

/// The file of `app`'s embedded key-value store under the data directory `data`.
pub fn embedded_file(data: &Path, app: &str) -> PathBuf {
    data.join(app).join("kv.sqlite")
}
