//! The host side of the `wasmgate:plugin` world, generated once from `wit/`.
//!
//! Every other module takes the WIT types from here, so the contract has exactly one Rust
//! rendering in the host.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    // Setting a timer past `max_timers` traps: the timer functions return no error the
    // guest could ignore, and a limit breach ends only that instance.
    imports: {
        "wasmgate:plugin/timers.set-interval": async | trappable,
        "wasmgate:plugin/timers.set-timeout": async | trappable,
        default: async,
    },
    exports: { default: async },
    // The key-value resources are the host's own handles (see `worker::kv`).
    with: {
        "wasi:keyvalue/store.bucket": super::kv::handles::BucketHandle,
        "wasi:keyvalue/atomics.cas": super::kv::handles::CasHandle,
    },
});

// `self::`: in doctests the crate itself is also in scope as `wasmgate`.
pub use self::wasmgate::plugin::types::{
    Client, GatewayError, Level, Session, WebsocketRequest, WorkerInfo,
};

/// The optional `presence` export (`world presence-callbacks`), rendered apart from `plugin`
/// so that a component without it still loads: the runtime looks it up per component.
pub mod presence {
    wasmtime::component::bindgen!({
        world: "presence-callbacks",
        path: "../wit",
        exports: { default: async },
        with: { "wasmgate:plugin/types": crate::worker::bindings::wasmgate::plugin::types },
    });

    pub use self::exports::wasmgate::plugin::presence::{Guest, GuestIndices};
}
