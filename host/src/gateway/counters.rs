//! How often a gateway's limits cut clients off or refuse what they ask: one counter per
//! limit, shared by the listener, the connections and the state, read by `status` and the
//! metrics scrape; and the subjects the gateway holds on NATS.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How often the gateway's limits cut clients off, for `status` and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections closed on accept because the listener held `max_connections`.
    pub refused: AtomicU64,
    /// Connections that failed or timed out (`handshake_timeout`) in their TLS or
    /// WebSocket handshake.
    pub failed_handshakes: AtomicU64,
    /// Clients disconnected because they fell `send_buffer` behind.
    pub slow_readers: AtomicU64,
    /// Clients closed for a message over `max_message_size`.
    pub oversized: AtomicU64,
    /// Clients dropped by the heartbeat (`ping_not_response_limit`).
    pub heartbeat_timeouts: AtomicU64,
    /// Connections closed on accept because their IP address held `max_connections_per_ip`.
    pub refused_per_ip: AtomicU64,
    /// Clients closed for sending no complete message within `idle_timeout`.
    pub idle_timeouts: AtomicU64,
    /// WebSocket handshakes refused for an `Origin` not in `allowed_origins`.
    pub origins_refused: AtomicU64,
    /// Group joins refused at `max_groups_per_client`.
    pub groups_refused: AtomicU64,
    /// Session writes refused for taking a session past its limit.
    pub sessions_refused: AtomicU64,
    /// Group joins and uid bindings refused for a name over its limit (only a peer that
    /// skips the checks at the call sends one).
    pub names_refused: AtomicU64,
    /// Commands received over NATS (`[cluster] nats`), whether or not they concerned a
    /// client here: what membership-aware fan-out keeps at zero on a gateway without members.
    pub nats_commands: AtomicU64,
    /// Commands received over worker-host and push-client links: in register-mesh mode every
    /// gateway receives every group, uid and all-clients send, members or not.
    pub link_commands: AtomicU64,
}

impl Counters {
    /// Adds one to `counter` and returns the new count.
    pub fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// How many group and uid subjects a gateway is subscribed to on NATS now (besides `all` and
/// its own), kept by `gateway::nats` and read by `status`.
#[derive(Debug, Default)]
pub struct HeldSubjects {
    /// Group subjects.
    pub groups: AtomicUsize,
    /// Uid subjects.
    pub uids: AtomicUsize,
}

impl HeldSubjects {
    /// The group subjects and the uid subjects held now.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.groups.load(Ordering::Relaxed),
            self.uids.load(Ordering::Relaxed),
        )
    }
}
