//! Sending a request to one endpoint.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, Uri, uri::Scheme};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, ResponseFuture, connect::HttpConnector},
    rt::TokioExecutor,
};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

/// The request body inside the proxy: the caller's body, boxed once so
/// every layer of the upstream stack (retry, buffer, balancer) has one type.
pub type ProxyBody = UnsyncBoxBody<Bytes, tower::BoxError>;

/// The connector the proxy dials with: plain TCP for `http`, rustls for
/// `https` (with the mTLS client configuration of the `tls` module when set).
pub type Connector = HttpsConnector<HttpConnector>;

/// The HTTP version the proxy speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (or HTTP/2 when TLS ALPN negotiates it).
    #[default]
    Http1,
    /// HTTP/2 only — with prior knowledge over plain TCP (h2c), as gRPC
    /// upstreams need.
    Http2,
}

/// A pooled client for one upstream.
pub(crate) fn client(
    connector: Connector,
    protocol: UpstreamProtocol,
) -> Client<Connector, ProxyBody> {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(Duration::from_secs(60))
        .http2_only(protocol == UpstreamProtocol::Http2);
    builder.build(connector)
}

/// A plain connector (no client certificate; public roots are not trusted
/// either, so an `https` upstream needs the `tls` module).
pub(crate) fn plain_connector(connect_timeout: Duration) -> Result<Connector, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

/// Forwards requests to one endpoint: sets the scheme and authority of the
/// URI (path and query stay as the router left them) and sends it through
/// the upstream's pooled client.
#[derive(Clone)]
pub(crate) struct Forward {
    pub(crate) client: Client<Connector, ProxyBody>,
    pub(crate) scheme: Scheme,
    pub(crate) authority: http::uri::Authority,
    pub(crate) body_idle_timeout: Duration,
}

pin_project! {
    /// A response body from an upstream that fails when no frame arrives
    /// for the upstream's body idle timeout — an upstream that sends its
    /// headers and then stalls must not hold the client forever. Frames are
    /// streamed as they come; nothing is buffered.
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        #[pin]
        idle: Sleep,
        timeout: Duration,
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The upstream stopped sending its response body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream response body stalled for {0:?}")]
pub struct BodyIdleTimeout(pub Duration);

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.idle.as_mut().reset(Instant::now() + *this.timeout);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                ready!(this.idle.poll(cx));
                Poll::Ready(Some(Err(BodyIdleTimeout(*this.timeout).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The future of [`Forward`]: the client's response, its body wrapped
    /// in an [`UpstreamBody`].
    pub(crate) struct ForwardFuture {
        #[pin]
        inner: ResponseFuture,
        timeout: Duration,
    }
}

impl Future for ForwardFuture {
    type Output = Result<Response<UpstreamBody>, hyper_util::client::legacy::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let timeout = *this.timeout;
        let response = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(response.map(|inner| UpstreamBody {
            inner,
            idle: tokio::time::sleep(timeout),
            timeout,
        })))
    }
}

impl Service<Request<ProxyBody>> for Forward {
    type Response = Response<UpstreamBody>;
    type Error = hyper_util::client::legacy::Error;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool opens connections on demand; readiness is the balancer's
        // and the circuit breaker's business.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<ProxyBody>) -> Self::Future {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        // hyper-util picks the protocol from the pool; the version the client
        // used towards the gateway says nothing about the upstream hop.
        *request.version_mut() = http::Version::HTTP_11;
        ForwardFuture {
            inner: self.client.request(request),
            timeout: self.body_idle_timeout,
        }
    }
}
