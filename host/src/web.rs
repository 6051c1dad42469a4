//! A static-file HTTP server (`[web]`): serves one directory, e.g. the chat demo's page
//! (`examples/chat/web`), beside the gateways its scripts connect to, so a demo or a small
//! front end needs no other web server.
//!
//! It serves files only: `/` and every directory answer with their `index.html`, paths that
//! climb out of the root (`..`) are refused, and nothing is ever written. A large deployment
//! puts its pages behind its own web server and leaves `[web]` out.
//!
//! Besides the root, it serves the browser client library (`clients/js`, carried in the
//! binary) at [`CLIENT_PATH`], so that any page it serves can import it without a build step
//! or a copy that falls behind the server's version.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;

use crate::config::{HttpConfig, WebConfig};
use crate::http_listener;

/// Where pages find the browser client library (`clients/js/wasmgate-client.js`).
pub const CLIENT_PATH: &str = "/_wasmgate/client.js";

/// The browser client library, as served at [`CLIENT_PATH`].
const CLIENT_JS: &str = include_str!("../../clients/js/wasmgate-client.js");

/// The web server, bound and checked but not yet serving.
pub struct BoundWeb {
    listener: TcpListener,
    root: PathBuf,
}

impl BoundWeb {
    /// Checks that the root is a directory and binds the listener, so that a wrong path or a
    /// taken port fails the start rather than the first request.
    pub async fn bind(config: &WebConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.root.is_dir(),
            "web: root {} is not a directory",
            config.root.display()
        );
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("web: cannot listen on {}", config.listen))?;
        Ok(Self {
            listener,
            root: config.root.clone(),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves the root until `shutdown`, within `limits`.
    pub async fn run(self, limits: HttpConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            root = %self.root.display(),
            "web pages at http://{}/",
            self.listener.local_addr()?
        );
        let client = || async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/javascript; charset=utf-8",
                )],
                CLIENT_JS,
            )
        };
        let app = axum::Router::new()
            .route(CLIENT_PATH, axum::routing::get(client))
            .fallback_service(ServeDir::new(self.root));
        http_listener::serve("web", self.listener, app, &limits, shutdown).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::Config;
    use crate::process::{Role, select_roles};

    /// The status line and body of `GET path`.
    async fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn serves_files_under_the_root_and_nothing_else() {
        // This crate's own sources make a root with known files and a known parent.
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
        let config = WebConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            root,
        };
        let web = BoundWeb::bind(&config).await.unwrap();
        let addr = web.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(web.run(HttpConfig::default(), shutdown.clone()));

        let (status, body) = get(addr, "/web.rs").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.starts_with("//! A static-file HTTP server"), "{body}");
        let (status, _) = get(addr, "/nope.html").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, body) = get(addr, "/../Cargo.toml").await;
        assert_ne!(status, "HTTP/1.1 200 OK", "{body}");
        let (status, _) = get(addr, "/%2e%2e/Cargo.toml").await;
        assert_ne!(status, "HTTP/1.1 200 OK");
        let (status, body) = get(addr, CLIENT_PATH).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("export class WasmgateClient"), "{body}");

        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn the_section_defaults_to_port_7270_and_runs_with_the_gateways() {
        let parse = |text| Config::from_toml(text, std::path::Path::new("wasmgate.toml"));
        let mut config = parse("[web]\nroot = \"pages\"\n").unwrap();
        let web = config.web.as_ref().unwrap();
        assert_eq!(web.listen, "127.0.0.1:7270".parse().unwrap());
        assert_eq!(web.root, PathBuf::from("pages"));
        select_roles(&mut config, &[Role::Gateway]);
        assert!(config.web.is_some());
        select_roles(&mut config, &[Role::Register, Role::Worker]);
        assert!(config.web.is_none());
        assert!(parse("[web]\nroot = \"p\"\nport = 1\n").is_err());
    }

    #[tokio::test]
    async fn a_root_that_is_not_a_directory_fails_the_start() {
        let config = WebConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            root: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"),
        };
        let error = BoundWeb::bind(&config).await.err().unwrap();
        assert!(error.to_string().contains("not a directory"), "{error}");
    }
}
