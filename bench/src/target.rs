//! The servers under test: wasmgate, with every role in one process or each role in a
//! process of its own, and the native [`crate::baseline`].
//!
//! Both always run in child processes of this binary, never in the load generator's own
//! runtime: so the clients and the server never share a scheduler, either can be profiled
//! alone, and a server's memory can be read from `/proc`. wasmgate runs as the real
//! `wasmgate start` command (this binary started under the name `wasmgate`, see `main.rs`).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use clap::ValueEnum;

use crate::baseline::{Shape, WsLib};
use crate::client::{Client, Proto};

/// How long a server may take to answer its first `echo` after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The process name under which this binary runs wasmgate's own command line.
pub const WASMGATE: &str = "wasmgate";

/// The reference plugin's app name.
pub const APP: &str = "commands";

/// How wasmgate's roles are spread over processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// Register, gateways and worker host in one process (in-process links).
    Single,
    /// Register, each gateway and the worker host each in a process of its own (TCP links).
    Split,
}

/// What carries commands from the worker host to the gateways of a cluster run
/// (`fanout --gateways`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// A register, and a link from the worker host to every gateway: every group send
    /// reaches every gateway.
    Mesh,
    /// A local `nats-server`: a group send reaches only the gateways holding a member.
    Nats,
}

/// A server to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// wasmgate with the reference plugin.
    Wasmgate(Layout),
    /// The native baseline, speaking WebSocket through this library, in this shape.
    Baseline(WsLib, Shape),
}

impl Server {
    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Server::Wasmgate(_) => "wasmgate",
            Server::Baseline(_, Shape::Direct) => "baseline",
            Server::Baseline(_, Shape::HandedOff | Shape::Linked) => "hand-off baseline",
        }
    }
}

/// How many processes accept clients, and whether they share one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    /// Client listeners: gateways, or baseline processes.
    pub count: usize,
    /// All of them on one port with `SO_REUSEPORT` (the kernel spreads connections over
    /// them) rather than each on a port of its own.
    pub reuse_port: bool,
}

impl Listeners {
    /// `count` listeners, each on a port of its own.
    pub fn separate(count: usize) -> Self {
        Self {
            count,
            reuse_port: false,
        }
    }
}

/// A server running in child processes; they are killed when this is dropped.
pub struct Running {
    /// Where clients connect: one address per listener, or the one they share.
    pub addrs: Vec<SocketAddr>,
    /// Each gateway's `/metrics`, in the order of `addrs`: only in a cluster run.
    pub metrics: Vec<SocketAddr>,
    /// The processes that hold client connections, whose memory [`Running::rss`] sums.
    holders: Vec<u32>,
    children: Vec<Child>,
    /// Logs, configuration files and the plugins directory.
    dir: tempfile::TempDir,
}

impl Running {
    /// Starts `server` with `listeners` speaking `proto`, and returns once each one answers
    /// (on a shared port: once every process listens, and for wasmgate, every gateway
    /// answers).
    pub async fn start(server: Server, proto: Proto, listeners: Listeners) -> anyhow::Result<Self> {
        Self::launch(server, proto, listeners, "", None).await
    }

    /// Starts wasmgate as a cluster: `gateways` gateway processes, each with `/metrics`, and
    /// one worker host process, linked by `engine` (a register process, or a `nats-server`
    /// found by [`nats_server`]).
    pub async fn cluster(proto: Proto, gateways: usize, engine: Engine) -> anyhow::Result<Self> {
        let server = Server::Wasmgate(Layout::Split);
        let listeners = Listeners::separate(gateways);
        Self::launch(server, proto, listeners, "", Some(engine)).await
    }

    /// Starts wasmgate, every role in one process and one gateway speaking `proto`, with
    /// `grants` (`[worker.grants.<app>]` tables) added to its configuration.
    pub async fn granted(proto: Proto, grants: &str) -> anyhow::Result<Self> {
        let one = Listeners::separate(1);
        Self::launch(Server::Wasmgate(Layout::Single), proto, one, grants, None).await
    }

    /// [`Running::start`], with `grants` for a wasmgate server, as a cluster linked by
    /// `engine` if given.
    async fn launch(
        server: Server,
        proto: Proto,
        listeners: Listeners,
        grants: &str,
        engine: Option<Engine>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wasmgate-bench")
            .tempdir()?;
        let ports = if listeners.reuse_port {
            1
        } else {
            listeners.count
        };
        let addrs: Vec<SocketAddr> = (0..ports)
            .map(|_| free_port().map(|p| SocketAddr::from(([127, 0, 0, 1], p))))
            .collect::<anyhow::Result<_>>()?;
        let mut running = Self {
            addrs,
            metrics: Vec::new(),
            holders: Vec::new(),
            children: Vec::new(),
            dir,
        };
        match server {
            Server::Baseline(lib, shape) => {
                let lib = lib.to_possible_value().expect("no skipped variants");
                let worker = match shape {
                    Shape::Linked => {
                        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
                        let listen = addr.to_string();
                        running.spawn(
                            "baseline-worker",
                            Program::Itself,
                            &["baseline-worker", "--listen", &listen],
                        )?;
                        // Listening before the baseline dials it once, at its start.
                        all_listening(addr, 1).await?;
                        Some(listen)
                    }
                    Shape::Direct | Shape::HandedOff => None,
                };
                let shape = shape.to_possible_value().expect("no skipped variants");
                for i in 0..listeners.count {
                    let addr = running.addrs[i % ports].to_string();
                    let mut args = vec![
                        "baseline",
                        "--listen",
                        &addr,
                        "--proto",
                        proto.scheme(),
                        "--ws-lib",
                        lib.get_name(),
                        "--shape",
                        shape.get_name(),
                    ];
                    if listeners.reuse_port {
                        args.push("--reuse-port");
                    }
                    if let Some(worker) = &worker {
                        args.extend(["--worker", worker]);
                    }
                    let pid = running.spawn(&format!("baseline{i}"), Program::Itself, &args)?;
                    running.holders.push(pid);
                }
            }
            Server::Wasmgate(layout) => match engine {
                None => running.start_wasmgate(layout, proto, listeners, grants)?,
                Some(engine) => running.start_cluster(proto, listeners, engine)?,
            },
        }
        for &addr in &running.addrs {
            if let Err(e) = ready(addr, proto).await {
                bail!(
                    "{} at {addr} never answered: {e:#}\n{}",
                    server.name(),
                    running.logs()
                );
            }
        }
        // A child that could not bind a port picked free for it (taken in between) exits,
        // while something else may answer on its port.
        let exited = running
            .children
            .iter_mut()
            .find_map(|child| child.try_wait().ok().flatten());
        if let Some(status) = exited {
            bail!("a server process exited ({status})\n{}", running.logs());
        }
        if listeners.reuse_port {
            let addr = running.addrs[0];
            let shared = match server {
                Server::Baseline(..) => all_listening(addr, listeners.count).await,
                Server::Wasmgate(_) => all_gateways_answer(addr, proto, listeners.count).await,
            };
            if let Err(e) = shared {
                bail!("{} at {addr}: {e:#}\n{}", server.name(), running.logs());
            }
        }
        Ok(running)
    }

    fn start_wasmgate(
        &mut self,
        layout: Layout,
        proto: Proto,
        listeners: Listeners,
        grants: &str,
    ) -> anyhow::Result<()> {
        let plugins = self.install_plugin()?;
        let register = format!("127.0.0.1:{}", free_port()?);
        let linked = format!("register = \"{register}\"\n");
        let sections = Sections {
            register: format!("[register]\nlisten = \"{register}\"\n"),
            gateways: self.gateway_sections(proto, listeners, &linked),
            worker: self.worker_section(&linked, &plugins, grants),
        };
        match layout {
            Layout::Single => {
                let all = [&sections.register, &sections.worker]
                    .into_iter()
                    .chain(&sections.gateways);
                let pid = self.wasmgate("all", all)?;
                self.holders.push(pid);
            }
            Layout::Split => {
                self.wasmgate("register", [&sections.register])?;
                for (i, gateway) in sections.gateways.iter().enumerate() {
                    let pid = self.wasmgate(&format!("gateway{i}"), [gateway])?;
                    self.holders.push(pid);
                }
                self.wasmgate("worker", [&sections.worker])?;
            }
        }
        Ok(())
    }

    /// Creates the plugins directory with the reference plugin in it, and returns it.
    fn install_plugin(&self) -> anyhow::Result<PathBuf> {
        let plugins = self.plugins();
        std::fs::create_dir(&plugins)?;
        std::fs::copy(
            wasmgate_tests::plugins::COMMANDS,
            plugins.join(format!("{APP}.wasm")),
        )
        .context("copying the reference plugin")?;
        Ok(plugins)
    }

    /// The `[worker]` section: `linked` (how it finds gateways), the plugins directory,
    /// `extra` keys, and a compile cache of this run's own, so that a plugin this run never
    /// compiled is compiled when it loads (a cold reload is cold, whatever earlier runs cached
    /// in the user's cache directory).
    fn worker_section(&self, linked: &str, plugins: &Path, extra: &str) -> String {
        let cache = self.dir.path().join("compile-cache");
        format!("[worker]\n{linked}plugins = {plugins:?}\ncache = {cache:?}\n{extra}")
    }

    /// The `[[gateway]]` sections of `listeners` on `self.addrs` (sharing the one address
    /// when they share a port), each with `linked` (how it finds worker hosts) added.
    fn gateway_sections(&self, proto: Proto, listeners: Listeners, linked: &str) -> Vec<String> {
        (0..listeners.count)
            .map(|i| {
                let addr = self.addrs[i % self.addrs.len()];
                format!(
                    "[[gateway]]\nname = \"gw{i}\"\nlisten = \"{}://{addr}\"\napp = \"{APP}\"\n\
                     {linked}max_connections = 1000000\nmax_connections_per_ip = 0\n\
                     reuse_port = {}\n",
                    proto.scheme(),
                    listeners.reuse_port,
                )
            })
            .collect()
    }

    /// Starts a cluster run: each gateway in a process of its own with `/metrics`, one worker
    /// host process, and a register or a `nats-server` linking them.
    fn start_cluster(
        &mut self,
        proto: Proto,
        listeners: Listeners,
        engine: Engine,
    ) -> anyhow::Result<()> {
        let plugins = self.install_plugin()?;
        // What every process's configuration adds: where the register is, or NATS.
        let (linked, shared) = match engine {
            Engine::Mesh => {
                let register = format!("127.0.0.1:{}", free_port()?);
                self.wasmgate(
                    "register",
                    [&format!("[register]\nlisten = \"{register}\"\n")],
                )?;
                (format!("register = \"{register}\"\n"), String::new())
            }
            Engine::Nats => {
                let url = self.start_nats()?;
                (String::new(), format!("[cluster]\nnats = [\"{url}\"]\n"))
            }
        };
        let gateways = self.gateway_sections(proto, listeners, &linked);
        for (i, gateway) in gateways.iter().enumerate() {
            let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            self.metrics.push(metrics);
            let own = format!("[metrics]\nlisten = \"{metrics}\"\n");
            let pid = self.wasmgate(&format!("gateway{i}"), [&shared, gateway, &own])?;
            self.holders.push(pid);
        }
        let worker = self.worker_section(&linked, &plugins, "");
        self.wasmgate("worker", [&shared, &worker])?;
        Ok(())
    }

    /// Starts a one-node `nats-server` on loopback, its log in this run's directory, and
    /// returns its URL.
    fn start_nats(&mut self) -> anyhow::Result<String> {
        let binary = nats_server().context("no nats-server")?;
        let port = free_port()?.to_string();
        let log = self.dir.path().join("nats-server.log");
        let log = log.to_string_lossy().into_owned();
        let args = ["-a", "127.0.0.1", "-p", &port, "-l", &log];
        self.spawn("nats-server-output", Program::Other(&binary), &args)?;
        Ok(format!("nats://127.0.0.1:{port}"))
    }

    /// Starts `wasmgate start` with a configuration made of `sections`.
    fn wasmgate<'a>(
        &mut self,
        name: &str,
        sections: impl IntoIterator<Item = &'a String>,
    ) -> anyhow::Result<u32> {
        let mut config = String::from("secret = \"wasmgate-bench\"\n");
        config.extend(sections.into_iter().map(String::as_str));
        let file = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, config)?;
        let file = file.to_string_lossy().into_owned();
        self.spawn(name, Program::Wasmgate, &["start", "-c", &file])
    }

    /// Starts `program` with `args`, its output going to `name.log`.
    fn spawn(&mut self, name: &str, program: Program, args: &[&str]) -> anyhow::Result<u32> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))?;
        let mut command = match program {
            Program::Itself => std::process::Command::new(std::env::current_exe()?),
            Program::Wasmgate => {
                let mut command = std::process::Command::new(std::env::current_exe()?);
                command.arg0(WASMGATE);
                command
            }
            Program::Other(path) => std::process::Command::new(path),
        };
        command
            .args(args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id().context("the child has no pid")?;
        self.children.push(child);
        Ok(pid)
    }

    /// The plugins directory a wasmgate server watches.
    pub fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// The resident memory of the processes that hold client connections, in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        self.holders.iter().map(|&pid| rss(pid)).sum()
    }

    /// The established client connections each process that holds them has, from
    /// `/proc/net/tcp` and the sockets among each process's descriptors.
    pub fn connections(&self) -> anyhow::Result<Vec<usize>> {
        const ESTABLISHED: &str = "01";
        let ports: Vec<String> = self
            .addrs
            .iter()
            .map(|a| format!(":{:04X}", a.port()))
            .collect();
        let table = std::fs::read_to_string("/proc/net/tcp")?;
        let clients: std::collections::HashSet<&str> = table
            .lines()
            .skip(1)
            .filter_map(|row| {
                let fields: Vec<&str> = row.split_whitespace().collect();
                let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
                let ours = ports.iter().any(|p| local.ends_with(p.as_str()));
                (ours && *state == ESTABLISHED).then_some(*inode)
            })
            .collect();
        self.holders
            .iter()
            .map(|&pid| {
                let mut held = 0;
                for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
                    // A descriptor closed meanwhile has no link left to read.
                    let Ok(link) = std::fs::read_link(fd?.path()) else {
                        continue;
                    };
                    let link = link.to_string_lossy();
                    let inode = link
                        .strip_prefix("socket:[")
                        .and_then(|l| l.strip_suffix(']'));
                    held += usize::from(inode.is_some_and(|i| clients.contains(i)));
                }
                Ok(held)
            })
            .collect()
    }

    /// A function that reads the CPU time every process of the server has used so far; it
    /// owns what it needs, so a task can sample while the run goes on.
    pub fn cpu_sampler(&self) -> impl Fn() -> anyhow::Result<CpuTime> + Send + 'static {
        let pids: Vec<u32> = self.children.iter().filter_map(Child::id).collect();
        move || pids.iter().map(|&pid| cpu_time(pid)).sum()
    }

    /// Every child's log, for an error message.
    pub fn logs(&self) -> String {
        let mut logs = String::new();
        for entry in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                logs.push_str(&format!("--- {}\n{}", path.display(), tail(&text)));
            }
        }
        logs
    }

    /// Stops every process and waits for it.
    pub async fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill().await;
        }
    }
}

/// What a child process runs.
#[derive(Debug, Clone, Copy)]
enum Program<'a> {
    /// This binary, as the bench's helper commands.
    Itself,
    /// This binary under the name `wasmgate`: wasmgate's own command line.
    Wasmgate,
    /// Another program (`nats-server`).
    Other(&'a Path),
}

/// Where `nats-server` is: on `PATH`, or where Debian's package puts it.
pub fn nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// The configuration sections of one wasmgate cluster.
struct Sections {
    register: String,
    gateways: Vec<String>,
    worker: String,
}

/// Waits until `addr` answers an `echo`, which for wasmgate also means a worker host has
/// linked to the gateway and loaded the plugin.
async fn ready(addr: SocketAddr, proto: Proto) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let attempt = async {
            let mut client = Client::connect(addr, proto, None).await?;
            client.send(b"echo ready").await?;
            client.recv().await
        };
        match tokio::time::timeout(Duration::from_millis(500), attempt).await {
            Ok(Ok(reply)) if reply == "ready" => return Ok(()),
            Ok(Ok(reply)) => bail!("unexpected answer {:?}", reply.escape_ascii().to_string()),
            _ if Instant::now() > deadline => bail!("no answer within {READY_TIMEOUT:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until `count` sockets listen on `addr`: on a shared port the kernel spreads
/// connections only over the processes already listening.
async fn all_listening(addr: SocketAddr, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let found = listening_on(addr.port())?;
        if found >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{found} of {count} processes listen after {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The IPv4 sockets listening on `port`, from `/proc/net/tcp` (one row per `SO_REUSEPORT`
/// socket).
fn listening_on(port: u16) -> anyhow::Result<usize> {
    const LISTEN: &str = "0A";
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let local = format!(":{port:04X}");
    Ok(table
        .lines()
        .skip(1)
        .filter(|row| {
            let mut fields = row.split_whitespace().skip(1);
            let address = fields.next().unwrap_or_default();
            let state = fields.nth(1).unwrap_or_default();
            address.ends_with(&local) && state == LISTEN
        })
        .count())
}

/// Waits until clients connecting to the shared `addr` have met each of wasmgate's `count`
/// gateways there, each answering a `whoami`: the kernel picks the gateway, so clients keep
/// coming until every gateway part of a client id has been seen.
async fn all_gateways_answer(addr: SocketAddr, proto: Proto, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < count {
        let attempt = async {
            let mut client = Client::connect(addr, proto, None).await?;
            client.send(b"whoami").await?;
            client.recv().await
        };
        if let Ok(Ok(id)) = tokio::time::timeout(Duration::from_millis(500), attempt).await {
            // A client id starts with its gateway's internal address, 12 hex digits.
            seen.insert(id.get(..12).unwrap_or_default().to_vec());
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {count} gateways answered within {READY_TIMEOUT:?}",
                seen.len()
            );
        }
    }
    Ok(())
}

/// A free loopback port: bound, then released for a child to bind.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The resident memory of process `pid` in bytes (`VmRSS`).
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no VmRSS for process {pid}"))?;
    Ok(kib * 1024)
}

/// CPU time used, split as the kernel accounts it: a server's user time is its own code
/// (wasmgate's, the plugin's), its system time mostly the socket calls, which on loopback
/// also run the receiving side's TCP, and the wake-ups between threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// In user space.
    pub user: Duration,
    /// In the kernel, on the process's behalf.
    pub system: Duration,
}

impl CpuTime {
    /// User and system together.
    pub fn total(self) -> Duration {
        self.user + self.system
    }
}

impl std::ops::Sub for CpuTime {
    type Output = Self;

    fn sub(self, earlier: Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

impl std::iter::Sum for CpuTime {
    fn sum<I: Iterator<Item = Self>>(times: I) -> Self {
        times.fold(Self::default(), |sum, t| Self {
            user: sum.user + t.user,
            system: sum.system + t.system,
        })
    }
}

/// The CPU time (every thread) process `pid` has used, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis,
    // where field 3 (the state) comes first and utime, stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .with_context(|| format!("a short /proc/{pid}/stat"))?
            .parse()?)
    };
    // SAFETY: sysconf only reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let time = |ticks: u64| Duration::from_micros(ticks * 1_000_000 / hz);
    Ok(CpuTime {
        user: time(ticks(11)?),
        system: time(ticks(12)?),
    })
}

/// The last lines of a log.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n") + "\n"
}

/// Puts `src` in place as `dir/app.wasm` the way ARCHITECTURE.md recommends deploying: written
/// aside, then renamed in. Returns when the rename is done.
pub fn deploy(dir: &Path, src: &str) -> anyhow::Result<()> {
    let aside = dir.join(format!(".{APP}.wasm.tmp"));
    std::fs::copy(src, &aside)?;
    std::fs::rename(&aside, dir.join(format!("{APP}.wasm")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that computes gains user time, read apart from its system time; the sum of
    /// several processes' times and the difference of two readings keep the parts apart.
    #[test]
    fn computing_shows_as_user_time() {
        let pid = std::process::id();
        let before = cpu_time(pid).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        let after = loop {
            for i in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let now = cpu_time(pid).unwrap();
            if now.user > before.user || Instant::now() > deadline {
                break now;
            }
        };
        let spent = after - before;
        assert!(spent.user > Duration::ZERO, "no user time after computing");
        assert_eq!(spent.total(), spent.user + spent.system);
        let both: CpuTime = [before, spent].into_iter().sum();
        assert_eq!(both, after);
    }
}
