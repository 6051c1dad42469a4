//! The clients whose events an instance ran and whose close it has not seen, by gateway: what
//! a worker host needs to run `on-close` for the clients of a gateway that was lost (killed,
//! its machine gone), since their connections went with it and no close event will come.
//!
//! Kept per instance driver, so the hot path takes no lock: a client's events always reach
//! the same instance (by a hash of its id), so the instance that ran them sees its close too.
//! An entry is the client's id, address, listener and uid, tens of bytes; it goes with the
//! client's close event, or with its gateway when that is declared lost. A client whose
//! events moved to another host (this host's link to its gateway broke, or its app left
//! here) may stay listed here until its gateway goes, and get a second `on-close` then:
//! `on-close` is at least once.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use crate::client_id::{ClientHasher, ClientId, ClientMap};
use crate::wire::messages::{ClientContext, EventKind, ListenerInfo};

/// What is kept of one client: enough for the record its `on-close` receives.
struct Seen {
    listener: Arc<ListenerInfo>,
    /// The gateway's index of the listener.
    index: u16,
    remote: SocketAddr,
    uid: Option<String>,
}

/// The clients an instance ran events of and has not seen close, by gateway (hashed as
/// client ids are: this map is touched by every event).
#[derive(Default)]
pub struct ClientsSeen(HashMap<SocketAddrV4, ClientMap<Seen>, ClientHasher>);

impl ClientsSeen {
    /// Notes an event of `client` about to run: remembered until its close.
    pub fn saw(&mut self, listener: &Arc<ListenerInfo>, client: &ClientContext, kind: &EventKind) {
        let gateway = client.id.gateway;
        match kind {
            EventKind::Close => {
                if let Some(clients) = self.0.get_mut(&gateway) {
                    clients.remove(&client.id);
                    if clients.is_empty() {
                        self.0.remove(&gateway);
                    }
                }
            }
            // Made here about another client's uid: not this client's own event.
            EventKind::UidOnline(_) | EventKind::UidOffline(_) => {}
            EventKind::Connect | EventKind::WebSocketConnect(_) | EventKind::Message(_) => {
                let seen = self
                    .0
                    .entry(gateway)
                    .or_default()
                    .entry(client.id)
                    .or_insert_with(|| Seen {
                        listener: listener.clone(),
                        index: client.listener,
                        remote: client.remote,
                        uid: None,
                    });
                if seen.uid != client.uid {
                    seen.uid.clone_from(&client.uid);
                }
            }
        }
    }

    /// Forgets the clients of `gateway`, returning each with the context its `on-close` is
    /// told (no session: the gateway took it along).
    pub fn take(&mut self, gateway: SocketAddrV4) -> Vec<(Arc<ListenerInfo>, ClientContext)> {
        let clients = self.0.remove(&gateway).unwrap_or_default();
        clients
            .into_iter()
            .map(|(id, seen): (ClientId, Seen)| {
                let context = ClientContext {
                    id,
                    remote: seen.remote,
                    listener: seen.index,
                    uid: seen.uid,
                    session: Arc::default(),
                    session_version: 0,
                    event: 0,
                };
                (seen.listener, context)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use bytes::Bytes;

    use super::*;

    fn client(gateway: u16, index: u32) -> ClientContext {
        ClientContext {
            id: ClientId::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, gateway), index),
            remote: "127.0.0.1:2".parse().unwrap(),
            listener: 0,
            uid: Some("u".into()),
            session: Arc::default(),
            session_version: 0,
            event: 1,
        }
    }

    /// A lost gateway's clients are those that sent something and did not close; other
    /// gateways' clients stay.
    #[test]
    fn a_lost_gateways_open_clients_are_taken() {
        let listener = Arc::new(ListenerInfo {
            name: "l".into(),
            app: "app".into(),
            port: 1,
        });
        let mut seen = ClientsSeen::default();
        let message = EventKind::Message(Bytes::from_static(b"x"));
        seen.saw(&listener, &client(1, 1), &EventKind::Connect);
        seen.saw(&listener, &client(1, 1), &message);
        seen.saw(&listener, &client(1, 2), &message);
        seen.saw(&listener, &client(1, 2), &EventKind::Close);
        seen.saw(&listener, &client(2, 3), &message);
        let lost = seen.take(client(1, 1).id.gateway);
        let ids: Vec<_> = lost.iter().map(|(_, c)| c.id).collect();
        assert_eq!(ids, [client(1, 1).id]);
        assert_eq!(lost[0].1.uid.as_deref(), Some("u"));
        assert!(seen.take(client(1, 1).id.gateway).is_empty());
        assert_eq!(seen.take(client(2, 3).id.gateway).len(), 1);
    }
}
