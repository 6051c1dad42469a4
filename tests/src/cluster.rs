//! Clusters for end-to-end tests: in-process ([`Cluster`], every role on 127.0.0.1 with
//! ephemeral ports) or as separate OS processes running the real command ([`Node`]).

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wasmgate::config::{Config, GatewayConfig, Protocol, WorkerConfig};
use wasmgate::gateway::{BoundGateway, Gateway};

/// The secret test clusters share.
pub const SECRET: &str = "test-secret";

/// A plugins directory holding copies of built plugins, removed on drop.
pub struct PluginsDir(tempfile::TempDir);

impl PluginsDir {
    /// A directory with `plugins`: (app name, path of the built `.wasm`).
    pub fn with(plugins: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for (app, path) in plugins {
            std::fs::copy(path, dir.path().join(format!("{app}.wasm"))).expect("copy plugin");
        }
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// One in-process gateway of a [`Cluster`].
pub struct GatewayHandle {
    /// Where clients connect.
    pub client_addr: SocketAddr,
    /// Where worker hosts link.
    pub internal_addr: SocketAddrV4,
    /// Its state and links.
    pub gateway: Arc<Gateway>,
}

/// Every role in this process, on ephemeral loopback ports.
pub struct Cluster {
    /// Stops every role.
    pub shutdown: CancellationToken,
    /// The register.
    pub register: SocketAddr,
    /// The gateways, in the order asked for.
    pub gateways: Vec<GatewayHandle>,
    roles: JoinSet<anyhow::Result<()>>,
    _plugins: PluginsDir,
}

impl Cluster {
    /// Starts a register, one gateway per protocol in `gateways` (all serving `app`), and
    /// `workers` worker hosts with `instances` instances per plugin; returns once every worker
    /// host is linked to every gateway.
    pub async fn start(
        app: (&str, &str),
        gateways: &[Protocol],
        workers: usize,
        instances: usize,
    ) -> Self {
        let plugins = PluginsDir::with(&[app]);
        let shutdown = CancellationToken::new();
        let secret: Arc<[u8]> = SECRET.as_bytes().into();
        let mut roles = JoinSet::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let register = listener.local_addr().unwrap();
        roles.spawn(wasmgate::register::run(
            listener,
            secret.clone(),
            shutdown.clone(),
        ));
        let mut handles = Vec::new();
        for (i, protocol) in gateways.iter().enumerate() {
            let scheme = match protocol {
                Protocol::Ws => "ws",
                Protocol::Text => "text",
            };
            let mut config = Config::parse(&format!(
                "[[gateway]]\nname = \"gw{i}\"\nlisten = \"{scheme}://127.0.0.1:0\"\napp = \"{}\"\nregister = \"{register}\"\n",
                app.0
            ))
            .unwrap();
            let gateway: GatewayConfig = config.gateway.remove(0);
            let bound = BoundGateway::bind(gateway, secret.clone()).await.unwrap();
            handles.push(GatewayHandle {
                client_addr: bound.client_addr(),
                internal_addr: bound.internal_addr(),
                gateway: bound.gateway(),
            });
            roles.spawn(bound.run(shutdown.clone()));
        }
        for i in 0..workers {
            let worker = worker_config(&format!("worker{i}"), register, plugins.path(), instances);
            roles.spawn(wasmgate::worker::run(
                worker,
                secret.clone(),
                Default::default(),
                shutdown.clone(),
            ));
        }
        let cluster = Self {
            shutdown,
            register,
            gateways: handles,
            roles,
            _plugins: plugins,
        };
        cluster.wait_for_workers(workers).await;
        cluster
    }

    /// Waits until every gateway has `n` worker hosts linked.
    pub async fn wait_for_workers(&self, n: usize) {
        for g in &self.gateways {
            tokio::time::timeout(Duration::from_secs(20), g.gateway.router.wait_for_links(n))
                .await
                .expect("worker hosts did not link to every gateway in time");
        }
    }

    /// Stops every role and waits for them; fails if one failed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while let Some(ended) = self.roles.join_next().await {
            ended.expect("role panicked").expect("role failed");
        }
    }
}

fn worker_config(
    name: &str,
    register: SocketAddr,
    plugins: &Path,
    instances: usize,
) -> WorkerConfig {
    let config = Config::parse(&format!(
        "[worker]\nname = \"{name}\"\nregister = \"{register}\"\nplugins = {plugins:?}\ninstances = {instances}\n",
    ))
    .unwrap();
    config.worker.unwrap()
}

/// A free loopback port (bound and released; good enough for tests that start processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `wasmgate start` process, killed on drop; its log goes to a temporary file.
pub struct Node {
    child: Child,
    log: tempfile::NamedTempFile,
    _config: tempfile::NamedTempFile,
}

impl Node {
    /// Starts the real command (`binary`: the test's `CARGO_BIN_EXE_wasmgate-node`) with
    /// `config` (TOML text).
    pub fn start(binary: &str, config: &str) -> Self {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, config.as_bytes()).unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(binary)
            .args(["start", "-c"])
            .arg(file.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("starting wasmgate");
        Self {
            child,
            log,
            _config: file,
        }
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Kills the process at once (SIGKILL) and waits for it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Asks the process to stop (SIGTERM) and returns its exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed");
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the process did not stop")
            .unwrap()
    }
}
