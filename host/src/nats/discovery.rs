//! Finding the gateways through NATS instead of a register: each gateway publishes its
//! internal address on `wg.<name>.nodes.v<protocol>` every [`PERIOD`] (and at once when a starting node
//! says `hello`); worker hosts and push clients keep the set of gateways heard within
//! [`MISSED_PERIODS`] periods, the same set a register would list, and link to each as today.
//!
//! While the NATS connection is down nothing is heard, so nothing is forgotten either: the
//! set is frozen until the connection has been back for [`MISSED_PERIODS`] periods (a NATS
//! outage is not the loss of every gateway; the direct links say whether a gateway is alive).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::Nats;

/// How often a gateway announces itself.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Periods without an announcement after which a gateway is forgotten: 15 s, as long as a
/// link's own silence check waits (three pings of 5 s). Forgetting a gateway cuts its links,
/// live or not, and a process busy for seconds (a fan-out to tens of thousands of clients on
/// a loaded machine) announces, and hears announcements, late without being gone; a gateway
/// that really died is found by its links long before (they re-send, and `on-close` follows
/// `gateway_lost_after`), so forgetting it later costs only a few dials.
pub const MISSED_PERIODS: u32 = 15;

/// What a gateway publishes on `wg.<name>.nodes.v<protocol>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Announcement {
    /// It serves at `internal` (where worker hosts link; its client ids hold its key,
    /// `client_id::gateway_key`).
    Gateway {
        /// Its advertised internal address.
        internal: SocketAddr,
    },
    /// It is stopping: forget it now rather than after [`MISSED_PERIODS`].
    Leaving {
        /// Its advertised internal address.
        internal: SocketAddr,
    },
}

/// Announces the gateway at `internal` every [`PERIOD`] and whenever a node says `hello`,
/// until `shutdown`; then says it is leaving.
pub async fn announce(nats: Nats, internal: SocketAddr, shutdown: CancellationToken) {
    let subjects = nats.subjects();
    let (nodes, client) = (subjects.nodes(), nats.client().clone());
    let encode = |a: Announcement| postcard::to_allocvec(&a);
    let (here, leaving) = match (
        encode(Announcement::Gateway { internal }),
        encode(Announcement::Leaving { internal }),
    ) {
        (Ok(here), Ok(leaving)) => (bytes::Bytes::from(here), leaving),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("NATS: cannot encode this gateway's announcement: {e}");
            return;
        }
    };
    let mut hello = match client.subscribe(subjects.hello()).await {
        Ok(hello) => Some(hello),
        Err(e) => {
            tracing::error!(
                "NATS: cannot subscribe to hello: {e}; announcing every {PERIOD:?} only"
            );
            None
        }
    };
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            Some(_) = async { hello.as_mut()?.next().await } => {}
        }
        // Published while disconnected, it waits in the client's buffer: harmless.
        if let Err(e) = client.publish(nodes.clone(), here.clone()).await {
            tracing::debug!("NATS: announcement not sent: {e}");
        }
    }
    let _ = client.publish(nodes, leaving.into()).await;
    let _ = client.flush().await;
}

/// Follows the gateways' announcements until `shutdown`: the set of gateways heard within
/// [`MISSED_PERIODS`] periods, as a watch (what the register's list is in the mesh).
pub fn follow(nats: Nats, shutdown: CancellationToken) -> watch::Receiver<BTreeSet<SocketAddr>> {
    let (set, gateways) = watch::channel(BTreeSet::new());
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            () = keep_following(nats, set) => {}
        }
    });
    gateways
}

async fn keep_following(nats: Nats, set: watch::Sender<BTreeSet<SocketAddr>>) {
    let client = nats.client().clone();
    let mut nodes = loop {
        match client.subscribe(nats.subjects().nodes()).await {
            Ok(nodes) => break nodes,
            Err(e) => {
                tracing::warn!("NATS: cannot subscribe to announcements yet: {e}");
                tokio::time::sleep(PERIOD).await;
            }
        }
    };
    // Every gateway answers at once, so a node that starts need not wait a period.
    let _ = client
        .publish(nats.subjects().hello(), bytes::Bytes::new())
        .await;
    let forget_after = PERIOD * MISSED_PERIODS;
    let mut heard: HashMap<SocketAddr, Instant> = HashMap::new();
    let mut connected_since = nats.is_connected().then(Instant::now);
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = nodes.next() => {
                let Some(message) = message else { return };
                match postcard::from_bytes(&message.payload) {
                    Ok(Announcement::Gateway { internal }) => {
                        heard.insert(internal, Instant::now());
                    }
                    Ok(Announcement::Leaving { internal }) => {
                        heard.remove(&internal);
                    }
                    Err(e) => {
                        tracing::warn!("NATS: an announcement that does not decode: {e}");
                        continue;
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                connected_since = match (nats.is_connected(), connected_since) {
                    (false, _) => None,
                    (true, None) => Some(now),
                    (true, since) => since,
                };
                let settled = connected_since.is_some_and(|t| now - t >= forget_after);
                if settled {
                    heard.retain(|gateway, at| {
                        let alive = now - *at < forget_after;
                        if !alive {
                            tracing::info!(%gateway, "gateway not heard for {forget_after:?}: forgotten");
                        }
                        alive
                    });
                }
            }
        }
        let now: BTreeSet<_> = heard.keys().copied().collect();
        set.send_if_modified(|set| {
            let changed = *set != now;
            if changed {
                *set = now;
            }
            changed
        });
    }
}
