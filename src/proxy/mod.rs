//! Reverse proxy: routing, load balancing, timeouts, retries.
//!
//! - Each [`Route`](crate::route::Route) names its upstream
//!   ([`Route::upstream`](crate::route::Route::upstream)), and may set its
//!   own timeout, retries and prefix stripping. The [`Proxy`] forwards a
//!   request to the upstream of the route a
//!   [`RouteLayer`](crate::route::RouteLayer) matched — or matches it itself
//!   when no such layer runs before it; either way once.
//! - An [`Upstream`] spreads requests over the endpoints of an
//!   [`EndpointWatch`](crate::discovery::EndpointWatch) (Consul or static)
//!   with a [`Balancer`]: power of two choices over requests in flight
//!   (the default, as in Envoy), round robin, or peak-EWMA latency. The
//!   endpoint list is swapped atomically when discovery changes, so a new
//!   endpoint gets traffic with the next request; each request picks its
//!   endpoint itself — no queue and no worker task between the client and
//!   the upstream. Each endpoint has its own circuit breaker (outlier
//!   ejection, never the last endpoint), and a refused connection ejects it
//!   at once, for a time that grows while refusals continue.
//! - [`Proxy`] forwards through hyper-util's pooled client (HTTP/1.1, HTTP/2,
//!   gRPC with trailers), streaming bodies both ways. Per RFC 9110 it removes
//!   hop-by-hop headers, appends `X-Forwarded-For` (or `Forwarded`), sets
//!   `X-Forwarded-Proto`/`-Host` and `Via`; it can strip the route prefix;
//!   WebSocket upgrades pass through. The headers a client names in
//!   `Connection` are removed at the edge, before any layer runs (see the
//!   `server` module), so no client can make the proxy remove a header a
//!   gateway layer set.
//! - Timeouts per upstream (connect, request) and per route; retries only
//!   where safe ([`RetryConfig`]), within a budget, never back to an
//!   endpoint the request already tried. Upstream failures are 502/503/504
//!   problem responses (gRPC `UNAVAILABLE`/`DEADLINE_EXCEEDED`) with no
//!   internal detail. A client's faults stay the client's: a malformed or
//!   incomplete request body is 400, one that stalls is 408, and neither
//!   counts against the endpoint's breaker or the retry budget.
//!
//! # No client can starve a service
//!
//! Every request in flight to an HTTP/1.1 upstream has a pooled connection
//! of its own, so a client that stalls its upload or never reads a large
//! download holds one connection, never a resource other clients need; the
//! server's progress timeout then ends it. That is the default, and the
//! reference gateway's choice for its services (with mTLS,
//! `MtlsClientConfig::offer_http2(false)`).
//!
//! HTTP/2 upstreams (gRPC) multiplex many clients onto shared connections,
//! whose stream limit and flow-control window a few clients could hold. The
//! proxy opens several connections per endpoint and puts each request on
//! the one with the fewest streams open (counted until the response body
//! ends), and gives every connection a window 64 times a stream's, so
//! unread responses fill a connection's window only when 64 of them share
//! it. Those streams are still bounded in time only by the server's
//! progress timeout and the upstream's body idle timeout.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tower::ServiceBuilder;
//! use tower_gateway::discovery::{Endpoint, StaticDiscovery};
//! use tower_gateway::proxy::{Proxy, Upstream};
//! use tower_gateway::route::{Route, RouteLayer, Routes};
//!
//! let orders = StaticDiscovery::new([Endpoint::new("orders-1", "127.0.0.1", 3001)]);
//! let routes = Routes::builder()
//!     .route(Route::prefix("/orders").upstream(Upstream::new("orders", orders.watch()).build()?))
//!     .build()?;
//! let gateway = ServiceBuilder::new()
//!     .layer(RouteLayer::new(&routes))
//!     // metrics, auth, RBAC, rate limits go here
//!     .service(Proxy::new(&routes));
//! # Ok(()) }
//! ```

mod balance;
mod dispatch;
mod forward;
mod headers;
mod metrics;
mod retry;
mod route;
mod upstream;

pub use balance::{Balancer, PeakEwma};
pub use dispatch::{DEFAULT_MAX_REQUEST_HEADER_BYTES, Proxy, ProxyFuture};
pub use forward::{BodyIdleTimeout, Connector, ProxyBody, UpstreamBody, UpstreamProtocol};
pub use headers::ForwardedHeaders;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use metrics::{UpstreamLatency, UpstreamMetrics};
pub use retry::RetryConfig;
pub use upstream::{ProxyError, Upstream, UpstreamService};
