//! The Redis key-value backend: one reconnecting, multiplexed connection per app and server
//! (`redis::aio::ConnectionManager`), shared by the app's instances. The store is shared by
//! every worker host that names the same server.
//!
//! Keys are `wg:<len>:<app>:<len>:<bucket>:<key>`: apps sharing a server never see each
//! other's keys, and the lengths keep `a:b` + `c` apart from `a` + `b:c`. Values are stored
//! as they are; `increment` uses `INCRBY` (decimal strings, as the embedded store keeps them)
//! and `swap` a Lua script, both atomic on the server. A server that is down fails the call
//! within [`RESPONSE_TIMEOUT`]; the manager reconnects in the background. Dropping a call's
//! future abandons the request: its reply is discarded when it arrives.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::backend::{Backend, BackendError, LIST_PAGE, Reply};

/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a call waits for the server's reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets the key to ARGV[2] if it holds ARGV[1] (ARGV[3] = "0": if it holds nothing).
const SWAP: &str = r#"
local current = redis.call('GET', KEYS[1])
local expected_absent = ARGV[3] == '0'
if (expected_absent and current == false) or (not expected_absent and current == ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// One app's connection to one Redis server.
pub struct Redis {
    conn: ConnectionManager,
    prefix: String,
    swap: redis::Script,
}

fn failed(e: redis::RedisError) -> BackendError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        BackendError::Unavailable(e.to_string())
    } else {
        BackendError::Failed(e.to_string())
    }
}

impl Redis {
    /// Connects `app` to the server at `url`.
    pub async fn open(app: &str, url: &str) -> Result<Self, BackendError> {
        let client = redis::Client::open(url).map_err(|e| BackendError::Failed(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(failed)?;
        Ok(Self {
            conn,
            prefix: format!("wg:{}:{app}:", app.len()),
            swap: redis::Script::new(SWAP),
        })
    }

    fn bucket_prefix(&self, bucket: &str) -> String {
        format!("{}{}:{bucket}:", self.prefix, bucket.len())
    }

    fn key(&self, bucket: &str, key: &str) -> String {
        format!("{}{key}", self.bucket_prefix(bucket))
    }
}

/// `pattern` with Redis glob characters escaped, for `SCAN MATCH`.
fn escape_glob(pattern: &str) -> String {
    let mut escaped = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

impl Backend for Redis {
    fn get(&self, bucket: String, key: String) -> Reply<Option<Vec<u8>>> {
        let (mut conn, key) = (self.conn.clone(), self.key(&bucket, &key));
        Box::pin(async move { conn.get(key).await.map_err(failed) })
    }

    fn set(&self, bucket: String, key: String, value: Vec<u8>) -> Reply<()> {
        let (mut conn, key) = (self.conn.clone(), self.key(&bucket, &key));
        Box::pin(async move { conn.set(key, value).await.map_err(failed) })
    }

    fn delete(&self, bucket: String, key: String) -> Reply<()> {
        let (mut conn, key) = (self.conn.clone(), self.key(&bucket, &key));
        Box::pin(async move { conn.del(key).await.map_err(failed) })
    }

    fn exists(&self, bucket: String, key: String) -> Reply<bool> {
        let (mut conn, key) = (self.conn.clone(), self.key(&bucket, &key));
        Box::pin(async move { conn.exists(key).await.map_err(failed) })
    }

    fn list_keys(
        &self,
        bucket: String,
        cursor: Option<String>,
    ) -> Reply<(Vec<String>, Option<String>)> {
        let mut conn = self.conn.clone();
        let prefix = self.bucket_prefix(&bucket);
        Box::pin(async move {
            // The cursor is Redis's own SCAN cursor; a page may repeat a key (SCAN's rule).
            let start: u64 = match cursor {
                None => 0,
                Some(c) => c
                    .parse()
                    .map_err(|_| BackendError::Failed(format!("bad cursor {c:?}")))?,
            };
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(start)
                .arg("MATCH")
                .arg(format!("{}*", escape_glob(&prefix)))
                .arg("COUNT")
                .arg(LIST_PAGE)
                .query_async(&mut conn)
                .await
                .map_err(failed)?;
            let keys = keys
                .into_iter()
                .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
                .collect();
            Ok((keys, (next != 0).then(|| next.to_string())))
        })
    }

    fn increment(&self, bucket: String, key: String, delta: i64) -> Reply<i64> {
        let (mut conn, full) = (self.conn.clone(), self.key(&bucket, &key));
        Box::pin(async move {
            conn.incr(full, delta).await.map_err(|e| {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) {
                    BackendError::NotAnInteger(key)
                } else {
                    failed(e)
                }
            })
        })
    }

    fn swap(
        &self,
        bucket: String,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Reply<bool> {
        let (mut conn, key) = (self.conn.clone(), self.key(&bucket, &key));
        let script = self.swap.clone();
        Box::pin(async move {
            let mut invocation = script.prepare_invoke();
            invocation
                .key(key)
                .arg(expected.as_deref().unwrap_or_default())
                .arg(value)
                .arg(if expected.is_some() { "1" } else { "0" });
            let swapped: i64 = invocation.invoke_async(&mut conn).await.map_err(failed)?;
            Ok(swapped == 1)
        })
    }

    fn get_many(&self, bucket: String, keys: Vec<String>) -> Reply<Vec<Option<Vec<u8>>>> {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = keys.iter().map(|k| self.key(&bucket, k)).collect();
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            redis::cmd("MGET")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .map_err(failed)
        })
    }

    fn set_many(&self, bucket: String, pairs: Vec<(String, Vec<u8>)>) -> Reply<()> {
        let mut conn = self.conn.clone();
        let pairs: Vec<(String, Vec<u8>)> = pairs
            .into_iter()
            .map(|(k, v)| (self.key(&bucket, &k), v))
            .collect();
        Box::pin(async move {
            if pairs.is_empty() {
                return Ok(());
            }
            conn.mset(&pairs).await.map_err(failed)
        })
    }

    fn delete_many(&self, bucket: String, keys: Vec<String>) -> Reply<()> {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = keys.iter().map(|k| self.key(&bucket, k)).collect();
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(());
            }
            conn.del(keys).await.map_err(failed)
        })
    }
}
