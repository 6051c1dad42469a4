//! What both ends of a register link share: the clocks, the writer task, the ways a link ends.
//!
//! A link is one TCP connection between a member and a register, opened by the member,
//! authenticated by the handshake, then kept alive by pings in one direction and answers (and
//! gateway lists) in the other. Either end drops a link that stays silent or stops reading, and
//! only that link.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::merge::SETTLE;
use crate::transport::{LinkRead, LinkWrite, Stream};
use crate::wire::{FrameReader, FrameWriter, LinkError, WireError};

/// How often a member pings each register.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// How many ping intervals without a single message end a link, on either end.
const SILENT_INTERVALS: u32 = 3;

/// Messages queued for one link's writer. The register sends a peer only pongs and whole
/// lists, so a peer that fills this has stopped reading: it is dropped rather than buffered
/// for, and the other links never notice.
const LINK_QUEUE: usize = 16;

/// The clocks of a register link; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// How often a member pings; the register answers each ping.
    pub(super) ping_interval: Duration,
    /// How many intervals without a single message end a link, on either end.
    pub(super) silent_intervals: u32,
    /// See [`SETTLE`].
    pub(super) settle: Duration,
}

impl Timing {
    /// The production values.
    pub(super) const DEFAULT: Timing = Timing {
        ping_interval: PING_INTERVAL,
        silent_intervals: SILENT_INTERVALS,
        settle: SETTLE,
    };

    /// How long a link may stay silent.
    pub(super) fn silence(&self) -> Duration {
        self.ping_interval * self.silent_intervals
    }
}

/// The sending side of a link: a bounded queue in front of a task that owns the socket's
/// write half, so that a peer that does not read blocks only that task.
pub(super) struct LinkWriter<M> {
    /// Messages for the writer task.
    queue: mpsc::Sender<M>,
    /// The writer task; aborted when the link is dropped, even if it is stuck in a write.
    task: AbortOnDropHandle<Result<(), WireError>>,
}

impl<M: Serialize + Send + 'static> LinkWriter<M> {
    /// Starts the writer task of a link.
    pub(super) fn spawn(writer: FrameWriter<LinkWrite>) -> Self {
        let (queue, messages) = mpsc::channel(LINK_QUEUE);
        let task = AbortOnDropHandle::new(tokio::spawn(
            writer.forward(messages, PING_INTERVAL * SILENT_INTERVALS),
        ));
        Self { queue, task }
    }

    /// Queues a message without waiting; a full queue ends the link.
    pub(super) fn push(&self, message: M) -> Result<(), LinkError> {
        match self.queue.try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(LinkError::Backlogged(LINK_QUEUE)),
            // The writer has failed; `failed` reports why on the next turn of the loop.
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        }
    }

    /// Completes when the writer task has stopped, with the reason.
    pub(super) async fn failed(&mut self) -> LinkError {
        self.queue.closed().await;
        match (&mut self.task).await {
            Ok(Err(error)) => LinkError::Wire(error),
            Ok(Ok(())) | Err(_) => LinkError::Closed,
        }
    }
}

/// Splits a connected stream into the two framed halves of a link.
pub(super) fn frame(stream: Stream) -> (FrameReader<LinkRead>, FrameWriter<LinkWrite>) {
    let (reader, writer) = stream.split();
    (FrameReader::new(reader), FrameWriter::new(writer))
}
