//! The client address: who sent a request, once, for every layer.
//!
//! The server knows the connection's peer ([`ClientAddr`]); behind a load
//! balancer or reverse proxy that is the proxy, and the client is in a
//! forwarding header (`X-Forwarded-For` or RFC 7239 `Forwarded`) that only
//! a trusted proxy may be believed about. [`TrustedProxies`] is the one
//! resolver of that question, and [`ClientAddrLayer`], placed at the edge,
//! asks it once per request and records the answer as a [`ResolvedClient`]
//! in the request extensions. Every consumer reads it through
//! [`ResolvedClient::of`]:
//!
//! - rate limiting per IP (`ratelimit::ClientIp`),
//! - the auth failure budget (`auth::FailureBudget`),
//! - logs that name a client.
//!
//! Without the layer they all fall back to the peer, so a gateway that
//! faces clients directly needs no configuration. The proxy appends the
//! peer (the hop it received the request from) to the forwarding header,
//! after every line the request carried (RFC 9110 §5.3: several lines are
//! one list), so an upstream that trusts the gateway and the same proxies
//! resolves the same client.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use http::{Request, Response};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_gateway::client_addr::{ClientAddr, ClientAddrLayer, ResolvedClient, TrustedProxies};
//!
//! // The load balancers send from 10.0.0.0/8.
//! let proxies = TrustedProxies::none().trust("10.0.0.0/8".parse()?);
//! let mut svc = ServiceBuilder::new()
//!     .layer(ClientAddrLayer::new(proxies))
//!     .service_fn(|request: Request<String>| async move {
//!         let client = ResolvedClient::of(request.extensions()).map(|c| c.ip());
//!         Ok::<_, std::convert::Infallible>(Response::new(format!("{client:?}")))
//!     });
//!
//! // `server::serve` inserts the peer; here a load balancer is the peer.
//! let mut request = Request::new(String::new());
//! request.extensions_mut().insert(ClientAddr("10.0.0.1:40000".parse()?));
//! request.headers_mut().append("x-forwarded-for", "6.6.6.6, 203.0.113.9".parse()?);
//! let response = svc.ready().await?.call(request).await?;
//! assert_eq!(response.body(), "Some(203.0.113.9)");
//! # Ok(()) }
//! ```

mod layer;
mod net;
mod resolve;

pub use crate::connection::ClientAddr;
pub use layer::{ClientAddrLayer, ClientAddrService};
#[cfg(feature = "proxy")]
pub(crate) use net::canonical;
#[cfg(feature = "ratelimit")]
pub(crate) use net::mask128;
pub use net::{IpNet, IpNetError};
pub use resolve::{ForwardedHeader, ResolvedClient, TrustedProxies};
