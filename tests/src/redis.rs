//! A real Redis server for the key-value tests: Debian's `redis-server` (installed through
//! [`crate::tools::redis_server`]), started on a free loopback port in a temporary directory
//! with persistence off, killed when dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::cluster::free_port;
use crate::tools::Skip;

/// A running `redis-server`.
pub struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits (bounded) until it answers `PING`.
    pub async fn start(binary: PathBuf) -> Result<Self, Skip> {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting redis-server");
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..400 {
            if server.ping().await {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server on port {port} never answered PING");
    }

    /// The URL a grant names: `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether the server answers `PING` now.
    pub async fn ping(&self) -> bool {
        let Ok(Ok(mut stream)) = tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect(("127.0.0.1", self.port)),
        )
        .await
        else {
            return false;
        };
        let mut reply = [0u8; 7];
        let exchange = async {
            stream.write_all(b"PING\r\n").await?;
            stream.read_exact(&mut reply).await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), exchange).await,
            Ok(Ok(_))
        ) && &reply == b"+PONG\r\n"
    }

    /// Sends the server `signal` (a `kill` name): `STOP` freezes it (connections stay open,
    /// nothing answers), `CONT` thaws it.
    pub async fn signal(&self, signal: &str) {
        crate::daemon::signal(self.child.id().expect("running"), signal).await;
    }

    /// Kills the server (SIGKILL) and waits for it: the store is down from now on.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}
