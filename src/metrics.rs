//! Prometheus metrics with an explicit registry (no globals), served on the admin listener.
//!
//! Beside the layers rather than in one: the proxy, the reloader and the scheduler all record
//! here (every metric, with its labels: `docs/metrics.md`). Labels are typed — [`Outcome`],
//! [`ErrorKind`], [`LiveKind`], [`ReloadResult`] — each with one `as_str`, so a label cannot be
//! misspelt at a call site. Imports the vocabulary of [`crate::policy`] and [`crate::egress`]
//! only.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::egress::revoke::LiveKind;
use crate::egress::tls::HandshakeOutcome;
use crate::egress::ErrorKind;
use crate::policy::denials::{DenialBook, Refusal};
use crate::policy::identity::{Caller, ANONYMOUS};
use crate::policy::{DenyReason, Protocol};

/// How one request or tunnel ended: the `decision` and `reason` labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied(DenyReason),
    Failed(ErrorKind),
}

impl Outcome {
    pub fn decision(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied(_) => "denied",
            Outcome::Failed(_) => "error",
        }
    }

    /// `none` when allowed.
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Allowed => "none",
            Outcome::Denied(reason) => reason.code(),
            Outcome::Failed(kind) => kind.as_str(),
        }
    }
}

/// The result of one reload attempt: the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    Unchanged,
    Failure,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Failure => "failure",
        }
    }
}

const PROTOCOLS: usize = Protocol::ALL.len();

type Labels<const N: usize> = [(&'static str, &'static str); N];
type HistogramFamily = Family<Labels<1>, Histogram, fn() -> Histogram>;

/// Every metric egressd exports. Cloning the handles is cheap (they are `Arc`s inside).
pub struct Metrics {
    registry: Registry,
    /// Requests and tunnels by protocol, decision and reason.
    requests: Family<Labels<3>, Counter>,
    /// Tunnels closed after `200` because their first flight failed a check (SNI).
    tunnels_refused: Family<Labels<1>, Counter>,
    /// Failures reaching an upstream after the policy allowed it, by kind.
    upstream_errors: Family<Labels<1>, Counter>,
    pub active_tunnels: Gauge,
    pub active_connections: Gauge,
    /// Client connections turned away because `max_connections` was reached.
    pub rejected_connections: Counter,
    /// Log lines dropped because the log writer fell behind (see `util::logwriter`).
    pub access_log_dropped: Counter,
    /// Requests and tunnels by function (configured names, `anonymous` otherwise) and
    /// decision.
    function_requests: Family<Vec<(&'static str, String)>, Counter>,
    /// Refused credentials, by reason (missing, malformed, invalid, duplicate).
    identity_failures: Family<Labels<1>, Counter>,
    /// Refusals answered late because their client address kept failing.
    pub identity_slowed: Counter,
    /// Refusals recorded for the console's recent denials, by reason.
    denials_recorded: Family<Labels<1>, Counter>,
    /// The recent refusals themselves, grouped by what would fix them.
    pub denials: DenialBook,

    /// Config reloads by result (success, failure, unchanged).
    reloads: Family<Labels<1>, Counter>,
    /// Tunnels and connections cut because a reload no longer allows them.
    revocations: Family<Labels<1>, Counter>,
    pub config_generation: Gauge,
    /// Reloads refused because the activation state could not be written.
    pub state_persist_failures: Counter,
    /// 1 while the shared state backend answers (always 1 for the file backend).
    pub state_backend_up: Gauge,
    /// mTLS handshakes by `[[mtls]]` entry and outcome (full, resumed, failed).
    mtls_handshakes: Family<Vec<(&'static str, String)>, Counter>,
    /// Seconds until each `[[mtls]]` client certificate expires (negative once expired).
    mtls_expiry: Family<Vec<(&'static str, String)>, Gauge>,
    /// Scheduled runs by schedule and outcome (success, failure, skipped, missed).
    schedule_runs: Family<Vec<(&'static str, String)>, Counter>,
    /// How late a scheduled run started after its nominal time.
    schedule_lag: Histogram,
    /// Handles for the per-request series, resolved once: a family lookup takes a shared
    /// read lock, which two busy cores would bounce between them on every request.
    hot: HotSeries,
}

struct HotSeries {
    /// Allowed requests, by [`Protocol::index`].
    allowed: [Counter; PROTOCOLS],
    bytes_up: Counter,
    bytes_down: Counter,
    /// Durations, by [`Protocol::index`].
    duration: [Histogram; PROTOCOLS],
    /// Anonymous requests, by [`decision_index`].
    anonymous: [Counter; 3],
}

/// The decisions of `egressd_function_requests_total`, in index order.
const DECISIONS: [&str; 3] = ["allowed", "denied", "error"];

fn decision_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Allowed => 0,
        Outcome::Denied(_) => 1,
        Outcome::Failed(_) => 2,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_log_dropped(Counter::default())
    }

    /// With the log writer's dropped-lines counter, made before the metrics are.
    pub fn with_log_dropped(access_log_dropped: Counter) -> Self {
        let mut registry = Registry::with_prefix("egressd");
        let requests: Family<Labels<3>, Counter> = Family::default();
        let upstream_errors = Family::default();
        let tunnels_refused: Family<Labels<1>, Counter> = Family::default();
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
        let state_backend_up = Gauge::default();
        state_backend_up.set(1);
        registry.register(
            "state_backend_up",
            "1 while the shared state backend ([state]) answers; 0 while it cannot be reached",
            state_backend_up.clone(),
        );
        let mtls_handshakes: Family<Vec<(&'static str, String)>, Counter> = Family::default();
        let mtls_expiry: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
        registry.register(
            "mtls_handshakes",
            "mTLS handshakes egressd originated, by [[mtls]] entry and outcome",
            mtls_handshakes.clone(),
        );
        let schedule_runs: Family<Vec<(&'static str, String)>, Counter> = Family::default();
        let schedule_lag = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "schedule_runs",
            "Scheduled runs by schedule and outcome",
            schedule_runs.clone(),
        );
        registry.register(
            "schedule_firing_lag_seconds",
            "Time from a run's nominal time to its start",
            schedule_lag.clone(),
        );
        registry.register(
            "mtls_client_cert_expiry_seconds",
            "Seconds until each [[mtls]] client certificate expires",
            mtls_expiry.clone(),
        );
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
            "tunnels_refused",
            "CONNECT tunnels closed after 200 because their first bytes failed a check, by reason (sni-not-allowlisted, sni-mismatch, sni-unreadable)",
            tunnels_refused.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Log lines (access lines and others) dropped because the log writer fell behind its buffer",
            access_log_dropped.clone(),
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
        let allowed = Protocol::ALL.map(|p| series(&requests, p));
        let bytes_up = bytes.get_or_create(&[("direction", "up")]).clone();
        let bytes_down = bytes.get_or_create(&[("direction", "down")]).clone();
        let durations = Protocol::ALL.map(|p| {
            let guard = duration.get_or_create(&[("protocol", p.as_str())]);
            guard.clone()
        });
        let function_requests: Family<Vec<(&'static str, String)>, Counter> = Family::default();
        registry.register(
            "function_requests",
            "Requests and tunnels by function (a configured name, or anonymous without credentials) and decision",
            function_requests.clone(),
        );
        let identity_failures: Family<Labels<1>, Counter> = Family::default();
        registry.register(
            "identity_failures",
            "Requests refused for their proxy credentials, by reason (missing, malformed, invalid, duplicate)",
            identity_failures.clone(),
        );
        let identity_slowed = Counter::default();
        registry.register(
            "identity_slowed",
            "Credential refusals answered after a delay because their client address kept failing",
            identity_slowed.clone(),
        );
        let denials_recorded: Family<Labels<1>, Counter> = Family::default();
        registry.register(
            "denials_recorded",
            "Refusals recorded for recent denials (GET /v1/denials), by reason",
            denials_recorded.clone(),
        );
        let anonymous = DECISIONS.map(|decision| {
            let guard = function_requests.get_or_create(&vec![
                ("function", ANONYMOUS.to_string()),
                ("decision", decision.to_string()),
            ]);
            guard.clone()
        });
        let hot = HotSeries {
            allowed,
            bytes_up,
            bytes_down,
            duration: durations,
            anonymous,
        };
        Metrics {
            hot,
            registry,
            requests,
            tunnels_refused,
            upstream_errors,
            active_tunnels,
            active_connections,
            rejected_connections,
            access_log_dropped,
            function_requests,
            identity_failures,
            identity_slowed,
            denials_recorded,
            denials: DenialBook::default(),

            reloads,
            revocations,
            config_generation,
            state_backend_up,
            state_persist_failures,
            mtls_handshakes,
            mtls_expiry,
            schedule_runs,
            schedule_lag,
        }
    }

    pub fn schedule_run(&self, schedule: &str, outcome: &str) {
        self.schedule_runs
            .get_or_create(&vec![
                ("schedule", schedule.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    pub fn schedule_lag(&self, seconds: f64) {
        self.schedule_lag.observe(seconds);
    }

    pub fn mtls_handshake(&self, entry: &str, outcome: HandshakeOutcome) {
        self.mtls_handshakes
            .get_or_create(&vec![
                ("entry", entry.to_string()),
                ("outcome", outcome.as_str().to_string()),
            ])
            .inc();
    }

    pub fn set_mtls_expiry(&self, entry: &str, seconds: i64) {
        self.mtls_expiry
            .get_or_create(&vec![("entry", entry.to_string())])
            .set(seconds);
    }

    /// Counts a request or tunnel by who sent it.
    pub fn function_request(&self, caller: &Caller, outcome: Outcome) {
        let decision = decision_index(outcome);
        match caller {
            Caller::Anonymous => {
                self.hot.anonymous[decision].inc();
            }
            Caller::Function(name) => {
                self.function_requests
                    .get_or_create(&vec![
                        ("function", name.to_string()),
                        ("decision", DECISIONS[decision].to_string()),
                    ])
                    .inc();
            }
        };
    }

    /// Counts a refusal of credentials.
    pub fn identity_failure(&self, reason: &'static str) {
        self.identity_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Records a refusal among the recent denials, and counts it.
    pub fn denial(&self, refusal: &Refusal<'_>, now_ms: u64) {
        self.denials.record(refusal, now_ms);
        self.denials_recorded
            .get_or_create(&[("reason", refusal.seen.code())])
            .inc();
    }

    /// Counts a request or tunnel.
    pub fn request(&self, protocol: Protocol, outcome: Outcome) {
        if outcome == Outcome::Allowed {
            self.hot.allowed[protocol.index()].inc();
            return;
        }
        self.requests
            .get_or_create(&[
                ("protocol", protocol.as_str()),
                ("decision", outcome.decision()),
                ("reason", outcome.reason()),
            ])
            .inc();
    }

    /// Counts a tunnel closed before its relay because its first flight failed a check.
    pub fn tunnel_refused(&self, reason: DenyReason) {
        self.tunnels_refused
            .get_or_create(&[("reason", reason.code())])
            .inc();
    }

    pub fn upstream_error(&self, kind: ErrorKind) {
        self.upstream_errors
            .get_or_create(&[("kind", kind.as_str())])
            .inc();
    }

    pub fn relayed(&self, up: u64, down: u64) {
        self.hot.bytes_up.inc_by(up);
        self.hot.bytes_down.inc_by(down);
    }

    pub fn observe_duration(&self, protocol: Protocol, seconds: f64) {
        self.hot.duration[protocol.index()].observe(seconds);
    }

    pub fn reload(&self, result: ReloadResult) {
        self.reloads
            .get_or_create(&[("result", result.as_str())])
            .inc();
    }

    pub fn revoked(&self, kind: LiveKind) {
        self.revocations
            .get_or_create(&[("kind", kind.as_str())])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
