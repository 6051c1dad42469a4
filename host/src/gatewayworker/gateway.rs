//! A gateway's internal port speaking GatewayWorker's protocol (`gatewayworker = true`): the
//! port hands over each connection that opens with a GatewayProtocol packet, so PHP code
//! dials the address inside a client id. GatewayClient's connections (`CMD_GATEWAY_CLIENT_CONNECT`) and the commands it sends,
//! each turned into the [`Command`] of the table of operations and executed by the gateway's
//! own state, as an internal link's command is. A command about a connection names it by its
//! `connection_id` on this gateway.
//!
//! Sessions cross as [`super::session`] converts them. Queries answered so far:
//! `CMD_IS_ONLINE` and `CMD_GET_SESSION_BY_CLIENT_ID`.
//!
//! Not yet: `CMD_WORKER_CONNECT` (PHP BusinessWorkers) and the other queries; an unknown or
//! unsupported code is logged and ignored, as GatewayWorker does. The raw flag
//! (`FLAG_NOT_CALL_ENCODE`) is not honoured: the body goes through the client's protocol like
//! any message. `CMD_UPDATE_SESSION` merges recursively as PHP does: the keys it names are
//! computed from the stored session, then applied as one key-by-key update, so a plugin's
//! write to another key in between is kept (one to the same key, in between, is overwritten).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::codec::{Framed, FramedParts};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::packet::{FLAG_BODY_IS_SCALAR, Packet, PacketCodec, PacketError, cmd, reply};
use super::php_serial::{self, Limits, Value};
use super::session;
use crate::client_id::ClientId;
use crate::gateway::Gateway;
use crate::gateway::internal::Foreign;
use crate::metrics;
use crate::ops::{Command, Query, Reply, Session};

/// Why a connection to the port was closed.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The first packet was not `CMD_GATEWAY_CLIENT_CONNECT` with the right key.
    #[error("not authorised: {0}")]
    NotAuthorised(&'static str),
    /// Nothing arrived within the gateway's `handshake_timeout`.
    #[error("no authorisation within {0:?}")]
    AuthTimeout(Duration),
    /// A packet that is not GatewayProtocol, or a socket failure.
    #[error(transparent)]
    Packet(#[from] PacketError),
}

impl PortError {
    /// Its `reason` label, or none for a socket failure (not a refusal).
    fn reason(&self) -> Option<&'static str> {
        Some(match self {
            PortError::NotAuthorised(_) => "not_authorised",
            PortError::AuthTimeout(_) => "auth_timeout",
            PortError::Packet(PacketError::Io(_)) => return None,
            PortError::Packet(_) => "bad_packet",
        })
    }
}

/// What a port needs besides its listener and gateway.
pub struct PortSettings {
    /// The cluster's secret, GatewayWorker's `secretKey`.
    pub secret: Arc<[u8]>,
    /// How long a connection has to authorise (the gateway's `handshake_timeout`).
    pub auth_timeout: Duration,
    /// The largest packet read (`gatewayworker_max_packet`).
    pub max_packet: usize,
}

/// Serves the GatewayProtocol connections the gateway's internal port hands over
/// (`foreign`) until `shutdown`.
pub async fn run(
    mut foreign: mpsc::Receiver<Foreign>,
    gateway: Arc<Gateway>,
    settings: PortSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let tasks = TaskTracker::new();
    loop {
        let handed = tokio::select! {
            () = shutdown.cancelled() => break,
            handed = foreign.recv() => match handed {
                Some(handed) => handed,
                None => break,
            },
        };
        let (gateway, settings, shutdown) = (gateway.clone(), settings.clone(), shutdown.clone());
        tasks.spawn(async move {
            let peer = handed.peer;
            let served = tokio::select! {
                () = shutdown.cancelled() => Ok(()),
                served = serve(handed, &gateway, &settings) => served,
            };
            match served {
                Ok(()) => debug!(%peer, "gatewayworker port: connection closed"),
                Err(error) => {
                    if let Some(reason) = error.reason() {
                        metrics::gatewayworker_refused("gateway", reason);
                    }
                    warn!(%peer, "gatewayworker port: {error}; closed");
                }
            }
        });
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn serve(
    handed: Foreign,
    gateway: &Gateway,
    settings: &PortSettings,
) -> Result<(), PortError> {
    let codec = PacketCodec {
        max_packet: settings.max_packet,
    };
    let auth_timeout = settings.auth_timeout;
    let mut parts = FramedParts::new::<&Packet>(handed.stream, codec);
    parts.read_buf.extend_from_slice(&handed.opening);
    let mut packets = Framed::from_parts(parts);
    let first = timeout(auth_timeout, packets.next())
        .await
        .map_err(|_| PortError::AuthTimeout(auth_timeout))?;
    let Some(first) = first.transpose()? else {
        return Ok(());
    };
    authorise(&first, &settings.secret)?;
    while let Some(packet) = packets.next().await.transpose()? {
        // Replies are not packets: they go to the socket beside the codec, which never
        // writes (nothing is sent to a GatewayClient but replies).
        if let Some(answer) = execute(gateway, packet) {
            packets
                .get_mut()
                .write_all(&answer)
                .await
                .map_err(PacketError::Io)?;
        }
    }
    Ok(())
}

/// GatewayWorker's check: the first packet is 202 with `{"secret_key": …}` equal to the key.
fn authorise(packet: &Packet, secret: &[u8]) -> Result<(), PortError> {
    if packet.cmd != cmd::GATEWAY_CLIENT_CONNECT {
        return Err(PortError::NotAuthorised("the first packet is not 202"));
    }
    let body: serde_json::Value = serde_json::from_slice(&packet.body)
        .map_err(|_| PortError::NotAuthorised("its body is not JSON"))?;
    let given = body
        .get("secret_key")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(secret)) {
        Ok(())
    } else {
        Err(PortError::NotAuthorised("key does not match"))
    }
}

/// Runs one packet on `gateway`; a query's length-prefixed reply.
fn execute(gateway: &Gateway, packet: Packet) -> Option<Bytes> {
    let client = ClientId::new(gateway.state.address(), packet.connection_id);
    let text = |bytes: &Bytes| String::from_utf8_lossy(bytes).into_owned();
    let command = match packet.cmd {
        cmd::SEND_TO_ONE => Command::SendToClients {
            clients: vec![client],
            data: payload(&packet)?,
        },
        cmd::SEND_TO_ALL => {
            let data = payload(&packet)?;
            let options: serde_json::Value =
                serde_json::from_slice(&packet.ext_data).unwrap_or_default();
            match options.get("connections") {
                Some(targets) => Command::SendToClients {
                    clients: connections(gateway, targets),
                    data,
                },
                None => Command::SendToAll {
                    data,
                    exclude: options
                        .get("exclude")
                        .map(|e| connections(gateway, e))
                        .unwrap_or_default(),
                },
            }
        }
        cmd::KICK => Command::CloseClient {
            client,
            farewell: payload(&packet).filter(|farewell| !farewell.is_empty()),
        },
        cmd::DESTROY => Command::DestroyClient { client },
        cmd::BIND_UID => Command::BindUid {
            client,
            uid: text(&packet.ext_data),
        },
        cmd::UNBIND_UID => Command::UnbindUid {
            client,
            uid: text(&packet.ext_data),
        },
        cmd::JOIN_GROUP => Command::JoinGroup {
            client,
            group: text(&packet.ext_data),
        },
        cmd::LEAVE_GROUP => Command::LeaveGroup {
            client,
            group: text(&packet.ext_data),
        },
        cmd::UNGROUP => Command::Ungroup {
            group: text(&packet.ext_data),
        },
        cmd::SEND_TO_UID => Command::SendToUid {
            uids: names(&serde_json::from_slice(&packet.ext_data).unwrap_or_default()),
            data: payload(&packet)?,
        },
        cmd::SEND_TO_GROUP => {
            let options: serde_json::Value =
                serde_json::from_slice(&packet.ext_data).unwrap_or_default();
            Command::SendToGroup {
                groups: names(&options["group"]),
                data: payload(&packet)?,
                exclude: connections(gateway, &options["exclude"]),
            }
        }
        cmd::SET_SESSION | cmd::UPDATE_SESSION => {
            let converted = if packet.cmd == cmd::SET_SESSION {
                session::from_php(&packet.ext_data, Limits::DEFAULT)
                    .map(|session| Command::SetSession { client, session })
            } else {
                let stored = match gateway.state.answer(&Query::SessionOf(client)) {
                    Reply::Session(Some(stored)) => stored,
                    _ => Session::new(),
                };
                session::merge_update(&stored, &packet.ext_data, Limits::DEFAULT)
                    .map(|changes| Command::UpdateSession { client, changes })
            };
            match converted {
                Ok(command) => command,
                Err(error) => {
                    debug!(%error, "gatewayworker port: a session that is not PHP's, ignored");
                    return None;
                }
            }
        }
        cmd::GET_SESSION_BY_CLIENT_ID => {
            let serialized = match gateway.state.answer(&Query::SessionOf(client)) {
                Reply::Session(Some(session)) => session::to_php(&session),
                _ => php_serial::encode(&Value::Null),
            };
            return reply(&serialized).ok();
        }
        cmd::IS_ONLINE => {
            let online = matches!(
                gateway.state.answer(&Query::IsOnline(client)),
                Reply::Online(true)
            );
            return reply(&php_serial::encode(&Value::Int(online.into()))).ok();
        }
        other => {
            debug!(
                cmd = other,
                "gatewayworker port: command not supported, ignored"
            );
            return None;
        }
    };
    gateway.state.execute(command);
    None
}

/// What to send to a client: a scalar body as it is, a serialized string as its bytes, any
/// other serialized value as its serialization; nothing for `null`.
fn payload(packet: &Packet) -> Option<Bytes> {
    if packet.flag & FLAG_BODY_IS_SCALAR != 0 {
        return Some(packet.body.clone());
    }
    match php_serial::decode(&packet.body, Limits::DEFAULT) {
        Ok(Value::Null) => None,
        Ok(Value::Str(bytes)) => Some(bytes.into()),
        _ => Some(packet.body.clone()),
    }
}

/// The clients of this gateway a JSON `{id: id}` map or `[id, …]` list names.
fn connections(gateway: &Gateway, ids: &serde_json::Value) -> Vec<ClientId> {
    let address = gateway.state.address();
    let id = |v: &serde_json::Value| match v {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    };
    let ids: Vec<u32> = match ids {
        serde_json::Value::Object(map) => map.keys().filter_map(|k| k.parse().ok()).collect(),
        serde_json::Value::Array(list) => list.iter().filter_map(id).collect(),
        _ => Vec::new(),
    };
    ids.into_iter()
        .map(|index| ClientId::new(address, index))
        .collect()
}

/// Uids or groups from a JSON list (PHP ints become their decimal strings).
fn names(list: &serde_json::Value) -> Vec<String> {
    let Some(list) = list.as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .collect()
}
