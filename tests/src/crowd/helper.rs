//! The `crowd` process: holds a [`Spec`]'s clients and answers the requests of the module
//! above. One task per client reads everything it receives and keeps only its verdict's
//! ingredients ([`Heard`]); requests read those and answer once settled or at their deadline.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt, TryStreamExt, stream};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::Spec;
use crate::delivery::{self, Allowance, Sequence, Verdict, Verdicts};

/// Connections opened at once: a storm of handshakes would overflow the gateway's listen
/// backlog, and each lost SYN costs a second.
const OPENING: usize = 64;

/// How often a request looks whether its answer is settled.
const POLL: Duration = Duration::from_millis(50);

/// Longest one client's connection and group joins may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Descriptors the helper needs besides its clients' (runtime, pipes, reconnections under way).
const SPARE_DESCRIPTORS: u64 = 256;

/// A client's connection.
type Ws = WebSocketStream<TcpStream>;

/// Runs the helper on this process's arguments, stdin and stdout.
pub fn main() -> anyhow::Result<()> {
    let spec = Spec::from_args(std::env::args().skip(1))?;
    let clients = u64::try_from(spec.clients)?;
    crate::tools::descriptor_limit_allows(clients + SPARE_DESCRIPTORS)
        .map_err(|skip| anyhow::anyhow!("{skip}"))?;
    crate::tools::raise_descriptor_limit()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(spec))
}

/// What one client heard.
struct Heard {
    /// Per publisher of the spec, in its order.
    sequences: Vec<Sequence>,
    /// Something neither a known publisher's message nor an asked-for answer arrived.
    unexpected: bool,
    /// The connection ended.
    cut: bool,
    /// The last `served` round it answered.
    served: u32,
}

impl Heard {
    /// Its verdict on the first `count` messages of each `(publisher index, count)` target.
    fn verdict(&self, targets: &[(usize, u32)], allowance: Allowance) -> Verdict {
        if self.cut {
            return Verdict::Cut;
        }
        let worst = targets
            .iter()
            .map(|&(p, count)| self.sequences[p].verdict(count, allowance))
            .max()
            .unwrap_or(Verdict::Once);
        if self.unexpected {
            worst.max(Verdict::Unexpected)
        } else {
            worst
        }
    }

    /// Whether its verdict on `targets` is in.
    fn settled(&self, targets: &[(usize, u32)]) -> bool {
        self.cut
            || targets
                .iter()
                .all(|&(p, count)| self.sequences[p].settled(count))
    }
}

/// One client's record, shared by its task and the requests.
type Shared = Arc<Mutex<Heard>>;

fn lock(heard: &Shared) -> MutexGuard<'_, Heard> {
    // Every update is a few assignments; a panic elsewhere leaves the record usable.
    heard.lock().unwrap_or_else(|e| e.into_inner())
}

/// The echo a client makes in `served` round `round`, which is also its answer.
fn served_echo(round: u32) -> String {
    format!("served-{round}")
}

/// Opens the spec's clients, says `ready`, then answers requests until stdin ends.
async fn serve(spec: Spec) -> anyhow::Result<()> {
    let opened = stream::iter(0..spec.clients)
        .map(|_| open(spec.gateway, spec.source, &spec.groups))
        .buffered(OPENING)
        .try_collect::<Vec<Ws>>()
        .await;
    let clients = match opened {
        Ok(clients) => clients,
        Err(e) => {
            println!("failed {e:#}");
            return Err(e);
        }
    };
    let publishers = Arc::new(spec.publishers.clone());
    let (rounds, round) = watch::channel(0u32);
    let heard: Vec<Shared> = clients
        .into_iter()
        .map(|ws| {
            let heard = Arc::new(Mutex::new(Heard {
                sequences: vec![Sequence::default(); publishers.len()],
                unexpected: false,
                cut: false,
                served: 0,
            }));
            tokio::spawn(hold(ws, heard.clone(), publishers.clone(), round.clone()));
            heard
        })
        .collect();
    println!("ready {}", heard.len());
    // Clients opened again after a cut: held open until the helper ends.
    let mut back = Vec::new();
    let mut requests = BufReader::new(tokio::io::stdin()).lines();
    while let Some(request) = requests.next_line().await? {
        let words: Vec<&str> = request.split(' ').collect();
        let (&[what, ms], rest) = words.split_at(2.min(words.len())) else {
            bail!("a request without a deadline: {request:?}");
        };
        let deadline = Instant::now() + Duration::from_millis(ms.parse()?);
        let answer = match what {
            "check" => check(&heard, &spec, rest, deadline).await?,
            "served" => {
                let next = *rounds.borrow() + 1;
                rounds.send_replace(next);
                served(&heard, next, deadline).await
            }
            "reconnect" => {
                let to: Vec<SocketAddr> = rest
                    .first()
                    .context("reconnect to where?")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
                reconnect(&heard, spec.source, &to, deadline, &mut back).await
            }
            _ => bail!("unknown request {request:?}"),
        };
        println!("{answer}");
    }
    Ok(())
}

/// Opens a client to `gateway` from `source` and has it join `groups`.
async fn open(gateway: SocketAddr, source: Ipv4Addr, groups: &[String]) -> anyhow::Result<Ws> {
    let opening = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source.into(), 0))?;
        let stream = socket.connect(gateway).await?;
        // Small buffers: the default 128 KiB each, times 10,000 clients, is over a GiB.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let url = format!("ws://{gateway}/");
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        for group in groups {
            ask(
                &mut ws,
                &format!("join {group}"),
                &format!("joined {group}"),
            )
            .await?;
        }
        anyhow::Ok(ws)
    };
    tokio::time::timeout(OPEN_TIMEOUT, opening)
        .await
        .with_context(|| format!("opening a client to {gateway} took over {OPEN_TIMEOUT:?}"))?
        .with_context(|| format!("opening a client to {gateway}"))
}

/// Sends `text` and expects `answer` as the next message.
async fn ask(ws: &mut Ws, text: &str, answer: &str) -> anyhow::Result<()> {
    ws.send(Message::text(text)).await?;
    match ws.next().await {
        Some(Ok(Message::Text(got))) if got.as_str() == answer => Ok(()),
        other => bail!("{text:?} was answered {other:?}"),
    }
}

/// Reads everything `ws` receives into `heard`, and makes each `served` round's echo.
async fn hold(
    mut ws: Ws,
    heard: Shared,
    publishers: Arc<Vec<String>>,
    mut round: watch::Receiver<u32>,
) {
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let mut heard = lock(&heard);
                    match delivery::parse(&text) {
                        Some((publisher, n)) => match publishers.iter().position(|p| p == publisher) {
                            Some(p) => heard.sequences[p].saw(n),
                            None => heard.unexpected = true,
                        },
                        None => match text.strip_prefix("served-").and_then(|r| r.parse().ok()) {
                            Some(r) => heard.served = r,
                            None => heard.unexpected = true,
                        },
                    }
                }
                // Pings are answered by the library; nothing else is sent to these clients.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(_)) => lock(&heard).unexpected = true,
                Some(Err(_)) | None => break,
            },
            changed = round.changed() => {
                let r = *round.borrow_and_update();
                if changed.is_err() || ws.send(Message::text(format!("echo {}", served_echo(r)))).await.is_err() {
                    break;
                }
            }
        }
    }
    lock(&heard).cut = true;
}

/// `check`: the verdicts on `rest` (`<below> <run> <publisher>=<count> …`) once settled.
async fn check(
    heard: &[Shared],
    spec: &Spec,
    rest: &[&str],
    deadline: Instant,
) -> anyhow::Result<String> {
    let publishers = &spec.publishers;
    let [below, run, targets @ ..] = rest else {
        bail!("check needs <below> <run> and targets");
    };
    let allowance = Allowance {
        below: below.parse()?,
        run: run.parse()?,
    };
    let targets: Vec<(usize, u32)> = targets
        .iter()
        .map(|target| {
            let (publisher, count) = target.split_once('=').context("<publisher>=<count>")?;
            let p = publishers
                .iter()
                .position(|p| p == publisher)
                .with_context(|| format!("{publisher} is not a publisher of this crowd"))?;
            anyhow::Ok((p, count.parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    until(deadline, || heard.iter().all(|h| lock(h).settled(&targets))).await;
    let verdicts: Vec<Verdict> = heard
        .iter()
        .map(|h| lock(h).verdict(&targets, allowance))
        .collect();
    explain(heard, spec, &verdicts);
    Ok(format!("verdicts {}", Verdicts(verdicts).codes()))
}

/// Tells stderr what the first few clients of each failing verdict heard: the answer line
/// has room for one code per client only.
fn explain(heard: &[Shared], spec: &Spec, verdicts: &[Verdict]) {
    let failing = [
        Verdict::Repeated,
        Verdict::Missing,
        Verdict::OutOfOrder,
        Verdict::Unexpected,
    ];
    for verdict in failing {
        let clients = verdicts.iter().enumerate().filter(|(_, v)| **v == verdict);
        for (i, _) in clients.take(3) {
            let h = lock(&heard[i]);
            let sequences: Vec<String> = spec
                .publishers
                .iter()
                .zip(&h.sequences)
                .map(|(p, s)| format!("{p}: {s:?}"))
                .collect();
            let gateway = spec.gateway;
            eprintln!(
                "crowd of {gateway}: client {i} {verdict:?}: {}",
                sequences.join(", ")
            );
        }
    }
}

/// `served`: how many open clients answered round `round`'s echo, of how many are open.
async fn served(heard: &[Shared], round: u32, deadline: Instant) -> String {
    let answered = |h: &Heard| h.served == round;
    until(deadline, || {
        heard.iter().all(|h| {
            let h = lock(h);
            h.cut || answered(&h)
        })
    })
    .await;
    let (mut served, mut open) = (0, 0);
    for h in heard {
        let h = lock(h);
        open += usize::from(!h.cut);
        served += usize::from(!h.cut && answered(&h));
    }
    format!("served {served} {open}")
}

/// `reconnect`: opens each cut client again, to `to` in turn, and has it echo; the new
/// connections go to `back`.
async fn reconnect(
    heard: &[Shared],
    source: Ipv4Addr,
    to: &[SocketAddr],
    deadline: Instant,
    back: &mut Vec<Ws>,
) -> String {
    let cut = heard.iter().filter(|h| lock(h).cut).count();
    let reopened: Vec<Option<Ws>> = stream::iter(0..cut)
        .map(|k| async move {
            let gateway = to[k % to.len()];
            let again = async {
                let mut ws = open(gateway, source, &[]).await?;
                ask(&mut ws, "echo back", "back").await?;
                anyhow::Ok(ws)
            };
            tokio::time::timeout_at(deadline, again).await.ok()?.ok()
        })
        .buffer_unordered(OPENING)
        .collect()
        .await;
    let served = reopened.iter().flatten().count();
    back.extend(reopened.into_iter().flatten());
    format!("reconnected {served} {cut}")
}

/// Waits until `done` says so, or `deadline`.
async fn until(deadline: Instant, mut done: impl FnMut() -> bool) {
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(POLL.min(deadline - Instant::now())).await;
    }
}
