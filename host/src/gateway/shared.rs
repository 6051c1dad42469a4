//! What every task of one gateway shares: its state, its worker-host links, its listeners,
//! the secret (and TLS) of its links, its limit counters and the worker hosts' latest plugin reports; and the
//! snapshot operators read of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::counters::{Counters, HeldSubjects};
use super::router::Router;
use super::state::{GatewayState, StateSummary};
use crate::ops::{ListenerView, Query, Reply, WorkerReport};
use crate::register::RegisterReach;
use crate::transport::Trust;
use crate::wire::messages::ListenerInfo;

/// A running gateway's shared parts.
pub struct Gateway {
    /// The clients.
    pub state: Arc<GatewayState>,
    /// The worker-host links.
    pub router: Arc<Router>,
    /// The listeners announced to worker hosts.
    pub listeners: Vec<ListenerInfo>,
    /// How internal links prove themselves: the cluster secret, and TLS if configured.
    pub trust: Trust,
    /// How often its limits cut clients off.
    pub counters: Arc<Counters>,
    /// The latest plugin report of each linked worker host, by link: kept only while the
    /// link lasts, so a gone worker host leaves the admin page with its link.
    pub reports: Mutex<HashMap<u64, WorkerReport>>,
    /// Which of the registers it announces itself to are linked.
    pub registers: RegisterReach,
    /// The group and uid subjects it holds on NATS (none without `[cluster] nats`).
    pub nats_subjects: HeldSubjects,
    /// Drawn at its start, told to worker hosts with the listeners: a host that kept clients
    /// of an earlier run at this address learns that they are gone.
    pub run: u64,
}

impl Gateway {
    /// Answers `query`: the state answers what it holds; [`Query::Cluster`] gets this
    /// gateway's listeners, links and worker hosts' reports added.
    pub fn answer(&self, query: &Query) -> Reply {
        let mut reply = self.state.answer(query);
        if let Reply::Cluster(view) = &mut reply {
            for gateway in &mut view.gateways {
                gateway.listeners = self
                    .listeners
                    .iter()
                    .map(|l| ListenerView {
                        name: l.name.clone(),
                        app: l.app.clone(),
                        port: l.port,
                    })
                    .collect();
                gateway.worker_links = u32::try_from(self.router.len()).unwrap_or(u32::MAX);
            }
            let reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
            view.workers = reports.values().cloned().collect();
        }
        reply
    }

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
