//! Delivers client events to plugin instances, one client's events in order.
//!
//! Each gateway link hands its events straight to the [`Dispatcher`], which picks the app from
//! the client's listener and the instance from a hash of the client id. Each instance has one
//! driver task that runs its events (and its timers) one at a time. So a client's events
//! reach one instance in the order its gateway sent them, and different clients run in
//! parallel across instances. A new version of an app travels through the same driver queues
//! as the events ([`Work::Swap`]), which is what keeps the order across a hot reload.
//!
//! The driver also keeps GatewayWorker's `$_SESSION` consistent without its extra round trip:
//! when a callback changed the session, the next event of that client may have left the
//! gateway before the change arrived there. The gateway stamps each event with how many
//! session changes it has applied; when that is behind what this host wrote, the driver uses
//! the session it wrote instead of the stale one in the event.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::bindings::{Client, WebsocketRequest};
use super::runtime::{Call, EventClient, PluginInstance};
use crate::client_id::ClientId;
use crate::links::{EventSink, Incoming};
use crate::ops::{Command, Gateways, Session};
use crate::wire::messages::{ClientContext, EventKind};

/// Events one instance may have waiting before the link delivering to it waits.
const INSTANCE_QUEUE: usize = 1024;

/// What an instance driver is asked to do, in order.
enum Work {
    /// Run a client event.
    Event(Incoming),
    /// Continue with this new version's instance; the current one finishes first and runs
    /// `on-worker-stop`.
    Swap(PluginInstance),
}

/// The running instances of one app (their drivers' queues).
type App = Vec<mpsc::Sender<Work>>;

/// Routes events to the instances of the running apps.
pub struct Dispatcher {
    apps: RwLock<HashMap<String, App>>,
    gateways: Arc<dyn Gateways>,
    hasher: RandomState,
    drivers: TaskTracker,
    /// Events dropped per app that has no plugin, for the log.
    dropped: Mutex<HashMap<String, u64>>,
}

impl Dispatcher {
    /// A dispatcher with no apps yet; instances reach the gateways through `gateways`.
    pub fn new(gateways: Arc<dyn Gateways>) -> Arc<Self> {
        Arc::new(Self {
            apps: RwLock::new(HashMap::new()),
            gateways,
            hasher: RandomState::new(),
            drivers: TaskTracker::new(),
            dropped: Mutex::new(HashMap::new()),
        })
    }

    /// Serves `app` with `instances` from now on. A running version finishes the events
    /// already queued for it, then runs `on-worker-stop`.
    pub async fn install(&self, app: &str, instances: Vec<PluginInstance>) {
        let running = self
            .apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(app)
            .filter(|drivers| drivers.len() == instances.len())
            .cloned();
        match running {
            Some(drivers) => {
                for (driver, instance) in drivers.iter().zip(instances) {
                    let _ = driver.send(Work::Swap(instance)).await;
                }
            }
            None => {
                let drivers = instances
                    .into_iter()
                    .map(|instance| {
                        let (tx, rx) = mpsc::channel(INSTANCE_QUEUE);
                        self.drivers
                            .spawn(drive(instance, rx, self.gateways.clone()));
                        tx
                    })
                    .collect();
                self.dropped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(app);
                self.apps
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(app.to_owned(), drivers);
            }
        }
    }

    /// Stops serving `app`: its instances finish what is queued and run `on-worker-stop`.
    pub fn remove(&self, app: &str) {
        self.apps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app);
    }

    /// Stops every app and waits until every instance has finished its queue and run
    /// `on-worker-stop`. Call it once no link delivers events any more.
    pub async fn stop(&self) {
        self.apps.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.drivers.close();
        self.drivers.wait().await;
    }
}

impl EventSink for Dispatcher {
    /// Queues `event` for the instance that serves its client; waits while that queue is full.
    async fn deliver(&self, event: Incoming) {
        let driver = {
            let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
            apps.get(&event.listener.app).map(|instances| {
                let slot = self.hasher.hash_one(event.client.id) as usize % instances.len();
                instances[slot].clone()
            })
        };
        let Some(driver) = driver else {
            let mut dropped = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
            let count = dropped.entry(event.listener.app.clone()).or_default();
            *count += 1;
            // Log the 1st, 2nd, 4th, 8th … so a missing plugin is visible without flooding.
            if count.is_power_of_two() {
                tracing::warn!(app = %event.listener.app, dropped = *count, "no plugin for this app; events dropped");
            }
            return;
        };
        if driver.send(Work::Event(event)).await.is_err() {
            tracing::error!("a plugin instance driver ended unexpectedly");
        }
    }
}

/// What this host wrote to a client's session and has not yet seen come back.
struct SessionTrack {
    /// The gateway's session version when the writes started.
    base_version: u64,
    /// Writes sent since then.
    writes: u64,
    /// The session after those writes.
    session: Arc<Session>,
}

async fn drive(
    mut instance: PluginInstance,
    mut work: mpsc::Receiver<Work>,
    gateways: Arc<dyn Gateways>,
) {
    let mut sessions: HashMap<ClientId, SessionTrack> = HashMap::new();
    loop {
        tokio::select! {
            next = work.recv() => match next {
                Some(Work::Event(event)) => handle(&mut instance, &mut sessions, &*gateways, event).await,
                Some(Work::Swap(new)) => {
                    let mut old = std::mem::replace(&mut instance, new);
                    old.stop().await;
                }
                None => break,
            },
            id = instance.next_timer() => {
                let _ = instance.call(Call::Timer(id)).await;
            }
        }
    }
    instance.stop().await;
}

async fn handle(
    instance: &mut PluginInstance,
    sessions: &mut HashMap<ClientId, SessionTrack>,
    gateways: &dyn Gateways,
    event: Incoming,
) {
    let Incoming {
        listener,
        client: context,
        kind,
    } = event;
    let id = context.id;
    let track = sessions
        .remove(&id)
        .filter(|t| context.session_version < t.base_version + t.writes);
    let session = match &track {
        Some(t) => t.session.clone(),
        None => context.session.clone(),
    };
    let client = EventClient {
        record: wit_client(&context, &listener.name, listener.port, &session),
        id,
        session,
    };
    let outcome = match &kind {
        EventKind::Connect => instance.call(Call::Connect(&client)).await,
        EventKind::WebSocketConnect(request) => {
            let request = WebsocketRequest {
                path: request.path.clone(),
                query: request.query.clone(),
                headers: request.headers.clone(),
            };
            instance
                .call(Call::WebsocketConnect(&client, &request))
                .await
        }
        EventKind::Message(data) => instance.call(Call::Message(&client, data)).await,
        EventKind::Close => {
            let _ = instance.call(Call::Close(&client)).await;
            return;
        }
    };
    let Ok(outcome) = outcome else { return };
    if let Some(reason) = outcome.rejected {
        tracing::info!(client = %id, "plugin rejected the websocket client: {reason}");
        let rejected = gateways.command(Command::RejectClient { client: id, reason });
        if rejected.await.is_err() {
            tracing::warn!(client = %id, "cannot reject the client: its gateway is not linked");
        }
    }
    if let Some(change) = outcome.session {
        let (base_version, writes) = match track {
            Some(t) => (t.base_version, t.writes),
            None => (context.session_version, 0),
        };
        sessions.insert(
            id,
            SessionTrack {
                base_version,
                writes: writes + change.writes,
                session: change.session,
            },
        );
    } else if let Some(t) = track {
        sessions.insert(id, t);
    }
}

/// The record a callback receives; its session is the one copy an event makes of it, since
/// wasmtime lowers the record into the guest from owned values.
fn wit_client(context: &ClientContext, listener: &str, port: u16, session: &Session) -> Client {
    Client {
        id: context.id.to_string(),
        remote_addr: context.remote.ip().to_string(),
        remote_port: context.remote.port(),
        gateway_addr: context.id.gateway.ip().to_string(),
        gateway_port: port,
        listener: listener.to_owned(),
        uid: context.uid.clone(),
        session: session
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}
