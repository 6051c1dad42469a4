//! Tells each client's keeper of it: the worker host that runs the client's `on-close` if
//! this gateway is lost (ARCHITECTURE.md, "Delivery").
//!
//! A gateway that is killed takes its connections along and sends no close event, so the host
//! that runs its clients' `on-close` must have been told of them beforehand, and must outlive
//! the gateway: that is the client's keeper ([`Keepers::pick`]: rendezvous-hashed among the
//! hosts serving its app, on another machine than the gateway's when one is). This task tells
//! the keepers, batched per host:
//! - a client whose first event is on its way ([`GatewayState::keep`]), or whose uid changed:
//!   `keep`, to its keeper;
//! - a client gone: `forget`, to the keeper it was told to;
//! - whenever the hosts that may keep change (one links, is lost, leaves, or its apps
//!   change): for each client whose keeper changed, `forget` to the old one (unless its link
//!   is gone: that host forgets this gateway's clients when it links again, or is lost) and
//!   `keep` to the new one.
//!
//! A client that no host may keep stays with the one it was told to, if any, until one may;
//! so in a process that runs its gateway and its only worker host, nothing is told at all.
//! What this task remembers of a client is the link it was told to: tens of bytes. At a stop
//! it tells what is marked by then (the closes of a stopping gateway) before the links close,
//! so that no keeper takes a gateway that stopped for one that was lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::router::{Keepers, Router, WorkerLink};
use super::state::GatewayState;
use crate::client_id::{ClientHasher, ClientId, shrink_if_sparse};
use crate::wire::messages::{KeptClient, ToWorker};

/// Most clients one message tells of (each list), so that it stays a small frame.
const KEEP_BATCH: usize = 1024;

/// How long a pass waits, once something is marked, for more to share its messages: connects
/// and closes come one by one, and a message each would cost a frame and a wake-up at both
/// ends. Short next to `gateway_lost_after`, so a keeper is told long before it could matter.
const KEEP_DELAY: Duration = Duration::from_millis(10);

/// Tells keepers of this gateway's clients until `stop`, then tells what is marked by then
/// and returns.
pub async fn tell(state: Arc<GatewayState>, router: Arc<Router>, stop: CancellationToken) {
    let mut changes = router.changes();
    let mut told = Told::default();
    let mut keepers = router.keepers();
    loop {
        // `changed` marks what it saw as seen: remembered here, as `has_changed` will not.
        let mut links_changed = false;
        let stopping = tokio::select! {
            () = state.keeping_marked() => tokio::select! {
                () = tokio::time::sleep(KEEP_DELAY) => false,
                () = stop.cancelled() => true,
            },
            // The sender lives in the router, which this task holds.
            _ = changes.changed() => {
                links_changed = true;
                false
            }
            () = stop.cancelled() => true,
        };
        // Looked at in every pass, so that no client is placed by a stale list; computed only
        // when the links changed, which a pass for a connect or a close seldom sees.
        let mut hosts_changed = false;
        if links_changed || changes.has_changed().unwrap_or(false) {
            changes.borrow_and_update();
            let now = router.keepers();
            hosts_changed = now != keepers;
            keepers = now;
        }
        let mut notes = Notes::default();
        for (id, kept) in state.take_keeping() {
            match kept {
                Some(kept) => told.place(&keepers, kept, true, &mut notes),
                None => told.gone(id, &mut notes),
            }
        }
        if hosts_changed {
            let moved = told.moved(&keepers, &state.kept_ids());
            for kept in state.kept(&moved) {
                told.place(&keepers, kept, false, &mut notes);
            }
        }
        notes.send().await;
        if stopping {
            return;
        }
    }
}

/// The keeper each kept client was told to, by client index (all are this gateway's). A
/// client no host could keep when it was told of is not here: the hosts changing looks for
/// those in the state, so that a process whose only worker host keeps nothing remembers
/// nothing per client.
#[derive(Default)]
struct Told(HashMap<u32, Arc<WorkerLink>, ClientHasher>);

impl Told {
    /// Tells `kept`'s keeper of it if it changed (`changed`: the client is new, or its uid
    /// changed), or if its keeper did, in which case the old one forgets it.
    fn place(&mut self, keepers: &Keepers, kept: KeptClient, changed: bool, notes: &mut Notes) {
        let Some(keeper) = keepers.pick(kept.listener, kept.id) else {
            // No host may keep it now: the one told before, if any, hears of the change.
            let before = self.0.get(&kept.id.index);
            if let Some(before) = before.filter(|l| changed && !l.is_gone()) {
                notes.keep(before, kept);
            }
            return;
        };
        match self.0.insert(kept.id.index, keeper.clone()) {
            Some(before) if before.is(keeper) => {
                if changed {
                    notes.keep(keeper, kept);
                }
            }
            Some(before) => {
                crate::metrics::keeper_moved();
                if !before.is_gone() {
                    notes.forget(&before, kept.id);
                }
                notes.keep(keeper, kept);
            }
            None => notes.keep(keeper, kept),
        }
    }

    /// `client` is gone: the keeper it was told to forgets it.
    fn gone(&mut self, client: ClientId, notes: &mut Notes) {
        if let Some(before) = self.0.remove(&client.index) {
            if !before.is_gone() {
                notes.forget(&before, client);
            }
            shrink_if_sparse(&mut self.0);
        }
    }

    /// Of the `kept` clients (with their listeners), those whose keeper is not the one they
    /// were told to, or who have one now and had none.
    fn moved(&self, keepers: &Keepers, kept: &[(ClientId, u16)]) -> Vec<ClientId> {
        let moved = kept.iter().filter_map(|&(id, listener)| {
            let keeper = keepers.pick(listener, id)?;
            let same = self.0.get(&id.index).is_some_and(|b| b.is(keeper));
            (!same).then_some(id)
        });
        moved.collect()
    }
}

/// What one pass tells one link.
struct Note {
    link: Arc<WorkerLink>,
    keep: Vec<KeptClient>,
    forget: Vec<ClientId>,
}

/// What one pass tells, by link (a few: a search beats hashing).
#[derive(Default)]
struct Notes(Vec<Note>);

impl Notes {
    fn to(&mut self, link: &Arc<WorkerLink>) -> &mut Note {
        let at = match self.0.iter().position(|n| n.link.is(link)) {
            Some(at) => at,
            None => {
                self.0.push(Note {
                    link: link.clone(),
                    keep: Vec::new(),
                    forget: Vec::new(),
                });
                self.0.len() - 1
            }
        };
        &mut self.0[at]
    }

    fn keep(&mut self, link: &Arc<WorkerLink>, kept: KeptClient) {
        self.to(link).keep.push(kept);
    }

    fn forget(&mut self, link: &Arc<WorkerLink>, client: ClientId) {
        self.to(link).forget.push(client);
    }

    /// Queues the notes on their links, in batches; a link that closed meanwhile is a change
    /// of hosts, which the next pass answers.
    async fn send(self) {
        for note in self.0 {
            let (mut keep, mut forget) = (note.keep.into_iter(), note.forget.into_iter());
            loop {
                let keep: Vec<_> = keep.by_ref().take(KEEP_BATCH).collect();
                let forget: Vec<_> = forget.by_ref().take(KEEP_BATCH).collect();
                if keep.is_empty() && forget.is_empty() {
                    break;
                }
                if note
                    .link
                    .queue
                    .send(ToWorker::Keep { keep, forget })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::SocketAddrV4;

    use super::*;
    use crate::gateway::counters::Counters;
    use crate::gateway::outbox::outbox;
    use crate::gateway::router::Place;
    use crate::gateway::state::ClientLimits;
    use crate::ops::Command;
    use crate::wire::messages::ServedApp;
    use crate::wire::queue::{self, LinkReceiver, Towards};

    /// Each link's notes: the clients it was told to keep (once per telling) and to forget.
    type Heard = Vec<(Vec<ClientId>, BTreeSet<ClientId>)>;

    /// A worker host `host` at `place` linked to `router` and serving its app, and what the
    /// gateway queues for it.
    fn host(
        router: &Router,
        place: Option<Place>,
        host: u64,
    ) -> (Arc<WorkerLink>, LinkReceiver<ToWorker>) {
        let (sender, receiver) = queue::channel(1024, 1 << 20, Towards::Worker);
        let link = router.add(sender, place);
        let app = ServedApp {
            name: "app".into(),
            version: "v1".into(),
            presence: false,
        };
        router.announce(&link, host, &[app]);
        (link, receiver)
    }

    /// A gateway's router (for one app) and state.
    fn gateway() -> (Arc<Router>, Arc<GatewayState>) {
        let router = Arc::new(Router::new(4, Duration::from_secs(5), vec!["app".into()]));
        let address = SocketAddrV4::new([127, 0, 0, 1].into(), 2300);
        let limits = ClientLimits { max_groups: 8 };
        let counters = Arc::new(Counters::default());
        let state = Arc::new(GatewayState::new(address.into(), limits, counters));
        (router, state)
    }

    /// `n` clients added to `state` whose first event left: their keepers are to be told.
    fn kept_clients(state: &GatewayState, n: usize) -> Vec<ClientId> {
        let remote = "127.0.0.1:5".parse().unwrap();
        let add = || {
            let id = state.add(remote, 0, outbox(1024).0);
            state.keep(id);
            id
        };
        std::iter::repeat_with(add).take(n).collect()
    }

    /// What the `queues` are told until nothing more comes for a second of the test's paused
    /// clock (which moves only while every task waits), checked to be `keeps` clients to keep
    /// and `forgets` to forget in all.
    async fn read(
        queues: &mut [&mut LinkReceiver<ToWorker>],
        keeps: usize,
        forgets: usize,
    ) -> Heard {
        let mut heard: Heard = vec![Default::default(); queues.len()];
        loop {
            let next = futures_util::future::select_all(
                queues
                    .iter_mut()
                    .enumerate()
                    .map(|(i, queue)| Box::pin(async move { (i, queue.recv().await) })),
            );
            let Ok(((i, message), ..)) = tokio::time::timeout(Duration::from_secs(1), next).await
            else {
                break;
            };
            let Some(ToWorker::Keep { keep, forget }) = message else {
                panic!("only keeping is told: {message:?}");
            };
            heard[i].0.extend(keep.into_iter().map(|c| c.id));
            heard[i].1.extend(forget);
        }
        let told = |f: fn(&(Vec<ClientId>, BTreeSet<ClientId>)) -> usize| {
            heard.iter().map(f).sum::<usize>()
        };
        let total = (told(|(k, _)| k.len()), told(|(_, f)| f.len()));
        assert_eq!(total, (keeps, forgets), "{heard:?}");
        heard
    }

    /// The clients each link was told to keep, as sets.
    fn kept(notes: &Heard) -> Vec<BTreeSet<ClientId>> {
        notes
            .iter()
            .map(|(k, _)| k.iter().copied().collect())
            .collect()
    }

    /// Two hosts on the gateway's machine share its clients, each told once; a host
    /// elsewhere takes them all, the near ones forgetting theirs; when it is lost they go back
    /// as they were, and the lost one is told nothing. A uid change is told to the keeper,
    /// a close makes it forget, a client whose first event did not leave is told to nobody,
    /// and a PHP worker never keeps.
    #[tokio::test(start_paused = true)]
    async fn each_client_has_one_keeper_off_the_gateways_machine_when_there_is_one() {
        let (router, state) = gateway();
        let (_php, mut php) = host(&router, None, 0);
        let (_w1, mut near1) = host(&router, Some(Place::Machine), 1);
        let (_w2, mut near2) = host(&router, Some(Place::Machine), 2);
        let stop = CancellationToken::new();
        let task = tokio::spawn(tell(state.clone(), router.clone(), stop.clone()));
        let remote = "127.0.0.1:5".parse().unwrap();
        let clients = kept_clients(&state, 40);
        let unkept = state.add(remote, 0, outbox(1024).0);
        let all: BTreeSet<ClientId> = clients.iter().copied().collect();

        let near = read(&mut [&mut near1, &mut near2], 40, 0).await;
        let split = kept(&near);
        assert!(
            split.iter().all(|k| !k.is_empty()),
            "both hosts keep some: {split:?}"
        );
        assert_eq!(&split[0] | &split[1], all);

        let (far, mut far_queue) = host(&router, Some(Place::Elsewhere), 3);
        let moved = read(&mut [&mut near1, &mut near2, &mut far_queue], 40, 40).await;
        assert_eq!(kept(&moved)[2], all);
        assert_eq!((&moved[0].1, &moved[1].1), (&split[0], &split[1]));

        router.lost(&far);
        let back = read(&mut [&mut near1, &mut near2, &mut far_queue], 40, 0).await;
        assert_eq!(kept(&back)[..2], split[..]);

        let first = clients[0];
        let keeper = usize::from(!split[0].contains(&first));
        state.execute(Command::BindUid {
            client: first,
            uid: "ada".into(),
        });
        let bound = read(&mut [&mut near1, &mut near2], 1, 0).await;
        assert_eq!(bound[keeper].0, [first]);
        state.execute(Command::BindUid {
            client: unkept,
            uid: "bob".into(),
        });
        state.remove(unkept);
        state.remove(first);
        let closed = read(&mut [&mut near1, &mut near2], 0, 1).await;
        assert_eq!(closed[keeper].1, BTreeSet::from([first]));

        stop.cancel();
        task.await.unwrap();
        assert!(php.try_recv().is_err(), "a PHP worker keeps nothing");
    }

    /// Clients kept while no host may keep them (the process's own worker host keeps none)
    /// are told to the first host that may, once it links; one gone meanwhile is not.
    #[tokio::test(start_paused = true)]
    async fn clients_no_host_could_keep_are_told_to_the_first_that_can() {
        let (router, state) = gateway();
        let (_own, mut own) = host(&router, None, 1);
        let stop = CancellationToken::new();
        let task = tokio::spawn(tell(state.clone(), router.clone(), stop.clone()));
        let clients = kept_clients(&state, 3);
        read(&mut [&mut own], 0, 0).await;
        state.remove(clients[0]);
        read(&mut [&mut own], 0, 0).await;

        let (_far, mut far) = host(&router, Some(Place::Elsewhere), 2);
        let told = read(&mut [&mut own, &mut far], 2, 0).await;
        assert_eq!(kept(&told)[1], clients[1..].iter().copied().collect());
        stop.cancel();
        task.await.unwrap();
    }
}
