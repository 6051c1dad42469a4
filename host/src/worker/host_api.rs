//! The imports a plugin calls: `gateway`, `answers`, `timers` and `log`, implemented on
//! [`HostApi`]. `answers.missing-gateways` reports what [`partial`] gathered during the
//! instance's latest `gateway` call.
//!
//! The `gateway` imports are generated from the table of operations
//! ([`crate::ops::gateway_operations`]): each import converts its WIT arguments, runs the
//! operation on a [`GatewayApi`] and converts the answer back, so a plugin's call means exactly
//! what the push API's call of the same name means, and a bad argument gets
//! `invalid-argument` naming it. The worker host's links carry the operations in production;
//! tests pass a recording double, so this module never touches a socket.
//!
//! Each instance sees the gateways through a [`SessionView`]: it remembers the session of the
//! client the current event is about, so that `get-session` on it answers without a round trip,
//! later events see what this one wrote, and the event's outcome can tell the worker host what
//! the plugin changed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::bindings::wasmgate::plugin::{answers, event_info, gateway, log, timers, types};
use super::bindings::{GatewayError, Level};
use super::guest_output::LogBudget;
use super::timers::{Timers, TooManyTimers};
use crate::client_id::ClientId;
use crate::metrics;
use crate::ops::{
    Command, CommandFuture, Excluded, GatewayApi, Gateways, Keyed, Name, OpError, Query,
    QueryFuture, Reply, Session, check_session_bytes, gateway_operations, partial, session_bytes,
    session_bytes_after,
};

/// The host state behind a plugin instance's imports.
pub struct HostApi {
    pub(super) plugin: Arc<str>,
    api: GatewayApi,
    view: Arc<SessionView>,
    /// The gateways the latest `gateway` call did not hear from (`answers.missing-gateways`).
    missing: Vec<String>,
    pub(super) timers: Timers,
    log: Arc<LogBudget>,
    /// The number of the client event running, if one is.
    event: Option<u64>,
}

/// How a callback changed the session of the client it was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionChange {
    /// The session after the callback.
    pub session: Arc<Session>,
    /// How many session commands the callback sent for that client.
    pub writes: u64,
}

impl HostApi {
    /// Imports for an instance of `plugin`, talking to `gateways`, logging within `log`.
    pub fn new(
        plugin: Arc<str>,
        gateways: Arc<dyn Gateways>,
        timers: Timers,
        log: Arc<LogBudget>,
    ) -> Self {
        let view = Arc::new(SessionView {
            gateways,
            current: Mutex::new(None),
            refused: Mutex::new(None),
        });
        Self {
            plugin,
            api: GatewayApi::new(view.clone()),
            view,
            missing: Vec::new(),
            timers,
            log,
            event: None,
        }
    }

    /// Marks the start of an event about client `id`, whose session is `session`, numbered
    /// `event` by its gateway (none for one the worker host made).
    pub(super) fn begin_client_event(
        &mut self,
        id: ClientId,
        session: Arc<Session>,
        event: Option<u64>,
    ) {
        *self.view.current() = Some(CurrentClient {
            id,
            session,
            writes: 0,
        });
        self.event = event;
    }

    /// Marks the end of any event; says how the plugin changed the current client's session.
    pub(super) fn end_event(&mut self) -> Option<SessionChange> {
        self.event = None;
        self.view
            .current()
            .take()
            .filter(|c| c.writes > 0)
            .map(|c| SessionChange {
                session: c.session,
                writes: c.writes,
            })
    }

    /// An operation's answer as the WIT gives it; a refused argument is logged at debug, since
    /// the plugin is told and may handle it.
    fn answer<T: IntoWit>(
        &self,
        operation: &str,
        result: Result<T, OpError>,
    ) -> Result<T::Wit, GatewayError> {
        // A session write the view refused was not sent: the call answers with why.
        let refused = self.view.refused().take();
        let result = match refused {
            Some(e) => Err(e),
            None => result,
        };
        result.map(IntoWit::into_wit).map_err(|e| {
            tracing::debug!(plugin = &*self.plugin, operation, "refused: {e}");
            match e {
                OpError::Unreachable(_) => GatewayError::Unreachable,
                invalid @ OpError::InvalidArgument { .. } => {
                    GatewayError::InvalidArgument(invalid.to_string())
                }
            }
        })
    }
}

/// The client whose event is running, with its session as this instance knows it.
struct CurrentClient {
    id: ClientId,
    /// Shared with the event; the first write copies it.
    session: Arc<Session>,
    writes: u64,
}

/// The gateways as one instance sees them: session writes about the current client are
/// remembered, and reads of its session answered from what this instance knows.
///
/// A write that would take the current client's session past its limit is refused here,
/// where the whole session is known (the argument checks see only the changes): it is not
/// sent, and the call that made it answers `invalid-argument`. The gateway refuses it too, for
/// writes about other clients.
struct SessionView {
    gateways: Arc<dyn Gateways>,
    current: Mutex<Option<CurrentClient>>,
    /// Why the last session write was refused, until the call reports it.
    refused: Mutex<Option<OpError>>,
}

impl SessionView {
    fn current(&self) -> std::sync::MutexGuard<'_, Option<CurrentClient>> {
        // Only this instance's own calls take the lock, one at a time.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refused(&self) -> std::sync::MutexGuard<'_, Option<OpError>> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a session write to the current client's known session, if it is about it and
    /// keeps it within its limit (`bytes`: its size after the write); false if refused.
    fn write(
        &self,
        client: ClientId,
        argument: &str,
        bytes: impl FnOnce(&Session) -> usize,
        change: impl FnOnce(&mut Session),
    ) -> bool {
        let mut current = self.current();
        let Some(current) = current.as_mut().filter(|c| c.id == client) else {
            return true;
        };
        if let Err(reason) = check_session_bytes(bytes(&current.session)) {
            *self.refused() = Some(OpError::InvalidArgument {
                argument: argument.into(),
                reason: format!("the session would hold {reason}"),
            });
            return false;
        }
        change(Arc::make_mut(&mut current.session));
        current.writes += 1;
        true
    }
}

impl Gateways for SessionView {
    fn command(&self, command: Command) -> CommandFuture {
        // Only session writes touch what this instance knows; sends pass straight through.
        let accepted = match &command {
            Command::SetSession { client, session } => self.write(
                *client,
                "session",
                |_| session_bytes(session),
                |known| *known = session.clone(),
            ),
            Command::UpdateSession { client, changes } => self.write(
                *client,
                "changes",
                |known| session_bytes_after(known, session_bytes(known), changes),
                |known| known.extend(changes.iter().map(|(k, v)| (k.clone(), v.clone()))),
            ),
            _ => true,
        };
        if !accepted {
            return Box::pin(async { Ok(()) });
        }
        self.gateways.command(command)
    }

    fn query(&self, query: Query) -> QueryFuture {
        // Only the session queries need what this instance knows; the rest pass through.
        if !matches!(query, Query::SessionOf(_) | Query::SessionsOfGroup(_)) {
            return self.gateways.query(query);
        }
        let known = self.current().as_ref().map(|c| (c.id, c.session.clone()));
        match (query, known) {
            (Query::SessionOf(client), Some((id, session))) if client == id => {
                Box::pin(async move { Ok(Reply::Session(Some(Session::clone(&session)))) })
            }
            (query @ Query::SessionsOfGroup(_), Some((id, session))) => {
                let asked = self.gateways.query(query);
                Box::pin(async move {
                    let mut reply = asked.await?;
                    if let Reply::Sessions(sessions) = &mut reply
                        && let Some((_, stale)) = sessions.iter_mut().find(|(c, _)| *c == id)
                    {
                        *stale = Session::clone(&session);
                    }
                    Ok(reply)
                })
            }
            (query, _) => self.gateways.query(query),
        }
    }
}

/// An argument type as the WIT passes it.
pub(super) trait FromWit {
    /// The WIT's Rust rendering.
    type Wit;
}

impl FromWit for ClientId {
    type Wit = String;
}

impl FromWit for Vec<ClientId> {
    type Wit = Vec<String>;
}

impl FromWit for Excluded {
    type Wit = Vec<String>;
}

impl FromWit for Name {
    type Wit = String;
}

impl FromWit for Vec<Name> {
    type Wit = Vec<String>;
}

impl FromWit for String {
    type Wit = String;
}

impl FromWit for Bytes {
    type Wit = Vec<u8>;
}

impl FromWit for Option<Bytes> {
    type Wit = Option<Vec<u8>>;
}

impl FromWit for Session {
    type Wit = types::Session;
}

/// An answer as the WIT returns it.
pub(super) trait IntoWit {
    /// The WIT's Rust rendering.
    type Wit;
    /// Converts the answer.
    fn into_wit(self) -> Self::Wit;
}

/// Answers that the WIT renders as they are.
macro_rules! as_is {
    ($($t:ty),*) => {
        $(impl IntoWit for $t {
            type Wit = $t;
            fn into_wit(self) -> $t {
                self
            }
        })*
    };
}

as_is!((), bool, u32, String);

impl IntoWit for ClientId {
    type Wit = String;
    fn into_wit(self) -> String {
        self.to_string()
    }
}

impl IntoWit for Session {
    type Wit = types::Session;
    fn into_wit(self) -> types::Session {
        self.into_iter().collect()
    }
}

impl<T: IntoWit> IntoWit for Option<T> {
    type Wit = Option<T::Wit>;
    fn into_wit(self) -> Self::Wit {
        self.map(IntoWit::into_wit)
    }
}

impl<T: IntoWit> IntoWit for Vec<T> {
    type Wit = Vec<T::Wit>;
    fn into_wit(self) -> Self::Wit {
        self.into_iter().map(IntoWit::into_wit).collect()
    }
}

impl<K: IntoWit, V: IntoWit> IntoWit for Keyed<K, V> {
    type Wit = Vec<(K::Wit, V::Wit)>;
    fn into_wit(self) -> Self::Wit {
        self.0
            .into_iter()
            .map(|(k, v)| (k.into_wit(), v.into_wit()))
            .collect()
    }
}

/// Generates the `gateway` imports from the table of operations.
macro_rules! wit_imports {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident($api:ident $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty $body:block
    )*) => {
        impl gateway::Host for HostApi {
            $(
                async fn $name(
                    &mut self
                    $(, $arg: <$ty as FromWit>::Wit)*
                ) -> Result<<$ret as IntoWit>::Wit, GatewayError> {
                    let (result, missing) = partial::gathering(self.api.$name($($arg),*)).await;
                    self.missing = missing.iter().map(ToString::to_string).collect();
                    self.answer(stringify!($name), result)
                }
            )*
        }
    };
}

gateway_operations!(wit_imports);

impl types::Host for HostApi {}

impl answers::Host for HostApi {
    async fn missing_gateways(&mut self) -> Vec<String> {
        self.missing.clone()
    }
}

impl HostApi {
    /// A timer past `max_timers` traps the instance: counted, and logged with its trap.
    fn refused_timer(&self, set: Result<u64, TooManyTimers>) -> wasmtime::Result<u64> {
        set.inspect_err(|_| metrics::plugin_limit(&self.plugin, metrics::PluginLimit::TimerRefused))
            .map_err(wasmtime::Error::from)
    }
}

impl timers::Host for HostApi {
    async fn set_interval(&mut self, period_ms: u32) -> wasmtime::Result<u64> {
        let set = self
            .timers
            .set_interval(Duration::from_millis(period_ms.into()));
        self.refused_timer(set)
    }

    async fn set_timeout(&mut self, delay_ms: u32) -> wasmtime::Result<u64> {
        let set = self
            .timers
            .set_timeout(Duration::from_millis(delay_ms.into()));
        self.refused_timer(set)
    }

    async fn cancel(&mut self, id: u64) {
        self.timers.cancel(id);
    }
}

impl event_info::Host for HostApi {
    async fn current_event(&mut self) -> Option<u64> {
        self.event
    }
}

impl log::Host for HostApi {
    async fn log(&mut self, level: Level, message: String) {
        if !self.log.admit(message.len()) {
            return;
        }
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
