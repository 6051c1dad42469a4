//! A gateway's internal port speaking GatewayWorker's protocol (`gatewayworker = true`): the
//! port hands over each connection that opens with a GatewayProtocol packet, so PHP code
//! dials the address inside a client id. GatewayClient's connections
//! (`CMD_GATEWAY_CLIENT_CONNECT`) and the commands they send are each turned into the
//! [`Command`] of the table of operations and executed by the gateway's own state, as an
//! internal link's command is; every query of §9.2 is answered from the gateway's own
//! [`Query`]s, in GatewayWorker's reply format. A command about a connection names it by its
//! `connection_id` on this gateway.
//!
//! Sessions cross as [`super::session`] converts them. A send with the raw flag
//! (`FLAG_NOT_CALL_ENCODE`) is read back into the messages it holds ([`super::raw`]).
//! `CMD_UPDATE_SESSION` merges recursively as PHP does: the keys it names are computed from
//! the stored session, then applied as one key-by-key update, so a plugin's write to another
//! key in between is kept (one to the same key, in between, is overwritten).
//!
//! A connection that opens with `CMD_WORKER_CONNECT` is a PHP BusinessWorker's link, served
//! by [`super::business`]: client events go to it and its packets run as these commands do.
//! A session that does not convert (not a PHP array, or a key that is not UTF-8) is refused
//! whole, logged and counted, the connection kept; an unknown code is logged and ignored, as
//! GatewayWorker does.

use std::net::SocketAddrV4;
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

use super::packet::{
    FLAG_BODY_IS_SCALAR, FLAG_NOT_CALL_ENCODE, Packet, PacketCodec, PacketError, cmd, reply,
};
use super::php_serial::{self, Key, Limits, Value};
use super::{business, raw, session};
use crate::client_id::ClientId;
use crate::config::Protocol;
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
    /// A BusinessWorker read nothing for this long.
    #[error("the worker read nothing for {0:?}")]
    Stalled(Duration),
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
            PortError::Stalled(_) => "stalled",
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
    /// The gateway's client protocol, which raw sends are framed in.
    pub protocol: Protocol,
    /// How BusinessWorkers' links are served.
    pub link: business::LinkSettings,
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
    if let PortPeer::Worker { name } = authorise(&first, &settings.secret)? {
        let protocol = settings.protocol;
        let run = |packet| execute(gateway, protocol, packet);
        return business::serve(packets, gateway, &settings.link, &name, run)
            .await
            .map_err(|end| match end {
                business::LinkEnd::Stalled(waited) => PortError::Stalled(waited),
                business::LinkEnd::Packet(error) => PortError::Packet(error),
            });
    }
    while let Some(packet) = packets.next().await.transpose()? {
        // Replies are not packets: they go to the socket beside the codec, which never
        // writes (nothing is sent to a GatewayClient but replies).
        if let Some(answer) = execute(gateway, settings.protocol, packet) {
            packets
                .get_mut()
                .write_all(&answer)
                .await
                .map_err(PacketError::Io)?;
        }
    }
    Ok(())
}

/// Who authorised a connection.
enum PortPeer {
    /// GatewayClient (or a BusinessWorker's query socket): commands and queries.
    Client,
    /// A BusinessWorker: client events too, for the listeners of app `php:<name>`.
    Worker {
        /// Its `name`, the first part of its `worker_key`.
        name: String,
    },
}

/// GatewayWorker's check: the first packet is 202 (GatewayClient) or 200 (a BusinessWorker)
/// with `{"secret_key": …}` equal to the key.
fn authorise(packet: &Packet, secret: &[u8]) -> Result<PortPeer, PortError> {
    if packet.cmd != cmd::GATEWAY_CLIENT_CONNECT && packet.cmd != cmd::WORKER_CONNECT {
        return Err(PortError::NotAuthorised(
            "the first packet is neither 200 nor 202",
        ));
    }
    let body: serde_json::Value = serde_json::from_slice(&packet.body)
        .map_err(|_| PortError::NotAuthorised("its body is not JSON"))?;
    let given = body
        .get("secret_key")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(secret)) {
        return Err(PortError::NotAuthorised("key does not match"));
    }
    if packet.cmd == cmd::GATEWAY_CLIENT_CONNECT {
        return Ok(PortPeer::Client);
    }
    // `name:id`; the name may hold a colon, the id does not.
    let key = body.get("worker_key").and_then(serde_json::Value::as_str);
    let name = key
        .and_then(|key| key.rsplit_once(':'))
        .map(|(name, _)| name);
    match name {
        Some(name) if !name.is_empty() => Ok(PortPeer::Worker {
            name: name.to_owned(),
        }),
        _ => Err(PortError::NotAuthorised("no worker_key \"name:id\"")),
    }
}

/// Runs one packet on `gateway`; a query's length-prefixed reply.
fn execute(gateway: &Gateway, protocol: Protocol, packet: Packet) -> Option<Bytes> {
    if let Some(answer) = answer(gateway, &packet) {
        return reply(&answer).ok();
    }
    let client = ClientId::new(gateway.state.address(), packet.connection_id);
    let text = |bytes: &Bytes| String::from_utf8_lossy(bytes).into_owned();
    // A send's messages: one, or with the raw flag those its body holds.
    let messages = || -> Vec<Bytes> {
        let Some(body) = payload(&packet) else {
            return Vec::new();
        };
        if packet.flag & FLAG_NOT_CALL_ENCODE == 0 {
            return vec![body];
        }
        raw::messages(protocol, &body).unwrap_or_else(|error| {
            metrics::gatewayworker_refused("gateway", "bad_raw");
            warn!(%error, "gatewayworker port: a raw send refused");
            Vec::new()
        })
    };
    let commands: Vec<Command> = match packet.cmd {
        cmd::SEND_TO_ONE => messages()
            .into_iter()
            .map(|data| Command::SendToClients {
                clients: vec![client],
                data,
            })
            .collect(),
        cmd::SEND_TO_ALL => {
            let options: serde_json::Value =
                serde_json::from_slice(&packet.ext_data).unwrap_or_default();
            let targets = options
                .get("connections")
                .map(|t| connections(gateway.state.address(), t));
            let exclude = options
                .get("exclude")
                .map(|e| connections(gateway.state.address(), e))
                .unwrap_or_default();
            messages()
                .into_iter()
                .map(|data| match &targets {
                    Some(clients) => Command::SendToClients {
                        clients: clients.clone(),
                        data,
                    },
                    None => Command::SendToAll {
                        data,
                        exclude: exclude.clone(),
                    },
                })
                .collect()
        }
        cmd::SEND_TO_UID => {
            let uids = names(&serde_json::from_slice(&packet.ext_data).unwrap_or_default());
            messages()
                .into_iter()
                .map(|data| Command::SendToUid {
                    uids: uids.clone(),
                    data,
                })
                .collect()
        }
        cmd::SEND_TO_GROUP => {
            let options: serde_json::Value =
                serde_json::from_slice(&packet.ext_data).unwrap_or_default();
            let groups = names(&options["group"]);
            let exclude = connections(gateway.state.address(), &options["exclude"]);
            messages()
                .into_iter()
                .map(|data| Command::SendToGroup {
                    groups: groups.clone(),
                    data,
                    exclude: exclude.clone(),
                })
                .collect()
        }
        cmd::KICK => vec![Command::CloseClient {
            client,
            farewell: payload(&packet).filter(|farewell| !farewell.is_empty()),
        }],
        cmd::DESTROY => vec![Command::DestroyClient { client }],
        cmd::BIND_UID => vec![Command::BindUid {
            client,
            uid: text(&packet.ext_data),
        }],
        cmd::UNBIND_UID => vec![Command::UnbindUid {
            client,
            uid: text(&packet.ext_data),
        }],
        cmd::JOIN_GROUP => vec![Command::JoinGroup {
            client,
            group: text(&packet.ext_data),
        }],
        cmd::LEAVE_GROUP => vec![Command::LeaveGroup {
            client,
            group: text(&packet.ext_data),
        }],
        cmd::UNGROUP => vec![Command::Ungroup {
            group: text(&packet.ext_data),
        }],
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
                Ok(command) => vec![command],
                Err(error) => {
                    metrics::gatewayworker_refused("gateway", "bad_session");
                    warn!(%error, cmd = packet.cmd, "gatewayworker port: a session refused");
                    return None;
                }
            }
        }
        other => {
            debug!(
                cmd = other,
                "gatewayworker port: command not supported, ignored"
            );
            return None;
        }
    };
    for command in commands {
        gateway.state.execute(command);
    }
    None
}

/// A query's answer in GatewayWorker's format, from the gateway's own queries; `None` when
/// the packet is not a query. Lists of clients come in connection-id order and lists of
/// names in byte order (GatewayWorker's follow its hash tables' insertion order).
fn answer(gateway: &Gateway, packet: &Packet) -> Option<Vec<u8>> {
    let ask = |query: Query| gateway.state.answer(&query);
    let client = ClientId::new(gateway.state.address(), packet.connection_id);
    let ext = || String::from_utf8_lossy(&packet.ext_data).into_owned();
    let ext_list = || names(&serde_json::from_slice(&packet.ext_data).unwrap_or_default());
    let value = match packet.cmd {
        cmd::IS_ONLINE => {
            let online = matches!(ask(Query::IsOnline(client)), Reply::Online(true));
            Value::Int(online.into())
        }
        cmd::GET_SESSION_BY_CLIENT_ID => match ask(Query::SessionOf(client)) {
            // The reply is the stored session itself.
            Reply::Session(Some(session)) => return Some(session::to_php(&session)),
            _ => Value::Null,
        },
        cmd::GET_ALL_CLIENT_SESSIONS => sessions(ask(Query::SessionsOfGroup(String::new()))),
        // GatewayWorker has no group named '': its members are nobody, not everyone.
        cmd::GET_CLIENT_SESSIONS_BY_GROUP if packet.ext_data.is_empty() => Value::Array(vec![]),
        cmd::GET_CLIENT_SESSIONS_BY_GROUP => sessions(ask(Query::SessionsOfGroup(ext()))),
        cmd::GET_CLIENT_COUNT_BY_GROUP => match ask(Query::GroupCounts(vec![ext()])) {
            Reply::GroupCounts(counts) => {
                Value::Int(counts.first().map_or(0, |(_, n)| i64::from(*n)))
            }
            _ => Value::Int(0),
        },
        cmd::BATCH_GET_CLIENT_COUNT_BY_GROUP => {
            let groups: Vec<String> = ext_list().into_iter().filter(|g| !g.is_empty()).collect();
            match ask(Query::GroupCounts(groups)) {
                Reply::GroupCounts(counts) => Value::keyed(
                    counts
                        .into_iter()
                        .map(|(group, n)| (group, Value::Int(i64::from(n)))),
                ),
                _ => Value::Array(vec![]),
            }
        }
        cmd::GET_CLIENT_ID_BY_UID => match ask(Query::ClientsOfUids(vec![ext()])) {
            Reply::ClientsOfUids(found) => list(
                found
                    .into_iter()
                    .flat_map(|(_, clients)| connection_ids(&clients)),
            ),
            _ => Value::Array(vec![]),
        },
        cmd::BATCH_GET_CLIENT_ID_BY_UID => match ask(Query::ClientsOfUids(ext_list())) {
            Reply::ClientsOfUids(found) => Value::keyed(
                found
                    .into_iter()
                    .map(|(uid, clients)| (uid, list(connection_ids(&clients)))),
            ),
            _ => Value::Array(vec![]),
        },
        cmd::GET_GROUP_ID_LIST => match ask(Query::AllGroups) {
            Reply::Groups(groups) => {
                let mut names: Vec<String> = groups.into_iter().map(|g| g.group).collect();
                names.sort_unstable();
                list(
                    names
                        .into_iter()
                        .map(|name| match Key::from_bytes(name.as_bytes()) {
                            Key::Int(n) => Value::Int(n),
                            Key::Str(s) => Value::Str(s),
                        }),
                )
            }
            _ => Value::Array(vec![]),
        },
        cmd::SELECT => select(gateway, &packet.ext_data),
        _ => return None,
    };
    Some(php_serial::encode(&value))
}

/// `CMD_SELECT`: for each connection the `where` conditions match (any of them; all
/// connections without one), the `fields` asked: `uid` (a string or null), `groups` (a
/// `{group: group}` map, or null for none) and `session` (the serialized session, `''` for
/// none); any other field is null, as PHP's `isset` finds nothing.
fn select(gateway: &Gateway, ext_data: &[u8]) -> Value {
    let ask = |query: Query| gateway.state.answer(&query);
    let Ok(serde_json::Value::Object(options)) = serde_json::from_slice(ext_data) else {
        return Value::Array(vec![]);
    };
    let fields = names(options.get("fields").unwrap_or(&serde_json::Value::Null));
    let mut chosen = std::collections::BTreeSet::new();
    let clients_of = |reply: Reply| match reply {
        Reply::Clients(clients) => clients,
        Reply::ClientsOfUids(found) => found.into_iter().flat_map(|(_, c)| c).collect(),
        _ => Vec::new(),
    };
    match options.get("where") {
        Some(serde_json::Value::Object(wheres)) if !wheres.is_empty() => {
            for (key, items) in wheres {
                let found = match key.as_str() {
                    "groups" => names(items)
                        .into_iter()
                        .filter(|g| !g.is_empty())
                        .flat_map(|g| clients_of(ask(Query::ClientsOfGroup(g))))
                        .collect(),
                    "uid" => clients_of(ask(Query::ClientsOfUids(names(items)))),
                    "connection_id" => connections(gateway.state.address(), items)
                        .into_iter()
                        .filter(|c| matches!(ask(Query::IsOnline(*c)), Reply::Online(true)))
                        .collect(),
                    _ => Vec::new(),
                };
                chosen.extend(found.iter().map(|c: &ClientId| c.index));
            }
        }
        _ => chosen.extend(
            clients_of(ask(Query::ClientsOfGroup(String::new())))
                .iter()
                .map(|c| c.index),
        ),
    }
    let mut groups_of = std::collections::HashMap::<u32, Vec<String>>::new();
    if fields.iter().any(|f| f == "groups")
        && let Reply::Groups(groups) = ask(Query::AllGroups)
    {
        for group in groups {
            for member in group.clients {
                groups_of
                    .entry(member.index)
                    .or_default()
                    .push(group.group.clone());
            }
        }
    }
    let address = gateway.state.address();
    let rows = chosen.into_iter().map(|index| {
        let client = ClientId::new(address, index);
        let row = fields.iter().map(|field| {
            let value = match field.as_str() {
                "uid" => match ask(Query::UidOf(client)) {
                    Reply::Uid(Some(uid)) => Value::Str(uid.into_bytes()),
                    _ => Value::Null,
                },
                "session" => match ask(Query::SessionOf(client)) {
                    Reply::Session(Some(session)) => session_string(&session),
                    _ => Value::Null,
                },
                "groups" => match groups_of.get_mut(&index) {
                    Some(groups) => {
                        groups.sort_unstable();
                        Value::keyed(
                            groups
                                .iter()
                                .map(|g| (g.clone(), Value::Str(g.clone().into_bytes()))),
                        )
                    }
                    None => Value::Null,
                },
                _ => Value::Null,
            };
            (Key::Str(field.clone().into_bytes()), value)
        });
        (Key::Int(index.into()), Value::Array(row.collect()))
    });
    Value::Array(rows.collect())
}

/// `{conn_id: session string}`, in connection-id order.
fn sessions(reply: Reply) -> Value {
    let Reply::Sessions(mut found) = reply else {
        return Value::Array(vec![]);
    };
    found.sort_unstable_by_key(|(client, _)| client.index);
    Value::Array(
        found
            .iter()
            .map(|(client, session)| (Key::Int(client.index.into()), session_string(session)))
            .collect(),
    )
}

/// A session as GatewayWorker's gateway holds it: its serialization, or `''` for none.
fn session_string(session: &Session) -> Value {
    if session.is_empty() {
        Value::Str(Vec::new())
    } else {
        Value::Str(session::to_php(session))
    }
}

/// The connection ids of `clients`, in order.
fn connection_ids(clients: &[ClientId]) -> Vec<Value> {
    let mut ids: Vec<u32> = clients.iter().map(|c| c.index).collect();
    ids.sort_unstable();
    ids.into_iter().map(|id| Value::Int(id.into())).collect()
}

/// A PHP list of `values`.
fn list(values: impl IntoIterator<Item = Value>) -> Value {
    Value::Array(
        values
            .into_iter()
            .zip(0..)
            .map(|(value, at)| (Key::Int(at), value))
            .collect(),
    )
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
fn connections(address: SocketAddrV4, ids: &serde_json::Value) -> Vec<ClientId> {
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde_json::json;

    use super::*;

    fn with_body(cmd: u8, body: &str) -> Packet {
        Packet {
            body: Bytes::copy_from_slice(body.as_bytes()),
            ..Packet::new(cmd)
        }
    }

    #[test]
    fn only_200_or_202_with_the_key_authorise() {
        let secret = b"s3cret";
        let client = with_body(cmd::GATEWAY_CLIENT_CONNECT, r#"{"secret_key":"s3cret"}"#);
        assert!(matches!(authorise(&client, secret), Ok(PortPeer::Client)));
        // The name is all but the last `:id`; it may hold a colon itself.
        let worker = with_body(
            cmd::WORKER_CONNECT,
            r#"{"worker_key":"chat:a:3","secret_key":"s3cret"}"#,
        );
        assert!(
            matches!(authorise(&worker, secret), Ok(PortPeer::Worker { name }) if name == "chat:a")
        );
        for refused in [
            with_body(cmd::GATEWAY_CLIENT_CONNECT, r#"{"secret_key":"wrong"}"#),
            with_body(cmd::GATEWAY_CLIENT_CONNECT, r#"{}"#),
            with_body(cmd::GATEWAY_CLIENT_CONNECT, "not json"),
            with_body(cmd::WORKER_CONNECT, r#"{"secret_key":"s3cret"}"#),
            with_body(
                cmd::WORKER_CONNECT,
                r#"{"worker_key":":0","secret_key":"s3cret"}"#,
            ),
            with_body(cmd::SEND_TO_ALL, r#"{"secret_key":"s3cret"}"#),
        ] {
            assert!(
                matches!(
                    authorise(&refused, secret),
                    Err(PortError::NotAuthorised(_))
                ),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn a_body_is_sent_as_php_meant_it() {
        let scalar = Packet {
            flag: FLAG_BODY_IS_SCALAR,
            ..with_body(cmd::SEND_TO_ONE, "N;")
        };
        assert_eq!(payload(&scalar).as_deref(), Some(&b"N;"[..]));
        let serialized = |body| payload(&with_body(cmd::KICK, body));
        assert_eq!(serialized("N;"), None, "a kick's null message is none");
        assert_eq!(serialized(r#"s:3:"bye";"#).as_deref(), Some(&b"bye"[..]));
        // Any other value goes as its serialization, as GatewayWorker's encoder would get it.
        let array = r#"a:1:{i:0;s:1:"x";}"#;
        assert_eq!(serialized(array).as_deref(), Some(array.as_bytes()));
    }

    #[test]
    fn targets_come_from_maps_lists_and_numbers() {
        let at = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2300);
        let indexes = |ids| -> Vec<u32> { connections(at, &ids).iter().map(|c| c.index).collect() };
        let mut from_map = indexes(json!({"7": 7, "9": 9, "x": 1}));
        from_map.sort_unstable();
        assert_eq!(from_map, [7, 9]);
        assert_eq!(indexes(json!([3, "4", -1, "y", 4_294_967_296_u64])), [3, 4]);
        assert!(indexes(json!(null)).is_empty());
        assert!(connections(at, &json!([5])).iter().all(|c| c.gateway == at));
        assert_eq!(names(&json!(["u7", 42, null, ["x"]])), ["u7", "42"]);
        assert!(names(&json!("u7")).is_empty());
    }
}
