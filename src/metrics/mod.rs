//! Prometheus metrics with prometheus-client.
//!
//! [`GatewayMetrics`] owns the registry: its name prefix, its histogram
//! buckets and the label caps. [`MetricsLayer`] records requests into it
//! (by route template, method and status; duration, in-flight, body sizes;
//! gRPC service, method and status; optional per-consumer counts with a hard
//! cap), and [`MetricsHandler`] serves it all in OpenMetrics text format.
//!
//! # Per-layer metrics
//!
//! Every other layer reports through a metrics handle of its own, defined
//! in the layer's module. The convention is the same for all: create the
//! handle from the registry with `new(&metrics)`, which registers its
//! families the first time a handle of that kind is created (later handles
//! share them), and give it to the layer with its `metrics` setter. The
//! layer resolves its label values (rule, upstream, service, issuer) once,
//! when the handle is attached, so events allocate nothing. Without a
//! handle a layer records nothing.
//!
//! | handle | setter | families (prefix `gateway_`) |
//! | --- | --- | --- |
//! | [`AuthMetrics`](crate::auth::AuthMetrics) | [`JwtAuthBuilder::metrics`](crate::auth::JwtAuthBuilder::metrics) | `auth_failures_total{reason}`, `jwks_refreshes_total{issuer,result}` |
//! | [`RbacMetrics`](crate::rbac::RbacMetrics) | [`RbacLayer::metrics`](crate::rbac::RbacLayer::metrics) | `rbac_denials_total{rule,mode}` |
//! | [`CircuitMetrics`](crate::circuit::CircuitMetrics) | [`CircuitBreakerLayer::metrics`](crate::circuit::CircuitBreakerLayer::metrics) | `circuit_state{upstream,state}`, `circuit_transitions_total{upstream,from,to}` |
//! | [`RateLimitMetrics`](crate::ratelimit::RateLimitMetrics) | [`RateLimitLayerBuilder::metrics`](crate::ratelimit::RateLimitLayerBuilder::metrics) | `ratelimit_decisions_total{route,outcome}` |
//! | [`DiscoveryMetrics`](crate::discovery::DiscoveryMetrics) | `ConsulWatchBuilder::metrics` (feature `consul`) | `discovered_endpoints{service}`, `discovery_staleness_seconds{service}` |
//! | [`UpstreamMetrics`](crate::proxy::UpstreamMetrics) | [`Upstream::metrics`](crate::proxy::Upstream::metrics) | `upstream_request_duration_seconds{service}`, and the endpoint and circuit families of its balancer |
//!
//! A layer of your own follows the same pattern: register its families once
//! through [`GatewayMetrics::with_registry`] and keep clones of the series
//! it will update.
//!
//! Every label whose values a client could choose is bounded: routes are
//! templates (never raw paths) and capped, methods outside the standard set
//! are `OTHER`, gRPC methods and consumers are capped with an `other`
//! overflow.
//!
//! # Exemplars
//!
//! With feature `otel`, `gateway_request_duration_seconds` carries, per
//! bucket, the trace ID of the last *sampled* request it counted as an
//! OpenMetrics exemplar (`# {trace_id="…"} 0.0123 1700000000.5`), read
//! from the current span through tracing-opentelemetry when the response
//! head arrives. Exemplars appear only in the OpenMetrics exposition that
//! Prometheus asks for (stored with `--enable-feature=exemplar-storage`);
//! the Prometheus text format has no place for them and leaves them out.
//! An unsampled request adds one look-up of the span's context.
//!
//! # Example
//!
//! A stack whose layers each report to their own handle:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_gateway::auth::{AuthMetrics, Issuer, JwtAuthLayer, JwtKey};
//! use tower_gateway::circuit::{CircuitBreakerLayer, CircuitConfig, CircuitMetrics};
//! use tower_gateway::metrics::GatewayMetrics;
//! use tower_gateway::ratelimit::{ClientIp, Limit, RateLimitLayer, RateLimitMetrics};
//! use tower_gateway::rbac::{Policy, RbacLayer, RbacMetrics, Rule};
//!
//! let metrics = GatewayMetrics::default();
//! let auth = JwtAuthLayer::builder()
//!     .issuer(Issuer::any().key(JwtKey::hmac(b"0123456789abcdef0123456789abcdef")))
//!     .metrics(AuthMetrics::new(&metrics))
//!     .build()?;
//! let policy = Policy::builder()
//!     .rule(Rule::new("/orders").any_of(["user"]).name("orders"))
//!     .build()?;
//! let ratelimit = RateLimitLayer::builder()
//!     .key(ClientIp::peer())
//!     .limit(Limit::new().per_second(100))
//!     .metrics(RateLimitMetrics::new(&metrics))
//!     .build()?;
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(auth)
//!     .layer(RbacLayer::new(policy).metrics(RbacMetrics::new(&metrics)))
//!     .layer(ratelimit)
//!     .layer(
//!         CircuitBreakerLayer::new("orders", CircuitConfig::default())
//!             .metrics(CircuitMetrics::new(&metrics)),
//!     )
//!     .service_fn(|_req: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("[]")))
//!     });
//!
//! let response = svc.ready().await?.call(Request::new(String::new())).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//!
//! let text = metrics.encode();
//! assert!(text.contains(r#"gateway_auth_failures_total{reason="missing"} 1"#));
//! assert!(text.contains(r#"gateway_circuit_state{upstream="orders",state="closed"} 1"#));
//! # Ok(()) }
//! ```
//!
//! The request metrics and `/metrics` in an axum router:
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_gateway::metrics::{GatewayMetrics, MetricsHandler, MetricsLayer};
//!
//! let metrics = GatewayMetrics::default();
//! let app: Router = Router::new()
//!     .route("/orders", get(|| async { "[]" }))
//!     .layer(MetricsLayer::new(&metrics).route_from(|parts| {
//!         parts.extensions.get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_owned())
//!     }))
//!     .route_service("/metrics", MetricsHandler::new(&metrics));
//! ```

mod cap;
mod consumer;
#[cfg(feature = "otel")]
mod exemplar;
mod handler;
mod layer;
mod registry;
mod series;

pub use consumer::{ConsumerMetrics, ConsumerMetricsFuture, ConsumerMetricsLayer};
pub use handler::{MetricsHandler, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE};
pub use layer::{Metrics, MetricsBody, MetricsLayer, MetricsRequestBody, ResponseFuture};
#[cfg(feature = "proxy")]
pub(crate) use registry::Buckets;
#[cfg(any(feature = "jwks", feature = "rbac", feature = "discovery"))]
pub(crate) use registry::Series;
pub use registry::{DEFAULT_LATENCY_BUCKETS, DEFAULT_SIZE_BUCKETS, GatewayMetrics, MetricsConfig};
