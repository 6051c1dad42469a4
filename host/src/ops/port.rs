//! The gateway-operations port: what anything that asks the gateways for something (a plugin's
//! imports, the push API, the Rust push client) needs of whatever carries the request.
//!
//! The worker host's and the push client's network links implement [`Gateways`]
//! ([`crate::links::GatewayLinks`]); tests pass a recording double. Callers above the port
//! never see a socket, and the transports below it never see an argument to validate.

use std::net::{SocketAddr, SocketAddrV4};
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

/// Why an operation reached no gateway. An operation about one client concerns only the
/// gateway its id names, so its failure names that gateway: the others being linked does not
/// help it.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum Unreachable {
    /// No gateway the operation concerns is linked, or none answered in time.
    #[error("no gateway reachable")]
    NoGateway,
    /// The client's gateway is not linked: it is gone (stopped, or the id is from before its
    /// restart), or not linked yet. Named as the id names it: an IPv6 gateway by its tag.
    #[error("the client's gateway {0} is not linked")]
    NotLinked(SocketAddrV4),
    /// The client's gateway is linked but did not answer the query in time (its address).
    #[error("the client's gateway {0} did not answer in time")]
    Silent(SocketAddr),
    /// NATS carries commands (`[cluster] nats`) and its connection is down.
    #[error("the NATS connection is down")]
    Nats,
}
