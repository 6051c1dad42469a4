//! Discovery: the register tells worker hosts where the gateways are, and nothing else.
//!
//! Gateways announce their internal (worker-facing) address; worker hosts and push clients
//! ask for the list of gateway addresses and get it again after every change. **The register
//! never carries client traffic**: worker hosts link to the gateways directly, so when every
//! register is down, running traffic goes on; only new gateways go unnoticed until a register
//! is back and everyone has re-registered with it. Several registers may be listed; members
//! register with every one, so one register down changes nothing.
//!
//! Both ends live here:
//! - [`server`]: the register itself, [`run`], and its [`Directory`] of gateways (which the
//!   register's GatewayWorker listener, `crate::gatewayworker::register`, shares);
//! - [`member`]: what a gateway, a worker host or a push client runs to stay registered,
//!   [`spawn_registration`];
//! - [`merge`]: how a member turns the lists of several registers into one;
//! - [`reach`]: which of its registers a member is linked to ([`RegisterReach`]), for
//!   `status` and the outage error;
//! - [`link`]: what both ends of a register link share (clocks, the writer task, errors).
//!
//! What differs from GatewayWorker's register, on purpose:
//! - links start with the [`crate::wire::handshake`] (no secret in clear) and carry postcard
//!   frames, not newline-JSON built by string concatenation;
//! - both ends ping and drop a link that stays silent, where GatewayWorker only notices a dead
//!   peer through a TCP error;
//! - a member merges the lists of all the registers it is linked to instead of letting each
//!   register's broadcast replace the previous one;
//! - a peer that connects and says nothing (a TCP probe) is dropped at debug level.

mod link;
mod member;
mod merge;
mod reach;
mod server;
#[cfg(test)]
mod tests;

pub use member::{Announce, spawn_registration};
pub use reach::{ReachReport, RegisterReach, Unreachable};
pub use server::{Directory, DirectoryEntry, ListWatch, Listing, next_list, run, serve_each};
