//! NATS as the cluster engine (`[cluster] nats`; ARCHITECTURE.md, "Several machines: the
//! NATS engine"): the connection every role of a process shares, and the subjects.
//!
//! # Layout
//! - [`subjects`]: the subject names, and which subjects a command is published on.
//! - [`discovery`]: gateways announce their internal address; worker hosts and push clients
//!   follow the announcements instead of a register's list.
//! - [`publish`]: [`publish::NatsGateways`], the gateway-operations port that sends commands
//!   over NATS and queries over the direct links.
//!
//! The gateway's side of commands (subscribing to what it holds, executing what arrives) is
//! a role's business: `gateway::nats`.

pub mod discovery;
pub mod publish;
pub mod subjects;

use std::sync::Arc;
use std::time::Duration;

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
}

impl Nats {
    /// Connects to the servers of `config` with its credentials and TLS settings. A server
    /// that is down at start is retried in the background, as after a disconnection, so
    /// a process starts whatever the state of NATS; commands fail until it is connected.
    pub async fn connect(config: &ClusterConfig) -> Result<Self, NatsError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("wasmgate")
            .ping_interval(PING_INTERVAL)
            .retry_on_initial_connect()
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => {
                        crate::metrics::nats_connected(true);
                        tracing::info!("NATS connected");
                    }
                    async_nats::Event::Disconnected => {
                        crate::metrics::nats_connected(false);
                        tracing::warn!("NATS disconnected: commands fail until it is back");
                    }
                    other => tracing::warn!("NATS: {other}"),
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
        })
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
