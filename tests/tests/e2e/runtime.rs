//! The wasm runtime with real components and a recording `Gateways`: every command of the
//! reference protocol turns into the right gateway operation, every callback can be driven,
//! and the sandbox stops loops, memory hogs and traps without touching anything else.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmgate::client_id::ClientId;
use wasmgate::ops::{Command, CommandFuture, Gateways, Query, QueryFuture, Reply, Session};
use wasmgate::worker::WebsocketRequest;
use wasmgate::worker::runtime::{
    Call, CallError, EventClient, Limits, LoadError, PluginInstance, Runtime,
};
use wasmgate_tests::plugins;
use wasmgate_tests::records::client;

/// Records what a plugin asks of the gateways; answers `GroupCounts` with 3 per group.
#[derive(Default)]
struct Recorder {
    commands: Mutex<Vec<Command>>,
    queries: Mutex<Vec<Query>>,
}

impl Recorder {
    fn take(&self) -> Vec<Command> {
        std::mem::take(&mut self.commands.lock().unwrap())
    }
}

impl Gateways for Recorder {
    fn command(&self, command: Command) -> CommandFuture {
        self.commands.lock().unwrap().push(command);
        Box::pin(async { Ok(()) })
    }

    fn query(&self, query: Query) -> QueryFuture {
        self.queries.lock().unwrap().push(query.clone());
        Box::pin(async move {
            match query {
                Query::GroupCounts(groups) => Ok(Reply::GroupCounts(
                    groups.into_iter().map(|g| (g, 3)).collect(),
                )),
                other => panic!("unexpected query {other:?}"),
            }
        })
    }
}

const ME: &str = wasmgate_tests::records::CLIENT_ID;
const OTHER: &str = "7f00000108fc00000009";

fn me() -> ClientId {
    ME.parse().unwrap()
}

fn reply(text: &str) -> Command {
    Command::SendToClients {
        clients: vec![me()],
        data: Bytes::copy_from_slice(text.as_bytes()),
    }
}

struct Harness {
    runtime: Runtime,
    recorder: Arc<Recorder>,
}

impl Harness {
    fn new(limits: Limits) -> Self {
        Self {
            runtime: Runtime::new(limits).unwrap(),
            recorder: Arc::new(Recorder::default()),
        }
    }

    fn instance(&self, name: &str, path: &str) -> PluginInstance {
        let code = self
            .runtime
            .load(name, &std::fs::read(path).unwrap())
            .unwrap();
        self.runtime.instance(
            code,
            self.recorder.clone(),
            "test-worker".into(),
            Default::default(),
        )
    }
}

async fn message(
    instance: &mut PluginInstance,
    client: &EventClient,
    text: &str,
) -> Result<wasmgate::worker::runtime::CallOutcome, CallError> {
    instance.call(Call::Message(client, text.as_bytes())).await
}

#[tokio::test]
async fn every_reference_command_makes_the_right_gateway_call() {
    let h = Harness::new(Limits::default());
    let mut commands = h.instance("commands", plugins::COMMANDS);
    let c = client(&[("color", "blue")]);
    let cases: Vec<(String, Vec<Command>)> = vec![
        ("echo hello world".into(), vec![reply("hello world")]),
        (
            "join room1".into(),
            vec![
                Command::JoinGroup {
                    client: me(),
                    group: "room1".into(),
                },
                reply("joined room1"),
            ],
        ),
        (
            "leave room1".into(),
            vec![
                Command::LeaveGroup {
                    client: me(),
                    group: "room1".into(),
                },
                reply("left room1"),
            ],
        ),
        (
            "pub room1 hi there".into(),
            vec![Command::SendToGroup {
                groups: vec!["room1".into()],
                data: Bytes::from_static(b"hi there"),
                exclude: vec![],
            }],
        ),
        (
            "all news".into(),
            vec![Command::SendToAll {
                data: Bytes::from_static(b"news"),
                exclude: vec![],
            }],
        ),
        (
            "bind alice".into(),
            vec![
                Command::BindUid {
                    client: me(),
                    uid: "alice".into(),
                },
                reply("bound alice"),
            ],
        ),
        (
            "unbind alice".into(),
            vec![
                Command::UnbindUid {
                    client: me(),
                    uid: "alice".into(),
                },
                reply("unbound alice"),
            ],
        ),
        (
            "touid bob psst".into(),
            vec![Command::SendToUid {
                uids: vec!["bob".into()],
                data: Bytes::from_static(b"psst"),
            }],
        ),
        ("count room1".into(), vec![reply("count room1 3")]),
        ("get color".into(), vec![reply("value color blue")]),
        ("get size".into(), vec![reply("none")]),
        ("whoami".into(), vec![reply(ME)]),
        (
            format!("kick {OTHER}"),
            vec![Command::CloseClient {
                client: OTHER.parse().unwrap(),
                farewell: None,
            }],
        ),
    ];
    for (input, expected) in cases {
        let outcome = message(&mut commands, &c, &input).await.unwrap();
        assert_eq!(h.recorder.take(), expected, "command {input:?}");
        assert_eq!(
            outcome.session, None,
            "command {input:?} changed the session"
        );
    }
    assert_eq!(
        *h.recorder.queries.lock().unwrap(),
        vec![Query::GroupCounts(vec!["room1".into()])]
    );
}

#[tokio::test]
async fn set_updates_the_session_and_reports_the_change() {
    let h = Harness::new(Limits::default());
    let mut commands = h.instance("commands", plugins::COMMANDS);
    let outcome = message(&mut commands, &client(&[("a", "1")]), "set b 2")
        .await
        .unwrap();
    let changes: Session = [("b".to_string(), "2".to_string())].into();
    assert_eq!(
        h.recorder.take(),
        vec![
            Command::UpdateSession {
                client: me(),
                changes
            },
            reply("ok")
        ]
    );
    let change = outcome.session.expect("the session changed");
    assert_eq!(change.writes, 1);
    assert_eq!(
        *change.session,
        [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string())
        ]
        .into()
    );
}

#[tokio::test]
async fn every_callback_can_be_driven() {
    let h = Harness::new(Limits::default());
    let mut commands = h.instance("commands", plugins::COMMANDS);
    let c = client(&[]);
    let request = WebsocketRequest {
        path: "/chat".into(),
        query: "a=1".into(),
        headers: vec![("host".into(), "x".into())],
    };
    commands.start().await.unwrap();
    commands.call(Call::Connect(&c)).await.unwrap();
    let outcome = commands
        .call(Call::WebsocketConnect(&c, &request))
        .await
        .unwrap();
    assert_eq!(outcome.rejected, None);
    message(&mut commands, &c, "echo x").await.unwrap();
    commands.call(Call::Close(&c)).await.unwrap();
    commands.call(Call::Timer(42)).await.unwrap();
    commands.stop().await;
    assert_eq!(h.recorder.take(), vec![reply("x")]);
}

/// What a callback's future may hold: the instance driver moves it on every event, so each
/// kilobyte is copied per message. An instance's start (instantiation, `on-worker-start`) is
/// boxed apart, for it would make every call's future as large as its own, and the wrappers
/// around the call (timeout, metrics) hold it once.
const CALL_FUTURE_BUDGET: usize = 1024;

#[tokio::test]
async fn a_callbacks_future_stays_within_its_budget() {
    let h = Harness::new(Limits::default());
    let mut commands = h.instance("commands", plugins::COMMANDS);
    let c = client(&[]);
    let call = commands.call(Call::Message(&c, b"echo x"));
    let size = std::mem::size_of_val(&call);
    assert!(
        size <= CALL_FUTURE_BUDGET,
        "{size} bytes, over {CALL_FUTURE_BUDGET}"
    );
    call.await.unwrap();
    assert_eq!(h.recorder.take(), vec![reply("x")]);
}

#[tokio::test]
async fn a_callback_that_loops_is_stopped_and_replaced() {
    let timeout = Duration::from_millis(300);
    let h = Harness::new(Limits {
        process_timeout: timeout,
        ..Limits::default()
    });
    let mut bad = h.instance("misbehave", plugins::MISBEHAVE);
    let c = client(&[]);
    message(&mut bad, &c, "instance").await.unwrap();
    message(&mut bad, &c, "instance").await.unwrap();
    assert_eq!(h.recorder.take(), vec![reply("calls 1"), reply("calls 2")]);
    let started = Instant::now();
    let err = message(&mut bad, &c, "loop").await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            CallError::Timeout {
                callback: "on-message",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        took >= timeout && took < timeout * 10,
        "interrupted after {took:?}"
    );
    // The next event is served by a fresh instance: its call counter starts again.
    message(&mut bad, &c, "instance").await.unwrap();
    assert_eq!(h.recorder.take(), vec![reply("calls 1")]);
}

#[tokio::test]
async fn a_callback_that_allocates_past_the_limit_fails_cleanly() {
    let h = Harness::new(Limits {
        memory_limit: 32 << 20,
        ..Limits::default()
    });
    let mut bad = h.instance("misbehave", plugins::MISBEHAVE);
    let c = client(&[]);
    message(&mut bad, &c, "alloc 8").await.unwrap();
    assert_eq!(h.recorder.take(), vec![reply("allocated 8")]);
    let err = message(&mut bad, &c, "alloc 64").await.unwrap_err();
    assert!(
        matches!(err, CallError::OutOfMemory { limit, .. } if limit == 32 << 20),
        "{err}"
    );
    message(&mut bad, &c, "echo still here").await.unwrap();
    assert_eq!(h.recorder.take(), vec![reply("still here")]);
}

#[tokio::test]
async fn a_trap_in_one_plugin_leaves_another_untouched() {
    let h = Harness::new(Limits::default());
    let mut bad = h.instance("misbehave", plugins::MISBEHAVE);
    let mut good = h.instance("echo", plugins::ECHO);
    let c = client(&[]);
    message(&mut good, &c, "before").await.unwrap();
    message(&mut bad, &c, "instance").await.unwrap();
    let err = message(&mut bad, &c, "trap").await.unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Trap {
                callback: "on-message",
                ..
            }
        ),
        "{err}"
    );
    message(&mut good, &c, "after").await.unwrap();
    message(&mut bad, &c, "instance").await.unwrap();
    assert_eq!(
        h.recorder.take(),
        vec![
            reply("before"),
            reply("calls 1"),
            reply("after"),
            reply("calls 1")
        ]
    );
}

#[tokio::test]
async fn a_refusing_or_trapping_start_is_reported() {
    let h = Harness::new(Limits::default());
    let bytes = std::fs::read(plugins::MISBEHAVE).unwrap();
    for (app, expect_refusal) in [("fail-start", true), ("trap-start", false)] {
        let code = h.runtime.load(app, &bytes).unwrap();
        let mut instance =
            h.runtime
                .instance(code, h.recorder.clone(), "w".into(), Default::default());
        let err = instance.start().await.unwrap_err();
        match err {
            CallError::StartRefused(reason) => {
                assert!(expect_refusal && reason.contains("refusing"), "{reason}")
            }
            CallError::Trap { callback, .. } => {
                assert!(!expect_refusal && callback == "on-worker-start")
            }
            other => panic!("{app}: unexpected {other}"),
        }
    }
}

#[test]
fn a_component_of_another_world_is_refused_by_name() {
    let runtime = Runtime::new(Limits::default()).unwrap();
    let err = runtime
        .load("cmd", &std::fs::read(plugins::NOT_A_PLUGIN).unwrap())
        .err()
        .expect("refused");
    assert!(matches!(err, LoadError::WrongWorld(_)), "{err}");
    assert!(err.to_string().contains("wasmgate:plugin/events"), "{err}");
}

#[test]
fn a_file_that_is_not_wasm_is_refused_clearly() {
    let runtime = Runtime::new(Limits::default()).unwrap();
    let err = runtime
        .load("junk", b"#!/bin/sh\necho not wasm\n")
        .err()
        .expect("refused");
    assert!(matches!(err, LoadError::NotWasm), "{err}");
    let mut truncated = std::fs::read(plugins::ECHO).unwrap();
    truncated.truncate(truncated.len() / 2);
    let err = runtime.load("half", &truncated).err().expect("refused");
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn plugins_get_nothing_unless_granted() {
    let h = Harness::new(Limits::default());
    let c = client(&[]);
    let mut plain = h.instance("misbehave", plugins::MISBEHAVE);
    message(&mut plain, &c, "env GREETING").await.unwrap();
    message(&mut plain, &c, "read /data/hello.txt")
        .await
        .unwrap();
    let replies = h.recorder.take();
    assert_eq!(replies[0], reply("unset"));
    assert!(
        matches!(&replies[1], Command::SendToClients { data, .. } if data.starts_with(b"error")),
        "{replies:?}"
    );

    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello.txt"), "hello from the host").unwrap();
    let grants = wasmgate::config::Grants {
        env: [("GREETING".to_string(), "hi".to_string())].into(),
        dirs: vec![wasmgate::config::DirGrant {
            host: data.path().to_owned(),
            guest: "/data".into(),
        }],
        ..Default::default()
    };
    let code = h
        .runtime
        .load("misbehave", &std::fs::read(plugins::MISBEHAVE).unwrap())
        .unwrap();
    let mut granted = h
        .runtime
        .instance(code, h.recorder.clone(), "w".into(), Arc::new(grants));
    message(&mut granted, &c, "env GREETING").await.unwrap();
    message(&mut granted, &c, "read /data/hello.txt")
        .await
        .unwrap();
    assert_eq!(
        h.recorder.take(),
        vec![reply("hi"), reply("hello from the host")]
    );
}
