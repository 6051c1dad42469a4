//! [`PushClient`]: every gateway operation as a typed Rust call, for backends that push to
//! clients (what GatewayClient is to GatewayWorker) and as the one implementation behind the
//! HTTP push API.
//!
//! Each method builds one [`Command`] or [`Query`] of [`crate::ops`], the vocabulary plugins
//! use too, so a push means exactly what the WIT `gateway` import of the same name means.
//! Where a plugin's call silently does nothing (an empty group or uid), a push is refused with
//! [`PushError::InvalidArgument`] naming the argument: a backend wants to hear about it, and
//! the HTTP API turns it into a 400.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::client_id::ClientId;
use crate::local::LocalGateways;
use crate::ops::{Command, GroupMembers, Query, Reply, Session};
use crate::register::{self, Announce};
use crate::wire::handshake::Role;
use crate::worker::host_api::Gateways;
use crate::worker::links::GatewayLinks;

/// Unwraps the reply variant a query expects; any other is a peer's bug, reported as
/// unreachable (as plugins see it) and logged.
macro_rules! expect {
    ($reply:expr, $variant:path) => {
        match $reply {
            $variant(value) => value,
            other => {
                tracing::error!(reply = ?other, "a gateway answered the wrong query");
                return Err(PushError::Unreachable);
            }
        }
    };
}

/// How long [`PushClient::connect`] waits for the gateways by default: GatewayClient's 5 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a push failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// An argument can never be valid (an empty group or uid); nothing was sent.
    #[error("{argument}: {reason}")]
    InvalidArgument {
        /// The argument, as named in the API, with the index of a list item: `groups[1]`.
        argument: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No gateway the operation needed is linked, or none answered a query in time.
    #[error("no gateway reachable")]
    Unreachable,
}

/// Why [`PushClient::connect`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The register list is empty.
    #[error("no register address given")]
    NoRegister,
    /// No gateway got linked in time: a register is unreachable, the secret is wrong, or no
    /// gateway is registered.
    #[error(
        "no gateway linked within {0:?} (is a register reachable, the secret right, a gateway running?)"
    )]
    NoGateway(Duration),
}

/// Pushes to the clients of a wasmgate cluster and queries its gateways.
///
/// Cheap to clone; the links it opened close when the last clone is dropped. Commands (sends,
/// closes, group, uid and session changes) return once queued to the gateway(s), not once
/// delivered, in the order they were made. Queries wait at most one second for the gateways.
///
/// ```no_run
/// use wasmgate::push::PushClient;
///
/// # async fn example() -> anyhow::Result<()> {
/// let push = PushClient::connect(vec!["10.0.0.5:1236".parse()?], "the cluster secret").await?;
/// push.send_to_group(&["lobby"], "dinner is ready", &[]).await?;
/// let online = push.get_client_count_by_group("lobby").await?;
/// println!("{online} clients in the lobby");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PushClient {
    gateways: Arc<dyn Gateways>,
    /// Stops the registration and links `connect` started, with the last clone.
    links: Option<Arc<DropGuard>>,
}

impl fmt::Debug for PushClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushClient")
            .field("owns_links", &self.links.is_some())
            .finish_non_exhaustive()
    }
}

impl PushClient {
    /// Discovers the gateways through `registers` (every one is asked, as worker hosts do),
    /// links to each with the cluster's `secret`, and returns once every listed gateway is
    /// linked, or after [`CONNECT_TIMEOUT`] if at least one is. Gateways that join later are
    /// linked as they register. Must be called within a tokio runtime.
    pub async fn connect(
        registers: Vec<SocketAddr>,
        secret: impl AsRef<[u8]>,
    ) -> Result<Self, ConnectError> {
        Self::connect_within(registers, secret, CONNECT_TIMEOUT).await
    }

    /// [`connect`](Self::connect), waiting at most `timeout` for the gateways.
    pub async fn connect_within(
        registers: Vec<SocketAddr>,
        secret: impl AsRef<[u8]>,
        timeout: Duration,
    ) -> Result<Self, ConnectError> {
        if registers.is_empty() {
            return Err(ConnectError::NoRegister);
        }
        let secret: Arc<[u8]> = secret.as_ref().into();
        let stop = CancellationToken::new();
        let listed =
            register::spawn_registration(registers, secret.clone(), Announce::Client, stop.clone());
        // A push client runs no gateway, so every link is a network link.
        let links = GatewayLinks::new(secret, Role::Client, LocalGateways::default());
        links.start(listed.clone(), None, stop.clone());
        let linked = links.linked();
        let client = Self {
            gateways: links,
            links: Some(Arc::new(stop.drop_guard())),
        };
        let all = wait_until(listed, linked.clone(), |listed, linked| {
            !listed.is_empty() && listed.is_subset(linked)
        });
        if tokio::time::timeout(timeout, all).await.is_ok() || !linked.borrow().is_empty() {
            Ok(client)
        } else {
            Err(ConnectError::NoGateway(timeout))
        }
    }

    /// Pushes through `gateways`, e.g. a worker host's own links (what the HTTP API does).
    pub fn over(gateways: Arc<dyn Gateways>) -> Self {
        Self {
            gateways,
            links: None,
        }
    }

    async fn command(&self, command: Command) -> Result<(), PushError> {
        if self.gateways.command(command).await {
            Ok(())
        } else {
            Err(PushError::Unreachable)
        }
    }

    async fn query(&self, query: Query) -> Result<Reply, PushError> {
        self.gateways
            .query(query)
            .await
            .map_err(|_| PushError::Unreachable)
    }

    // ---- Sending and closing ---------------------------------------------------------------

    /// Sends `data` to every client on every gateway except those in `exclude`.
    pub async fn send_to_all(
        &self,
        data: impl Into<Bytes>,
        exclude: &[ClientId],
    ) -> Result<(), PushError> {
        self.command(Command::SendToAll {
            data: data.into(),
            exclude: exclude.to_vec(),
        })
        .await
    }

    /// Sends `data` to each listed client once; an empty list sends nothing.
    pub async fn send_to_clients(
        &self,
        clients: &[ClientId],
        data: impl Into<Bytes>,
    ) -> Result<(), PushError> {
        if clients.is_empty() {
            return Ok(());
        }
        self.command(Command::SendToClients {
            clients: clients.to_vec(),
            data: data.into(),
        })
        .await
    }

    /// Sends `data` to one client; [`PushError::Unreachable`] if its gateway is not linked.
    pub async fn send_to_client(
        &self,
        client: ClientId,
        data: impl Into<Bytes>,
    ) -> Result<(), PushError> {
        self.send_to_clients(&[client], data).await
    }

    /// Closes a client gracefully: `farewell` first, then the connection once its queued data
    /// is written. The plugin's `on-close` follows.
    pub async fn close_client(
        &self,
        client: ClientId,
        farewell: Option<Bytes>,
    ) -> Result<(), PushError> {
        self.command(Command::CloseClient { client, farewell })
            .await
    }

    /// Closes a client at once, discarding its queued data.
    pub async fn destroy_client(&self, client: ClientId) -> Result<(), PushError> {
        self.command(Command::DestroyClient { client }).await
    }

    /// Whether the client is connected: true until its gateway has processed its close.
    pub async fn is_online(&self, client: ClientId) -> Result<bool, PushError> {
        Ok(expect!(
            self.query(Query::IsOnline(client)).await?,
            Reply::Online
        ))
    }

    // ---- uids ------------------------------------------------------------------------------

    /// Binds `uid` to the client, replacing its previous uid; a uid may have many clients.
    pub async fn bind_uid(&self, client: ClientId, uid: &str) -> Result<(), PushError> {
        let uid = name("uid", uid)?;
        self.command(Command::BindUid { client, uid }).await
    }

    /// Removes the client's binding if it is bound to `uid`.
    pub async fn unbind_uid(&self, client: ClientId, uid: &str) -> Result<(), PushError> {
        let uid = name("uid", uid)?;
        self.command(Command::UnbindUid { client, uid }).await
    }

    /// Sends `data` to every client bound to any of `uids`, once per client.
    pub async fn send_to_uid(
        &self,
        uids: &[impl AsRef<str>],
        data: impl Into<Bytes>,
    ) -> Result<(), PushError> {
        let uids = names("uids", uids)?;
        if uids.is_empty() {
            return Ok(());
        }
        self.command(Command::SendToUid {
            uids,
            data: data.into(),
        })
        .await
    }

    /// Whether at least one client anywhere is bound to `uid`.
    pub async fn is_uid_online(&self, uid: &str) -> Result<bool, PushError> {
        let online = self.are_uids_online(&[name("uid", uid)?]).await?;
        Ok(online.into_iter().any(|(_, online)| online))
    }

    /// For each uid, whether at least one client is bound to it.
    pub async fn are_uids_online(
        &self,
        uids: &[impl AsRef<str>],
    ) -> Result<Vec<(String, bool)>, PushError> {
        let query = Query::UidsOnline(names("uids", uids)?);
        Ok(expect!(self.query(query).await?, Reply::UidsOnline))
    }

    /// Every connected client bound to `uid`, across gateways.
    pub async fn get_client_ids_by_uid(&self, uid: &str) -> Result<Vec<ClientId>, PushError> {
        let by_uid = self.get_client_ids_by_uids(&[name("uid", uid)?]).await?;
        Ok(by_uid.into_iter().flat_map(|(_, ids)| ids).collect())
    }

    /// For each uid, its connected clients.
    pub async fn get_client_ids_by_uids(
        &self,
        uids: &[impl AsRef<str>],
    ) -> Result<Vec<(String, Vec<ClientId>)>, PushError> {
        let query = Query::ClientsOfUids(names("uids", uids)?);
        Ok(expect!(self.query(query).await?, Reply::ClientsOfUids))
    }

    /// The uid bound to the client; none if unbound or offline.
    pub async fn get_uid_by_client_id(
        &self,
        client: ClientId,
    ) -> Result<Option<String>, PushError> {
        Ok(expect!(self.query(Query::UidOf(client)).await?, Reply::Uid))
    }

    /// Every uid bound to at least one connected client.
    pub async fn get_all_uids(&self) -> Result<Vec<String>, PushError> {
        Ok(expect!(self.query(Query::AllUids).await?, Reply::Uids))
    }

    /// The number of distinct uids bound to connected clients.
    pub async fn get_all_uid_count(&self) -> Result<u32, PushError> {
        Ok(count(self.get_all_uids().await?))
    }

    // ---- Groups ----------------------------------------------------------------------------

    /// Adds the client to `group`.
    pub async fn join_group(&self, client: ClientId, group: &str) -> Result<(), PushError> {
        let group = name("group", group)?;
        self.command(Command::JoinGroup { client, group }).await
    }

    /// Removes the client from `group`; nothing happens if it is not a member.
    pub async fn leave_group(&self, client: ClientId, group: &str) -> Result<(), PushError> {
        let group = name("group", group)?;
        self.command(Command::LeaveGroup { client, group }).await
    }

    /// Removes every member from `group` on every gateway.
    pub async fn ungroup(&self, group: &str) -> Result<(), PushError> {
        let group = name("group", group)?;
        self.command(Command::Ungroup { group }).await
    }

    /// Sends `data` to every member of any of `groups`, once per client, except `exclude`.
    pub async fn send_to_group(
        &self,
        groups: &[impl AsRef<str>],
        data: impl Into<Bytes>,
        exclude: &[ClientId],
    ) -> Result<(), PushError> {
        let groups = names("groups", groups)?;
        if groups.is_empty() {
            return Ok(());
        }
        self.command(Command::SendToGroup {
            groups,
            data: data.into(),
            exclude: exclude.to_vec(),
        })
        .await
    }

    /// The number of clients in `group` across gateways; the empty group counts every client.
    pub async fn get_client_count_by_group(&self, group: &str) -> Result<u32, PushError> {
        let counts = self.group_counts(vec![group.to_owned()]).await?;
        Ok(counts.into_iter().map(|(_, n)| n).sum())
    }

    /// For each group, its number of clients.
    pub async fn get_client_counts_by_groups(
        &self,
        groups: &[impl AsRef<str>],
    ) -> Result<Vec<(String, u32)>, PushError> {
        self.group_counts(names("groups", groups)?).await
    }

    async fn group_counts(&self, groups: Vec<String>) -> Result<Vec<(String, u32)>, PushError> {
        let query = Query::GroupCounts(groups);
        Ok(expect!(self.query(query).await?, Reply::GroupCounts))
    }

    /// The clients in `group` across gateways.
    pub async fn get_client_ids_by_group(&self, group: &str) -> Result<Vec<ClientId>, PushError> {
        let query = Query::ClientsOfGroup(name("group", group)?);
        Ok(expect!(self.query(query).await?, Reply::Clients))
    }

    /// The sessions of the clients in `group`.
    pub async fn get_client_sessions_by_group(
        &self,
        group: &str,
    ) -> Result<Vec<(ClientId, Session)>, PushError> {
        let query = Query::SessionsOfGroup(name("group", group)?);
        Ok(expect!(self.query(query).await?, Reply::Sessions))
    }

    /// The distinct uids bound to members of `group`.
    pub async fn get_uids_by_group(&self, group: &str) -> Result<Vec<String>, PushError> {
        let query = Query::UidsOfGroup(name("group", group)?);
        Ok(expect!(self.query(query).await?, Reply::Uids))
    }

    /// The number of distinct uids bound to members of `group`.
    pub async fn get_uid_count_by_group(&self, group: &str) -> Result<u32, PushError> {
        Ok(count(self.get_uids_by_group(group).await?))
    }

    /// Every group with at least one member.
    pub async fn get_all_group_ids(&self) -> Result<Vec<String>, PushError> {
        self.all_groups(|g| g.group).await
    }

    /// Every group with its clients.
    pub async fn get_all_group_client_ids(
        &self,
    ) -> Result<Vec<(String, Vec<ClientId>)>, PushError> {
        self.all_groups(|g| (g.group, g.clients)).await
    }

    /// Every group with its number of clients.
    pub async fn get_all_group_client_counts(&self) -> Result<Vec<(String, u32)>, PushError> {
        self.all_groups(|g| (g.group, count(g.clients))).await
    }

    /// Every group with the distinct uids bound to its members.
    pub async fn get_all_group_uids(&self) -> Result<Vec<(String, Vec<String>)>, PushError> {
        self.all_groups(|g| (g.group, g.uids)).await
    }

    /// Every group with the number of distinct uids bound to its members.
    pub async fn get_all_group_uid_counts(&self) -> Result<Vec<(String, u32)>, PushError> {
        self.all_groups(|g| (g.group, count(g.uids))).await
    }

    /// What `pick` takes from each group with at least one member.
    async fn all_groups<T>(&self, pick: impl Fn(GroupMembers) -> T) -> Result<Vec<T>, PushError> {
        let groups = expect!(self.query(Query::AllGroups).await?, Reply::Groups);
        Ok(groups.into_iter().map(pick).collect())
    }

    // ---- Everyone --------------------------------------------------------------------------

    /// The number of connected clients across gateways.
    pub async fn get_all_client_count(&self) -> Result<u32, PushError> {
        self.get_client_count_by_group("").await
    }

    /// Every connected client.
    pub async fn get_all_client_ids(&self) -> Result<Vec<ClientId>, PushError> {
        let query = Query::ClientsOfGroup(String::new());
        Ok(expect!(self.query(query).await?, Reply::Clients))
    }

    /// Every connected client with its session.
    pub async fn get_all_client_sessions(&self) -> Result<Vec<(ClientId, Session)>, PushError> {
        let query = Query::SessionsOfGroup(String::new());
        Ok(expect!(self.query(query).await?, Reply::Sessions))
    }

    // ---- Sessions --------------------------------------------------------------------------

    /// Replaces the client's whole session.
    pub async fn set_session(&self, client: ClientId, session: Session) -> Result<(), PushError> {
        self.command(Command::SetSession { client, session }).await
    }

    /// Merges `changes` into the client's session: listed keys are set, others kept.
    pub async fn update_session(
        &self,
        client: ClientId,
        changes: Session,
    ) -> Result<(), PushError> {
        self.command(Command::UpdateSession { client, changes })
            .await
    }

    /// The client's session as its gateway holds it; none if the client is offline.
    pub async fn get_session(&self, client: ClientId) -> Result<Option<Session>, PushError> {
        Ok(expect!(
            self.query(Query::SessionOf(client)).await?,
            Reply::Session
        ))
    }
}

/// Waits until `ready(listed, linked)` holds for the two watches.
async fn wait_until(
    mut listed: watch::Receiver<BTreeSet<SocketAddrV4>>,
    mut linked: watch::Receiver<BTreeSet<SocketAddrV4>>,
    ready: impl Fn(&BTreeSet<SocketAddrV4>, &BTreeSet<SocketAddrV4>) -> bool,
) {
    loop {
        if ready(&listed.borrow_and_update(), &linked.borrow_and_update()) {
            return;
        }
        let changed = tokio::select! {
            r = listed.changed() => r,
            r = linked.changed() => r,
        };
        if changed.is_err() {
            // The links stopped; nothing will change any more.
            return std::future::pending().await;
        }
    }
}

/// A non-empty group or uid.
fn name(argument: &str, value: &str) -> Result<String, PushError> {
    if value.is_empty() {
        Err(empty(argument.to_owned()))
    } else {
        Ok(value.to_owned())
    }
}

/// A list of non-empty groups or uids; an error names the item: `uids[2]`.
fn names(argument: &str, values: &[impl AsRef<str>]) -> Result<Vec<String>, PushError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v.as_ref() {
            "" => Err(empty(format!("{argument}[{i}]"))),
            v => Ok(v.to_owned()),
        })
        .collect()
}

fn empty(argument: String) -> PushError {
    PushError::InvalidArgument {
        argument,
        reason: "must not be empty",
    }
}

fn count<T>(items: Vec<T>) -> u32 {
    u32::try_from(items.len()).unwrap_or(u32::MAX)
}
