//! What one plugin call costs, for the reference plugin built in Rust, Python and JavaScript:
//! `on-message` with a 64-byte payload that makes one `send-to-group` host call (the reference
//! protocol's `pub`), and a fresh instance from `InstancePre` (instantiate plus
//! `on-worker-start`). Host calls go to a counting double, so this measures the runtime and the
//! component, not the network.
//!
//! Besides criterion's timings it prints, per language, the compile time of the component and
//! the memory one more running instance costs (the growth of the process's resident set over
//! [`INSTANCES`] instances that have each handled a message).
//!
//! `cargo bench -p wasmgate-tests --bench plugin_call` (the Python and JavaScript builds are
//! made as the tests make them, and skipped loudly where their toolchains are missing)

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use wasmgate::ops::{Command, CommandFuture, Gateways, Query, QueryFuture, Unreachable};
use wasmgate::worker::runtime::{Call, Limits, PluginCode, PluginInstance, Runtime};
use wasmgate_tests::plugins;
use wasmgate_tests::polyglot::{self, Language};

/// How many instances the memory figure is averaged over.
const INSTANCES: usize = 16;

#[derive(Default)]
struct Counting(AtomicU64);

impl Gateways for Counting {
    fn command(&self, _command: Command) -> CommandFuture {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }

    fn query(&self, _query: Query) -> QueryFuture {
        Box::pin(async { Err(Unreachable::NoGateway) })
    }
}

/// The reference plugin's builds that can be had here: (language, component file).
fn builds() -> Vec<(&'static str, PathBuf)> {
    let mut builds = vec![("rust", PathBuf::from(plugins::COMMANDS))];
    for language in Language::ALL {
        match polyglot::commands(language) {
            Ok(path) => builds.push((language.name(), path)),
            Err(skip) => skip.report(&format!("plugin_call bench, {language:?}")),
        }
    }
    builds
}

fn plugin_call(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let runtime = Runtime::new(Limits::default()).unwrap();
    let counting = Arc::new(Counting::default());
    let client = wasmgate_tests::records::client(&[("nick", "ada")]);
    let mut message = b"pub room ".to_vec();
    message.extend_from_slice(&[b'x'; 64]);
    let instance = |code: &Arc<PluginCode>| {
        runtime.instance(
            code.clone(),
            counting.clone(),
            "bench".into(),
            Default::default(),
        )
    };

    let mut loaded = Vec::new();
    for (name, path) in builds() {
        let bytes = std::fs::read(&path).unwrap();
        let started = Instant::now();
        let code = runtime.load("commands", &bytes).unwrap();
        println!(
            "{name}: {:.1} MB component, compiled in {:.2} s",
            bytes.len() as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
        loaded.push((name, code));
    }

    let mut calls = c.benchmark_group("on-message, 64-byte payload, one send-to-group");
    for (name, code) in &loaded {
        let mut instance = instance(code);
        rt.block_on(instance.start()).unwrap();
        let before = counting.0.load(Ordering::Relaxed);
        calls.bench_function(*name, |b| {
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
            counting.0.load(Ordering::Relaxed) > before,
            "{name}: the plugin made no host call"
        );
    }
    calls.finish();

    let mut starts = c.benchmark_group("instantiate from InstancePre + on-worker-start");
    for (name, code) in &loaded {
        starts.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let mut fresh = instance(code);
                        let start = Instant::now();
                        fresh.start().await.unwrap();
                        total += start.elapsed();
                    }
                    total
                })
            })
        });
    }
    starts.finish();

    for (name, code) in &loaded {
        let before = resident_kib();
        let running: Vec<PluginInstance> = (0..INSTANCES)
            .map(|_| {
                let mut running = instance(code);
                rt.block_on(running.call(Call::Message(&client, &message)))
                    .unwrap();
                running
            })
            .collect();
        let grown = resident_kib().saturating_sub(before);
        println!(
            "{name}: {:.2} MiB resident per running instance (over {INSTANCES})",
            grown as f64 / 1024.0 / INSTANCES as f64
        );
        drop(running);
    }
}

/// The process's resident set (`VmRSS`), in KiB.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmRSS in /proc/self/status")
}

criterion_group!(benches, plugin_call);
criterion_main!(benches);
