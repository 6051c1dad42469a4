//! What an operator sees of the whole cluster through any node's links: each gateway's
//! figures and listeners, and each worker host's plugin table as that worker host last
//! reported it to the gateways ([`Query::Cluster`](super::Query::Cluster)).
//!
//! Worker hosts are not linked to each other, but every one of them is linked to every
//! gateway; so each worker host reports a small summary of its plugins over those links, each
//! gateway keeps the latest report of each linked worker host, and whoever asks the gateways
//! sees every worker host. The report is small (a few plugins, a bounded list of recent
//! faults each), and sent only when it changed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The answer to [`Query::Cluster`](super::Query::Cluster): every gateway that answered and
/// every worker host they have reports of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// One entry per gateway.
    pub gateways: Vec<GatewayView>,
    /// One entry per worker host, its latest report.
    pub workers: Vec<WorkerReport>,
}

/// One gateway's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayView {
    /// Its advertised internal address (an IPv4 one is what every client id it issues
    /// starts with; an IPv6 one's ids start with its tag).
    pub address: SocketAddr,
    /// Its client listeners.
    pub listeners: Vec<ListenerView>,
    /// Connected clients.
    pub clients: u32,
    /// Groups with at least one member.
    pub groups: u32,
    /// Uids bound to at least one client.
    pub uids: u32,
    /// Worker hosts linked to it.
    pub worker_links: u32,
}

/// A gateway's client listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerView {
    /// Its name (`[[gateway]] name`).
    pub name: String,
    /// The app its clients talk to.
    pub app: String,
    /// Its client port.
    pub port: u16,
}

/// A worker host's plugin table, as it reports it to each gateway it is linked to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Chosen at random when the worker host starts: tells two worker hosts of one name
    /// apart, and a restarted one from its former self.
    pub id: u64,
    /// Its name (`[worker] name`).
    pub name: String,
    /// When the report was made (Unix milliseconds): of two copies, the later wins.
    pub made_at: u64,
    /// Its plugins.
    pub plugins: Vec<PluginReport>,
}

/// One plugin version serving in a worker host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginReport {
    /// The plugin (app) name.
    pub plugin: String,
    /// The short hash of the component's bytes.
    pub version: String,
    /// When it started serving (Unix seconds).
    pub loaded_at: u64,
    /// Its instances.
    pub instances: u32,
    /// Its faults since the worker host started, by kind.
    pub faults: FaultCounts,
    /// Its latest faults, newest last, at most `metrics::RECENT_FAULTS` (8), so that a
    /// report always fits a frame.
    pub recent_faults: Vec<FaultReport>,
}

/// Faults of a plugin by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounts {
    /// The guest trapped.
    pub trap: u64,
    /// A call ran past `process_timeout`.
    pub timeout: u64,
    /// An instance grew past `memory_limit`.
    pub memory_limit: u64,
}

/// One fault of a plugin call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultReport {
    /// When (Unix seconds).
    pub at: u64,
    /// The callback that faulted (`on-message` …).
    pub callback: String,
    /// `trap`, `timeout` or `memory_limit`.
    pub kind: String,
}

impl ClusterView {
    /// Combines two gateways' answers: the gateways are joined, and of each worker host
    /// (reported to both) the later report is kept.
    pub fn merge(mut self, other: ClusterView) -> ClusterView {
        self.gateways.extend(other.gateways);
        self.gateways.sort_by_key(|g| g.address);
        let mut workers: BTreeMap<u64, WorkerReport> = BTreeMap::new();
        for report in self.workers.into_iter().chain(other.workers) {
            match workers.get(&report.id) {
                Some(kept) if kept.made_at >= report.made_at => {}
                _ => {
                    workers.insert(report.id, report);
                }
            }
        }
        self.workers = workers.into_values().collect();
        self.workers
            .sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: u64, made_at: u64) -> WorkerReport {
        WorkerReport {
            id,
            name: format!("w{id}"),
            made_at,
            plugins: Vec::new(),
        }
    }

    #[test]
    fn each_worker_host_once_with_its_latest_report() {
        let gateway = |port| GatewayView {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            listeners: Vec::new(),
            clients: 1,
            groups: 0,
            uids: 0,
            worker_links: 2,
        };
        let a = ClusterView {
            gateways: vec![gateway(2)],
            workers: vec![worker(1, 10), worker(2, 30)],
        };
        let b = ClusterView {
            gateways: vec![gateway(1)],
            workers: vec![worker(1, 20), worker(2, 5)],
        };
        let merged = a.merge(b);
        assert_eq!(merged.gateways, vec![gateway(1), gateway(2)]);
        assert_eq!(merged.workers, vec![worker(1, 20), worker(2, 30)]);
    }
}
