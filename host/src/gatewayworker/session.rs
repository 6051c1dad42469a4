//! A wasmgate session (a string map) as GatewayWorker's serialized `$_SESSION`, and back.
//!
//! A PHP session is any array; a wasmgate session maps strings to strings. A string value
//! crosses as it is. Every other value (an int, a float, a bool, null, a nested array), and a
//! string that is not UTF-8 or that would read as an opaque value, is kept **opaque**: the
//! marker [`OPAQUE`] followed by its PHP serialization, or [`OPAQUE_BASE64`] followed by the
//! base64 of it when that is not UTF-8. Going back to PHP, an opaque value becomes the PHP
//! value it holds again, so nothing a PHP worker stored is lost or changes type on the way
//! through a wasm plugin. An int key `5` is the string key `"5"` here, and `"5"` goes back as
//! the int key PHP would make of it.
//!
//! What does change: the order of the keys. A wasmgate session is ordered by key, so a PHP
//! array comes back with its entries in that order (PHP's `!==` sees a difference; `==` and
//! every read by key do not).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::php_serial::{self, DecodeError, Key, Limits, Value};
use crate::ops::Session;

/// Starts a session value that holds a PHP value other than a plain string, serialized.
pub const OPAQUE: &str = "\0php:";

/// Starts a session value that holds a PHP value whose serialization is not UTF-8, in base64.
pub const OPAQUE_BASE64: &str = "\0php64:";

/// Why a serialized PHP session does not convert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The bytes are not a value of the subset.
    #[error("not a PHP-serialized value: {0}")]
    Decode(#[from] DecodeError),
    /// The value is not an array (nor `null`, which stands for no session).
    #[error("a session must be a PHP array")]
    NotAnArray,
    /// A string key that is not UTF-8 cannot be a wasmgate key.
    #[error("a session key is not UTF-8")]
    KeyNotUtf8,
}

/// The session GatewayWorker stores as `serialized`: `''` and `N;` are no session (empty).
pub fn from_php(serialized: &[u8], limits: Limits) -> Result<Session, SessionError> {
    if serialized.is_empty() {
        return Ok(Session::new());
    }
    match php_serial::decode(serialized, limits)? {
        Value::Null => Ok(Session::new()),
        Value::Array(entries) => from_entries(entries),
        _ => Err(SessionError::NotAnArray),
    }
}

/// The session a PHP array stands for.
pub fn from_entries(entries: Vec<(Key, Value)>) -> Result<Session, SessionError> {
    entries
        .into_iter()
        .map(|(key, value)| {
            let key = match key {
                Key::Int(i) => i.to_string(),
                Key::Str(s) => String::from_utf8(s).map_err(|_| SessionError::KeyNotUtf8)?,
            };
            Ok((key, to_string(value)))
        })
        .collect()
}

/// `session` as the PHP array GatewayWorker stores, serialized (`a:0:{}` when empty).
pub fn to_php(session: &Session) -> Vec<u8> {
    php_serial::encode(&Value::Array(to_entries(session)))
}

/// The PHP array `session` stands for.
pub fn to_entries(session: &Session) -> Vec<(Key, Value)> {
    session
        .iter()
        .map(|(key, value)| (Key::from_bytes(key.as_bytes()), to_value(value)))
        .collect()
}

/// The changes GatewayWorker's `CMD_UPDATE_SESSION` makes to `stored` with the serialized
/// array `update`, key by key: PHP's `array_replace_recursive`, so a key whose stored and new
/// values are both arrays gets the two merged (recursively), any other key the new value.
/// Applied as a key-by-key update, only the keys `update` names are touched.
pub fn merge_update(
    stored: &Session,
    update: &[u8],
    limits: Limits,
) -> Result<Session, SessionError> {
    let changes = match php_serial::decode(update, limits)? {
        Value::Array(entries) => entries,
        Value::Null => Vec::new(),
        _ => return Err(SessionError::NotAnArray),
    };
    let merged = changes
        .into_iter()
        .map(|(key, value)| {
            let name = match &key {
                Key::Int(i) => i.to_string(),
                Key::Str(s) => {
                    String::from_utf8(s.clone()).map_err(|_| SessionError::KeyNotUtf8)?
                }
            };
            let value = match (stored.get(&name).map(|old| to_value(old)), value) {
                (Some(Value::Array(old)), Value::Array(new)) => Value::Array(replace(old, new)),
                (_, value) => value,
            };
            Ok((key, value))
        })
        .collect::<Result<Vec<_>, SessionError>>()?;
    from_entries(merged)
}

/// `array_replace_recursive` on two arrays: `old`'s order, `new`'s keys replacing or added
/// at the end, arrays under one key merged.
fn replace(mut old: Vec<(Key, Value)>, new: Vec<(Key, Value)>) -> Vec<(Key, Value)> {
    for (key, value) in new {
        match old.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => {
                *slot = match (std::mem::replace(slot, Value::Null), value) {
                    (Value::Array(a), Value::Array(b)) => Value::Array(replace(a, b)),
                    (_, value) => value,
                }
            }
            None => old.push((key, value)),
        }
    }
    old
}

/// One session value as a string: itself if it is a UTF-8 string that reads back as itself,
/// else opaque.
fn to_string(value: Value) -> String {
    if let Value::Str(bytes) = &value
        && let Ok(text) = std::str::from_utf8(bytes)
        && to_value(text) == value
    {
        return text.to_owned();
    }
    let serialized = php_serial::encode(&value);
    match String::from_utf8(serialized) {
        Ok(text) => format!("{OPAQUE}{text}"),
        Err(error) => format!("{OPAQUE_BASE64}{}", STANDARD.encode(error.into_bytes())),
    }
}

/// One session value as PHP holds it: an opaque value's PHP value, else the string.
fn to_value(text: &str) -> Value {
    let opaque = if let Some(serialized) = text.strip_prefix(OPAQUE) {
        Some(serialized.as_bytes().to_vec())
    } else if let Some(encoded) = text.strip_prefix(OPAQUE_BASE64) {
        STANDARD.decode(encoded).ok()
    } else {
        None
    };
    // What the marker does not introduce correctly (a plugin wrote it) stays a plain string.
    opaque
        .and_then(|bytes| php_serial::decode(&bytes, Limits::DEFAULT).ok())
        .unwrap_or_else(|| Value::Str(text.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::gatewayworker::php_serial::tests::{random_bytes, random_value};

    #[test]
    fn strings_cross_as_they_are_and_the_rest_stays_php() {
        let php = b"a:4:{s:4:\"name\";s:5:\"alice\";i:7;i:42;s:4:\"tags\";a:1:{i:0;s:1:\"x\";}\
                    s:3:\"bin\";s:1:\"\xff\";}";
        let session = from_php(php, Limits::DEFAULT).unwrap();
        assert_eq!(session["name"], "alice");
        assert_eq!(session["7"], "\0php:i:42;");
        assert_eq!(session["tags"], "\0php:a:1:{i:0;s:1:\"x\";}");
        assert_eq!(
            session["bin"],
            format!("{OPAQUE_BASE64}{}", STANDARD.encode(b"s:1:\"\xff\";"))
        );
        // Back in PHP: the same values, in key order ("7" is the int key 7 again).
        assert_eq!(
            to_php(&session),
            b"a:4:{i:7;i:42;s:3:\"bin\";s:1:\"\xff\";s:4:\"name\";s:5:\"alice\";s:4:\"tags\";a:1:{i:0;s:1:\"x\";}}"
        );
    }

    #[test]
    fn an_update_merges_arrays_recursively_as_php_does() {
        let stored = from_php(
            br#"a:3:{s:4:"name";s:5:"alice";s:5:"prefs";a:2:{s:5:"theme";s:4:"dark";s:4:"tabs";a:1:{i:0;s:1:"a";}}s:1:"n";i:1;}"#,
            Limits::DEFAULT,
        )
        .unwrap();
        let update = br#"a:3:{s:5:"prefs";a:2:{s:4:"tabs";a:1:{i:1;s:1:"b";}s:4:"lang";s:2:"fr";}s:1:"n";a:0:{}s:3:"new";b:1;}"#;
        let changes = merge_update(&stored, update, Limits::DEFAULT).unwrap();
        // Only the keys the update names; `name` is left alone.
        assert_eq!(changes.keys().collect::<Vec<_>>(), ["n", "new", "prefs"]);
        assert_eq!(
            changes["prefs"],
            "\0php:a:3:{s:5:\"theme\";s:4:\"dark\";s:4:\"tabs\";a:2:{i:0;s:1:\"a\";i:1;s:1:\"b\";}s:4:\"lang\";s:2:\"fr\";}"
        );
        // An array over a scalar replaces it; a scalar over anything replaces it.
        assert_eq!(changes["n"], "\0php:a:0:{}");
        assert_eq!(changes["new"], "\0php:b:1;");
        assert_eq!(
            merge_update(&stored, b"i:1;", Limits::DEFAULT),
            Err(SessionError::NotAnArray)
        );
    }

    #[test]
    fn no_session_and_not_a_session() {
        assert_eq!(from_php(b"", Limits::DEFAULT), Ok(Session::new()));
        assert_eq!(from_php(b"N;", Limits::DEFAULT), Ok(Session::new()));
        assert_eq!(to_php(&Session::new()), b"a:0:{}");
        assert_eq!(
            from_php(b"i:1;", Limits::DEFAULT),
            Err(SessionError::NotAnArray)
        );
        assert_eq!(
            from_php(b"a:1:{s:1:\"\xff\";N;}", Limits::DEFAULT),
            Err(SessionError::KeyNotUtf8)
        );
        assert!(matches!(
            from_php(b"a:1:{", Limits::DEFAULT),
            Err(SessionError::Decode(_))
        ));
    }

    #[test]
    fn a_plugins_string_that_looks_opaque_is_kept_as_written() {
        let session = Session::from([
            ("a".to_owned(), "\0php:not php".to_owned()),
            ("b".to_owned(), "\0php64:!!".to_owned()),
            ("c".to_owned(), "\0php:i:1;".to_owned()),
        ]);
        let php = to_php(&session);
        assert_eq!(
            php,
            b"a:3:{s:1:\"a\";s:12:\"\0php:not php\";s:1:\"b\";s:9:\"\0php64:!!\";s:1:\"c\";i:1;}"
        );
        // A PHP string starting with the marker comes back opaque, so it stays a string.
        assert_eq!(from_php(&php, Limits::DEFAULT).unwrap(), session);
        assert_eq!(
            to_php(&from_php(&php, Limits::DEFAULT).unwrap()),
            php,
            "round trip"
        );
    }

    #[test]
    fn every_session_round_trips_through_php() {
        let mut rng = StdRng::seed_from_u64(19);
        for _ in 0..5_000 {
            let session: Session = (0..rng.random_range(0..6))
                .map(|_| {
                    let text =
                        |rng: &mut StdRng| String::from_utf8_lossy(&random_bytes(rng)).into_owned();
                    (text(&mut rng), text(&mut rng))
                })
                .collect();
            let php = to_php(&session);
            assert_eq!(from_php(&php, Limits::DEFAULT).unwrap(), session);
        }
    }

    #[test]
    fn every_php_array_round_trips_through_a_session() {
        let mut rng = StdRng::seed_from_u64(20);
        for _ in 0..5_000 {
            let entries: Vec<(Key, Value)> = match random_value(&mut rng, 3) {
                Value::Array(entries) => entries,
                other => vec![(Key::Str(b"k".to_vec()), other)],
            };
            let entries: Vec<_> = entries
                .into_iter()
                .filter(|(k, _)| !matches!(k, Key::Str(s) if std::str::from_utf8(s).is_err()))
                .collect();
            let php = php_serial::encode(&Value::Array(entries.clone()));
            let session = from_php(&php, Limits::DEFAULT).unwrap();
            let back = php_serial::decode(&to_php(&session), Limits::DEFAULT).unwrap();
            let Value::Array(mut back) = back else {
                panic!("not an array");
            };
            // The same entries; the order is the session's (by key as a string).
            let mut entries = entries;
            let order = |(k, _): &(Key, Value)| match k {
                Key::Int(i) => i.to_string().into_bytes(),
                Key::Str(s) => s.clone(),
            };
            entries.sort_by_key(order);
            back.sort_by_key(order);
            assert_eq!(
                php_serial::encode(&Value::Array(back)),
                php_serial::encode(&Value::Array(entries))
            );
        }
    }
}
