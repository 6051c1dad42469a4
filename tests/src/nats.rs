//! A real NATS cluster for the NATS-engine tests: three Debian `nats-server`s (installed
//! through [`crate::tools::nats_server`]) on free loopback ports, or one on each of some
//! simulated hosts ([`crate::netns`]), routed to each other, with a user and password, in a
//! temporary directory, killed when dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::cluster::free_port;
use crate::netns::{Host, HostThread};
use crate::tools::Skip;

/// The user every node of a [`NatsCluster`] requires.
pub const USER: &str = "wg";
/// That user's password.
pub const PASSWORD: &str = "nats-test-password";

/// One `nats-server` of the cluster.
struct NatsNode {
    child: Option<Child>,
    /// Where it takes clients.
    port: SocketAddr,
    /// Its monitoring endpoint.
    monitor: SocketAddr,
    /// The simulated host it runs on, if not on loopback.
    netns: Option<String>,
    /// Its arguments, to start it again on the same ports.
    args: Vec<String>,
}

/// Three `nats-server`s in one NATS cluster.
pub struct NatsCluster {
    binary: PathBuf,
    nodes: Vec<NatsNode>,
    /// A thread on the first node's simulated host, whence the nodes are seen to be up.
    probe: Option<HostThread>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// [`Self::start`] with Debian's `nats-server`, installed if need be; `None` after
    /// reporting `test` as skipped where either cannot be had.
    pub async fn start_or_skip(test: &str) -> Option<Self> {
        let binary = Self::binary_or_skip(test).await?;
        crate::tools::or_skip(Self::start(binary).await, test)
    }

    /// [`Self::start_on`] `hosts` as [`Self::start_or_skip`] starts on loopback.
    pub async fn start_on_or_skip(hosts: &[Host], test: &str) -> Option<Self> {
        let binary = Self::binary_or_skip(test).await?;
        crate::tools::or_skip(Self::start_on(binary, hosts).await, test)
    }

    /// Debian's `nats-server`, installed if need be; `None` after reporting `test` as skipped.
    async fn binary_or_skip(test: &str) -> Option<PathBuf> {
        let binary = tokio::task::spawn_blocking(crate::tools::nats_server)
            .await
            .expect("the installing thread ended");
        crate::tools::or_skip(binary, test)
    }

    /// Starts three nodes (`binary`: [`crate::tools::nats_server`]) routed to each other, and
    /// waits (bounded) until each accepts clients and sees its two routes.
    pub async fn start(binary: PathBuf) -> Result<Self, Skip> {
        Self::start_with(binary, 3, &[]).await
    }

    /// Starts `count` nodes as [`Self::start`] does, each also given `extra` arguments (TLS).
    pub async fn start_with(binary: PathBuf, count: usize, extra: &[&str]) -> Result<Self, Skip> {
        Self::launch(binary, &vec![None; count], extra).await
    }

    /// Starts one node on each of `hosts`, on its address, as [`Self::start`] does on
    /// loopback: a NATS cluster spread over simulated machines.
    pub async fn start_on(binary: PathBuf, hosts: &[Host]) -> Result<Self, Skip> {
        let places: Vec<Option<&Host>> = hosts.iter().map(Some).collect();
        Self::launch(binary, &places, &[]).await
    }

    /// Starts a node at each of `places` (a simulated host, or loopback for `None`).
    async fn launch(
        binary: PathBuf,
        places: &[Option<&Host>],
        extra: &[&str],
    ) -> Result<Self, Skip> {
        let dir = tempfile::tempdir().expect("temp dir");
        let addrs: Vec<Ipv4Addr> = places
            .iter()
            .map(|host| host.map_or(Ipv4Addr::LOCALHOST, |h| h.addr))
            .collect();
        let routes: Vec<u16> = places.iter().map(|_| free_port()).collect();
        let route_urls: Vec<String> = addrs
            .iter()
            .zip(&routes)
            .map(|(addr, port)| format!("nats://{addr}:{port}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (route, host)) in routes.iter().zip(places).enumerate() {
            let (addr, port, monitor) = (addrs[i], free_port(), free_port());
            let others: Vec<&str> = route_urls
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, u)| u.as_str())
                .collect();
            let log = dir.path().join(format!("n{i}.log"));
            let args = [
                "-a",
                &addr.to_string(),
                "-p",
                &port.to_string(),
                "-m",
                &monitor.to_string(),
                "-n",
                &format!("n{i}"),
                "--cluster_name",
                "wgtest",
                "--cluster",
                &format!("nats://{addr}:{route}"),
                "--user",
                USER,
                "--pass",
                PASSWORD,
                "-l",
                log.to_str().expect("a UTF-8 temp path"),
            ];
            let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            if !others.is_empty() {
                args.extend(["--routes".to_owned(), others.join(",")]);
            }
            args.extend(extra.iter().map(|a| a.to_string()));
            nodes.push(NatsNode {
                child: None,
                port: SocketAddr::from((addr, port)),
                monitor: SocketAddr::from((addr, monitor)),
                netns: host.map(|h| h.netns.clone()),
                args,
            });
        }
        let mut cluster = Self {
            binary,
            nodes,
            probe: places.first().copied().flatten().map(Host::thread),
            _dir: dir,
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i);
        }
        cluster.wait_until_routed(places.len() - 1).await;
        Ok(cluster)
    }

    /// Starts node `i` (again) on its ports, on its simulated host if it has one.
    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut command = match &node.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        let child = command
            .args(&node.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting nats-server");
        node.child = Some(child);
    }

    /// Starts every node that was killed, and waits (bounded) until the cluster is whole.
    pub async fn restart(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                self.spawn(i);
            }
        }
        self.wait_until_routed(self.nodes.len() - 1).await;
    }

    /// Waits (bounded) until every node accepts clients and has `routes` routes.
    async fn wait_until_routed(&self, routes: usize) {
        for node in &self.nodes {
            let (port, monitor) = (node.port, node.monitor);
            let ready = async move {
                while !(answers(port).await && routes_up(monitor).await >= routes) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            let ready = tokio::time::timeout(Duration::from_secs(20), ready);
            let formed = match &self.probe {
                Some(probe) => probe.run(ready).await,
                None => ready.await,
            };
            formed.unwrap_or_else(|_| panic!("nats-server at {port} never formed its cluster"));
        }
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://{}", self.nodes[i].port)
    }

    /// Sends `signal` to node `i`: `STOP` freezes it (what its clients send waits, unread,
    /// until `CONT`).
    pub async fn signal(&self, i: usize, signal: &str) {
        let node = self.nodes[i].child.as_ref().expect("the node runs");
        crate::daemon::signal(node.id().expect("the node runs"), signal).await;
    }

    /// Kills node `i` (SIGKILL) and waits for it: its clients must move to the others.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill().await;
        }
    }
}

/// Whether a NATS server at `addr` greets a new connection with its `INFO` line now.
async fn answers(addr: SocketAddr) -> bool {
    let greet = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await.ok()?;
        Some(line.starts_with("INFO "))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), greet).await,
        Ok(Some(true))
    )
}

/// How many routes the server whose monitoring endpoint is `monitor` has now (0 if it does
/// not answer).
async fn routes_up(monitor: SocketAddr) -> usize {
    let ask = async {
        let mut stream = TcpStream::connect(monitor).await.ok()?;
        stream
            .write_all(b"GET /routez HTTP/1.1\r\nHost: nats\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        let at = body.find("\"num_routes\":")? + "\"num_routes\":".len();
        let digits: String = body[at..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}
