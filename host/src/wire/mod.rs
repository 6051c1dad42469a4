//! The internal links' protocol: how gateways, worker hosts and registers talk to each other.
//!
//! Every link is a TCP connection (over TLS with `[internal_tls]`, see `crate::transport`)
//! that starts with [`handshake`] (mutual proof of the shared
//! secret, version agreement) and then carries length-prefixed postcard frames ([`codec`]) of
//! the enums in [`messages`], one enum per direction. This module knows nothing of sockets,
//! addresses or tasks: it is bytes in, typed messages out, so it can be tested over in-memory
//! pipes and reused by every role.

pub mod codec;
pub mod handshake;
mod link_error;
pub mod messages;
pub mod queue;

pub use codec::{FrameReader, FrameWriter, MAX_FRAME, WireError};
pub use handshake::{HandshakeError, PROTOCOL_VERSION, Peer, accept_handshake, connect_handshake};
pub use link_error::{LinkError, TlsRefusal};
pub use messages::{FromRegister, ToGateway, ToRegister, ToWorker};
