//! What every task of one gateway shares: its state, its worker-host links, its listeners,
//! the secret and its limit counters; and the snapshot operators read of it.

use std::sync::Arc;

use super::counters::Counters;
use super::router::Router;
use super::state::{GatewayState, StateSummary};
use crate::wire::messages::ListenerInfo;

/// A running gateway's shared parts.
pub struct Gateway {
    /// The clients.
    pub state: Arc<GatewayState>,
    /// The worker-host links.
    pub router: Arc<Router>,
    /// The listeners announced to worker hosts.
    pub listeners: Vec<ListenerInfo>,
    /// The cluster secret.
    pub secret: Arc<[u8]>,
    /// How often its limits cut clients off.
    pub counters: Arc<Counters>,
}

impl Gateway {
    /// What the gateway holds now, for `status` and `/metrics`.
    pub fn snapshot(&self) -> GatewaySnapshot {
        GatewaySnapshot {
            state: self.state.summary(),
            worker_links: self.router.len(),
            serving_links: self.router.serving(),
        }
    }
}

/// A gateway's figures at one moment.
#[derive(Debug, Clone, Copy)]
pub struct GatewaySnapshot {
    /// Its clients, groups and uids.
    pub state: StateSummary,
    /// Worker hosts linked.
    pub worker_links: usize,
    /// Worker hosts linked that serve its app.
    pub serving_links: usize,
}
