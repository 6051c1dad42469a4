//! Key-value storage through the standard `wasi:keyvalue` interfaces (`0.2.0-draft2`), if the
//! worker host grants it to the app (`[worker.grants.APP] kv = "embedded"` or a Redis URL).
//! Without the grant every call returns [`Error::Other`] saying so.
//!
//! ```no_run
//! use wasmgate_sdk::kv::Bucket;
//! # fn main() -> Result<(), wasmgate_sdk::kv::Error> {
//! let bucket = Bucket::open("default")?;
//! bucket.set("greeting", b"hello")?;
//! let visits = bucket.increment("visits", 1)?;
//! # Ok(()) }
//! ```
//!
//! Values are bytes; `increment` keeps a decimal integer (`b"42"`), which [`Bucket::get`]
//! returns as such. Keys and values have size caps set by the host (`max_kv_key_size`, 1 KiB,
//! and `max_kv_value_size`, 1 MiB, by default); a call past one fails and changes nothing.

use crate::bindings::wasi::keyvalue::{atomics, batch, store};

pub use store::Error;

/// How many times [`Bucket::update`] retries when another writer got there first.
const UPDATE_TRIES: usize = 16;

/// One open bucket: a namespace of keys in the app's store.
pub struct Bucket(store::Bucket);

impl Bucket {
    /// Opens the bucket `name` (any name; `"default"` by convention).
    pub fn open(name: &str) -> Result<Self, Error> {
        store::open(name).map(Self)
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.0.get(key)
    }

    /// The value under `key` as UTF-8 text, if any (lossy: invalid bytes become U+FFFD).
    pub fn get_string(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Stores `value` under `key`.
    pub fn set(&self, key: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        self.0.set(key, value.as_ref())
    }

    /// Removes `key` (no error if it is missing).
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        self.0.delete(key)
    }

    /// Whether `key` holds a value.
    pub fn exists(&self, key: &str) -> Result<bool, Error> {
        self.0.exists(key)
    }

    /// Every key of the bucket, page after page (use with care on large buckets).
    pub fn keys(&self) -> Result<Vec<String>, Error> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.0.list_keys(cursor.as_deref())?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Adds `delta` to the integer under `key` (a missing key counts as 0); the new value.
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64, Error> {
        atomics::increment(&self.0, key, delta)
    }

    /// Replaces the value under `key` with `change(current)`, retrying when another writer
    /// changed it in between (compare-and-swap); the value stored.
    pub fn update(
        &self,
        key: &str,
        mut change: impl FnMut(Option<&[u8]>) -> Vec<u8>,
    ) -> Result<Vec<u8>, Error> {
        let mut cas = atomics::Cas::new(&self.0, key)?;
        for _ in 0..UPDATE_TRIES {
            let value = change(cas.current()?.as_deref());
            match atomics::swap(cas, &value) {
                Ok(()) => return Ok(value),
                Err(atomics::CasError::CasFailed(fresh)) => cas = fresh,
                Err(atomics::CasError::StoreError(e)) => return Err(e),
            }
        }
        Err(Error::Other(format!(
            "`{key}` kept changing: gave up after {UPDATE_TRIES} tries"
        )))
    }

    /// The values of `keys`, in order (`None` for a missing key).
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let found = batch::get_many(&self.0, keys)?;
        Ok(found.into_iter().map(|pair| pair.map(|(_, v)| v)).collect())
    }

    /// Stores every pair (not atomically: after an error some may be stored).
    pub fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<(), Error> {
        batch::set_many(&self.0, pairs)
    }

    /// Removes every key (not atomically).
    pub fn delete_many(&self, keys: &[String]) -> Result<(), Error> {
        batch::delete_many(&self.0, keys)
    }

    /// The generated resource, for what this wrapper does not cover.
    pub fn inner(&self) -> &store::Bucket {
        &self.0
    }
}
