//! OAuth2 / JWT bearer-token authentication.
//!
//! [`JwtAuthLayer`] finds the bearer token (RFC 6750: the `Authorization`
//! header; optionally a cookie or query parameter), verifies it against the
//! keys of its [`Issuer`]s, checks the claims, and puts the verified
//! [`Identity`](crate::identity::Identity) into the request extensions.
//! Anything else is answered with 401 and a `WWW-Authenticate: Bearer`
//! challenge, through the crate's [rejection model](crate::reject).
//!
//! - Algorithms: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384,
//!   EdDSA. Every key is pinned to its algorithm family ([`JwtKey`]), so an HS
//!   token is never checked against an RSA or EC public key; `alg: none` is
//!   never accepted.
//! - Signatures are checked by aws-lc-rs (feature `aws-lc`, the default) or
//!   by the pure-Rust RustCrypto (feature `rust-crypto`); see
//!   [`install_crypto_backend`].
//! - Keys: static secrets and public keys (PEM/DER) with optional `kid`;
//!   a JWKS URL or OIDC discovery, fetched by a background task and cached
//!   (feature `jwks`). Several keys live at once, so keys rotate without
//!   downtime; the last good keys survive an auth-server outage.
//! - Claims: signature, `exp` (required by default), `nbf`, `iss`, `aud`,
//!   leeway, a maximum lifetime, required claims.
//! - Token smuggling: a request with more than one token is refused even if
//!   one is valid.
//! - Identity headers forwarded to upstreams are first stripped from the
//!   client's request.
//! - A bounded cache of verified tokens makes repeat RS/ES/EdDSA tokens cost
//!   about what HS256 costs; a short-lived negative cache does the same for
//!   repeated invalid tokens.
//! - An optional [`FailureBudget`] per client address answers 429 to an
//!   address that keeps sending bad tokens, before any signature check.
//! - A bad signature under a known JWKS `kid` triggers a (rate-limited)
//!   refetch, so a key rotated under the same `kid` is picked up.
//!
//! # Example
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_gateway::auth::{Issuer, JwtAuthLayer, JwtKey};
//! use tower_gateway::identity::Identity;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = JwtAuthLayer::builder()
//!     .issuer(
//!         Issuer::new("https://auth.example.com")
//!             .audience("orders-api")
//!             .key(JwtKey::hmac(b"0123456789abcdef0123456789abcdef").kid("k1")),
//!     )
//!     .forward_subject(http::HeaderName::from_static("x-user-id"))
//!     .build()?;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(auth)
//!     .service_fn(|req: http::Request<String>| async move {
//!         let who = req.extensions().get::<Identity>().and_then(|i| i.subject()).unwrap_or("-");
//!         Ok::<_, std::convert::Infallible>(http::Response::new(who.to_owned()))
//!     });
//! # Ok(()) }
//! ```
//!
//! With a JWKS (Keycloak, Auth0, ...). Building needs no runtime: the
//! refresh task starts with the layer's first use inside one, here
//! `wait_for_keys`:
//!
//! ```no_run
//! # #[cfg(feature = "jwks")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower_gateway::auth::{Issuer, JwksOptions, JwtAuthLayer};
//!
//! let auth = JwtAuthLayer::builder()
//!     .issuer(Issuer::new("https://sso.example.com/realms/shop").oidc_discovery())
//!     .jwks_options(JwksOptions::default().refresh_interval(Duration::from_secs(300)))
//!     .build()?;
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(auth.wait_for_keys(Duration::from_secs(10)));
//! # Ok(()) }
//! # #[cfg(not(feature = "jwks"))]
//! # fn main() {}
//! ```

mod budget;
mod crypto;
mod error;
mod future;
mod issuer;
#[cfg(feature = "jwks")]
mod jwks;
mod keys;
mod layer;
mod metrics;
mod route;
mod service;
mod store;
mod token;
mod verifier;

#[cfg(feature = "jwks")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
pub use crate::client::{HttpClientConfig, HttpClientError};
pub use budget::FailureBudget;
pub use crypto::install_crypto_backend;
pub use error::AuthError;
pub use future::ResponseFuture;
pub use issuer::Issuer;
pub use jsonwebtoken::Algorithm;
#[cfg(feature = "jwks")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
pub use jwks::JwksOptions;
pub use keys::{JwtKey, KeyError};
pub use layer::{JwtAuthBuilder, JwtAuthLayer, JwtConfigError};
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use metrics::{AuthMetrics, JwksMetrics};
pub use route::AuthMode;
pub use service::JwtAuth;
