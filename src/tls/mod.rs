//! TLS for the gateway: HTTPS for public clients, mutual TLS between the
//! gateway and services (client certificates required and verified against
//! a private CA), the verified peer as the crate's
//! [`Identity`](crate::identity::Identity), certificates reloaded without a
//! restart.
//!
//! - **Public HTTPS.** [`TlsAcceptor`] serves the server's certificate
//!   ([`ReloadingServerCertificate`]: chain and key, no CA) and asks for no
//!   client certificate — or, with
//!   [`TlsAcceptor::with_optional_client_certificates`], asks for one
//!   without requiring it: verified against a CA when presented, its
//!   identity then reaching each request as below; anonymous otherwise.
//!   [`server::serve(..).tls(..)`](crate::server::Serve::tls) takes it or
//!   an [`MtlsAcceptor`] (see [`ServerTls`]).
//! - **Server side.** [`serve`] accepts connections with an
//!   [`MtlsAcceptor`] — a client without a certificate, or with one that
//!   does not chain to the private CA (another CA, expired), fails the
//!   handshake (Express's `requestCert: true, rejectUnauthorized: true`)
//!   — and serves any `tower` HTTP service over them: axum, plain hyper,
//!   tonic. The lower-level pieces are [`MtlsAcceptor::accept`],
//!   [`peer_identity`] and [`PeerIdentityLayer`].
//! - **Peer identity.** The verified leaf certificate's subject DN and its
//!   DNS and URI SANs (SPIFFE IDs) become a
//!   [`PeerIdentity`](crate::identity::PeerIdentity). Every request on the
//!   connection carries an [`Identity`](crate::identity::Identity) built
//!   from it — with roles from [`PeerRoles`], so that
//!   [`RbacLayer`](crate::rbac::RbacLayer) authorizes services by
//!   certificate — and the raw `PeerIdentity`, in its extensions.
//!   [`PeerIdentityLayer`] inserts them the same way whatever the framework.
//! - **Client side.** [`MtlsClientConfig`] presents the gateway's client
//!   certificate and trusts only the private CA; [`client_connector`] turns
//!   it into the `HttpsConnector` of hyper-util's pooled client (HTTP/1.1
//!   and HTTP/2 through ALPN) — what the reverse proxy dials upstreams with.
//! - **Forwarding the identity.** [`ForwardClientCertLayer`] tells
//!   upstreams who the verified client is in `X-Forwarded-Client-Cert`
//!   (Envoy's format: certificate hash, subject, SPIFFE ID, DNS names),
//!   and removes any copy a client sent.
//! - **Reload.** [`ReloadingCertificates`] holds the chain, key and CA;
//!   [`ReloadingCertificates::watch`] polls their files and swaps new
//!   material in atomically for the next handshake, on both sides. A bad
//!   file keeps the current certificate and logs an error.
//!
//! TLS is rustls with the *ring* provider.
//!
//! # Example
//!
//! A service that callers reach over mutual TLS, where only the `orders`
//! service (by its SPIFFE ID) may read `/whoami`; then the gateway side
//! calling it with its client certificate. (The certificates are generated
//! in hidden lines; in production they come from files — see below.)
//!
//! ```
//! use axum::{Extension, Router, routing::get};
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Empty};
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tokio::net::TcpListener;
//! use tower::ServiceBuilder;
//! use tower_gateway::{
//!     identity::Identity,
//!     rbac::{Policy, RbacLayer, Rule},
//!     tls::{self, MtlsAcceptor, MtlsClientConfig, PeerRoles},
//! };
//!
//! async fn whoami(Extension(identity): Extension<Identity>) -> String {
//!     identity.peer().map(|peer| peer.sans.join(" ")).unwrap_or_default()
//! }
//!
//! # fn pki() -> (String, [(String, String); 2]) {
//! #     use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
//! #     let mut ca = CertificateParams::default();
//! #     ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
//! #     let ca_key = KeyPair::generate().unwrap();
//! #     let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
//! #     let issuer = Issuer::new(ca, ca_key);
//! #     let leaf = |sans: Vec<SanType>| {
//! #         let mut params = CertificateParams::default();
//! #         params.subject_alt_names = sans;
//! #         let key = KeyPair::generate().unwrap();
//! #         (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
//! #     };
//! #     let server = leaf(vec![SanType::DnsName("localhost".try_into().unwrap())]);
//! #     let client = leaf(vec![SanType::URI("spiffe://shop/orders".try_into().unwrap())]);
//! #     (ca_pem, [server, client])
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (ca, [(server_chain, server_key), (client_chain, client_key)]) = pki();
//! // The server: its certificate and key, and the private CA that client
//! // certificates must chain to. Roles come from the certificate.
//! let acceptor =
//!     MtlsAcceptor::from_pem(server_chain.as_bytes(), server_key.as_bytes(), ca.as_bytes())?
//!         .peer_roles(PeerRoles::new().san("spiffe://shop/orders", ["orders"]));
//! let policy = Policy::builder()
//!     .rule(Rule::new("/whoami").any_of(["orders"]))
//!     .deny_unmatched(true)
//!     .build()?;
//! let app = ServiceBuilder::new()
//!     .layer(RbacLayer::new(policy))
//!     .service(Router::new().route("/whoami", get(whoami)));
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let port = listener.local_addr()?.port();
//! tokio::spawn(async move { tls::serve(listener, acceptor, app).await });
//!
//! // The caller: presents its certificate, trusts the private CA only.
//! let config =
//!     MtlsClientConfig::from_pem(client_chain.as_bytes(), client_key.as_bytes(), ca.as_bytes())?;
//! let client: Client<_, Empty<Bytes>> =
//!     Client::builder(TokioExecutor::new()).build(tls::client_connector(&config));
//! let response = client.get(format!("https://localhost:{port}/whoami").parse()?).await?;
//! assert_eq!(response.status(), 200);
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(body, "spiffe://shop/orders");
//! # Ok(()) }
//! ```
//!
//! Certificates from files, reloaded when they change (on both sides):
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_gateway::tls::{CertificateFiles, MtlsAcceptor, ReloadingCertificates};
//!
//! # #[tokio::main] async fn main() -> Result<(), tower_gateway::tls::TlsError> {
//! let certs = ReloadingCertificates::from_files(CertificateFiles::new(
//!     "/etc/gateway/server.crt",
//!     "/etc/gateway/server.key",
//!     "/etc/gateway/ca.crt",
//! ))?;
//! let _poller = certs.watch(Duration::from_secs(10));
//! let acceptor = MtlsAcceptor::new(&certs);
//! # Ok(()) }
//! ```
//!
//! The client side, for a reverse proxy:
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower_gateway::tls::{self, CertificateFiles, MtlsClientConfig, ReloadingCertificates};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let certs = ReloadingCertificates::from_files(CertificateFiles::new(
//!     "/etc/gateway/client.crt",
//!     "/etc/gateway/client.key",
//!     "/etc/gateway/ca.crt",
//! ))?;
//! let config = MtlsClientConfig::new(&certs)?;
//! let client: Client<_, Empty<Bytes>> =
//!     Client::builder(TokioExecutor::new()).build(tls::client_connector(&config));
//! let response = client.get("https://orders.internal:8443/health".parse()?).await?;
//! # Ok(()) }
//! ```

mod acceptor;
mod client;
mod error;
mod layer;
mod material;
mod peer;
mod reload;
mod roles;
mod serve;
mod xfcc;

pub use acceptor::{Accepted, MtlsAcceptor, TlsAccepted, TlsAcceptor};
pub use client::{MtlsClientConfig, client_connector, wrap_connector};
pub use error::TlsError;
pub use layer::{AddPeerIdentity, PeerIdentityLayer};
pub use peer::{PeerCertificate, PeerCertificateError, parse_peer_certificate, peer_identity};
pub use reload::{
    CertificateFiles, ReloadStatus, ReloadingCertificates, ReloadingServerCertificate,
};
pub use roles::PeerRoles;
pub use serve::{ServerTls, serve};
pub use xfcc::{ForwardClientCert, ForwardClientCertLayer, X_FORWARDED_CLIENT_CERT};
