//! What a process runs, as its operators see it: the handle `status`, `connections` and
//! `/metrics` read the roles through.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::config::GrantTable;
use crate::gateway::Gateway;
use crate::nats::Nats;
use crate::ops::GatewayApi;
use crate::register::RegisterReach;

/// What a process runs, as its operators see it (`status`, `connections`, `/metrics`).
pub struct Running {
    /// When the server started.
    pub started: SystemTime,
    /// The register's address, if this process runs one.
    pub register: Option<SocketAddr>,
    /// The gateways.
    pub gateways: Vec<RunningGateway>,
    /// The worker host, if this process runs one.
    pub worker: Option<RunningWorker>,
    /// Its HTTP endpoints (`/metrics`, the push API, the web pages, the admin page): name and URL.
    pub endpoints: Vec<(&'static str, String)>,
    /// What `status` asks the whole cluster through: the worker host's links to every
    /// gateway, when this process runs one.
    pub cluster: Option<GatewayApi>,
    /// The NATS connection its roles share, with `[cluster] nats`.
    pub nats: Option<Nats>,
}

/// A gateway of this process.
pub struct RunningGateway {
    /// Its name.
    pub name: String,
    /// Its client listener.
    pub listen: String,
    /// The app its clients talk to.
    pub app: String,
    /// Its state and links.
    pub gateway: Arc<Gateway>,
}

/// The worker host of this process.
pub struct RunningWorker {
    /// Its name.
    pub name: String,
    /// Its plugins directory.
    pub plugins: PathBuf,
    /// Its `memory_limit` per instance, in bytes.
    pub memory_limit: u64,
    /// Where its embedded stores live (`[worker] data`).
    pub data: PathBuf,
    /// Its apps' grants, as the last reload left them.
    pub grants: watch::Receiver<Arc<GrantTable>>,
    /// Which of its registers are linked (none is dialled with NATS as the engine).
    pub registers: RegisterReach,
}
