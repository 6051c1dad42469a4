//! Write wasmgate plugins in Rust.
//!
//! A plugin is a WebAssembly component that handles the events of long-lived client connections
//! (connect, message, close, timers) and talks back through the gateways that hold them. This
//! crate owns the bindings generated from wasmgate's WIT contract (`wit/plugin.wit`), so a plugin
//! implements [`Plugin`], overriding only the callbacks it needs, and calls [`export!`]:
//!
//! ```
//! struct Echo;
//! impl wasmgate_sdk::Plugin for Echo { fn on_message(client: wasmgate_sdk::Client, data: Vec<u8>) { let _ = wasmgate_sdk::gateway::send_to_client(&client.id, &data); } }
//! wasmgate_sdk::export!(Echo);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip2`
//! (`cargo build --release --target wasm32-wasip2`) and drop the `.wasm` file into the worker
//! host's plugin directory; the file name without `.wasm` is the app name gateways refer to.
//!
//! What a plugin can ask for:
//! - [`gateway`]: sends, closes, uids, groups and sessions, GatewayWorker's `Lib\Gateway` call
//!   for call. Every call returns `Result<_, GatewayError>`: sends are fire-and-forget (`Ok`
//!   means queued), and an argument that can never be valid (an empty group) is refused.
//! - [`answers`]: which gateways the latest cluster-wide query missed
//!   ([`answers::missing_gateways`]), so a count or list some gateway did not answer in time is
//!   known to be partial.
//! - [`timers`]: intervals and timeouts that fire [`Plugin::on_timer`].
//! - [`log`]: levelled lines in the host's log, tagged with the plugin's name.
//! - [`kv`]: key-value storage (`wasi:keyvalue`), where the app is granted it.
//! - [`sql`]: the SQL databases the app is granted (SQLite or PostgreSQL), typed rows.
//! - [`http`]: outbound HTTP requests, to the origins the app is granted.
//! - [`Session`] and the methods on [`Client`]: typed access to a client's session and replies.
//! - `json` (cargo feature `json`): the same sends and session values as JSON via serde.
//!
//! Callbacks are associated functions without `self`: the host may run any number of instances of
//! a plugin and replace one with a fresh one at any time (after a trap, on a hot reload), so state
//! that must outlive an instance belongs in the session, groups or uids; per-instance caches go in
//! the plugin's own statics.

/// The bindings `wit-bindgen` generates from `wit/`, for what this crate does not wrap.
#[allow(
    missing_docs,
    reason = "generated from wit/; the WIT doc comments carry over where the WIT has them"
)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        // `crate::export!` expands to this macro in the plugin's crate.
        pub_export_macro: true,
        // The standard interfaces the world imports (`wasi:keyvalue`) are generated here
        // too, not taken from another crate.
        generate_all,
    });
}

/// The bindings of the optional `presence` export (`world presence-callbacks`), generated
/// apart from [`bindings`] so that a plugin exports them only when it asks
/// ([`export_presence!`]).
#[allow(
    missing_docs,
    reason = "generated from wit/; the WIT doc comments carry over where the WIT has them"
)]
pub mod presence_bindings {
    wit_bindgen::generate!({
        world: "presence-callbacks",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_presence",
        with: { "wasmgate:plugin/types@0.2.0": crate::bindings::wasmgate::plugin::types },
    });
}

pub mod http;
#[cfg(feature = "json")]
pub mod json;
pub mod kv;
pub mod log;
mod session;
pub mod sql;

use bindings::exports::wasmgate::plugin::events::Guest;
pub use bindings::wasmgate::plugin::answers;
pub use bindings::wasmgate::plugin::event_info::current_event;
pub use bindings::wasmgate::plugin::gateway;
pub use bindings::wasmgate::plugin::timers;
pub use bindings::wasmgate::plugin::timers::TimerId;
pub use bindings::wasmgate::plugin::types::{
    Client, ClientId, GatewayError, WebsocketRequest, WorkerInfo,
};
pub use session::Session;

/// The event callbacks of a plugin; every one defaults to doing nothing (or accepting).
///
/// Events of one client arrive one at a time and in order: [`on_connect`](Plugin::on_connect),
/// then [`on_websocket_connect`](Plugin::on_websocket_connect) for WebSocket clients, every
/// [`on_message`](Plugin::on_message), then [`on_close`](Plugin::on_close). A panic ends only
/// the instance that panicked; the host serves the next event with a fresh one.
pub trait Plugin {
    /// Runs once per instance before any client event; an error refuses this plugin version.
    fn on_worker_start(_info: WorkerInfo) -> Result<(), String> {
        Ok(())
    }

    /// A client connected (for WebSocket clients: after the handshake).
    fn on_connect(_client: Client) {}

    /// A WebSocket client completed its handshake; an error closes it (code 1008, that reason).
    fn on_websocket_connect(_client: Client, _request: WebsocketRequest) -> Result<(), String> {
        Ok(())
    }

    /// One complete message from a client.
    fn on_message(_client: Client, _data: Vec<u8>) {}

    /// The client is gone; its groups and uid are already released.
    fn on_close(_client: Client) {}

    /// A timer set through [`timers`] fired.
    fn on_timer(_id: TimerId) {}

    /// The instance is being stopped: the host shuts down or a new version replaced this one.
    fn on_worker_stop() {}
}

/// Makes every [`Plugin`] the generated `Guest`, so [`export!`] needs no glue code per plugin.
impl<P: Plugin> Guest for P {
    fn on_worker_start(info: WorkerInfo) -> Result<(), String> {
        <P as Plugin>::on_worker_start(info)
    }

    fn on_connect(client: Client) {
        <P as Plugin>::on_connect(client)
    }

    fn on_websocket_connect(client: Client, request: WebsocketRequest) -> Result<(), String> {
        <P as Plugin>::on_websocket_connect(client, request)
    }

    fn on_message(client: Client, data: Vec<u8>) {
        <P as Plugin>::on_message(client, data)
    }

    fn on_close(client: Client) {
        <P as Plugin>::on_close(client)
    }

    fn on_timer(id: TimerId) {
        <P as Plugin>::on_timer(id)
    }

    fn on_worker_stop() {
        <P as Plugin>::on_worker_stop()
    }
}

/// Told when a uid gets its first connection in the cluster and when its last one closes
/// (WIT `presence`). Optional: implement it and call [`export_presence!`] beside [`export!`];
/// a plugin that does not is sent nothing about presence.
///
/// Each transition is told once, to one instance of one worker host, while the cluster is
/// stable; when a worker host is lost its uids may be told online again (see the WIT).
pub trait Presence {
    /// `uid` got its first connection in the cluster: `client`, whose binding did it.
    fn on_uid_online(uid: String, client: Client);

    /// `uid`'s last connection is gone: `client` is the one whose unbinding or close did it.
    fn on_uid_offline(uid: String, client: Client);
}

impl<P: Presence> presence_bindings::exports::wasmgate::plugin::presence::Guest for P {
    fn on_uid_online(uid: String, client: Client) {
        <P as Presence>::on_uid_online(uid, client)
    }

    fn on_uid_offline(uid: String, client: Client) {
        <P as Presence>::on_uid_offline(uid, client)
    }
}

/// Exports a [`Presence`] implementation as the component's `presence`, beside the
/// [`export!`] of its [`Plugin`]: `export_presence!(MyPlugin);`. Native builds export
/// nothing, as [`export!`].
#[macro_export]
macro_rules! export_presence {
    ($plugin:ident) => {
        #[cfg(target_family = "wasm")]
        $crate::presence_bindings::export_presence!($plugin with_types_in $crate::presence_bindings);
        #[cfg(not(target_family = "wasm"))]
        const _: () = {
            const fn is_presence<P: $crate::Presence>() {}
            is_presence::<$plugin>();
        };
    };
}

/// Exports a [`Plugin`] implementation as the component's `events`: `export!(MyPlugin);`.
///
/// Use it once per plugin crate, at module level, with the name of a type in scope.
///
/// Only a wasm build exports anything. The export symbols are named as the component model
/// wants (`wasmgate:plugin/events@0.2.0#on-message`), and a native linker cannot list such
/// names in a shared library's version script, so a native build of a plugin crate (`cargo
/// build --workspace`, its unit tests) compiles and checks the plugin but exports nothing.
#[macro_export]
macro_rules! export {
    ($plugin:ident) => {
        #[cfg(target_family = "wasm")]
        $crate::bindings::export!($plugin with_types_in $crate::bindings);
        // Still names the plugin, so a native build checks that it is a `Plugin` and does not
        // report its callbacks as dead code.
        #[cfg(not(target_family = "wasm"))]
        const _: () = {
            const fn is_plugin<P: $crate::Plugin>() {}
            is_plugin::<$plugin>();
        };
    };
}

impl Client {
    /// This client's session as the gateway sent it with the event.
    pub fn session(&self) -> Session {
        Session::from(self.session.clone())
    }

    /// Replaces this client's whole session at its gateway (`set-session`).
    pub fn set_session(&self, session: &Session) -> Result<(), GatewayError> {
        gateway::set_session(&self.id, session.as_slice())
    }

    /// Sends `data` to this client, as [`gateway::send_to_client`]: `Ok` means queued.
    pub fn reply(&self, data: impl AsRef<[u8]>) -> Result<(), GatewayError> {
        gateway::send_to_client(&self.id, data.as_ref())
    }
}
