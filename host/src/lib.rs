//! wasmgate: a long-connection application server in the architecture of GatewayWorker, with
//! the business logic in sandboxed WebAssembly components.
//!
//! Clients connect to **gateways**, which hold the connections, groups, uid bindings and
//! sessions. Gateways forward client events over long-lived internal links to **worker hosts**,
//! which run the plugins' Event callbacks in wasmtime; plugins call back into the gateways
//! through the `gateway` interface. A **register** tells worker hosts where the gateways are and
//! stays off the data path.
//!
//! # Layout
//! - [`client_id`]: the cluster-wide client id, which says which gateway holds the client.
//! - [`ops`]: every gateway operation as data (commands, queries, replies).
//! - [`worker`]: the worker host: the wasm runtime, the plugins, dispatch of events to them.
//! - [`gateway`]: the gateway: client connections, groups, uids, sessions.
//! - [`config`]: the configuration file.
//! - [`process`]: runs the configured roles in one process, with what belongs to the whole
//!   process (the control socket, `/metrics`, the push API's listener); [`cli`]: the command
//!   line; [`metrics`]: counters and histograms.
//! - [`wire`]: the internal links' protocol: frame codec, secret handshake, messages;
//!   [`local`]: the same links as channels when both ends share a process; [`links`]: a worker
//!   host's or push client's links to every gateway; [`transport`]: where those links are
//!   dialled and accepted, in the clear or over TLS (`[internal_tls]`).
//! - [`register`]: discovery: tells worker hosts where the gateways are; off the data path.
//! - [`nats`]: NATS as the cluster engine instead (`[cluster] nats`): discovery by
//!   announcements, commands published only where their recipients are.
//! - [`push`]: pushing from other applications: the HTTP push API and the Rust [`push::PushClient`].
//! - [`http_listener`]: the bounds every HTTP listener keeps (`[http]`); [`lazy_timeout`]:
//!   timeouts that arm no timer for work done in its first poll.
//! - [`gatewayworker`]: GatewayWorker's own wire formats, so PHP BusinessWorkers and
//!   GatewayClient work against wasmgate.
//! - [`web`]: a static-file HTTP server for pages that talk to the gateways (the chat demo's).
//! - [`admin`]: the admin page: the whole cluster as this process's links see it.

pub mod admin;
pub mod cli;
pub mod client_id;
pub mod config;
pub mod gateway;
pub mod gatewayworker;
pub mod http_listener;
pub mod lazy_timeout;
pub mod links;
pub mod local;
pub mod metrics;
pub mod nats;
pub mod ops;
pub mod process;
pub mod push;
pub mod register;
pub mod transport;
pub mod web;
pub mod wire;
pub mod worker;

#[cfg(test)]
mod layering_tests;
#[cfg(test)]
mod openapi_tests;
