//! Reports this gateway's uid transitions to the worker host that decides each uid's presence
//! (ARCHITECTURE.md, "Presence").
//!
//! Level-triggered: the state marks a uid when its local set of bound clients goes from empty
//! to not or back ([`GatewayState::take_marked`]); this task compares each marked uid with what
//! it last reported, and where: a uid held and not reported goes `Online` to its owner
//! ([`Router::presence_owner`]), one reported and no longer held goes `Offline` to the host it
//! was reported to, and one whose owner changed moves silently (`Release` there, `Hold` to the
//! new owner). A change of the linked hosts marks every reported uid again. A report whose
//! link ended ([`WorkerLink::is_gone`], even while its queue still flushes) counts as not
//! made: that host has forgotten this gateway's uids, or is lost, and another (or the same,
//! linked again) is told `Online`. A leaving host's link is not gone: its uids move silently.
//!
//! Nothing runs unless a linked host wants presence for the app: until then the state marks
//! nothing.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::router::{Router, WorkerLink};
use super::state::GatewayState;
use crate::wire::messages::{ClientContext, PresenceChange, ToWorker};

/// Where and with which client a uid was last reported.
struct Reported {
    link: Arc<WorkerLink>,
    client: ClientContext,
}

/// Reports the uid transitions of the clients of `listener` until `stop`, then reports what
/// is marked by then (the closes of a stopping gateway) and returns.
pub async fn report(
    state: Arc<GatewayState>,
    router: Arc<Router>,
    listener: u16,
    stop: CancellationToken,
) {
    let mut changes = router.changes();
    let mut reported: HashMap<String, Reported> = HashMap::new();
    loop {
        let mut moved = false;
        let stopping = tokio::select! {
            () = state.marked() => false,
            changed = changes.changed() => {
                moved = changed.is_ok();
                false
            }
            () = stop.cancelled() => true,
        };
        state.track_presence(router.wants_presence(listener));
        let mut marked = state.take_marked();
        if moved {
            for (uid, r) in &reported {
                marked
                    .entry(uid.clone())
                    .or_insert_with(|| r.client.clone());
            }
        }
        for (uid, client) in marked {
            let held = state.holds(&uid);
            let owner = router.presence_owner(listener, &uid);
            let before = reported.remove(&uid).filter(|r| !r.link.is_gone());
            let report = |link: &Arc<WorkerLink>, change| {
                let message = ToWorker::Presence {
                    listener,
                    uid: uid.clone(),
                    change,
                };
                let link = link.clone();
                // A link that closed meanwhile is marked again as a change of hosts.
                async move {
                    let _ = link.queue.send(message).await;
                }
            };
            let now = match (held, owner, before) {
                (true, Some(owner), None) => {
                    report(&owner, PresenceChange::Online(client.clone())).await;
                    Some(owner)
                }
                (true, Some(owner), Some(before)) if before.link.is(&owner) => Some(owner),
                (true, Some(owner), Some(before)) => {
                    report(&before.link, PresenceChange::Release).await;
                    report(&owner, PresenceChange::Hold(client.clone())).await;
                    Some(owner)
                }
                // No host decides it now: it stays where it was, if anywhere.
                (true, None, before) => before.map(|b| b.link),
                (false, _, Some(before)) => {
                    report(&before.link, PresenceChange::Offline(client.clone())).await;
                    None
                }
                (false, _, None) => None,
            };
            if let Some(link) = now {
                reported.insert(uid, Reported { link, client });
            }
        }
        if stopping {
            return;
        }
    }
}
