//! Commands: the gateway operations that change something and expect no answer.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::client_id::ClientId;

/// A client's session: GatewayWorker's `$_SESSION`, a string map kept by its gateway.
pub type Session = BTreeMap<String, String>;

/// A request that changes something and expects no answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Send to every client except `exclude`.
    SendToAll {
        /// The payload.
        data: Bytes,
        /// Clients that must not receive it.
        exclude: Vec<ClientId>,
    },
    /// Send to each listed client once.
    SendToClients {
        /// The recipients.
        clients: Vec<ClientId>,
        /// The payload.
        data: Bytes,
    },
    /// Close a client after sending `farewell`, once its queued data is written.
    CloseClient {
        /// The client to close.
        client: ClientId,
        /// A last message, if any.
        farewell: Option<Bytes>,
    },
    /// Close a client at once, discarding queued data.
    DestroyClient {
        /// The client to close.
        client: ClientId,
    },
    /// Bind a uid to a client, replacing its previous uid.
    BindUid {
        /// The client.
        client: ClientId,
        /// The uid.
        uid: String,
    },
    /// Remove a client's binding if it is bound to `uid`.
    UnbindUid {
        /// The client.
        client: ClientId,
        /// The uid it must currently have.
        uid: String,
    },
    /// Send to every client bound to any of `uids`, once per client.
    SendToUid {
        /// The uids.
        uids: Vec<String>,
        /// The payload.
        data: Bytes,
    },
    /// Add a client to a group.
    JoinGroup {
        /// The client.
        client: ClientId,
        /// The group.
        group: String,
    },
    /// Remove a client from a group.
    LeaveGroup {
        /// The client.
        client: ClientId,
        /// The group.
        group: String,
    },
    /// Remove every member from a group.
    Ungroup {
        /// The group.
        group: String,
    },
    /// Send to every member of any of `groups`, once per client, except `exclude`.
    SendToGroup {
        /// The groups.
        groups: Vec<String>,
        /// The payload.
        data: Bytes,
        /// Clients that must not receive it.
        exclude: Vec<ClientId>,
    },
    /// Replace a client's session.
    SetSession {
        /// The client.
        client: ClientId,
        /// The new session.
        session: Session,
    },
    /// Merge keys into a client's session.
    UpdateSession {
        /// The client.
        client: ClientId,
        /// The keys to set.
        changes: Session,
    },
    /// Close a client `on-websocket-connect` refused, once its queued data is written: a
    /// WebSocket client gets close code 1008 (policy violation) with `reason`.
    RejectClient {
        /// The client to close.
        client: ClientId,
        /// Why, for the client (cut to the 123 bytes a close frame holds).
        reason: String,
    },
}

impl Command {
    /// The one client this command is about, if it is about one: it then goes only to that
    /// client's gateway; otherwise to every gateway.
    pub fn target(&self) -> Option<ClientId> {
        match self {
            Command::CloseClient { client, .. }
            | Command::RejectClient { client, .. }
            | Command::DestroyClient { client }
            | Command::BindUid { client, .. }
            | Command::UnbindUid { client, .. }
            | Command::JoinGroup { client, .. }
            | Command::LeaveGroup { client, .. }
            | Command::SetSession { client, .. }
            | Command::UpdateSession { client, .. } => Some(*client),
            Command::SendToClients { clients, .. } if clients.len() == 1 => Some(clients[0]),
            Command::SendToAll { .. }
            | Command::SendToClients { .. }
            | Command::SendToUid { .. }
            | Command::Ungroup { .. }
            | Command::SendToGroup { .. } => None,
        }
    }
}
