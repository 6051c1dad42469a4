//! Simulated hosts for cluster tests: one network namespace per "host", all joined by a
//! bridge that lives in a namespace of its own, addressed from 198.18.0.0/15 (the range
//! reserved for network benchmarks, RFC 2544), so a test never touches a real network and
//! leaves the machine's own namespace as it found it.
//!
//! A process runs on a host when started under `ip netns exec` ([`crate::cluster::Node::
//! start_on`]); the test's own clients reach a host from a thread that entered a namespace
//! ([`HostThread`]), so their sockets live there. Creating namespaces needs root (or
//! `CAP_NET_ADMIN`) and `ip`: where either is missing, [`SimulatedHosts::create`] says why
//! and the test skips loudly.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::tools::Skip;

/// A set of simulated hosts, torn down (namespaces, links, bridge) when dropped.
pub struct SimulatedHosts {
    switch: String,
    hosts: Vec<Host>,
    /// The last byte of the next address [`SimulatedHosts::add_address`] gives out.
    next_extra: AtomicU8,
}

/// Hosts are 198.18.0.1 up to this, exclusive; the addresses added to them follow.
const FIRST_EXTRA: u8 = 128;

/// One simulated host: a network namespace with one address on the shared bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name, for `ip netns exec`.
    pub netns: String,
    /// Its address, 198.18.0.N.
    pub addr: Ipv4Addr,
}

impl SimulatedHosts {
    /// Creates `count` hosts, 198.18.0.1 onwards, each reaching every other.
    pub fn create(count: usize) -> Result<Self, Skip> {
        assert!(
            count < usize::from(FIRST_EXTRA),
            "hosts take the low half of one /24"
        );
        if !crate::tools::is_root() {
            return Err(Skip::new("network namespaces need root"));
        }
        // Unique per test process and per set in it (tests run side by side), and short:
        // interface names hold at most 15 bytes.
        static SETS: AtomicU8 = AtomicU8::new(0);
        let set = SETS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("wg{}x{set}", std::process::id() % 100_000);
        let mut hosts = Self {
            switch: format!("{prefix}sw"),
            hosts: Vec::new(),
            next_extra: AtomicU8::new(FIRST_EXTRA),
        };
        ip(&["netns", "add", &hosts.switch])?;
        let switch = hosts.switch.clone();
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for i in 0..count {
            let host = Host {
                netns: format!("{prefix}h{i}"),
                addr: Ipv4Addr::new(198, 18, 0, u8::try_from(i + 1).expect("checked above")),
            };
            ip(&["netns", "add", &host.netns])?;
            hosts.hosts.push(host.clone());
            let port = format!("{prefix}p{i}");
            ip(&[
                "link",
                "add",
                &port,
                "netns",
                &switch,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.netns,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
            let ns = host.netns.as_str();
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.addr),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // What the test will do on a host, tried once: a process started there, and a
        // thread entering it. A sandbox may allow making namespaces but not using them.
        let first = hosts.hosts[0].clone();
        ip(&["netns", "exec", &first.netns, "true"])?;
        std::thread::spawn(move || first.enter())
            .join()
            .expect("the probe thread")
            .map_err(|e| Skip::new(format!("cannot enter a network namespace: {e}")))?;
        Ok(hosts)
    }

    /// The hosts, in address order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Gives `host` one more address on the bridge (198.18.0.128 onwards): each source address
    /// has ephemeral ports of its own, about 28,000.
    pub fn add_address(&self, host: &Host) -> Ipv4Addr {
        let last = self.next_extra.fetch_add(1, Ordering::Relaxed);
        assert!(last < 255, "the /24 of simulated hosts is full");
        let addr = Ipv4Addr::new(198, 18, 0, last);
        let added = ip(&[
            "-n",
            &host.netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        added.unwrap_or_else(|e| panic!("adding {addr} to {}: {e}", host.netns));
        addr
    }

    /// SIGKILLs every process running on `host` (in its namespace), as when the machine dies;
    /// returns how many there were.
    pub fn kill_everything_on(&self, host: &Host) -> usize {
        let listed = Command::new("ip")
            .args(["netns", "pids", &host.netns])
            .output()
            .unwrap_or_else(|e| panic!("`ip netns pids {}`: {e}", host.netns));
        assert!(listed.status.success(), "`ip netns pids`: {listed:?}");
        let me = std::process::id();
        let pids: Vec<u32> = String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .filter(|&pid| pid != me)
            .collect();
        for &pid in &pids {
            let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
            // SAFETY: a plain syscall on a pid `ip` just listed; one that ended meanwhile is
            // not an error worth reporting (ESRCH).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        pids.len()
    }
}

impl Drop for SimulatedHosts {
    fn drop(&mut self) {
        // Deleting a namespace destroys the links in it, and with them their peers.
        for netns in self.hosts.iter().map(|h| &h.netns).chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", netns]).output();
        }
    }
}

/// Runs `ip` with `args`; a failure means namespaces cannot be made here.
fn ip(args: &[&str]) -> Result<(), Skip> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Skip::new(format!("cannot run `ip`: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Skip::new(format!(
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// A thread inside a host's namespace running a tokio runtime: the sockets its tasks open
/// live on that host. Other runtimes may use them afterwards; the thread stops when dropped.
pub struct HostThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Host {
    /// Moves the calling thread into this host's network namespace.
    fn enter(&self) -> std::io::Result<()> {
        let netns = std::fs::File::open(format!("/var/run/netns/{}", self.netns))?;
        // SAFETY: `setns` on this thread only, with a namespace descriptor we hold open.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Starts a thread in this host's namespace.
    pub fn thread(&self) -> HostThread {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let host = self.clone();
        let thread = std::thread::spawn(move || {
            host.enter()
                .unwrap_or_else(|e| panic!("entering namespace {}: {e}", host.netns));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the host thread");
            handle_tx.send(runtime.handle().clone()).unwrap();
            // Spawned tasks run here, on this thread, while it waits.
            let _ = runtime.block_on(stopped);
        });
        HostThread {
            handle: handle_rx.recv().expect("the host thread started"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl HostThread {
    /// Runs `task` on the host and returns its output.
    pub async fn run<F>(&self, task: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(task)
            .await
            .expect("a task on the host thread")
    }
}

impl Drop for HostThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
