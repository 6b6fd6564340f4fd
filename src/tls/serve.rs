//! Mutual TLS serving: the crate's [`server`](crate::server) with an
//! [`MtlsAcceptor`].

use std::future::Pending;

use tokio::net::TcpListener;

use super::MtlsAcceptor;
use crate::server::{self, Serve};

/// Serves `service` over mutual TLS on `listener`: every connection must
/// present a client certificate that chains to the acceptor's private
/// CA, and every request on it carries the verified
/// [`Identity`](crate::identity::Identity) and
/// [`PeerIdentity`](crate::identity::PeerIdentity) in its extensions (see
/// [`PeerIdentityLayer`](super::PeerIdentityLayer)), and the
/// connection's [`ClientAddr`](crate::connection::ClientAddr).
///
/// The same as `server::serve(listener, service).tls(acceptor)`: the
/// returned [`Serve`] has the server's limits, timeouts and graceful
/// shutdown (the handshake is bounded by its
/// [header read timeout](Serve::header_read_timeout)), and its
/// [`EdgeLayer`](crate::server::EdgeLayer). `service` is any `tower`
/// service of `http::Request<`[`server::Body`]`>` that can be cloned per
/// connection: an axum `Router`, tonic's `Routes`, a `ServiceBuilder`
/// stack. Refused handshakes are logged at `debug` (target
/// `tower_gateway::tls`) and never reach the service.
///
/// ```no_run
/// use axum::{Extension, Router, routing::get};
/// use tokio::net::TcpListener;
/// use tower_gateway::{identity::PeerIdentity, tls::{self, MtlsAcceptor}};
///
/// # async fn f(acceptor: MtlsAcceptor) -> std::io::Result<()> {
/// let app = Router::new().route(
///     "/whoami",
///     get(|Extension(peer): Extension<PeerIdentity>| async move { peer.subject }),
/// );
/// let listener = TcpListener::bind("127.0.0.1:8443").await?;
/// tls::serve(listener, acceptor, app)
///     .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
///     .await;
/// # Ok(()) }
/// ```
pub fn serve<S>(
    listener: TcpListener,
    acceptor: MtlsAcceptor,
    service: S,
) -> Serve<S, Pending<()>> {
    server::serve(listener, service).tls(acceptor)
}
