//! A server run the way an operator runs one: `wasmgate start -d` in a directory holding its
//! `wasmgate.toml`, then driven from there with the other commands, no pid needed.
//!
//! `start -d` returns once the server's listeners are bound, so tests need no retry loop to
//! wait for it. Dropping a [`Daemon`] stops the server (and kills it if that fails), so a
//! failed test never leaves one running.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

/// Longest one command may take: `start -d` compiles the plugins when their cache is cold.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A detached server and the directory it was started from.
pub struct Daemon {
    binary: &'static str,
    dir: tempfile::TempDir,
    /// The `--role` it was started with, if any: `stop` needs it too.
    role: Option<&'static str>,
    /// The server's process id, from its pid file.
    pub pid: u32,
}

impl Daemon {
    /// Writes `config` to `wasmgate.toml` in a new directory, copies `plugins` (app name,
    /// built `.wasm`) into its `plugins/`, and runs `start -d` there with `binary` (the
    /// test's `CARGO_BIN_EXE_wasmgate-node`). Returns the daemon and what `start` printed.
    pub async fn start(
        binary: &'static str,
        config: &str,
        plugins: &[(&str, &str)],
    ) -> (Self, Output) {
        Self::start_role(binary, config, plugins, None).await
    }

    /// As [`Daemon::start`], with only `role` of the configuration (`start -d --role ROLE`),
    /// so that other roles of the same file can be started beside it with [`Daemon::run`].
    pub async fn start_role(
        binary: &'static str,
        config: &str,
        plugins: &[(&str, &str)],
        role: Option<&'static str>,
    ) -> (Self, Output) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wasmgate.toml"), config).unwrap();
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir(&plugin_dir).unwrap();
        for (app, path) in plugins {
            std::fs::copy(path, plugin_dir.join(format!("{app}.wasm"))).unwrap();
        }
        let mut args = vec!["start", "-d"];
        args.extend(role.iter().flat_map(|role| ["--role", role]));
        let started = wasmgate(binary, dir.path(), &args).await;
        let mut daemon = Self {
            binary,
            dir,
            role,
            pid: 0,
        };
        daemon.pid = daemon.read_pid(&started);
        (daemon, started)
    }

    /// Stops the server and starts it again from the same directory (`restart -d`), as an
    /// operator would: a new process with the same configuration, plugins and `data`.
    /// Returns what `restart` printed; [`Daemon::pid`] is the new process's.
    pub async fn restart(&mut self) -> Output {
        let restarted = self.run(&self.with_role(&["restart", "-d"])).await;
        self.pid = self.read_pid(&restarted);
        restarted
    }

    /// Stops the server (`stop`), leaving its directory for [`Daemon::start_again`].
    pub async fn stop(&mut self) -> Output {
        self.run(&self.with_role(&["stop"])).await
    }

    /// Starts the stopped server again from its directory (`start -d`): the same ports,
    /// plugins and `data`. [`Daemon::pid`] is then the new process's.
    pub async fn start_again(&mut self) -> Output {
        let started = self.run(&self.with_role(&["start", "-d"])).await;
        self.pid = self.read_pid(&started);
        started
    }

    /// `args`, then the `--role` the daemon was started with, if any.
    fn with_role(&self, args: &[&'static str]) -> Vec<&'static str> {
        let role = self.role.iter().flat_map(|role| ["--role", *role]);
        args.iter().copied().chain(role).collect()
    }

    /// The pid in the server's pid file, which `printed` (what the command that started it
    /// printed) explains when it is missing.
    fn read_pid(&self, printed: &Output) -> u32 {
        let pid_file = match self.role {
            Some(role) => format!("wasmgate-{role}.pid"),
            None => "wasmgate.pid".to_owned(),
        };
        let pid = std::fs::read_to_string(self.dir.path().join(pid_file))
            .unwrap_or_else(|e| panic!("no pid file ({e}); the command printed {printed:?}"));
        pid.trim().parse().unwrap()
    }

    /// Runs `wasmgate ARGS` in the daemon's directory.
    pub async fn run(&self, args: &[&str]) -> Output {
        wasmgate(self.binary, self.dir.path(), args).await
    }

    /// The directory the daemon was started from.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !alive(self.pid) {
            return;
        }
        let stopped = std::process::Command::new(self.binary)
            .arg("stop")
            .args(self.role.iter().flat_map(|role| ["--role", role]))
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .status();
        if alive(self.pid) {
            eprintln!(
                "`wasmgate stop` left {} running ({stopped:?}): killing it",
                self.pid
            );
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

/// Runs `binary ARGS` in `dir`, bounded by [`COMMAND_TIMEOUT`].
pub async fn wasmgate(binary: &str, dir: &Path, args: &[&str]) -> Output {
    let child = Command::new(binary)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running wasmgate");
    tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`wasmgate {}` did not finish", args.join(" ")))
        .unwrap()
}

/// Sends process `pid` `signal` (a `kill` name: `STOP`, `CONT`, `HUP`, …). After `STOP`,
/// returns once every thread of the process is stopped: `kill` returns when the signal is
/// sent, and on a busy machine a thread may still run a while before it stops.
pub async fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid} failed");
    if signal == "STOP" {
        let stopped = async {
            // No event says a process stopped to anyone but its parent's wait: look.
            while !stopped(pid) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), stopped)
            .await
            .unwrap_or_else(|_| panic!("process {pid} did not stop after SIGSTOP"));
    }
}

/// Whether every thread of process `pid` is stopped.
fn stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
        })
    })
}

/// Whether process `pid` runs: it exists and is not a zombie (a daemon's parent has exited,
/// so whoever adopted it may not have reaped it yet).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
