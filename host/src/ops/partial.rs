//! Which gateways a cluster-wide query missed: an answer merged from the gateways that
//! answered in time is flagged partial, never silently short.
//!
//! The flag travels beside the answer, not in it: every edge's rendering of an operation is
//! generated from one body in the table (`gateway_operations!`), so the port reports
//! the gateways it missed ([`report_missing`]) to the task asking, and the edge that wants the
//! flag (the push API) runs the operation within [`gathering`]. Outside it a report is dropped.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::SocketAddr;

tokio::task_local! {
    static MISSING: RefCell<BTreeSet<SocketAddr>>;
}

/// Runs `operation` and returns its output with the gateways any of its queries missed
/// (sorted, each once; empty when every answer was whole).
pub async fn gathering<F: Future>(operation: F) -> (F::Output, Vec<SocketAddr>) {
    MISSING
        .scope(RefCell::default(), async {
            let output = operation.await;
            let missing = MISSING.with(|m| m.take().into_iter().collect());
            (output, missing)
        })
        .await
}

/// Notes that a query of the current task was answered without `gateways` (silent past the
/// bound); a no-op for a task not [`gathering`].
pub fn report_missing(gateways: impl IntoIterator<Item = SocketAddr>) {
    let _ = MISSING.try_with(|m| m.borrow_mut().extend(gateways));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_gateways_reach_the_gatherer_only() {
        let a: SocketAddr = "10.0.0.1:2900".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:2900".parse().unwrap();
        report_missing([a]);
        let ((), missing) = gathering(async {
            report_missing([b, a]);
            tokio::task::yield_now().await;
            report_missing([b]);
        })
        .await;
        assert_eq!(missing, vec![a, b]);
        let ((), none) = gathering(async {}).await;
        assert!(none.is_empty());
    }
}
