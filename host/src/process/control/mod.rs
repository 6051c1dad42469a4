//! The control endpoint: how `wasmgate stop|reload|status|connections` reach a running server
//! without anyone knowing its pid.
//!
//! It is a Unix socket (`[control] socket`, beside the configuration file by default): there
//! is no port to pick or to firewall. The file is owner-only from its first moment (bound in a
//! private directory, then moved into place), and a peer of another uid (`SO_PEERCRED`) is refused too.
//! One request per connection, one JSON line each way ([`protocol`]). The socket is also the
//! "already running" lock: a start that finds a server answering on it refuses, and a socket
//! file left by a crash (nobody answers) is replaced.
//!
//! - [`protocol`]: the requests and answers.
//! - [`client`]: the command line's side.
//! - [`server`]: the running server's side.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{AskError, ask};
pub use protocol::{Request, Response};
pub use server::{ControlSocket, serve};
