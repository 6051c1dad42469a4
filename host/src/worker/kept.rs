//! The clients this worker host keeps, by gateway: those whose gateway told it that it is
//! their keeper (`gateway::keepers`), whose `on-close` it runs if that gateway is lost (killed,
//! its machine gone), since their connections went with it and no close event will come
//! (ARCHITECTURE.md, "Delivery").
//!
//! An entry is the client's id, address, listener and uid, about 60 bytes with the table's
//! own; no session (the gateway took it along). The gateway tells a keeper of a client when
//! its first event leaves, and again when its uid changes, when it closes, and when its
//! keeper changes. Each link from a gateway starts afresh: the gateway tells it everything it
//! keeps, so what was kept of that gateway's run is forgotten when a link starts; what was
//! kept of an earlier run at the same address (the gateway restarted within
//! `gateway_lost_after`) is owed at once, as those clients are gone.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use crate::client_id::{ClientId, ClientMap};
use crate::wire::messages::{ClientContext, KeptClient, ListenerInfo};

/// A client whose `on-close` is owed: its listener and the context it is told.
pub type Owed = (Arc<ListenerInfo>, ClientContext);

/// What is kept of one client: its `on-close` record less its id (the key) and session. The
/// address is split so that an IPv4 client does not pay for an IPv6 one's room.
struct Keeping {
    ip: IpAddr,
    port: u16,
    listener: u16,
    uid: Option<Box<str>>,
}

/// What is kept of one gateway.
struct Kept {
    /// The gateway's run, as its links announced it.
    run: u64,
    /// Its listeners, which the clients name by index.
    listeners: Vec<Arc<ListenerInfo>>,
    clients: ClientMap<Keeping>,
}

impl Kept {
    /// Every client kept, with the context its `on-close` is told.
    fn owed(self) -> Vec<Owed> {
        crate::metrics::clients_kept(-count(self.clients.len()));
        let listeners = self.listeners;
        self.clients
            .into_iter()
            .filter_map(|(id, kept)| {
                let listener = listeners.get(usize::from(kept.listener))?.clone();
                let context = ClientContext {
                    id,
                    remote: SocketAddr::new(kept.ip, kept.port),
                    listener: kept.listener,
                    uid: kept.uid.map(String::from),
                    session: Arc::default(),
                    session_version: 0,
                    event: 0,
                };
                Some((listener, context))
            })
            .collect()
    }
}

/// The clients this worker host keeps, by gateway.
#[derive(Default)]
pub struct KeptClients(Mutex<HashMap<SocketAddrV4, Kept>>);

impl KeptClients {
    /// A link to `gateway`, at its run `run`, started with `listeners`: the gateway tells
    /// afresh what this host keeps, so what was kept of the same run is forgotten; what was
    /// kept of an earlier run is owed now (returned).
    pub fn linked(
        &self,
        gateway: SocketAddrV4,
        run: u64,
        listeners: &[Arc<ListenerInfo>],
    ) -> Vec<Owed> {
        let fresh = Kept {
            run,
            listeners: listeners.to_vec(),
            clients: ClientMap::default(),
        };
        let before = self.lock().insert(gateway, fresh);
        match before {
            Some(before) if before.run != run => before.owed(),
            Some(before) => {
                crate::metrics::clients_kept(-count(before.clients.len()));
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// `gateway` tells this host to keep the clients of `keep` (or that their uid changed)
    /// and to forget those of `forget`.
    pub fn keep(&self, gateway: SocketAddrV4, keep: Vec<KeptClient>, forget: Vec<ClientId>) {
        let mut book = self.lock();
        // A link starts with its listeners, which `linked` files before anything is kept.
        let Some(kept) = book.get_mut(&gateway) else {
            return;
        };
        let before = kept.clients.len();
        for id in forget {
            kept.clients.remove(&id);
        }
        for client in keep {
            let keeping = Keeping {
                ip: client.remote.ip(),
                port: client.remote.port(),
                listener: client.listener,
                uid: client.uid.map(String::into_boxed_str),
            };
            kept.clients.insert(client.id, keeping);
        }
        crate::metrics::clients_kept(count(kept.clients.len()) - count(before));
    }

    /// `gateway` is lost: the `on-close` of every client kept of it is owed.
    pub fn lost(&self, gateway: SocketAddrV4) -> Vec<Owed> {
        self.lock()
            .remove(&gateway)
            .map(Kept::owed)
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddrV4, Kept>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn gateway(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
    }

    fn client(gateway: SocketAddrV4, index: u32, uid: Option<&str>) -> KeptClient {
        KeptClient {
            id: ClientId::new(gateway, index),
            remote: "[2001:db8::1]:2".parse().unwrap(),
            listener: 0,
            uid: uid.map(String::from),
        }
    }

    fn listeners() -> Vec<Arc<ListenerInfo>> {
        vec![Arc::new(ListenerInfo {
            name: "l".into(),
            app: "app".into(),
            port: 1,
        })]
    }

    /// Owed clients by index, sorted, with their uids.
    fn owed(owed: Vec<Owed>) -> Vec<(u32, Option<String>)> {
        let mut owed: Vec<_> = owed
            .into_iter()
            .map(|(listener, c)| {
                assert_eq!(listener.app, "app");
                assert_eq!(c.remote, "[2001:db8::1]:2".parse().unwrap());
                (c.id.index, c.uid)
            })
            .collect();
        owed.sort();
        owed
    }

    /// A lost gateway's kept clients are owed, with their latest uid, less those forgotten;
    /// other gateways' clients stay.
    #[test]
    fn a_lost_gateways_kept_clients_are_owed() {
        let book = KeptClients::default();
        let (a, b) = (gateway(1), gateway(2));
        assert!(book.linked(a, 7, &listeners()).is_empty());
        assert!(book.linked(b, 8, &listeners()).is_empty());
        book.keep(a, vec![client(a, 1, None), client(a, 2, None)], vec![]);
        book.keep(a, vec![client(a, 1, Some("u"))], vec![ClientId::new(a, 2)]);
        book.keep(b, vec![client(b, 3, None)], vec![]);
        assert_eq!(owed(book.lost(a)), [(1, Some("u".into()))]);
        assert!(book.lost(a).is_empty());
        assert_eq!(owed(book.lost(b)), [(3, None)]);
    }

    /// A link of the same run starts afresh: nothing owed, nothing kept until told again. One
    /// of another run (the gateway restarted at the same address) makes the earlier run's
    /// clients owed at once.
    #[test]
    fn a_new_link_starts_afresh_and_a_new_run_owes_the_earlier_ones_clients() {
        let book = KeptClients::default();
        let a = gateway(1);
        book.linked(a, 7, &listeners());
        book.keep(a, vec![client(a, 1, None)], vec![]);
        assert!(book.linked(a, 7, &listeners()).is_empty());
        assert!(book.lost(a).is_empty(), "the gateway tells afresh");

        book.linked(a, 7, &listeners());
        book.keep(a, vec![client(a, 2, None)], vec![]);
        assert_eq!(owed(book.linked(a, 9, &listeners())), [(2, None)]);
        assert!(book.lost(a).is_empty());
    }

    /// What one kept client costs in place (the table adds a byte of control and its spare
    /// room): tens of bytes, whatever its address family.
    #[test]
    fn a_kept_client_fits_in_tens_of_bytes() {
        assert!(std::mem::size_of::<(ClientId, Keeping)>() <= 56);
    }
}
