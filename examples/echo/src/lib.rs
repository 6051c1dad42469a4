//! The smallest wasmgate plugin: every message goes back to the client that sent it.

use wasmgate_sdk::{Client, Plugin};

struct Echo;

impl Plugin for Echo {
    fn on_message(client: Client, data: Vec<u8>) {
        client.reply(data);
    }
}

wasmgate_sdk::export!(Echo);
