//! What a key-value backend is: the trait the embedded and Redis stores implement, and how
//! they fail.

use futures_util::future::BoxFuture;

/// Most keys one `list-keys` page returns.
pub const LIST_PAGE: usize = 1000;

/// Why a backend could not do what was asked. The message is what the guest reads.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The store cannot be reached or opened (a Redis server that is down, an unwritable data
    /// directory, a store thread that is gone).
    #[error("key-value store unavailable: {0}")]
    Unavailable(String),
    /// The store has more calls queued than it takes.
    #[error("key-value store busy: {0} calls queued")]
    Busy(usize),
    /// `increment` found a value that is not a decimal 64-bit integer, or would overflow.
    #[error("the value of `{0}` is not a 64-bit integer (or the sum overflows)")]
    NotAnInteger(String),
    /// The store answered with an error.
    #[error("key-value store error: {0}")]
    Failed(String),
}

/// What a backend returns: a future that owns everything it needs, so it can be dropped at
/// any await (the callback's deadline) without leaving the store wedged.
pub type Reply<T> = BoxFuture<'static, Result<T, BackendError>>;

/// One app's key-value store. Buckets are namespaces inside it; keys and values arrive
/// already checked against the size limits.
pub trait Backend: Send + Sync {
    /// The value under `key`, or `None`.
    fn get(&self, bucket: String, key: String) -> Reply<Option<Vec<u8>>>;
    /// Stores `value` under `key`.
    fn set(&self, bucket: String, key: String, value: Vec<u8>) -> Reply<()>;
    /// Removes `key`.
    fn delete(&self, bucket: String, key: String) -> Reply<()>;
    /// Whether `key` holds a value.
    fn exists(&self, bucket: String, key: String) -> Reply<bool>;
    /// Up to [`LIST_PAGE`] keys from `cursor` on, and the cursor of the next page.
    fn list_keys(
        &self,
        bucket: String,
        cursor: Option<String>,
    ) -> Reply<(Vec<String>, Option<String>)>;
    /// Adds `delta` to the decimal integer under `key` (missing: 0), atomically.
    fn increment(&self, bucket: String, key: String, delta: i64) -> Reply<i64>;
    /// Stores `value` under `key` if it still holds `expected` (`None`: nothing); whether it
    /// did, atomically.
    fn swap(
        &self,
        bucket: String,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Reply<bool>;
    /// Each key's value, in order.
    fn get_many(&self, bucket: String, keys: Vec<String>) -> Reply<Vec<Option<Vec<u8>>>>;
    /// Stores every pair.
    fn set_many(&self, bucket: String, pairs: Vec<(String, Vec<u8>)>) -> Reply<()>;
    /// Removes every key.
    fn delete_many(&self, bucket: String, keys: Vec<String>) -> Reply<()>;
}
