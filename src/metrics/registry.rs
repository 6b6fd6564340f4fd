use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::cap::LabelCap;
use crate::observe::Observe;

/// Histogram buckets, shared by every series of a family.
#[derive(Clone, Debug)]
pub(crate) struct Buckets(Arc<[f64]>);

impl prometheus_client::metrics::family::MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// Latency buckets in seconds: 250 µs to 30 s, for a gateway that adds well
/// under a millisecond in front of upstreams that may take seconds.
pub const DEFAULT_LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// Body-size buckets in bytes: 64 B to 16 MiB, by powers of four.
pub const DEFAULT_SIZE_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// Settings of [`GatewayMetrics`].
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    prefix: String,
    latency_buckets: Vec<f64>,
    size_buckets: Vec<f64>,
    max_routes: usize,
    max_grpc_methods: usize,
    max_consumers: usize,
}

impl Default for MetricsConfig {
    /// Prefix `gateway`, the default buckets, at most 500 routes, 500 gRPC
    /// methods and 100 consumers as label values.
    fn default() -> Self {
        Self {
            prefix: "gateway".into(),
            latency_buckets: DEFAULT_LATENCY_BUCKETS.to_vec(),
            size_buckets: DEFAULT_SIZE_BUCKETS.to_vec(),
            max_routes: 500,
            max_grpc_methods: 500,
            max_consumers: 100,
        }
    }
}

impl MetricsConfig {
    /// The prefix of every metric name (default `gateway`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Buckets of the duration histograms, in seconds.
    pub fn latency_buckets(mut self, buckets: impl IntoIterator<Item = f64>) -> Self {
        self.latency_buckets = buckets.into_iter().collect();
        self
    }

    /// Buckets of the body-size histograms, in bytes.
    pub fn size_buckets(mut self, buckets: impl IntoIterator<Item = f64>) -> Self {
        self.size_buckets = buckets.into_iter().collect();
        self
    }

    /// Most distinct route templates labelled; more become `other`.
    pub fn max_routes(mut self, max: usize) -> Self {
        self.max_routes = max;
        self
    }

    /// Most distinct gRPC service/method pairs labelled; more become `other`.
    pub fn max_grpc_methods(mut self, max: usize) -> Self {
        self.max_grpc_methods = max;
        self
    }

    /// Most distinct consumers in per-consumer series (Kong's
    /// `per_consumer`); more become `other`. Zero disables the series.
    pub fn max_consumers(mut self, max: usize) -> Self {
        self.max_consumers = max;
        self
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_format_names_counters_with_total() {
        let om = "# HELP a_b Help.\n# TYPE a_b counter\na_b_total{x=\"1\"} 1\n# HELP g G.\n# TYPE g gauge\n# UNIT g seconds\ng 2.0\n# EOF\n";
        let text = super::openmetrics_to_text(om);
        assert_eq!(
            text,
            "# HELP a_b_total Help.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 1\n# HELP g G.\n# TYPE g gauge\ng 2.0\n"
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteMethod {
    pub(crate) route: Arc<str>,
    pub(crate) method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteMethodStatus {
    pub(crate) route: Arc<str>,
    pub(crate) method: &'static str,
    pub(crate) status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GrpcLabels {
    pub(crate) grpc_service: Arc<str>,
    pub(crate) grpc_method: Arc<str>,
    pub(crate) grpc_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GrpcMethodLabels {
    pub(crate) grpc_service: Arc<str>,
    pub(crate) grpc_method: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ConsumerLabels {
    pub(crate) consumer: Arc<str>,
    pub(crate) status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOutcome {
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamState {
    upstream: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamTransition {
    upstream: String,
    from: &'static str,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerResult {
    issuer: String,
    result: &'static str,
}

/// Every metric family of the gateway, in one prometheus-client
/// [`Registry`].
pub(crate) struct Families {
    pub(crate) requests: Family<RouteMethodStatus, Counter>,
    pub(crate) request_errors: Family<RouteMethod, Counter>,
    pub(crate) duration: Family<RouteMethod, Histogram, Buckets>,
    pub(crate) in_flight: Family<RouteMethod, Gauge>,
    pub(crate) request_size: Family<RouteMethod, Histogram, Buckets>,
    pub(crate) response_size: Family<RouteMethod, Histogram, Buckets>,
    pub(crate) grpc_requests: Family<GrpcLabels, Counter>,
    pub(crate) grpc_duration: Family<GrpcMethodLabels, Histogram, Buckets>,
    pub(crate) consumer_requests: Family<ConsumerLabels, Counter>,
    auth_failures: Family<ReasonLabels, Counter>,
    rbac_denials: Family<RuleLabels, Counter>,
    ratelimit: Family<RouteOutcome, Counter>,
    circuit_state: Family<UpstreamState, Gauge>,
    circuit_transitions: Family<UpstreamTransition, Counter>,
    endpoints: Family<ServiceLabels, Gauge>,
    staleness: Family<ServiceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    upstream_duration: Family<ServiceLabels, Histogram, Buckets>,
    jwks_refreshes: Family<IssuerResult, Counter>,
}

/// The gateway's metrics: a prometheus-client registry holding every family
/// the layers report to.
///
/// Cheap to clone. Pass it to [`MetricsLayer`](super::MetricsLayer), and as
/// an [`Observer`](crate::observe::Observer) (`.observer()`) to the other
/// layers; serve it with [`MetricsHandler`](super::MetricsHandler).
///
/// Names (with the default prefix): `gateway_requests_total`,
/// `gateway_request_errors_total`, `gateway_request_duration_seconds`,
/// `gateway_requests_in_flight`, `gateway_request_size_bytes`,
/// `gateway_response_size_bytes`, `gateway_grpc_requests_total`,
/// `gateway_grpc_request_duration_seconds`,
/// `gateway_consumer_requests_total`, `gateway_auth_failures_total`,
/// `gateway_rbac_denials_total`, `gateway_ratelimit_decisions_total`,
/// `gateway_circuit_state`, `gateway_circuit_transitions_total`,
/// `gateway_discovered_endpoints`, `gateway_discovery_staleness_seconds`,
/// `gateway_upstream_request_duration_seconds`,
/// `gateway_jwks_refreshes_total`.
#[derive(Clone)]
pub struct GatewayMetrics {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) registry: Mutex<Registry>,
    pub(crate) families: Families,
    pub(crate) routes: LabelCap,
    pub(crate) grpc_methods: LabelCap,
    pub(crate) consumers: Option<LabelCap>,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new(MetricsConfig::default())
    }
}

impl GatewayMetrics {
    /// Creates and registers every family.
    pub fn new(config: MetricsConfig) -> Self {
        let mut registry = Registry::with_prefix(config.prefix.clone());
        let latency = Buckets(config.latency_buckets.clone().into());
        let size = Buckets(config.size_buckets.clone().into());
        let families = Families {
            requests: Family::default(),
            request_errors: Family::default(),
            duration: Family::new_with_constructor(latency.clone()),
            in_flight: Family::default(),
            request_size: Family::new_with_constructor(size.clone()),
            response_size: Family::new_with_constructor(size),
            grpc_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(latency.clone()),
            consumer_requests: Family::default(),
            auth_failures: Family::default(),
            rbac_denials: Family::default(),
            ratelimit: Family::default(),
            circuit_state: Family::default(),
            circuit_transitions: Family::default(),
            endpoints: Family::default(),
            staleness: Family::default(),
            upstream_duration: Family::new_with_constructor(latency),
            jwks_refreshes: Family::default(),
        };
        let f = &families;
        registry.register(
            "requests",
            "HTTP requests by route template, method and status",
            f.requests.clone(),
        );
        registry.register(
            "request_errors",
            "Requests that ended in an error instead of a response",
            f.request_errors.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time to the response head",
            Unit::Seconds,
            f.duration.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests whose response has not completed",
            f.in_flight.clone(),
        );
        registry.register_with_unit(
            "request_size",
            "Request body size (Content-Length or exact size hint)",
            Unit::Bytes,
            f.request_size.clone(),
        );
        registry.register_with_unit(
            "response_size",
            "Response body bytes sent",
            Unit::Bytes,
            f.response_size.clone(),
        );
        registry.register(
            "grpc_requests",
            "gRPC calls by service, method and grpc-status",
            f.grpc_requests.clone(),
        );
        registry.register_with_unit(
            "grpc_request_duration",
            "gRPC call duration to the end of the response",
            Unit::Seconds,
            f.grpc_duration.clone(),
        );
        registry.register(
            "consumer_requests",
            "Requests per authenticated consumer (capped)",
            f.consumer_requests.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused by authentication, by reason",
            f.auth_failures.clone(),
        );
        registry.register(
            "rbac_denials",
            "Requests denied by RBAC (mode=shadow: would have been)",
            f.rbac_denials.clone(),
        );
        registry.register(
            "ratelimit_decisions",
            "Rate-limit decisions by route and outcome",
            f.ratelimit.clone(),
        );
        registry.register(
            "circuit_state",
            "1 for the current state of each circuit",
            f.circuit_state.clone(),
        );
        registry.register(
            "circuit_transitions",
            "Circuit state changes",
            f.circuit_transitions.clone(),
        );
        registry.register(
            "discovered_endpoints",
            "Healthy endpoints known per service",
            f.endpoints.clone(),
        );
        registry.register_with_unit(
            "discovery_staleness",
            "Age of the discovery data per service",
            Unit::Seconds,
            f.staleness.clone(),
        );
        registry.register_with_unit(
            "upstream_request_duration",
            "Upstream call duration per service",
            Unit::Seconds,
            f.upstream_duration.clone(),
        );
        registry.register(
            "jwks_refreshes",
            "JWKS fetches by issuer and result",
            f.jwks_refreshes.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                families,
                routes: LabelCap::new(config.max_routes),
                grpc_methods: LabelCap::new(config.max_grpc_methods),
                consumers: (config.max_consumers > 0).then(|| LabelCap::new(config.max_consumers)),
            }),
        }
    }

    /// Runs `f` on the registry, to register metrics of your own.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f(&mut registry)
    }

    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }

    /// The registry in the Prometheus text exposition format 0.0.4, for
    /// scrapers and tools that do not speak OpenMetrics (`promtool check
    /// metrics` among them). Counters are named with their `_total` suffix,
    /// `# UNIT` and `# EOF` lines are left out; samples are identical.
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_text(&self.encode())
    }

    /// This registry as an [`Observer`](crate::observe::Observer) for the
    /// other layers.
    pub fn observer(&self) -> crate::observe::Observer {
        crate::observe::Observer::new(self.clone())
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4: the two differ
/// in counter family names (`x` vs `x_total`), `# UNIT` and `# EOF`.
pub(crate) fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|rest| ("# HELP ", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(kind);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

impl Observe for GatewayMetrics {
    fn auth_rejected(&self, reason: &'static str) {
        self.inner
            .families
            .auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    fn jwks_refreshed(&self, issuer: &str, ok: bool) {
        let labels = IssuerResult {
            issuer: issuer.to_owned(),
            result: if ok { "success" } else { "failure" },
        };
        self.inner
            .families
            .jwks_refreshes
            .get_or_create(&labels)
            .inc();
    }

    fn rbac_denied(&self, rule: &str, shadow: bool) {
        let labels = RuleLabels {
            rule: rule.to_owned(),
            mode: if shadow { "shadow" } else { "enforce" },
        };
        self.inner
            .families
            .rbac_denials
            .get_or_create(&labels)
            .inc();
    }

    fn circuit_state(&self, name: &str, current: &'static str) {
        for state in ["closed", "open", "half_open"] {
            let labels = UpstreamState {
                upstream: name.to_owned(),
                state,
            };
            self.inner
                .families
                .circuit_state
                .get_or_create(&labels)
                .set(i64::from(state == current));
        }
    }

    fn circuit_transition(&self, name: &str, from: &'static str, to: &'static str) {
        let labels = UpstreamTransition {
            upstream: name.to_owned(),
            from,
            to,
        };
        self.inner
            .families
            .circuit_transitions
            .get_or_create(&labels)
            .inc();
    }

    fn ratelimit_decision(&self, route: &str, outcome: &'static str) {
        let labels = RouteOutcome {
            route: route.to_owned(),
            outcome,
        };
        self.inner.families.ratelimit.get_or_create(&labels).inc();
    }

    fn endpoints(&self, service: &str, count: usize) {
        let labels = ServiceLabels {
            service: service.to_owned(),
        };
        self.inner
            .families
            .endpoints
            .get_or_create(&labels)
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    fn discovery_staleness(&self, service: &str, age: Duration) {
        let labels = ServiceLabels {
            service: service.to_owned(),
        };
        self.inner
            .families
            .staleness
            .get_or_create(&labels)
            .set(age.as_secs_f64());
    }

    fn upstream_latency(&self, service: &str, elapsed: Duration) {
        let labels = ServiceLabels {
            service: service.to_owned(),
        };
        self.inner
            .families
            .upstream_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}
