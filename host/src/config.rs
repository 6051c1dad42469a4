//! The configuration file (TOML) and the defaults used when there is none.
//!
//! Which sections a file has decides which roles a process runs: `[register]`, `[[gateway]]`
//! (one entry per client listener, each a gateway with its own internal port, as in
//! GatewayWorker's multi-protocol setup) and `[worker]`. Unknown keys are errors, so a typo
//! never silently falls back to a default. Durations are written like `"25s"` or `"500ms"`,
//! sizes like `"64MiB"`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Where a register listens by default, and where gateways and worker hosts look for one.
pub const DEFAULT_REGISTER: &str = "127.0.0.1:1236";

/// A whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cluster's shared secret: internal links prove they know it (HMAC challenge)
    /// without sending it. Every process of a cluster needs the same one.
    #[serde(default)]
    pub secret: String,
    /// Run a register.
    pub register: Option<RegisterConfig>,
    /// Run one gateway per entry.
    #[serde(default)]
    pub gateway: Vec<GatewayConfig>,
    /// Run a worker host.
    pub worker: Option<WorkerConfig>,
}

/// `[register]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// Address to listen on for gateways and worker hosts; keep it on a private network.
    #[serde(default = "default_register")]
    pub listen: SocketAddr,
}

/// One `[[gateway]]`: a client listener, its internal port and its limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Name shown in logs and `status`; defaults to the listen URL.
    #[serde(default)]
    pub name: String,
    /// The client-facing listener: `ws://IP:PORT` or `text://IP:PORT`.
    pub listen: ListenUrl,
    /// The app (plugin name) this listener's clients talk to.
    pub app: String,
    /// The address worker hosts use to reach this gateway; part of every client id. Must be
    /// reachable from the worker hosts: the host's LAN address in a multi-machine setup.
    #[serde(default = "default_lan_ip")]
    pub lan_ip: Ipv4Addr,
    /// The internal (worker-facing) port; 0 picks a free one.
    #[serde(default)]
    pub internal_port: u16,
    /// The register(s) to announce this gateway to.
    #[serde(default = "default_registers", deserialize_with = "one_or_many")]
    pub register: Vec<SocketAddr>,
    /// Largest inbound client message; a client sending more is closed.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: ByteSize,
}

/// `[worker]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// This worker host's name, unique in the cluster; defaults to `worker-<pid>`.
    #[serde(default)]
    pub name: String,
    /// The register(s) to learn the gateways from.
    #[serde(default = "default_registers", deserialize_with = "one_or_many")]
    pub register: Vec<SocketAddr>,
    /// The plugins directory: every `NAME.wasm` in it is the app `NAME`.
    #[serde(default = "default_plugins")]
    pub plugins: PathBuf,
    /// Instances per plugin: events of different clients run in parallel across them; one
    /// client's events always go to the same instance, in order.
    #[serde(default = "default_instances")]
    pub instances: usize,
    /// Longest one callback may run before its instance is interrupted and replaced.
    #[serde(default = "default_process_timeout", with = "humantime_serde")]
    pub process_timeout: Duration,
    /// Most linear memory one plugin instance may use.
    #[serde(default = "default_memory_limit")]
    pub memory_limit: ByteSize,
    /// Where compiled plugins are cached, keyed by the file's content and the engine's
    /// configuration; defaults to `.cache` inside the plugins directory.
    #[serde(default)]
    pub cache: Option<PathBuf>,
    /// What each app may reach beyond the default of nothing, by app name.
    #[serde(default)]
    pub grants: BTreeMap<String, Grants>,
}

/// `[worker.grants.APP]`: capabilities given to one app's instances. The default grants
/// nothing: no files, no environment, no network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Environment variables the plugin sees.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Host directories the plugin may read (never write), each under a guest path.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
}

/// One read-only directory grant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it, e.g. `/data`.
    pub guest: String,
}

/// A client protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// WebSocket.
    Ws,
    /// Newline-delimited text.
    Text,
}

/// A listen URL such as `ws://127.0.0.1:7272`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ListenUrl {
    /// The protocol.
    pub protocol: Protocol,
    /// The address.
    pub addr: SocketAddr,
}

impl FromStr for ListenUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (scheme, addr) = s
            .split_once("://")
            .ok_or_else(|| format!("`{s}` is not a listen URL like `ws://127.0.0.1:7272`"))?;
        let protocol = match scheme {
            "ws" | "websocket" => Protocol::Ws,
            "text" => Protocol::Text,
            other => return Err(format!("unknown protocol `{other}` (expected ws or text)")),
        };
        let addr = addr
            .parse()
            .map_err(|e| format!("`{addr}` is not an IP:PORT address: {e}"))?;
        Ok(Self { protocol, addr })
    }
}

impl TryFrom<String> for ListenUrl {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ListenUrl> for String {
    fn from(url: ListenUrl) -> String {
        url.to_string()
    }
}

impl fmt::Display for ListenUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.protocol {
            Protocol::Ws => "ws",
            Protocol::Text => "text",
        };
        write!(f, "{scheme}://{}", self.addr)
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or bad values.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        config.fill_defaults();
        Ok(config)
    }

    /// Rejects values that parse but cannot work.
    fn check(&self) -> Result<(), String> {
        for gateway in &self.gateway {
            if gateway.register.is_empty() {
                return Err(format!(
                    "gateway {}: `register` must list at least one register",
                    gateway.listen
                ));
            }
        }
        if let Some(worker) = &self.worker {
            if worker.register.is_empty() {
                return Err("worker: `register` must list at least one register".into());
            }
            if worker.instances == 0 {
                return Err("worker: `instances` must be at least 1".into());
            }
        }
        Ok(())
    }

    /// All roles on loopback: a register on 127.0.0.1:1236, a WebSocket gateway on
    /// 127.0.0.1:7272 for the `app` plugin, and a worker host loading `./plugins`.
    pub fn all_in_one(app: &str) -> Self {
        Self::parse(&format!(
            "[register]\n[[gateway]]\nlisten = \"ws://127.0.0.1:7272\"\napp = \"{app}\"\n[worker]\n"
        ))
        .expect("the built-in configuration is valid")
    }

    /// The configuration as TOML, to print what a process runs with.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a configuration serialises")
    }

    fn fill_defaults(&mut self) {
        for gateway in &mut self.gateway {
            if gateway.name.is_empty() {
                gateway.name = gateway.listen.to_string();
            }
        }
        if let Some(worker) = &mut self.worker {
            if worker.name.is_empty() {
                worker.name = format!("worker-{}", std::process::id());
            }
            if worker.cache.is_none() {
                worker.cache = Some(worker.plugins.join(".cache"));
            }
        }
    }
}

fn default_register() -> SocketAddr {
    DEFAULT_REGISTER.parse().expect("valid default")
}

fn default_registers() -> Vec<SocketAddr> {
    vec![default_register()]
}

fn default_lan_ip() -> Ipv4Addr {
    Ipv4Addr::LOCALHOST
}

fn default_max_message_size() -> ByteSize {
    ByteSize::mib(1)
}

fn default_plugins() -> PathBuf {
    PathBuf::from("plugins")
}

fn default_instances() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn default_process_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_memory_limit() -> ByteSize {
    ByteSize::mib(256)
}

/// Accepts `register = "host:port"` as well as `register = ["a:1", "b:2"]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(SocketAddr),
        Many(Vec<SocketAddr>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("[worker]\nplugin = \"x\"\n").unwrap_err();
        assert!(err.contains("plugin"), "{err}");
    }

    #[test]
    fn parses_units_and_register_lists() {
        let c = Config::parse(
            "secret = \"s\"\n[[gateway]]\nlisten = \"text://127.0.0.1:7374\"\napp = \"a\"\n\
             register = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nmax_message_size = \"64KiB\"\n\
             [worker]\nregister = \"127.0.0.1:1\"\nprocess_timeout = \"250ms\"\nmemory_limit = \"64MiB\"\n",
        )
        .unwrap();
        let g = &c.gateway[0];
        assert_eq!(g.listen.protocol, Protocol::Text);
        assert_eq!(g.register.len(), 2);
        assert_eq!(g.max_message_size, ByteSize::kib(64));
        let w = c.worker.unwrap();
        assert_eq!(w.process_timeout, Duration::from_millis(250));
        assert_eq!(w.memory_limit, ByteSize::mib(64));
    }

    #[test]
    fn empty_register_lists_are_refused() {
        let err = Config::parse("[worker]\nregister = []\n").unwrap_err();
        assert!(err.contains("register"), "{err}");
    }

    #[test]
    fn bad_listen_urls_say_why() {
        let err =
            Config::parse("[[gateway]]\nlisten = \"udp://1.2.3.4:5\"\napp = \"a\"\n").unwrap_err();
        assert!(err.contains("unknown protocol `udp`"), "{err}");
    }
}
