//! Putting the connection's verified peer into every request on it.

use std::task::{Context, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use super::PeerCertificate;
use crate::identity::{Identity, PeerIdentity};

/// Inserts the connection's verified [`Identity`] — and the raw
/// [`PeerIdentity`] it carries — into the extensions of every request.
///
/// Apply it *per connection*, around the service that serves that
/// connection, with the identity its handshake proved:
/// [`serve`](super::serve) does so, and [`Accepted::layer`](super::Accepted::layer)
/// gives the layer for hand-written accept loops. That makes the identity
/// reach handlers the same way under axum (`Extension<Identity>`), plain
/// hyper and tonic (`request.extensions().get::<Identity>()`).
///
/// A later [`JwtAuthLayer`](crate::auth::JwtAuthLayer) replaces the
/// identity with the token's and keeps the peer
/// ([`Identity::with_peer`]).
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_gateway::{identity::{Identity, PeerIdentity}, tls::PeerIdentityLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let peer = PeerIdentity {
///     subject: "CN=orders".into(),
///     sans: vec!["spiffe://shop/orders".into()],
/// };
/// let svc = ServiceBuilder::new()
///     .layer(PeerIdentityLayer::new(Identity::from_peer(peer)))
///     .service_fn(|req: http::Request<()>| async move {
///         let peer = req.extensions().get::<PeerIdentity>().cloned();
///         Ok::<_, std::convert::Infallible>(peer.map(|p| p.subject))
///     });
/// let subject = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(subject.as_deref(), Some("CN=orders"));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PeerIdentityLayer {
    identity: Identity,
    certificate: Option<PeerCertificate>,
}

impl PeerIdentityLayer {
    /// Inserts `identity` (and its [`Identity::peer`], when it has one).
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            certificate: None,
        }
    }

    /// Also inserts the verified certificate the identity was read from
    /// (for [`ForwardClientCertLayer`](super::ForwardClientCertLayer)).
    pub fn certificate(mut self, certificate: PeerCertificate) -> Self {
        self.certificate = Some(certificate);
        self
    }

    /// The identity this layer inserts.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

impl<S> Layer<S> for PeerIdentityLayer {
    type Service = AddPeerIdentity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AddPeerIdentity {
            inner,
            identity: self.identity.clone(),
            certificate: self.certificate.clone(),
        }
    }
}

/// The service of [`PeerIdentityLayer`].
#[derive(Debug, Clone)]
pub struct AddPeerIdentity<S> {
    inner: S,
    identity: Identity,
    certificate: Option<PeerCertificate>,
}

impl<S> AddPeerIdentity<S> {
    /// Wraps `inner`, inserting `identity` into every request.
    pub fn new(inner: S, identity: Identity) -> Self {
        Self {
            inner,
            identity,
            certificate: None,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for AddPeerIdentity<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let extensions = request.extensions_mut();
        if let Some(peer) = self.identity.peer() {
            extensions.insert::<PeerIdentity>(peer.clone());
        }
        if let Some(certificate) = &self.certificate {
            extensions.insert(certificate.clone());
        }
        extensions.insert(self.identity.clone());
        self.inner.call(request)
    }
}
