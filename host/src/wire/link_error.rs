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
    /// TLS on the link was refused or failed, on either end.
    #[error(transparent)]
    Tls(#[from] TlsRefusal),
}

/// Why a link's TLS layer refused the peer: the two ends disagree on TLS, or the peer's
/// certificate (or ours, to the peer) was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TlsRefusal {
    /// This end requires TLS (`[internal_tls]`) and the peer spoke plaintext.
    #[error("the peer speaks plaintext, but internal links here require TLS ([internal_tls])")]
    PlaintextPeer,
    /// This end is plaintext and the peer opened TLS.
    #[error("the peer opened TLS, but internal links here are plaintext (no [internal_tls])")]
    TlsPeer,
    /// The TLS handshake failed: a certificate not signed by the cluster's CA, none at all,
    /// a wrong server name, or a peer that closed the connection during it.
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// The TLS handshake did not finish in time.
    #[error("the TLS handshake did not finish within {0:?}")]
    Timeout(Duration),
}

impl TlsRefusal {
    /// A short, bounded name for the metric of refused TLS links.
    pub fn reason(&self) -> &'static str {
        match self {
            TlsRefusal::PlaintextPeer => "plaintext_peer",
            TlsRefusal::TlsPeer => "tls_peer",
            TlsRefusal::Handshake(_) => "handshake",
            TlsRefusal::Timeout(_) => "timeout",
        }
    }
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
            LinkError::Tls(_) => "tls",
        }
    }

    /// Whether the link ended in a way that is not worth a warning: a port probe (a load
    /// balancer's health check) that connects and leaves during the handshake.
    pub fn is_quiet(&self) -> bool {
        matches!(self, LinkError::Handshake(e) if e.is_quiet())
    }
}
