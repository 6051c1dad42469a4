//! `/metrics` (`[metrics] listen`): the process's counters ([`crate::metrics`]) and the states
//! of the roles it runs, read from them at each scrape rather than mirrored into gauges that
//! could drift.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::running::Running;
use crate::config::HttpConfig;
use crate::gateway::GatewaySnapshot;
use crate::gateway::counters::Counters;
use crate::wire::queue::Towards;
use crate::{http_listener, metrics};

/// Every metric of the process, with the states of `running` read at each scrape.
pub fn registry(running: Arc<Running>) -> Registry {
    let mut r = Registry::with_prefix("wasmgate");
    metrics::register(&mut r);
    r.register_collector(Box::new(States(running)));
    r
}

/// The states of the running roles, read at scrape time.
struct States(Arc<Running>);

impl std::fmt::Debug for States {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("States")
    }
}

impl Collector for States {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let running = &self.0;
        let build = [("version", env!("CARGO_PKG_VERSION"))];
        let mut m = encoder.encode_descriptor(
            "build_info",
            "The running wasmgate version.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1).encode(m.encode_family(&build)?)?;
        let started = metrics::unix_seconds(running.started);
        let m = encoder.encode_descriptor(
            "start_time",
            "When the process started, in seconds since the Unix epoch.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        ConstGauge::new(started).encode(m)?;

        let gateways: Vec<GatewayRow> = running
            .gateways
            .iter()
            .map(|g| GatewayRow {
                name: &g.name,
                now: g.gateway.snapshot(),
                limits: &g.gateway.counters,
            })
            .collect();
        for (name, help, value) in GATEWAY_GAUGES {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for g in &gateways {
                ConstGauge::new(value(g) as i64)
                    .encode(m.encode_family(&[("gateway", g.name)])?)?;
            }
        }
        for (name, help, counter) in GATEWAY_LIMITS {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for g in &gateways {
                let value = counter(g.limits).load(Ordering::Relaxed);
                ConstCounter::new(value).encode(m.encode_family(&[("gateway", g.name)])?)?;
            }
        }

        let mut m = encoder.encode_descriptor(
            "link_queued",
            "Bytes queued on this process's internal links, by the way they go (towards: worker, gateway)",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for towards in [Towards::Worker, Towards::Gateway] {
            ConstGauge::new(towards.queued_bytes() as i64)
                .encode(m.encode_family(&[("towards", towards.label())])?)?;
        }

        // Each role that registers: its registers unreachable now, and how long it has
        // reached none (0 while one is linked), the case its log reports as an error.
        let reaches: Vec<(&str, &str, crate::register::ReachReport)> = running
            .gateways
            .iter()
            .map(|g| ("gateway", g.name.as_str(), g.gateway.registers.report()))
            .chain(
                running
                    .worker
                    .iter()
                    .map(|w| ("worker", w.name.as_str(), w.registers.report())),
            )
            .collect();
        let mut m = encoder.encode_descriptor(
            "registers_unreachable",
            "Registers each role (role, name) cannot reach now.",
            None,
            MetricType::Gauge,
        )?;
        for (role, name, report) in &reaches {
            ConstGauge::new(report.unreachable.len() as i64)
                .encode(m.encode_family(&[("role", *role), ("name", *name)])?)?;
        }
        let mut m = encoder.encode_descriptor(
            "register_outage",
            "How long each role (role, name) has reached none of its registers; 0 while one is linked.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (role, name, report) in &reaches {
            let secs = report.none_reachable_for.unwrap_or_default().as_secs();
            ConstGauge::new(secs as i64)
                .encode(m.encode_family(&[("role", *role), ("name", *name)])?)?;
        }

        let mut m = encoder.encode_descriptor(
            "plugin_loaded_timestamp",
            "When the serving version of each plugin was installed, in seconds since the Unix epoch.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for p in metrics::plugins() {
            let labels = [
                ("worker", p.worker.as_str()),
                ("plugin", p.plugin.as_str()),
                ("version", p.version.as_str()),
            ];
            ConstGauge::new(metrics::unix_seconds(p.loaded_at))
                .encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// One gateway's states, read once per scrape.
struct GatewayRow<'a> {
    name: &'a str,
    now: GatewaySnapshot,
    limits: &'a Counters,
}

type GatewayGauge = (&'static str, &'static str, fn(&GatewayRow) -> usize);

const GATEWAY_GAUGES: [GatewayGauge; 5] = [
    ("connections", "Clients connected, by gateway.", |g| {
        g.now.state.clients
    }),
    (
        "groups",
        "Groups with at least one client, by gateway.",
        |g| g.now.state.groups,
    ),
    (
        "uids",
        "Uids bound to at least one client, by gateway.",
        |g| g.now.state.uids,
    ),
    (
        "gateway_worker_links",
        "Worker hosts linked, by gateway.",
        |g| g.now.worker_links,
    ),
    (
        "gateway_serving_links",
        "Worker hosts linked that serve the gateway's app, by gateway.",
        |g| g.now.serving_links,
    ),
];

type GatewayLimit = (&'static str, &'static str, fn(&Counters) -> &AtomicU64);

const GATEWAY_LIMITS: [GatewayLimit; 13] = [
    (
        "connections_refused",
        "Connections closed on accept at max_connections, by gateway.",
        |c| &c.refused,
    ),
    (
        "handshakes_failed",
        "TLS or WebSocket handshakes that failed or timed out, by gateway.",
        |c| &c.failed_handshakes,
    ),
    (
        "slow_clients_dropped",
        "Clients disconnected for falling send_buffer behind, by gateway.",
        |c| &c.slow_readers,
    ),
    (
        "oversized_messages",
        "Clients closed for a message over max_message_size, by gateway.",
        |c| &c.oversized,
    ),
    (
        "heartbeat_timeouts",
        "Clients dropped by the heartbeat, by gateway.",
        |c| &c.heartbeat_timeouts,
    ),
    (
        "connections_refused_per_ip",
        "Connections closed on accept at max_connections_per_ip, by gateway.",
        |c| &c.refused_per_ip,
    ),
    (
        "idle_timeouts",
        "Clients closed for sending nothing within idle_timeout, by gateway.",
        |c| &c.idle_timeouts,
    ),
    (
        "origins_refused",
        "WebSocket handshakes refused for an Origin not in allowed_origins, by gateway.",
        |c| &c.origins_refused,
    ),
    (
        "group_joins_refused",
        "Group joins refused at max_groups_per_client, by gateway.",
        |c| &c.groups_refused,
    ),
    (
        "session_writes_refused",
        "Session writes refused for taking a session past 64 KiB, by gateway.",
        |c| &c.sessions_refused,
    ),
    (
        "names_refused",
        "Group joins and uid bindings refused for a name over 256 bytes, by gateway.",
        |c| &c.names_refused,
    ),
    (
        "nats_commands_received",
        "Commands received over NATS ([cluster] nats), by gateway: zero on a gateway that holds no member of what was sent.",
        |c| &c.nats_commands,
    ),
    (
        "link_commands_received",
        "Commands received over worker-host and push-client links, by gateway: in register-mesh mode every gateway gets every group, uid and all-clients send.",
        |c| &c.link_commands,
    ),
];

/// Serves `GET /metrics` on `listener` until `shutdown`, within `limits`.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    limits: HttpConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(Arc::new(registry));
    http_listener::serve("metrics", listener, app, &limits, shutdown).await;
    Ok(())
}

async fn scrape(State(registry): State<Arc<Registry>>) -> Response {
    let mut body = String::new();
    match prometheus_text::encode(&mut body, &registry) {
        Ok(()) => (
            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        // Only a collector's `fmt::Error` gets here, and it carries no message.
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
