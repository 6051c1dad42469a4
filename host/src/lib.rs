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
//! - [`worker`]: the worker host: the wasm runtime, the plugins, the links to gateways.
//! - [`gateway`]: the gateway: client connections, groups, uids, sessions.
//! - [`config`]: the configuration file.
//! - [`server`]: runs the configured roles in one process; [`cli`]: the command line;
//!   [`control`]: the socket the command line reaches a running server on; [`metrics`]:
//!   counters and the Prometheus endpoint.
//! - [`wire`]: the internal links' protocol: frame codec, secret handshake, messages;
//!   [`local`]: the same links as channels when both ends share a process.
//! - [`register`]: discovery: tells worker hosts where the gateways are; off the data path.
//! - [`push`]: pushing from other applications: the HTTP push API and the Rust [`push::PushClient`].
//! - [`web`]: a static-file HTTP server for pages that talk to the gateways (the chat demo's).

pub mod cli;
pub mod client_id;
pub mod config;
pub mod control;
pub mod gateway;
pub mod local;
pub mod metrics;
pub mod ops;
pub mod push;
pub mod register;
pub mod server;
pub mod web;
pub mod wire;
pub mod worker;
