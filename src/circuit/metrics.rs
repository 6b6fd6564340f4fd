//! The metrics of circuit breakers.

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::CircuitMetrics;
#[cfg(feature = "metrics")]
pub use enabled::CircuitMetrics;

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::Arc;

    use prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{counter::Counter, family::Family, gauge::Gauge},
    };

    use crate::{
        circuit::{CircuitBreaker, CircuitState},
        metrics::GatewayMetrics,
    };

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct UpstreamState {
        upstream: Arc<str>,
        state: &'static str,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct UpstreamTransition {
        upstream: Arc<str>,
        from: &'static str,
        to: &'static str,
    }

    const STATES: [CircuitState; 3] = [
        CircuitState::Closed,
        CircuitState::Open,
        CircuitState::HalfOpen,
    ];

    /// The metrics of circuit breakers: attach with
    /// [`CircuitBreakerLayer::metrics`](crate::circuit::CircuitBreakerLayer::metrics)
    /// or [`CircuitBreaker::metrics`].
    ///
    /// - `circuit_state{upstream,state}`: 1 for the current state of each
    ///   breaker (by its name), 0 for the other two;
    /// - `circuit_transitions_total{upstream,from,to}`: state changes.
    ///
    /// Cheap to clone; every handle created from one [`GatewayMetrics`]
    /// shares the same families.
    #[derive(Clone, Debug)]
    pub struct CircuitMetrics {
        state: Family<UpstreamState, Gauge>,
        transitions: Family<UpstreamTransition, Counter>,
    }

    impl CircuitMetrics {
        /// The circuit families of `metrics`, registered on first use.
        pub fn new(metrics: &GatewayMetrics) -> Self {
            metrics.layer_families(|registry| {
                let handle = Self {
                    state: Family::default(),
                    transitions: Family::default(),
                };
                registry.register(
                    "circuit_state",
                    "1 for the current state of each circuit",
                    handle.state.clone(),
                );
                registry.register(
                    "circuit_transitions",
                    "Circuit state changes",
                    handle.transitions.clone(),
                );
                handle
            })
        }

        /// Sets `breaker`'s state series now and on every change, and counts
        /// its transitions. The series are resolved here, once per breaker.
        pub(crate) fn attach(&self, breaker: &CircuitBreaker) {
            let upstream: Arc<str> = Arc::from(breaker.name());
            let gauges = STATES.map(|state| {
                self.state.get_or_create_owned(&UpstreamState {
                    upstream: upstream.clone(),
                    state: state.as_str(),
                })
            });
            let set = move |current: CircuitState| {
                for (state, gauge) in STATES.iter().zip(&gauges) {
                    gauge.set(i64::from(*state == current));
                }
            };
            set(breaker.state());
            let transitions = self.transitions.clone();
            breaker.on_transition(move |_, t| {
                set(t.to);
                transitions
                    .get_or_create(&UpstreamTransition {
                        upstream: upstream.clone(),
                        from: t.from.as_str(),
                        to: t.to.as_str(),
                    })
                    .inc();
            });
        }
    }
}

/// Without the `metrics` feature no handle exists: the layer's `Option` of
/// this type is always `None`.
#[cfg(not(feature = "metrics"))]
mod disabled {
    use crate::circuit::CircuitBreaker;

    #[derive(Clone, Debug)]
    pub(crate) enum CircuitMetrics {}

    impl CircuitMetrics {
        pub(crate) fn attach(&self, _breaker: &CircuitBreaker) {
            match *self {}
        }
    }
}
