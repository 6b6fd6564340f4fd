//! TLS serving: the crate's [`server`](crate::server) with a
//! [`TlsAcceptor`] or an [`MtlsAcceptor`].

use std::{future::Pending, sync::Arc};

use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tokio_rustls::server::TlsStream;

use super::{MtlsAcceptor, PeerIdentityLayer, TlsAcceptor, TlsError};
use crate::server::{self, Serve};

/// The TLS a [`Serve`] speaks ([`Serve::tls`]): ordinary server TLS from a
/// [`TlsAcceptor`] (no client certificate, or an optional one), or mutual
/// TLS from an [`MtlsAcceptor`] (a client certificate required). Built
/// from either with `From`/`Into`; cheap to clone.
///
/// ```
/// use tower_gateway::tls::{MtlsAcceptor, ServerTls, TlsAcceptor};
///
/// fn public(acceptor: TlsAcceptor) -> ServerTls {
///     acceptor.into()
/// }
///
/// fn internal(acceptor: MtlsAcceptor) -> ServerTls {
///     let tls = ServerTls::from(acceptor);
///     assert!(tls.requires_client_certificates());
///     tls
/// }
/// ```
#[derive(Debug, Clone)]
pub struct ServerTls {
    acceptor: Acceptor,
}

#[derive(Debug, Clone)]
enum Acceptor {
    Tls(TlsAcceptor),
    Mtls(MtlsAcceptor),
}

impl From<TlsAcceptor> for ServerTls {
    fn from(acceptor: TlsAcceptor) -> Self {
        Self {
            acceptor: Acceptor::Tls(acceptor),
        }
    }
}

impl From<MtlsAcceptor> for ServerTls {
    fn from(acceptor: MtlsAcceptor) -> Self {
        Self {
            acceptor: Acceptor::Mtls(acceptor),
        }
    }
}

impl ServerTls {
    /// Whether a client without a verified certificate fails the
    /// handshake (an [`MtlsAcceptor`]).
    pub fn requires_client_certificates(&self) -> bool {
        matches!(self.acceptor, Acceptor::Mtls(_))
    }

    /// The configuration the next handshake will use.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        match &self.acceptor {
            Acceptor::Tls(acceptor) => acceptor.server_config(),
            Acceptor::Mtls(acceptor) => acceptor.server_config(),
        }
    }

    /// The handshake, then the stream and, for a verified client
    /// certificate, the layer that puts its identity into each request.
    pub(crate) async fn accept<IO>(
        &self,
        io: IO,
    ) -> Result<(TlsStream<IO>, Option<PeerIdentityLayer>), TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match &self.acceptor {
            Acceptor::Tls(acceptor) => Ok(acceptor.accept(io).await?.into_parts()),
            Acceptor::Mtls(acceptor) => {
                let (stream, layer) = acceptor.accept(io).await?.into_parts();
                Ok((stream, Some(layer)))
            }
        }
    }
}

/// Serves `service` over TLS on `listener`, with a [`TlsAcceptor`] or an
/// [`MtlsAcceptor`].
///
/// With an [`MtlsAcceptor`], every connection must present a client
/// certificate that chains to the acceptor's private CA. Every request on
/// a connection whose client certificate was verified carries the
/// [`Identity`](crate::identity::Identity) and
/// [`PeerIdentity`](crate::identity::PeerIdentity) in its extensions (see
/// [`PeerIdentityLayer`](super::PeerIdentityLayer)); every request carries
/// the connection's [`ClientAddr`](crate::connection::ClientAddr).
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
    acceptor: impl Into<ServerTls>,
    service: S,
) -> Serve<S, Pending<()>> {
    server::serve(listener, service).tls(acceptor)
}
