//! The {{name}} wasmgate plugin: every message goes back to the client that sent it.
//!
//! Each callback of the `Plugin` trait has a default that does nothing: implement those you
//! need (`on_connect`, `on_close`, `on_websocket_connect`, `on_timer`, …). The SDK's guide
//! (guest-sdk/guide/rust.md in the wasmgate repository) lists them and the gateway calls.

use wasmgate_sdk::{Client, Plugin};

struct App;

impl Plugin for App {
    fn on_message(client: Client, data: Vec<u8>) {
        // Fails only if the client left meanwhile: nobody to answer.
        let _ = client.reply(data);
    }
}

wasmgate_sdk::export!(App);
