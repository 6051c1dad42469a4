//! GatewayWorker's register protocol (reference §9.3) on `[register] gatewayworker_listen`:
//! newline-JSON from PHP Gateways (`gateway_connect`), BusinessWorkers and GatewayClient
//! (`worker_connect`), answered with `broadcast_addresses`.
//!
//! It keeps no table of its own: a PHP Gateway is listed in the register's
//! [`Directory`] for as long as its connection lives, and a PHP worker gets the
//! GatewayWorker-compatible ports of every listed gateway, wasmgate's and PHP's, again after
//! every change of that list.
//!
//! What differs from GatewayWorker's register, on purpose:
//! - only `gateway_connect` or `worker_connect` with the right key ends the auth timeout; a
//!   `ping` does not, so an unauthenticated connection cannot stay open by pinging;
//! - the key is compared in constant time, and an address that is not `IPv4:port` is refused
//!   (`no_address`) instead of being listed;
//! - a line longer than `gatewayworker_max_line` closes the connection.

use std::net::{SocketAddr, SocketAddrV4};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::sleep;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::RegisterConfig;
use crate::metrics;
use crate::register::{Directory, DirectoryEntry, ListWatch, Listing, next_list, serve_each};

/// The line GatewayWorker's register sends before closing a connection that sent no event.
const BAD_REQUEST: &str = "Bad request for Register service";

/// Why a connection was closed; each is counted in `gatewayworker_refused{listener="register"}`.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Nothing authenticated it within `gatewayworker_auth_timeout`.
    #[error("Register auth timeout after {0:?}")]
    AuthTimeout(Duration),
    /// `gateway_connect` or `worker_connect` with another `secret_key`.
    #[error("key does not match")]
    WrongSecret,
    /// `gateway_connect` without an `IPv4:port` address.
    #[error("gateway_connect without an IPv4:port address")]
    NoAddress,
    /// A line that is not a JSON object with an `event`.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An event the protocol does not have.
    #[error("unknown event `{0}`")]
    UnknownEvent(String),
    /// A line longer than `gatewayworker_max_line`.
    #[error("a line longer than {0} bytes")]
    LineTooLong(usize),
    /// Reading or writing the socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Refusal {
    /// Its `reason` label, or none for an I/O failure (not a refusal).
    fn reason(&self) -> Option<&'static str> {
        Some(match self {
            Refusal::AuthTimeout(_) => "auth_timeout",
            Refusal::WrongSecret => "wrong_secret",
            Refusal::NoAddress => "no_address",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::UnknownEvent(_) => "unknown_event",
            Refusal::LineTooLong(_) => "line_too_long",
            Refusal::Io(_) => return None,
        })
    }
}

/// What one connection is to the register once authenticated; it may be both.
#[derive(Default)]
struct Member {
    /// A PHP Gateway's listing, withdrawn when the connection ends.
    gateway: Option<DirectoryEntry>,
    /// A worker's view of the directory's GatewayWorker-compatible ports.
    worker: Option<ListWatch>,
}

/// `{"event":"broadcast_addresses","addresses":[…]}`, in GatewayWorker's key order.
#[derive(Serialize)]
struct Broadcast<'a> {
    event: &'static str,
    addresses: &'a [String],
}

/// Serves GatewayWorker's register protocol on `listener` over `directory` until `shutdown`
/// is cancelled. One task per connection; one peer's failure ends its connection only.
pub async fn run(
    listener: TcpListener,
    directory: Directory,
    secret: Arc<[u8]>,
    config: RegisterConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let max_line = usize::try_from(config.gatewayworker_max_line.as_u64()).unwrap_or(usize::MAX);
    serve_each(
        listener,
        "gatewayworker register",
        &shutdown,
        |stream, peer| {
            let connection = Connection {
                directory: directory.clone(),
                secret: secret.clone(),
                auth_timeout: config.gatewayworker_auth_timeout,
                max_line,
                peer,
            };
            let shutdown = shutdown.clone();
            async move {
                match connection.serve(stream, &shutdown).await {
                    Ok(()) => debug!(%peer, "gatewayworker register connection closed"),
                    Err(refusal) => {
                        if let Some(reason) = refusal.reason() {
                            metrics::gatewayworker_refused("register", reason);
                        }
                        match refusal {
                            Refusal::AuthTimeout(_) => {
                                info!(%peer, "gatewayworker register: {refusal}");
                            }
                            _ => warn!(%peer, "gatewayworker register: {refusal}; closed"),
                        }
                    }
                }
            }
        },
    )
    .await;
    Ok(())
}

/// One connection and what it needs.
struct Connection {
    directory: Directory,
    secret: Arc<[u8]>,
    auth_timeout: Duration,
    max_line: usize,
    peer: SocketAddr,
}

impl Connection {
    async fn serve(self, stream: TcpStream, shutdown: &CancellationToken) -> Result<(), Refusal> {
        let (read, mut write) = stream.into_split();
        let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(self.max_line));
        let mut member = Member::default();
        let mut auth = pin!(sleep(self.auth_timeout));
        loop {
            let authenticated = member.gateway.is_some() || member.worker.is_some();
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = &mut auth, if !authenticated => {
                    return Err(Refusal::AuthTimeout(self.auth_timeout));
                }
                addresses = next_list(&mut member.worker) => {
                    let addresses: Vec<String> =
                        addresses.iter().map(ToString::to_string).collect();
                    let line = serde_json::to_string(&Broadcast {
                        event: "broadcast_addresses",
                        addresses: &addresses,
                    })
                    .expect("strings serialize");
                    write_line(&mut write, &line, shutdown).await?;
                }
                line = lines.next() => {
                    let line = match line {
                        None => return Ok(()),
                        Some(Ok(line)) => line,
                        Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                            return Err(Refusal::LineTooLong(self.max_line));
                        }
                        Some(Err(LinesCodecError::Io(error))) => return Err(error.into()),
                    };
                    if let Err(refusal) = self.handle(&line, &mut member) {
                        if let Refusal::BadRequest(_) = refusal {
                            write_line(&mut write, BAD_REQUEST, shutdown).await?;
                        }
                        return Err(refusal);
                    }
                }
            }
        }
    }

    /// Applies one message to `member`.
    fn handle(&self, line: &str, member: &mut Member) -> Result<(), Refusal> {
        let message: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        // PHP's `empty()`: a missing, null, false, 0, "" or "0" event is no event.
        let event = match message.get("event") {
            Some(serde_json::Value::String(event)) if !event.is_empty() && event != "0" => event,
            _ => return Err(Refusal::BadRequest("no event".into())),
        };
        match event.as_str() {
            "ping" => Ok(()),
            "gateway_connect" => {
                let address = message
                    .get("address")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|a| a.parse::<SocketAddrV4>().ok())
                    .ok_or(Refusal::NoAddress)?;
                self.check_secret(&message)?;
                let listing = Listing {
                    internal: None,
                    gatewayworker: Some(address),
                };
                if member.gateway.as_ref().map(DirectoryEntry::listing) != Some(listing) {
                    info!(peer = %self.peer, %address, "PHP gateway registered");
                    member.gateway = Some(self.directory.add(listing));
                }
                Ok(())
            }
            "worker_connect" => {
                self.check_secret(&message)?;
                if member.worker.is_none() {
                    debug!(peer = %self.peer, "PHP worker registered for the gateway list");
                    member.worker = Some(
                        self.directory
                            .watch(|listing| listing.gatewayworker.map(SocketAddr::V4)),
                    );
                }
                Ok(())
            }
            other => Err(Refusal::UnknownEvent(other.to_owned())),
        }
    }

    /// GatewayWorker's check: `secret_key` equal to the key, a missing one read as `""`.
    fn check_secret(&self, message: &serde_json::Value) -> Result<(), Refusal> {
        let given = match message.get("secret_key") {
            None => "",
            Some(serde_json::Value::String(key)) => key,
            Some(_) => return Err(Refusal::WrongSecret),
        };
        if bool::from(given.as_bytes().ct_eq(&self.secret)) {
            Ok(())
        } else {
            Err(Refusal::WrongSecret)
        }
    }
}

/// Writes `line` and its `\n`, unless `shutdown` comes first (a peer that does not read
/// holds up only its own connection).
async fn write_line(
    write: &mut OwnedWriteHalf,
    line: &str,
    shutdown: &CancellationToken,
) -> Result<(), Refusal> {
    let bytes = format!("{line}\n");
    tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        written = write.write_all(bytes.as_bytes()) => Ok(written?),
    }
}
