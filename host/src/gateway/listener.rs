//! The client-facing listener: accepts connections and hands each to its protocol and to
//! [`super::conn::serve`] in a task of its own, so one client's failure never reaches the
//! accept loop.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::conn::{self, ConnShared};
use super::protocol::{text, ws};
use crate::config::Protocol;

/// Accepts clients until shutdown.
pub async fn serve(
    listener: TcpListener,
    protocol: Protocol,
    max_message_size: usize,
    shared: ConnShared,
) {
    let shutdown: CancellationToken = shared.shutdown.clone();
    loop {
        let (socket, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of descriptors: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = socket.set_nodelay(true);
            client(socket, remote, protocol, max_message_size, shared).await;
        });
    }
}

async fn client(
    socket: TcpStream,
    remote: std::net::SocketAddr,
    protocol: Protocol,
    max_message_size: usize,
    shared: ConnShared,
) {
    match protocol {
        Protocol::Text => {
            let (r, w) = socket.into_split();
            let (inbound, outbound) = text::framed(r, w, max_message_size);
            conn::serve(shared, remote, inbound, outbound, None).await;
        }
        Protocol::Ws => match ws::accept(socket, max_message_size).await {
            Ok((inbound, outbound, request)) => {
                conn::serve(shared, remote, inbound, outbound, Some(request)).await;
            }
            Err(e) => tracing::debug!(%remote, "websocket handshake failed: {e}"),
        },
    }
}
