//! The embedded key-value backend: one SQLite file per app (`<data>/<app>/kv.sqlite`), owned
//! by one thread of its own, so no blocking call runs on the async workers and the threads
//! stay bounded (one per app that uses the store).
//!
//! Calls queue to the thread (at most [`QUEUE`]; past that a call fails as busy, never
//! waits). A call whose caller went away (the callback's deadline) is skipped if it has not
//! started, and interrupted (`sqlite3_interrupt`) if it has. What survives a restart: every
//! call that returned `ok` (WAL journal; `synchronous = NORMAL` keeps commits across a crash
//! of the process, a power loss may lose the last few).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use rusqlite::{Connection, InterruptHandle, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::backend::{Backend, BackendError, LIST_PAGE, Reply};

/// Most calls queued to one app's store thread.
const QUEUE: usize = 1024;

/// How long a statement waits for a lock held by another connection to the same file (a
/// second worker host pointed at the same data directory) before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// One app's SQLite store and the thread that owns its connection.
pub struct Embedded {
    jobs: SyncSender<Job>,
    interrupt: Arc<InterruptHandle>,
    /// The id of the call running now (0: none), so a dropped call interrupts only itself.
    running: Arc<AtomicU64>,
    next_id: AtomicU64,
}

impl Embedded {
    /// Opens (creating it, and its directory 0700, if needed) the store `file` of `app` on a
    /// new thread.
    pub async fn open(app: &str, file: PathBuf) -> Result<Self, BackendError> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let (ready_tx, ready) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("wasmgate-kv-{app}"))
            .spawn(move || {
                let mut conn = match connect(&file) {
                    Ok(conn) => conn,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{}: {e}", file.display())));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(conn.get_interrupt_handle()));
                // Ends when the last `Embedded` (and so the sender) is dropped.
                while let Ok(job) = queue.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| {
                BackendError::Unavailable(format!("cannot start the store thread: {e}"))
            })?;
        let interrupt = ready
            .await
            .map_err(|_| BackendError::Unavailable("the store thread stopped".into()))?
            .map_err(BackendError::Unavailable)?;
        Ok(Self {
            jobs,
            interrupt: Arc::new(interrupt),
            running: Arc::new(AtomicU64::new(0)),
            next_id: AtomicU64::new(1),
        })
    }

    /// Runs `work` on the store thread; the returned future may be dropped at any point.
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Reply<T> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, result) = oneshot::channel();
        let running = self.running.clone();
        let job: Job = Box::new(move |conn| {
            if done.is_closed() {
                return;
            }
            running.store(id, Ordering::SeqCst);
            let outcome = work(conn);
            running.store(0, Ordering::SeqCst);
            let _ = done.send(outcome);
        });
        let queued = match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(BackendError::Busy(QUEUE)),
            Err(TrySendError::Disconnected(_)) => {
                Err(BackendError::Unavailable("the store thread stopped".into()))
            }
        };
        let guard = InterruptOnDrop {
            id,
            running: self.running.clone(),
            interrupt: self.interrupt.clone(),
            armed: true,
        };
        Box::pin(async move {
            let mut guard = guard;
            queued?;
            let outcome = result.await;
            guard.armed = false;
            match outcome {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(rusqlite::Error::ToSqlConversionFailure(e)))
                    if e.downcast_ref::<NotAnInteger>().is_some() =>
                {
                    let key = e.downcast_ref::<NotAnInteger>().map(|n| n.0.clone());
                    Err(BackendError::NotAnInteger(key.unwrap_or_default()))
                }
                Ok(Err(e)) => Err(BackendError::Failed(e.to_string())),
                Err(_) => Err(BackendError::Unavailable("the store thread stopped".into())),
            }
        })
    }
}

/// Interrupts the call `id` if its future is dropped while the store thread runs it.
struct InterruptOnDrop {
    id: u64,
    running: Arc<AtomicU64>,
    interrupt: Arc<InterruptHandle>,
    armed: bool,
}

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if self.armed && self.running.load(Ordering::SeqCst) == self.id {
            self.interrupt.interrupt();
        }
    }
}

/// `increment`'s refusal, carried out of the transaction as a conversion failure.
fn not_an_integer(key: &str) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(NotAnInteger(key.to_owned())))
}

/// The marker error `increment` raises inside a transaction.
#[derive(Debug, thiserror::Error)]
#[error("not an integer: {0}")]
struct NotAnInteger(String);

fn connect(file: &Path) -> Result<Connection, String> {
    if let Some(dir) = file.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let conn = Connection::open(file).map_err(|e| e.to_string())?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS kv (
             bucket TEXT NOT NULL,
             key TEXT NOT NULL,
             value BLOB NOT NULL,
             PRIMARY KEY (bucket, key)
         ) WITHOUT ROWID;",
    )
    .map_err(|e| e.to_string())?;
    Ok(conn)
}

fn read(conn: &Connection, bucket: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT value FROM kv WHERE bucket = ?1 AND key = ?2")?
        .query_row(params![bucket, key], |row| row.get(0))
        .optional()
}

fn write(conn: &Connection, bucket: &str, key: &str, value: &[u8]) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO kv (bucket, key, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![bucket, key, value])?;
    Ok(())
}

fn remove(conn: &Connection, bucket: &str, key: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM kv WHERE bucket = ?1 AND key = ?2")?
        .execute(params![bucket, key])?;
    Ok(())
}

impl Backend for Embedded {
    fn get(&self, bucket: String, key: String) -> Reply<Option<Vec<u8>>> {
        self.run(move |conn| read(conn, &bucket, &key))
    }

    fn set(&self, bucket: String, key: String, value: Vec<u8>) -> Reply<()> {
        self.run(move |conn| write(conn, &bucket, &key, &value))
    }

    fn delete(&self, bucket: String, key: String) -> Reply<()> {
        self.run(move |conn| remove(conn, &bucket, &key))
    }

    fn exists(&self, bucket: String, key: String) -> Reply<bool> {
        self.run(move |conn| {
            conn.prepare_cached("SELECT 1 FROM kv WHERE bucket = ?1 AND key = ?2")?
                .exists(params![bucket, key])
        })
    }

    fn list_keys(
        &self,
        bucket: String,
        cursor: Option<String>,
    ) -> Reply<(Vec<String>, Option<String>)> {
        self.run(move |conn| {
            // The cursor is the last key of the previous page: keys are listed in order.
            let mut statement = conn.prepare_cached(
                "SELECT key FROM kv WHERE bucket = ?1 AND (?2 IS NULL OR key > ?2)
                 ORDER BY key LIMIT ?3",
            )?;
            let keys = statement
                .query_map(params![bucket, cursor, LIST_PAGE as i64], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            let next = (keys.len() == LIST_PAGE).then(|| keys[LIST_PAGE - 1].clone());
            Ok((keys, next))
        })
    }

    fn increment(&self, bucket: String, key: String, delta: i64) -> Reply<i64> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = match read(&tx, &bucket, &key)? {
                None => 0,
                Some(bytes) => std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| not_an_integer(&key))?,
            };
            let sum = current
                .checked_add(delta)
                .ok_or_else(|| not_an_integer(&key))?;
            write(&tx, &bucket, &key, sum.to_string().as_bytes())?;
            tx.commit()?;
            Ok(sum)
        })
    }

    fn swap(
        &self,
        bucket: String,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Reply<bool> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if read(&tx, &bucket, &key)? != expected {
                return Ok(false);
            }
            write(&tx, &bucket, &key, &value)?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn get_many(&self, bucket: String, keys: Vec<String>) -> Reply<Vec<Option<Vec<u8>>>> {
        self.run(move |conn| keys.iter().map(|key| read(conn, &bucket, key)).collect())
    }

    fn set_many(&self, bucket: String, pairs: Vec<(String, Vec<u8>)>) -> Reply<()> {
        self.run(move |conn| {
            let tx = conn.transaction()?;
            for (key, value) in &pairs {
                write(&tx, &bucket, key, value)?;
            }
            tx.commit()
        })
    }

    fn delete_many(&self, bucket: String, keys: Vec<String>) -> Reply<()> {
        self.run(move |conn| {
            let tx = conn.transaction()?;
            for key in &keys {
                remove(&tx, &bucket, key)?;
            }
            tx.commit()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a fresh directory under the system's temporary one, removed after `body`.
    async fn with_store(test: &str, body: impl AsyncFnOnce(Embedded, &Path)) {
        let dir = std::env::temp_dir().join(format!(
            "wasmgate-kv-{test}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let file = dir.join("app").join("kv.sqlite");
        let store = Embedded::open("app", file.clone()).await.unwrap();
        body(store, &file).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn s(text: &str) -> String {
        text.to_owned()
    }

    #[tokio::test]
    async fn buckets_are_namespaces_and_values_are_bytes() {
        with_store("ns", async |store, _| {
            store
                .set(s("a"), s("k"), b"\xff\x00".to_vec())
                .await
                .unwrap();
            assert_eq!(
                store.get(s("a"), s("k")).await.unwrap(),
                Some(b"\xff\x00".to_vec())
            );
            assert_eq!(store.get(s("b"), s("k")).await.unwrap(), None);
            assert!(store.exists(s("a"), s("k")).await.unwrap());
            store.delete(s("a"), s("k")).await.unwrap();
            assert!(!store.exists(s("a"), s("k")).await.unwrap());
        })
        .await;
    }

    #[tokio::test]
    async fn increment_counts_in_decimal_and_refuses_other_values() {
        with_store("incr", async |store, _| {
            assert_eq!(store.increment(s("b"), s("n"), 5).await.unwrap(), 5);
            assert_eq!(store.increment(s("b"), s("n"), -7).await.unwrap(), -2);
            assert_eq!(
                store.get(s("b"), s("n")).await.unwrap(),
                Some(b"-2".to_vec())
            );
            store.set(s("b"), s("t"), b"text".to_vec()).await.unwrap();
            let refused = store.increment(s("b"), s("t"), 1).await;
            assert!(matches!(refused, Err(BackendError::NotAnInteger(k)) if k == "t"));
            store
                .set(s("b"), s("max"), i64::MAX.to_string().into_bytes())
                .await
                .unwrap();
            let overflow = store.increment(s("b"), s("max"), 1).await;
            assert!(matches!(overflow, Err(BackendError::NotAnInteger(_))));
        })
        .await;
    }

    #[tokio::test]
    async fn swap_happens_only_over_the_value_read() {
        with_store("cas", async |store, _| {
            let (b, k) = (s("b"), s("k"));
            assert!(
                store
                    .swap(b.clone(), k.clone(), None, b"1".to_vec())
                    .await
                    .unwrap()
            );
            assert!(
                !store
                    .swap(b.clone(), k.clone(), None, b"2".to_vec())
                    .await
                    .unwrap()
            );
            let read = Some(b"1".to_vec());
            assert!(
                store
                    .swap(b.clone(), k.clone(), read.clone(), b"3".to_vec())
                    .await
                    .unwrap()
            );
            assert!(
                !store
                    .swap(b.clone(), k.clone(), read, b"4".to_vec())
                    .await
                    .unwrap()
            );
            assert_eq!(store.get(b, k).await.unwrap(), Some(b"3".to_vec()));
        })
        .await;
    }

    #[tokio::test]
    async fn keys_are_listed_in_pages_and_batches_apply() {
        with_store("list", async |store, _| {
            let pairs: Vec<_> = (0..LIST_PAGE + 5)
                .map(|i| (format!("k{i:05}"), vec![1]))
                .collect();
            store.set_many(s("b"), pairs).await.unwrap();
            let (first, cursor) = store.list_keys(s("b"), None).await.unwrap();
            assert_eq!(first.len(), LIST_PAGE);
            let (rest, end) = store.list_keys(s("b"), cursor).await.unwrap();
            assert_eq!(rest.len(), 5);
            assert_eq!(end, None);
            let keys = vec![s("k00000"), s("nope")];
            let values = store.get_many(s("b"), keys.clone()).await.unwrap();
            assert_eq!(values, vec![Some(vec![1]), None]);
            store.delete_many(s("b"), keys).await.unwrap();
            assert!(!store.exists(s("b"), s("k00000")).await.unwrap());
        })
        .await;
    }

    #[tokio::test]
    async fn a_dropped_call_never_wedges_the_store() {
        with_store("drop", async |store, file| {
            // Dropped before it ran (queued behind a call that holds the thread): skipped.
            // The store serves the next call.
            let (release, held) = std::sync::mpsc::channel::<()>();
            let busy = store.run(move |_| {
                let _ = held.recv();
                Ok(())
            });
            drop(store.set(s("b"), s("k"), b"never".to_vec()));
            release.send(()).unwrap();
            busy.await.unwrap();
            assert_eq!(store.get(s("b"), s("k")).await.unwrap(), None);
            // A long statement cut by its deadline is interrupted, not waited for.
            let slow = store.run(|conn| {
                conn.query_row(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                     SELECT count(*) FROM c",
                    [],
                    |row| row.get::<_, i64>(0),
                )
            });
            let cut = tokio::time::timeout(Duration::from_millis(100), slow).await;
            assert!(cut.is_err(), "the endless statement ran to the deadline");
            let started = std::time::Instant::now();
            store.set(s("b"), s("k"), b"after".to_vec()).await.unwrap();
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
            let dir = file.parent().unwrap();
            let mode = std::fs::metadata(dir).unwrap().permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o700
            );
        })
        .await;
    }
}
