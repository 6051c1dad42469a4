//! In-process links: when a worker host and a gateway run in the same process, their link is
//! a pair of bounded channels instead of a socket.
//!
//! The link carries the very same [`ToGateway`] and [`ToWorker`] messages as a TCP link and is
//! served by the same code on both ends; only the transport differs. It skips what a process
//! does not need to do to talk to itself: encoding, system calls, and the handshake (both ends
//! were given the secret by the same configuration). Registers still see every gateway and
//! worker host, so the rest of the cluster cannot tell the difference.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::transport::LinkRead;
use crate::wire::codec::{FrameReader, WireError};
use crate::wire::handshake::Peer;
use crate::wire::messages::{ToGateway, ToWorker};
use crate::wire::queue::{self, LinkReceiver, LinkSender, Towards};

/// Messages an in-process link may have queued in each direction.
pub const LOCAL_QUEUE: usize = 16 * 1024;

/// A link request a gateway receives from a worker host of its own process.
pub struct LocalLink {
    /// Who is linking.
    pub role: Peer,
    /// What the worker host sends.
    pub inbound: LinkReceiver<ToGateway>,
    /// Where the gateway sends events and replies; handed back to the worker host.
    pub accepted: oneshot::Sender<LinkReceiver<ToWorker>>,
}

/// The gateways of this process that accept in-process links, by internal address.
#[derive(Clone, Default)]
pub struct LocalGateways(Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<LocalLink>>>>);

impl LocalGateways {
    /// Makes the gateway at `address` reachable in-process; its link requests arrive on the
    /// returned channel until [`withdraw`](Self::withdraw).
    pub fn offer(&self, address: SocketAddr) -> mpsc::Receiver<LocalLink> {
        let (tx, rx) = mpsc::channel(16);
        self.lock().insert(address, tx);
        rx
    }

    /// Stops offering in-process links to the gateway at `address`.
    pub fn withdraw(&self, address: SocketAddr) {
        self.lock().remove(&address);
    }

    /// Links to the gateway at `address` if it runs in this process: returns the sender for
    /// what the worker host sends (a queue of at most `bytes`) and the receiver for what the
    /// gateway sends. `None` means "not here, use the network".
    pub async fn dial(
        &self,
        address: SocketAddr,
        role: Peer,
        bytes: usize,
    ) -> Option<(LinkSender<ToGateway>, LinkReceiver<ToWorker>)> {
        let gateway = self.lock().get(&address).cloned()?;
        let (to_gateway, inbound) = queue::channel(LOCAL_QUEUE, bytes, Towards::Gateway);
        let (accepted, answer) = oneshot::channel();
        gateway
            .send(LocalLink {
                role,
                inbound,
                accepted,
            })
            .await
            .ok()?;
        let from_gateway = answer.await.ok()?;
        Some((to_gateway, from_gateway))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<LocalLink>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The receiving half of an internal link, over TCP or in-process, so that the code serving
/// a link does not care which it is.
pub enum LinkReader<M> {
    /// Frames from a socket.
    Tcp(FrameReader<LinkRead>),
    /// Messages from a worker host or gateway of this process.
    Local(LinkReceiver<M>),
}

impl<M: DeserializeOwned> LinkReader<M> {
    /// The next message; `None` when the peer closed the link.
    pub async fn recv(&mut self) -> Result<Option<M>, WireError> {
        match self {
            LinkReader::Tcp(frames) => frames.recv().await,
            LinkReader::Local(messages) => Ok(messages.recv().await),
        }
    }
}
