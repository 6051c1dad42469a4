//! Merging the gateway lists of several registers into the one set a member acts on.
//!
//! Registers do not talk to each other, so after an outage they disagree for a while: the one
//! that restarted knows only the gateways that have re-registered with it so far. The rules
//! here (a union of the linked registers, nothing removed while a register is fresh, the last
//! set kept while none is linked) keep such disagreement from dropping gateways that serve.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// How long a member trusts a newly linked register to add gateways but not to remove
/// them: a register that has just restarted knows only the gateways that have re-registered
/// so far. Longer than a gateway's longest retry delay plus a handshake, so by then every
/// live gateway is back in its list.
pub(super) const SETTLE: Duration = Duration::from_secs(5);

/// What one register has told this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Report {
    /// No link, or no list yet: it contributes nothing.
    Down,
    /// Its latest list, but the link is younger than [`SETTLE`]: it may add gateways, not
    /// remove them.
    Fresh(BTreeSet<SocketAddr>),
    /// Its latest list, authoritative.
    Settled(BTreeSet<SocketAddr>),
}

/// The gateway lists reported by each register a member is linked to, merged into the one
/// set the member acts on.
///
/// The set is the union of the lists of the registers currently linked: a register whose
/// link drops contributes nothing any more, so a gateway that has left is not kept alive by a
/// dead register. Two exceptions keep a register outage from making worker hosts drop
/// gateways that are still serving: while no register is linked, the last set stays; and
/// while some register is fresh (see [`SETTLE`]), nothing is removed.
pub(super) struct MergedLists {
    /// Per register, by index.
    reports: Mutex<Vec<Report>>,
    /// Where the merged set is published.
    merged: watch::Sender<BTreeSet<SocketAddr>>,
}

impl MergedLists {
    /// Lists for `registers` registers, all [`Report::Down`] so far; the merged set is empty.
    pub(super) fn new(registers: usize) -> Self {
        Self {
            reports: Mutex::new(vec![Report::Down; registers]),
            merged: watch::Sender::new(BTreeSet::new()),
        }
    }

    /// A view of the merged set.
    pub(super) fn subscribe(&self) -> watch::Receiver<BTreeSet<SocketAddr>> {
        self.merged.subscribe()
    }

    /// Records what register `index` reports and republishes the merged set if it changed.
    pub(super) fn report(&self, index: usize, report: Report) {
        // The vector is never left half-written, so a panic elsewhere does not spoil it.
        let mut reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        reports[index] = report;
        let mut union = BTreeSet::new();
        let (mut linked, mut fresh) = (false, false);
        for report in reports.iter() {
            match report {
                Report::Down => continue,
                Report::Fresh(list) => {
                    fresh = true;
                    union.extend(list);
                }
                Report::Settled(list) => union.extend(list),
            }
            linked = true;
        }
        if !linked {
            return;
        }
        self.merged.send_if_modified(|current| {
            if fresh {
                union.extend(current.iter());
            }
            if *current == union {
                false
            } else {
                *current = union;
                true
            }
        });
    }
}
