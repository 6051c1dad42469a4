//! GatewayWorker compatibility: wasmgate speaking GatewayWorker's own wire protocols
//! (reference `gatewayworker.md` §9), so that PHP BusinessWorkers and PHP backends using
//! GatewayClient keep working, unchanged, against wasmgate's register and gateways.
//!
//! It sits above the roles: it translates GatewayWorker's formats into wasmgate's operations
//! and membership and adds no state or operation of its own. The process starts its
//! listeners beside the roles they serve.
//!
//! It is IPv4 only, as GatewayWorker is: PHP decodes an IPv4 address from every client id and
//! reads `IPv4:port` lists, so a gateway advertising IPv6 (whose ids hold a tag, not its
//! address) cannot have `gatewayworker = true`, and only IPv4 GatewayWorker addresses are
//! listed to PHP members.
//!
//! # Layout
//! - [`php_serial`]: the subset of PHP's `serialize()` format that sessions and query replies
//!   use, decoded under hard limits;
//! - [`session`]: a wasmgate session as a serialized PHP `$_SESSION` and back, losing
//!   nothing PHP stored;
//! - [`packet`]: GatewayProtocol, the 28-byte-header packets of a gateway's internal port,
//!   and the length-prefixed query replies;
//! - [`gateway`]: GatewayProtocol on a gateway's internal port (`gatewayworker = true`, the
//!   connections the port hands over), executing GatewayClient's commands as operations of
//!   the table;
//! - [`raw`]: the raw flag's bodies, read back into the client protocol's messages;
//! - [`business`]: PHP BusinessWorkers' links (`CMD_WORKER_CONNECT`): the client events of
//!   the listeners of app `php:<name>`, routed by the gateway's own router;
//! - [`register`]: the register's GatewayWorker listener (`gatewayworker_listen`), over the
//!   register's own directory of gateways.

pub mod business;
pub mod gateway;
pub mod packet;
pub mod php_serial;
pub mod raw;
pub mod register;
pub mod session;
