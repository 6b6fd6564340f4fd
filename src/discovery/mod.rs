//! Service discovery: the healthy endpoints of each upstream service.
//!
//! A source keeps one [`EndpointWatch`] per service current — a Consul
//! blocking-query watcher (`ConsulDiscoveryService`, feature `consul`) or a
//! [`StaticDiscovery`] list —
//! and every consumer reads it: balancers through
//! [`EndpointWatch::changes`], a [`Discover`](tower::discover::Discover)
//! stream of `Change::Insert`/`Change::Remove`; metrics and health checks
//! through [`EndpointWatch::current`].
//!
//! ```
//! use futures_util::StreamExt;
//! use tower::discover::Change;
//! use tower_gateway::discovery::{Endpoint, StaticDiscovery};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let source = StaticDiscovery::new([Endpoint::new("a", "127.0.0.1", 3001)]);
//! let mut changes = source.watch().changes();
//! assert!(matches!(changes.next().await, Some(Ok(Change::Insert(id, _))) if id == "a"));
//! source.set([Endpoint::new("b", "127.0.0.1", 3002)]);
//! assert!(matches!(changes.next().await, Some(Ok(Change::Remove(id))) if id == "a"));
//! assert!(matches!(changes.next().await, Some(Ok(Change::Insert(id, _))) if id == "b"));
//! # }
//! ```

#[cfg(feature = "consul")]
#[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
pub mod consul;
mod endpoint;
mod metrics;
mod watch;

#[cfg(feature = "consul")]
pub use consul::{ConsulClient, ConsulDiscoveryService, ConsulRegistration};
pub use endpoint::Endpoint;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use metrics::{DiscoveryMetrics, ServiceMetrics};
#[cfg(not(feature = "metrics"))]
#[allow(unused_imports)] // Only the Consul watcher and the proxy use it.
pub(crate) use metrics::{DiscoveryMetrics, ServiceMetrics};
pub use watch::{Changes, EndpointWatch, Snapshot, StaticDiscovery};
