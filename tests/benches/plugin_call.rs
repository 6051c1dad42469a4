//! What one plugin call costs: `on-message` with a 64-byte payload that makes one
//! `send-to-group` host call (the reference plugin's `pub`), and a fresh instance from
//! `InstancePre` (instantiate plus `on-worker-start`). Host calls go to a counting double, so
//! this measures the runtime and the component, not the network.
//!
//! `cargo bench -p wasmgate-tests --bench plugin_call`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use wasmgate::ops::{Command, Query};
use wasmgate::worker::Client;
use wasmgate::worker::host_api::{CommandFuture, Gateways, QueryError, QueryFuture};
use wasmgate::worker::runtime::{Call, Limits, Runtime};
use wasmgate_tests::plugins;

#[derive(Default)]
struct Counting(AtomicU64);

impl Gateways for Counting {
    fn command(&self, _command: Command) -> CommandFuture {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { true })
    }

    fn query(&self, _query: Query) -> QueryFuture {
        Box::pin(async { Err(QueryError::Unreachable) })
    }
}

fn plugin_call(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let runtime = Runtime::new(Limits::default()).unwrap();
    let code = runtime
        .load("commands", &std::fs::read(plugins::COMMANDS).unwrap())
        .unwrap();
    let counting = Arc::new(Counting::default());
    let client = Client {
        id: "7f00000108fc00000008".into(),
        remote_addr: "127.0.0.1".into(),
        remote_port: 40000,
        gateway_addr: "127.0.0.1".into(),
        gateway_port: 7272,
        listener: "ws".into(),
        uid: None,
        session: vec![("nick".into(), "ada".into())],
    };
    let mut message = b"pub room ".to_vec();
    message.extend_from_slice(&[b'x'; 64]);

    let mut instance = runtime.instance(
        code.clone(),
        counting.clone(),
        "bench".into(),
        Default::default(),
    );
    rt.block_on(instance.start()).unwrap();
    c.bench_function("on-message, 64-byte payload, one send-to-group", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    instance
                        .call(Call::Message(&client, &message))
                        .await
                        .unwrap();
                }
                start.elapsed()
            })
        })
    });
    assert!(
        counting.0.load(Ordering::Relaxed) > 0,
        "the plugin made no host call"
    );

    c.bench_function("instantiate from InstancePre + on-worker-start", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut fresh = runtime.instance(
                        code.clone(),
                        counting.clone(),
                        "bench".into(),
                        Default::default(),
                    );
                    let start = Instant::now();
                    fresh.start().await.unwrap();
                    total += start.elapsed();
                }
                total
            })
        })
    });
}

criterion_group!(benches, plugin_call);
criterion_main!(benches);
