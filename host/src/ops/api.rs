//! The table of gateway operations: each operation defined once — its name, its arguments and
//! how they are checked, the command or query it becomes and how its reply is unwrapped — and
//! [`GatewayApi`], the typed facade generated from it.
//!
//! Every edge that offers the operations is generated from the same table with
//! [`gateway_operations!`]: the WIT imports plugins call (`worker::host_api`), the HTTP push
//! API's routes and its operation list (`push::http`), and the Rust push client, which is this
//! facade. So an operation cannot mean one thing to a plugin and another over HTTP, and a bad
//! argument is refused the same way everywhere: a plugin gets the WIT `invalid-argument`
//! error, an HTTP caller a 400 naming the field, a Rust caller [`OpError::InvalidArgument`].
//!
//! Adding an operation touches `wit/plugin.wit`, this table and, for a new command or query,
//! [`Command`]/[`Query`] and the gateway's state that executes it.

use std::sync::Arc;

use bytes::Bytes;

use super::args::{Argument, Excluded, Keyed, Name};
use super::cluster::ClusterView;
use super::command::{Command, Session};
use super::error::OpError;
use super::port::{Gateways, Unreachable};
use super::query::{GroupMembers, Query, Reply};
use crate::client_id::ClientId;

/// Every gateway operation, the same for plugins, the push API and Rust callers.
///
/// Commands (sends, closes, group, uid and session changes) return once queued to the
/// gateway(s) they concern, not once delivered, in the order they were made; they fail with
/// [`OpError::Unreachable`] only when no such gateway is linked, naming the gateway when the
/// operation is about one client ([`Unreachable::NotLinked`]). Queries wait a bounded time
/// for the gateways and merge their answers. Cheap to clone.
#[derive(Clone)]
pub struct GatewayApi {
    gateways: Arc<dyn Gateways>,
}

impl std::fmt::Debug for GatewayApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayApi").finish_non_exhaustive()
    }
}

impl GatewayApi {
    /// The operations, carried to the gateways by `gateways`.
    pub fn new(gateways: Arc<dyn Gateways>) -> Self {
        Self { gateways }
    }

    async fn command(&self, command: Command) -> Result<(), OpError> {
        Ok(self.gateways.command(command).await?)
    }

    async fn ask(&self, query: Query) -> Result<Reply, OpError> {
        Ok(self.gateways.query(query).await?)
    }
}

/// Unwraps the reply variant a query expects; any other is a peer's bug, logged and reported
/// as unreachable.
fn expect<T>(reply: Reply, unwrap: impl FnOnce(Reply) -> Result<T, Reply>) -> Result<T, OpError> {
    unwrap(reply).map_err(|other| {
        tracing::error!(reply = ?other, "a gateway answered the wrong query");
        OpError::Unreachable(Unreachable::NoGateway)
    })
}

/// Asks `$query` through `$api` and unwraps the reply variant `$variant`.
macro_rules! ask {
    ($api:ident, $query:expr, $variant:path) => {
        expect($api.ask($query).await?, |reply| match reply {
            $variant(value) => Ok(value),
            other => Err(other),
        })?
    };
}

/// Hands the table of gateway operations to `$edge`, a macro that generates one edge's
/// rendering of every operation.
///
/// Each entry is `doc name(api, argument: Type, …) -> Result { body }`: the argument names are
/// the names every edge uses (JSON fields, error messages), the types say how an argument is
/// checked ([`Argument`]), and the body, run by [`GatewayApi`] with `api` bound to it, builds
/// the command or query and unwraps its reply. Plugins see the operation under the same name
/// in kebab-case (`wit/plugin.wit`).
macro_rules! gateway_operations {
    ($edge:ident) => {
        $edge! {
            // ---- Sending and closing ---------------------------------------------------

            /// Sends `data` to every client on every gateway except those in
            /// `exclude_client_ids`.
            send_to_all(api, data: Bytes, exclude_client_ids: Excluded) -> () {
                api.command(Command::SendToAll { data, exclude: exclude_client_ids.0 }).await
            }

            /// Sends `data` to each listed client once; an empty list sends nothing, and ids
            /// whose gateway is not linked are ignored like offline ones.
            send_to_clients(api, client_ids: Vec<ClientId>, data: Bytes) -> () {
                let mut clients = client_ids;
                clients.sort_unstable();
                clients.dedup();
                if clients.is_empty() {
                    return Ok(());
                }
                // A list of one goes to its client's gateway alone; that it is not linked must
                // not make a list of one fail where a longer list would not.
                match api.command(Command::SendToClients { clients, data }).await {
                    Err(OpError::Unreachable(Unreachable::NotLinked(_))) => Ok(()),
                    sent => sent,
                }
            }

            /// Sends `data` to one client; unreachable, naming its gateway, if that gateway is
            /// not linked.
            send_to_client(api, client_id: ClientId, data: Bytes) -> () {
                api.command(Command::SendToClients { clients: vec![client_id], data }).await
            }

            /// Closes a client gracefully: `farewell` first, then the connection once its
            /// queued data is written. The plugin's `on-close` follows.
            close_client(api, client_id: ClientId, farewell: Option<Bytes>) -> () {
                api.command(Command::CloseClient { client: client_id, farewell }).await
            }

            /// Closes a client at once, discarding its queued data. `on-close` follows.
            destroy_client(api, client_id: ClientId) -> () {
                api.command(Command::DestroyClient { client: client_id }).await
            }

            /// Whether the client is connected: true until its gateway has processed its
            /// close; false when its gateway is not linked (gone, as GatewayWorker's
            /// `isOnline` answers), an error only when that gateway is linked but silent.
            is_online(api, client_id: ClientId) -> bool {
                match api.ask(Query::IsOnline(client_id)).await {
                    Err(OpError::Unreachable(Unreachable::NotLinked(_))) => Ok(false),
                    reply => expect(reply?, |reply| match reply {
                        Reply::Online(online) => Ok(online),
                        other => Err(other),
                    }),
                }
            }

            // ---- uids --------------------------------------------------------------------

            /// Binds `uid` to the client, replacing its previous uid; a uid may have many
            /// clients.
            bind_uid(api, client_id: ClientId, uid: Name) -> () {
                api.command(Command::BindUid { client: client_id, uid: uid.into() }).await
            }

            /// Removes the client's binding if it is bound to `uid`.
            unbind_uid(api, client_id: ClientId, uid: Name) -> () {
                api.command(Command::UnbindUid { client: client_id, uid: uid.into() }).await
            }

            /// Sends `data` to every client bound to any of `uids`, once per client.
            send_to_uid(api, uids: Vec<Name>, data: Bytes) -> () {
                let uids = Name::distinct(uids);
                if uids.is_empty() {
                    return Ok(());
                }
                api.command(Command::SendToUid { uids, data }).await
            }

            /// Whether at least one client anywhere is bound to `uid`.
            is_uid_online(api, uid: Name) -> bool {
                let online = ask!(api, Query::UidsOnline(vec![uid.into()]), Reply::UidsOnline);
                Ok(online.into_iter().any(|(_, online)| online))
            }

            /// For each uid, whether at least one client is bound to it.
            are_uids_online(api, uids: Vec<Name>) -> Keyed<String, bool> {
                let query = Query::UidsOnline(Name::strings(uids));
                Ok(Keyed(ask!(api, query, Reply::UidsOnline)))
            }

            /// Every connected client bound to `uid`, across gateways.
            get_client_ids_by_uid(api, uid: Name) -> Vec<ClientId> {
                let by_uid = ask!(api, Query::ClientsOfUids(vec![uid.into()]), Reply::ClientsOfUids);
                Ok(by_uid.into_iter().flat_map(|(_, ids)| ids).collect())
            }

            /// How many clients are bound to `uid` across gateways: a user's open connections.
            get_client_count_by_uid(api, uid: Name) -> u32 {
                let by_uid = ask!(api, Query::ClientsOfUids(vec![uid.into()]), Reply::ClientsOfUids);
                Ok(by_uid.iter().map(|(_, ids)| count(ids)).sum())
            }

            /// For each uid, its connected clients.
            get_client_ids_by_uids(api, uids: Vec<Name>) -> Keyed<String, Vec<ClientId>> {
                let query = Query::ClientsOfUids(Name::strings(uids));
                Ok(Keyed(ask!(api, query, Reply::ClientsOfUids)))
            }

            /// The uid bound to the client; none if unbound or offline.
            get_uid_by_client_id(api, client_id: ClientId) -> Option<String> {
                Ok(ask!(api, Query::UidOf(client_id), Reply::Uid))
            }

            /// Every uid bound to at least one connected client.
            get_all_uids(api) -> Vec<String> {
                Ok(ask!(api, Query::AllUids, Reply::Uids))
            }

            /// The number of distinct uids bound to connected clients.
            get_all_uid_count(api) -> u32 {
                Ok(count(&ask!(api, Query::AllUids, Reply::Uids)))
            }

            // ---- Groups ------------------------------------------------------------------

            /// Adds the client to `group`.
            join_group(api, client_id: ClientId, group: Name) -> () {
                api.command(Command::JoinGroup { client: client_id, group: group.into() }).await
            }

            /// Removes the client from `group`; nothing happens if it is not a member.
            leave_group(api, client_id: ClientId, group: Name) -> () {
                api.command(Command::LeaveGroup { client: client_id, group: group.into() }).await
            }

            /// Removes every member from `group` on every gateway.
            ungroup(api, group: Name) -> () {
                api.command(Command::Ungroup { group: group.into() }).await
            }

            /// Sends `data` to every member of any of `groups`, once per client, except
            /// `exclude_client_ids`.
            send_to_group(api, groups: Vec<Name>, data: Bytes, exclude_client_ids: Excluded) -> () {
                let groups = Name::distinct(groups);
                if groups.is_empty() {
                    return Ok(());
                }
                let exclude = exclude_client_ids.0;
                api.command(Command::SendToGroup { groups, data, exclude }).await
            }

            /// The number of clients in `group` across gateways; the empty group counts every
            /// client.
            get_client_count_by_group(api, group: String) -> u32 {
                let counts = ask!(api, Query::GroupCounts(vec![group]), Reply::GroupCounts);
                Ok(counts.into_iter().map(|(_, n)| n).sum())
            }

            /// For each group, its number of clients.
            get_client_counts_by_groups(api, groups: Vec<Name>) -> Keyed<String, u32> {
                let query = Query::GroupCounts(Name::strings(groups));
                Ok(Keyed(ask!(api, query, Reply::GroupCounts)))
            }

            /// The clients in `group` across gateways.
            get_client_ids_by_group(api, group: Name) -> Vec<ClientId> {
                Ok(ask!(api, Query::ClientsOfGroup(group.into()), Reply::Clients))
            }

            /// The sessions of the clients in `group`.
            get_client_sessions_by_group(api, group: Name) -> Keyed<ClientId, Session> {
                Ok(Keyed(ask!(api, Query::SessionsOfGroup(group.into()), Reply::Sessions)))
            }

            /// The distinct uids bound to members of `group`.
            get_uids_by_group(api, group: Name) -> Vec<String> {
                Ok(ask!(api, Query::UidsOfGroup(group.into()), Reply::Uids))
            }

            /// The number of distinct uids bound to members of `group`.
            get_uid_count_by_group(api, group: Name) -> u32 {
                Ok(count(&ask!(api, Query::UidsOfGroup(group.into()), Reply::Uids)))
            }

            /// Every group with at least one member.
            get_all_group_ids(api) -> Vec<String> {
                api.all_groups(|g| g.group).await
            }

            /// Every group with its clients.
            get_all_group_client_ids(api) -> Keyed<String, Vec<ClientId>> {
                api.all_groups(|g| (g.group, g.clients)).await.map(Keyed)
            }

            /// Every group with its number of clients.
            get_all_group_client_counts(api) -> Keyed<String, u32> {
                api.all_groups(|g| (g.group, count(&g.clients))).await.map(Keyed)
            }

            /// Every group with the distinct uids bound to its members.
            get_all_group_uids(api) -> Keyed<String, Vec<String>> {
                api.all_groups(|g| (g.group, g.uids)).await.map(Keyed)
            }

            /// Every group with the number of distinct uids bound to its members.
            get_all_group_uid_counts(api) -> Keyed<String, u32> {
                api.all_groups(|g| (g.group, count(&g.uids))).await.map(Keyed)
            }

            // ---- Everyone ----------------------------------------------------------------

            /// The number of connected clients across gateways.
            get_all_client_count(api) -> u32 {
                api.get_client_count_by_group(String::new()).await
            }

            /// Every connected client.
            get_all_client_ids(api) -> Vec<ClientId> {
                Ok(ask!(api, Query::ClientsOfGroup(String::new()), Reply::Clients))
            }

            /// Every connected client with its session.
            get_all_client_sessions(api) -> Keyed<ClientId, Session> {
                Ok(Keyed(ask!(api, Query::SessionsOfGroup(String::new()), Reply::Sessions)))
            }

            // ---- Sessions ----------------------------------------------------------------

            /// Replaces the client's whole session.
            set_session(api, client_id: ClientId, session: Session) -> () {
                api.command(Command::SetSession { client: client_id, session }).await
            }

            /// Merges `changes` into the client's session: listed keys are set, others kept.
            update_session(api, client_id: ClientId, changes: Session) -> () {
                api.command(Command::UpdateSession { client: client_id, changes }).await
            }

            /// The client's session as its gateway holds it; none if the client is offline.
            get_session(api, client_id: ClientId) -> Option<Session> {
                Ok(ask!(api, Query::SessionOf(client_id), Reply::Session))
            }
        }
    };
}

pub(crate) use gateway_operations;

/// Generates [`GatewayApi`]'s methods from the table: each converts and checks its arguments
/// ([`Argument`]), then runs the operation's body.
macro_rules! facade {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident($api:ident $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty $body:block
    )*) => {
        impl GatewayApi {
            $(
                $(#[doc = $doc])*
                pub async fn $name(&self $(, $arg: impl Argument<$ty>)*) -> Result<$ret, OpError> {
                    $(let $arg: $ty = $arg.into_argument(stringify!($arg))?;)*
                    let $api = self;
                    $body
                }
            )*
        }

        /// Every operation's name, in the table's order.
        pub const OPERATIONS: &[&str] = &[$(stringify!($name)),*];
    };
}

gateway_operations!(facade);

impl GatewayApi {
    /// What `pick` takes from each group with at least one member.
    async fn all_groups<T>(&self, pick: impl Fn(GroupMembers) -> T) -> Result<Vec<T>, OpError> {
        let api = self;
        let groups = ask!(api, Query::AllGroups, Reply::Groups);
        Ok(groups.into_iter().map(pick).collect())
    }

    /// Every gateway's figures and every worker host's plugin report (the admin page). Not
    /// in the table: plugins and the push API have no use for it.
    pub async fn cluster(&self) -> Result<ClusterView, OpError> {
        let api = self;
        Ok(ask!(api, Query::Cluster, Reply::Cluster))
    }
}

fn count<T>(items: &[T]) -> u32 {
    u32::try_from(items.len()).unwrap_or(u32::MAX)
}
