//! The metrics of [`RateLimitLayer`](super::RateLimitLayer).

/// What became of a request at a rate-limit layer: the `outcome` label of
/// `ratelimit_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RateLimitOutcome {
    /// Within the limit.
    Allowed,
    /// Over the limit: refused with 429.
    Limited,
    /// The backend (Redis) could not decide, and the failure policy let the
    /// request through or refused it.
    BackendError,
    /// The backend could not decide; the local fallback did.
    Fallback,
    /// The request carried nothing to key it by.
    MissingKey,
}

impl RateLimitOutcome {
    /// `allowed`, `limited`, `backend_error`, `fallback` or `missing_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::BackendError => "backend_error",
            Self::Fallback => "fallback",
            Self::MissingKey => "missing_key",
        }
    }
}

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::RateLimitMetrics;
#[cfg(feature = "metrics")]
pub use enabled::RateLimitMetrics;

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::Arc;

    use prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{counter::Counter, family::Family},
    };

    use super::RateLimitOutcome;
    use crate::{metrics::GatewayMetrics, route::RouteTemplate};

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct RouteOutcome {
        route: Arc<str>,
        outcome: &'static str,
    }

    /// The metrics of [`RateLimitLayer`](crate::ratelimit::RateLimitLayer):
    /// attach with
    /// [`RateLimitLayerBuilder::metrics`](crate::ratelimit::RateLimitLayerBuilder::metrics).
    ///
    /// `ratelimit_decisions_total{route,outcome}`: every decision, by the
    /// request's [`RouteTemplate`] (`unmatched` without one) and
    /// [`RateLimitOutcome`]. The route label shares the template's string:
    /// counting allocates nothing.
    ///
    /// Cheap to clone; every handle created from one [`GatewayMetrics`]
    /// shares the same family.
    #[derive(Clone, Debug)]
    pub struct RateLimitMetrics {
        decisions: Family<RouteOutcome, Counter>,
        unmatched: Arc<str>,
    }

    impl RateLimitMetrics {
        /// The rate-limit family of `metrics`, registered on first use.
        pub fn new(metrics: &GatewayMetrics) -> Self {
            metrics.layer_families(|registry| {
                let handle = Self {
                    decisions: Family::default(),
                    unmatched: Arc::from("unmatched"),
                };
                registry.register(
                    "ratelimit_decisions",
                    "Rate-limit decisions by route and outcome",
                    handle.decisions.clone(),
                );
                handle
            })
        }

        /// Counts one decision for a request on `route`.
        pub fn decision(&self, route: Option<&RouteTemplate>, outcome: RateLimitOutcome) {
            let route = route.map_or(&self.unmatched, |r| &r.0).clone();
            self.decisions
                .get_or_create(&RouteOutcome {
                    route,
                    outcome: outcome.as_str(),
                })
                .inc();
        }
    }
}

/// Without the `metrics` feature no handle exists: the layer's `Option` of
/// this type is always `None`.
#[cfg(not(feature = "metrics"))]
mod disabled {
    use super::RateLimitOutcome;
    use crate::route::RouteTemplate;

    #[derive(Clone, Debug)]
    pub(crate) enum RateLimitMetrics {}

    impl RateLimitMetrics {
        pub(crate) fn decision(&self, _route: Option<&RouteTemplate>, _outcome: RateLimitOutcome) {
            match *self {}
        }
    }
}
