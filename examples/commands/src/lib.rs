//! The wasmgate reference plugin: every client message is one command, and replies go to the
//! sender. Tests and benchmarks drive wasmgate through it; the Python and JavaScript examples
//! implement the same protocol. See README.md for the command list.
//!
//! A message is `<command> <arguments>`, split on single spaces. A word argument (group, uid,
//! key, client id) is UTF-8 and ends at the next space, except the last one, which takes the rest
//! of the message; a payload is every byte after the last word, UTF-8 or not. A missing argument
//! or a word that is not UTF-8 gets `error usage: <usage line>`; an empty argument is passed to
//! the gateway as it is, which decides what an empty group or uid means: a refused operation
//! is answered `error invalid-argument <why>`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};
use wasmgate_sdk::bindings::wasi::keyvalue::atomics::{self, Cas, CasError};
use wasmgate_sdk::kv::{self, Bucket};
use wasmgate_sdk::sql::{self, Connection};

use wasmgate_sdk::{
    Client, GatewayError, Plugin, Presence, WebsocketRequest, answers, gateway, http,
};

struct Commands;

impl Plugin for Commands {
    /// Keeps `notify=<group>` in the session, then crashes if asked to (`crash=…`): a client
    /// refused by the crash would announce itself to that group if `on-connect` ran for it.
    fn on_websocket_connect(client: Client, request: WebsocketRequest) -> Result<(), String> {
        if let Some(group) = asked(&request.query, "notify") {
            gateway::update_session(&client.id, &[("notify".into(), group.into())])
                .map_err(|e| reason(&e))?;
        }
        match asked(&request.query, "crash") {
            Some("trap") => panic!("commands: crash=trap in on-websocket-connect"),
            Some("loop") => spin(),
            Some("alloc") => exhaust_memory(),
            _ => Ok(()),
        }
    }

    fn on_connect(client: Client) {
        if let Some(group) = client.session().get("notify") {
            let announce = format!("connected {}", client.id);
            let _ = gateway::send_to_group(&[group.into()], announce.as_bytes(), &[]);
        }
    }

    fn on_close(client: Client) {
        READS.with_borrow_mut(|reads| reads.remove(&client.id));
    }

    fn on_message(client: Client, data: Vec<u8>) {
        let reply = match parse(&data) {
            Ok(command) => run(&client, command),
            Err(error) => Some(error.to_string().into()),
        };
        if let Some(reply) = reply {
            // The sender's gateway is linked (it sent the event): this fails only if it left.
            let _ = client.reply(reply);
        }
    }
}

wasmgate_sdk::export!(Commands);

/// The group told of every presence transition, so that a client can watch them by joining it.
const PRESENCE_GROUP: &str = "presence";

/// Tells [`PRESENCE_GROUP`] `online <uid> <client-id>` and `offline <uid> <client-id>`.
impl Presence for Commands {
    fn on_uid_online(uid: String, client: Client) {
        tell_presence("online", &uid, &client);
    }

    fn on_uid_offline(uid: String, client: Client) {
        tell_presence("offline", &uid, &client);
    }
}

wasmgate_sdk::export_presence!(Commands);

fn tell_presence(what: &str, uid: &str, client: &Client) {
    let line = format!("{what} {uid} {}", client.id);
    let _ = gateway::send_to_group(&[PRESENCE_GROUP.into()], line.as_bytes(), &[]);
}

/// One parsed command, borrowing from the message.
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    Echo(&'a [u8]),
    Join(&'a str),
    Leave(&'a str),
    Pub {
        group: &'a str,
        payload: &'a [u8],
    },
    All(&'a [u8]),
    Bind(&'a str),
    Unbind(&'a str),
    ToUid {
        uid: &'a str,
        payload: &'a [u8],
    },
    Count(&'a str),
    Set {
        key: &'a str,
        value: &'a str,
    },
    Get(&'a str),
    WhoAmI,
    Kick(&'a str),
    SqlPut {
        key: &'a str,
        value: &'a str,
    },
    SqlGet(&'a str),
    SqlSlow,
    KvSet {
        key: &'a str,
        value: &'a [u8],
    },
    KvGet(&'a str),
    Incr(&'a str),
    KvRead(&'a str),
    KvSwap {
        key: &'a str,
        value: &'a [u8],
    },
    /// `key=value` pairs separated by spaces, each checked by [`parse`].
    KvSetMany(&'a str),
    /// Keys separated by spaces.
    KvGetMany(&'a str),
    Fetch(&'a str),
    /// `None`: an unknown op or a count out of range, answered with the usage line.
    Cost(Option<Cost>),
    Total,
}

/// Every command, in README order: [`parse`] looks the word up here, [`run`] carries it out.
#[rustfmt::skip] // one row per line reads as a table
const COMMANDS: &[Row] = &[
    Row { usage: "echo <payload>",        shape: Shape::Payload,     build: |a| Command::Echo(a.payload) },
    Row { usage: "join <group>",          shape: Shape::Word,        build: |a| Command::Join(a.word) },
    Row { usage: "leave <group>",         shape: Shape::Word,        build: |a| Command::Leave(a.word) },
    Row { usage: "pub <group> <payload>", shape: Shape::WordPayload, build: |a| Command::Pub { group: a.word, payload: a.payload } },
    Row { usage: "all <payload>",         shape: Shape::Payload,     build: |a| Command::All(a.payload) },
    Row { usage: "bind <uid>",            shape: Shape::Word,        build: |a| Command::Bind(a.word) },
    Row { usage: "unbind <uid>",          shape: Shape::Word,        build: |a| Command::Unbind(a.word) },
    Row { usage: "touid <uid> <payload>", shape: Shape::WordPayload, build: |a| Command::ToUid { uid: a.word, payload: a.payload } },
    Row { usage: "count <group>",         shape: Shape::Word,        build: |a| Command::Count(a.word) },
    Row { usage: "set <key> <value>",     shape: Shape::TwoWords,    build: |a| Command::Set { key: a.word, value: a.second } },
    Row { usage: "get <key>",             shape: Shape::Word,        build: |a| Command::Get(a.word) },
    Row { usage: "whoami",                shape: Shape::Nothing,     build: |_| Command::WhoAmI },
    Row { usage: "kick <client-id>",      shape: Shape::Word,        build: |a| Command::Kick(a.word) },
    Row { usage: "sqlput <key> <value>",  shape: Shape::TwoWords,    build: |a| Command::SqlPut { key: a.word, value: a.second } },
    Row { usage: "sqlget <key>",          shape: Shape::Word,        build: |a| Command::SqlGet(a.word) },
    Row { usage: "sqlslow",               shape: Shape::Nothing,     build: |_| Command::SqlSlow },
    Row { usage: "kvset <key> <value>",   shape: Shape::WordPayload, build: |a| Command::KvSet { key: a.word, value: a.payload } },
    Row { usage: "kvget <key>",           shape: Shape::Word,        build: |a| Command::KvGet(a.word) },
    Row { usage: "incr <key>",            shape: Shape::Word,        build: |a| Command::Incr(a.word) },
    Row { usage: "kvread <key>",          shape: Shape::Word,        build: |a| Command::KvRead(a.word) },
    Row { usage: "kvswap <key> <value>",  shape: Shape::WordPayload, build: |a| Command::KvSwap { key: a.word, value: a.payload } },
    Row { usage: "kvsetmany <key>=<value> …", shape: Shape::Word,    build: |a| Command::KvSetMany(a.word) },
    Row { usage: "kvgetmany <key> …",     shape: Shape::Word,        build: |a| Command::KvGetMany(a.word) },
    Row { usage: "fetch <url>",           shape: Shape::Word,        build: |a| Command::Fetch(a.word) },
    Row { usage: "cost <op> <n>",         shape: Shape::TwoWords,    build: |a| Command::Cost(Cost::parse(a.word, a.second)) },
    Row { usage: "total",                 shape: Shape::Nothing,     build: |_| Command::Total },
];

/// The key-value bucket the `kv*` and `incr` commands use.
const BUCKET: &str = "default";

/// One command: its usage line, whose first word is the command, its arguments' shape and how
/// to build it from them.
struct Row {
    usage: &'static str,
    shape: Shape,
    build: for<'a> fn(Args<'a>) -> Command<'a>,
}

impl Row {
    fn word(&self) -> &'static str {
        self.usage.split(' ').next().unwrap_or(self.usage)
    }
}

/// What follows a command's word.
#[derive(Clone, Copy)]
enum Shape {
    /// No arguments, not even a space.
    Nothing,
    /// One word: all the rest.
    Word,
    /// One payload: all the rest.
    Payload,
    /// A word, then a second word that takes all the rest.
    TwoWords,
    /// A word, then a payload.
    WordPayload,
}

impl Shape {
    /// Splits what follows the command word (`None`: not even a space); `None` if an argument
    /// is missing or a word is not UTF-8.
    fn split(self, rest: Option<&[u8]>) -> Option<Args<'_>> {
        let text = |bytes| std::str::from_utf8(bytes).ok();
        let args = match (self, rest) {
            (Shape::Nothing, None) => Args::default(),
            (Shape::Word, Some(rest)) => Args {
                word: text(rest)?,
                ..Args::default()
            },
            (Shape::Payload, Some(payload)) => Args {
                payload,
                ..Args::default()
            },
            (Shape::TwoWords, Some(rest)) => {
                let (word, second) = split(rest);
                Args {
                    word: text(word)?,
                    second: text(second?)?,
                    ..Args::default()
                }
            }
            (Shape::WordPayload, Some(rest)) => {
                let (word, payload) = split(rest);
                Args {
                    word: text(word)?,
                    payload: payload?,
                    ..Args::default()
                }
            }
            _ => return None,
        };
        Some(args)
    }
}

/// The arguments split according to a [`Shape`]; slots the shape lacks stay empty.
#[derive(Default)]
struct Args<'a> {
    word: &'a str,
    second: &'a str,
    payload: &'a [u8],
}

/// Why a message is not a command; its `Display` is the reply.
#[derive(Debug, PartialEq, Eq)]
enum ParseError {
    Unknown,
    Usage(&'static str),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Unknown => f.write_str("error unknown command"),
            ParseError::Usage(usage) => write!(f, "error usage: {usage}"),
        }
    }
}

fn parse(message: &[u8]) -> Result<Command<'_>, ParseError> {
    let (word, rest) = split(message);
    let row = COMMANDS
        .iter()
        .find(|row| row.word().as_bytes() == word)
        .ok_or(ParseError::Unknown)?;
    let args = row.shape.split(rest).ok_or(ParseError::Usage(row.usage))?;
    match (row.build)(args) {
        Command::Cost(None) => Err(ParseError::Usage(row.usage)),
        Command::KvSetMany(pairs) if pairs.split(' ').any(|pair| !pair.contains('=')) => {
            Err(ParseError::Usage(row.usage))
        }
        command => Ok(command),
    }
}

/// Splits at the first space: the bytes before it, and those after it if there is one.
fn split(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    match bytes.iter().position(|&b| b == b' ') {
        Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
        None => (bytes, None),
    }
}

/// Carries out a command; returns the reply to the sender, if the command has one. A gateway
/// operation that fails is answered `error <reason>`, whatever the command.
fn run(client: &Client, command: Command<'_>) -> Option<Vec<u8>> {
    let me = client.id.as_str();
    if let Some(reply) = run_kv(&command) {
        return Some(
            reply.unwrap_or_else(|error| format!("error kv {}", kv_reason(&error)).into_bytes()),
        );
    }
    let reply = match command {
        Command::Echo(payload) => return Some(payload.to_vec()),
        Command::Join(group) => {
            gateway::join_group(me, group).map(|()| Some(format!("joined {group}")))
        }
        Command::Leave(group) => {
            gateway::leave_group(me, group).map(|()| Some(format!("left {group}")))
        }
        Command::Pub { group, payload } => {
            gateway::send_to_group(&[group.into()], payload, &[]).map(|()| None)
        }
        Command::All(payload) => gateway::send_to_all(payload, &[]).map(|()| None),
        Command::Bind(uid) => gateway::bind_uid(me, uid).map(|()| Some(format!("bound {uid}"))),
        Command::Unbind(uid) => {
            gateway::unbind_uid(me, uid).map(|()| Some(format!("unbound {uid}")))
        }
        Command::ToUid { uid, payload } => {
            gateway::send_to_uid(&[uid.into()], payload).map(|()| None)
        }
        Command::Count(group) => {
            gateway::get_client_count_by_group(group).map(|n| Some(format!("count {group} {n}")))
        }
        Command::Total => gateway::get_all_client_count().map(|n| {
            let missing = answers::missing_gateways();
            Some(if missing.is_empty() {
                format!("total {n}")
            } else {
                format!("total {n} partial {}", missing.join(" "))
            })
        }),
        Command::Set { key, value } => {
            gateway::update_session(me, &[(key.into(), value.into())]).map(|()| Some("ok".into()))
        }
        Command::Get(key) => Ok(Some(match client.session().get(key) {
            Some(value) => format!("value {key} {value}"),
            None => "none".into(),
        })),
        Command::WhoAmI => Ok(Some(client.id.clone())),
        Command::Kick(id) => gateway::close_client(id, None).map(|()| None),
        Command::SqlPut { key, value } => return Some(sql_reply(sql_put(key, value)).into()),
        Command::SqlGet(key) => return Some(sql_reply(sql_get(key)).into()),
        Command::SqlSlow => return Some(sql_reply(sql_slow()).into()),
        Command::KvSet { .. }
        | Command::KvGet(_)
        | Command::Incr(_)
        | Command::KvSetMany(_)
        | Command::KvGetMany(_) => {
            unreachable!("run_kv answers the key-value commands")
        }
        Command::KvRead(key) => return Some(kv_read(me, key)),
        Command::KvSwap { key, value } => return Some(kv_swap(me, key, value)),
        Command::Fetch(url) => return Some(fetch(url)),
        Command::Cost(Some(cost)) => return Some(cost.measure(me)),
        Command::Cost(None) => unreachable!("parse refuses a cost it cannot run"),
    };
    reply
        .unwrap_or_else(|error| Some(format!("error {}", reason(&error))))
        .map(String::into_bytes)
}

/// The database the SQL commands use; the tests grant it as SQLite or PostgreSQL.
const DATABASE: &str = "main";

/// Works in SQLite and PostgreSQL alike, as do the statements below.
const CREATE_TABLE: &str =
    "create table if not exists commands_kv (k text primary key, v text not null)";

/// Opens the database and creates the table on first use.
fn table() -> Result<Connection, sql::Error> {
    let db = Connection::open(DATABASE)?;
    db.execute(CREATE_TABLE, &[])?;
    Ok(db)
}

/// The one-row select by primary key of `sqlget` and `cost sqlget`.
const SELECT_VALUE: &str = "select v from commands_kv where k = $1";

fn sql_put(key: &str, value: &str) -> Result<String, sql::Error> {
    table()?.execute(
        "insert into commands_kv (k, v) values ($1, $2) \
         on conflict (k) do update set v = excluded.v",
        &[key.into(), value.into()],
    )?;
    Ok(format!("stored {key}"))
}

fn sql_get(key: &str) -> Result<String, sql::Error> {
    let rows = table()?.query(SELECT_VALUE, &[key.into()])?;
    Ok(match rows.first() {
        Some(row) => format!(
            "sqlvalue {key} {}",
            row.get::<String>("v").unwrap_or_default()
        ),
        None => "none".into(),
    })
}

/// A statement that runs far longer than any test's `process_timeout`: PostgreSQL sleeps
/// ten seconds; SQLite, which has no sleep, counts to a billion (tens of seconds).
fn sql_slow() -> Result<String, sql::Error> {
    let db = Connection::open(DATABASE)?;
    match db.query("select 1 as slept from pg_sleep(10)", &[]) {
        Err(sql::Error::InvalidQuery(_)) => {
            db.query(
                "with recursive c(x) as (select 1 union all select x + 1 from c \
                 where x < 1000000000) select count(*) as n from c",
                &[],
            )?;
        }
        other => {
            other?;
        }
    }
    Ok("slept".into())
}

/// A SQL command's reply: its own, or `error sql <kind> <message>`.
fn sql_reply(result: Result<String, sql::Error>) -> String {
    result.unwrap_or_else(|e| format!("error sql {} {}", e.kind(), e.message()))
}

/// Carries out a key-value command (`None`: not one); its reply, or the store's error.
fn run_kv(command: &Command<'_>) -> Option<Result<Vec<u8>, kv::Error>> {
    let reply = match *command {
        Command::KvSet { key, value } => Bucket::open(BUCKET)
            .and_then(|b| b.set(key, value))
            .map(|()| b"ok".to_vec()),
        Command::KvGet(key) => Bucket::open(BUCKET)
            .and_then(|b| b.get(key))
            .map(|v| match v {
                Some(value) => [format!("value {key} ").as_bytes(), &value].concat(),
                None => b"none".to_vec(),
            }),
        Command::Incr(key) => Bucket::open(BUCKET)
            .and_then(|b| b.increment(key, 1))
            .map(|n| format!("incr {key} {n}").into_bytes()),
        Command::KvSetMany(pairs) => {
            let pairs: Vec<(String, Vec<u8>)> = pairs
                .split(' ')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.into(), v.into()))
                .collect();
            Bucket::open(BUCKET)
                .and_then(|b| b.set_many(&pairs))
                .map(|()| b"ok".to_vec())
        }
        Command::KvGetMany(keys) => {
            let keys: Vec<String> = keys.split(' ').map(String::from).collect();
            Bucket::open(BUCKET)
                .and_then(|b| b.get_many(&keys))
                .map(|values| {
                    let mut reply = b"values".to_vec();
                    for (key, value) in keys.iter().zip(values) {
                        reply.push(b' ');
                        reply.extend_from_slice(key.as_bytes());
                        if let Some(value) = value {
                            reply.push(b'=');
                            reply.extend_from_slice(&value);
                        }
                    }
                    reply
                })
        }
        _ => return None,
    };
    Some(reply)
}

thread_local! {
    /// Each client's last `kvread`: its key and the compare-and-swap handle holding the
    /// value read, which the client's next `kvswap` of that key swaps. A client's events
    /// always run on the same instance, so the handle waits here between them.
    static READS: RefCell<HashMap<String, (String, Cas)>> = RefCell::new(HashMap::new());
}

/// `kvread <key>`: reads `key` through a compare-and-swap handle kept for `me`; `read <key>
/// <value>`, or `none`.
fn kv_read(me: &str, key: &str) -> Vec<u8> {
    let read = Bucket::open(BUCKET).and_then(|b| {
        let cas = Cas::new(b.inner(), key)?;
        Ok((cas.current()?, cas))
    });
    match read {
        Ok((current, cas)) => {
            READS.with_borrow_mut(|reads| reads.insert(me.into(), (key.into(), cas)));
            match current {
                Some(value) => [format!("read {key} ").as_bytes(), &value].concat(),
                None => b"none".to_vec(),
            }
        }
        Err(error) => format!("error kv {}", kv_reason(&error)).into_bytes(),
    }
}

/// `kvswap <key> <value>`: writes `value` if `key` still holds what `me`'s `kvread` of it
/// read: `swapped <key>`. If another write came in between, nothing is written and the
/// answer is `cas-failed <key> <value now>` (`cas-failed <key>` if it is gone); the fresh
/// read is kept, so a second `kvswap` writes over it.
fn kv_swap(me: &str, key: &str, value: &[u8]) -> Vec<u8> {
    let held = READS.with_borrow_mut(|reads| match reads.remove(me) {
        Some((read, cas)) if read == key => Some(cas),
        Some(other) => {
            reads.insert(me.into(), other);
            None
        }
        None => None,
    });
    let Some(cas) = held else {
        return format!("error kv no kvread of {key} to swap").into_bytes();
    };
    match atomics::swap(cas, value) {
        Ok(()) => format!("swapped {key}").into_bytes(),
        Err(CasError::CasFailed(fresh)) => {
            let mut reply = format!("cas-failed {key}").into_bytes();
            match fresh.current() {
                Ok(Some(now)) => {
                    reply.push(b' ');
                    reply.extend_from_slice(&now);
                }
                Ok(None) => {}
                Err(error) => return format!("error kv {}", kv_reason(&error)).into_bytes(),
            }
            READS.with_borrow_mut(|reads| reads.insert(me.into(), (key.into(), fresh)));
            reply
        }
        Err(CasError::StoreError(error)) => format!("error kv {}", kv_reason(&error)).into_bytes(),
    }
}

/// The `<reason>` of an `error kv <reason>` reply, in the WIT's words.
fn kv_reason(error: &kv::Error) -> String {
    match error {
        kv::Error::NoSuchStore => "no-such-store".into(),
        kv::Error::AccessDenied => "access-denied".into(),
        kv::Error::Other(why) => why.clone(),
    }
}

/// `fetch <url>`: `fetched <status> <body>`, or `error fetch <error-code>`.
fn fetch(url: &str) -> Vec<u8> {
    match http::get(url) {
        Ok(response) => {
            let mut reply = format!("fetched {} ", response.status).into_bytes();
            reply.extend_from_slice(&response.body);
            reply
        }
        // A body cut short comes without a code, its reason in the text's first line (see
        // `http::Error`; a backtrace may follow).
        Err(http::Error::Http(http::ErrorCode::InternalError(Some(why)))) => {
            let why = why.lines().next().unwrap_or_default();
            format!("error fetch internal-error {why}").into()
        }
        Err(http::Error::Http(code)) => format!("error fetch {}", http::describe(&code)).into(),
        Err(http::Error::Invalid(_)) => "error fetch invalid-url".into(),
    }
}

/// `cost <op> <n>`: `op` called `n` times in a row inside one callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cost {
    op: CostOp,
    n: u32,
}

/// What `cost` measures one call of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CostOp {
    /// `send-to-client` of one byte to the sender.
    Send,
    /// `wasi:keyvalue` `get` of an existing key in the bucket of the `kv*` commands.
    KvGet,
    /// The one-row select of `sqlget` in the database `main`.
    SqlGet,
}

/// Every op by its word.
const COST_OPS: &[(&str, CostOp)] = &[
    ("send", CostOp::Send),
    ("kvget", CostOp::KvGet),
    ("sqlget", CostOp::SqlGet),
];

/// The most calls one `cost` makes: `cost send` queues that many messages to the sender,
/// which must stay far below its `send_buffer`.
const MAX_COST_CALLS: u32 = 10_000;

/// The key (and SQL row) that `cost kvget` and `cost sqlget` read, written before timing.
const COST_KEY: &str = "cost";

impl Cost {
    /// `None` for an unknown op, or a count that is not a number in 1..=[`MAX_COST_CALLS`].
    fn parse(op: &str, n: &str) -> Option<Self> {
        let op = COST_OPS.iter().find(|(word, _)| *word == op)?.1;
        let n = n
            .parse()
            .ok()
            .filter(|n| (1..=MAX_COST_CALLS).contains(n))?;
        Some(Self { op, n })
    }

    /// Runs the calls and answers `cost <op> <n> <ns per call>`, or the first call's error as
    /// the command of that call would answer it. The setup (the key written, the connection
    /// opened) happens before the clock starts.
    fn measure(self, me: &str) -> Vec<u8> {
        let n = self.n;
        let timed = match self.op {
            CostOp::Send => time(n, || gateway::send_to_client(me, b"."))
                .map_err(|e| format!("error {}", reason(&e))),
            CostOp::KvGet => Bucket::open(BUCKET)
                .and_then(|bucket| {
                    bucket.set(COST_KEY, b"v")?;
                    time(n, || bucket.get(COST_KEY))
                })
                .map_err(|e| format!("error kv {}", kv_reason(&e))),
            CostOp::SqlGet => sql_put(COST_KEY, "v")
                .and_then(|_| Connection::open(DATABASE))
                .and_then(|db| time(n, || db.query(SELECT_VALUE, &[COST_KEY.into()])))
                .map_err(|e| sql_reply(Err(e))),
        };
        let word = COST_OPS
            .iter()
            .find(|(_, op)| *op == self.op)
            .map_or("", |r| r.0);
        match timed {
            Ok(took) => format!("cost {word} {n} {}", took.as_nanos() / u128::from(n)),
            Err(reply) => reply,
        }
        .into_bytes()
    }
}

/// How long `n` calls of `call` took on the monotonic clock, or the first call's error.
fn time<T, E>(n: u32, mut call: impl FnMut() -> Result<T, E>) -> Result<Duration, E> {
    let start = Instant::now();
    for _ in 0..n {
        black_box(call()?);
    }
    Ok(start.elapsed())
}

/// The value of `key` in a WebSocket request's query string (`k=v` pairs joined by `&`), as
/// is: not percent-decoded.
fn asked<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// Never returns: only the host's `process_timeout` ends it.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Allocates 1 MiB blocks, writing to each, and keeps them until an allocation fails, which
/// aborts: the instance runs out of memory.
fn exhaust_memory() -> ! {
    let mut held = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        // Fresh wasm pages are already zero, so the allocator may skip writing them.
        for page in block.chunks_mut(64 * 1024) {
            page[0] = 1;
        }
        held.push(black_box(block));
    }
}

/// The `<reason>` of an `error <reason>` reply, in the WIT's words.
fn reason(error: &GatewayError) -> String {
    match error {
        GatewayError::Unreachable => "unreachable".into(),
        GatewayError::InvalidArgument(why) => format!("invalid-argument {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{COMMANDS, Command, Cost, CostOp, ParseError, asked, parse};

    #[test]
    fn query_values_are_taken_as_written() {
        let query = "crash=loop&notify=a%20b&empty=";
        assert_eq!(asked(query, "crash"), Some("loop"));
        assert_eq!(asked(query, "notify"), Some("a%20b"));
        assert_eq!(asked(query, "empty"), Some(""));
        assert_eq!(asked(query, "rash"), None);
        assert_eq!(asked("", "crash"), None);
    }

    #[test]
    fn every_command_parses() {
        let cases: &[(&[u8], Command<'_>)] = &[
            (b"echo hello world", Command::Echo(b"hello world")),
            (b"join room", Command::Join("room")),
            (b"leave room", Command::Leave("room")),
            (
                b"pub room hi there",
                Command::Pub {
                    group: "room",
                    payload: b"hi there",
                },
            ),
            (b"all hi", Command::All(b"hi")),
            (b"bind alice", Command::Bind("alice")),
            (b"unbind alice", Command::Unbind("alice")),
            (
                b"touid alice hi",
                Command::ToUid {
                    uid: "alice",
                    payload: b"hi",
                },
            ),
            (b"count room", Command::Count("room")),
            (
                b"set nick Ada Lovelace",
                Command::Set {
                    key: "nick",
                    value: "Ada Lovelace",
                },
            ),
            (b"get nick", Command::Get("nick")),
            (b"whoami", Command::WhoAmI),
            (b"total", Command::Total),
            (
                b"kick 7f00000122b800000001",
                Command::Kick("7f00000122b800000001"),
            ),
            (
                b"sqlput k a b",
                Command::SqlPut {
                    key: "k",
                    value: "a b",
                },
            ),
            (b"sqlget k", Command::SqlGet("k")),
            (b"sqlslow", Command::SqlSlow),
            (
                b"kvset k a \xff",
                Command::KvSet {
                    key: "k",
                    value: b"a \xff",
                },
            ),
            (b"kvget k", Command::KvGet("k")),
            (b"incr hits", Command::Incr("hits")),
            (b"kvread k", Command::KvRead("k")),
            (
                b"kvswap k a \xff",
                Command::KvSwap {
                    key: "k",
                    value: b"a \xff",
                },
            ),
            (
                b"kvsetmany a=1 b= c=x=y",
                Command::KvSetMany("a=1 b= c=x=y"),
            ),
            (b"kvgetmany a b c", Command::KvGetMany("a b c")),
            (
                b"fetch http://127.0.0.1:8080/x",
                Command::Fetch("http://127.0.0.1:8080/x"),
            ),
            (
                b"cost kvget 1000",
                Command::Cost(Some(Cost {
                    op: CostOp::KvGet,
                    n: 1000,
                })),
            ),
        ];
        assert_eq!(cases.len(), COMMANDS.len());
        for (message, command) in cases {
            assert_eq!(
                parse(message).as_ref(),
                Ok(command),
                "{}",
                message.escape_ascii()
            );
        }
    }

    #[test]
    fn payloads_are_bytes() {
        assert_eq!(parse(b"echo \xff\x00 x"), Ok(Command::Echo(b"\xff\x00 x")));
        assert_eq!(
            parse(b"pub g \xc3"),
            Ok(Command::Pub {
                group: "g",
                payload: b"\xc3"
            })
        );
    }

    #[test]
    fn empty_arguments_are_kept_and_missing_ones_are_errors() {
        assert_eq!(parse(b"echo "), Ok(Command::Echo(b"")));
        assert_eq!(parse(b"count "), Ok(Command::Count("")));
        assert_eq!(
            parse(b"pub g "),
            Ok(Command::Pub {
                group: "g",
                payload: b""
            })
        );
        assert_eq!(parse(b"echo"), Err(ParseError::Usage("echo <payload>")));
        assert_eq!(parse(b"join"), Err(ParseError::Usage("join <group>")));
        assert_eq!(
            parse(b"pub room"),
            Err(ParseError::Usage("pub <group> <payload>"))
        );
        assert_eq!(
            parse(b"set key"),
            Err(ParseError::Usage("set <key> <value>"))
        );
        assert_eq!(parse(b"whoami now"), Err(ParseError::Usage("whoami")));
        let set_many = Err(ParseError::Usage("kvsetmany <key>=<value> …"));
        assert_eq!(parse(b"kvsetmany a=1 b"), set_many);
        assert_eq!(parse(b"kvsetmany a=1  b=2"), set_many);
        assert_eq!(parse(b"kvsetmany"), set_many);
    }

    #[test]
    fn cost_takes_a_known_op_and_a_bounded_count() {
        let cost = |op, n| Ok(Command::Cost(Some(Cost { op, n })));
        assert_eq!(parse(b"cost send 1"), cost(CostOp::Send, 1));
        assert_eq!(parse(b"cost sqlget 10000"), cost(CostOp::SqlGet, 10_000));
        let usage = Err(ParseError::Usage("cost <op> <n>"));
        for message in [
            &b"cost send"[..],
            b"cost send 0",
            b"cost send 10001",
            b"cost send -1",
            b"cost send 1 2",
            b"cost fetch 10",
            b"cost  10",
        ] {
            assert_eq!(parse(message), usage, "{}", message.escape_ascii());
        }
    }

    #[test]
    fn last_word_takes_the_rest() {
        assert_eq!(parse(b"join my room"), Ok(Command::Join("my room")));
    }

    #[test]
    fn words_must_be_utf8() {
        assert_eq!(parse(b"join \xff"), Err(ParseError::Usage("join <group>")));
        assert_eq!(
            parse(b"set k \xff"),
            Err(ParseError::Usage("set <key> <value>"))
        );
    }

    #[test]
    fn unknown_commands_are_errors() {
        for message in [&b""[..], b"nope", b"ECHO x", b" echo x", b"\xff"] {
            assert_eq!(parse(message), Err(ParseError::Unknown));
        }
        assert_eq!(ParseError::Unknown.to_string(), "error unknown command");
    }
}
