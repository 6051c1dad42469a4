//! A real PostgreSQL server for a test: a fresh cluster (`initdb`) in a temporary directory,
//! served on a free loopback port by `pg_ctl`, stopped (and removed) on drop. PostgreSQL
//! refuses to run as root, so as root the server runs as `nobody` (through `runuser`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::free_port;
use crate::tools::{self, Skip};

/// A running PostgreSQL server with trust authentication for the `postgres` user.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    root: bool,
}

impl Postgres {
    /// Installs PostgreSQL if needed (or skips), creates a cluster and starts it.
    pub fn start() -> Result<Self, Skip> {
        let bin = tools::postgres()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let root = tools::is_root();
        if root {
            let chown = Command::new("chown")
                .args(["nobody:nogroup"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(chown.success(), "chown of the PostgreSQL directory failed");
        }
        let server = Self {
            bin,
            dir,
            port: free_port(),
            root,
        };
        let data = server.data();
        let initdb = server
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("running initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        server.pg_ctl_start();
        Ok(server)
    }

    /// The URL the worker host connects with.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `sql` with `psql` as the `postgres` user; returns what it printed, unaligned and
    /// without headers (`1|a` per row), trimmed.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(self.url())
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server (fast: running queries are cut); the database is "down" from then on.
    pub fn stop(&self) {
        let stopped = self
            .command("pg_ctl")
            .args(["-m", "fast", "-w", "-D"])
            .arg(self.data())
            .arg("stop")
            .output()
            .expect("running pg_ctl stop");
        assert!(stopped.status.success(), "pg_ctl stop failed");
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let started = self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &options, "start"])
            .output()
            .expect("running pg_ctl start");
        assert!(
            started.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `program` from PostgreSQL's bin directory, as `nobody` when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.root {
            let mut command = Command::new("runuser");
            command.args(["-u", "nobody", "--"]).arg(path);
            command.current_dir(Path::new("/"));
            command
        } else {
            Command::new(path)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .output();
    }
}
