//! The register: a table of the gateways' internal addresses, served to whoever asks.
//!
//! A gateway stays listed exactly as long as one of its links announcing it lives,
//! so a gateway that stops, crashes or goes silent leaves the list without having to say so.
//! Worker links watch the table and get the whole list again after every change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::pin::pin;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::link::{LinkWriter, Timing, frame};
use crate::transport::Trust;
use crate::wire::{FromRegister, LinkError, Peer, ToRegister, accept_handshake};

/// The pause after a failed `accept` (e.g. out of file descriptors), so that the register
/// does not spin while the condition lasts.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// One gateway as the register lists it: where worker hosts reach it and, if it speaks
/// GatewayWorker's protocol, where PHP BusinessWorkers and GatewayClient do. A gateway of
/// GatewayWorker itself (registered through `crate::gatewayworker`) has only the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Listing {
    /// The advertised internal (worker-facing) address of a wasmgate gateway.
    pub internal: Option<SocketAddr>,
    /// The address of its GatewayWorker-compatible internal port (IPv4, as GatewayWorker's
    /// ids are).
    pub gatewayworker: Option<SocketAddrV4>,
}

/// The addresses as the log names a gateway: `address=10.0.0.7:2900`, with
/// ` (gatewayworker 10.0.0.7:2300)` when it has that port too.
impl std::fmt::Display for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.internal, self.gatewayworker) {
            (Some(internal), Some(php)) => write!(f, "{internal} (gatewayworker {php})"),
            (Some(internal), None) => write!(f, "{internal}"),
            (None, Some(php)) => write!(f, "gatewayworker {php}"),
            (None, None) => f.write_str("none"),
        }
    }
}

/// The gateways the register knows, each with the number of live links announcing it: a
/// restarted gateway may announce again before its old link is found dead, and it must stay
/// listed until both are gone. Both listeners of a register (its own and GatewayWorker's)
/// share one; their members watch it and get the list again after every change.
#[derive(Clone)]
pub struct Directory(watch::Sender<BTreeMap<Listing, usize>>);

impl Default for Directory {
    fn default() -> Self {
        Self(watch::Sender::new(BTreeMap::new()))
    }
}

impl Directory {
    /// Counts one more link announcing `listing`, until the returned entry is dropped.
    pub fn add(&self, listing: Listing) -> DirectoryEntry {
        self.0.send_if_modified(|table| {
            let links = table.entry(listing).or_insert(0);
            *links += 1;
            *links == 1
        });
        info!(address = %listing, "gateway registered");
        DirectoryEntry {
            table: self.clone(),
            listing,
        }
    }

    /// A view of the list of `pick`'s address of each gateway, which gives a first list
    /// at once.
    pub fn watch(&self, pick: fn(&Listing) -> Option<SocketAddr>) -> ListWatch {
        let mut table = self.0.subscribe();
        table.mark_changed();
        ListWatch {
            table,
            pick,
            sent: None,
        }
    }
}

impl DirectoryEntry {
    /// The gateway it announces.
    pub fn listing(&self) -> Listing {
        self.listing
    }
}

/// One link's announcement of a gateway; dropping it (the link ended, however) takes the
/// announcement back.
pub struct DirectoryEntry {
    /// The table it counts in.
    table: Directory,
    /// The announced gateway.
    listing: Listing,
}

impl Drop for DirectoryEntry {
    fn drop(&mut self) {
        let listing = self.listing;
        let removed = self.table.0.send_if_modified(|table| {
            let Some(links) = table.get_mut(&listing) else {
                return false;
            };
            *links -= 1;
            if *links == 0 {
                table.remove(&listing);
                true
            } else {
                false
            }
        });
        if removed {
            info!(address = %listing, "gateway unregistered");
        }
    }
}

/// Runs a register on `listener`, listing gateways in `directory`, until `shutdown` is
/// cancelled, then closes every link.
///
/// Each link is served by its own task; one peer's failure (bad secret, garbage, silence, not
/// reading) ends that link only. Never fails today; the `Result` matches the other roles.
pub async fn run(
    listener: TcpListener,
    directory: Directory,
    trust: Trust,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(listener, directory, trust, Timing::DEFAULT, shutdown).await
}

/// [`run`] with the given clocks.
pub(super) async fn run_with(
    listener: TcpListener,
    table: Directory,
    trust: Trust,
    timing: Timing,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_each(listener, "register", &shutdown, |stream, peer| {
        let (trust, table, shutdown) = (trust.clone(), table.clone(), shutdown.clone());
        async move {
            match serve_member(stream, &trust, &table, timing, &shutdown).await {
                Ok(()) => debug!(%peer, "register link closed"),
                Err(LinkError::Handshake(error)) if error.is_quiet() => {
                    debug!(%peer, %error, "register link dropped during the handshake");
                }
                Err(error) => warn!(%peer, %error, "register link dropped"),
            }
        }
    })
    .await;
    Ok(())
}

/// Accepts connections on `listener` until `shutdown`, serving each in a task of its own
/// (`serve`, which logs its own end), then waits for those tasks. `what` names the listener
/// in the warning about a failed `accept`, after which it pauses instead of spinning.
pub async fn serve_each<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    shutdown: &CancellationToken,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "{what} cannot accept a connection");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = sleep(ACCEPT_RETRY) => continue,
                    }
                }
            },
        };
        tasks.spawn(serve(stream, peer));
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// Serves one member's link: answers pings, records a gateway's address for as long as the
/// link lives, and keeps a worker host's list up to date.
async fn serve_member(
    stream: TcpStream,
    trust: &Trust,
    table: &Directory,
    timing: Timing,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    let (mut reader, mut writer) = frame(trust.accept(stream).await?);
    let role = accept_handshake(&mut reader, &mut writer, trust.secret()).await?;
    let mut writer = LinkWriter::spawn(writer);
    let mut gateway: Option<DirectoryEntry> = None;
    let mut watched: Option<ListWatch> = None;
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
                    ToRegister::Gateway { address, gatewayworker } => {
                        if role != Peer::Gateway {
                            return Err(LinkError::NotAGateway(role));
                        }
                        let listing = Listing {
                            internal: Some(address),
                            gatewayworker,
                        };
                        if gateway.as_ref().map(|entry| entry.listing) != Some(listing) {
                            gateway = Some(table.add(listing));
                        }
                    }
                    ToRegister::Worker => {
                        if watched.is_none() {
                            info!(?role, "member registered for the gateway list");
                            watched = Some(table.watch(|listing| listing.internal));
                        }
                    }
                }
            }
        }
    }
}

/// A member's view of the directory: one address of each listed gateway, and the list it
/// was last given, so that a change it does not see (another port) gives it nothing.
pub struct ListWatch {
    /// The directory.
    table: watch::Receiver<BTreeMap<Listing, usize>>,
    /// Which address of a listing this member wants.
    pick: fn(&Listing) -> Option<SocketAddr>,
    /// The list last given.
    sent: Option<Vec<SocketAddr>>,
}

impl ListWatch {
    /// The next list to give (the first at once), sorted and without repeats; never
    /// completes once the directory is gone.
    pub async fn next(&mut self) -> Vec<SocketAddr> {
        while self.table.changed().await.is_ok() {
            let list: BTreeSet<SocketAddr> = self
                .table
                .borrow_and_update()
                .keys()
                .filter_map(self.pick)
                .collect();
            let list: Vec<SocketAddr> = list.into_iter().collect();
            if self.sent.as_ref() != Some(&list) {
                self.sent = Some(list.clone());
                return list;
            }
        }
        std::future::pending().await
    }
}

/// The next list for a link that may watch the directory; never completes for one that
/// does not.
pub async fn next_list(watched: &mut Option<ListWatch>) -> Vec<SocketAddr> {
    match watched {
        Some(watched) => watched.next().await,
        None => std::future::pending().await,
    }
}
