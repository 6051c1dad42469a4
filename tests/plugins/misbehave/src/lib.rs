//! A wasmgate plugin that misbehaves on request, for the host's isolation tests.
//!
//! Messages (replies go to the sender):
//! - `echo <payload>` → `<payload>`: proves the instance is healthy.
//! - `loop` → never returns: only the host's `process_timeout` ends it.
//! - `alloc <MiB>` → allocates and touches that many MiB, then `allocated <MiB>`; beyond the
//!   host's `memory_limit` the allocation fails and the instance aborts (traps). A size that is
//!   not a number gets `error usage: alloc <MiB>`.
//! - `trap` → panics, which traps.
//! - `timers <n>` → sets `n` one-hour timeouts, then `timers <n>`; past the host's
//!   `max_timers` the instance traps.
//! - `resources <n>` → opens `n` more WASI resources (clock pollables) and keeps them for
//!   the instance's life, then `resources <total>`; past the host's `max_resources` the call
//!   that would open one more traps.
//! - `print <n>` → writes `n` lines of 100 bytes to stdout, then `printed <n>`.
//! - `sleep <ms>` → sleeps that long inside a host call (a WASI clock poll, where no epoch
//!   check runs), then `slept <ms>`.
//! - `instance` → `calls <n>`: the number of messages this instance has handled, this one
//!   included. A fresh instance answers `calls 1`, so a test can tell it from a reused one.
//!
//! - `flood <n> <url>` → starts `n` GETs of `url` at once and holds every response, unread
//!   (so each stays in flight), until all are in; replies with each one's outcome in order,
//!   space-separated: its status, or its `wasi:http` error code (`connection-limit-reached`
//!   past the host's `max_http_requests`).
//!
//! - `env <NAME>` → the environment variable's value, or `unset`: shows what the host granted.
//! - `read <path>` → the file's contents, or `error <why>`: likewise for preopened directories.
//! - `session <key>` → the value of that key in the client's session, or `unset`.
//! - `whoami` → the client's id.
//! - `watch` → joins group `watchers`, then `watching`: `on-close` tells that group
//!   `closed <client-id>`, so a test on another gateway sees every `on-close` run.
//! - `event <payload>` → `event <n> <payload>`: the event's number (`event-info`), so a test
//!   can tell an event sent again after a lost worker host from a new one.
//! - `join <group>` → `joined <group>`; `pub <group> <payload>` sends the payload to the group
//!   and answers nothing (or the error): with `watch`, one app serves a cluster test whose
//!   clients are a group's members and whose `on-close` runs are watched.
//!
//! `on-websocket-connect` refuses a client whose query string holds `reject=<reason>`, with
//! that reason (taken as is, not percent-decoded); crashes deciding for `crash=trap` (a panic),
//! `crash=loop` (never returns) and `crash=alloc` (allocates 1 GiB); and keeps the request of
//! any other client in its session: `ws.path`, `ws.query` and `ws.header.<name>` for each
//! header.
//!
//! `on-connect` and `on-close` log `on-connect <client-id>` and `on-close <client-id>` at info,
//! so a test can count the calls in the log.
//!
//! Anything else gets `error unknown command`. `on-worker-start` refuses to start when the app is
//! named `fail-start`, traps when it is named `trap-start`, logs `slow-start: sleeping
//! in on-worker-start` and sleeps for an hour (in a host call) when it is named `slow-start`, and when the app is named `ticker`
//! sets a 100 ms interval whose every tick sends `tick` to every client.

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use wasip2::clocks::monotonic_clock;
use wasip2::io::poll::Pollable;

use wasmgate_sdk::http::{self, Method};
use wasmgate_sdk::{Client, Plugin, TimerId, WebsocketRequest, WorkerInfo, gateway, log, timers};

/// Messages handled by this instance: statics live exactly as long as the instance.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Resources this instance holds on purpose (`resources <n>`).
static HELD: Mutex<Vec<Pollable>> = Mutex::new(Vec::new());

/// The group `watch` joins, told of every `on-close`.
const WATCHERS: &str = "watchers";

/// The `ticker` app's interval.
const TICK_MS: u32 = 100;

/// A wasm page: memory grows and is committed by whole pages.
const PAGE: usize = 64 * 1024;

struct Misbehave;

impl Plugin for Misbehave {
    fn on_worker_start(info: WorkerInfo) -> Result<(), String> {
        match info.app.as_str() {
            "fail-start" => Err("refusing to start".into()),
            "trap-start" => panic!("misbehave: trap requested in on-worker-start"),
            "slow-start" => {
                log::info("slow-start: sleeping in on-worker-start");
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(())
            }
            "ticker" => {
                timers::set_interval(TICK_MS);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_websocket_connect(client: Client, request: WebsocketRequest) -> Result<(), String> {
        let asked = |key: &str| {
            let key = format!("{key}=");
            request
                .query
                .split('&')
                .find_map(|pair| pair.strip_prefix(key.as_str()))
                .map(str::to_owned)
        };
        if let Some(reason) = asked("reject") {
            return Err(reason);
        }
        match asked("crash").as_deref() {
            Some("trap") => panic!("misbehave: trap requested in on-websocket-connect"),
            Some("loop") => spin(),
            Some("alloc") => {
                allocate(1024);
            }
            _ => {}
        }
        let mut seen = vec![
            ("ws.path".to_owned(), request.path),
            ("ws.query".to_owned(), request.query),
        ];
        seen.extend(
            request
                .headers
                .into_iter()
                .map(|(name, value)| (format!("ws.header.{name}"), value)),
        );
        gateway::update_session(&client.id, &seen).map_err(|e| format!("{e:?}"))
    }

    fn on_connect(client: Client) {
        log::info(format!("on-connect {}", client.id));
    }

    fn on_close(client: Client) {
        log::info(format!("on-close {}", client.id));
        let closed = format!("closed {}", client.id);
        let _ = gateway::send_to_group(&[WATCHERS.to_owned()], closed.as_bytes(), &[]);
    }

    fn on_timer(_id: TimerId) {
        let _ = gateway::send_to_all(b"tick", &[]);
    }

    fn on_message(client: Client, data: Vec<u8>) {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        let (command, arg) = match data.iter().position(|&b| b == b' ') {
            Some(space) => (&data[..space], &data[space + 1..]),
            None => (&data[..], &[][..]),
        };
        let reply = match command {
            b"echo" => arg.to_vec(),
            b"loop" => spin(),
            b"alloc" => match parse_mib(arg) {
                Some(mib) => format!("allocated {}", allocate(mib)).into_bytes(),
                None => b"error usage: alloc <MiB>".to_vec(),
            },
            b"trap" => panic!("misbehave: trap requested"),
            b"timers" => {
                let n: u32 = std::str::from_utf8(arg)
                    .ok()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                for _ in 0..n {
                    timers::set_timeout(3_600_000);
                }
                format!("timers {n}").into_bytes()
            }
            b"resources" => {
                let n: u32 = std::str::from_utf8(arg)
                    .ok()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
                for _ in 0..n {
                    held.push(monotonic_clock::subscribe_duration(3_600_000_000_000));
                }
                format!("resources {}", held.len()).into_bytes()
            }
            b"print" => {
                let n: u32 = std::str::from_utf8(arg)
                    .ok()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                for i in 0..n {
                    println!("{i:>99}");
                }
                format!("printed {n}").into_bytes()
            }
            b"sleep" => match std::str::from_utf8(arg).ok().and_then(|a| a.parse().ok()) {
                Some(ms) => {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    format!("slept {ms}").into_bytes()
                }
                None => b"error usage: sleep <ms>".to_vec(),
            },
            b"flood" => flood(arg),
            b"instance" => format!("calls {calls}").into_bytes(),
            b"whoami" => client.id.clone().into_bytes(),
            b"watch" => match gateway::join_group(&client.id, WATCHERS) {
                Ok(()) => b"watching".to_vec(),
                Err(e) => format!("error {e:?}").into_bytes(),
            },
            b"join" => match std::str::from_utf8(arg) {
                Ok(group) => match gateway::join_group(&client.id, group) {
                    Ok(()) => format!("joined {group}").into_bytes(),
                    Err(e) => format!("error {e:?}").into_bytes(),
                },
                Err(_) => b"error usage: join <group>".to_vec(),
            },
            b"pub" => match published(arg) {
                Ok(()) => return,
                Err(why) => why.into_bytes(),
            },
            b"event" => {
                let number = wasmgate_sdk::current_event().unwrap_or(0);
                [format!("event {number} ").as_bytes(), arg].concat()
            }
            b"env" => std::env::var(String::from_utf8_lossy(arg).as_ref())
                .unwrap_or_else(|_| "unset".into())
                .into_bytes(),
            b"read" => std::fs::read(String::from_utf8_lossy(arg).as_ref())
                .unwrap_or_else(|e| format!("error {e}").into_bytes()),
            b"session" => client
                .session()
                .get(&String::from_utf8_lossy(arg))
                .unwrap_or("unset")
                .as_bytes()
                .to_vec(),
            _ => b"error unknown command".to_vec(),
        };
        let _ = client.reply(reply);
    }
}

wasmgate_sdk::export!(Misbehave);

/// `pub <group> <payload>`: sends `payload` to `group`; what to answer if that failed.
fn published(arg: &[u8]) -> Result<(), String> {
    let usage = || "error usage: pub <group> <payload>".to_owned();
    let space = arg.iter().position(|&b| b == b' ').ok_or_else(usage)?;
    let group = std::str::from_utf8(&arg[..space]).map_err(|_| usage())?;
    gateway::send_to_group(&[group.to_owned()], &arg[space + 1..], &[])
        .map_err(|e| format!("error {e:?}"))
}

/// Loops forever; `black_box` keeps the optimiser from proving the loop side-effect free.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// `flood <n> <url>` (see the crate doc).
fn flood(arg: &[u8]) -> Vec<u8> {
    let arg = String::from_utf8_lossy(arg);
    let parsed = arg.split_once(' ');
    let Some((n, url)) = parsed.and_then(|(n, url)| Some((n.parse::<usize>().ok()?, url))) else {
        return b"error usage: flood <n> <url>".to_vec();
    };
    let pending: Vec<_> = (0..n).map(|_| http::start(Method::Get, url, &[])).collect();
    // Every response is kept until the reply is built: dropping one would end its request.
    let mut held = Vec::new();
    let outcomes: Vec<String> = pending
        .into_iter()
        .map(|started| {
            let future = match started {
                Ok(future) => future,
                Err(http::Error::Http(code)) => return http::describe(&code),
                Err(e) => return e.to_string(),
            };
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => {
                    let status = response.status().to_string();
                    held.push(response);
                    status
                }
                Some(Ok(Err(code))) => http::describe(&code),
                _ => "no-response".into(),
            }
        })
        .collect();
    drop(held);
    outcomes.join(" ").into_bytes()
}

fn parse_mib(arg: &[u8]) -> Option<usize> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// Allocates `mib` MiB and writes to every wasm page, so the memory is really grown and used.
/// An allocation that fails, or exceeds the address space, aborts: the instance traps.
fn allocate(mib: usize) -> usize {
    // Fresh wasm pages are already zero, so the allocator may skip writing them: touch each one.
    let mut block = vec![0u8; mib.saturating_mul(1 << 20)];
    for page in block.chunks_mut(PAGE) {
        page[0] = 1;
    }
    black_box(&block);
    mib
}
