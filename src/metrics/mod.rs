//! Prometheus metrics with prometheus-client.
//!
//! [`GatewayMetrics`] is the registry every layer reports to: the
//! [`MetricsLayer`] records requests (by route template, method and status;
//! duration, in-flight, body sizes; gRPC service, method and status;
//! optional per-consumer counts with a hard cap), and the other layers report
//! their decisions through [`GatewayMetrics::observer`] (auth failures by
//! reason, RBAC denials, rate-limit outcomes, circuit states, endpoints per
//! service and discovery staleness, upstream latency, JWKS refreshes).
//! [`MetricsHandler`] serves it all in OpenMetrics text format.
//!
//! Every label whose values a client could choose is bounded: routes are
//! templates (never raw paths) and capped, methods outside the standard set
//! are `OTHER`, gRPC methods and consumers are capped with an `other`
//! overflow.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_gateway::auth::{Issuer, JwtAuthLayer, JwtKey};
//! use tower_gateway::metrics::{GatewayMetrics, MetricsConfig, MetricsHandler, MetricsLayer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = GatewayMetrics::new(MetricsConfig::default().max_consumers(1000));
//! let auth = JwtAuthLayer::builder()
//!     .issuer(Issuer::any().key(JwtKey::hmac(b"0123456789abcdef0123456789abcdef")))
//!     .observer(metrics.observer())
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/orders", get(|| async { "[]" }))
//!     .layer(auth)
//!     .layer(MetricsLayer::new(&metrics).route_from(|parts| {
//!         parts.extensions.get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_owned())
//!     }))
//!     .route_service("/metrics", MetricsHandler::new(&metrics));
//! # Ok(()) }
//! ```

mod cap;
mod handler;
mod layer;
mod registry;

pub use handler::{MetricsHandler, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE};
pub use layer::{Metrics, MetricsBody, MetricsLayer, MetricsRequestBody, ResponseFuture};
pub use registry::{DEFAULT_LATENCY_BUCKETS, DEFAULT_SIZE_BUCKETS, GatewayMetrics, MetricsConfig};
