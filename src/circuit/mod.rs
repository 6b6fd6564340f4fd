//! Circuit breaking: stop calling a failing upstream, probe it, recover.
//!
//! A [`CircuitBreaker`] is closed while calls succeed. It opens when, over a
//! rolling [`Window`] (by count or by time), the failure rate reaches a
//! threshold after a minimum number of calls, or when failures come in an
//! unbroken run. While open, calls are refused at once. After the open
//! duration it lets a few probe calls through (half-open): enough successes
//! close it; a failure reopens it for twice as long (capped).
//!
//! What counts as a failure is a [`Classify`] implementation; the default,
//! [`ServerErrors`], counts 5xx responses, errors (timeouts, connection
//! failures) and failing gRPC statuses, not 4xx.
//!
//! [`CircuitBreakerLayer`] puts a breaker in front of a service, per service
//! (fail fast with 503) or per endpoint under a balancer (outlier ejection:
//! `poll_ready` pends while the endpoint is ejected, within the limits of an
//! [`EjectionGroup`]).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_gateway::circuit::{CircuitBreakerLayer, CircuitConfig, Window};
//!
//! let breaker = CircuitBreakerLayer::new(
//!     "payments",
//!     CircuitConfig::default()
//!         .window(Window::Time { length: Duration::from_secs(30), buckets: 10 })
//!         .failure_rate(0.5)
//!         .minimum_calls(20),
//! );
//! let mut state = breaker.breaker().unwrap().subscribe();
//! let svc = ServiceBuilder::new()
//!     .layer(breaker)
//!     .timeout(Duration::from_secs(2))
//!     .service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, tower::BoxError>(http::Response::new(String::new()))
//!     });
//! ```

mod breaker;
mod classify;
mod config;
mod layer;
mod metrics;

pub use breaker::{CircuitBreaker, CircuitState, EjectionGroup, Permit, Refused, Transition};
pub use classify::{Classify, Outcome, ServerErrors};
pub use config::{CircuitConfig, Window};
pub use layer::{CircuitBreakerLayer, CircuitBreakerService, ResponseFuture};
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use metrics::CircuitMetrics;
#[cfg(not(feature = "metrics"))]
#[allow(unused_imports)] // Only the proxy uses it.
pub(crate) use metrics::CircuitMetrics;
