//! Composable [Tower](https://docs.rs/tower) middleware for API gateways.
//!
//! Each concern is a layer that stacks into your own `ServiceBuilder`, under
//! axum, hyper or tonic:
//!
//! | module | layer | what it does |
//! | --- | --- | --- |
//! | [`auth`] | [`JwtAuthLayer`] | OAuth2/JWT validation: static keys, JWKS, OIDC discovery, key rotation |
//! | [`rbac`] | [`RbacLayer`] | role-based authorization per method and path |
//! | [`circuit`] | [`CircuitBreakerLayer`] | circuit breaking and outlier ejection |
//! | [`ratelimit`] | [`RateLimitLayer`] | rate limiting per consumer, IP, header or route: local GCRA or shared through Redis (single node or Cluster) |
//! | [`metrics`] | [`MetricsLayer`] | Prometheus/OpenMetrics metrics and the `/metrics` handler |
//! | [`client_addr`] | [`ClientAddrLayer`](client_addr::ClientAddrLayer) | the client's address behind trusted proxies (`X-Forwarded-For`, `Forwarded`), resolved once for every layer |
//! | [`route`] | [`RouteLayer`](route::RouteLayer) | routes declared once (match, upstream, auth mode, roles, limits, timeouts); each request matched once, 404/405 in one place |
//! | [`path`] | [`NormalizePathLayer`](path::NormalizePathLayer) | the one path normalization that routing and RBAC share |
//! | [`reject`] | [`RenderLayer`](reject::RenderLayer) | refusals rendered once per stack: problem JSON, RFC 6750 challenges, gRPC trailers-only |
//! | [`server`] | [`EdgeLayer`](server::EdgeLayer) | the HTTP/1.1 and HTTP/2 server facing clients: timeouts for every wait a client can cause, connection caps, graceful shutdown, edge hygiene |
//! | [`trace`] | [`TraceLayer`](trace::TraceLayer), [`RequestIdLayer`](trace::RequestIdLayer) | a server span per request with every layer's decision, client spans per upstream attempt, W3C trace context (OpenTelemetry with `otel`), request IDs |
//! | [`tls`] | [`PeerIdentityLayer`](tls::PeerIdentityLayer) | mTLS: client certificates verified against a private CA, the peer as [`Identity`], reloading certificates, the upstream mTLS connector |
//! | [`access_log`] | [`AccessLogLayer`](access_log::AccessLogLayer) | a structured access log: one `tracing` event per request (route, status, duration, bytes, upstream, trace ID) |
//!
//! Cross-cutting types live once: the verified caller ([`identity::Identity`]),
//! the matched route ([`route::MatchedRoute`]), the client address behind
//! trusted proxies ([`client_addr`]), the rejection model ([`reject`]: RFC
//! 9457 problem JSON, RFC 6750 challenges, gRPC status), and the path
//! normalization ([`path`]).
//!
//! # Example
//!
//! ```
//! use http::Method;
//! use tower::ServiceBuilder;
//! use tower_gateway::auth::{Issuer, JwtAuthLayer, JwtKey};
//! use tower_gateway::rbac::{Policy, RbacLayer, Rule};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = JwtAuthLayer::builder()
//!     .issuer(Issuer::new("https://auth.example.com").key(JwtKey::hmac(b"0123456789abcdef0123456789abcdef")))
//!     .build()?;
//! let policy = Policy::builder()
//!     .rule(Rule::new("/orders").methods([Method::POST]).any_of(["user", "admin"]))
//!     .deny_unmatched(true)
//!     .build()?;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(tower_gateway::reject::RenderLayer::new()) // renders refusals, once
//!     .layer(auth)
//!     .layer(RbacLayer::new(policy))
//!     .service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//!     });
//! # Ok(()) }
//! ```
//!
//! # Construction
//!
//! Every layer is built the same way, in one of two shapes:
//!
//! - A layer whose settings cannot be invalid is `Layer::new(required)`
//!   plus chained setters: [`RbacLayer::new(policy)`](RbacLayer::new),
//!   [`CircuitBreakerLayer::new(name, config)`](CircuitBreakerLayer::new),
//!   `MetricsLayer::new(&metrics)`, `ClientAddrLayer::new(proxies)`,
//!   `RenderLayer::new()`, `EdgeLayer::new()`.
//! - A layer whose settings can be invalid is `Layer::builder()`, setters,
//!   then `.build()?`, which checks everything at once and returns the
//!   module's typed error: [`JwtAuthLayer::builder()`](JwtAuthLayer::builder)
//!   ([`JwtConfigError`](auth::JwtConfigError)),
//!   `RateLimitLayer::builder()` (`RateLimitError`).
//!
//! What a layer is configured with follows the same two shapes (`Policy`,
//! `Routes`, `ConsulClient` have builders; `Limit`, `Issuer`,
//! `CircuitConfig` are plain values; `proxy::Upstream::new(name, watch)`
//! takes its required arguments and is checked by `build()?`). A handle the
//! caller keeps using — a metrics registry, reloading certificates, the
//! route table that `RouteLayer` and `Proxy` share — is passed by
//! reference, and the layer keeps a clone.
//!
//! Building needs no Tokio runtime, so a stack can be assembled before the
//! runtime that serves it exists. Background work (JWKS refreshes, an
//! upstream following discovery, a Consul watch, a lazily connected Redis
//! backend) starts with the first use inside a runtime — the first
//! request, or the first call of an `async` helper such as
//! `JwtAuthLayer::wait_for_keys` — and from then on a request pays one
//! atomic load for it. What needs the runtime is what you `.await`
//! (`RedisBackend::connect`, Consul registration and Connect
//! certificates, serving) and `ReloadingCertificates::watch`, which spawns
//! its poller at once and hands back its `JoinHandle`.
//!
//! # A gateway of routes, in 40 lines
//!
//! Each route is declared once — its match, its upstream, its
//! authentication mode, its roles per method, its rate limits — and each
//! request is matched once, by [`RouteLayer`](route::RouteLayer); every
//! layer after it reads the matched route's settings (see [`route`]).
//! Refusals are rendered once, by the server (see [`reject`]), so any layer
//! can be left out with `option_layer`. This is `examples/three_routes`;
//! `tests/composition.rs` drives it over real sockets.
//!
//! ```no_run
#![doc = include_str!("../examples/three_routes/gateway.rs")]
//! # fn main() {}
//! ```
//!
//! # Cargo features
//!
//! | feature | default | enables |
//! | --- | --- | --- |
//! | `jwt` | yes | [`auth`] with static keys |
//! | `aws-lc` | yes | JWT signatures verified with aws-lc-rs (4-8x faster for RSA and ECDSA than RustCrypto) |
//! | `rust-crypto` | no | JWT signatures verified with pure-Rust RustCrypto, instead of aws-lc (`jwt` needs one of the two) |
//! | `jwks` | yes | JWKS / OIDC discovery for [`auth`] (hyper client, rustls) |
//! | `rbac` | yes | [`rbac`] |
//! | `metrics` | yes | [`metrics`] (prometheus-client) |
//! | `ratelimit` | yes | [`ratelimit`] with the local limiter (governor) |
//! | `discovery`, `proxy` | yes | [`discovery`] and the reverse [`proxy`] |
//! | `tls` | yes | [`tls`]: mTLS servers and clients (rustls) |
//! | `redis` | no | the Redis backend of [`ratelimit`] (single node and Cluster) |
//! | `consul` | no | Consul discovery and registration |
//! | `otel` | no | OpenTelemetry (tracing-opentelemetry): W3C trace context from clients and into upstream requests for [`trace`]; trace IDs in the [`access_log`] and as exemplars of the latency histogram in [`metrics`] |
//! | `server` | yes | [`server`]: the HTTP/1.1 and HTTP/2 server facing clients (hyper-util); `tls` implies it |

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod access_log;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub mod auth;
pub mod circuit;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
pub mod client_addr;
pub mod connection;
#[cfg_attr(
    not(any(feature = "jwks", feature = "consul", feature = "proxy")),
    allow(dead_code)
)]
mod deferred;
#[cfg(feature = "discovery")]
#[cfg_attr(docsrs, doc(cfg(feature = "discovery")))]
pub mod discovery;
#[cfg(any(feature = "server", feature = "proxy"))]
pub(crate) mod hop_by_hop;
pub mod identity;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod path;
#[cfg(feature = "proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy")))]
pub mod proxy;
#[cfg(feature = "ratelimit")]
#[cfg_attr(docsrs, doc(cfg(feature = "ratelimit")))]
pub mod ratelimit;
#[cfg(feature = "rbac")]
#[cfg_attr(docsrs, doc(cfg(feature = "rbac")))]
pub mod rbac;
pub mod reject;
pub mod route;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
pub mod trace;

#[cfg(feature = "jwt")]
pub use auth::JwtAuthLayer;
pub use circuit::CircuitBreakerLayer;
pub use identity::Identity;
#[cfg(feature = "metrics")]
pub use metrics::MetricsLayer;
#[cfg(feature = "ratelimit")]
pub use ratelimit::RateLimitLayer;
#[cfg(feature = "redis")]
pub use ratelimit::RedisRateLimitLayer;
#[cfg(feature = "rbac")]
pub use rbac::RbacLayer;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
