//! What a route says about forwarding: its upstream, its timeout, its
//! retries, whether its prefix is stripped.

use std::time::Duration;

use super::{RetryConfig, UpstreamService};
use crate::route::Route;

/// The upstream of a route (see [`Route::upstream`]).
#[derive(Debug, Clone)]
pub(crate) struct RouteUpstream(pub(crate) UpstreamService);

/// The request timeout of a route (see [`Route::timeout`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteTimeout(pub(crate) Duration);

/// The attempts of a route (see [`Route::retries`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteAttempts(pub(crate) usize);

/// The route's prefix is removed before forwarding (see
/// [`Route::strip_prefix`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StripPrefix;

/// The proxy's settings of a route.
impl Route {
    /// Forwards the route's requests to `upstream` through the
    /// [`Proxy`](super::Proxy).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_gateway::discovery::{Endpoint, StaticDiscovery};
    /// use tower_gateway::proxy::Upstream;
    /// use tower_gateway::route::Route;
    ///
    /// let orders = StaticDiscovery::new([Endpoint::new("orders-1", "127.0.0.1", 3001)]);
    /// let route = Route::prefix("/orders").upstream(Upstream::new("orders", orders.watch()).build()?);
    /// # Ok(()) }
    /// ```
    pub fn upstream(self, upstream: UpstreamService) -> Self {
        self.with(RouteUpstream(upstream))
    }

    /// A request timeout for this route, tighter than its upstream's
    /// (`Upstream::request_timeout` still applies): when the response head
    /// has not arrived in time the client gets 504 (gRPC
    /// `DEADLINE_EXCEEDED`). Connect timeouts belong to the upstream.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.with(RouteTimeout(timeout))
    }

    /// This route's retry policy instead of its upstream's: how many times
    /// a request may be retried (where safe, never to an endpoint it already
    /// tried). Retries still draw on the upstream's retry budget, which all
    /// its routes share; [`RetryConfig::none`] turns them off.
    pub fn retries(self, retry: RetryConfig) -> Self {
        self.with(RouteAttempts(retry.attempts))
    }

    /// Removes the prefix before forwarding: `/api/payments/7` reaches the
    /// upstream as `/7`.
    pub fn strip_prefix(self) -> Self {
        self.with(StripPrefix)
    }
}
