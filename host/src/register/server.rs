//! The register: a table of the gateways' internal addresses, served to whoever asks.
//!
//! A gateway's address stays listed exactly as long as one of its links announcing it lives,
//! so a gateway that stops, crashes or goes silent leaves the list without having to say so.
//! Worker links watch the table and get the whole list again after every change.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::link::{LinkWriter, Timing, frame};
use crate::wire::{FromRegister, LinkError, Peer, ToRegister, accept_handshake};

/// The pause after a failed `accept` (e.g. out of file descriptors), so that the register
/// does not spin while the condition lasts.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The gateway addresses the register knows, each with the number of live links announcing
/// it: a restarted gateway may announce again before its old link is found dead, and the
/// address must stay listed until both are gone. Worker links watch it; an update wakes them
/// only when the set of addresses changes.
#[derive(Clone)]
struct GatewayTable(watch::Sender<BTreeMap<SocketAddrV4, usize>>);

impl GatewayTable {
    fn new() -> Self {
        Self(watch::Sender::new(BTreeMap::new()))
    }

    /// Counts one more link announcing `address`, until the returned entry is dropped.
    fn add(&self, address: SocketAddrV4) -> GatewayEntry {
        self.0.send_if_modified(|table| {
            let links = table.entry(address).or_insert(0);
            *links += 1;
            *links == 1
        });
        info!(%address, "gateway registered");
        GatewayEntry {
            table: self.clone(),
            address,
        }
    }

    /// A view of the table that reports a first change at once.
    fn subscribe(&self) -> watch::Receiver<BTreeMap<SocketAddrV4, usize>> {
        let mut receiver = self.0.subscribe();
        receiver.mark_changed();
        receiver
    }
}

/// One link's announcement of a gateway address; dropping it (the link ended, however) takes
/// the announcement back.
struct GatewayEntry {
    /// The table it counts in.
    table: GatewayTable,
    /// The announced address.
    address: SocketAddrV4,
}

impl Drop for GatewayEntry {
    fn drop(&mut self) {
        let address = self.address;
        let removed = self.table.0.send_if_modified(|table| {
            let Some(links) = table.get_mut(&address) else {
                return false;
            };
            *links -= 1;
            if *links == 0 {
                table.remove(&address);
                true
            } else {
                false
            }
        });
        if removed {
            info!(%address, "gateway unregistered");
        }
    }
}

/// Runs a register on `listener` until `shutdown` is cancelled, then closes every link.
///
/// Each link is served by its own task; one peer's failure (bad secret, garbage, silence, not
/// reading) ends that link only. Never fails today; the `Result` matches the other roles.
pub async fn run(
    listener: TcpListener,
    secret: Arc<[u8]>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(listener, secret, Timing::DEFAULT, shutdown).await
}

/// [`run`] with the given clocks.
pub(super) async fn run_with(
    listener: TcpListener,
    secret: Arc<[u8]>,
    timing: Timing,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let table = GatewayTable::new();
    let links = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "register cannot accept a connection");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = sleep(ACCEPT_RETRY) => continue,
                    }
                }
            },
        };
        let (secret, table, shutdown) = (secret.clone(), table.clone(), shutdown.clone());
        links.spawn(async move {
            match serve_member(stream, &secret, &table, timing, &shutdown).await {
                Ok(()) => debug!(%peer, "register link closed"),
                Err(LinkError::Handshake(error)) if error.is_quiet() => {
                    debug!(%peer, %error, "register link dropped during the handshake");
                }
                Err(error) => warn!(%peer, %error, "register link dropped"),
            }
        });
    }
    drop(listener);
    links.close();
    links.wait().await;
    Ok(())
}

/// Serves one member's link: answers pings, records a gateway's address for as long as the
/// link lives, and keeps a worker host's list up to date.
async fn serve_member(
    stream: TcpStream,
    secret: &[u8],
    table: &GatewayTable,
    timing: Timing,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    let (mut reader, mut writer) = frame(stream);
    let role = accept_handshake(&mut reader, &mut writer, secret).await?;
    let mut writer = LinkWriter::spawn(writer);
    let mut gateway: Option<GatewayEntry> = None;
    let mut watched: Option<watch::Receiver<BTreeMap<SocketAddrV4, usize>>> = None;
    let silence = timing.silence();
    let mut deadline = pin!(sleep(silence));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = &mut deadline => return Err(LinkError::Silent(silence)),
            error = writer.failed() => return Err(error),
            list = next_list(&mut watched) => writer.push(FromRegister::Gateways(list))?,
            message = reader.recv::<ToRegister>() => {
                let Some(message) = message? else {
                    return Ok(());
                };
                deadline.as_mut().reset(Instant::now() + silence);
                match message {
                    ToRegister::Ping => writer.push(FromRegister::Pong)?,
                    ToRegister::Gateway { address } => {
                        if role != Peer::Gateway {
                            return Err(LinkError::NotAGateway(role));
                        }
                        if gateway.as_ref().map(|entry| entry.address) != Some(address) {
                            gateway = Some(table.add(address));
                        }
                    }
                    ToRegister::Worker => {
                        if watched.is_none() {
                            info!(?role, "member registered for the gateway list");
                            watched = Some(table.subscribe());
                        }
                    }
                }
            }
        }
    }
}

/// The next version of the gateway list a worker link watches; never completes for a link
/// that watches nothing.
async fn next_list(
    watched: &mut Option<watch::Receiver<BTreeMap<SocketAddrV4, usize>>>,
) -> Vec<SocketAddrV4> {
    if let Some(receiver) = watched
        && receiver.changed().await.is_ok()
    {
        return receiver.borrow_and_update().keys().copied().collect();
    }
    std::future::pending().await
}
