//! The server's side of the control socket: answers `status`, `connections`, `reload` and
//! `stop` from what the process runs.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::protocol::{
    Connection, DataStatus, GatewayStatus, MAX_REQUEST, NatsGatewayStatus, NatsStatus,
    PluginStatus, RefusedPlugin, RegisterReachStatus, Request, Response, Status, TIMEOUT, Traffic,
    UnreachableRegister, WorkerStatus,
};
use crate::config::{GrantTable, KvGrant, SqlBackend};
use crate::metrics;
use crate::nats::Nats;
use crate::ops::ClusterView;
use crate::process::running::Running;
use crate::register::RegisterReach;
use crate::wire::handshake::Peer;
use crate::worker::kv;
use crate::worker::sql::sqlite;

/// Longest `status` waits for the cluster's answer: a silent gateway is given up after a
/// second (the queries' own bound), so this is only a backstop.
const CLUSTER_WAIT: Duration = Duration::from_secs(2);

/// How often the traffic counters are sampled for the rates `status` shows.
const RATE_SAMPLE: Duration = Duration::from_secs(1);

/// Samples kept: rates are averaged over the last `RATE_WINDOW - 1` sample periods.
const RATE_WINDOW: usize = 6;

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
        let listener = bind_private(path)
            .with_context(|| format!("cannot create the control socket {}", path.display()))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }
}

/// Binds a socket at `path` that is owner-only from its first moment: bound in a private
/// staging directory, made 0600 there, then renamed into place. A chmod after a bind in place
/// would leave a window in which anyone could connect; a umask would be the whole process's,
/// and a directory another thread creates meanwhile would lose its execute bit.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let staging = parent.join(format!(".{name}.{}.staging", std::process::id()));
    // Left by a process of this pid that died in between: ours to remove.
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let staged = staging.join("socket");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

/// Whether a peer running as `peer` may control a server running as `own`: only its own
/// user, and root (who could signal or trace the server anyway). The socket's mode keeps
/// others out already; this holds even if the file's mode or directory is loosened.
fn may_control(peer: u32, own: u32) -> bool {
    peer == own || peer == 0
}

/// Whether the peer on `stream` may control this server; a refusal is logged and counted.
fn admit(stream: &UnixStream) -> bool {
    let own = rustix::process::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(peer) if may_control(peer.uid(), own) => true,
        Ok(peer) => {
            metrics::control_refused(metrics::ControlRefusal::OtherUser);
            tracing::warn!(
                uid = peer.uid(),
                pid = peer.pid(),
                "control socket: refused a process of another user"
            );
            false
        }
        Err(e) => {
            metrics::control_refused(metrics::ControlRefusal::UnknownPeer);
            tracing::warn!("control socket: cannot tell who connected, refused: {e}");
            false
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
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
        if !admit(&stream) {
            return;
        }
        let (reader, mut writer) = stream.into_split();
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(reader.take(MAX_REQUEST));
        match tokio::time::timeout(TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        let request = serde_json::from_str::<Request>(&line);
        let response = match request {
            Ok(request) => self.respond(request).await,
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

    async fn respond(&self, request: Request) -> Response {
        match request {
            Request::Status => {
                let mut status = self.status();
                status.cluster = self.cluster().await;
                Response::Status(Box::new(status))
            }
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

    /// The cluster as the gateways answer it, within [`CLUSTER_WAIT`]; none without a worker
    /// host's links, or when none answered.
    async fn cluster(&self) -> Option<ClusterView> {
        let api = self.running.cluster.as_ref()?;
        match tokio::time::timeout(CLUSTER_WAIT, api.cluster()).await {
            Ok(Ok(view)) if !view.gateways.is_empty() => Some(view),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::debug!("status: the cluster did not answer: {e}");
                None
            }
            Err(_) => None,
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
            endpoints: running
                .endpoints
                .iter()
                .map(|(name, url)| ((*name).to_owned(), url.clone()))
                .collect(),
            gateways: running
                .gateways
                .iter()
                .map(|g| {
                    let now = g.gateway.snapshot();
                    GatewayStatus {
                        name: g.name.clone(),
                        listen: g.listen.clone(),
                        app: g.app.clone(),
                        internal: g.gateway.state.internal().to_string(),
                        connections: now.state.clients,
                        groups: now.state.groups,
                        uids: now.state.uids,
                        worker_links: now.worker_links,
                        serving_links: now.serving_links,
                        registers: reach_status(&g.gateway.registers),
                    }
                })
                .collect(),
            worker: running.worker.as_ref().map(|w| WorkerStatus {
                name: w.name.clone(),
                plugins: w.plugins.display().to_string(),
                gateway_links: metrics::gateway_links(Peer::Worker.name()),
                plugin_memory_worst_case: metrics::plugins()
                    .iter()
                    .filter(|p| p.worker == w.name)
                    .map(|p| p.instances as u64 * w.memory_limit * 2)
                    .sum(),
                data: granted_data(&w.grants.borrow(), &w.data),
                registers: reach_status(&w.registers),
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
            refused: metrics::refused_plugins()
                .into_iter()
                .map(|r| RefusedPlugin {
                    worker: r.worker,
                    plugin: r.plugin,
                    version: r.version,
                    reason: r.reason,
                    refused_at: metrics::unix_seconds(r.refused_at) as u64,
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
            cluster: None,
            nats: running.nats.as_ref().map(|nats| self.nats(nats)),
        }
    }

    /// The NATS connection and what the gateways hold on it.
    fn nats(&self, nats: &Nats) -> NatsStatus {
        let report = nats.report();
        NatsStatus {
            servers: report.servers,
            state: report.link.name().to_owned(),
            since: metrics::unix_seconds(report.since) as u64,
            server: report.server,
            connects: report.connects,
            commands_published: metrics::nats_commands_published(),
            gateways: self
                .running
                .gateways
                .iter()
                .map(|g| {
                    let (group_subjects, uid_subjects) = g.gateway.nats_subjects.counts();
                    NatsGatewayStatus {
                        name: g.name.clone(),
                        group_subjects,
                        uid_subjects,
                        commands_received: g.gateway.counters.nats_commands.load(Ordering::Relaxed),
                    }
                })
                .collect(),
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

/// The registers `reach` cannot reach now, as `status` shows them.
fn reach_status(reach: &RegisterReach) -> RegisterReachStatus {
    let report = reach.report();
    RegisterReachStatus {
        unreachable: report
            .unreachable
            .iter()
            .map(|u| UnreachableRegister {
                register: u.register.to_string(),
                secs: u.down_for.as_secs(),
            })
            .collect(),
        none_reachable_secs: report.none_reachable_for.map(|d| d.as_secs()),
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

/// The stores and databases `grants` give their apps, with the file of each embedded one
/// under `data`: the embedded ones are this host's alone, which `status` must make plain.
fn granted_data(grants: &GrantTable, data: &Path) -> Vec<DataStatus> {
    let shown = |file: PathBuf| Some(file.display().to_string());
    let mut rows = Vec::new();
    for (app, granted) in grants {
        if let Some(store) = &granted.kv {
            let (backend, file) = match store {
                KvGrant::Embedded => ("embedded", shown(kv::embedded_file(data, app))),
                KvGrant::Redis(_) => ("redis", None),
            };
            rows.push(DataStatus {
                app: app.clone(),
                interface: "kv".into(),
                name: "-".into(),
                backend: backend.into(),
                file,
            });
        }
        for (name, database) in &granted.sql {
            let (backend, file) = match database {
                SqlBackend::Sqlite => ("sqlite", shown(sqlite::file(data, app, name))),
                SqlBackend::Postgres(_) => ("postgres", None),
            };
            rows.push(DataStatus {
                app: app.clone(),
                interface: "sql".into(),
                name: name.clone(),
                backend: backend.into(),
                file,
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::control::client::{AskError, ask};

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
    fn only_the_owner_and_root_may_control() {
        assert!(may_control(1000, 1000));
        assert!(may_control(0, 1000));
        assert!(!may_control(1001, 1000));
        assert!(!may_control(1000, 0), "root's server refuses other users");
    }

    #[tokio::test]
    async fn the_socket_is_owner_only_from_its_creation() {
        use rustix::fs::inotify;
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("wasmgate-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.sock");
        // The kernel queues an event for every way a file appears in or changes in the
        // directory: a socket bound there and made owner-only by a chmod after the bind was
        // open to everyone in between, whatever its final mode.
        let watch = inotify::init(inotify::CreateFlags::NONBLOCK).unwrap();
        inotify::add_watch(
            &watch,
            &dir,
            inotify::WatchFlags::CREATE
                | inotify::WatchFlags::ATTRIB
                | inotify::WatchFlags::MOVED_TO,
        )
        .unwrap();
        let socket = ControlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut buffer = [std::mem::MaybeUninit::uninit(); 1024];
        let mut events = inotify::Reader::new(&watch, &mut buffer);
        let mut seen = Vec::new();
        while let Ok(event) = events.next() {
            if event.file_name().is_some_and(|n| n.to_bytes() == b"x.sock") {
                seen.push(event.events());
            }
        }
        assert_eq!(
            seen,
            [inotify::ReadFlags::MOVED_TO],
            "moved in whole, never changed"
        );
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["x.sock"], "the staging directory is gone");
        drop(socket);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_peer_of_another_user_is_refused_and_counted() {
        use std::os::unix::fs::PermissionsExt;
        if !rustix::process::geteuid().is_root() || !Path::new("/usr/bin/perl").exists() {
            eprintln!("SKIPPED: connecting as another user needs root and /usr/bin/perl");
            return;
        }
        let dir = std::env::temp_dir().join(format!("wasmgate-peer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.sock");
        let socket = ControlSocket::bind(&path).unwrap();
        // Loosened on purpose, so that the uid check is what keeps the stranger out.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let refused = metrics::controls_refused(metrics::ControlRefusal::OtherUser);
        // A real process of another user (`nobody`) that connects and reads until closed.
        let stranger = tokio::process::Command::new("/usr/bin/perl")
            .args([
                "-MIO::Socket::UNIX",
                "-e",
                "$s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die $!; print <$s>",
            ])
            .arg(&path)
            .uid(65534)
            .gid(65534)
            .output();
        let accepted = async {
            let (stream, _) = socket.listener.accept().await.unwrap();
            let admitted = admit(&stream);
            drop(stream);
            admitted
        };
        let (stranger, admitted) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(stranger, accepted)
        })
        .await
        .expect("the stranger connected");
        let stranger = stranger.unwrap();
        assert!(stranger.status.success(), "{stranger:?}");
        assert!(!admitted);
        assert!(stranger.stdout.is_empty(), "the stranger was answered");
        assert_eq!(
            metrics::controls_refused(metrics::ControlRefusal::OtherUser),
            refused + 1
        );
        let own = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (stream, _) = socket.listener.accept().await.unwrap();
        assert!(admit(&stream), "the owner is let in");
        drop((own, socket));
        std::fs::remove_dir_all(&dir).unwrap();
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
