//! Which gateways hold each uid of each app, as they reported it to this worker host, and
//! the transitions that make `on-uid-online` and `on-uid-offline` (ARCHITECTURE.md,
//! "Presence").
//!
//! Gateways send a uid's changes to the one worker host a hash of the uid picks, so this book
//! sees every gateway that holds the uids it decides. It fires when a uid's set of gateways
//! goes from empty to not (online) or back (offline); a `Hold` or `Release` (the uid moved
//! between hosts) changes the set without firing, and a gateway whose link ended is taken
//! out of every set, firing offline for the uids only it held.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};

use crate::wire::messages::{ClientContext, ListenerInfo, PresenceChange};

/// What a gateway last reported of a uid: the client that bound it, on which listener.
type Holding = (Arc<ListenerInfo>, ClientContext);

/// A transition to deliver as a callback.
#[derive(Debug)]
pub struct Transition {
    /// The uid.
    pub uid: String,
    /// Online (else offline).
    pub online: bool,
    /// The listener (so the app) of the client, and the client it is told.
    pub listener: Arc<ListenerInfo>,
    /// The client whose binding, unbinding or close made the transition.
    pub client: ClientContext,
}

/// The uids this worker host decides, by app, with the gateways holding each.
#[derive(Default)]
pub struct PresenceBook {
    uids: Mutex<HashMap<(String, String), HashMap<SocketAddrV4, Holding>>>,
}

impl PresenceBook {
    /// Applies a gateway's report; the transition it makes, if any.
    pub fn change(
        &self,
        gateway: SocketAddrV4,
        listener: Arc<ListenerInfo>,
        uid: String,
        change: PresenceChange,
    ) -> Option<Transition> {
        let mut uids = self.uids.lock().unwrap_or_else(|e| e.into_inner());
        let key = (listener.app.clone(), uid);
        let (client, fires) = match change {
            PresenceChange::Online(client) => (Some(client), true),
            PresenceChange::Hold(client) => (Some(client), false),
            PresenceChange::Offline(client) => {
                // The client that went, not the one the gateway reported binding it.
                let held = uids.get_mut(&key)?;
                let (listener, _) = held.remove(&gateway)?;
                if !held.is_empty() {
                    return None;
                }
                uids.remove(&key);
                return Some(Transition {
                    uid: key.1,
                    online: false,
                    listener,
                    client,
                });
            }
            PresenceChange::Release => (None, false),
        };
        match client {
            Some(client) => {
                let held = uids.entry(key.clone()).or_default();
                let first = held.is_empty();
                held.insert(gateway, (listener.clone(), client.clone()));
                (first && fires).then_some(Transition {
                    uid: key.1,
                    online: true,
                    listener,
                    client,
                })
            }
            None => {
                if let Some(held) = uids.get_mut(&key) {
                    held.remove(&gateway);
                    if held.is_empty() {
                        uids.remove(&key);
                    }
                }
                None
            }
        }
    }

    /// Takes `gateway` (its link ended) out of every uid; the uids only it held go offline,
    /// each told the last client the gateway reported.
    pub fn unlinked(&self, gateway: SocketAddrV4) -> Vec<Transition> {
        let mut uids = self.uids.lock().unwrap_or_else(|e| e.into_inner());
        let mut gone = Vec::new();
        uids.retain(|(_, uid), held| {
            let Some((listener, client)) = held.remove(&gateway) else {
                return true;
            };
            if !held.is_empty() {
                return true;
            }
            gone.push(Transition {
                uid: uid.clone(),
                online: false,
                listener,
                client,
            });
            false
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::client_id::ClientId;

    fn gateway(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
    }

    fn client(gateway: SocketAddrV4, index: u32) -> ClientContext {
        ClientContext {
            id: ClientId::new(gateway, index),
            remote: "127.0.0.1:2".parse().unwrap(),
            listener: 0,
            uid: Some("u".into()),
            session: Arc::default(),
            session_version: 0,
            event: 0,
        }
    }

    fn listener() -> Arc<ListenerInfo> {
        Arc::new(ListenerInfo {
            name: "l".into(),
            app: "app".into(),
            port: 1,
        })
    }

    /// What `change` fires: online or offline, and for which client.
    fn fired(book: &PresenceBook, gw: SocketAddrV4, change: PresenceChange) -> Option<(bool, u32)> {
        book.change(gw, listener(), "u".into(), change)
            .map(|t| (t.online, t.client.id.index))
    }

    #[test]
    fn the_first_gateway_in_fires_online_and_the_last_out_offline() {
        let book = PresenceBook::default();
        let (a, b) = (gateway(1), gateway(2));
        assert_eq!(
            fired(&book, a, PresenceChange::Online(client(a, 1))),
            Some((true, 1))
        );
        assert_eq!(fired(&book, b, PresenceChange::Online(client(b, 2))), None);
        assert_eq!(fired(&book, a, PresenceChange::Offline(client(a, 1))), None);
        assert_eq!(
            fired(&book, b, PresenceChange::Offline(client(b, 3))),
            Some((false, 3))
        );
        assert_eq!(fired(&book, b, PresenceChange::Offline(client(b, 3))), None);
    }

    #[test]
    fn a_moved_uid_fires_nothing_and_a_lost_gateway_fires_offline_once() {
        let book = PresenceBook::default();
        let (a, b) = (gateway(1), gateway(2));
        assert_eq!(fired(&book, a, PresenceChange::Hold(client(a, 1))), None);
        assert_eq!(fired(&book, b, PresenceChange::Online(client(b, 2))), None);
        assert_eq!(fired(&book, b, PresenceChange::Release), None);
        let gone = book.unlinked(a);
        assert_eq!(gone.len(), 1);
        assert!(!gone[0].online);
        assert_eq!(gone[0].client.id.index, 1);
        assert!(book.unlinked(a).is_empty());
    }
}
