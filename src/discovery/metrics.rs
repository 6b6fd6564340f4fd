//! The metrics of service discovery.

#[cfg(not(feature = "metrics"))]
#[allow(unused_imports)] // Only the Consul watcher and the proxy use it.
pub(crate) use disabled::{DiscoveryMetrics, ServiceMetrics};
#[cfg(feature = "metrics")]
pub use enabled::{DiscoveryMetrics, ServiceMetrics};

#[cfg(feature = "metrics")]
mod enabled {
    use std::{
        sync::{Arc, atomic::AtomicU64},
        time::Duration,
    };

    use prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{family::Family, gauge::Gauge},
        registry::Unit,
    };

    use crate::metrics::{GatewayMetrics, Series};

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ServiceLabels {
        service: Arc<str>,
    }

    type Seconds = Gauge<f64, AtomicU64>;

    /// The metrics of service discovery: attach with
    /// `ConsulWatchBuilder::metrics` (feature `consul`) or through
    /// `UpstreamMetrics` (feature `proxy`), which reports the endpoints its
    /// balancer uses.
    ///
    /// - `discovered_endpoints{service}`: healthy endpoints known;
    /// - `discovery_staleness_seconds{service}`: age of the discovery data
    ///   (zero right after a successful update).
    ///
    /// Cheap to clone; every handle created from one [`GatewayMetrics`]
    /// shares the same families.
    #[derive(Clone, Debug)]
    pub struct DiscoveryMetrics {
        endpoints: Family<ServiceLabels, Gauge>,
        staleness: Family<ServiceLabels, Seconds>,
    }

    impl DiscoveryMetrics {
        /// The discovery families of `metrics`, registered on first use.
        pub fn new(metrics: &GatewayMetrics) -> Self {
            metrics.layer_families(|registry| {
                let handle = Self {
                    endpoints: Family::default(),
                    staleness: Family::default(),
                };
                registry.register(
                    "discovered_endpoints",
                    "Healthy endpoints known per service",
                    handle.endpoints.clone(),
                );
                registry.register_with_unit(
                    "discovery_staleness",
                    "Age of the discovery data per service",
                    Unit::Seconds,
                    handle.staleness.clone(),
                );
                handle
            })
        }

        /// The series of `service`, resolved once; each appears with its
        /// first value.
        pub fn service(&self, service: &str) -> ServiceMetrics {
            let labels = ServiceLabels {
                service: Arc::from(service),
            };
            ServiceMetrics {
                endpoints: Series::new(&self.endpoints, labels.clone()),
                staleness: Series::new(&self.staleness, labels),
            }
        }
    }

    /// The discovery series of one service, from [`DiscoveryMetrics::service`].
    #[derive(Clone, Debug)]
    pub struct ServiceMetrics {
        endpoints: Series<ServiceLabels, Gauge>,
        staleness: Series<ServiceLabels, Seconds>,
    }

    impl ServiceMetrics {
        /// Discovery now knows `count` healthy endpoints.
        pub fn endpoints(&self, count: usize) {
            self.endpoints
                .get()
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }

        /// The discovery data is `age` old.
        pub fn staleness(&self, age: Duration) {
            self.staleness.get().set(age.as_secs_f64());
        }
    }
}

/// Without the `metrics` feature no handle exists: these types have no
/// values, and the `Option`s of them are always `None`.
#[cfg(not(feature = "metrics"))]
#[allow(dead_code)] // Only the Consul watcher and the proxy use it.
mod disabled {
    use std::time::Duration;

    #[derive(Clone, Debug)]
    pub(crate) enum DiscoveryMetrics {}

    impl DiscoveryMetrics {
        pub(crate) fn service(&self, _service: &str) -> ServiceMetrics {
            match *self {}
        }
    }

    #[derive(Clone, Debug)]
    pub(crate) enum ServiceMetrics {}

    impl ServiceMetrics {
        pub(crate) fn endpoints(&self, _count: usize) {
            match *self {}
        }

        pub(crate) fn staleness(&self, _age: Duration) {
            match *self {}
        }
    }
}
