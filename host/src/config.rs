//! The configuration file (TOML) and the defaults used when there is none, in two stages:
//! what a file says (read strictly, private to this module) and what a process runs with
//! ([`Config`]: checked, every path placed by one rule), so no half-resolved value escapes.
//!
//! Which sections a file has decides which roles a process runs: `[register]`, `[[gateway]]`
//! (one entry per client listener, each a gateway with its own internal port, as in
//! GatewayWorker's multi-protocol setup) and `[worker]`. Unknown keys are errors, so a typo
//! never silently falls back to a default. Durations are written like `"25s"` or `"500ms"`,
//! sizes like `"64MiB"`. Every relative path in a file starts in that file's directory, not
//! in the working directory, so a configuration means the same wherever it is started from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

pub mod cluster;
pub mod outbound;
pub mod secret;

pub use cluster::ClusterConfig;
pub use outbound::OutboundOrigin;
pub use secret::{Secret, SecretError, SecretSource};

/// Where a register listens by default, and where gateways and worker hosts look for one.
pub const DEFAULT_REGISTER: &str = "127.0.0.1:1236";

/// The shortest heartbeat period a gateway accepts.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(100);

/// The shortest `idle_timeout` a gateway accepts.
const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// A configuration file as written (the read stage): parsed strictly, not yet checked, paths
/// as written. [`ConfigFile::resolve`] turns it into a [`Config`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// The cluster's shared secret: internal links prove they know it (HMAC challenge)
    /// without sending it. Every process of a cluster needs the same one, at least 16 bytes
    /// unless every internal address is on loopback (see [`secret`]); `WASMGATE_SECRET`
    /// overrides it.
    secret: Option<String>,
    /// A file holding the secret instead (a relative path starts in the configuration file's
    /// directory); surrounding whitespace is left out.
    secret_file: Option<PathBuf>,
    /// Run a register.
    register: Option<RegisterConfig>,
    /// Use NATS as the cluster engine instead of the register mesh.
    cluster: Option<ClusterConfig>,
    /// Run one gateway per entry.
    #[serde(default)]
    gateway: Vec<GatewayConfig>,
    /// Run a worker host.
    worker: Option<WorkerConfig>,
    /// Where the command line finds this process (`status`, `stop` …).
    #[serde(default)]
    control: ControlFile,
    /// What is logged.
    #[serde(default)]
    log: LogFile,
    /// Serve Prometheus metrics; off unless the section is present.
    metrics: Option<MetricsConfig>,
    /// Serve the HTTP push API over the worker host's links; off unless the section is
    /// present.
    push: Option<PushConfig>,
    /// Serve a directory of static files over HTTP (a page that talks to the gateways); off
    /// unless the section is present. Runs with the gateway role.
    web: Option<WebConfig>,
    /// Serve the admin page (the whole cluster as this process's links see it); off unless
    /// the section is present.
    admin: Option<AdminConfig>,
    /// What every HTTP listener of the process (`[push]`, `[web]`, `[metrics]`, `[admin]`)
    /// allows one connection.
    #[serde(default)]
    http: HttpConfig,
    /// Run every internal link of this process (register, gateway, worker host, push
    /// client) over mutually authenticated TLS; plaintext when absent.
    internal_tls: Option<InternalTlsConfig>,
}

/// What a process runs with (the resolved stage): checked, every path absolute or relative to
/// the working directory by one rule, the control and log files placed.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Where the cluster's shared secret comes from; [`Config::load_secret`] reads it.
    #[serde(skip)]
    pub secret: SecretSource,
    /// The register, if this process runs one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register: Option<RegisterConfig>,
    /// The NATS cluster, when it is the engine (then no role uses a register).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// One gateway per entry.
    pub gateway: Vec<GatewayConfig>,
    /// The worker host, if this process runs one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerConfig>,
    /// Where the command line finds this process.
    pub control: ControlConfig,
    /// What is logged, and where `start -d` writes it.
    pub log: LogConfig,
    /// The Prometheus scrape, if served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// The HTTP push API, if served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<PushConfig>,
    /// The static-file server, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web: Option<WebConfig>,
    /// The admin page, if served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// The bounds of every HTTP listener.
    pub http: HttpConfig,
    /// TLS on internal links, if configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_tls: Option<InternalTlsConfig>,
}

/// `[internal_tls]`: TLS with mutual certificates on every internal link (register, gateway,
/// worker host, push client), beside the shared-secret handshake, which still runs inside it.
/// Every node of a cluster needs the section, or none: a TLS node refuses plaintext peers
/// and a plaintext node refuses TLS ones.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InternalTlsConfig {
    /// The cluster's certificate authority (PEM): a peer is accepted only with a
    /// certificate it signed, whichever end dialled.
    pub ca: PathBuf,
    /// This node's certificate chain (PEM), signed by `ca`, presented both when it accepts
    /// a link and when it dials one; it must name `server_name` (a DNS subject alt name).
    pub cert: PathBuf,
    /// The private key of `cert` (PEM).
    pub key: PathBuf,
    /// The name a dialler checks in the certificate of the node it reached, whatever address
    /// it dialled (peers dial addresses, which NAT and `advertise` make unreliable in a
    /// certificate); the same for every node of a cluster. Default `wasmgate`.
    #[serde(default = "default_tls_server_name")]
    pub server_name: String,
}

impl InternalTlsConfig {
    /// Rejects a server name no certificate can carry.
    fn check(&self) -> Result<(), String> {
        if tokio_rustls::rustls::pki_types::DnsName::try_from(self.server_name.as_str()).is_err() {
            return Err(format!(
                "`server_name = \"{}\"` is not a DNS name",
                self.server_name
            ));
        }
        Ok(())
    }
}

fn default_tls_server_name() -> String {
    "wasmgate".into()
}

/// `[http]`: the bounds every HTTP listener of the process (`[push]`, `[web]`, `[metrics]`)
/// puts on its connections, so that no client can hold one open, fill it, or keep the
/// process from stopping.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Most connections one listener holds at once; a connection over it is closed as soon as
    /// it is accepted, the others are not affected.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// Longest a client may take to send a request's head (request line and headers), counted
    /// from when the server starts waiting for it, on a new or a kept-alive connection; a
    /// slower connection is closed.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest one request may take from its head to its answer, reading the body included;
    /// a slower one is answered 408 and its connection closed.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest a stopping listener waits for its open connections to finish their requests;
    /// any still open then are closed.
    #[serde(default = "default_http_stop_timeout", with = "humantime_serde")]
    pub stop_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_connections: default_http_max_connections(),
            header_read_timeout: default_header_read_timeout(),
            request_timeout: default_request_timeout(),
            stop_timeout: default_http_stop_timeout(),
        }
    }
}

impl HttpConfig {
    /// Rejects bounds that would refuse every connection or request.
    fn check(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("`max_connections` must be at least 1".into());
        }
        for (key, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("`{key}` must be above 0"));
            }
        }
        Ok(())
    }
}

/// `[web]`: a static-file HTTP server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// The address to serve on.
    #[serde(default = "default_web_listen")]
    pub listen: SocketAddr,
    /// The directory served: `/` is its `index.html`. A relative path starts in the
    /// configuration file's directory.
    pub root: PathBuf,
}

/// `[control]` as written: how `wasmgate stop|reload|status|connections` reach a running
/// server. Each path defaults to the configuration file's name with another extension,
/// beside it (`wasmgate.toml` → `wasmgate.sock`, `wasmgate.pid`); a relative path starts in
/// the file's directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlFile {
    /// The Unix socket the command line talks to; only its owner may connect.
    socket: Option<PathBuf>,
    /// Holds the server's process id while it runs, for service managers and `kill`.
    pid_file: Option<PathBuf>,
}

/// `[control]`, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct ControlConfig {
    /// The Unix socket the command line talks to.
    pub socket: PathBuf,
    /// The pid file.
    pub pid_file: PathBuf,
}

/// `[log]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFile {
    /// A `RUST_LOG`-style filter: a level (`info`) or `target=level` directives
    /// (`info,wasmgate::worker=debug`). `RUST_LOG`, when set, wins.
    #[serde(default = "default_log_level")]
    level: String,
    /// Where `start -d` writes the server's output (default: beside the configuration file,
    /// `wasmgate.log`); without `-d` the log goes to stderr.
    file: Option<PathBuf>,
}

impl Default for LogFile {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            file: None,
        }
    }
}

/// `[log]`, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    /// The filter, checked.
    pub level: String,
    /// Where `start -d` writes the server's output.
    pub file: PathBuf,
}

/// `[metrics]`: Prometheus metrics at `http://LISTEN/metrics`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The address to serve on; nothing there needs a password, so keep it private.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

/// `[push]`: the HTTP push API (`POST http://LISTEN/api/<operation>`), served by the worker
/// host with its links to every gateway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// The address to serve on. Without a `token` it must be a loopback address.
    #[serde(default = "default_push_listen")]
    pub listen: SocketAddr,
    /// The token every request must carry (`Authorization: Bearer <token>` or
    /// `X-API-Key: <token>`). Without one, anyone who can reach `listen` may push, so only
    /// loopback addresses are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl PushConfig {
    /// Rejects an empty token and an open API on a non-loopback address.
    fn check(&self) -> Result<(), String> {
        check_token(self.listen, self.token.as_deref())
    }
}

/// The rule of every listener that takes a `token` (`[push]`, `[admin]`): the token, if
/// given, is not empty, and a listener without one is on loopback only.
fn check_token(listen: SocketAddr, token: Option<&str>) -> Result<(), String> {
    match token {
        Some("") => {
            Err("`token` must not be empty (leave it out for a loopback-only listener)".into())
        }
        None if !listen.ip().is_loopback() => Err(format!(
            "`listen = \"{listen}\"` is not a loopback address, so a `token` is required"
        )),
        _ => Ok(()),
    }
}

/// `[admin]`: the admin page (`http://LISTEN/`) and its JSON API (`/api/…`): every gateway
/// and worker host this process reaches through its links (its worker host's, or links of
/// its own through the register), with a kick button.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The address to serve on. Without a `token` it must be a loopback address.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// The token the API's requests must carry (`Authorization: Bearer <token>`; the page
    /// asks for it once and keeps it in the tab). Without one, anyone who can reach `listen`
    /// may see every client and kick them, so only loopback addresses are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl AdminConfig {
    /// Rejects an empty token and an open page on a non-loopback address.
    fn check(&self) -> Result<(), String> {
        check_token(self.listen, self.token.as_deref())
    }
}

/// The largest `max_message_size` accepted: a client message travels to its worker host in
/// one internal frame (`wire::MAX_FRAME`, 16 MiB, which a test of `wire` keeps at least twice
/// this), with its client's context and session beside it.
pub const MAX_MESSAGE_SIZE_LIMIT: u64 = 8 * 1024 * 1024;

/// `[register]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// Address to listen on for gateways and worker hosts; keep it on a private network.
    #[serde(default = "default_register")]
    pub listen: SocketAddr,
    /// Also speak GatewayWorker's register protocol (newline-JSON) on this address, for PHP
    /// Gateways, BusinessWorkers and GatewayClient; off when absent. Their `secretKey` must
    /// be the cluster's `secret`. Keep it on a private network: keys travel in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gatewayworker_listen: Option<SocketAddr>,
    /// How long a connection to `gatewayworker_listen` may stay without sending
    /// `gateway_connect` or `worker_connect` with the right key before it is closed
    /// (GatewayWorker's "Register auth timeout", 10 s). Above 0.
    #[serde(
        default = "default_gatewayworker_auth_timeout",
        with = "humantime_serde"
    )]
    pub gatewayworker_auth_timeout: Duration,
    /// The longest line `gatewayworker_listen` reads; a longer one closes its connection
    /// (GatewayWorker's lines are a few hundred bytes). At least 1 KiB.
    #[serde(default = "default_gatewayworker_max_line")]
    pub gatewayworker_max_line: ByteSize,
}

impl RegisterConfig {
    /// Rejects register settings that cannot work.
    fn check(&self) -> Result<(), String> {
        if self.gatewayworker_auth_timeout.is_zero() {
            return Err("`gatewayworker_auth_timeout` must be above 0".into());
        }
        if self.gatewayworker_max_line < ByteSize::kib(1) {
            return Err("`gatewayworker_max_line` must be at least 1KiB".into());
        }
        Ok(())
    }
}

/// One `[[gateway]]`: a client listener, its internal port and its limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Name shown in logs and `status`; defaults to the listen URL (see [`Self::name`]).
    #[serde(default, rename = "name", skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    /// The client-facing listener: `ws://IP:PORT`, `wss://IP:PORT` (needs `tls_cert` and
    /// `tls_key`), `text://IP:PORT` or `frame://IP:PORT`.
    pub listen: ListenUrl,
    /// `wss` only: the certificate chain, a PEM file (a relative path starts in the
    /// configuration file's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// `wss` only: the certificate's private key, a PEM file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The app (plugin name) this listener's clients talk to; `"php:NAME"` hands them to the
    /// PHP BusinessWorkers whose `name` is NAME, linked to the internal port with
    /// `gatewayworker = true`.
    pub app: String,
    /// The address worker hosts use to reach this gateway; part of every client id. Must be
    /// reachable from the worker hosts: the host's LAN address in a multi-machine setup.
    #[serde(default = "default_lan_ip")]
    pub lan_ip: Ipv4Addr,
    /// The internal (worker-facing) port; 0 picks a free one.
    #[serde(default)]
    pub internal_port: u16,
    /// Where the internal listener binds, when not on `lan_ip`: `"0.0.0.0"` or `"::"` (every
    /// interface, IPv6 included) in a container or behind NAT, while `lan_ip` or `advertise`
    /// names the address worker hosts dial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_bind: Option<IpAddr>,
    /// The internal address the register hands worker hosts, instead of `lan_ip` and the
    /// bound port: `"host"` or `"host:port"` (a port mapped by NAT), `"[v6]:port"`, or a name
    /// resolved once at start (to an IPv4 address if it has one). An IPv4 address is what its
    /// client ids embed; an IPv6 one's ids embed a tag of it (`client_id::gateway_key`). A
    /// wildcard address is refused, as nobody can dial it, and so is 240.0.0.0/4, the tags'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<Advertise>,
    /// Whether the internal port also speaks GatewayWorker's GatewayProtocol, for PHP
    /// BusinessWorkers and GatewayClient: a connection that opens with a GatewayProtocol
    /// packet instead of wasmgate's handshake is served as GatewayWorker's gateway serves it,
    /// on the same address, so the address inside every client id is the one PHP code
    /// dials. The register lists it to PHP members (`[register] gatewayworker_listen`). Off
    /// by default. The first packet must carry the cluster's `secret` within
    /// `handshake_timeout`.
    #[serde(default)]
    pub gatewayworker: bool,
    /// The largest GatewayProtocol packet the internal port reads (Workerman's 10 MiB by default); a
    /// connection declaring a larger one is closed before anything is allocated for it. At
    /// least 1 KiB.
    #[serde(default = "default_gatewayworker_max_packet")]
    pub gatewayworker_max_packet: ByteSize,
    /// The register(s) to announce this gateway to; by default the one this file's
    /// `[register]` listens on (else 127.0.0.1:1236). Needed only when the register runs
    /// from another file.
    #[serde(default, deserialize_with = "one_or_many")]
    pub register: Vec<SocketAddr>,
    /// Heartbeat period (GatewayWorker's `pingInterval`); `"0s"`, the default, turns the
    /// heartbeat off. Otherwise at least 100 ms: a shorter period is a typo, and would spin
    /// every client's task.
    #[serde(default, with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Silent intervals after which a client is dropped (`pingNotResponseLimit`): a client
    /// that sends no message for about that many `ping_interval`s is disconnected; only
    /// application messages count, not WebSocket pongs. 0, the default, never disconnects.
    #[serde(default)]
    pub ping_not_response_limit: u32,
    /// What the heartbeat sends to a client that was silent for a `ping_interval`
    /// (`pingData`); empty, the default, sends nothing unless `ping_frame` is set.
    #[serde(default)]
    pub ping_data: String,
    /// WebSocket listeners: send the heartbeat as a ping frame (carrying `ping_data`, at most
    /// 125 bytes) instead of as a message.
    #[serde(default)]
    pub ping_frame: bool,
    /// Bind the client listener with `SO_REUSEPORT` (Linux), so that several wasmgate
    /// processes, each a gateway of its own (its own internal port and client ids), share
    /// one client port and the kernel spreads new connections over them: more clients per
    /// machine than one process's descriptor limit allows, and every core busy. Every
    /// process on the port must set it. Off by default: a second process on a port is
    /// then refused at start, which catches a port typed twice.
    #[serde(default)]
    pub reuse_port: bool,
    /// Most clients this listener holds at once. A connection over it is closed as soon as
    /// it is accepted; the clients already connected are not affected.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest inbound client message. The client that sends a larger one is closed (a
    /// WebSocket client with close code 1009 and a reason) before the message is buffered;
    /// other clients are not affected.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: ByteSize,
    /// Longest a client may take from connecting to completing its TLS and WebSocket
    /// handshakes; a slower one is dropped and never becomes a client.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Most outbound data queued for one client (payload bytes, plus 64 bytes per message).
    /// A client that reads slower than it is sent to and falls this far behind is
    /// disconnected and counted, so it never grows the gateway's memory; other clients keep
    /// receiving.
    #[serde(default = "default_send_buffer")]
    pub send_buffer: ByteSize,
    /// Most connections this listener holds at once from one IP address (handshakes
    /// included); a connection over it is closed as soon as it is accepted. 0 turns the cap
    /// off: behind a reverse proxy every client has the proxy's address, so set 0 there.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Longest a client may go without sending a complete message (a trickle of an
    /// unfinished one does not count) before it is closed; `"0s"`, the default, never closes
    /// a silent client, since push-only clients may legally never speak. Otherwise at least
    /// 1 s.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// WebSocket listeners: the `Origin` header values a handshake may carry, e.g.
    /// `["https://chat.example.com"]` (compared without regard to ASCII case); a handshake
    /// from any other origin, or with none, is refused with 403. Empty, the default, accepts
    /// every origin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Most groups one client may be in; a join beyond it is refused by the gateway (logged
    /// once per client and counted), the client's other groups are kept.
    #[serde(default = "default_max_groups_per_client")]
    pub max_groups_per_client: usize,
    /// Events of one client in flight to its worker host (sent, not yet run). A client with
    /// this many waits: the gateway stops reading its socket until one is done, so a client
    /// that floods slows itself, never its link or other clients.
    #[serde(default = "default_max_events_in_flight")]
    pub max_events_in_flight: u32,
    /// How often the gateway pings each linked worker host (or push client). A peer silent
    /// for three intervals, or that reads nothing for as long, is dropped and its clients go
    /// to another worker host.
    #[serde(default = "default_link_ping_interval", with = "humantime_serde")]
    pub link_ping_interval: Duration,
    /// Bytes queued on each link towards a worker host (client events, query replies) before
    /// the clients sending there wait, as they do when its 4,096 messages are queued; a
    /// message larger than this goes alone once the queue is empty.
    #[serde(default = "default_link_queue_bytes")]
    pub link_queue_bytes: ByteSize,
    /// How long a client's events wait for a worker host that serves its app, while no
    /// linked host does (none is linked, or none has the app's plugin), before the client is
    /// closed, logged and counted (`clients_unrouted_total`, reason `no_worker` or
    /// `app_unserved`). Also how long a client whose host dropped its app waits for another.
    /// Before a first worker host ever linked, clients wait longer: the `start_timeout` of
    /// the worker host in the same process, or 60 s without one.
    #[serde(default = "default_no_worker_hold", with = "humantime_serde")]
    pub no_worker_hold: Duration,
}

/// The app prefix of listeners that PHP BusinessWorkers serve: `app = "php:NAME"` is served
/// by the BusinessWorkers whose `name` is NAME.
pub const PHP_APP_PREFIX: &str = "php:";

impl GatewayConfig {
    /// Where the internal listener binds: `internal_bind`, else `lan_ip`.
    pub fn internal_bind(&self) -> IpAddr {
        self.internal_bind.unwrap_or(IpAddr::V4(self.lan_ip))
    }

    /// The name shown in logs and `status`: the one given, or the listen URL.
    pub fn name(&self) -> String {
        self.given_name
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// Rejects gateway settings that parse but contradict each other.
    fn check(&self) -> Result<(), String> {
        if self.lan_ip.is_unspecified() {
            return Err(
                "`lan_ip` is the address worker hosts dial, not a wildcard: to listen on every \
                 interface set `internal_bind = \"0.0.0.0\"` and `lan_ip` or `advertise` to a \
                 reachable address"
                    .into(),
            );
        }
        if crate::client_id::is_tag(self.lan_ip) {
            return Err(
                "`lan_ip` is in 240.0.0.0/4, which client ids use for the tags of IPv6 gateways"
                    .into(),
            );
        }
        let advertised_v6 = self
            .advertise
            .as_ref()
            .and_then(|a| a.host.parse::<IpAddr>().ok())
            .is_some_and(|ip| ip.to_canonical().is_ipv6());
        if self.gatewayworker && advertised_v6 {
            return Err(
                "`gatewayworker = true` needs an IPv4 `advertise`: GatewayWorker's client ids \
                 and gateway lists hold IPv4 addresses"
                    .into(),
            );
        }
        if self.gatewayworker_max_packet < ByteSize::kib(1) {
            return Err("`gatewayworker_max_packet` must be at least 1KiB".into());
        }
        if self.app.starts_with(PHP_APP_PREFIX) && !self.gatewayworker {
            return Err(format!(
                "`app = \"{}\"` is served by PHP BusinessWorkers: it needs `gatewayworker = true`",
                self.app
            ));
        }
        let wss = self.listen.protocol == Protocol::Wss;
        if wss && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err("a wss:// listener needs `tls_cert` and `tls_key`".into());
        }
        if !wss && (self.tls_cert.is_some() || self.tls_key.is_some()) {
            return Err("`tls_cert` and `tls_key` are for wss:// listeners only".into());
        }
        if self.ping_frame && !self.listen.protocol.is_websocket() {
            return Err("`ping_frame` is for ws:// and wss:// listeners only".into());
        }
        if self.ping_frame && self.ping_data.len() > 125 {
            return Err("`ping_data` must be at most 125 bytes with `ping_frame`".into());
        }
        if !self.ping_interval.is_zero() && self.ping_interval < MIN_PING_INTERVAL {
            return Err(format!(
                "`ping_interval` must be 0s (off) or at least {}",
                humantime::format_duration(MIN_PING_INTERVAL)
            ));
        }
        if !self.idle_timeout.is_zero() && self.idle_timeout < MIN_IDLE_TIMEOUT {
            return Err(format!(
                "`idle_timeout` must be 0s (off) or at least {}",
                humantime::format_duration(MIN_IDLE_TIMEOUT)
            ));
        }
        if !self.allowed_origins.is_empty() && !self.listen.protocol.is_websocket() {
            return Err("`allowed_origins` is for ws:// and wss:// listeners only".into());
        }
        if self.max_groups_per_client == 0 {
            return Err("`max_groups_per_client` must be at least 1".into());
        }
        let heartbeat = self.ping_not_response_limit > 0 || !self.ping_data.is_empty();
        if heartbeat && self.ping_interval.is_zero() {
            return Err(
                "`ping_not_response_limit` and `ping_data` need a `ping_interval` above 0".into(),
            );
        }
        if self.max_connections == 0 {
            return Err("`max_connections` must be at least 1".into());
        }
        if self.send_buffer < ByteSize::kib(1) {
            return Err("`send_buffer` must be at least 1KiB".into());
        }
        if self.handshake_timeout.is_zero() {
            return Err("`handshake_timeout` must be above 0".into());
        }
        if self.max_message_size.as_u64() > MAX_MESSAGE_SIZE_LIMIT {
            return Err(format!(
                "`max_message_size` must be at most {} (half an internal link frame)",
                ByteSize::b(MAX_MESSAGE_SIZE_LIMIT)
            ));
        }
        if self.max_events_in_flight == 0 {
            return Err("`max_events_in_flight` must be at least 1".into());
        }
        if self.link_queue_bytes < ByteSize::kib(64) {
            return Err("`link_queue_bytes` must be at least 64KiB".into());
        }
        if self.link_ping_interval < Duration::from_millis(10) {
            return Err("`link_ping_interval` must be at least 10ms".into());
        }
        Ok(())
    }
}

/// `[worker]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// This worker host's name, unique in the cluster; defaults to `worker-<pid>`.
    #[serde(default = "default_worker_name")]
    pub name: String,
    /// The register(s) to learn the gateways from; by default the one this file's
    /// `[register]` listens on (else 127.0.0.1:1236). Needed only when the register runs
    /// from another file.
    #[serde(default, deserialize_with = "one_or_many")]
    pub register: Vec<SocketAddr>,
    /// The plugins directory: every `NAME.wasm` in it is the app `NAME`. A relative path
    /// starts in the configuration file's directory.
    #[serde(default = "default_plugins")]
    pub plugins: PathBuf,
    /// Where apps' embedded stores live (key-value and SQLite files, one set per app, see
    /// `grants`); created when an app first uses one. A relative path starts in the
    /// configuration file's directory. Each worker host has its own: use Redis or PostgreSQL
    /// for data that several hosts share.
    #[serde(default = "default_data")]
    pub data: PathBuf,
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
    /// Most timers one plugin instance may have set at once; setting one more traps the
    /// instance (which is replaced).
    #[serde(default = "default_max_timers")]
    pub max_timers: usize,
    /// Shortest timer interval; a plugin asking for less gets this.
    #[serde(default = "default_min_timer_interval", with = "humantime_serde")]
    pub min_timer_interval: Duration,
    /// Most entries (streams, files, pollables …) in one instance's resource table; past it
    /// the WASI call fails.
    #[serde(default = "default_max_resources")]
    pub max_resources: usize,
    /// Log bytes per second one plugin may write (stdout, stderr and `log` calls together,
    /// across its instances); the excess is dropped and counted.
    #[serde(default = "default_log_rate")]
    pub log_rate: ByteSize,
    /// Largest plugin file loaded; a larger one is refused with an error naming the file,
    /// and the running version keeps serving.
    #[serde(default = "default_max_plugin_size")]
    pub max_plugin_size: ByteSize,
    /// Longest key-value key (and bucket name) a plugin may use; a call with a longer one
    /// fails with an error the plugin sees, and nothing is read or written.
    #[serde(default = "default_max_kv_key_size")]
    pub max_kv_key_size: ByteSize,
    /// Largest key-value value a plugin may store or read; a larger one fails that call with
    /// an error the plugin sees (a `set` stores nothing).
    #[serde(default = "default_max_kv_value_size")]
    pub max_kv_value_size: ByteSize,
    /// Largest HTTP response body one outbound request of a plugin may receive; a larger
    /// one fails in the guest with `HTTP-response-body-size` (at once when its
    /// `content-length` says so, else when the excess arrives), never held in memory.
    #[serde(default = "default_max_http_response_body")]
    pub max_http_response_body: ByteSize,
    /// Most outbound HTTP requests one instance may have in flight at once (from sending
    /// until its response body is read or dropped); one more fails with
    /// `connection-limit-reached`.
    #[serde(default = "default_max_http_requests")]
    pub max_http_requests: usize,
    /// Where compiled plugins (native code) are cached, keyed by the file's content and the
    /// engine's configuration; a private directory outside the plugins directory by default
    /// (see [`Self::cache_dir`]). Created 0700; refused (no cache) unless owned by this user
    /// and writable by nobody else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<PathBuf>,
    /// Compiled versions the cache keeps per app, the most recently used first; older ones
    /// are deleted (a Python or JavaScript version is about 35 MB).
    #[serde(default = "default_cache_versions")]
    pub cache_versions: usize,
    /// What each app may reach beyond the default of nothing, by app name. A reload
    /// (`wasmgate reload`, SIGHUP, SIGUSR1) applies a changed table without a restart.
    #[serde(default)]
    pub grants: GrantTable,
    /// `[worker.sql]`: the bounds of every app's SQL calls (the databases themselves are
    /// granted per app, in `grants`).
    #[serde(default)]
    pub sql: SqlLimits,
    /// How often the worker host pings each gateway it is linked to. A gateway silent for
    /// three intervals, or that reads nothing for as long, is dropped and re-dialled.
    #[serde(default = "default_link_ping_interval", with = "humantime_serde")]
    pub link_ping_interval: Duration,
    /// How long a gateway's link may stay down (not linked again) before the worker host
    /// declares the gateway lost and runs `on-close` for each of its clients whose events
    /// ran here: their connections went with it. A gateway back within it (restarted,
    /// frozen for a moment) keeps its clients. Counted from when the link dropped (a silent
    /// gateway is dropped after three `link_ping_interval`s). At least 1 s.
    #[serde(default = "default_gateway_lost_after", with = "humantime_serde")]
    pub gateway_lost_after: Duration,
    /// Longest a start waits for the plugins present at start to load and for the gateways
    /// of this process to be linked before it reports ready anyway (`start -d` returns,
    /// `READY=1`), with a warning naming what is still awaited: a cold Python or JavaScript
    /// plugin compiles for seconds. The gateways of the same process hold early clients
    /// this long for a first worker host.
    #[serde(default = "default_start_timeout", with = "humantime_serde")]
    pub start_timeout: Duration,
    /// Bytes queued on each link towards a gateway (plugins' commands and queries) before
    /// the plugin calls sending there wait, as they do when its 16,384 messages are queued.
    #[serde(default = "default_link_queue_bytes")]
    pub link_queue_bytes: ByteSize,
}

impl WorkerConfig {
    /// Where compiled plugins are cached: the `cache` given, else `$XDG_CACHE_HOME/wasmgate`,
    /// else `~/.cache/wasmgate`, else `wasmgate-cache-<uid>` in the temporary directory.
    /// Never the plugins directory: whoever may drop a plugin there must not be able to drop
    /// native code.
    pub fn cache_dir(&self) -> PathBuf {
        let absolute = |var| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        self.cache
            .clone()
            .or_else(|| absolute("XDG_CACHE_HOME").map(|d| d.join("wasmgate")))
            .or_else(|| absolute("HOME").map(|d| d.join(".cache").join("wasmgate")))
            .unwrap_or_else(|| {
                let uid = rustix::process::getuid().as_raw();
                std::env::temp_dir().join(format!("wasmgate-cache-{uid}"))
            })
    }

    /// Rejects worker settings that parse but cannot work.
    fn check(&self) -> Result<(), String> {
        if self.instances == 0 {
            return Err("`instances` must be at least 1".into());
        }
        if self.link_queue_bytes < ByteSize::kib(64) {
            return Err("`link_queue_bytes` must be at least 64KiB".into());
        }
        if self.link_ping_interval < Duration::from_millis(10) {
            return Err("`link_ping_interval` must be at least 10ms".into());
        }
        if self.gateway_lost_after < Duration::from_secs(1) {
            return Err("`gateway_lost_after` must be at least 1s".into());
        }
        if self.max_timers == 0 {
            return Err("`max_timers` must be at least 1".into());
        }
        if self.min_timer_interval.is_zero() {
            return Err("`min_timer_interval` must be above 0".into());
        }
        if self.max_resources < 16 {
            return Err("`max_resources` must be at least 16".into());
        }
        if self.log_rate.as_u64() == 0 {
            return Err("`log_rate` must be above 0".into());
        }
        if self.cache_versions == 0 {
            return Err("`cache_versions` must be at least 1".into());
        }
        if self.max_plugin_size.as_u64() == 0 {
            return Err("`max_plugin_size` must be above 0".into());
        }
        if self.max_http_response_body.as_u64() == 0 {
            return Err("`max_http_response_body` must be above 0".into());
        }
        if self.max_http_requests == 0 {
            return Err("`max_http_requests` must be at least 1".into());
        }
        self.sql.check()?;
        if self.max_kv_key_size.as_u64() == 0 || self.max_kv_key_size.as_u64() > MAX_KV_KEY_LIMIT {
            return Err(format!(
                "`max_kv_key_size` must be between 1 byte and {}",
                ByteSize::b(MAX_KV_KEY_LIMIT)
            ));
        }
        if self.max_kv_value_size.as_u64() == 0
            || self.max_kv_value_size.as_u64() > MAX_KV_VALUE_LIMIT
        {
            return Err(format!(
                "`max_kv_value_size` must be between 1 byte and {}",
                ByteSize::b(MAX_KV_VALUE_LIMIT)
            ));
        }
        for (app, grants) in &self.grants {
            for name in grants.sql.keys() {
                check_database_name(name)
                    .map_err(|why| format!("`grants.{app}.sql`: database `{name}` {why}"))?;
            }
            grants.check().map_err(|e| format!("grants.{app}: {e}"))?;
        }
        Ok(())
    }
}

/// Every app's grants, by app name.
pub type GrantTable = BTreeMap<String, Grants>;

/// A database name is a file name under `<data>/<app>/`: no separators, no dot files.
fn check_database_name(name: &str) -> Result<(), &'static str> {
    let fits = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || name.len() > 64 || !name.chars().all(fits) {
        return Err("must be 1 to 64 characters of A-Z, a-z, 0-9, `_` and `-`");
    }
    Ok(())
}

/// `[worker.sql]`: bounds on the SQL calls of every app (see `wit/sql.wit`). A call past
/// one fails with an error value the plugin sees (`too-large`, `timeout`); other apps, and
/// the app's other calls, are not affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqlLimits {
    /// Most rows one query returns; a query with more fails with `too-large`.
    #[serde(default = "default_sql_max_rows")]
    pub max_rows: usize,
    /// Largest single value, in a result or as a parameter (`too-large` past it).
    #[serde(default = "default_sql_max_value_size")]
    pub max_value_size: ByteSize,
    /// Largest result of one query, every value counted (`too-large` past it).
    #[serde(default = "default_sql_max_result_size")]
    pub max_result_size: ByteSize,
    /// Most connections (and, for SQLite, threads) one app holds to one database; a call
    /// that finds them all busy waits for one, within the callback's `process_timeout`.
    #[serde(default = "default_sql_max_connections")]
    pub max_connections: usize,
    /// Longest a call waits to connect to a database server before it fails with `timeout`.
    #[serde(default = "default_sql_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            max_rows: default_sql_max_rows(),
            max_value_size: default_sql_max_value_size(),
            max_result_size: default_sql_max_result_size(),
            max_connections: default_sql_max_connections(),
            connect_timeout: default_sql_connect_timeout(),
        }
    }
}

impl SqlLimits {
    fn check(&self) -> Result<(), String> {
        if self.max_rows == 0 {
            return Err("`sql.max_rows` must be at least 1".into());
        }
        if self.max_value_size.as_u64() == 0 || self.max_result_size.as_u64() == 0 {
            return Err("`sql.max_value_size` and `sql.max_result_size` must be above 0".into());
        }
        if self.max_connections == 0 {
            return Err("`sql.max_connections` must be at least 1".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("`sql.connect_timeout` must be above 0".into());
        }
        Ok(())
    }
}

fn default_sql_max_rows() -> usize {
    10_000
}

fn default_sql_max_value_size() -> ByteSize {
    ByteSize::mib(1)
}

fn default_sql_max_result_size() -> ByteSize {
    ByteSize::mib(16)
}

fn default_sql_max_connections() -> usize {
    4
}

fn default_sql_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Where one granted database lives: `"sqlite"` (embedded: `<data>/<app>/<name>.sqlite`)
/// or a `postgres://` / `postgresql://` URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum SqlBackend {
    /// An SQLite file under the worker host's `data` directory.
    Sqlite,
    /// A PostgreSQL server, by connection URL.
    Postgres(String),
}

impl TryFrom<String> for SqlBackend {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if value == "sqlite" {
            Ok(SqlBackend::Sqlite)
        } else if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Ok(SqlBackend::Postgres(value))
        } else if value.starts_with("mysql://") || value.starts_with("mariadb://") {
            Err("MySQL/MariaDB is not supported, only \"sqlite\" and postgres:// URLs".into())
        } else {
            Err(format!(
                "`{value}` is not a database: expected \"sqlite\" or a postgres:// URL"
            ))
        }
    }
}

impl From<SqlBackend> for String {
    fn from(backend: SqlBackend) -> String {
        match backend {
            SqlBackend::Sqlite => "sqlite".into(),
            SqlBackend::Postgres(url) => url,
        }
    }
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
    /// The databases the plugin may open through `wasmgate:plugin/sql`, by the name it opens
    /// them with: `sql = { main = "sqlite", reports = "postgres://app@127.0.0.1/reports" }`.
    /// Any other name is refused (`access-denied`).
    #[serde(default)]
    pub sql: BTreeMap<String, SqlBackend>,
    /// Key-value storage (`wasi:keyvalue`): `"embedded"` (one SQLite file per app under
    /// `[worker] data`, private to this worker host) or `"redis://host:port/db"` (shared by
    /// every worker host that names the same server). Absent: every key-value call fails with
    /// an error naming this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<KvGrant>,
    /// Origins the plugin may send HTTP requests to through `wasi:http/outgoing-handler`,
    /// e.g. `["https://api.example.com", "http://127.0.0.1:8080"]`: scheme, host
    /// (`*.example.com` for every name below it) and port (the scheme's default when left
    /// out, `*` for any). Empty (the default): no outbound HTTP. A request elsewhere fails
    /// with `HTTP-request-denied` before any connection is made. See [`OutboundOrigin`].
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<OutboundOrigin>,
}

impl Grants {
    /// Rejects grants that parse but cannot work.
    fn check(&self) -> Result<(), String> {
        if let Some(KvGrant::Redis(url)) = &self.kv {
            redis_url_host(url).ok_or_else(|| {
                format!("`kv = \"{url}\"`: expected \"embedded\" or \"redis://host:port/db\"")
            })?;
        }
        Ok(())
    }
}

/// Where an app's key-value store lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum KvGrant {
    /// One SQLite file per app under `[worker] data`: needs no server; not shared between
    /// worker hosts.
    Embedded,
    /// A Redis server, by URL (`redis://[user:password@]host:port/db`).
    Redis(String),
}

impl TryFrom<String> for KvGrant {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value == "embedded" {
            Ok(KvGrant::Embedded)
        } else if value.starts_with("redis://") {
            Ok(KvGrant::Redis(value))
        } else {
            Err(format!(
                "kv = \"{value}\": expected \"embedded\" or \"redis://host:port/db\""
            ))
        }
    }
}

impl From<KvGrant> for String {
    fn from(grant: KvGrant) -> Self {
        match grant {
            KvGrant::Embedded => "embedded".into(),
            KvGrant::Redis(url) => url,
        }
    }
}

/// The host part of a `redis://` URL, if it has one.
fn redis_url_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("redis://")?;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit('@').next()?;
    (!host.is_empty()).then_some(host)
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
    /// WebSocket over TLS.
    Wss,
    /// Newline-delimited text.
    Text,
    /// Messages prefixed by their total length (4 bytes, big-endian), GatewayWorker's Frame.
    Frame,
}

impl Protocol {
    /// The listen URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::Ws => "ws",
            Protocol::Wss => "wss",
            Protocol::Text => "text",
            Protocol::Frame => "frame",
        }
    }

    /// Whether clients speak WebSocket.
    pub fn is_websocket(self) -> bool {
        matches!(self, Protocol::Ws | Protocol::Wss)
    }
}

/// A gateway's advertised internal address (`advertise`): a host name, an IPv4 or an IPv6
/// address, and the port if it is not the bound one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Advertise {
    /// The name or address worker hosts dial.
    pub host: String,
    /// The port they dial; the bound internal port if none.
    pub port: Option<u16>,
}

impl Advertise {
    /// Whether it names this machine's loopback (`localhost` or a loopback address).
    fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl FromStr for Advertise {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |port: &str| {
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{s}`: the port must be a number from 1 to 65535"))
        };
        // `[v6]:port`, `[v6]`, a bare IPv6 address, `host:port` or `host`.
        let (host, port) = match s.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((host, "")) => (host, None),
            Some((host, rest)) => match rest.strip_prefix(':') {
                Some(p) => (host, Some(port(p)?)),
                None => return Err(format!("`{s}` is not `[address]:port`")),
            },
            None => match s.rsplit_once(':') {
                Some((host, p)) if !host.contains(':') => (host, Some(port(p)?)),
                _ => (s, None),
            },
        };
        let ip = host.parse::<IpAddr>().ok();
        if let Some(ip) = ip {
            if ip.is_unspecified() {
                return Err(format!(
                    "`{s}` is a wildcard address, which nobody can dial: advertise the address \
                     worker hosts reach this gateway on"
                ));
            }
            if let IpAddr::V4(v4) = ip.to_canonical()
                && crate::client_id::is_tag(v4)
            {
                return Err(format!(
                    "`{s}` is in 240.0.0.0/4, which client ids use for the tags of IPv6 gateways"
                ));
            }
        }
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if ip.is_none() && (host.is_empty() || !host.chars().all(valid)) {
            return Err(format!(
                "`{s}` is not a host name or address, e.g. `gw1.internal:4000`"
            ));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl TryFrom<String> for Advertise {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Advertise> for String {
    fn from(advertise: Advertise) -> String {
        match advertise.port {
            Some(port) if advertise.host.contains(':') => format!("[{}]:{port}", advertise.host),
            Some(port) => format!("{}:{port}", advertise.host),
            None => advertise.host,
        }
    }
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
            "wss" => Protocol::Wss,
            "text" => Protocol::Text,
            "frame" => Protocol::Frame,
            other => {
                return Err(format!(
                    "unknown protocol `{other}` (expected ws, wss, text or frame)"
                ));
            }
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
        write!(f, "{}://{}", self.protocol.scheme(), self.addr)
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a value of the wrong kind; the
    /// message names the key.
    #[error("{path}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What the TOML reader found.
        source: toml::de::Error,
    },
    /// No usable cluster secret; the message names the key to set.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The values parse but cannot work together.
    #[error("{path}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which section, and why.
        source: Invalid,
    },
}

/// A setting that parses but cannot work.
#[derive(Debug, thiserror::Error)]
#[error("{section}: {reason}")]
pub struct Invalid {
    /// The section, e.g. `gateway ws://127.0.0.1:7272`, `worker`, `log.level`.
    pub section: String,
    /// What is wrong, naming the key.
    pub reason: String,
}

impl Config {
    /// Reads, checks and resolves a configuration file.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            path: file.to_owned(),
            source,
        })?;
        Self::from_toml(&text, file)
    }

    /// Parses, checks and resolves configuration text as if read from `file` (which need
    /// not exist: it places relative paths and names errors).
    pub fn from_toml(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let read: ConfigFile = toml::from_str(text).map_err(|source| ConfigError::Syntax {
            path: file.to_owned(),
            source,
        })?;
        read.check().map_err(|source| ConfigError::Invalid {
            path: file.to_owned(),
            source,
        })?;
        Ok(read.resolve(file))
    }

    /// All roles on loopback: a register on 127.0.0.1:1236, a WebSocket gateway on
    /// 127.0.0.1:7272 for the `app` plugin, and a worker host loading `plugins` beside
    /// `file`.
    pub fn all_in_one(app: &str, file: &Path) -> Self {
        let text = format!(
            "[register]\n[[gateway]]\nlisten = \"ws://127.0.0.1:7272\"\napp = \"{app}\"\n[worker]\n"
        );
        Self::from_toml(&text, file).expect("the built-in configuration is valid")
    }

    /// The configuration as TOML, to print what a process runs with (without the secret).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a configuration serialises")
    }

    /// The cluster secret this process uses, from `WASMGATE_SECRET`, the file's `secret` or
    /// `secret_file`, or generated beside the configuration file ([`secret`]); refused,
    /// naming the key, when missing or short and an internal address is off loopback.
    pub fn load_secret(&self) -> Result<Secret, SecretError> {
        self.load_secret_with(std::env::var_os(secret::SECRET_ENV))
    }

    fn load_secret_with(&self, env: Option<std::ffi::OsString>) -> Result<Secret, SecretError> {
        secret::load(&self.secret, env, self.off_loopback())
    }

    /// The first internal address this process listens on or connects to that is not on
    /// loopback, described for an error message.
    fn off_loopback(&self) -> Option<String> {
        if let Some(register) = &self.register
            && !register.listen.ip().is_loopback()
        {
            return Some(format!("[register] listen = \"{}\"", register.listen));
        }
        if let Some(listen) = self.register.as_ref().and_then(|r| r.gatewayworker_listen)
            && !listen.ip().is_loopback()
        {
            return Some(format!("[register] gatewayworker_listen = \"{listen}\""));
        }
        for gateway in &self.gateway {
            if !gateway.lan_ip.is_loopback() {
                return Some(format!(
                    "gateway {} lan_ip = \"{}\" (its internal listener)",
                    gateway.listen, gateway.lan_ip
                ));
            }
            if !gateway.internal_bind().is_loopback() {
                return Some(format!(
                    "gateway {} internal_bind = \"{}\"",
                    gateway.listen,
                    gateway.internal_bind()
                ));
            }
            if let Some(advertise) = gateway.advertise.as_ref().filter(|a| !a.is_loopback()) {
                return Some(format!(
                    "gateway {} advertise = \"{}\"",
                    gateway.listen, advertise.host
                ));
            }
            if let Some(r) = gateway.register.iter().find(|r| !r.ip().is_loopback()) {
                return Some(format!("gateway {} register \"{r}\"", gateway.listen));
            }
        }
        let mut worker = self.worker.iter().flat_map(|w| &w.register);
        if let Some(r) = worker.find(|r| !r.ip().is_loopback()) {
            return Some(format!("[worker] register \"{r}\""));
        }
        None
    }
}

impl ConfigFile {
    /// Rejects values that parse but cannot work.
    fn check(&self) -> Result<(), Invalid> {
        let invalid = |section: String| move |reason| Invalid { section, reason };
        if self.secret.is_some() && self.secret_file.is_some() {
            return Err(invalid("secret".into())(
                "give `secret` or `secret_file`, not both".into(),
            ));
        }
        if let Some(register) = &self.register {
            register.check().map_err(invalid("register".into()))?;
        }
        if let Some(cluster) = &self.cluster {
            cluster.check().map_err(invalid("cluster".into()))?;
            let registers = self.register.is_some()
                || self.gateway.iter().any(|g| !g.register.is_empty())
                || self.worker.iter().any(|w| !w.register.is_empty());
            if registers {
                return Err(invalid("cluster".into())(
                    "with `nats` the cluster needs no register: remove [register] and every `register` key".into(),
                ));
            }
        }
        for gateway in &self.gateway {
            gateway
                .check()
                .map_err(invalid(format!("gateway {}", gateway.listen)))?;
        }
        if let Some(worker) = &self.worker {
            worker.check().map_err(invalid("worker".into()))?;
        }
        check_log_filter(&self.log.level).map_err(invalid("log.level".into()))?;
        self.http.check().map_err(invalid("http".into()))?;
        if let Some(tls) = &self.internal_tls {
            tls.check().map_err(invalid("internal_tls".into()))?;
            // GatewayWorker's PHP processes speak plain TCP: a port that takes them would be
            // a plaintext way into a TLS cluster.
            if let Some(g) = self.gateway.iter().find(|g| g.gatewayworker) {
                return Err(invalid(format!("gateway {}", g.listen))(
                    "`gatewayworker = true` cannot run with [internal_tls]: PHP's GatewayProtocol is plain TCP".into(),
                ));
            }
            if self
                .register
                .as_ref()
                .is_some_and(|r| r.gatewayworker_listen.is_some())
            {
                return Err(invalid("register".into())(
                    "`gatewayworker_listen` cannot run with [internal_tls]: PHP's register protocol is plain TCP".into(),
                ));
            }
        }
        if let Some(push) = &self.push {
            if self.worker.is_none() {
                return Err(invalid("push".into())(
                    "the push API is served by the worker host: add [worker]".into(),
                ));
            }
            push.check().map_err(invalid("push".into()))?;
        }
        if let Some(admin) = &self.admin {
            if self.worker.is_none() && self.gateway.is_empty() {
                return Err(invalid("admin".into())(
                    "the admin page sees the cluster through a worker host's or gateway's register: add [worker] or [[gateway]]".into(),
                ));
            }
            admin.check().map_err(invalid("admin".into()))?;
        }
        Ok(())
    }

    /// Resolves every path by one rule: a relative path starts in the directory of the
    /// configuration file `file` (for the built-in configuration, the working directory).
    /// The control socket, pid file and log file default to files beside it, named after it.
    fn resolve(self, file: &Path) -> Config {
        let dir = file.parent().unwrap_or(Path::new(""));
        let place = |path: &mut PathBuf| *path = dir.join(&*path);
        // One register address per file: roles beside a `[register]` find it there.
        let registers = vec![self.register.as_ref().map_or_else(default_register, |r| {
            let ip = match r.listen.ip() {
                ip if ip.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
                ip => ip,
            };
            SocketAddr::new(ip, r.listen.port())
        })];
        // With NATS as the engine no role uses a register, so none is filled in.
        let registers = if self.cluster.is_some() {
            Vec::new()
        } else {
            registers
        };
        let mut gateway = self.gateway;
        for g in &mut gateway {
            if g.register.is_empty() {
                g.register.clone_from(&registers);
            }
            g.tls_cert
                .iter_mut()
                .chain(g.tls_key.iter_mut())
                .for_each(place);
        }
        let mut worker = self.worker;
        if let Some(w) = &mut worker {
            if w.register.is_empty() {
                w.register = registers;
            }
            place(&mut w.plugins);
            place(&mut w.data);
            w.cache.iter_mut().for_each(place);
            let grants = w.grants.values_mut().flat_map(|g| &mut g.dirs);
            grants.for_each(|d| place(&mut d.host));
        }
        let mut web = self.web;
        web.iter_mut().for_each(|w| place(&mut w.root));
        let mut internal_tls = self.internal_tls;
        if let Some(tls) = &mut internal_tls {
            [&mut tls.ca, &mut tls.cert, &mut tls.key]
                .into_iter()
                .for_each(place);
        }
        let mut cluster = self.cluster;
        if let Some(c) = &mut cluster {
            c.tls_ca
                .iter_mut()
                .chain(c.tls_cert.iter_mut())
                .chain(c.tls_key.iter_mut())
                .for_each(place);
        }
        let stem = file
            .file_stem()
            .map_or_else(|| "wasmgate".into(), |s| s.to_string_lossy());
        let beside = |given: Option<PathBuf>, extension: &str| {
            dir.join(given.unwrap_or_else(|| format!("{stem}.{extension}").into()))
        };
        let secret = match (self.secret, self.secret_file) {
            (Some(secret), _) if !secret.is_empty() => SecretSource::Inline(secret),
            (_, Some(file)) => SecretSource::File(dir.join(file)),
            _ => SecretSource::Generated(dir.join(format!("{stem}.secret"))),
        };
        Config {
            secret,
            register: self.register,
            cluster,
            gateway,
            worker,
            control: ControlConfig {
                socket: beside(self.control.socket, "sock"),
                pid_file: beside(self.control.pid_file, "pid"),
            },
            log: LogConfig {
                level: self.log.level,
                file: beside(self.log.file, "log"),
            },
            metrics: self.metrics,
            push: self.push,
            web,
            admin: self.admin,
            http: self.http,
            internal_tls,
        }
    }
}

fn default_register() -> SocketAddr {
    DEFAULT_REGISTER.parse().expect("valid default")
}

fn default_gatewayworker_auth_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_gatewayworker_max_packet() -> ByteSize {
    ByteSize::mib(10)
}

fn default_gatewayworker_max_line() -> ByteSize {
    ByteSize::kib(64)
}

fn default_lan_ip() -> Ipv4Addr {
    Ipv4Addr::LOCALHOST
}

fn default_max_message_size() -> ByteSize {
    ByteSize::mib(1)
}

fn default_max_connections() -> usize {
    10_000
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_send_buffer() -> ByteSize {
    ByteSize::mib(1)
}

fn default_max_connections_per_ip() -> usize {
    256
}

fn default_max_groups_per_client() -> usize {
    1024
}

fn default_max_events_in_flight() -> u32 {
    64
}

fn default_link_queue_bytes() -> ByteSize {
    ByteSize::mib(64)
}

fn default_gateway_lost_after() -> Duration {
    // Three of the default `link_ping_interval`s: as long as a silent link takes to drop.
    Duration::from_secs(15)
}

fn default_link_ping_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_cache_versions() -> usize {
    4
}

fn default_start_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_no_worker_hold() -> Duration {
    Duration::from_secs(5)
}

fn default_max_timers() -> usize {
    1024
}

fn default_min_timer_interval() -> Duration {
    Duration::from_millis(10)
}

fn default_max_resources() -> usize {
    65_536
}

fn default_log_rate() -> ByteSize {
    ByteSize::kib(256)
}

fn default_max_plugin_size() -> ByteSize {
    ByteSize::mib(64)
}

fn default_max_http_response_body() -> ByteSize {
    ByteSize::mib(4)
}

fn default_max_http_requests() -> usize {
    16
}

fn default_worker_name() -> String {
    format!("worker-{}", std::process::id())
}

fn default_plugins() -> PathBuf {
    PathBuf::from("plugins")
}

/// Highest `max_kv_key_size` accepted: keys are index entries, not payloads.
const MAX_KV_KEY_LIMIT: u64 = 64 << 10;

/// Highest `max_kv_value_size` accepted: a value is copied whole into the plugin's memory.
const MAX_KV_VALUE_LIMIT: u64 = 64 << 20;

fn default_max_kv_key_size() -> ByteSize {
    ByteSize::kib(1)
}

fn default_max_kv_value_size() -> ByteSize {
    ByteSize::mib(1)
}

fn default_data() -> PathBuf {
    PathBuf::from("data")
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

fn default_log_level() -> String {
    "info".into()
}

fn default_push_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 7271))
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 7280))
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 9601))
}

fn default_http_max_connections() -> usize {
    1024
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_http_stop_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_web_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 7270))
}

/// Accepts a log level (`info`) or comma-separated `target=level` directives; unlike
/// `RUST_LOG` it refuses a bare word that is no level, which is far more often a typo than a
/// target name.
fn check_log_filter(filter: &str) -> Result<(), String> {
    use tracing_subscriber::filter::{Directive, LevelFilter};
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let valid = if directive.contains('=') {
            directive.parse::<Directive>().is_ok()
        } else {
            directive.parse::<LevelFilter>().is_ok()
        };
        if !valid {
            return Err(format!(
                "`{directive}` is neither a level (off, error, warn, info, debug, trace) \
                 nor a `target=level` directive"
            ));
        }
    }
    Ok(())
}

/// Accepts `register = "host:port"` as well as `register = ["a:1", "b:2"]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(SocketAddr),
        Many(Vec<SocketAddr>),
    }
    match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => Ok(vec![a]),
        // Empty stands for "absent" once read: an empty list given is a mistake.
        OneOrMany::Many(v) if v.is_empty() => Err(serde::de::Error::custom(
            "`register` must list at least one register",
        )),
        OneOrMany::Many(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error as the command line prints it: with its causes.
    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml(text, Path::new("wasmgate.toml"))
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
    }

    #[test]
    fn a_gateway_binds_a_wildcard_but_advertises_what_can_be_dialled() {
        let gateway = |keys: &str| {
            parse(&format!(
                "secret = \"0123456789abcdef\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:1\"\napp = \"a\"\n{keys}\n"
            ))
            .map(|mut c| c.gateway.remove(0))
        };
        let g = gateway("internal_bind = \"::\"\nadvertise = \"gw1.internal:4000\"").unwrap();
        assert_eq!(g.internal_bind(), "::".parse::<IpAddr>().unwrap());
        assert_eq!(
            g.advertise,
            Some(Advertise {
                host: "gw1.internal".into(),
                port: Some(4000)
            })
        );
        let g = gateway("internal_bind = \"0.0.0.0\"\nadvertise = \"10.1.2.3\"").unwrap();
        assert_eq!(g.advertise.unwrap().port, None);
        for (text, host, port) in [
            ("[fd00::5]:4000", "fd00::5", Some(4000)),
            ("[fd00::5]", "fd00::5", None),
            ("fd00::5", "fd00::5", None),
        ] {
            let g = gateway(&format!("internal_bind = \"::\"\nadvertise = \"{text}\"")).unwrap();
            let advertise = g.advertise.unwrap();
            assert_eq!((advertise.host.as_str(), advertise.port), (host, port));
            let again: Advertise = String::from(advertise.clone()).parse().unwrap();
            assert_eq!(again, advertise, "{text} round-trips");
        }
        for (keys, says) in [
            ("lan_ip = \"0.0.0.0\"", "not a wildcard"),
            ("advertise = \"0.0.0.0\"", "wildcard address"),
            ("advertise = \"240.0.0.1\"", "240.0.0.0/4"),
            ("lan_ip = \"250.1.2.3\"", "240.0.0.0/4"),
            (
                "advertise = \"[fd00::5]:4000\"\ngatewayworker = true",
                "needs an IPv4",
            ),
            ("advertise = \"gw:0\"", "port"),
            ("advertise = \"gw one\"", "not a host name"),
        ] {
            let err = gateway(keys).unwrap_err();
            assert!(err.contains(says), "{keys}: {err}");
        }
        // Off loopback, a secret is required: bound to every interface, or advertised by name.
        for keys in [
            "internal_bind = \"0.0.0.0\"",
            "advertise = \"gw1.internal\"",
        ] {
            let text = format!("[[gateway]]\nlisten = \"ws://127.0.0.1:1\"\napp = \"a\"\n{keys}\n");
            let config = parse(&text).unwrap();
            assert!(config.off_loopback().is_some(), "{keys}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("[worker]\nplugin = \"x\"\n").unwrap_err();
        assert!(err.contains("plugin"), "{err}");
    }

    #[test]
    fn sql_grants_name_backends_and_bounds_are_checked() {
        let c = parse(
            "[worker]\n[worker.sql]\nmax_rows = 5\n[worker.grants.a]\n\
             sql = { main = \"sqlite\", r = \"postgres://u@127.0.0.1:5432/r\" }\n",
        )
        .unwrap();
        let w = c.worker.unwrap();
        assert_eq!(w.sql.max_rows, 5);
        assert_eq!(w.sql.max_connections, 4, "a default");
        assert_eq!(w.grants["a"].sql["main"], SqlBackend::Sqlite);
        assert_eq!(
            w.grants["a"].sql["r"],
            SqlBackend::Postgres("postgres://u@127.0.0.1:5432/r".into())
        );
        let grant = |sql: &str| parse(&format!("[worker]\n[worker.grants.a]\nsql = {sql}\n"));
        let mysql = grant("{ m = \"mysql://u@h/d\" }").unwrap_err();
        assert!(mysql.contains("MySQL/MariaDB is not supported"), "{mysql}");
        let other = grant("{ m = \"redis://h\" }").unwrap_err();
        assert!(other.contains("not a database"), "{other}");
        let name = grant("{ \"../x\" = \"sqlite\" }").unwrap_err();
        assert!(
            name.contains("grants.a.sql") && name.contains("../x"),
            "{name}"
        );
        let zero = parse("[worker]\n[worker.sql]\nmax_connections = 0\n").unwrap_err();
        assert!(zero.contains("sql.max_connections"), "{zero}");
    }

    #[test]
    fn log_levels_are_checked_and_named() {
        let err = parse("[log]\nlevel = \"verbose\"\n").unwrap_err();
        assert!(
            err.contains("log.level") && err.contains("verbose"),
            "{err}"
        );
        let c = parse("[log]\nlevel = \"warn,wasmgate::worker=debug\"\n").unwrap();
        assert_eq!(c.log.level, "warn,wasmgate::worker=debug");
        assert_eq!(parse("").unwrap().log.level, "info");
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/commands/wasmgate.toml");
        let config = Config::load(&example).unwrap();
        let plugins = config.worker.unwrap().plugins;
        assert!(
            plugins.ends_with("target/wasm32-wasip2/plugin"),
            "{}",
            plugins.display()
        );
    }

    #[test]
    fn roles_find_the_register_of_their_own_file() {
        let c = parse(
            "[register]\nlisten = \"0.0.0.0:2000\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:1\"\n\
             app = \"a\"\n[[gateway]]\nlisten = \"text://127.0.0.1:2\"\napp = \"a\"\n\
             register = \"10.0.0.9:1236\"\n[worker]\n",
        )
        .unwrap();
        let here: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        assert_eq!(c.gateway[0].register, [here]);
        assert_eq!(c.gateway[1].register, ["10.0.0.9:1236".parse().unwrap()]);
        assert_eq!(c.worker.unwrap().register, [here]);
        let alone = parse("[worker]\n").unwrap().worker.unwrap();
        assert_eq!(alone.register, [default_register()]);
    }

    #[test]
    fn internal_tls_is_placed_checked_and_refused_beside_gatewayworker() {
        let tls = "[internal_tls]\nca = \"tls/ca.pem\"\ncert = \"/pki/n.pem\"\nkey = \"n.key\"\n";
        let c = Config::from_toml(
            &format!("[register]\n{tls}"),
            Path::new("/etc/wg/prod.toml"),
        )
        .unwrap();
        let t = c.internal_tls.unwrap();
        assert_eq!(t.ca, Path::new("/etc/wg/tls/ca.pem"));
        assert_eq!(t.cert, Path::new("/pki/n.pem"), "absolute stays");
        assert_eq!(t.key, Path::new("/etc/wg/n.key"));
        assert_eq!(t.server_name, "wasmgate");

        let named = parse(&format!("[register]\n{tls}server_name = \"not a name\"\n"));
        let err = named.unwrap_err();
        assert!(
            err.contains("internal_tls") && err.contains("not a DNS name"),
            "{err}"
        );
        let missing = parse("[register]\n[internal_tls]\nca = \"ca.pem\"\n").unwrap_err();
        assert!(missing.contains("cert"), "{missing}");

        let php_gateway = parse(&format!(
            "[[gateway]]\nlisten = \"ws://127.0.0.1:1\"\napp = \"a\"\ngatewayworker = true\n{tls}"
        ))
        .unwrap_err();
        assert!(php_gateway.contains("`gatewayworker = true` cannot run with [internal_tls]"));
        let php_register = parse(&format!(
            "[register]\ngatewayworker_listen = \"127.0.0.1:1237\"\n{tls}"
        ))
        .unwrap_err();
        assert!(php_register.contains("`gatewayworker_listen` cannot run with [internal_tls]"));
    }

    #[test]
    fn relative_paths_start_beside_the_config_file() {
        let c = Config::from_toml(
            "[control]\npid_file = \"run/x.pid\"\n[worker]\nplugins = \"apps\"\n\
             [worker.grants.a]\ndirs = [{ host = \"data\", guest = \"/d\" }]\n\
             [web]\nroot = \"/srv/pages\"\n",
            Path::new("/etc/wg/prod.toml"),
        )
        .unwrap();
        assert_eq!(c.control.socket, Path::new("/etc/wg/prod.sock"));
        assert_eq!(c.control.pid_file, Path::new("/etc/wg/run/x.pid"));
        assert_eq!(c.log.file, Path::new("/etc/wg/prod.log"));
        let w = c.worker.unwrap();
        assert_eq!(w.plugins, Path::new("/etc/wg/apps"));
        assert_eq!(w.data, Path::new("/etc/wg/data"));
        assert!(
            !w.cache_dir().starts_with(&w.plugins),
            "{:?}",
            w.cache_dir()
        );
        assert_eq!(w.grants["a"].dirs[0].host, Path::new("/etc/wg/data"));
        assert_eq!(
            c.web.unwrap().root,
            Path::new("/srv/pages"),
            "absolute stays"
        );
    }

    #[test]
    fn parses_units_and_register_lists() {
        let c = parse(
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
    fn plugin_caps_have_defaults_and_refuse_zero() {
        let w = parse("[worker]\n").unwrap().worker.unwrap();
        assert_eq!(w.max_plugin_size, ByteSize::mib(64));
        assert_eq!(w.max_timers, 1024);
        assert_eq!(w.min_timer_interval, Duration::from_millis(10));
        assert_eq!(w.log_rate, ByteSize::kib(256));
        assert_eq!(w.max_http_response_body, ByteSize::mib(4));
        assert_eq!(w.max_http_requests, 16);
        for (keys, named) in [
            ("max_plugin_size = 0", "max_plugin_size"),
            ("max_timers = 0", "max_timers"),
            ("min_timer_interval = \"0s\"", "min_timer_interval"),
            ("max_resources = 1", "max_resources"),
            ("log_rate = 0", "log_rate"),
            ("max_http_response_body = 0", "max_http_response_body"),
            ("max_http_requests = 0", "max_http_requests"),
        ] {
            let err = parse(&format!("[worker]\n{keys}\n")).unwrap_err();
            assert!(err.contains(named), "{keys}: {err}");
        }
    }

    #[test]
    fn gatewayworker_keys_parse_and_bad_ones_are_named() {
        let c = parse(
            "[register]\ngatewayworker_listen = \"10.0.0.5:1236\"\n\
             [[gateway]]\nlisten = \"ws://127.0.0.1:1\"\napp = \"a\"\n\
             gatewayworker = true\n",
        );
        let c = c.unwrap();
        let r = c.register.as_ref().unwrap();
        assert_eq!(
            r.gatewayworker_listen,
            Some("10.0.0.5:1236".parse().unwrap())
        );
        assert_eq!(r.gatewayworker_auth_timeout, Duration::from_secs(10));
        assert_eq!(r.gatewayworker_max_line, ByteSize::kib(64));
        assert!(c.gateway[0].gatewayworker);
        let err = parse("[[gateway]]\nlisten = \"ws://127.0.0.1:1\"\napp = \"php:events\"\n")
            .unwrap_err();
        assert!(err.contains("gatewayworker = true"), "{err}");
        // Keys travel in clear on it: off loopback, no start without a secret.
        assert_eq!(
            c.off_loopback().as_deref(),
            Some("[register] gatewayworker_listen = \"10.0.0.5:1236\"")
        );
        assert_eq!(
            parse("[register]\n")
                .unwrap()
                .register
                .unwrap()
                .gatewayworker_listen,
            None
        );
        for (keys, named) in [
            (
                "gatewayworker_auth_timeout = \"0s\"",
                "gatewayworker_auth_timeout",
            ),
            ("gatewayworker_max_line = 100", "gatewayworker_max_line"),
        ] {
            let err = parse(&format!("[register]\n{keys}\n")).unwrap_err();
            assert!(err.contains(named), "{keys}: {err}");
        }
    }

    #[test]
    fn kv_grants_and_caps_parse_and_bad_ones_are_named() {
        let w = parse(
            "[worker]\n[worker.grants.a]\nkv = \"embedded\"\n\
             [worker.grants.b]\nkv = \"redis://:pw@127.0.0.1:6379/2\"\n[worker.grants.c]\n",
        )
        .unwrap()
        .worker
        .unwrap();
        assert_eq!(w.grants["a"].kv, Some(KvGrant::Embedded));
        let redis = KvGrant::Redis("redis://:pw@127.0.0.1:6379/2".into());
        assert_eq!(w.grants["b"].kv, Some(redis));
        assert_eq!(w.grants["c"].kv, None, "no grant by default");
        assert_eq!(w.max_kv_key_size, ByteSize::kib(1));
        assert_eq!(w.max_kv_value_size, ByteSize::mib(1));
        for (keys, named) in [
            ("[worker.grants.a]\nkv = \"memory\"", "memory"),
            ("[worker.grants.a]\nkv = \"redis:///0\"", "grants.a"),
            ("max_kv_key_size = 0", "max_kv_key_size"),
            ("max_kv_value_size = \"1GiB\"", "max_kv_value_size"),
        ] {
            let err = parse(&format!("[worker]\n{keys}\n")).unwrap_err();
            assert!(err.contains(named), "{keys}: {err}");
        }
    }

    #[test]
    fn outbound_hosts_are_granted_per_app_and_checked() {
        let w = parse(
            "[worker]\n[worker.grants.a]\n\
             allowed_outbound_hosts = [\"https://api.example.com\", \"http://127.0.0.1:8080\"]\n",
        )
        .unwrap()
        .worker
        .unwrap();
        let hosts = &w.grants["a"].allowed_outbound_hosts;
        assert!(hosts[0].allows("https", "api.example.com", 443));
        assert!(hosts[1].allows("http", "127.0.0.1", 8080));
        let none = parse("[worker]\n[worker.grants.b]\n")
            .unwrap()
            .worker
            .unwrap();
        assert!(none.grants["b"].allowed_outbound_hosts.is_empty());
        let err = parse(
            "[worker]\n[worker.grants.a]\nallowed_outbound_hosts = [\"https://x.org/path\"]\n",
        )
        .unwrap_err();
        assert!(
            err.contains("allowed_outbound_hosts") && err.contains("https://x.org/path"),
            "{err}"
        );
    }

    #[test]
    fn gateway_limits_and_heartbeat_parse_with_units() {
        let c = parse(
            "[[gateway]]\nlisten = \"wss://127.0.0.1:7272\"\napp = \"a\"\ntls_cert = \"c.pem\"\n\
             tls_key = \"k.pem\"\nping_interval = \"25s\"\nping_not_response_limit = 2\n\
             ping_frame = true\nmax_connections = 5\nsend_buffer = \"256KiB\"\n\
             handshake_timeout = \"3s\"\n",
        )
        .unwrap();
        let g = &c.gateway[0];
        assert_eq!(g.listen.protocol, Protocol::Wss);
        assert_eq!(g.ping_interval, Duration::from_secs(25));
        assert_eq!(g.send_buffer, ByteSize::kib(256));
        assert_eq!(g.handshake_timeout, Duration::from_secs(3));
        let d = &Config::all_in_one("a", Path::new("w.toml")).gateway[0];
        assert_eq!(d.ping_interval, Duration::ZERO, "no heartbeat by default");
        assert_eq!(d.max_connections, 10_000);
        assert_eq!(d.send_buffer, ByteSize::mib(1));
    }

    #[test]
    fn contradictory_gateway_settings_name_the_key() {
        for (extra, key) in [
            ("", "tls_cert"),
            (
                "tls_cert = \"c\"\ntls_key = \"k\"\nping_data = \"p\"\n",
                "ping_interval",
            ),
            (
                "tls_cert = \"c\"\ntls_key = \"k\"\nmax_connections = 0\n",
                "max_connections",
            ),
        ] {
            let err = parse(&format!(
                "[[gateway]]\nlisten = \"wss://127.0.0.1:1\"\napp = \"a\"\n{extra}"
            ))
            .unwrap_err();
            assert!(err.contains(key), "{extra:?}: {err}");
        }
        for (extra, key) in [
            ("ping_frame = true", "ping_frame"),
            ("ping_interval = \"1ns\"", "ping_interval"),
            ("ping_interval = \"99ms\"", "ping_interval"),
            ("idle_timeout = \"10ms\"", "idle_timeout"),
            ("allowed_origins = [\"https://a\"]", "allowed_origins"),
            ("max_groups_per_client = 0", "max_groups_per_client"),
        ] {
            let err = parse(&format!(
                "[[gateway]]\nlisten = \"text://127.0.0.1:1\"\napp = \"a\"\n{extra}\n"
            ))
            .unwrap_err();
            assert!(err.contains(key), "{extra:?}: {err}");
        }
    }

    #[test]
    fn client_limits_have_defaults() {
        let d = &Config::all_in_one("a", Path::new("w.toml")).gateway[0];
        assert_eq!(d.max_connections_per_ip, 256);
        assert_eq!(d.idle_timeout, Duration::ZERO, "silent clients are legal");
        assert!(d.allowed_origins.is_empty());
        assert_eq!(d.max_groups_per_client, 1024);
        let c = parse(
            "[[gateway]]\nlisten = \"ws://127.0.0.1:1\"\napp = \"a\"\nping_interval = \"100ms\"\n\
             idle_timeout = \"1s\"\nallowed_origins = [\"https://a\"]\n",
        )
        .unwrap();
        assert_eq!(c.gateway[0].idle_timeout, Duration::from_secs(1));
    }

    /// `[push]` and `[admin]` share one rule: a token, or loopback only.
    #[test]
    fn push_and_admin_need_a_token_off_loopback() {
        let listeners = |c: Config| {
            [
                c.push.map(|p| (p.listen, p.token)),
                c.admin.map(|a| (a.listen, a.token)),
            ]
        };
        for (section, index, port) in [("push", 0, 7271), ("admin", 1, 7280)] {
            let c = parse(&format!("[worker]\n[{section}]\n")).unwrap();
            let default = listeners(c)[index].clone().unwrap();
            assert_eq!(default, (SocketAddr::from(([127, 0, 0, 1], port)), None));
            let text = format!("[worker]\n[{section}]\nlisten = \"0.0.0.0:80\"\ntoken = \"t\"\n");
            let given = listeners(parse(&text).unwrap())[index].clone().unwrap();
            assert_eq!(given.1.as_deref(), Some("t"));
            for (keys, needle) in [
                ("listen = \"0.0.0.0:80\"", "token"),
                ("listen = \"[::]:80\"", "token"),
                ("token = \"\"", "token"),
                ("key = \"t\"", "key"),
            ] {
                let text = format!("[worker]\n[{section}]\n{keys}\n");
                let err = parse(&text).unwrap_err();
                assert!(err.contains(needle), "{text:?}: {err}");
            }
        }
        let err = parse("[push]\n").unwrap_err();
        assert!(err.contains("[worker]"), "{err}");
        let err = parse("[register]\n[admin]\n").unwrap_err();
        assert!(err.contains("[worker] or [[gateway]]"), "{err}");
        let gateway = "[[gateway]]\nlisten = \"ws://127.0.0.1:0\"\napp = \"a\"\n[admin]\n";
        assert!(parse(gateway).unwrap().admin.is_some());
    }

    #[test]
    fn max_message_size_must_fit_an_internal_frame() {
        let err = parse(
            "[[gateway]]\nlisten = \"ws://127.0.0.1:1\"\napp = \"a\"\nmax_message_size = \"9MiB\"\n",
        )
        .unwrap_err();
        assert!(err.contains("max_message_size"), "{err}");
        assert!(
            parse("[[gateway]]\nlisten = \"ws://127.0.0.1:1\"\napp = \"a\"\nmax_message_size = \"8MiB\"\n")
                .is_ok()
        );
    }

    /// A section of the configuration file as serde sees it: its heading in
    /// `docs/config.md` (a TOML header that also selects it, with `APP` for a map's entry)
    /// and its keys.
    struct Section {
        heading: String,
        keys: Vec<String>,
    }

    /// The keys serde accepts in the section that `headers` opens (after the headers of the
    /// sections around it), read from the error an unknown key there causes; `None` when
    /// `headers` does not open a section of named keys.
    fn keys_of(headers: &str) -> Option<Vec<String>> {
        let probe = format!("{headers}zz_unknown = 1\n");
        let Err(ConfigError::Syntax { source, .. }) = Config::from_toml(&probe, Path::new("t"))
        else {
            return None;
        };
        let message = source.to_string();
        let (_, list) = message.split_once("unknown field `zz_unknown`, expected ")?;
        let list = list.lines().next().unwrap_or_default();
        Some(
            list.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Every section of the configuration file, found by asking serde: each key of a
    /// section is tried as a table, an array of tables and a map of tables below it.
    fn sections() -> Vec<Section> {
        let top = keys_of("").expect("the top level names its keys");
        let mut found = vec![Section {
            heading: "top level".into(),
            keys: top,
        }];
        // Each entry: the TOML path, and the headers that open it with its parents.
        let mut open: Vec<(String, String)> = vec![(String::new(), String::new())];
        while let Some((path, headers)) = open.pop() {
            let keys = match path.as_str() {
                "" => found[0].keys.clone(),
                _ => keys_of(&headers).expect("an opened section has keys"),
            };
            for key in keys {
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                for header in [
                    format!("[{child}]"),
                    format!("[[{child}]]"),
                    format!("[{child}.APP]"),
                ] {
                    let headers = format!("{headers}{header}\n");
                    if let Some(keys) = keys_of(&headers) {
                        let path = header.trim_matches(['[', ']']).to_owned();
                        found.push(Section {
                            heading: header,
                            keys,
                        });
                        open.push((path, headers));
                        break;
                    }
                }
            }
        }
        found
    }

    /// `docs/config.md`'s tables: each `###` heading (without backticks) with the keys of
    /// its rows (each row's first cell, in backticks).
    fn reference() -> BTreeMap<String, Vec<String>> {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
        let text = std::fs::read_to_string(&file).expect("docs/config.md is readable");
        let mut rows = BTreeMap::<String, Vec<String>>::new();
        let mut current = None;
        for line in text.lines() {
            if let Some(heading) = line.strip_prefix("### ") {
                let heading = heading.trim().trim_matches('`').to_owned();
                rows.entry(heading.clone()).or_default();
                current = Some(heading);
            } else if line.starts_with("## ") {
                current = None;
            } else if let (Some(section), Some(cell)) = (&current, line.strip_prefix("| `")) {
                let key = cell.split('`').next().unwrap_or_default().to_owned();
                rows.get_mut(section).expect("opened above").push(key);
            }
        }
        rows
    }

    /// Whether `key`, under the section headed `parent`, opens a section of its own.
    fn opens_section(sections: &[Section], parent: &str, key: &str) -> bool {
        let path = match parent {
            "top level" => key.to_owned(),
            _ => format!("{}.{key}", parent.trim_matches(['[', ']'])),
        };
        sections.iter().any(|s| {
            let own = s.heading.trim_matches(['[', ']']);
            own.strip_suffix(".APP").unwrap_or(own) == path
        })
    }

    #[test]
    fn every_key_is_in_the_reference() {
        let reference = reference();
        let sections = sections();
        let mut missing = Vec::new();
        for section in &sections {
            let Some(rows) = reference.get(&section.heading) else {
                missing.push(format!("the heading ### `{}`", section.heading));
                continue;
            };
            for key in &section.keys {
                // A key that opens a section of its own is documented under its heading.
                if !rows.contains(key) && !opens_section(&sections, &section.heading, key) {
                    missing.push(format!("`{key}` under {}", section.heading));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "docs/config.md lacks {}",
            missing.join(", ")
        );
    }

    /// The other direction: no row, and no heading, for a key or section the configuration
    /// does not have.
    #[test]
    fn the_reference_has_no_key_the_configuration_lacks() {
        let sections = sections();
        let mut extra = Vec::new();
        for (heading, rows) in reference() {
            let Some(section) = sections.iter().find(|s| s.heading == heading) else {
                extra.push(format!("the heading ### `{heading}`"));
                continue;
            };
            for row in rows {
                if !section.keys.contains(&row) && !opens_section(&sections, &heading, &row) {
                    extra.push(format!("`{row}` under {heading}"));
                }
            }
        }
        assert!(
            extra.is_empty(),
            "docs/config.md documents what does not exist: {}",
            extra.join(", ")
        );
    }

    #[test]
    fn bad_listen_urls_say_why() {
        let err = parse("[[gateway]]\nlisten = \"udp://1.2.3.4:5\"\napp = \"a\"\n").unwrap_err();
        assert!(err.contains("unknown protocol `udp`"), "{err}");
    }

    #[test]
    fn nats_replaces_the_register_and_refuses_half_settings() {
        let base = "[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\n";
        let c = parse(&format!(
            "{base}tls_ca = \"ca.pem\"\n[[gateway]]\nlisten = \"ws://127.0.0.1:1\"\napp = \"a\"\n[worker]\n"
        ))
        .unwrap();
        let cluster = c.cluster.as_ref().unwrap();
        assert_eq!(cluster.name, "wasmgate");
        assert!(cluster.tls_required());
        assert_eq!(cluster.tls_ca.as_deref(), Some(Path::new("ca.pem")));
        assert!(c.gateway[0].register.is_empty());
        assert!(c.worker.unwrap().register.is_empty());
        for (extra, says) in [
            ("[register]\n", "needs no register"),
            (
                "[worker]\nregister = \"127.0.0.1:1\"\n",
                "needs no register",
            ),
            ("name = \"a.b\"\n", "`name`"),
            ("user = \"u\"\n", "`user` needs `password`"),
            (
                "token = \"t\"\nuser = \"u\"\npassword = \"p\"\n",
                "not both",
            ),
            ("tls_cert = \"c.pem\"\n", "go together"),
            ("servers = []\n", "unknown field"),
        ] {
            let err = parse(&format!("{base}{extra}")).unwrap_err();
            assert!(err.contains(says), "{extra:?}: {err}");
        }
        let err = parse("[cluster]\nnats = [\"http://x:1\"]\n").unwrap_err();
        assert!(err.contains("not a nats://"), "{err}");
        let err = parse("[cluster]\nnats = []\n").unwrap_err();
        assert!(err.contains("at least one"), "{err}");
    }
}
