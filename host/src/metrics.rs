//! What the process counts: counters and histograms, and nothing of the roles that count.
//!
//! Events are counted in statics, so that any module counts with one line
//! (`metrics::CONNECTIONS_OPENED.inc()`) and no handle has to be threaded through the roles;
//! a count is an atomic add, never a lock held across anything. This module sits below every
//! role and imports none: what a gateway holds (clients, groups, uids, links, limit counters)
//! is read from the running gateways at scrape time by the process layer
//! (`crate::process::scrape`), which adds it to the [`register`]ed counters. The worker host
//! publishes here what has no other home outside its tasks: the plugin versions it serves
//! ([`plugins`]) and its links to gateways ([`gateway_link`]); `status` reads them too.
//!
//! Names follow the Prometheus guide: a `wasmgate_` prefix, base units (seconds, bytes),
//! counters ending in `_total` (the library appends it). Labels are bounded: `gateway`,
//! `plugin`, `event`, `outcome`, `role`, `worker`, `version`, `listener`, `reason` — never a client id, uid or group.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Client connections accepted (after their handshake).
pub static CONNECTIONS_OPENED: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Client connections ended, for any reason.
pub static CONNECTIONS_CLOSED: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Cluster-wide queries answered without some gateway (silent past the query's bound).
pub static QUERIES_PARTIAL: LazyLock<Counter> = LazyLock::new(Counter::default);

static MESSAGES_RECEIVED: LazyLock<Counter> = LazyLock::new(Counter::default);
static RECEIVED_BYTES: LazyLock<Counter> = LazyLock::new(Counter::default);
static MESSAGES_SENT: LazyLock<Counter> = LazyLock::new(Counter::default);
static SENT_BYTES: LazyLock<Counter> = LazyLock::new(Counter::default);
static PLUGIN_CALLS: LazyLock<Family<CallLabels, Counter>> = LazyLock::new(Family::default);
static PLUGIN_CALL_SECONDS: LazyLock<Timings> =
    LazyLock::new(|| Family::new_with_constructor(call_buckets));
static PLUGIN_RELOADS: LazyLock<Family<ReloadLabels, Counter>> = LazyLock::new(Family::default);
static PLUGIN_LIMITS: LazyLock<Family<LimitLabels, Counter>> = LazyLock::new(Family::default);
static LINKS_TO_GATEWAYS: LazyLock<Family<RoleLabels, Gauge>> = LazyLock::new(Family::default);
static EVENTS_DROPPED: LazyLock<Family<ReasonLabels, Counter>> = LazyLock::new(Family::default);
static EVENTS_RESENT: LazyLock<Counter> = LazyLock::new(Counter::default);
static ACKS_PARKED: LazyLock<Counter> = LazyLock::new(Counter::default);
static LOST_GATEWAY_CLOSES: LazyLock<Counter> = LazyLock::new(Counter::default);
static CLIENTS_KEPT: LazyLock<Gauge> = LazyLock::new(Gauge::default);
static KEEPER_MOVES: LazyLock<Counter> = LazyLock::new(Counter::default);
static CLIENTS_UNROUTED: LazyLock<Family<ReasonLabels, Counter>> = LazyLock::new(Family::default);
static LINK_MESSAGES_DROPPED: LazyLock<Family<ReasonLabels, Counter>> =
    LazyLock::new(Family::default);
static LINKS_CLOSED: LazyLock<Family<ReasonLabels, Counter>> = LazyLock::new(Family::default);
static INTERNAL_TLS_REFUSED: LazyLock<Family<ReasonLabels, Counter>> =
    LazyLock::new(Family::default);
static NATS_COMMANDS_FAILED: LazyLock<Family<ReasonLabels, Counter>> =
    LazyLock::new(Family::default);
static NATS_CONNECTED: LazyLock<Gauge> = LazyLock::new(Gauge::default);
static NATS_COMMANDS_PUBLISHED: LazyLock<Counter> = LazyLock::new(Counter::default);
static NATS_MARKS_PUBLISHED: LazyLock<Counter> = LazyLock::new(Counter::default);
static HTTP_CUT_OFF: LazyLock<Family<ListenerLabels, Counter>> = LazyLock::new(Family::default);
static CONTROL_REFUSED: LazyLock<Family<ReasonLabels, Counter>> = LazyLock::new(Family::default);
static GATEWAYWORKER_REFUSED: LazyLock<Family<ListenerLabels, Counter>> =
    LazyLock::new(Family::default);
static DATA_CALLS: LazyLock<Family<DataLabels, Counter>> = LazyLock::new(Family::default);
static DATA_CALL_SECONDS: LazyLock<DataTimings> =
    LazyLock::new(|| Family::new_with_constructor(call_buckets));
static CALL_METRICS: LazyLock<RwLock<CallMetricsByPlugin>> = LazyLock::new(RwLock::default);
/// Every plugin call of the process, whatever its labels: the rate `status` shows.
static CALLS: AtomicU64 = AtomicU64::new(0);
static PLUGINS: Mutex<BTreeMap<(String, String), PluginVersion>> = Mutex::new(BTreeMap::new());

/// The last version of each plugin a worker host refused, by worker host and plugin.
static REFUSED: Mutex<BTreeMap<(String, String), RefusedVersion>> = Mutex::new(BTreeMap::new());

/// Call durations by plugin and event.
type Timings = Family<EventLabels, Histogram, fn() -> Histogram>;

/// Data call durations by app and interface.
type DataTimings = Family<DataKindLabels, Histogram, fn() -> Histogram>;

/// 10 µs to about 10 s in ×4 steps: a Rust plugin's call is microseconds, a Python one's
/// milliseconds, and `process_timeout` defaults to 10 s.
fn call_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 4.0, 11))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    event: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    plugin: String,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    plugin: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DataLabels {
    app: String,
    interface: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DataKindLabels {
    app: String,
    interface: &'static str,
}

/// Records one call a plugin of `app` made to a data `interface` (`kv`, `sql`, `http`): its
/// `outcome` (`ok`, `denied`, `error`, `timeout`, `too_large`) and how long it took.
pub fn data_call(app: &str, interface: &'static str, outcome: &'static str, took: Duration) {
    let app = app.to_owned();
    DATA_CALL_SECONDS
        .get_or_create(&DataKindLabels {
            app: app.clone(),
            interface,
        })
        .observe(took.as_secs_f64());
    DATA_CALLS
        .get_or_create(&DataLabels {
            app,
            interface,
            outcome,
        })
        .inc();
}

/// Data calls of `app` to `interface` with `outcome` so far.
pub fn data_calls(app: &str, interface: &'static str, outcome: &'static str) -> u64 {
    DATA_CALLS
        .get(&DataLabels {
            app: app.to_owned(),
            interface,
            outcome,
        })
        .map_or(0, |c| c.get())
}

/// Counts a client event that no plugin will see, by `reason` (`queue_full`, `no_worker`,
/// `app_unserved`, `too_large`).
pub fn event_dropped(reason: &'static str) {
    EVENTS_DROPPED.get_or_create(&ReasonLabels { reason }).inc();
}

/// Client events dropped so far for `reason`.
pub fn events_dropped(reason: &'static str) -> u64 {
    EVENTS_DROPPED
        .get(&ReasonLabels { reason })
        .map_or(0, |c| c.get())
}

/// Counts client events a gateway sent again to another worker host because the link to
/// the one holding them was lost before it finished them.
pub fn events_resent(events: usize) {
    EVENTS_RESENT.inc_by(events as u64);
}

/// Counts an event acknowledgement a worker host held back until other gateways confirmed
/// the commands its callback sent them (or behind an earlier one of its client).
pub fn ack_parked() {
    ACKS_PARKED.inc();
}

/// Counts an `on-close` a worker host ran for a client of a gateway that was lost.
pub fn lost_gateway_close() {
    LOST_GATEWAY_CLOSES.inc();
}

/// Adds `change` to the clients this worker host keeps (it runs their `on-close` if their
/// gateway is lost).
pub fn clients_kept(change: i64) {
    CLIENTS_KEPT.inc_by(change);
}

/// Counts a client a gateway told to another keeper because the worker hosts that may keep
/// it changed.
pub fn keeper_moved() {
    KEEPER_MOVES.inc();
}

/// Counts a client closed because no worker host took its events within `no_worker_hold`,
/// by `reason` (`no_worker`: none linked; `app_unserved`: none linked serves its app).
pub fn client_unrouted(reason: &'static str) {
    CLIENTS_UNROUTED
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// Clients closed so far for want of a worker host, for `reason`.
pub fn clients_unrouted(reason: &'static str) -> u64 {
    CLIENTS_UNROUTED
        .get(&ReasonLabels { reason })
        .map_or(0, |c| c.get())
}

/// Counts a message an internal link could not carry (`too_large`); the link stays up.
pub fn link_message_dropped(reason: &'static str) {
    LINK_MESSAGES_DROPPED
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// Messages internal links could not carry so far for `reason`.
pub fn link_messages_dropped(reason: &'static str) -> u64 {
    LINK_MESSAGES_DROPPED
        .get(&ReasonLabels { reason })
        .map_or(0, |c| c.get())
}

/// Counts an internal link (gateway ↔ worker host or push client) that ended, by `reason`.
pub fn link_closed(reason: &'static str) {
    LINKS_CLOSED.get_or_create(&ReasonLabels { reason }).inc();
}

/// Internal links ended so far for `reason`.
pub fn links_closed(reason: &'static str) -> u64 {
    LINKS_CLOSED
        .get(&ReasonLabels { reason })
        .map_or(0, |c| c.get())
}

/// Counts an internal connection whose TLS layer refused the peer (or was refused), by
/// `reason`, on the end that saw it.
pub fn internal_tls_refused(reason: &'static str) {
    INTERNAL_TLS_REFUSED
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// Counts a command a worker host or push client could not publish on NATS, by `reason`
/// (`disconnected`, `publish`, `too_large`, `encoding`); its caller got `unreachable`.
pub fn nats_command_failed(reason: &'static str) {
    NATS_COMMANDS_FAILED
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// Counts a command a worker host or push client published on NATS (once per subject).
pub fn nats_command_published() {
    NATS_COMMANDS_PUBLISHED.inc();
}

/// Commands published on NATS so far by this process.
pub fn nats_commands_published() -> u64 {
    NATS_COMMANDS_PUBLISHED.get()
}

/// Counts a mark a worker host published on NATS to learn that the server has its commands
/// (one answers every acknowledgement parked while it travels).
pub fn nats_mark_published() {
    NATS_MARKS_PUBLISHED.inc();
}

/// Records whether the process's NATS connection is up.
pub fn nats_connected(up: bool) {
    NATS_CONNECTED.set(i64::from(up));
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

/// A listener and why it cut someone off: the HTTP listeners' cut-offs, GatewayWorker
/// listeners' refusals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
    reason: &'static str,
}

/// Why an HTTP listener cut a connection or a request off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpCutOff {
    /// The listener held `max_connections` already.
    OverLimit,
    /// The request head did not arrive within `header_read_timeout`.
    HeaderTimeout,
    /// The request was not answered within `request_timeout`.
    RequestTimeout,
    /// The connection was still open `stop_timeout` after the stop began.
    StopTimeout,
}

impl HttpCutOff {
    fn label(self) -> &'static str {
        match self {
            HttpCutOff::OverLimit => "over_limit",
            HttpCutOff::HeaderTimeout => "header_timeout",
            HttpCutOff::RequestTimeout => "request_timeout",
            HttpCutOff::StopTimeout => "stop_timeout",
        }
    }
}

/// Counts `n` connections or requests that the HTTP `listener` (`push`, `web`, `metrics`)
/// cut off.
pub fn http_cut_off(listener: &'static str, reason: HttpCutOff, n: u64) {
    HTTP_CUT_OFF
        .get_or_create(&ListenerLabels {
            listener,
            reason: reason.label(),
        })
        .inc_by(n);
}

/// Why the control socket refused a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRefusal {
    /// The peer runs as another user (not root either).
    OtherUser,
    /// The peer's credentials could not be read.
    UnknownPeer,
}

impl ControlRefusal {
    fn label(self) -> &'static str {
        match self {
            ControlRefusal::OtherUser => "other_user",
            ControlRefusal::UnknownPeer => "unknown_peer",
        }
    }
}

/// Counts a peer the control socket refused.
pub fn control_refused(reason: ControlRefusal) {
    let reason = reason.label();
    CONTROL_REFUSED
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// Peers the control socket refused so far for `reason`.
pub fn controls_refused(reason: ControlRefusal) -> u64 {
    let reason = reason.label();
    CONTROL_REFUSED
        .get(&ReasonLabels { reason })
        .map_or(0, |c| c.get())
}

/// Counts a connection a GatewayWorker-compatible `listener` (`register`, `gateway`) closed,
/// or a packet it refused, by `reason`.
pub fn gatewayworker_refused(listener: &'static str, reason: &'static str) {
    GATEWAYWORKER_REFUSED
        .get_or_create(&ListenerLabels { listener, reason })
        .inc();
}

/// Counts a link to a gateway opened (`change` 1) or closed (-1) by a `role` of this process
/// (`worker`, `client`).
pub fn gateway_link(role: &'static str, change: i64) {
    LINKS_TO_GATEWAYS
        .get_or_create(&RoleLabels { role })
        .inc_by(change);
}

/// The gateways the `role`s of this process are linked to.
pub fn gateway_links(role: &'static str) -> i64 {
    LINKS_TO_GATEWAYS
        .get(&RoleLabels { role })
        .map_or(0, |g| g.get())
}

/// Counts one client message received by a gateway.
pub fn message_received(bytes: usize) {
    MESSAGES_RECEIVED.inc();
    RECEIVED_BYTES.inc_by(bytes as u64);
}

/// Counts one message written to a client.
pub fn message_sent(bytes: usize) {
    MESSAGES_SENT.inc();
    SENT_BYTES.inc_by(bytes as u64);
}

/// The process's client traffic so far: messages received, messages sent, plugin calls.
pub fn traffic() -> [u64; 3] {
    [
        MESSAGES_RECEIVED.get(),
        MESSAGES_SENT.get(),
        CALLS.load(Ordering::Relaxed),
    ]
}

/// Client bytes received and sent so far.
pub fn bytes() -> [u64; 2] {
    [RECEIVED_BYTES.get(), SENT_BYTES.get()]
}

/// Runs one plugin callback (`call`), counting it by outcome (`outcome` names a failure's)
/// and timing it. Not an `async fn`, which would hold the call twice in its state: a
/// callback's future is kilobytes, moved on every event.
pub fn plugin_call<T, E>(
    plugin: &str,
    event: &'static str,
    call: impl Future<Output = Result<T, E>>,
    outcome: impl FnOnce(&E) -> Outcome,
) -> impl Future<Output = Result<T, E>> {
    let started = Instant::now();
    call.map(move |result| record_call(plugin, event, started, result, outcome))
}

/// Counts and times a plugin call that ended with `result`.
fn record_call<T, E>(
    plugin: &str,
    event: &'static str,
    started: Instant,
    result: Result<T, E>,
    outcome: impl FnOnce(&E) -> Outcome,
) -> Result<T, E> {
    let seconds = started.elapsed().as_secs_f64();
    let outcome = result.as_ref().err().map_or(Outcome::Ok, outcome);
    let record = |m: &CallMetrics| {
        m.seconds.observe(seconds);
        m.outcomes[outcome as usize].inc();
        CALLS.fetch_add(1, Ordering::Relaxed);
    };
    if let Some(m) = call_metrics().get(plugin).and_then(|e| e.get(event)) {
        record(m);
        return result;
    }
    let mut all = CALL_METRICS.write().unwrap_or_else(|e| e.into_inner());
    let by_event = all.entry(plugin.to_owned()).or_default();
    record(
        by_event
            .entry(event)
            .or_insert_with(|| CallMetrics::new(plugin, event)),
    );
    result
}

/// How a plugin call ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// It returned.
    Ok,
    /// The guest trapped.
    Trap,
    /// It ran past `process_timeout`.
    Timeout,
    /// It grew past `memory_limit`.
    MemoryLimit,
    /// A fresh instance for it could not be started.
    StartFailed,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Trap,
        Outcome::Timeout,
        Outcome::MemoryLimit,
        Outcome::StartFailed,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Trap => "trap",
            Outcome::Timeout => "timeout",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::StartFailed => "start_failed",
        }
    }
}

/// One callback's histogram and outcome counters, resolved from the families once, so a
/// call costs two hash lookups under a read lock and no allocation (about 40 ns besides the
/// clock, against 1.4 µs for the fastest plugin call).
struct CallMetrics {
    seconds: Histogram,
    outcomes: [Counter; Outcome::ALL.len()],
}

impl CallMetrics {
    fn new(plugin: &str, event: &'static str) -> Self {
        let plugin = plugin.to_owned();
        Self {
            seconds: PLUGIN_CALL_SECONDS.get_or_create_owned(&EventLabels {
                plugin: plugin.clone(),
                event,
            }),
            outcomes: Outcome::ALL.map(|outcome| {
                PLUGIN_CALLS.get_or_create_owned(&CallLabels {
                    plugin: plugin.clone(),
                    event,
                    outcome: outcome.label(),
                })
            }),
        }
    }
}

/// Looked up twice per plugin call: a fast hash (names come from the operator's files).
type CallMetricsByPlugin = HashMap<String, HashMap<&'static str, CallMetrics, FastHash>, FastHash>;

type FastHash = foldhash::fast::RandomState;

fn call_metrics() -> std::sync::RwLockReadGuard<'static, CallMetricsByPlugin> {
    CALL_METRICS.read().unwrap_or_else(|e| e.into_inner())
}

/// How a look at a plugin file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// A new version serves.
    Installed,
    /// The file holds the version already serving.
    Unchanged,
    /// The file could not be loaded or started; the running version (if any) serves on.
    Failed,
    /// The file is gone, and so is the app.
    Removed,
}

/// Counts a look at `plugin`'s file that did not change what runs.
pub fn plugin_reloaded(plugin: &str, outcome: Reload) {
    let outcome = match outcome {
        Reload::Installed => "installed",
        Reload::Unchanged => "unchanged",
        Reload::Failed => "failed",
        Reload::Removed => "removed",
    };
    PLUGIN_RELOADS
        .get_or_create(&ReloadLabels {
            plugin: plugin.to_owned(),
            outcome,
        })
        .inc();
}

/// A plugin limit or safeguard that stepped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginLimit {
    /// A compile-cache entry failed its authentication and was recompiled instead of run.
    CacheRejected,
    /// A timer was refused: the instance holds `max_timers` already.
    TimerRefused,
    /// Guest output over `log_rate` was dropped (counted per write cut).
    LogDropped,
    /// A faulting instance's replacement was delayed (back-off).
    RestartDelayed,
    /// An instance opened more than `max_resources` resources and was replaced.
    TooManyResources,
    /// A call parked in a host call was abandoned at its deadline (see the runtime).
    HostCallAbandoned,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    plugin: String,
    limit: &'static str,
}

/// Counts that `limit` stepped in for `plugin`.
pub fn plugin_limit(plugin: &str, limit: PluginLimit) {
    let limit = match limit {
        PluginLimit::CacheRejected => "cache_rejected",
        PluginLimit::TimerRefused => "timer_refused",
        PluginLimit::TooManyResources => "too_many_resources",
        PluginLimit::LogDropped => "log_dropped",
        PluginLimit::RestartDelayed => "restart_delayed",
        PluginLimit::HostCallAbandoned => "host_call_abandoned",
    };
    PLUGIN_LIMITS
        .get_or_create(&LimitLabels {
            plugin: plugin.to_owned(),
            limit,
        })
        .inc();
}

/// A plugin version serving in a worker host of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginVersion {
    /// The worker host.
    pub worker: String,
    /// The plugin (app) name.
    pub plugin: String,
    /// The short hash of the component's bytes.
    pub version: String,
    /// Its instances.
    pub instances: usize,
    /// When it started serving.
    pub loaded_at: SystemTime,
}

/// Recent faults kept per plugin: enough for an operator to see what went wrong lately.
pub const RECENT_FAULTS: usize = 8;

/// A plugin's faults in one worker host since it started: counts by kind and the latest few.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginFaults {
    /// Traps.
    pub trap: u64,
    /// Calls past `process_timeout`.
    pub timeout: u64,
    /// Instances past `memory_limit`.
    pub memory_limit: u64,
    /// The latest [`RECENT_FAULTS`], oldest first: when, which callback, which kind
    /// (`trap`, `timeout`, `memory_limit`, `start_failed`).
    pub recent: VecDeque<(SystemTime, &'static str, &'static str)>,
}

static FAULTS: Mutex<BTreeMap<(String, String), PluginFaults>> = Mutex::new(BTreeMap::new());

/// Records that a call of `plugin`'s `event` in worker host `worker` ended in `outcome`;
/// faults are rare, so a lock here costs the calls that succeed nothing.
pub fn plugin_faulted(worker: &str, plugin: &str, event: &'static str, outcome: Outcome) {
    let mut all = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let faults = all
        .entry((worker.to_owned(), plugin.to_owned()))
        .or_default();
    match outcome {
        Outcome::Trap => faults.trap += 1,
        Outcome::Timeout => faults.timeout += 1,
        Outcome::MemoryLimit => faults.memory_limit += 1,
        Outcome::Ok | Outcome::StartFailed => {}
    }
    if faults.recent.len() == RECENT_FAULTS {
        faults.recent.pop_front();
    }
    faults
        .recent
        .push_back((SystemTime::now(), event, outcome.label()));
}

/// `plugin`'s faults in worker host `worker` (the admin page's plugin table).
pub fn plugin_faults(worker: &str, plugin: &str) -> PluginFaults {
    let all = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let key = (worker.to_owned(), plugin.to_owned());
    all.get(&key).cloned().unwrap_or_default()
}

/// A plugin version a worker host refused to serve, kept until a version of that plugin is
/// installed or its file removed, so that `status` shows why the file on disk is not what
/// serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedVersion {
    /// The worker host.
    pub worker: String,
    /// The plugin (app) name.
    pub plugin: String,
    /// The short hash of the component's bytes, when it was read and compiled.
    pub version: Option<String>,
    /// Why it was refused.
    pub reason: String,
    /// When.
    pub refused_at: SystemTime,
}

/// Records that `worker` refused a version of `plugin` (`version`, when known) for `reason`,
/// and counts it as a failed reload.
pub fn plugin_refused(worker: &str, plugin: &str, version: Option<&str>, reason: String) {
    plugin_reloaded(plugin, Reload::Failed);
    let entry = RefusedVersion {
        worker: worker.to_owned(),
        plugin: plugin.to_owned(),
        version: version.map(str::to_owned),
        reason,
        refused_at: SystemTime::now(),
    };
    refused_table().insert((worker.to_owned(), plugin.to_owned()), entry);
}

/// The last refused version of each plugin that has not been installed or removed since.
pub fn refused_plugins() -> Vec<RefusedVersion> {
    refused_table().values().cloned().collect()
}

/// Forgets the refused version of a plugin whose file is gone.
pub fn refused_plugin_gone(worker: &str, plugin: &str) {
    refused_table().remove(&(worker.to_owned(), plugin.to_owned()));
}

fn refused_table() -> std::sync::MutexGuard<'static, BTreeMap<(String, String), RefusedVersion>> {
    // Entries are replaced whole; a panic elsewhere cannot leave one half-written.
    REFUSED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records that `worker` now serves `version` of `plugin` with `instances` instances.
pub fn plugin_installed(worker: &str, plugin: &str, version: &str, instances: usize) {
    plugin_reloaded(plugin, Reload::Installed);
    refused_plugin_gone(worker, plugin);
    let entry = PluginVersion {
        worker: worker.to_owned(),
        plugin: plugin.to_owned(),
        version: version.to_owned(),
        instances,
        loaded_at: SystemTime::now(),
    };
    plugin_table().insert((worker.to_owned(), plugin.to_owned()), entry);
}

/// Records that `worker` no longer serves `plugin`.
pub fn plugin_removed(worker: &str, plugin: &str) {
    plugin_reloaded(plugin, Reload::Removed);
    refused_plugin_gone(worker, plugin);
    plugin_table().remove(&(worker.to_owned(), plugin.to_owned()));
}

/// The plugin versions serving in this process, by worker host and plugin.
pub fn plugins() -> Vec<PluginVersion> {
    plugin_table().values().cloned().collect()
}

fn plugin_table() -> std::sync::MutexGuard<'static, BTreeMap<(String, String), PluginVersion>> {
    // The table is replaced entry by entry; a panic elsewhere cannot leave one half-written.
    PLUGINS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers every counter and histogram of the process in `r`.
pub fn register(r: &mut Registry) {
    let counters: [(&str, &str, &LazyLock<Counter>); 5] = [
        (
            "queries_partial",
            "Cluster-wide queries answered without some gateway, silent past the query's bound",
            &QUERIES_PARTIAL,
        ),
        (
            "connections_opened",
            "Client connections accepted",
            &CONNECTIONS_OPENED,
        ),
        (
            "connections_closed",
            "Client connections ended",
            &CONNECTIONS_CLOSED,
        ),
        (
            "messages_received",
            "Messages received from clients",
            &MESSAGES_RECEIVED,
        ),
        (
            "messages_sent",
            "Messages written to clients",
            &MESSAGES_SENT,
        ),
    ];
    for (name, help, counter) in counters {
        r.register(name, help, Counter::clone(counter));
    }
    let bytes: [(&str, &str, &LazyLock<Counter>); 2] = [
        ("received", "Client payload bytes received", &RECEIVED_BYTES),
        ("sent", "Client payload bytes written", &SENT_BYTES),
    ];
    for (name, help, counter) in bytes {
        r.register_with_unit(name, help, Unit::Bytes, Counter::clone(counter));
    }
    r.register(
        "links_to_gateways",
        "Gateways linked, by the role of this process holding the links (worker, client)",
        LINKS_TO_GATEWAYS.clone(),
    );
    r.register(
        "events_dropped",
        "Client events no plugin saw, by reason (queue_full, no_worker, app_unserved, too_large)",
        EVENTS_DROPPED.clone(),
    );
    r.register(
        "events_resent",
        "Client events a gateway sent again to another worker host because the link to the one holding them was lost",
        EVENTS_RESENT.clone(),
    );
    r.register(
        "acks_parked",
        "Event acknowledgements a worker host held back until the other gateways its callback sent commands to confirmed them",
        ACKS_PARKED.clone(),
    );
    r.register(
        "lost_gateway_closes",
        "on-close callbacks a worker host queued for clients of a gateway it declared lost",
        LOST_GATEWAY_CLOSES.clone(),
    );
    r.register(
        "clients_kept",
        "Clients of gateways this worker host keeps: it runs their on-close if their gateway is lost",
        CLIENTS_KEPT.clone(),
    );
    r.register(
        "keeper_moves",
        "Clients a gateway told to another keeper because the worker hosts that may keep them changed",
        KEEPER_MOVES.clone(),
    );
    r.register(
        "clients_unrouted",
        "Clients closed because no worker host took their events within no_worker_hold, by reason (no_worker, app_unserved)",
        CLIENTS_UNROUTED.clone(),
    );
    r.register(
        "link_messages_dropped",
        "Messages an internal link could not carry while staying up, by reason (too_large)",
        LINK_MESSAGES_DROPPED.clone(),
    );
    r.register(
        "links_closed",
        "Internal links between gateways and worker hosts or push clients that ended, by reason (closed, silent, write_timeout, bad_frame, io, handshake, tls)",
        LINKS_CLOSED.clone(),
    );
    r.register(
        "internal_tls_refused",
        "Internal connections (register, gateway, worker host, push client) whose TLS layer refused the peer or was refused, by reason (plaintext_peer, tls_peer, handshake, timeout)",
        INTERNAL_TLS_REFUSED.clone(),
    );
    r.register(
        "nats_commands_failed",
        "Commands a worker host or push client could not publish on NATS (the caller got unreachable), by reason (disconnected, publish, too_large, encoding)",
        NATS_COMMANDS_FAILED.clone(),
    );
    r.register(
        "nats_commands_published",
        "Commands a worker host or push client published on NATS ([cluster] nats), once per subject",
        NATS_COMMANDS_PUBLISHED.clone(),
    );
    r.register(
        "nats_marks_published",
        "Marks a worker host published to itself over NATS so that the acknowledgements of events whose callbacks published commands wait until the server has them",
        NATS_MARKS_PUBLISHED.clone(),
    );
    r.register(
        "nats_connected",
        "1 while the process's NATS connection ([cluster] nats) is up, else 0",
        NATS_CONNECTED.clone(),
    );
    r.register(
        "http_cut_off",
        "HTTP connections or requests cut off, by listener (push, web, metrics, admin) and reason (over_limit, header_timeout, request_timeout, stop_timeout)",
        HTTP_CUT_OFF.clone(),
    );
    r.register(
        "control_refused",
        "Peers the control socket refused, by reason (other_user, unknown_peer)",
        CONTROL_REFUSED.clone(),
    );
    r.register(
        "gatewayworker_refused",
        "Connections GatewayWorker-compatible listeners closed and packets they refused, by listener (register, gateway) and reason (register: auth_timeout, wrong_secret, no_address, bad_request, unknown_event, line_too_long; gateway: auth_timeout, not_authorised, bad_packet, stalled, bad_raw, bad_session)",
        GATEWAYWORKER_REFUSED.clone(),
    );
    r.register(
        "plugin_calls",
        "Plugin callbacks run, by plugin, event (callback) and outcome (ok, trap, timeout, memory_limit, start_failed)",
        PLUGIN_CALLS.clone(),
    );
    r.register_with_unit(
        "plugin_call_duration",
        "How long plugin callbacks ran, by plugin and event",
        Unit::Seconds,
        PLUGIN_CALL_SECONDS.clone(),
    );
    r.register(
        "plugin_reloads",
        "Looks at plugin files, by plugin and outcome (installed, unchanged, failed, removed)",
        PLUGIN_RELOADS.clone(),
    );
    r.register(
        "data_calls",
        "Calls plugins made to data interfaces, by app, interface (kv, sql, http) and outcome (ok, denied, error, timeout, too_large)",
        DATA_CALLS.clone(),
    );
    r.register_with_unit(
        "data_call_duration",
        "How long plugins' data calls took, by app and interface",
        Unit::Seconds,
        DATA_CALL_SECONDS.clone(),
    );
    r.register(
        "plugin_limits",
        "Plugin limits that stepped in, by plugin and limit (cache_rejected, timer_refused, too_many_resources, log_dropped, restart_delayed, host_call_abandoned)",
        PLUGIN_LIMITS.clone(),
    );
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
