//! The imports a plugin calls: `gateway`, `timers` and `log`, implemented on [`HostApi`].
//!
//! Every `gateway` import becomes one [`Command`] or [`Query`] handed to a [`Gateways`]
//! implementation. The worker host's network links implement it in production and tests pass a
//! recording double, so this module never touches a socket. Arguments are validated here: a
//! malformed client id or an empty group never leaves the plugin's host.
//!
//! The host also keeps the session of the client the current event is about, so that
//! `get-session` on it answers without a round trip and the event's outcome can tell the
//! worker host what the plugin changed.

use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::bindings::wasmgate::plugin::{gateway, log, timers, types};
use super::bindings::{GatewayError, Level};
use super::timers::Timers;
use crate::client_id::ClientId;
use crate::ops::{Command, Query, Reply, Session};

/// A boxed future returned by [`Gateways::query`].
pub type QueryFuture = Pin<Box<dyn Future<Output = Result<Reply, QueryError>> + Send>>;

/// A boxed future returned by [`Gateways::command`].
pub type CommandFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// The operations a worker host can ask of the gateways.
pub trait Gateways: Send + Sync + 'static {
    /// Queues `command` to the gateway(s) it concerns; waits only for queue space, never for
    /// the gateway. Resolves to false if it could not be queued (the client's gateway is not
    /// linked).
    fn command(&self, command: Command) -> CommandFuture;

    /// Sends `query` to the gateway(s) it concerns and merges their answers, waiting a
    /// bounded time.
    fn query(&self, query: Query) -> QueryFuture;
}

/// Why a query got no answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    /// No gateway the query needed is linked, or none answered in time.
    #[error("no gateway answered")]
    Unreachable,
}

/// The host state behind a plugin instance's imports.
pub struct HostApi {
    plugin: Arc<str>,
    gateways: Arc<dyn Gateways>,
    current: Option<CurrentClient>,
    pub(super) timers: Timers,
}

/// The client whose event is running, with its session as this host knows it.
struct CurrentClient {
    id: String,
    session: Session,
    writes: u64,
}

/// How a callback changed the session of the client it was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionChange {
    /// The session after the callback.
    pub session: Session,
    /// How many session commands the callback sent for that client.
    pub writes: u64,
}

impl HostApi {
    /// Imports for an instance of `plugin`, talking to `gateways`.
    pub fn new(plugin: Arc<str>, gateways: Arc<dyn Gateways>, timers: Timers) -> Self {
        Self {
            plugin,
            gateways,
            current: None,
            timers,
        }
    }

    /// Marks the start of a client event.
    pub(super) fn begin_client_event(&mut self, client: &types::Client) {
        self.current = Some(CurrentClient {
            id: client.id.clone(),
            session: client.session.iter().cloned().collect(),
            writes: 0,
        });
    }

    /// Marks the end of any event; says how the plugin changed the current client's session.
    pub(super) fn end_event(&mut self) -> Option<SessionChange> {
        self.current
            .take()
            .filter(|c| c.writes > 0)
            .map(|c| SessionChange {
                session: c.session,
                writes: c.writes,
            })
    }

    fn current_mut(&mut self, client_id: &str) -> Option<&mut CurrentClient> {
        self.current.as_mut().filter(|c| c.id == client_id)
    }

    fn client_id(&self, raw: &str) -> Result<ClientId, GatewayError> {
        ClientId::from_str(raw).map_err(|e| GatewayError::InvalidArgument(e.to_string()))
    }

    /// Sends a command about one client; a malformed id is logged and dropped.
    async fn command_for(&self, raw: &str, make: impl FnOnce(ClientId) -> Command) -> bool {
        match self.client_id(raw) {
            Ok(id) => self.gateways.command(make(id)).await,
            Err(e) => {
                tracing::debug!(plugin = &*self.plugin, "ignored: {e:?}");
                false
            }
        }
    }

    async fn ask(&self, query: Query) -> Result<Reply, GatewayError> {
        self.gateways
            .query(query)
            .await
            .map_err(|_| GatewayError::Unreachable)
    }

    fn mismatch(&self, reply: Reply) -> GatewayError {
        tracing::error!(
            plugin = &*self.plugin,
            ?reply,
            "gateway answered the wrong query"
        );
        GatewayError::Unreachable
    }
}

fn client_ids(raw: &[String]) -> Vec<ClientId> {
    raw.iter().filter_map(|s| s.parse().ok()).collect()
}

fn non_empty(what: &str, value: &str) -> Result<(), GatewayError> {
    if value.is_empty() {
        Err(GatewayError::InvalidArgument(format!(
            "{what} must not be empty"
        )))
    } else {
        Ok(())
    }
}

fn wit_session(session: Session) -> types::Session {
    session.into_iter().collect()
}

/// Asks a query and unwraps the expected reply variant.
macro_rules! ask {
    ($api:expr, $query:expr, $variant:path) => {
        match $api.ask($query).await? {
            $variant(value) => value,
            other => return Err($api.mismatch(other)),
        }
    };
}

impl types::Host for HostApi {}

impl gateway::Host for HostApi {
    async fn send_to_all(&mut self, data: Vec<u8>, exclude: Vec<String>) {
        self.gateways
            .command(Command::SendToAll {
                data: Bytes::from(data),
                exclude: client_ids(&exclude),
            })
            .await;
    }

    async fn send_to_clients(&mut self, client_ids_raw: Vec<String>, data: Vec<u8>) {
        let mut clients = client_ids(&client_ids_raw);
        clients.sort_unstable();
        clients.dedup();
        if !clients.is_empty() {
            self.gateways
                .command(Command::SendToClients {
                    clients,
                    data: Bytes::from(data),
                })
                .await;
        }
    }

    async fn send_to_client(&mut self, client_id: String, data: Vec<u8>) -> bool {
        self.command_for(&client_id, |client| Command::SendToClients {
            clients: vec![client],
            data: Bytes::from(data),
        })
        .await
    }

    async fn close_client(&mut self, client_id: String, farewell: Option<Vec<u8>>) {
        self.command_for(&client_id, |client| Command::CloseClient {
            client,
            farewell: farewell.map(Bytes::from),
        })
        .await;
    }

    async fn destroy_client(&mut self, client_id: String) {
        self.command_for(&client_id, |client| Command::DestroyClient { client })
            .await;
    }

    async fn is_online(&mut self, client_id: String) -> Result<bool, GatewayError> {
        let id = self.client_id(&client_id)?;
        Ok(ask!(self, Query::IsOnline(id), Reply::Online))
    }

    async fn bind_uid(&mut self, client_id: String, uid: String) {
        if !uid.is_empty() {
            self.command_for(&client_id, |client| Command::BindUid { client, uid })
                .await;
        }
    }

    async fn unbind_uid(&mut self, client_id: String, uid: String) {
        if !uid.is_empty() {
            self.command_for(&client_id, |client| Command::UnbindUid { client, uid })
                .await;
        }
    }

    async fn send_to_uid(&mut self, mut uids: Vec<String>, data: Vec<u8>) {
        uids.retain(|u| !u.is_empty());
        uids.sort_unstable();
        uids.dedup();
        if !uids.is_empty() {
            self.gateways
                .command(Command::SendToUid {
                    uids,
                    data: Bytes::from(data),
                })
                .await;
        }
    }

    async fn is_uid_online(&mut self, uid: String) -> Result<bool, GatewayError> {
        non_empty("uid", &uid)?;
        let answers = ask!(self, Query::UidsOnline(vec![uid]), Reply::UidsOnline);
        Ok(answers.into_iter().any(|(_, online)| online))
    }

    async fn are_uids_online(
        &mut self,
        uids: Vec<String>,
    ) -> Result<Vec<(String, bool)>, GatewayError> {
        uids.iter().try_for_each(|u| non_empty("uid", u))?;
        Ok(ask!(self, Query::UidsOnline(uids), Reply::UidsOnline))
    }

    async fn get_client_ids_by_uid(&mut self, uid: String) -> Result<Vec<String>, GatewayError> {
        non_empty("uid", &uid)?;
        let answers = ask!(self, Query::ClientsOfUids(vec![uid]), Reply::ClientsOfUids);
        Ok(answers
            .into_iter()
            .flat_map(|(_, ids)| ids)
            .map(|id| id.to_string())
            .collect())
    }

    async fn get_client_ids_by_uids(
        &mut self,
        uids: Vec<String>,
    ) -> Result<Vec<(String, Vec<String>)>, GatewayError> {
        uids.iter().try_for_each(|u| non_empty("uid", u))?;
        let answers = ask!(self, Query::ClientsOfUids(uids), Reply::ClientsOfUids);
        Ok(answers
            .into_iter()
            .map(|(uid, ids)| (uid, ids.iter().map(ClientId::to_string).collect()))
            .collect())
    }

    async fn get_uid_by_client_id(
        &mut self,
        client_id: String,
    ) -> Result<Option<String>, GatewayError> {
        let id = self.client_id(&client_id)?;
        Ok(ask!(self, Query::UidOf(id), Reply::Uid))
    }

    async fn get_all_uids(&mut self) -> Result<Vec<String>, GatewayError> {
        Ok(ask!(self, Query::AllUids, Reply::Uids))
    }

    async fn get_all_uid_count(&mut self) -> Result<u32, GatewayError> {
        Ok(ask!(self, Query::AllUids, Reply::Uids).len() as u32)
    }

    async fn join_group(&mut self, client_id: String, group: String) {
        if !group.is_empty() {
            self.command_for(&client_id, |client| Command::JoinGroup { client, group })
                .await;
        }
    }

    async fn leave_group(&mut self, client_id: String, group: String) {
        if !group.is_empty() {
            self.command_for(&client_id, |client| Command::LeaveGroup { client, group })
                .await;
        }
    }

    async fn ungroup(&mut self, group: String) {
        if !group.is_empty() {
            self.gateways.command(Command::Ungroup { group }).await;
        }
    }

    async fn send_to_group(
        &mut self,
        mut groups: Vec<String>,
        data: Vec<u8>,
        exclude: Vec<String>,
    ) {
        groups.retain(|g| !g.is_empty());
        groups.sort_unstable();
        groups.dedup();
        if !groups.is_empty() {
            self.gateways
                .command(Command::SendToGroup {
                    groups,
                    data: Bytes::from(data),
                    exclude: client_ids(&exclude),
                })
                .await;
        }
    }

    async fn get_client_count_by_group(&mut self, group: String) -> Result<u32, GatewayError> {
        let counts = ask!(self, Query::GroupCounts(vec![group]), Reply::GroupCounts);
        Ok(counts.into_iter().map(|(_, n)| n).sum())
    }

    async fn get_client_counts_by_groups(
        &mut self,
        groups: Vec<String>,
    ) -> Result<Vec<(String, u32)>, GatewayError> {
        groups.iter().try_for_each(|g| non_empty("group", g))?;
        Ok(ask!(self, Query::GroupCounts(groups), Reply::GroupCounts))
    }

    async fn get_client_ids_by_group(
        &mut self,
        group: String,
    ) -> Result<Vec<String>, GatewayError> {
        non_empty("group", &group)?;
        let ids = ask!(self, Query::ClientsOfGroup(group), Reply::Clients);
        Ok(ids.iter().map(ClientId::to_string).collect())
    }

    async fn get_client_sessions_by_group(
        &mut self,
        group: String,
    ) -> Result<Vec<(String, types::Session)>, GatewayError> {
        non_empty("group", &group)?;
        self.sessions_of(group).await
    }

    async fn get_uids_by_group(&mut self, group: String) -> Result<Vec<String>, GatewayError> {
        non_empty("group", &group)?;
        Ok(ask!(self, Query::UidsOfGroup(group), Reply::Uids))
    }

    async fn get_uid_count_by_group(&mut self, group: String) -> Result<u32, GatewayError> {
        non_empty("group", &group)?;
        Ok(ask!(self, Query::UidsOfGroup(group), Reply::Uids).len() as u32)
    }

    async fn get_all_group_ids(&mut self) -> Result<Vec<String>, GatewayError> {
        let groups = ask!(self, Query::AllGroups, Reply::Groups);
        Ok(groups.into_iter().map(|g| g.group).collect())
    }

    async fn get_all_group_client_ids(
        &mut self,
    ) -> Result<Vec<(String, Vec<String>)>, GatewayError> {
        let groups = ask!(self, Query::AllGroups, Reply::Groups);
        Ok(groups
            .into_iter()
            .map(|g| (g.group, g.clients.iter().map(ClientId::to_string).collect()))
            .collect())
    }

    async fn get_all_group_client_counts(&mut self) -> Result<Vec<(String, u32)>, GatewayError> {
        let groups = ask!(self, Query::AllGroups, Reply::Groups);
        Ok(groups
            .into_iter()
            .map(|g| (g.group, g.clients.len() as u32))
            .collect())
    }

    async fn get_all_group_uids(&mut self) -> Result<Vec<(String, Vec<String>)>, GatewayError> {
        let groups = ask!(self, Query::AllGroups, Reply::Groups);
        Ok(groups.into_iter().map(|g| (g.group, g.uids)).collect())
    }

    async fn get_all_group_uid_counts(&mut self) -> Result<Vec<(String, u32)>, GatewayError> {
        let groups = ask!(self, Query::AllGroups, Reply::Groups);
        Ok(groups
            .into_iter()
            .map(|g| (g.group, g.uids.len() as u32))
            .collect())
    }

    async fn get_all_client_count(&mut self) -> Result<u32, GatewayError> {
        self.get_client_count_by_group(String::new()).await
    }

    async fn get_all_client_ids(&mut self) -> Result<Vec<String>, GatewayError> {
        let ids = ask!(self, Query::ClientsOfGroup(String::new()), Reply::Clients);
        Ok(ids.iter().map(ClientId::to_string).collect())
    }

    async fn get_all_client_sessions(
        &mut self,
    ) -> Result<Vec<(String, types::Session)>, GatewayError> {
        self.sessions_of(String::new()).await
    }

    async fn set_session(&mut self, client_id: String, session: types::Session) {
        let session: Session = session.into_iter().collect();
        if let Some(current) = self.current_mut(&client_id) {
            current.session = session.clone();
            current.writes += 1;
        }
        self.command_for(&client_id, |client| Command::SetSession { client, session })
            .await;
    }

    async fn update_session(&mut self, client_id: String, changes: types::Session) {
        let changes: Session = changes.into_iter().collect();
        if let Some(current) = self.current_mut(&client_id) {
            current
                .session
                .extend(changes.iter().map(|(k, v)| (k.clone(), v.clone())));
            current.writes += 1;
        }
        self.command_for(&client_id, |client| Command::UpdateSession {
            client,
            changes,
        })
        .await;
    }

    async fn get_session(
        &mut self,
        client_id: String,
    ) -> Result<Option<types::Session>, GatewayError> {
        if let Some(current) = self.current_mut(&client_id) {
            return Ok(Some(wit_session(current.session.clone())));
        }
        let id = self.client_id(&client_id)?;
        Ok(ask!(self, Query::SessionOf(id), Reply::Session).map(wit_session))
    }
}

impl HostApi {
    /// Sessions of a group's members (every client for the empty group), with the current
    /// client's session as this host knows it.
    async fn sessions_of(
        &mut self,
        group: String,
    ) -> Result<Vec<(String, types::Session)>, GatewayError> {
        let sessions = ask!(self, Query::SessionsOfGroup(group), Reply::Sessions);
        Ok(sessions
            .into_iter()
            .map(|(id, session)| {
                let id = id.to_string();
                let session = match self.current.as_ref().filter(|c| c.id == id) {
                    Some(current) => current.session.clone(),
                    None => session,
                };
                (id, wit_session(session))
            })
            .collect())
    }
}

impl timers::Host for HostApi {
    async fn set_interval(&mut self, period_ms: u32) -> u64 {
        self.timers
            .set_interval(Duration::from_millis(period_ms.into()))
    }

    async fn set_timeout(&mut self, delay_ms: u32) -> u64 {
        self.timers
            .set_timeout(Duration::from_millis(delay_ms.into()))
    }

    async fn cancel(&mut self, id: u64) {
        self.timers.cancel(id);
    }
}

impl log::Host for HostApi {
    async fn log(&mut self, level: Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}
