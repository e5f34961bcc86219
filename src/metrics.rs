//! Prometheus metrics with an explicit registry (no globals), served on the admin listener.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::policy::Protocol;

type Labels<const N: usize> = [(&'static str, &'static str); N];
type HistogramFamily = Family<Labels<1>, Histogram, fn() -> Histogram>;

/// Every metric egressd exports. Cloning the handles is cheap (they are `Arc`s inside).
pub struct Metrics {
    registry: Registry,
    /// Requests and tunnels by protocol, decision and reason.
    requests: Family<Labels<3>, Counter>,
    /// Failures reaching an upstream after the policy allowed it, by kind.
    upstream_errors: Family<Labels<1>, Counter>,
    pub active_tunnels: Gauge,
    pub active_connections: Gauge,
    /// Client connections turned away because `max_connections` was reached.
    pub rejected_connections: Counter,

    /// Config reloads by result (success, failure, unchanged).
    reloads: Family<Labels<1>, Counter>,
    /// Tunnels and connections cut because a reload no longer allows them.
    revocations: Family<Labels<1>, Counter>,
    pub config_generation: Gauge,
    /// Reloads refused because the activation state could not be written.
    pub state_persist_failures: Counter,
    /// Handles for the per-request series, resolved once: a family lookup takes a shared
    /// read lock, which two busy cores would bounce between them on every request.
    hot: HotSeries,
}

struct HotSeries {
    /// Allowed requests, by protocol (connect, http).
    allowed: [Counter; 2],
    bytes_up: Counter,
    bytes_down: Counter,
    /// Durations, by protocol (connect, http).
    duration: [Histogram; 2],
}

fn protocol_index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Connect => 0,
        Protocol::Http => 1,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("egressd");
        let requests: Family<Labels<3>, Counter> = Family::default();
        let upstream_errors = Family::default();
        let active_tunnels = Gauge::default();
        let active_connections = Gauge::default();
        let rejected_connections = Counter::default();
        let bytes: Family<Labels<1>, Counter> = Family::default();
        let duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 20)));
        registry.register(
            "requests",
            "Requests and tunnels by protocol, decision and reason",
            requests.clone(),
        );
        let reloads = Family::default();
        let revocations = Family::default();
        let config_generation = Gauge::default();
        let state_persist_failures = Counter::default();
        registry.register(
            "state_persist_failures",
            "Reloads refused because the activation state could not be written to state_dir",
            state_persist_failures.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reload attempts by result",
            reloads.clone(),
        );
        registry.register(
            "revoked",
            "Tunnels and connections cut by a reload, by kind",
            revocations.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the config in force (1 at start)",
            config_generation.clone(),
        );
        registry.register(
            "upstream_errors",
            "Errors reaching an allowed upstream, by kind",
            upstream_errors.clone(),
        );
        registry.register(
            "active_tunnels",
            "CONNECT tunnels open now",
            active_tunnels.clone(),
        );
        registry.register(
            "active_connections",
            "Client connections open now",
            active_connections.clone(),
        );
        registry.register(
            "rejected_connections",
            "Client connections refused over max_connections",
            rejected_connections.clone(),
        );
        registry.register(
            "relayed_bytes",
            "Bytes relayed, by direction",
            bytes.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to end of response or tunnel",
            duration.clone(),
        );
        // One statement per series: a family's read guard lives to the end of its statement,
        // and a second get_or_create on the same family in that statement would deadlock.
        let series = |family: &Family<Labels<3>, Counter>, p: Protocol| -> Counter {
            let guard = family.get_or_create(&[
                ("protocol", p.as_str()),
                ("decision", "allowed"),
                ("reason", "none"),
            ]);
            guard.clone()
        };
        let allowed = [
            series(&requests, Protocol::Connect),
            series(&requests, Protocol::Http),
        ];
        let bytes_up = bytes.get_or_create(&[("direction", "up")]).clone();
        let bytes_down = bytes.get_or_create(&[("direction", "down")]).clone();
        let connect_duration = duration.get_or_create(&[("protocol", "connect")]).clone();
        let http_duration = duration.get_or_create(&[("protocol", "http")]).clone();
        let hot = HotSeries {
            allowed,
            bytes_up,
            bytes_down,
            duration: [connect_duration, http_duration],
        };
        Metrics {
            hot,
            registry,
            requests,
            upstream_errors,
            active_tunnels,
            active_connections,
            rejected_connections,

            reloads,
            revocations,
            config_generation,
            state_persist_failures,
        }
    }

    /// Counts a request or tunnel; an empty `reason` is recorded as `none`.
    pub fn request(&self, protocol: Protocol, decision: &'static str, reason: &'static str) {
        if decision == "allowed" && reason.is_empty() {
            self.hot.allowed[protocol_index(protocol)].inc();
            return;
        }
        let reason = if reason.is_empty() { "none" } else { reason };
        self.requests
            .get_or_create(&[
                ("protocol", protocol.as_str()),
                ("decision", decision),
                ("reason", reason),
            ])
            .inc();
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn relayed(&self, up: u64, down: u64) {
        self.hot.bytes_up.inc_by(up);
        self.hot.bytes_down.inc_by(down);
    }

    pub fn observe_duration(&self, protocol: Protocol, seconds: f64) {
        self.hot.duration[protocol_index(protocol)].observe(seconds);
    }

    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&[("result", result)]).inc();
    }

    pub fn revoked(&self, kind: &'static str) {
        self.revocations.get_or_create(&[("kind", kind)]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
