//! The proof that the NATS server has every command a worker host published so far, which an
//! event's acknowledgement waits for (ARCHITECTURE.md, "Delivery"): a command published but
//! still in the client's buffers, or in the socket of a host that dies, is lost with the host,
//! and its event must then run again elsewhere rather than count as done.
//!
//! The marker publishes each mark asked for ([`crate::ops::marks`]) on a subject only this
//! process subscribes to, behind the commands already handed to the client. A NATS server
//! handles one connection's messages in order, so the mark coming back means the server has
//! taken every command before it (delivered to its subscribers, or queued to the other
//! servers of the cluster). `async_nats::Client::flush` would not do: in the pinned
//! async-nats (0.52) it resolves once the bytes are written to the socket, not when the server
//! has read them. One mark answers every acknowledgement parked while it was on its way.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::Nats;
use crate::ops::marks::Marks;

/// How long a mark may stay unanswered before another is published: a mark lost with a
/// connection (the client drops its unsent buffer when it reconnects) would otherwise hold
/// its acknowledgements until the next event asks for one.
const REPUBLISH_AFTER: Duration = Duration::from_secs(1);

/// Publishes `marks` as they are asked for and records their echoes, for as long as the
/// connection lives. If its subject cannot be subscribed, the marks end (logged): the
/// acknowledgements then go without waiting, as before this confirmation existed.
pub(super) async fn confirm(nats: Nats, marks: Arc<Marks>) {
    let subject = nats.subjects().marks(rand::random());
    let client = nats.client().clone();
    let mut echoes = match client.subscribe(subject.clone()).await {
        Ok(echoes) => echoes,
        Err(e) => {
            tracing::error!(
                "NATS: cannot subscribe to {subject}: {e}; events are acknowledged without \
                 waiting for NATS to confirm their commands"
            );
            marks.end();
            return;
        }
    };
    let mut last_sent = Instant::now();
    loop {
        let overdue = last_sent + REPUBLISH_AFTER;
        tokio::select! {
            () = marks.wanted() => {
                // Lets the acknowledgements made at the same moment ask for this mark too.
                tokio::task::yield_now().await;
            }
            () = tokio::time::sleep_until(overdue), if marks.outstanding() && nats.is_connected() => {}
            echo = echoes.next() => {
                let Some(echo) = echo else {
                    marks.end();
                    return;
                };
                if let Ok(mark) = <[u8; 8]>::try_from(&echo.payload[..]) {
                    marks.echo(u64::from_be_bytes(mark));
                }
                continue;
            }
        }
        let mark = marks.take();
        last_sent = Instant::now();
        let payload = bytes::Bytes::copy_from_slice(&mark.to_be_bytes());
        if let Err(e) = client.publish(subject.clone(), payload).await {
            tracing::debug!("NATS: mark {mark} not published: {e}");
        }
        crate::metrics::nats_mark_published();
    }
}
