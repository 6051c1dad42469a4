//! [`NatsGateways`]: the gateway-operations port of a worker host or push client when NATS is
//! the engine. Commands are published once per subject ([`super::Subjects::route`]), so a
//! group send costs one message to NATS and reaches only the gateways subscribed to the
//! group; queries keep the direct links, which know which gateways should answer.
//!
//! Commands are not queued while the connection is down: each fails at once with
//! [`Unreachable::Nats`], counted (`nats_commands_failed_total`) and logged when the outage
//! starts, so a caller learns it instead of its messages waiting in a buffer of unknown fate.
//!
//! A worker host's commands are noted on its NATS marks ([`crate::ops::marks`]), so that the
//! acknowledgement of the event whose callback published them waits until the NATS server
//! has them ([`super::confirm`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio_util::task::AbortOnDropHandle;

use super::Nats;
use crate::ops::marks::{self, Marks};
use crate::ops::{Command, CommandFuture, Gateways, Query, QueryFuture, Unreachable};

/// Commands over NATS, queries over `links`.
pub struct NatsGateways {
    nats: Nats,
    links: Arc<dyn Gateways>,
    /// A command failed since the connection was last seen up: the outage was logged.
    failing: AtomicBool,
    /// The marks that confirm what was published, and the task that publishes them; none
    /// for a push client, which has no acknowledgement to hold.
    confirming: Option<(Arc<Marks>, AbortOnDropHandle<()>)>,
}

impl NatsGateways {
    /// Publishes commands on `nats` and asks queries over `links`. With `marks` (a worker
    /// host's), what is published is confirmed by the NATS server on them; must then be
    /// called within a tokio runtime.
    pub fn new(nats: Nats, links: Arc<dyn Gateways>, marks: Option<Arc<Marks>>) -> Arc<Self> {
        let confirming = marks.map(|marks| {
            let task = tokio::spawn(super::confirm::confirm(nats.clone(), marks.clone()));
            (marks, AbortOnDropHandle::new(task))
        });
        Arc::new(Self {
            nats,
            links,
            failing: AtomicBool::new(false),
            confirming,
        })
    }

    /// Counts a command that reached no gateway, and logs the first of an outage.
    fn failed(&self, reason: &'static str, why: &dyn std::fmt::Display) -> Unreachable {
        crate::metrics::nats_command_failed(reason);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!("commands fail until NATS is reachable: {why}");
        }
        Unreachable::Nats
    }
}

impl Gateways for NatsGateways {
    fn command(&self, command: Command) -> CommandFuture {
        let subjects = self.nats.subjects().route(&command);
        let client = self.nats.client().clone();
        let encoded = postcard::to_allocvec(&command).map(Bytes::from);
        let result = match encoded {
            _ if !self.nats.is_connected() => Err(self.failed("disconnected", &"not connected")),
            Err(e) => Err(self.failed("encoding", &e)),
            Ok(payload) if payload.len() > client.max_payload() => {
                crate::metrics::nats_command_failed("too_large");
                tracing::warn!(
                    "a command of {} bytes is over the NATS servers' max_payload ({}): not sent",
                    payload.len(),
                    client.max_payload()
                );
                Err(Unreachable::NoGateway)
            }
            Ok(payload) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("NATS reachable again: commands flow");
                }
                if let Some((marks, _)) = &self.confirming {
                    marks::note(marks);
                }
                Ok(payload)
            }
        };
        Box::pin(async move {
            let payload = result?;
            for subject in subjects {
                if let Err(e) = client.publish(subject, payload.clone()).await {
                    crate::metrics::nats_command_failed("publish");
                    tracing::warn!("NATS: a command was not published: {e}");
                    return Err(Unreachable::Nats);
                }
                crate::metrics::nats_command_published();
            }
            Ok(())
        })
    }

    fn query(&self, query: Query) -> QueryFuture {
        self.links.query(query)
    }
}
