use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use super::{ResolvedClient, TrustedProxies};
use crate::connection::ClientAddr;

/// Resolves each request's client once, at the edge, and records it as a
/// [`ResolvedClient`] in the request extensions (see the [module
/// documentation](super)).
///
/// Requests without a [`ClientAddr`] pass unchanged. Place it outermost
/// among the layers that need the client (before authentication and rate
/// limiting). Per request it costs the resolution, which allocates nothing
/// and, when the peer is not a trusted proxy, reads no header, plus one
/// small request extension.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_gateway::client_addr::{ClientAddrLayer, TrustedProxies};
///
/// let svc = ServiceBuilder::new()
///     .layer(ClientAddrLayer::new(
///         TrustedProxies::none().trust("10.0.0.0/8".parse().unwrap()),
///     ))
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientAddrLayer {
    proxies: Arc<TrustedProxies>,
}

impl ClientAddrLayer {
    /// Resolves clients behind `proxies`.
    pub fn new(proxies: TrustedProxies) -> Self {
        Self {
            proxies: Arc::new(proxies),
        }
    }

    /// The trusted proxies.
    pub fn proxies(&self) -> &TrustedProxies {
        &self.proxies
    }
}

impl<S> Layer<S> for ClientAddrLayer {
    type Service = ClientAddrService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientAddrService {
            inner,
            proxies: Arc::clone(&self.proxies),
        }
    }
}

/// The service of [`ClientAddrLayer`].
#[derive(Debug, Clone)]
pub struct ClientAddrService<S> {
    inner: S,
    proxies: Arc<TrustedProxies>,
}

impl<S> ClientAddrService<S> {
    /// Wraps `inner`, resolving clients behind `proxies`.
    pub fn new(inner: S, proxies: TrustedProxies) -> Self {
        ClientAddrLayer::new(proxies).layer(inner)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for ClientAddrService<S>
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
        if let Some(&ClientAddr(peer)) = request.extensions().get::<ClientAddr>() {
            let ip = self.proxies.resolve(peer.ip(), request.headers());
            let client = ResolvedClient::new(ip, peer);
            if client.is_forwarded() {
                tracing::trace!(target: "tower_gateway::client_addr", client = %ip, %peer, "client named by a trusted proxy");
            }
            // Recorded even when it is the peer: consumers with trust lists
            // of their own (`ratelimit::ClientIp`) then defer to this one.
            request.extensions_mut().insert(client);
        }
        self.inner.call(request)
    }
}
