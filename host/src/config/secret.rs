//! The cluster's shared secret: where it comes from, and when a start refuses it.
//!
//! A process takes the first of: the `WASMGATE_SECRET` environment variable, the file's
//! `secret`, the file named by `secret_file`. A secret shorter than [`MIN_SECRET`] bytes, or
//! none at all, is refused with the key named unless every internal address the process
//! uses (the register it runs, its gateways' internal listeners, the registers it reaches) is
//! on loopback: then nobody off the machine can link, and a process without a secret uses
//! one generated once into `<name>.secret` beside the configuration file (mode 0600, like
//! Erlang's cookie). A per-start random secret would do only when one process runs every
//! role; the file lets processes of one configuration started separately (`--role`) agree.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The environment variable that overrides the file's `secret` and `secret_file`.
pub const SECRET_ENV: &str = "WASMGATE_SECRET";

/// Shortest secret accepted when an internal address is off loopback.
pub const MIN_SECRET: usize = 16;

/// Longest secret file read: a secret is a line, and a path to `/dev/zero` must not fill
/// memory.
const MAX_SECRET_FILE: u64 = 4096;

/// Where the cluster secret comes from, as the configuration file says (paths resolved); an
/// empty `secret` counts as none.
#[derive(Clone)]
pub enum SecretSource {
    /// `secret = "…"`.
    Inline(String),
    /// `secret_file`.
    File(PathBuf),
    /// Neither: the file a start generates when every internal address is on loopback.
    Generated(PathBuf),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(…)"),
            SecretSource::File(path) => f.debug_tuple("File").field(path).finish(),
            SecretSource::Generated(path) => f.debug_tuple("Generated").field(path).finish(),
        }
    }
}

/// Why a start has no usable secret; each message names the key to set.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Nothing given, and something is off loopback.
    #[error(
        "no `secret`, but {0} is not on loopback, so anyone who reaches it could link: set \
         `secret` (at least {MIN_SECRET} bytes) or `secret_file`, or {SECRET_ENV} \
         (`wasmgate genconfig` writes a configuration with a fresh one)"
    )]
    Missing(String),
    /// Too short for a network.
    #[error(
        "`{key}` is {len} bytes, shorter than {MIN_SECRET}, and {off} is not on loopback: \
         use a long random one (`wasmgate genconfig` writes one)"
    )]
    Short {
        /// Where the secret came from.
        key: String,
        /// Its length.
        len: usize,
        /// The first address off loopback.
        off: String,
    },
    /// A secret file that cannot be used.
    #[error("`{key}` {}: {reason}", path.display())]
    File {
        /// `secret_file`, or `secret` for the generated one.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A secret ready for the internal links, and where it came from (for the log).
pub struct Secret {
    /// The bytes the handshake's HMAC is keyed with.
    pub bytes: Vec<u8>,
    /// Where it came from: `WASMGATE_SECRET`, `secret`, `secret_file /path`, or the generated
    /// file.
    pub origin: String,
}

/// The secret `source` gives, or `env` (`WASMGATE_SECRET`) before it; refused (naming the
/// key) when missing or short while `off_loopback` names an internal address off loopback.
pub fn load(
    source: &SecretSource,
    env: Option<OsString>,
    off_loopback: Option<String>,
) -> Result<Secret, SecretError> {
    let given = match (env.filter(|v| !v.is_empty()), source) {
        (Some(env), _) => Some((env.into_encoded_bytes(), SECRET_ENV.to_owned())),
        (None, SecretSource::Inline(s)) => Some((s.clone().into_bytes(), "secret".to_owned())),
        (None, SecretSource::File(path)) => {
            let bytes = read_secret_file("secret_file", path)?;
            Some((bytes, format!("secret_file {}", path.display())))
        }
        (None, SecretSource::Generated(_)) => None,
    };
    match (given, off_loopback) {
        (Some((bytes, key)), Some(off)) if bytes.len() < MIN_SECRET => Err(SecretError::Short {
            key,
            len: bytes.len(),
            off,
        }),
        (Some((bytes, origin)), _) => Ok(Secret { bytes, origin }),
        (None, Some(off)) => Err(SecretError::Missing(off)),
        (None, None) => {
            let SecretSource::Generated(path) = source else {
                unreachable!("a given secret or secret file is read above")
            };
            Ok(Secret {
                bytes: generated(path)?,
                origin: format!(
                    "{} (generated: every internal address is on loopback)",
                    path.display()
                ),
            })
        }
    }
}

/// Reads a secret file: at most [`MAX_SECRET_FILE`] bytes of a regular file, surrounding
/// whitespace (a final newline) left out; an empty one is refused.
fn read_secret_file(key: &'static str, path: &Path) -> Result<Vec<u8>, SecretError> {
    let refuse = |reason: String| SecretError::File {
        key,
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| refuse(e.to_string()))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            "the secret file is readable by others than its owner: chmod 600 it"
        );
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| refuse(e.to_string()))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(refuse(format!("longer than {MAX_SECRET_FILE} bytes")));
    }
    let secret = bytes.trim_ascii();
    if secret.is_empty() {
        return Err(refuse("empty".into()));
    }
    Ok(secret.to_vec())
}

/// The generated secret at `path`: read if a start made it already, else made now (owner-only,
/// written in full under a temporary name, then linked into place, so a process starting at
/// the same moment reads either nothing or the whole secret, and the first one wins).
fn generated(path: &Path) -> Result<Vec<u8>, SecretError> {
    if path.exists() {
        return read_secret_file("secret", path);
    }
    let refuse = |reason: String| SecretError::File {
        key: "secret",
        path: path.to_owned(),
        reason: format!("cannot generate it: {reason}"),
    };
    let temporary = path.with_file_name(format!(
        ".{}.{}-{:x}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut f| {
            f.write_all(format!("{}\n", random_secret()).as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match written {
        Ok(()) => tracing::info!(file = %path.display(), "generated the cluster secret"),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(refuse(e.to_string())),
    }
    read_secret_file("secret", path)
}

/// A fresh secret: 32 random bytes as 64 hex digits.
pub fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wasmgate-secret-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn config(dir: &Path, text: &str) -> Config {
        Config::from_toml(text, &dir.join("prod.toml")).unwrap()
    }

    const OFF: &str = "[register]\nlisten = \"192.0.2.1:1236\"\n";

    #[test]
    fn missing_empty_or_short_secrets_are_refused_off_loopback_naming_the_key() {
        let dir = dir("refused");
        for (text, key) in [
            (OFF.to_owned(), "`secret`"),
            (format!("secret = \"\"\n{OFF}"), "`secret`"),
            (
                format!("secret = \"change-me\"\n{OFF}"),
                "`secret` is 9 bytes",
            ),
            (
                "[[gateway]]\nlisten = \"ws://127.0.0.1:1\"\napp = \"a\"\nlan_ip = \"10.0.0.2\"\n"
                    .to_owned(),
                "lan_ip",
            ),
            (
                "[worker]\nregister = \"10.0.0.1:1236\"\n".to_owned(),
                "[worker] register",
            ),
        ] {
            let err = config(&dir, &text)
                .load_secret_with(None)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
        let err = config(&dir, OFF)
            .load_secret_with(Some("short".into()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(SECRET_ENV), "{err}");
        assert!(
            !dir.join("prod.secret").exists(),
            "nothing generated off loopback"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_environment_wins_then_secret_then_secret_file() {
        let dir = dir("sources");
        let long = "0123456789abcdef0123";
        let c = config(&dir, &format!("secret = \"{long}\"\n{OFF}"));
        assert_eq!(c.load_secret_with(None).unwrap().bytes, long.as_bytes());
        let env = c
            .load_secret_with(Some("from-the-environment!".into()))
            .unwrap();
        assert_eq!(env.bytes, b"from-the-environment!");
        std::fs::write(dir.join("s"), format!("{long}\n")).unwrap();
        let c = config(&dir, &format!("secret_file = \"s\"\n{OFF}"));
        let from_file = c.load_secret_with(None).unwrap();
        assert_eq!(
            from_file.bytes,
            long.as_bytes(),
            "the final newline is left out"
        );
        std::fs::write(dir.join("s"), "\n").unwrap();
        assert!(c.load_secret_with(None).is_err(), "an empty secret file");
        let err = Config::from_toml(
            "secret = \"a\"\nsecret_file = \"s\"\n",
            &dir.join("prod.toml"),
        )
        .unwrap_err();
        let err = format!("{:#}", anyhow::Error::from(err));
        assert!(err.contains("secret_file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn on_loopback_a_secret_is_generated_once_owner_only_and_shared() {
        let dir = dir("generated");
        let c = config(&dir, "[register]\n[worker]\n");
        let first = c.load_secret_with(None).unwrap();
        let file = dir.join("prod.secret");
        assert_eq!(first.bytes.len(), 64);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Another process of the same file (say `--role worker`) reads the same one.
        let again = config(&dir, "[worker]\n").load_secret_with(None).unwrap();
        assert_eq!(again.bytes, first.bytes);
        // A short secret is the operator's choice on loopback.
        let short = config(&dir, "secret = \"x\"\n[register]\n");
        assert_eq!(short.load_secret_with(None).unwrap().bytes, b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
