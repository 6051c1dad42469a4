//! The gateway operations: every request a plugin, the push API or the Rust client can make of
//! the gateways, as data.
//!
//! Each operation is defined once, in the table behind [`GatewayApi`]; plugins, the push API
//! and the Rust push client all offer that table. An operation becomes a [`Command`] or a
//! [`Query`] sent through the [`Gateways`] port; worker hosts carry it over the internal
//! links; gateways execute it against their state. One vocabulary for all of these means an
//! operation cannot mean different things on different paths.
//!
//! Commands are fire-and-forget. Queries are answered by every gateway they are sent to, and
//! the answers are combined with [`Reply::merge`]; an answer some gateway missed is flagged
//! through [`partial`]. The acknowledgement of a client event waits until the commands its
//! callback sent have arrived where they went ([`marks`]).

mod api;
mod args;
mod cluster;
mod command;
mod error;
pub mod marks;
pub mod partial;
mod port;
mod query;

pub(crate) use api::gateway_operations;
pub use api::{GatewayApi, OPERATIONS};
pub use args::{
    Argument, Excluded, Keyed, MAX_NAME_BYTES, MAX_SESSION_BYTES, Name, check_name,
    check_session_bytes, session_bytes, session_bytes_after,
};
pub use cluster::{
    ClusterView, FaultCounts, FaultReport, GatewayView, ListenerView, PluginReport, WorkerReport,
};
pub use command::{Command, Session};
pub use error::OpError;
pub use port::{CommandFuture, Gateways, QueryFuture, Unreachable};
pub use query::{GroupMembers, MismatchedReply, Query, Reply};
