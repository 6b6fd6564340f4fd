//! The metrics of upstreams.

use std::sync::Arc;

use crate::{circuit::CircuitMetrics, discovery::ServiceMetrics};

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::{UpstreamLatency, UpstreamMetrics};
#[cfg(feature = "metrics")]
pub use enabled::{UpstreamLatency, UpstreamMetrics};

/// What an upstream reports to, resolved once when it is built.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub(crate) latency: UpstreamLatency,
    pub(crate) endpoints: ServiceMetrics,
    pub(crate) circuit: CircuitMetrics,
}

impl UpstreamMetrics {
    /// The series of the upstream named `name`.
    pub(crate) fn resolve(&self, name: &Arc<str>) -> Resolved {
        Resolved {
            latency: self.service(name),
            endpoints: self.discovery().service(name),
            circuit: self.circuit().clone(),
        }
    }
}

#[cfg(feature = "metrics")]
mod enabled {
    use std::{sync::Arc, time::Duration};

    use prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{family::Family, histogram::Histogram},
        registry::Unit,
    };

    use crate::{
        circuit::CircuitMetrics,
        discovery::DiscoveryMetrics,
        metrics::{Buckets, GatewayMetrics, Series},
    };

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ServiceLabels {
        service: Arc<str>,
    }

    /// The metrics of [`Upstream`](crate::proxy::Upstream)s: attach with
    /// [`Upstream::metrics`](crate::proxy::Upstream::metrics).
    ///
    /// `upstream_request_duration_seconds{service}`: the duration of each
    /// upstream call (to the response head), by upstream name, in the
    /// latency buckets of the [`GatewayMetrics`]. An upstream also reports
    /// the endpoints its balancer uses (`discovered_endpoints`, see
    /// [`DiscoveryMetrics`]) and the states of its per-endpoint breakers
    /// (`circuit_state`, `circuit_transitions_total`, see
    /// [`CircuitMetrics`]): creating this handle registers those families
    /// too.
    ///
    /// Cheap to clone; every handle created from one [`GatewayMetrics`]
    /// shares the same families.
    #[derive(Clone, Debug)]
    pub struct UpstreamMetrics {
        latency: Family<ServiceLabels, Histogram, Buckets>,
        discovery: DiscoveryMetrics,
        circuit: CircuitMetrics,
    }

    impl UpstreamMetrics {
        /// The upstream families of `metrics`, registered on first use.
        pub fn new(metrics: &GatewayMetrics) -> Self {
            let buckets = metrics.latency_buckets();
            let latency = metrics.layer_families(|registry| {
                let latency: Family<ServiceLabels, Histogram, Buckets> =
                    Family::new_with_constructor(buckets);
                registry.register_with_unit(
                    "upstream_request_duration",
                    "Upstream call duration per service",
                    Unit::Seconds,
                    latency.clone(),
                );
                latency
            });
            Self {
                latency,
                discovery: DiscoveryMetrics::new(metrics),
                circuit: CircuitMetrics::new(metrics),
            }
        }

        /// The latency histogram of the upstream named `service`, resolved
        /// once; the series appears with its first observation.
        pub fn service(&self, service: &str) -> UpstreamLatency {
            UpstreamLatency(Series::new(
                &self.latency,
                ServiceLabels {
                    service: Arc::from(service),
                },
            ))
        }

        pub(crate) fn discovery(&self) -> &DiscoveryMetrics {
            &self.discovery
        }

        pub(crate) fn circuit(&self) -> &CircuitMetrics {
            &self.circuit
        }
    }

    /// The latency histogram of one upstream, from
    /// [`UpstreamMetrics::service`].
    #[derive(Clone, Debug)]
    pub struct UpstreamLatency(Series<ServiceLabels, Histogram, Buckets>);

    impl UpstreamLatency {
        /// Records one upstream call that took `elapsed`.
        pub fn record(&self, elapsed: Duration) {
            self.0.get().observe(elapsed.as_secs_f64());
        }
    }
}

/// Without the `metrics` feature no handle exists: these types have no
/// values, and the upstream's `Option` of them is always `None`.
#[cfg(not(feature = "metrics"))]
mod disabled {
    use std::time::Duration;

    use crate::{circuit::CircuitMetrics, discovery::DiscoveryMetrics};

    #[derive(Clone, Debug)]
    pub(crate) enum UpstreamMetrics {}

    impl UpstreamMetrics {
        pub(crate) fn service(&self, _service: &str) -> UpstreamLatency {
            match *self {}
        }

        pub(crate) fn discovery(&self) -> &DiscoveryMetrics {
            match *self {}
        }

        pub(crate) fn circuit(&self) -> &CircuitMetrics {
            match *self {}
        }
    }

    #[derive(Clone, Debug)]
    pub(crate) enum UpstreamLatency {}

    impl UpstreamLatency {
        pub(crate) fn record(&self, _elapsed: Duration) {
            match *self {}
        }
    }
}
