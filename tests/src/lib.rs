//! End-to-end tests of wasmgate: real registers, gateways and worker hosts on loopback, driven by
//! real clients. The tests live in `tests/`; this library holds what they share.
//!
//! The build script compiles the test plugins for `wasm32-wasip2` (into `target/plugins/`), so
//! `cargo test` always runs against plugins built from the current sources.

pub mod client;
pub mod cluster;
pub mod crowd;
pub mod daemon;
pub mod delivery;
pub mod http_server;
pub mod nats;
pub mod netns;
pub mod polyglot;
pub mod postgres;
pub mod prometheus;
pub mod records;
pub mod redis;
pub mod tools;

/// Absolute paths of the test plugins' `.wasm` components, built by this crate's build script.
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}
