//! The host side of the `wasmgate:plugin` world, generated once from `wit/`.
//!
//! Every other module takes the WIT types from here, so the contract has exactly one Rust
//! rendering in the host.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});

// `self::`: in doctests the crate itself is also in scope as `wasmgate`.
pub use self::wasmgate::plugin::types::{
    Client, GatewayError, Level, Session, WebsocketRequest, WorkerInfo,
};
