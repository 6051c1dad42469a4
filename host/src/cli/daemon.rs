//! Detaching a server (`start -d`) and waiting for a process to end (`stop`).
//!
//! A process that runs a tokio runtime must not `fork`, so `start -d` does not daemonise
//! itself: it starts the same executable again without `-d`, in a session of its own (a
//! closing terminal's hangup never reaches it), with stdin closed and stdout and stderr
//! appended to the log file. It then waits until the child says `READY=1` over systemd's
//! notify protocol ([`crate::process::notify`]) on a socket only it knows, or dies — then the
//! end of its log says why. Waiting is `poll` on that socket and on the child's pidfd: no
//! sleeping, no pid file races.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags};

/// How much of the log's end a failed start shows.
const LOG_TAIL: u64 = 4096;

/// Starts this executable with `args` as a detached server logging to `log`, and returns its
/// pid once it is ready (within `timeout`).
pub fn spawn_detached(args: &[OsString], log: &Path, timeout: Duration) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let output = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the log file {}", log.display()))?;
    let start = output.metadata()?.len();
    // An abstract socket: no file to clean up, and the name is unique to this start.
    let name = format!(
        "wasmgate-ready-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    );
    let ready = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name)?)
        .context("creating the readiness socket")?;
    let mut command = Command::new(exe);
    command
        .args(args)
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output);
    // SAFETY: the closure runs in the child between fork and exec; `setsid` is one
    // async-signal-safe system call and touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
    }
    let mut child = command.spawn().context("starting the server process")?;
    let pid = child.id();
    let exited = pidfd(pid)?.context("the server process vanished at once")?;
    match wait_readable(&[ready.as_fd(), exited.as_fd()], timeout)? {
        Some(0) => {
            let mut message = [0; 256];
            let n = ready.recv(&mut message)?;
            let message = String::from_utf8_lossy(&message[..n]);
            anyhow::ensure!(
                message.lines().any(|l| l == "READY=1"),
                "the server sent `{message}` instead of READY=1"
            );
            Ok(pid)
        }
        Some(_) => {
            let status = child.wait()?;
            anyhow::bail!(
                "the server exited ({status}) before it was ready; {} says:\n{}",
                log.display(),
                tail(log, start)
            )
        }
        None => anyhow::bail!(
            "the server (pid {pid}) did not report ready within {timeout:?}; see {}",
            log.display()
        ),
    }
}

/// Waits until process `pid` has ended, at most `timeout`; whether it did.
pub fn wait_for_exit(pid: u32, timeout: Duration) -> anyhow::Result<bool> {
    match pidfd(pid)? {
        Some(fd) => Ok(wait_readable(&[fd.as_fd()], timeout)?.is_some()),
        None => Ok(true),
    }
}

/// A pidfd for `pid` (it becomes readable when the process ends), or none if there is no
/// such process.
fn pidfd(pid: u32) -> anyhow::Result<Option<std::os::fd::OwnedFd>> {
    let raw = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .with_context(|| format!("{pid} is not a process id"))?;
    match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::SRCH) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot watch process {pid}")),
    }
}

/// Waits at most `timeout` for one of `fds` to become readable; which one, if any did.
fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> std::io::Result<Option<usize>> {
    let deadline = Instant::now() + timeout;
    let mut polls: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    loop {
        let left = Timespec::try_from(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| std::io::Error::other("timeout out of range"))?;
        match rustix::event::poll(&mut polls, Some(&left)) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(polls.iter().position(|p| !p.revents().is_empty())),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// What `log` gained after byte `start`, at most its last [`LOG_TAIL`] bytes.
fn tail(log: &Path, start: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(log)?;
        let end = file.metadata()?.len();
        file.seek(SeekFrom::Start(start.max(end.saturating_sub(LOG_TAIL))))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|e| format!("(cannot read it: {e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_a_process_to_end_and_not_longer() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(!wait_for_exit(pid, Duration::from_millis(50)).unwrap());
        child.kill().unwrap();
        assert!(wait_for_exit(pid, Duration::from_secs(10)).unwrap());
        child.wait().unwrap();
        assert!(wait_for_exit(pid, Duration::ZERO).unwrap(), "reaped: gone");
    }
}
