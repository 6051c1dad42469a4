//! The smallest wasmgate plugin: every message goes back to the client that sent it.

use wasmgate_sdk::{Client, Plugin};

struct Echo;

impl Plugin for Echo {
    fn on_message(client: Client, data: Vec<u8>) {
        // The client's gateway is linked (it sent the event), so this only fails if it left.
        let _ = client.reply(data);
    }
}

wasmgate_sdk::export!(Echo);
