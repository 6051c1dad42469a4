//! Clusters for end-to-end tests: in-process ([`Cluster`], every role on 127.0.0.1 with
//! ephemeral ports) or as separate OS processes running the real command ([`Node`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wasmgate::config::{Config, GatewayConfig, Protocol, WorkerConfig};
use wasmgate::gateway::{BoundGateway, Gateway};
use wasmgate::local::LocalGateways;
use wasmgate::push::BoundPush;
use wasmgate::worker::WorkerHost;

use crate::client::TestClient;
use crate::netns::Host;

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

    /// Puts `src` in place as `app.wasm` the recommended way: written aside, renamed in, so
    /// that a watching worker host never sees a partial file.
    pub fn deploy(&self, app: &str, src: &str) {
        let tmp = self.path().join(format!(".{app}.wasm.tmp"));
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, self.path().join(format!("{app}.wasm"))).unwrap();
    }
}

/// One in-process gateway of a [`Cluster`].
pub struct GatewayHandle {
    /// Where clients connect.
    pub client_addr: SocketAddr,
    /// Where worker hosts link.
    pub internal_addr: SocketAddr,
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
    /// The HTTP push API of the first worker host, if started with [`Cluster::start_with_push`].
    pub push: Option<SocketAddr>,
    roles: JoinSet<anyhow::Result<()>>,
    _plugins: PluginsDir,
    data: tempfile::TempDir,
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
        Self::start_with(app, &listen_tables(gateways), workers, instances).await
    }

    /// As [`Cluster::start`], with each gateway given as the keys of its `[[gateway]]` table
    /// (`listen` and any limits, heartbeat or TLS keys); `name`, `app` and `register` are
    /// added.
    pub async fn start_with(
        app: (&str, &str),
        gateways: &[String],
        workers: usize,
        instances: usize,
    ) -> Self {
        Self::launch(app, gateways, workers, instances, None, "").await
    }

    /// As [`Cluster::start`], with the HTTP push API on the first worker host: `push` holds
    /// the keys of its `[push]` table besides `listen` (a free loopback port), e.g. a `token`.
    pub async fn start_with_push(
        app: (&str, &str),
        gateways: &[Protocol],
        workers: usize,
        instances: usize,
        push: &str,
    ) -> Self {
        let tables = listen_tables(gateways);
        Self::launch(app, &tables, workers, instances, Some(push), "").await
    }

    /// As [`Cluster::start`], with `worker` added to every worker host's `[worker]` table:
    /// keys such as `process_timeout`, then tables such as `[worker.grants.APP]`.
    pub async fn start_with_worker(
        app: (&str, &str),
        gateways: &[Protocol],
        workers: usize,
        instances: usize,
        worker: &str,
    ) -> Self {
        let tables = listen_tables(gateways);
        Self::launch(app, &tables, workers, instances, None, worker).await
    }

    /// The worker hosts' `data` directory (embedded stores), removed with the cluster.
    pub fn data(&self) -> &Path {
        self.data.path()
    }

    async fn launch(
        app: (&str, &str),
        gateways: &[String],
        workers: usize,
        instances: usize,
        push: Option<&str>,
        worker: &str,
    ) -> Self {
        let plugins = PluginsDir::with(&[app]);
        let data = tempfile::tempdir().expect("temp dir");
        let shutdown = CancellationToken::new();
        let secret = wasmgate::transport::Trust::plain(SECRET.as_bytes().into());
        // Worker hosts link to the gateways through channels, as in `wasmgate start`; the
        // process tests cover the TCP links.
        let local = LocalGateways::default();
        let mut roles = JoinSet::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let register = listener.local_addr().unwrap();
        roles.spawn(wasmgate::register::run(
            listener,
            Default::default(),
            secret.clone(),
            shutdown.clone(),
        ));
        let mut handles = Vec::new();
        for (i, table) in gateways.iter().enumerate() {
            let mut config = parse(&format!(
                "[[gateway]]\nname = \"gw{i}\"\n{table}\napp = \"{}\"\nregister = \"{register}\"\n",
                app.0
            ));
            let gateway: GatewayConfig = config.gateway.remove(0);
            let bound = BoundGateway::bind(gateway, secret.clone(), None)
                .await
                .unwrap();
            handles.push(GatewayHandle {
                client_addr: bound.client_addr(),
                internal_addr: bound.internal_addr(),
                gateway: bound.gateway(),
            });
            roles.spawn(bound.run(local.clone(), None, shutdown.clone()));
        }
        let push = push.map(|keys| {
            let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let section = format!("[worker]\n[push]\nlisten = \"{listen}\"\n{keys}\n");
            parse(&section).push.unwrap()
        });
        for i in 0..workers {
            // Named apart from other test clusters of this process: the plugin and fault tables
            // that `status` and the admin page read are the process's, keyed by worker name.
            let name = format!("worker{i}-{}", register.port());
            let config = worker_config(
                &name,
                register,
                plugins.path(),
                data.path(),
                instances,
                worker,
            );
            let worker = WorkerHost::new(config, secret.clone(), local.clone(), None).unwrap();
            if let (0, Some(push)) = (i, &push) {
                let push = BoundPush::bind(push).await.unwrap();
                roles.spawn(push.serve(worker.gateways(), Default::default(), shutdown.clone()));
            }
            // No reloads here: the sender goes at once, and the grants stay as started.
            let (_, grants) = tokio::sync::watch::channel(Arc::new(worker.grants().clone()));
            roles.spawn(worker.run(grants, shutdown.clone()));
        }
        let cluster = Self {
            shutdown,
            register,
            gateways: handles,
            push: push.map(|p| p.listen),
            roles,
            _plugins: plugins,
            data,
        };
        cluster.wait_for_workers(workers).await;
        cluster
    }

    /// Waits until every gateway has `n` worker hosts linked.
    pub async fn wait_for_workers(&self, n: usize) {
        // Worker hosts link once their plugins are compiled: a Python or JavaScript plugin
        // takes about 10 s in a debug build alone, and over a minute when both compile at
        // once on 2 cores that other work shares (a cold cache; later runs hit the cache).
        for g in &self.gateways {
            tokio::time::timeout(Duration::from_secs(180), g.gateway.router.wait_for_links(n))
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

/// `[[gateway]]` keys for an ephemeral loopback listener of each protocol.
fn listen_tables(gateways: &[Protocol]) -> Vec<String> {
    gateways
        .iter()
        .map(|p| format!("listen = \"{}://127.0.0.1:0\"", p.scheme()))
        .collect()
}

/// A worker host's configuration: its plugins and data directories, and `extra` TOML after
/// its keys.
fn worker_config(
    name: &str,
    register: SocketAddr,
    plugins: &Path,
    data: &Path,
    instances: usize,
    extra: &str,
) -> WorkerConfig {
    // One compile cache for every test cluster: a Python or JavaScript component compiles
    // once per change instead of once per test (entries are keyed by content and engine).
    let cache = crate::tools::workspace()
        .join("target")
        .join("test-plugin-cache");
    let config = parse(&format!(
        "[worker]\nname = \"{name}\"\nregister = \"{register}\"\nplugins = {plugins:?}\n\
         instances = {instances}\ncache = {cache:?}\ncache_versions = 64\ndata = {data:?}\n{extra}",
    ));
    config.worker.unwrap()
}

/// Configuration text as if in a file in the working directory (tests give absolute paths).
fn parse(text: &str) -> Config {
    Config::from_toml(text, Path::new("wasmgate.toml")).unwrap()
}

/// A WebSocket client of the gateway on `127.0.0.1:port`, connected as soon as it listens
/// (bounded: a process may take seconds to start).
pub async fn connect_ws(port: u16) -> TestClient {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..2400 {
        if let Ok(client) = TestClient::ws(addr, "/").await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the gateway on port {port} never accepted a client");
}

/// A free loopback port below the kernel's ephemeral range (32768 up on Linux): no outgoing
/// connection and no listener on port 0 takes it between the test's choice and a process's
/// bind, or while a server that was killed is down before it restarts on it, as happened to
/// ports taken from the ephemeral range when many processes ran. Each test process counts up
/// from its own start (by pid), never handing out a port twice, skipping ports that are taken.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 10_000;
    const SPAN: u16 = 22_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (start.wrapping_add(offset) % SPAN);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {}", FIRST + SPAN);
}

/// A `wasmgate start` process, killed on drop; its log goes to a temporary file.
pub struct Node {
    child: Child,
    log: tempfile::NamedTempFile,
    /// Holds the configuration file and what the server puts beside it (control socket,
    /// pid file), so a killed node leaves nothing behind.
    dir: tempfile::TempDir,
}

impl Node {
    /// Starts the real command (`binary`: the test's `CARGO_BIN_EXE_wasmgate-node`) with
    /// `config` (TOML text).
    pub fn start(binary: &str, config: &str) -> Self {
        Self::spawn(Command::new(binary), config)
    }

    /// Starts it as [`Node::start`] does, on the simulated host `host`, with its descriptor
    /// limit raised to the hard limit: a node there may hold tens of thousands of clients.
    pub fn start_on(host: &Host, binary: &str, config: &str) -> Self {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &host.netns, binary]);
        // SAFETY: between fork and exec the closure makes two system calls, no allocation.
        unsafe { command.pre_exec(crate::tools::raise_descriptor_limit) };
        Self::spawn(command, config)
    }

    /// Runs `command` (the binary, or what runs it) with `start -c` and `config`.
    fn spawn(mut command: Command, config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wasmgate.toml");
        std::fs::write(&file, config).unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = command
            .args(["start", "-c"])
            .arg(&file)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("starting wasmgate");
        Self { child, log, dir }
    }

    /// Every role in one process (`binary` as for [`Node::start`]), loading `plugins` with
    /// `instances` instances per plugin, its gateway on `ws://127.0.0.1:<port>` serving `app`;
    /// returns the node and the port.
    pub fn all_in_one(binary: &str, plugins: &Path, app: &str, instances: usize) -> (Self, u16) {
        let (r, g) = (free_port(), free_port());
        let node = Self::start(
            binary,
            &format!(
                "secret = \"{SECRET}\"\n[register]\nlisten = \"127.0.0.1:{r}\"\n\
                 [[gateway]]\nlisten = \"ws://127.0.0.1:{g}\"\napp = \"{app}\"\nregister = \"127.0.0.1:{r}\"\n\
                 [worker]\nplugins = {plugins:?}\ninstances = {instances}\nregister = \"127.0.0.1:{r}\"\n"
            ),
        );
        (node, g)
    }

    /// Its configuration file, for the commands that talk to it (`status -c`).
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("wasmgate.toml")
    }

    /// The process id, e.g. to send it a signal.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Waits (bounded) until the process logs a line containing every one of `needles`.
    pub async fn wait_for_line(&self, needles: &[&str]) {
        for _ in 0..2400 {
            let logs = self.logs();
            if logs.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the log never had a line with {needles:?}; log:\n{}",
            self.logs()
        );
    }

    /// The versions of `app` installed so far, oldest first, as the log names them.
    pub fn installed_versions(&self, app: &str) -> Vec<String> {
        let app = format!("plugin=\"{app}\"");
        self.logs()
            .lines()
            .filter(|l| l.contains("plugin version installed") && l.contains(&app))
            .map(|l| {
                let start = l.find("version=\"").expect("a version field") + "version=\"".len();
                l[start..start + 12].to_owned()
            })
            .collect()
    }

    /// Sends the process `signal` (a `kill` name: `STOP`, `CONT`, …), e.g. to freeze it
    /// as a peer that stopped answering.
    pub async fn signal(&self, signal: &str) {
        crate::daemon::signal(self.child.id().expect("running"), signal).await;
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
