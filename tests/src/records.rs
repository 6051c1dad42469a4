//! The records a worker host hands a plugin's callbacks, for driving a plugin outside a
//! cluster: the runtime's tests, the plugin-call benchmark, `wasmgate-bench --floor`.

use wasmgate::worker::Client;
use wasmgate::worker::runtime::EventClient;

/// The id of [`client`]'s client.
pub const CLIENT_ID: &str = "7f00000108fc00000008";

/// A WebSocket client of 127.0.0.1:7373 (listener `ws`) with `session`, bound to no uid.
pub fn client(session: &[(&str, &str)]) -> EventClient {
    let record = Client {
        id: CLIENT_ID.into(),
        remote_addr: "127.0.0.1".into(),
        remote_port: 40000,
        gateway_addr: "127.0.0.1".into(),
        gateway_port: 7373,
        listener: "ws".into(),
        uid: None,
        session: session
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    EventClient::try_from(record).expect("a well-formed client id")
}
