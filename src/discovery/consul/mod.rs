//! Service discovery and registration through Consul's HTTP API.
//!
//! [`ConsulDiscoveryService`] watches the healthy instances of one service
//! (`GET /v1/health/service/<name>?passing=true`) with blocking queries, in
//! one background task per service, and publishes them through an
//! [`EndpointWatch`](crate::discovery::EndpointWatch): balancers consume it
//! as a [`Discover`](tower::discover::Discover) stream, metrics and health
//! pages read its current snapshot. When Consul is down or answers
//! garbage, the last known set stays in force, marked stale, and its age
//! is reported to the [`DiscoveryMetrics`](crate::discovery::DiscoveryMetrics)
//! (`discovery_staleness`, feature `metrics`).
//!
//! [`ConsulRegistration`] registers an instance with the local agent
//! (`PUT /v1/agent/service/register`), keeps a TTL check passing, and
//! deregisters it on shutdown.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use futures_util::StreamExt;
//! use tower::discover::Change;
//! use tower_gateway::discovery::consul::{ConsulClient, ServiceCheck, ServiceRegistration};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // `consul agent -dev` listens on 127.0.0.1:8500.
//! let consul = ConsulClient::builder("127.0.0.1:8500")
//!     .token(std::env::var("CONSUL_HTTP_TOKEN").unwrap_or_default())
//!     .build()?;
//!
//! // An instance of the order service announces itself…
//! let registration = consul
//!     .register(
//!         ServiceRegistration::new("order-service", "order-service-1")
//!             .address("127.0.0.1")
//!             .port(3000)
//!             .tags(["microservice", "orders"])
//!             .check(ServiceCheck::ttl(Duration::from_secs(10))),
//!     )
//!     .await?;
//!
//! // …and the gateway finds it.
//! let mut orders = consul.watch("order-service").tag("orders").spawn()?;
//! orders.wait_for_sync(Duration::from_secs(5)).await;
//! let snapshot = orders.watch().current();
//! for endpoint in snapshot.endpoints.values() {
//!     println!("{} at {}", endpoint.id(), endpoint.authority());
//! }
//! // A balancer consumes the same watch as a `Discover` stream.
//! if let Some(Ok(Change::Insert(id, endpoint))) = orders.next().await {
//!     println!("insert {id}: {endpoint:?}");
//! }
//!
//! registration.deregister().await?;
//! # Ok(()) }
//! ```
//!
//! With the `tls` feature, [`ConnectCertificates`] keeps a service's
//! Consul Connect leaf certificate and the CA roots current
//! (`/v1/agent/connect/ca/leaf/<service>`, `/v1/agent/connect/ca/roots`)
//! for the crate's mTLS server and client.
//!
//! # Blocking queries
//!
//! The watch follows Consul's "Blocking Queries" rules: the
//! `X-Consul-Index` of an answer is the `index` of the next query; an index
//! that goes backwards restarts the loop; an index below 1 is used as 1;
//! and the loop is rate limited (a burst of two, then
//! [one query per interval](ConsulWatchBuilder::min_query_interval)) so
//! that a churning service cannot turn it into a busy loop. Failures back
//! off exponentially with jitter. A change in Consul is seen within one
//! round trip while the loop is idle.

mod api;
#[cfg(feature = "tls")]
mod connect;
mod registration;
mod watch;

pub use api::{ConsulClient, ConsulClientBuilder, ConsulError};
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use connect::{ConnectCertificates, ConnectCertificatesBuilder, ConnectStatus};
pub use registration::{ConsulRegistration, ServiceCheck, ServiceRegistration};
pub use watch::{ConsulDiscoveryService, ConsulWatchBuilder};
