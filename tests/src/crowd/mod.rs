//! Crowds: tens of thousands of WebSocket clients for cluster tests, held by helper processes
//! (the `crowd` binary, [`helper`]) because a process may hold only so many descriptors (20,000
//! on the CI machines) and the test process shares its own with the tests running beside it.
//!
//! A helper runs on a simulated host ([`crate::netns`]), opens its clients to one gateway from
//! a source address of its own (each source address has its own ~28,000 ephemeral ports), has
//! each join some groups, then records every numbered group message each receives
//! ([`crate::delivery`]). The test drives it over its stdin, one request a line, and reads one
//! answer line for each on its stdout:
//!
//! | request | answer |
//! |---|---|
//! | (the start) | `ready <clients>`, or `failed <why>` |
//! | `check <ms> <below> <run> <publisher>=<count> …` | `verdicts <one code per client>` |
//! | `served <ms>` | `served <answered> <open>`: every open client's `echo` round trip |
//! | `reconnect <ms> <addr>,…` | `reconnected <served> <cut>`: each cut client again, to the addresses in turn |
//!
//! A helper answers at its deadline (`<ms>`) at the latest, with what it has then; `check`
//! earlier once every client is cut or has every publisher's `<count>` messages (or a skip).
//! `<below>` and `<run>` are the [`Allowance`] for repeats. It ends when its stdin does.

pub mod helper;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::delivery::{Allowance, Verdicts};
use crate::netns::Host;

/// What one helper holds: its clients, where they connect and what they hear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The gateway every client connects to (`ws://<gateway>/`).
    pub gateway: SocketAddr,
    /// The address every client connects from.
    pub source: Ipv4Addr,
    /// How many clients.
    pub clients: usize,
    /// The groups each joins (`join <group>`, answered `joined <group>`), in order.
    pub groups: Vec<String>,
    /// The publishers whose messages its clients may receive: any other is unexpected.
    pub publishers: Vec<String>,
}

impl Spec {
    /// The helper's command-line arguments.
    fn args(&self) -> Vec<String> {
        vec![
            "--gateway".into(),
            self.gateway.to_string(),
            "--source".into(),
            self.source.to_string(),
            "--clients".into(),
            self.clients.to_string(),
            "--groups".into(),
            self.groups.join(","),
            "--publishers".into(),
            self.publishers.join(","),
        ]
    }

    /// Reads what [`Spec::args`] wrote.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut args = args.into_iter();
        let (mut gateway, mut source, mut clients) = (None, None, None);
        let (mut groups, mut publishers) = (Vec::new(), Vec::new());
        let list = |text: String| -> Vec<String> {
            text.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} without a value"))?;
            match flag.as_str() {
                "--gateway" => gateway = Some(value.parse()?),
                "--source" => source = Some(value.parse()?),
                "--clients" => clients = Some(value.parse()?),
                "--groups" => groups = list(value),
                "--publishers" => publishers = list(value),
                _ => bail!("unknown argument {flag}"),
            }
        }
        Ok(Self {
            gateway: gateway.context("--gateway is required")?,
            source: source.context("--source is required")?,
            clients: clients.context("--clients is required")?,
            groups,
            publishers,
        })
    }
}

/// How long past its own deadline a helper may take to answer.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// A running helper, killed when dropped.
pub struct Crowd {
    /// Its gateway and source, to name it in failures.
    name: String,
    _child: Child,
    input: ChildStdin,
    output: Lines<BufReader<ChildStdout>>,
}

impl Crowd {
    /// Starts the helper (`binary`: the test's `CARGO_BIN_EXE_crowd`) on `host`; it connects
    /// at once ([`Crowd::ready`] waits for it).
    pub fn start(binary: &str, host: &Host, spec: &Spec) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &host.netns, binary])
            .args(spec.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting a crowd helper");
        let input = child.stdin.take().expect("piped stdin");
        let output = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Self {
            name: format!("the crowd of {} from {}", spec.gateway, spec.source),
            _child: child,
            input,
            output,
        }
    }

    /// Sends `request` (if any) and returns the answer's words after `word`, waiting at most
    /// `within` and the grace.
    async fn answer(&mut self, request: Option<String>, word: &str, within: Duration) -> String {
        if let Some(request) = request {
            let sent = self
                .input
                .write_all(format!("{request}\n").as_bytes())
                .await;
            sent.unwrap_or_else(|e| panic!("{} is gone: {e}", self.name));
        }
        let line = tokio::time::timeout(within + ANSWER_GRACE, self.output.next_line())
            .await
            .unwrap_or_else(|_| panic!("{} did not answer {word:?} in time", self.name))
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.name))
            .unwrap_or_else(|| panic!("{} ended", self.name));
        match line.split_once(' ') {
            Some((w, rest)) if w == word => rest.to_owned(),
            _ => panic!("{} answered {line:?}, not {word:?}", self.name),
        }
    }

    /// Waits until every client is connected and in its groups; how many there are.
    pub async fn ready(&mut self, within: Duration) -> usize {
        let clients = self.answer(None, "ready", within).await;
        clients.parse().expect("a count of clients")
    }

    /// Each client's verdict on the first `count` messages of each `(publisher, count)` of
    /// `expected`, repeats judged by `allowance`, once all are in or at `within`.
    pub async fn check(
        &mut self,
        expected: &[(&str, u32)],
        allowance: Allowance,
        within: Duration,
    ) -> Verdicts {
        let targets: Vec<String> = expected.iter().map(|(p, n)| format!("{p}={n}")).collect();
        let request = format!(
            "check {} {} {} {}",
            within.as_millis(),
            allowance.below,
            allowance.run,
            targets.join(" ")
        );
        let codes = self.answer(Some(request), "verdicts", within).await;
        Verdicts::from_codes(&codes).unwrap_or_else(|| panic!("{} said {codes:?}", self.name))
    }

    /// Has every open client make an `echo` round trip: how many answered, of how many open.
    pub async fn served(&mut self, within: Duration) -> (usize, usize) {
        let request = format!("served {}", within.as_millis());
        let answer = self.answer(Some(request), "served", within).await;
        self.pair(&answer)
    }

    /// Connects each cut client again, to `survivors` in turn, and has it make an `echo` round
    /// trip: how many were served, of how many were cut.
    pub async fn reconnect(
        &mut self,
        survivors: &[SocketAddr],
        within: Duration,
    ) -> (usize, usize) {
        let to: Vec<String> = survivors.iter().map(SocketAddr::to_string).collect();
        let request = format!("reconnect {} {}", within.as_millis(), to.join(","));
        let answer = self.answer(Some(request), "reconnected", within).await;
        self.pair(&answer)
    }

    /// Two counts, as `served` and `reconnected` answer them.
    fn pair(&self, answer: &str) -> (usize, usize) {
        let counts = answer
            .split_once(' ')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
        counts.unwrap_or_else(|| panic!("{} said {answer:?}", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::Spec;

    #[test]
    fn a_spec_survives_its_command_line() {
        let spec = Spec {
            gateway: "198.18.0.1:8000".parse().unwrap(),
            source: "198.18.0.128".parse().unwrap(),
            clients: 10_000,
            groups: vec!["room".into(), "local".into()],
            publishers: vec!["a".into(), "c".into(), "l".into()],
        };
        assert_eq!(Spec::from_args(spec.args()).unwrap(), spec);
        let no_groups = Spec {
            groups: Vec::new(),
            ..spec
        };
        assert_eq!(Spec::from_args(no_groups.args()).unwrap(), no_groups);
        assert!(Spec::from_args(["--clients".to_owned()]).is_err());
    }
}
