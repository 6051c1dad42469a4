//! The registering side: how a gateway, a worker host or a push client stays known to every
//! register, and learns the gateway list from them.
//!
//! A member keeps one link per register, each in its own task that reconnects forever, so a
//! register that is down or restarting costs only its own link; the lists that arrive on the
//! links are merged by [`super::merge`].

use std::collections::BTreeSet;
use std::net::{SocketAddr, SocketAddrV4};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::link::{LinkWriter, Timing, frame};
use super::merge::{MergedLists, Report};
use super::reach::RegisterReach;
use crate::transport::{LinkRead, LinkWrite, Trust};
use crate::wire::{
    FrameReader, FrameWriter, FromRegister, LinkError, Peer, ToRegister, connect_handshake,
};

/// The first delay before reconnecting to a register; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// How long no register may be reachable before the warning becomes an error.
const OUTAGE_ERROR: Duration = Duration::from_secs(5);

/// The longest delay between two attempts to reach a register, so that a member is back
/// within seconds of a register restart.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What a registering process is, and so what it tells the registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// A gateway; it gets no list.
    Gateway {
        /// Where worker hosts reach it.
        internal: SocketAddr,
        /// Where PHP BusinessWorkers and GatewayClient reach it, if they may.
        gatewayworker: Option<SocketAddrV4>,
    },
    /// A worker host, which wants the gateway list.
    Worker,
    /// A push client, which wants the gateway list but runs no plugins.
    Client,
}

impl Announce {
    /// The role it claims in the handshake.
    fn role(self) -> Peer {
        match self {
            Announce::Gateway { .. } => Peer::Gateway,
            Announce::Worker => Peer::Worker,
            Announce::Client => Peer::Client,
        }
    }

    /// Its first message after the handshake.
    fn message(self) -> ToRegister {
        match self {
            Announce::Gateway {
                internal,
                gatewayworker,
            } => ToRegister::Gateway {
                address: internal,
                gatewayworker,
            },
            Announce::Worker | Announce::Client => ToRegister::Worker,
        }
    }
}

/// Registers this process with every register of `reach` and keeps it registered until
/// `shutdown` is cancelled, then closes the links (which unregisters a gateway); `reach`
/// follows which registers are linked.
///
/// Each register gets its own task: it connects, authenticates with `trust`, announces
/// `announce`, pings, and reconnects with jittered exponential backoff (100 ms doubling to
/// 2 s) whenever the register is down or the link fails. The returned channel carries the
/// gateway set merged from every register (see [`MergedLists`]); it stays empty for a
/// gateway, and its sender is gone once every task has stopped. Must be called from within a
/// tokio runtime.
pub fn spawn_registration(
    reach: RegisterReach,
    trust: Trust,
    announce: Announce,
    shutdown: CancellationToken,
) -> watch::Receiver<BTreeSet<SocketAddr>> {
    spawn_registration_with(reach, trust, announce, Timing::DEFAULT, shutdown)
}

/// [`spawn_registration`] with the given clocks.
pub(super) fn spawn_registration_with(
    reach: RegisterReach,
    trust: Trust,
    announce: Announce,
    timing: Timing,
    shutdown: CancellationToken,
) -> watch::Receiver<BTreeSet<SocketAddr>> {
    let registers = reach.addresses();
    let lists = Arc::new(MergedLists::new(registers.len()));
    let gateways = lists.subscribe();
    for (index, register) in registers.into_iter().enumerate() {
        let member = Member {
            register,
            index,
            trust: trust.clone(),
            announce,
            timing,
            lists: lists.clone(),
            reach: reach.clone(),
        };
        tokio::spawn(member.stay_registered(shutdown.clone()));
    }
    gateways
}

/// This process's membership with one register.
struct Member {
    /// The register's address.
    register: SocketAddr,
    /// The register's slot in `lists`.
    index: usize,
    /// How links prove themselves: the cluster's secret, and TLS if configured.
    trust: Trust,
    /// What this process is.
    announce: Announce,
    /// The link's clocks.
    timing: Timing,
    /// Where the register's list goes.
    lists: Arc<MergedLists>,
    /// Which of the member's registers are linked, this one's link among them.
    reach: RegisterReach,
}

impl Member {
    /// Links to the register again and again until `shutdown`.
    async fn stay_registered(self, shutdown: CancellationToken) {
        let register = self.register;
        let mut backoff = BACKOFF_MIN;
        // Warn once per outage of this register, not on every retry; while another register
        // is linked, nothing is lost but redundancy.
        let mut warned = false;
        loop {
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return,
                attempt = self.connect() => attempt,
            };
            match attempt {
                Ok((reader, writer)) => {
                    warned = false;
                    if self.reach.linked(self.index) {
                        info!(%register, "linked to register: a register is reachable again");
                    } else {
                        info!(%register, "linked to register");
                    }
                    let up = Instant::now();
                    let outcome = self.serve(reader, writer, &shutdown).await;
                    self.lists.report(self.index, Report::Down);
                    match outcome {
                        Ok(()) => return,
                        Err(error) => info!(%register, %error, "link to register lost"),
                    }
                    self.reach.down(self.index);
                    // A link that held for a while means the register is healthy: come back
                    // fast. One that failed at once must not turn into a tight loop.
                    if up.elapsed() >= BACKOFF_MAX {
                        backoff = BACKOFF_MIN;
                    }
                }
                Err(error) => {
                    self.reach.down(self.index);
                    if !warned {
                        warn!(%register, %error, "cannot register; retrying in the background");
                        warned = true;
                    } else {
                        debug!(%register, %error, "still cannot register");
                    }
                    // With no register at all, this role cannot find (or be found by) the
                    // rest of the cluster: an error, once per outage, from whichever link
                    // notices first.
                    if let Some(outage) = self.reach.escalate(OUTAGE_ERROR) {
                        error!(
                            registers = %outage.addresses(), %error,
                            "no register reachable for {OUTAGE_ERROR:?}: check `[register] listen` and this role's `register`; still retrying"
                        );
                    }
                }
            }
            let delay = rand::rng().random_range(backoff / 2..=backoff);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sleep(delay) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Opens and authenticates a link to the register.
    async fn connect(&self) -> Result<(FrameReader<LinkRead>, FrameWriter<LinkWrite>), LinkError> {
        let stream = self.trust.dial(self.register).await?;
        let (mut reader, mut writer) = frame(stream);
        let (secret, role) = (self.trust.secret(), self.announce.role());
        connect_handshake(&mut reader, &mut writer, secret, role).await?;
        Ok((reader, writer))
    }

    /// Announces this process on an open link, then pings and reports lists until the link
    /// fails or `shutdown` (`Ok`).
    async fn serve(
        &self,
        mut reader: FrameReader<LinkRead>,
        writer: FrameWriter<LinkWrite>,
        shutdown: &CancellationToken,
    ) -> Result<(), LinkError> {
        let mut writer = LinkWriter::spawn(writer);
        writer.push(self.announce.message())?;
        let interval = self.timing.ping_interval;
        let mut ping = interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let silence = self.timing.silence();
        let mut deadline = pin!(sleep(silence));
        let mut settling = pin!(sleep(self.timing.settle));
        let mut settled = false;
        let mut latest: Option<BTreeSet<SocketAddr>> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = &mut deadline => return Err(LinkError::Silent(silence)),
                error = writer.failed() => return Err(error),
                _ = ping.tick() => writer.push(ToRegister::Ping)?,
                () = &mut settling, if !settled => {
                    settled = true;
                    if let Some(list) = latest.take() {
                        self.lists.report(self.index, Report::Settled(list));
                    }
                }
                message = reader.recv::<FromRegister>() => {
                    let Some(message) = message? else {
                        return Err(LinkError::Closed);
                    };
                    deadline.as_mut().reset(Instant::now() + silence);
                    match message {
                        FromRegister::Gateways(list) => {
                            let list: BTreeSet<SocketAddr> = list.into_iter().collect();
                            let report = if settled {
                                Report::Settled(list)
                            } else {
                                latest = Some(list.clone());
                                Report::Fresh(list)
                            };
                            self.lists.report(self.index, report);
                        }
                        FromRegister::Pong => {}
                    }
                }
            }
        }
    }
}
