//! The gateway's side of NATS as the cluster engine: it takes commands from NATS instead of
//! from worker-host links (those still carry events and queries, and a command that arrives
//! on them is executed as before).
//!
//! Membership-aware fan-out: the gateway subscribes to `all`, to its own subject (commands
//! about its clients), and to the subject of each group and uid it holds a member of,
//! following the state's marks ([`GatewayState::take_membership`]): subscribed when the first
//! local member joins (or binds), unsubscribed when the last leaves. A gateway with no member
//! of a group receives nothing sent to it (`nats_commands_received` counts what arrives).
//!
//! One task reads every subscription, so commands of one subject are executed in the order
//! NATS delivered them. A command naming several groups (or uids) arrives once per subject
//! the gateway holds; it is executed only from the first listed (see
//! [`crate::nats::Subjects::first_held`]), and each client gets it once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use futures_util::stream::{BoxStream, SelectAll};
use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::counters::{Counters, HeldSubjects};
use super::state::Held;
use crate::nats::{Nats, discovery};
use crate::ops::Command;

/// The count in `held` of `name`'s kind of subject.
fn held_of<'a>(held: &'a HeldSubjects, name: &Held) -> &'a AtomicUsize {
    match name {
        Held::Group(_) => &held.groups,
        Held::Uid(_) => &held.uids,
    }
}

/// A subscription the gateway holds for its groups or uids, and the names it holds it for
/// (names whose hashes collide share a subject).
struct Subscribed {
    names: HashSet<Held>,
    /// Ends the subscription's stream, which unsubscribes it.
    stop: CancellationToken,
}

/// Takes commands from NATS for `gateway` until `shutdown`, and announces the gateway once
/// it is subscribed to its own subject: a worker host that links on the announcement and
/// answers a client at once finds the subscription there (NATS handles one connection's
/// subscriptions and publications in order).
pub async fn serve(gateway: Arc<Gateway>, nats: Nats, shutdown: CancellationToken) {
    let subjects = nats.subjects();
    let own = subjects.gateway(gateway.state.address());
    let mut subs = Subscriptions {
        streams: SelectAll::new(),
        held: HashMap::new(),
    };
    for subject in [subjects.all(), own] {
        match subscribe(&nats, subject, shutdown.clone()).await {
            Some(stream) => subs.streams.push(stream),
            None => return,
        }
    }
    gateway.state.track_membership();
    let announcing = discovery::announce(nats.clone(), gateway.state.internal(), shutdown.clone());
    tokio::join!(announcing, take_commands(&gateway, &nats, subs, &shutdown));
}

/// Executes the commands that arrive on `subs`, following the state's membership, until
/// `shutdown`.
async fn take_commands(
    gateway: &Gateway,
    nats: &Nats,
    mut subs: Subscriptions,
    shutdown: &CancellationToken,
) {
    let subjects = nats.subjects();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = gateway.state.membership_marked() => {
                subs.follow(gateway, nats, shutdown).await;
            }
            Some(message) = subs.streams.next() => {
                Counters::bump(&gateway.counters.nats_commands);
                let command: Command = match postcard::from_bytes(&message.payload) {
                    Ok(command) => command,
                    Err(e) => {
                        tracing::warn!(subject = %message.subject, "NATS: a command that does not decode: {e}");
                        continue;
                    }
                };
                let first = subjects.first_held(&command, |s| subs.held.contains_key(s));
                if first.is_some_and(|first| first != message.subject.as_str()) {
                    continue;
                }
                gateway.state.execute(command);
                // Before the next command: a join's subscription is on its way to NATS before
                // anything that follows the join (the member's reply, say) is delivered.
                subs.follow(gateway, nats, shutdown).await;
            }
        }
    }
}

/// Every subscription of the gateway, read as one stream.
struct Subscriptions {
    streams: SelectAll<BoxStream<'static, async_nats::Message>>,
    /// The group and uid subscriptions, by subject.
    held: HashMap<String, Subscribed>,
}

impl Subscriptions {
    /// Subscribes to the groups and uids the state marked as newly held, and unsubscribes
    /// from those it marked as released.
    async fn follow(&mut self, gateway: &Gateway, nats: &Nats, shutdown: &CancellationToken) {
        let subjects = nats.subjects();
        for (name, now) in gateway.state.take_membership() {
            let subject = match &name {
                Held::Group(g) => subjects.group(g),
                Held::Uid(u) => subjects.uid(u),
            };
            if now {
                if let Some(s) = self.held.get_mut(&subject) {
                    s.names.insert(name);
                    continue;
                }
                let stop = shutdown.child_token();
                let Some(stream) = subscribe(nats, subject.clone(), stop.clone()).await else {
                    continue;
                };
                self.streams.push(stream);
                held_of(&gateway.nats_subjects, &name).fetch_add(1, Ordering::Relaxed);
                let names = HashSet::from([name]);
                self.held.insert(subject, Subscribed { names, stop });
            } else if let Some(s) = self.held.get_mut(&subject) {
                s.names.remove(&name);
                if s.names.is_empty() {
                    held_of(&gateway.nats_subjects, &name).fetch_sub(1, Ordering::Relaxed);
                    s.stop.cancel();
                    self.held.remove(&subject);
                }
            }
        }
    }
}

/// Subscribes to `subject` until `stop`; `None` (logged) if NATS refused.
async fn subscribe(
    nats: &Nats,
    subject: String,
    stop: CancellationToken,
) -> Option<BoxStream<'static, async_nats::Message>> {
    match nats.client().subscribe(subject.clone()).await {
        Ok(subscriber) => Some(subscriber.take_until(stop.cancelled_owned()).boxed()),
        Err(e) => {
            tracing::error!(%subject, "NATS: cannot subscribe: {e}");
            None
        }
    }
}
