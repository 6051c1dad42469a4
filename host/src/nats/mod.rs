//! NATS as the cluster engine (`[cluster] nats`; ARCHITECTURE.md, "Several machines: the
//! NATS engine"): the connection every role of a process shares, and the subjects.
//!
//! # Layout
//! - [`subjects`]: the subject names, and which subjects a command is published on.
//! - [`discovery`]: gateways announce their internal address; worker hosts and push clients
//!   follow the announcements instead of a register's list.
//! - [`publish`]: [`publish::NatsGateways`], the gateway-operations port that sends commands
//!   over NATS and queries over the direct links.
//! - `confirm`: the marks a worker host publishes to itself, whose return proves that the
//!   server has its commands (an event's acknowledgement waits for it).
//!
//! The gateway's side of commands (subscribing to what it holds, executing what arrives) is
//! a role's business: `gateway::nats`.

mod confirm;
pub mod discovery;
pub mod publish;
pub mod subjects;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_nats::connection::State;

use crate::config::ClusterConfig;
pub use subjects::Subjects;

/// How often a NATS connection pings its server: a server that stops answering is left
/// within two of these (a server that exits closes the socket, which is noticed at once).
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Why the NATS connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// A server URL, certificate or key was refused by the client.
    #[error("NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// The process's connection to the NATS cluster, shared by its roles; cloning is cheap.
#[derive(Clone, Debug)]
pub struct Nats {
    client: async_nats::Client,
    subjects: Arc<Subjects>,
    /// The servers configured (`[cluster] nats`), as written.
    servers: Arc<[String]>,
    /// When the connection last changed state (connected, lost), or was set up.
    changed: Arc<Mutex<SystemTime>>,
}

/// Where the connection stands, as the client library reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet since the process started: the servers are being tried.
    Connecting,
    /// Connected to a server.
    Connected,
    /// Lost, and being retried in the background on every known server.
    Disconnected,
}

impl Link {
    /// The word `status` shows.
    pub fn name(self) -> &'static str {
        match self {
            Link::Connecting => "connecting",
            Link::Connected => "connected",
            Link::Disconnected => "disconnected",
        }
    }
}

/// The connection's state at one moment, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsReport {
    /// The servers configured, as written.
    pub servers: Vec<String>,
    /// Connected, or not.
    pub link: Link,
    /// When it last changed state (or was set up, before any change).
    pub since: SystemTime,
    /// The server it is connected to (`host:port`, and the server's name), while connected.
    pub server: Option<String>,
    /// Connections made so far: the first, then each reconnection.
    pub connects: u64,
}

impl Nats {
    /// Connects to the servers of `config` with its credentials and TLS settings. A server
    /// that is down at start is retried in the background, as after a disconnection, so
    /// a process starts whatever the state of NATS; commands fail until it is connected.
    pub async fn connect(config: &ClusterConfig) -> Result<Self, NatsError> {
        let changed = Arc::new(Mutex::new(SystemTime::now()));
        let noted = changed.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name("wasmgate")
            .ping_interval(PING_INTERVAL)
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let noted = noted.clone();
                async move {
                    let note = || {
                        *noted.lock().unwrap_or_else(PoisonError::into_inner) = SystemTime::now();
                    };
                    match event {
                        async_nats::Event::Connected => {
                            note();
                            crate::metrics::nats_connected(true);
                            tracing::info!("NATS connected");
                        }
                        async_nats::Event::Disconnected => {
                            note();
                            crate::metrics::nats_connected(false);
                            tracing::warn!("NATS disconnected: commands fail until it is back");
                        }
                        other => tracing::warn!("NATS: {other}"),
                    }
                }
            });
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options = options.require_tls(config.tls_required());
        let servers: Vec<&str> = config.nats.iter().map(String::as_str).collect();
        let client = options.connect(servers).await?;
        Ok(Self {
            client,
            subjects: Arc::new(Subjects::new(&config.name)),
            servers: config.nats.clone().into(),
            changed,
        })
    }

    /// The connection's state now, for `status`.
    pub fn report(&self) -> NatsReport {
        let link = match self.client.connection_state() {
            State::Pending => Link::Connecting,
            State::Connected => Link::Connected,
            State::Disconnected => Link::Disconnected,
        };
        // The library keeps the last server's INFO after a disconnection: shown only while
        // it is the server in use.
        let server = (link == Link::Connected).then(|| {
            let info = self.client.server_info();
            format!("{}:{} ({})", info.host, info.port, info.server_name)
        });
        NatsReport {
            servers: self.servers.to_vec(),
            link,
            since: *self.changed.lock().unwrap_or_else(PoisonError::into_inner),
            server,
            connects: self.client.statistics().connects.load(Ordering::Relaxed),
        }
    }

    /// The client, to publish and subscribe with.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The deployment's subjects.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }
}
