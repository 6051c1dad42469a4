//! Delivers client events to plugin instances, one client's events in order.
//!
//! Every event from every gateway link passes through one queue into the dispatcher, which
//! picks the app from the client's listener and the instance from a hash of the client id.
//! Each instance has one driver task that runs its events (and its timers) one at a time.
//! So a client's events reach one instance in the order its gateway sent them, and different
//! clients run in parallel across instances.
//!
//! The driver also keeps GatewayWorker's `$_SESSION` consistent without its extra round trip:
//! when a callback changed the session, the next event of that client may have left the
//! gateway before the change arrived there. The gateway stamps each event with how many
//! session changes it has applied; when that is behind what this host wrote, the driver uses
//! the session it wrote instead of the stale one in the event.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::bindings::{Client, WebsocketRequest};
use super::host_api::Gateways;
use super::links::Incoming;
use super::runtime::{Call, PluginCode, PluginInstance, Runtime};
use crate::client_id::ClientId;
use crate::ops::{Command, Session};
use crate::wire::messages::{ClientContext, EventKind};

/// Events one instance may have waiting before the dispatcher waits for it.
const INSTANCE_QUEUE: usize = 1024;

/// The instances of one app.
struct App {
    instances: Vec<mpsc::Sender<Incoming>>,
}

/// Routes events to the instances of the loaded apps.
pub struct Dispatcher {
    apps: HashMap<String, App>,
    hasher: RandomState,
    drivers: JoinSet<()>,
}

impl Dispatcher {
    /// Starts `instances` instances of each plugin in `codes`.
    pub fn start(
        runtime: &Runtime,
        codes: Vec<Arc<PluginCode>>,
        instances: usize,
        gateways: Arc<dyn Gateways>,
        worker: Arc<str>,
    ) -> Self {
        let mut drivers = JoinSet::new();
        let apps = codes
            .into_iter()
            .map(|code| {
                let senders = (0..instances.max(1))
                    .map(|_| {
                        let (tx, rx) = mpsc::channel(INSTANCE_QUEUE);
                        let instance =
                            runtime.instance(code.clone(), gateways.clone(), worker.clone());
                        drivers.spawn(drive(instance, rx, gateways.clone()));
                        tx
                    })
                    .collect();
                (code.name().to_owned(), App { instances: senders })
            })
            .collect();
        Self {
            apps,
            hasher: RandomState::new(),
            drivers,
        }
    }

    /// Delivers events until `events` closes, then lets every instance finish its queue and
    /// run `on-worker-stop`.
    pub async fn run(mut self, mut events: mpsc::Receiver<Incoming>) {
        while let Some(event) = events.recv().await {
            let Some(app) = self.apps.get(&event.listener.app) else {
                tracing::warn!(
                    app = %event.listener.app,
                    client = %event.client.id,
                    "no plugin loaded for this app; event dropped"
                );
                continue;
            };
            let slot = self.hasher.hash_one(event.client.id) as usize % app.instances.len();
            if app.instances[slot].send(event).await.is_err() {
                tracing::error!("a plugin instance driver ended unexpectedly");
            }
        }
        self.apps.clear();
        while self.drivers.join_next().await.is_some() {}
    }
}

/// What this host wrote to a client's session and has not yet seen come back.
struct SessionTrack {
    /// The gateway's session version when the writes started.
    base_version: u64,
    /// Writes sent since then.
    writes: u64,
    /// The session after those writes.
    session: Session,
}

async fn drive(
    mut instance: PluginInstance,
    mut events: mpsc::Receiver<Incoming>,
    gateways: Arc<dyn Gateways>,
) {
    let _ = instance.start().await;
    let mut sessions: HashMap<ClientId, SessionTrack> = HashMap::new();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => handle(&mut instance, &mut sessions, &*gateways, event).await,
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
    let client = wit_client(&context, &listener.name, listener.port, session);
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
        gateways
            .command(Command::CloseClient {
                client: id,
                farewell: None,
            })
            .await;
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

fn wit_client(context: &ClientContext, listener: &str, port: u16, session: Session) -> Client {
    Client {
        id: context.id.to_string(),
        remote_addr: context.remote.ip().to_string(),
        remote_port: context.remote.port(),
        gateway_addr: context.id.gateway.ip().to_string(),
        gateway_port: port,
        listener: listener.to_owned(),
        uid: context.uid.clone(),
        session: session.into_iter().collect(),
    }
}
