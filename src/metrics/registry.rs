use std::{
    any::{Any, TypeId},
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex, OnceLock},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::{Registry, Unit},
};

use super::cap::LabelCap;

/// Histogram buckets, shared by every series of a family.
#[derive(Clone, Debug)]
pub(crate) struct Buckets(Arc<[f64]>);

impl prometheus_client::metrics::family::MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// The request-duration histogram: with feature `otel`, each bucket keeps
/// the trace ID of the last sampled request it counted, as an OpenMetrics
/// exemplar, so a dashboard can jump from a latency spike to a trace.
#[cfg(feature = "otel")]
pub(crate) type DurationHistogram =
    prometheus_client::metrics::exemplar::HistogramWithExemplars<super::exemplar::TraceExemplar>;
/// The request-duration histogram (exemplars need feature `otel`).
#[cfg(not(feature = "otel"))]
pub(crate) type DurationHistogram = Histogram;

#[cfg(feature = "otel")]
impl prometheus_client::metrics::family::MetricConstructor<DurationHistogram> for Buckets {
    fn new_metric(&self) -> DurationHistogram {
        DurationHistogram::new(self.0.iter().copied())
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

    #[test]
    fn text_format_drops_exemplars() {
        let om = "h_bucket{r=\"/a # b\\\"#\",le=\"0.1\"} 3 # {trace_id=\"0af7\"} 0.05 1700000000.5\nh_count 3\n# EOF\n";
        assert_eq!(
            super::openmetrics_to_text(om),
            "h_bucket{r=\"/a # b\\\"#\",le=\"0.1\"} 3\nh_count 3\n"
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

/// The request families of [`MetricsLayer`](super::MetricsLayer).
pub(crate) struct Families {
    pub(crate) requests: Family<RouteMethodStatus, Counter>,
    pub(crate) request_errors: Family<RouteMethod, Counter>,
    pub(crate) duration: Family<RouteMethod, DurationHistogram, Buckets>,
    pub(crate) in_flight: Family<RouteMethod, Gauge>,
    pub(crate) request_size: Family<RouteMethod, Histogram, Buckets>,
    pub(crate) response_size: Family<RouteMethod, Histogram, Buckets>,
    pub(crate) grpc_requests: Family<GrpcLabels, Counter>,
    pub(crate) grpc_duration: Family<GrpcMethodLabels, Histogram, Buckets>,
    pub(crate) consumer_requests: Family<ConsumerLabels, Counter>,
}

/// The gateway's metrics: one prometheus-client [`Registry`], its name
/// prefix and its histogram buckets.
///
/// Cheap to clone. Pass it to [`MetricsLayer`](super::MetricsLayer) for the
/// request metrics, create the other layers' handles from it (see the
/// [module documentation](super)), and serve it with
/// [`MetricsHandler`](super::MetricsHandler).
///
/// Request families (with the default prefix): `gateway_requests_total`,
/// `gateway_request_errors_total`, `gateway_request_duration_seconds`,
/// `gateway_requests_in_flight`, `gateway_request_size_bytes`,
/// `gateway_response_size_bytes`, `gateway_grpc_requests_total`,
/// `gateway_grpc_request_duration_seconds`,
/// `gateway_consumer_requests_total`. Each layer handle registers its own
/// families the first time one of its kind is created.
#[derive(Clone)]
pub struct GatewayMetrics {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    state: Mutex<State>,
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    latency: Buckets,
    pub(crate) families: Families,
    pub(crate) routes: LabelCap,
    /// The request series per route label and method, resolved once.
    pub(crate) series: super::series::SeriesCache,
    pub(crate) grpc_methods: LabelCap,
    pub(crate) consumers: Option<LabelCap>,
}

/// The registry and the families the layers registered in it, under one
/// lock so that a layer's families are registered exactly once.
struct State {
    registry: Registry,
    /// One value per handle type (`RbacMetrics`, `UpstreamMetrics`, ...):
    /// the families it registered.
    layers: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
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
    /// Creates the registry and registers the request families.
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
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    registry,
                    layers: HashMap::new(),
                }),
                latency,
                families,
                routes: LabelCap::new(config.max_routes),
                series: super::series::SeriesCache::default(),
                grpc_methods: LabelCap::new(config.max_grpc_methods),
                consumers: (config.max_consumers > 0).then(|| LabelCap::new(config.max_consumers)),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the registry, to register metrics of your own.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.state().registry)
    }

    /// The families of the layer handle `F`, registered by `register` the
    /// first time and shared by every later call, so that two handles of one
    /// kind (two upstreams, two rate-limit layers) never register a family
    /// twice. `register` must not call back into this registry.
    pub(crate) fn layer_families<F>(&self, register: impl FnOnce(&mut Registry) -> F) -> F
    where
        F: Clone + Send + Sync + 'static,
    {
        let mut state = self.state();
        if let Some(families) = state
            .layers
            .get(&TypeId::of::<F>())
            .and_then(|f| f.downcast_ref::<F>())
        {
            return families.clone();
        }
        let families = register(&mut state.registry);
        state
            .layers
            .insert(TypeId::of::<F>(), Box::new(families.clone()));
        families
    }

    /// The latency histogram buckets of the configuration, for layers'
    /// duration histograms.
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    pub(crate) fn latency_buckets(&self) -> Buckets {
        self.inner.latency.clone()
    }

    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let state = self.state();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &state.registry);
        out
    }

    /// The registry in the Prometheus text exposition format 0.0.4, for
    /// scrapers and tools that do not speak OpenMetrics (`promtool check
    /// metrics` among them). Counters are named with their `_total` suffix,
    /// `# UNIT` and `# EOF` lines and exemplars (which the format lacks) are
    /// left out; sample values are identical.
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_text(&self.encode())
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4: the two differ
/// in counter family names (`x` vs `x_total`), `# UNIT`, `# EOF` and
/// exemplars.
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
            None => out.push_str(without_exemplar(line)),
        }
        out.push('\n');
    }
    out
}

/// A sample line without its exemplar: OpenMetrics appends it after the
/// value as ` # {labels} value [timestamp]`; the first `#` outside the
/// sample's quoted label values starts it.
fn without_exemplar(line: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '#' if !quoted => return line[..i].trim_end(),
            _ => {}
        }
    }
    line
}

/// One series of a family, looked up on its first event and held from then
/// on: later events are one atomic operation, with no label hashing or
/// lock. Created empty, so that no series appears before its first event.
#[cfg_attr(
    not(any(feature = "jwks", feature = "rbac", feature = "discovery")),
    allow(dead_code)
)]
pub(crate) struct Series<L, M, C = fn() -> M> {
    family: Family<L, M, C>,
    labels: L,
    series: OnceLock<M>,
}

#[cfg_attr(
    not(any(feature = "jwks", feature = "rbac", feature = "discovery")),
    allow(dead_code)
)]
impl<L, M, C> Series<L, M, C>
where
    L: Clone + Hash + Eq,
    M: Clone,
    C: MetricConstructor<M> + Clone,
{
    /// The series of `family` labelled `labels`.
    pub(crate) fn new(family: &Family<L, M, C>, labels: L) -> Self {
        Self {
            family: family.clone(),
            labels,
            series: OnceLock::new(),
        }
    }

    /// The series, created on first use.
    pub(crate) fn get(&self) -> &M {
        self.series
            .get_or_init(|| self.family.get_or_create_owned(&self.labels))
    }
}

impl<L: Clone, M: Clone, C: Clone> Clone for Series<L, M, C> {
    fn clone(&self) -> Self {
        Self {
            family: self.family.clone(),
            labels: self.labels.clone(),
            series: self.series.clone(),
        }
    }
}

impl<L: std::fmt::Debug, M, C> std::fmt::Debug for Series<L, M, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Series")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}
