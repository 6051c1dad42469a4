//! Why an internal link ended — a register link, or a link between a gateway and a worker
//! host or push client — on the end where it happened, for its log line.

use std::io;
use std::time::Duration;

use super::codec::WireError;
use super::handshake::{HandshakeError, Peer};

/// Why an internal link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// Reading or writing a frame failed, or the peer sent something that is not a message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer could not be reached.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// The peer closed the link, or this end's writer for it is gone.
    #[error("the link was closed")]
    Closed,
    /// The peer sent nothing for too long.
    #[error("the peer was silent for {0:?}")]
    Silent(Duration),
    /// The peer does not read what we send: this many messages are waiting.
    #[error("the peer stopped reading: {0} messages are waiting")]
    Backlogged(usize),
    /// A peer that did not authenticate as a gateway announced a gateway address.
    #[error("a peer with role {0:?} announced a gateway address")]
    NotAGateway(Peer),
    /// A client event named a listener the gateway never announced.
    #[error("an event names listener {0}, which the gateway did not announce")]
    UnknownListener(u16),
    /// A gateway sent a presence callback as a client event: only a worker host makes those.
    #[error("a client event carries a presence callback, which only a worker host makes")]
    PresenceEvent,
}

/// A link's queue whose other end is gone: the link is closing.
impl<T> From<tokio::sync::mpsc::error::SendError<T>> for LinkError {
    fn from(_: tokio::sync::mpsc::error::SendError<T>) -> Self {
        LinkError::Closed
    }
}

impl LinkError {
    /// A short, bounded name for the metric of links closed.
    pub fn reason(&self) -> &'static str {
        match self {
            LinkError::Handshake(_) => "handshake",
            LinkError::Wire(e) => e.reason(),
            LinkError::Connect(_) => "io",
            LinkError::Closed => "closed",
            LinkError::Silent(_) => "silent",
            LinkError::Backlogged(_) => "write_timeout",
            LinkError::NotAGateway(_)
            | LinkError::UnknownListener(_)
            | LinkError::PresenceEvent => "bad_frame",
        }
    }

    /// Whether the link ended in a way that is not worth a warning: a port probe (a load
    /// balancer's health check) that connects and leaves during the handshake.
    pub fn is_quiet(&self) -> bool {
        matches!(self, LinkError::Handshake(e) if e.is_quiet())
    }
}
