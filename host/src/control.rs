//! The control endpoint: how `wasmgate stop|reload|status|connections` reach a running server
//! without anyone knowing its pid.
//!
//! It is a Unix socket (`[control] socket`, beside the configuration file by default): there
//! is no port to pick or to firewall, and the file's mode (owner only) is the access control.
//! One request per connection, one JSON line each way; the types here are that protocol and
//! nothing else. The socket is also the "already running" lock: a start that finds a server
//! answering on it refuses, and a socket file left by a crash (nobody answers) is replaced.
//!
//! [`notify()`] speaks systemd's readiness protocol (`Type=notify`), which `wasmgate start -d`
//! also uses to learn that its daemon is up.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::server::Running;
use crate::wire::handshake::Role;

/// Longest the command line waits for an answer, and the server for a request.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request the server reads.
const MAX_REQUEST: u64 = 4096;

/// How often the traffic counters are sampled for the rates `status` shows.
const RATE_SAMPLE: Duration = Duration::from_secs(1);

/// Samples kept: rates are averaged over the last `RATE_WINDOW - 1` sample periods.
const RATE_WINDOW: usize = 6;

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
    /// The plugin versions serving.
    pub plugins: Vec<PluginStatus>,
    /// Client traffic.
    pub traffic: Traffic,
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

/// Why the command line got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// No server listens on the socket.
    #[error("no server answers on {}", .0.display())]
    NotRunning(PathBuf),
    /// The socket failed.
    #[error("control socket {}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The answer is not one this command line understands.
    #[error("control socket {}: unexpected answer: {source}", path.display())]
    Garbled {
        /// The socket.
        path: PathBuf,
        /// Why it did not parse.
        source: serde_json::Error,
    },
}

/// Asks the server listening on `socket`, waiting at most [`TIMEOUT`] for the answer.
pub fn ask(socket: &Path, request: Request) -> Result<Response, AskError> {
    let io = |source| AskError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e) if is_nobody_there(&e) => return Err(AskError::NotRunning(socket.to_owned())),
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(&request).expect("requests serialise");
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|source| AskError::Garbled {
        path: socket.to_owned(),
        source,
    })
}

/// A socket file nobody listens on, or none at all.
fn is_nobody_there(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

/// A bound control socket; its file is removed when it is dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` (owner-only), replacing a socket file nobody answers on; fails if a
    /// server answers there. Must be called within a tokio runtime.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => anyhow::bail!(
                "already running: a server answers on the control socket {}",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "replacing a control socket left by a server that is gone");
                std::fs::remove_file(path)
                    .with_context(|| format!("removing the stale {}", path.display()))?;
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot create the control socket {}", path.display()))?;
        let socket = Self {
            listener,
            path: path.to_owned(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {} to its owner", path.display()))?;
        Ok(socket)
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A file holding this process's id, removed when dropped.
pub struct PidFile(PathBuf);

impl PidFile {
    /// Writes the process id to `path`.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(Self(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What answering a request needs.
struct Control {
    running: Arc<Running>,
    reload: Arc<Notify>,
    rates: Mutex<Rates>,
    shutdown: CancellationToken,
}

/// Answers requests on `socket` until `shutdown`; [`Request::Reload`] notifies `reload`,
/// [`Request::Stop`] cancels `shutdown`.
pub async fn serve(
    socket: ControlSocket,
    running: Arc<Running>,
    reload: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let control = Arc::new(Control {
        running,
        reload,
        rates: Mutex::new(Rates::default()),
        shutdown: shutdown.clone(),
    });
    let mut sample = tokio::time::interval(RATE_SAMPLE);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = sample.tick() => control.rates().sample(Instant::now(), metrics::traffic()),
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(control.clone().answer(stream));
                }
                Err(e) => {
                    // Usually out of descriptors: back off instead of spinning.
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

impl Control {
    fn rates(&self) -> std::sync::MutexGuard<'_, Rates> {
        self.rates.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn answer(self: Arc<Self>, stream: UnixStream) {
        let (reader, mut writer) = stream.into_split();
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(reader.take(MAX_REQUEST));
        match tokio::time::timeout(TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        let request = serde_json::from_str::<Request>(&line);
        let response = match request {
            Ok(request) => self.respond(request),
            Err(e) => Response::Error(format!("not a request: {e}")),
        };
        let mut answer = serde_json::to_vec(&response).expect("responses serialise");
        answer.push(b'\n');
        let _ = writer.write_all(&answer).await;
        // Answer first, so the command line learns the pid to wait for.
        if let Response::Stopping { .. } = response {
            tracing::info!("stopping: asked on the control socket");
            self.shutdown.cancel();
        }
    }

    fn respond(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Connections => Response::Connections(self.connections()),
            Request::Reload if self.running.worker.is_none() => {
                Response::Error("this process runs no worker host: nothing to reload".into())
            }
            Request::Reload => {
                tracing::info!("reload asked on the control socket");
                // A stored permit: the worker host sees it even if it is busy right now.
                self.reload.notify_one();
                Response::Reloading
            }
            Request::Stop => Response::Stopping {
                pid: std::process::id(),
            },
        }
    }

    fn status(&self) -> Status {
        let running = &self.running;
        let totals = metrics::traffic();
        let [messages_in, messages_out, events] = totals;
        let [bytes_in, bytes_out] = metrics::bytes();
        let [in_rate, out_rate, event_rate] = self.rates().per_second(Instant::now(), totals);
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_at: metrics::unix_seconds(running.started) as u64,
            register: running.register.map(|a| a.to_string()),
            gateways: running
                .gateways
                .iter()
                .map(|g| {
                    let state = g.gateway.state.summary();
                    GatewayStatus {
                        name: g.name.clone(),
                        listen: g.listen.clone(),
                        app: g.app.clone(),
                        internal: g.gateway.state.address().to_string(),
                        connections: state.clients,
                        groups: state.groups,
                        uids: state.uids,
                        worker_links: g.gateway.router.len(),
                    }
                })
                .collect(),
            worker: running.worker.as_ref().map(|w| WorkerStatus {
                name: w.name.clone(),
                plugins: w.plugins.display().to_string(),
                gateway_links: metrics::gateway_links(Role::Worker),
            }),
            plugins: metrics::plugins()
                .into_iter()
                .map(|p| PluginStatus {
                    worker: p.worker,
                    plugin: p.plugin,
                    version: p.version,
                    instances: p.instances,
                    loaded_at: metrics::unix_seconds(p.loaded_at) as u64,
                })
                .collect(),
            traffic: Traffic {
                messages_in,
                messages_out,
                bytes_in,
                bytes_out,
                events,
                messages_in_per_sec: in_rate,
                messages_out_per_sec: out_rate,
                events_per_sec: event_rate,
            },
        }
    }

    fn connections(&self) -> Vec<Connection> {
        let mut all = Vec::new();
        for g in &self.running.gateways {
            all.extend(g.gateway.state.clients().into_iter().map(|c| Connection {
                client_id: c.id.to_string(),
                gateway: g.name.clone(),
                remote: c.remote.to_string(),
                uid: c.uid,
                groups: c.groups,
            }));
        }
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }
}

/// Recent samples of counters, to turn their totals into per-second rates.
#[derive(Debug, Default)]
struct Rates<const N: usize = 3> {
    samples: VecDeque<(Instant, [u64; N])>,
}

impl<const N: usize> Rates<N> {
    fn sample(&mut self, at: Instant, totals: [u64; N]) {
        self.samples.push_back((at, totals));
        if self.samples.len() > RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    /// The rates from the oldest sample kept to `totals` at `now`; zero before the first
    /// sample.
    fn per_second(&self, now: Instant, totals: [u64; N]) -> [f64; N] {
        let Some((at, old)) = self.samples.front() else {
            return [0.0; N];
        };
        let seconds = now.duration_since(*at).as_secs_f64();
        if seconds <= 0.0 {
            return [0.0; N];
        }
        std::array::from_fn(|i| totals[i].saturating_sub(old[i]) as f64 / seconds)
    }
}

/// Tells the service manager named by `NOTIFY_SOCKET`, if any, `state` (`READY=1` …); a
/// failure is only logged, since the server runs fine without one.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = notify_addr(&target).and_then(|addr| {
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    });
    if let Err(e) = sent {
        tracing::warn!(notify_socket = ?target, "cannot notify the service manager: {e}");
    }
}

/// A `NOTIFY_SOCKET` value as an address: a path, or `@name` for the abstract namespace.
pub fn notify_addr(target: &OsStr) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match target.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(target),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_span_the_samples_kept() {
        let start = Instant::now();
        let mut rates = Rates::<1>::default();
        assert_eq!(rates.per_second(start, [5]), [0.0]);
        for s in 0..10u64 {
            rates.sample(start + Duration::from_secs(s), [s * 10]);
        }
        // The window keeps seconds 4..=9: from 40 at 4 s to 100 at 10 s.
        let now = start + Duration::from_secs(10);
        assert_eq!(rates.per_second(now, [100]), [10.0]);
    }

    #[test]
    fn requests_and_answers_are_one_json_line() {
        let line = serde_json::to_string(&Request::Status).unwrap();
        assert_eq!(line, r#"{"command":"status"}"#);
        let stopping = serde_json::to_string(&Response::Stopping { pid: 7 }).unwrap();
        assert_eq!(stopping, r#"{"stopping":{"pid":7}}"#);
        assert!(!stopping.contains('\n'));
    }

    #[tokio::test]
    async fn a_second_server_is_refused_and_a_stale_socket_replaced() {
        let dir = std::env::temp_dir().join(format!("wasmgate-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.sock");
        // What a crash leaves: the file, with nobody listening.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = ControlSocket::bind(&path).unwrap();
        let err = ControlSocket::bind(&path).err().unwrap().to_string();
        assert!(err.contains("already running"), "{err}");
        assert!(matches!(
            ask(&dir.join("missing.sock"), Request::Status),
            Err(AskError::NotRunning(_))
        ));
        drop(live);
        assert!(!path.exists(), "the socket file is removed on drop");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
