//! The gateway-operations port: what anything that asks the gateways for something (a plugin's
//! imports, the push API, the Rust push client) needs of whatever carries the request.
//!
//! The worker host's and the push client's network links implement [`Gateways`]
//! ([`crate::links::GatewayLinks`]); tests pass a recording double. Callers above the port
//! never see a socket, and the transports below it never see an argument to validate.

use std::pin::Pin;

use super::command::Command;
use super::query::{Query, Reply};

/// A boxed future returned by [`Gateways::query`].
pub type QueryFuture = Pin<Box<dyn Future<Output = Result<Reply, Unreachable>> + Send>>;

/// A boxed future returned by [`Gateways::command`].
pub type CommandFuture = Pin<Box<dyn Future<Output = Result<(), Unreachable>> + Send>>;

/// Carries gateway operations to the gateways they concern.
pub trait Gateways: Send + Sync + 'static {
    /// Queues `command` to the gateway(s) it concerns; waits only for queue space, never for
    /// the gateway. Fails if it could be queued to none (the client's gateway, or every
    /// gateway, is not linked).
    fn command(&self, command: Command) -> CommandFuture;

    /// Sends `query` to the gateway(s) it concerns and merges their answers, waiting a
    /// bounded time.
    fn query(&self, query: Query) -> QueryFuture;
}

/// No gateway the operation needed is linked, or none answered in time.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("no gateway reachable")]
pub struct Unreachable;
