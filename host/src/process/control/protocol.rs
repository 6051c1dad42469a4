//! The control protocol: one JSON line each way per connection, the request and its answer.
//! The types here are that protocol and nothing else.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ops::ClusterView;

/// Longest the command line waits for an answer, and the server for a request.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request the server reads.
pub const MAX_REQUEST: u64 = 4096;

/// What the command line asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// The roles, their counts and the plugins.
    Status,
    /// Every client.
    Connections,
    /// Re-read the plugins directory.
    Reload,
    /// Stop gracefully.
    Stop,
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// To [`Request::Status`].
    Status(Box<Status>),
    /// To [`Request::Connections`].
    Connections(Vec<Connection>),
    /// To [`Request::Reload`]: the worker host is re-reading its plugins directory.
    Reloading,
    /// To [`Request::Stop`]: the server is stopping; its process, to wait for.
    Stopping {
        /// The server's process id.
        pid: u32,
    },
    /// The request cannot be served, and why.
    Error(String),
}

/// A running server, as `wasmgate status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The wasmgate version.
    pub version: String,
    /// The server's process id.
    pub pid: u32,
    /// When it started, in seconds since the Unix epoch.
    pub started_at: u64,
    /// The register's address, if this process runs one.
    pub register: Option<String>,
    /// The gateways this process runs.
    pub gateways: Vec<GatewayStatus>,
    /// The worker host this process runs, if any.
    pub worker: Option<WorkerStatus>,
    /// Its HTTP endpoints: (name, URL) for `metrics`, `push`, `web` and `admin`.
    #[serde(default)]
    pub endpoints: Vec<(String, String)>,
    /// The plugin versions serving.
    pub plugins: Vec<PluginStatus>,
    /// The last version of each plugin that was refused and not replaced since.
    #[serde(default)]
    pub refused: Vec<RefusedPlugin>,
    /// Client traffic.
    pub traffic: Traffic,
    /// Every gateway and worker host of the cluster, as the gateways answered through this
    /// process's worker host (none without one, or when no gateway answered in time).
    #[serde(default)]
    pub cluster: Option<ClusterView>,
    /// Its NATS connection, when the process runs with `[cluster] nats`.
    #[serde(default)]
    pub nats: Option<NatsStatus>,
}

/// A process's NATS connection (`[cluster] nats`), shared by its roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsStatus {
    /// The servers configured, as written.
    pub servers: Vec<String>,
    /// `connecting` (never connected yet), `connected`, or `disconnected` (retried in the
    /// background on every server it knows).
    pub state: String,
    /// When it entered that state (or the process started, before any change), in seconds
    /// since the Unix epoch.
    pub since: u64,
    /// The server it is connected to, `host:port (name)`, while connected.
    pub server: Option<String>,
    /// Connections made so far: the first, then each reconnection.
    pub connects: u64,
    /// Commands its worker host or push client published, once per subject.
    pub commands_published: u64,
    /// Its gateways' subscriptions and what reached them.
    pub gateways: Vec<NatsGatewayStatus>,
}

/// What one gateway holds on NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsGatewayStatus {
    /// The gateway's name.
    pub name: String,
    /// Group subjects it is subscribed to (one per group with a member here, but for hash
    /// collisions).
    pub group_subjects: usize,
    /// Uid subjects it is subscribed to.
    pub uid_subjects: usize,
    /// Commands received over NATS.
    pub commands_received: u64,
}

/// One gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// Its name.
    pub name: String,
    /// The client listener.
    pub listen: String,
    /// The app its clients talk to.
    pub app: String,
    /// Its internal address, where worker hosts link.
    pub internal: String,
    /// Connected clients.
    pub connections: usize,
    /// Groups with members.
    pub groups: usize,
    /// Bound uids.
    pub uids: usize,
    /// Worker hosts linked.
    pub worker_links: usize,
    /// Worker hosts linked that serve its app.
    pub serving_links: usize,
    /// The registers it announces itself to and cannot reach now.
    #[serde(default)]
    pub registers: RegisterReachStatus,
}

/// The worker host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its name.
    pub name: String,
    /// Its plugins directory.
    pub plugins: String,
    /// Gateways it is linked to.
    pub gateway_links: i64,
    /// The most linear memory its plugins may hold, in bytes: `memory_limit` × every
    /// instance of every app × 2, since a hot reload runs both versions for a while.
    #[serde(default)]
    pub plugin_memory_worst_case: u64,
    /// The key-value stores and databases granted to its apps, as granted now.
    #[serde(default)]
    pub data: Vec<DataStatus>,
    /// The registers it learns the gateways from and cannot reach now.
    #[serde(default)]
    pub registers: RegisterReachStatus,
}

/// Which of a role's registers it cannot reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterReachStatus {
    /// Each register it cannot reach now.
    pub unreachable: Vec<UnreachableRegister>,
    /// How long, in seconds, it has reached none of its registers (so cannot find or be found
    /// by new members); `None` while one is linked.
    pub none_reachable_secs: Option<u64>,
}

/// A register a role cannot reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachableRegister {
    /// Its address.
    pub register: String,
    /// For how long, in seconds.
    pub secs: u64,
}

/// One store or database granted to an app: where its data lives, and who else sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataStatus {
    /// The app.
    pub app: String,
    /// `kv` or `sql`.
    pub interface: String,
    /// The database name the app opens (`-` for its key-value store).
    pub name: String,
    /// `embedded`, `sqlite`, `redis` or `postgres`.
    pub backend: String,
    /// The file on this host for the embedded backends, which no other worker host sees;
    /// `None` for a server that every host naming it shares.
    pub file: Option<String>,
}

/// One plugin version serving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// The worker host running it.
    pub worker: String,
    /// The plugin (app) name.
    pub plugin: String,
    /// The short hash of its component.
    pub version: String,
    /// Its instances.
    pub instances: usize,
    /// When this version started serving, in seconds since the Unix epoch.
    pub loaded_at: u64,
}

/// A plugin version a worker host refused to serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedPlugin {
    /// The worker host that refused it.
    pub worker: String,
    /// The plugin (app) name.
    pub plugin: String,
    /// The short hash of its component, when it was read and compiled.
    pub version: Option<String>,
    /// Why it was refused.
    pub reason: String,
    /// When, in seconds since the Unix epoch.
    pub refused_at: u64,
}

/// Client traffic through this process: totals since start and recent rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// Messages received from clients.
    pub messages_in: u64,
    /// Messages written to clients.
    pub messages_out: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes written.
    pub bytes_out: u64,
    /// Plugin callbacks run.
    pub events: u64,
    /// Messages received per second, over the last few seconds.
    pub messages_in_per_sec: f64,
    /// Messages written per second.
    pub messages_out_per_sec: f64,
    /// Plugin callbacks per second.
    pub events_per_sec: f64,
}

/// One client, as `wasmgate connections` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// Its client id.
    pub client_id: String,
    /// The gateway holding it.
    pub gateway: String,
    /// Its address.
    pub remote: String,
    /// Its uid, if bound.
    pub uid: Option<String>,
    /// Its groups.
    pub groups: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_are_one_json_line() {
        let line = serde_json::to_string(&Request::Status).unwrap();
        assert_eq!(line, r#"{"command":"status"}"#);
        let stopping = serde_json::to_string(&Response::Stopping { pid: 7 }).unwrap();
        assert_eq!(stopping, r#"{"stopping":{"pid":7}}"#);
        assert!(!stopping.contains('\n'));
    }
}
