//! Rate limiting by key, in process or shared by every gateway through
//! Redis.
//!
//! [`RateLimitLayer`] counts each request against a key — the verified
//! consumer, the client IP, a header, the route, or a composite — under a
//! [`Limit`] of one or more [`Window`]s (Kong's `second = 5, hour = 1000`),
//! and refuses it with 429 when any window is exhausted.
//!
//! - **Algorithm**: GCRA, a token bucket expressed in time: each window has
//!   a rate and a burst, there are no window edges to straddle, and all
//!   windows of a limit are decided together — if one refuses, none is
//!   charged.
//! - **Backends**: the [`LocalLimiter`] (in process, the default) or a
//!   `RedisBackend` (feature `redis`), where one Lua script per request
//!   checks and updates every window atomically on Redis's clock, so any
//!   number of gateways enforce one limit together, against a single Redis
//!   or a Redis Cluster.
//! - **Failures**: every Redis call is bounded by a timeout; on failure the
//!   [`FailurePolicy`] lets the request through, refuses it with 503, or
//!   decides it locally on a share of the limit. A breaker stops calling a
//!   failing Redis and probes it, so an outage costs at most one timeout per
//!   probe interval; limiting is shared again within about one interval of
//!   Redis returning. Every decision is counted in the
//!   [`RateLimitMetrics`] (feature `metrics`) as a [`RateLimitOutcome`].
//! - **Keys** come only from verified data ([`key`] module docs): the
//!   [`Identity`](crate::identity::Identity) an authenticating layer put in
//!   the extensions, the client address ([`ClientAddr`], or the client a
//!   [`ClientAddrLayer`](crate::client_addr::ClientAddrLayer) resolved behind
//!   proxies you trust), and headers you name. Client values are length-limited and
//!   escaped. [`KeyExtractor`] is a one-method trait for your own keys.
//! - **Tiers**: callers with a role get their own limit
//!   ([`RateLimitLayerBuilder::tier`]).
//! - **Responses**: a refusal is 429 with `Retry-After` (whole seconds,
//!   rounded up) and the quota headers, rendered by the crate's
//!   [rejection model](crate::reject) — problem JSON for HTTP,
//!   `RESOURCE_EXHAUSTED` trailers-only responses for gRPC. Admitted
//!   responses carry the remaining quota ([`QuotaHeaders`]: IETF
//!   `RateLimit-Policy`/`RateLimit`, Kong's `X-RateLimit-*`, or hidden).
//!
//! # Example
//!
//! Per consumer, premium callers at ten times the rate, anonymous callers
//! by IP:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_gateway::ratelimit::{ClientIp, Consumer, KeyExtractor, Limit, ClientAddr, RateLimitLayer};
//!
//! let ratelimit = RateLimitLayer::builder()
//!     .key(Consumer::subject().or(ClientIp::peer()))
//!     .limit(Limit::new().per_second(2).per_hour(1000))
//!     .tier("premium", Limit::new().per_second(20).per_hour(10_000))
//!     .build()?;
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(ratelimit)
//!     .service_fn(|_req: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
//!     });
//!
//! let request = || {
//!     let mut req = Request::new(String::new());
//!     req.extensions_mut().insert(ClientAddr("192.0.2.7:50123".parse().unwrap()));
//!     req
//! };
//! let ok = svc.ready().await?.call(request()).await?;
//! assert_eq!(ok.headers()["ratelimit"], r#""second";r=1;t=1, "hour";r=999;t=4"#);
//! svc.ready().await?.call(request()).await?;
//! let refused = svc.ready().await?.call(request()).await?;
//! assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(refused.headers()["retry-after"], "1");
//! # Ok(()) }
//! ```
//!
#![cfg_attr(
    feature = "redis",
    doc = "With Redis, add [`RateLimitLayerBuilder::redis`]; see [`RedisBackend`]."
)]

mod decision;
mod future;
mod headers;
pub mod key;
mod layer;
mod limit;
mod local;
mod metrics;
#[cfg(feature = "redis")]
mod redis;
mod route;
mod service;
mod step;
mod store;

pub use decision::{Decision, WindowState};
pub use future::ResponseFuture;
pub use headers::QuotaHeaders;
pub use key::{
    ClientAddr, ClientIp, Consumer, Fixed, ForwardedHeader, Header, IpNet, IpNetError, KeyBuilder,
    KeyError, KeyExtractor, Or, RequestInfo, ResolvedClient, Route,
};
#[cfg(feature = "redis")]
pub use layer::RedisRateLimitLayer;
pub use layer::{
    FailurePolicy, LimitPlan, MissingKey, RateLimitError, RateLimitLayer, RateLimitLayerBuilder,
};
pub use limit::{Limit, LimitError, MAX_WINDOWS, Window};
pub use local::{DEFAULT_MAX_KEYS, LocalLimiter, TokioClock};
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use metrics::RateLimitMetrics;
pub use metrics::RateLimitOutcome;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{BackendError, RedisBackend, RedisConfig, RedisStats, SCRIPT};
pub use route::{RouteRateLimit, RouteRateLimitFuture, RouteRateLimitLayer};
pub use service::RateLimit;
