//! Reverse proxy: routing, load balancing, timeouts, retries.
//!
//! - A [`RouteTable`] maps (host, path prefix on segment boundaries,
//!   methods) to an [`UpstreamService`], deciding on the crate's one
//!   [normalized path](crate::path); no route is 404, a method mismatch 405
//!   with `Allow`. A [`RouteLayer`] placed early records the match and the
//!   [`RouteTemplate`](crate::route::RouteTemplate) so metrics, RBAC and rate
//!   limits see the route.
//! - An [`Upstream`] balances over the endpoints of an
//!   [`EndpointWatch`](crate::discovery::EndpointWatch) (Consul or static)
//!   with tower's power-of-two-choices over peak-EWMA latency. Each endpoint
//!   has its own circuit breaker: an ejected endpoint is not ready, so the
//!   balancer routes around it. The balancer runs in a worker task behind a
//!   bounded queue. A guard keeps p2c's choice stable between `poll_ready`
//!   and `call` (tower-rs/tower#856).
//! - [`Proxy`] forwards through hyper-util's pooled client (HTTP/1.1, HTTP/2,
//!   gRPC with trailers), streaming bodies both ways. Per RFC 9110 it removes
//!   hop-by-hop headers (and those named in `Connection`), appends
//!   `X-Forwarded-For` (or `Forwarded`), sets `X-Forwarded-Proto`/`-Host`
//!   and `Via`; it can strip the route prefix; WebSocket upgrades pass
//!   through.
//! - Timeouts per upstream (connect, request); retries only where safe
//!   ([`RetryConfig`]), within a budget. Failures are 502/503/504 problem
//!   responses (gRPC `UNAVAILABLE`/`DEADLINE_EXCEEDED`) with no internal
//!   detail.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tower::ServiceBuilder;
//! use tower_gateway::discovery::{Endpoint, StaticDiscovery};
//! use tower_gateway::proxy::{Proxy, Route, RouteLayer, RouteTable, Upstream};
//!
//! let orders = StaticDiscovery::new([Endpoint::new("orders-1", "127.0.0.1", 3001)]);
//! let table = RouteTable::builder()
//!     .route(Route::prefix("/orders"), Upstream::new("orders", orders.watch()).build()?)
//!     .build()?;
//! let gateway = ServiceBuilder::new()
//!     .layer(RouteLayer::new(&table))
//!     // metrics, auth, RBAC, rate limits go here
//!     .service(Proxy::new(&table));
//! # Ok(()) }
//! ```

mod balance;
mod dispatch;
mod forward;
mod headers;
mod retry;
mod route;
mod upstream;

pub use balance::{Balancer, PeakEwma};
pub use dispatch::{DEFAULT_MAX_REQUEST_HEADER_BYTES, Proxy, ProxyFuture};
pub use forward::{BodyIdleTimeout, Connector, ProxyBody, UpstreamBody, UpstreamProtocol};
pub use headers::ForwardedHeaders;
pub use retry::RetryConfig;
pub use route::{
    RequireRoute, RequireRouteLayer, Route, RouteLayer, RouteMatch, RouteMatcher, RouteTable,
    RouteTableBuilder,
};
pub use upstream::{ProxyError, Upstream, UpstreamService};
